"""What a search costs in optimizer steps, two comparisons on one search space, sampler seed and data.

    .venv/bin/python bench/tune_cost.py [--trials 10] [--seeds 0] [--preset quick] [--base tiny-hamlet|smollm2-135m]
    .venv/bin/python bench/tune_cost.py --compare folds --speeches 8 --trials 4 8 [--seeds 0 1] [--folds 3]

``--compare pruning`` (default): the same search with successive halving and without any
pruner, on speeches from Macbeth; the unpruned one runs every trial to its end. Prints one
JSON line: training steps spent by each (``steps_pruned``, ``steps_full``), ``compute_saving``
= 1 - pruned/full, the best validation loss of each and ``gap_pct``, how much worse the pruned
search's best is. Target: a saving of at least 50% with a gap within 2%.

``--compare folds``: a tiny set (fewer than ``trainer.folds.FOLDS_BELOW`` speeches) searched
cross-validated (``tune(..., folds=None)``) and on one split (``folds=0``), for each
``--trials``. Prints one JSON line per ``--trials``: the steps each spent (``steps_cv``,
``steps_split``), their ``ratio``, the cross-validated search's step budget
(``trainer.tune.cv_budget``) and what each tried. Target: a ratio within about 1.2.

The default base model is a small Llama (2 layers, 128 wide, its own 2k BPE vocabulary),
pre-trained here for a few hundred steps on Hamlet and cached: the built-in smollm2-135m
takes ~20 s per step on a shared 2-core CPU, so an unpruned search of a dozen trials would
take hours. A model that has learned Shakespeare's English from another play, tuned on
Macbeth, keeps what the search is about (a real base, a real shift of domain) at ~0.1 s per
step. Pass ``--base smollm2-135m`` where there is a GPU or time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, bench/ comes first on sys.path, where bench/queue.py would shadow the stdlib.
HERE = Path(__file__).resolve().parent
sys.path[:] = [str(HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != HERE]

SETTINGS = {"seq_len": 64, "batch_size": 4, "max_new_tokens": 8, "prompts": ["MACBETH:\n"]}


def tiny_hamlet(folder: Path, steps: int = 400) -> Path:
    """A small Llama pre-trained on Hamlet's speeches (built once, then read from ``folder``)."""
    if (folder / "model.safetensors").exists():
        return folder
    import random

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from trainer.text.shakespeare import speeches

    texts = speeches("hamlet", min_words=4)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainer=trainers.BpeTrainer(
        vocab_size=2048, special_tokens=["<pad>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>",
                                        bos_token="<|im_start|>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id))
    stream = [i for t in texts for i in tokenizer(t + tokenizer.eos_token)["input_ids"]]
    rows = torch.tensor(stream[: len(stream) // 64 * 64]).view(-1, 64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = random.Random(0)
    for step in range(steps):
        batch = rows[rng.sample(range(len(rows)), 16)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    print(f"pre-trained {folder} on Hamlet: final loss {loss.item():.3f}", file=sys.stderr)
    return folder


def search(data: Path, out: Path, base: str, *, trials: int, seed: int, pruner: str, preset: str,
           folds: int | None = None) -> dict:
    from trainer.tune import tune

    started = time.time()
    result = tune("text", [data], out, base=base, trials=trials, preset=preset, settings=SETTINGS,
                  seed=seed, pruner=pruner, full_run=False, folds=folds)
    return {"steps": result.steps_spent, "best_val": result.best.val_loss if result.best else None,
            "tried": len(result.trials), "pruned": sum(r.status == "pruned" for r in result.trials),
            "seconds": round(time.time() - started, 1), "best_params": result.best_params, "folds": result.folds,
            "budget": result.budget, "trial_steps": [r.steps for r in result.trials],
            "notes": [r.note for r in result.trials if r.note]}


def compare_folds(data: Path, work: Path, base: str, args) -> None:
    """Cross-validated against one-split searches on the same tiny set, one JSON line per --trials."""
    for trials in args.trials:
        runs = []
        for seed in args.seeds:
            cv = search(data, work / f"cv-{trials}-{seed}", base, trials=trials, seed=seed,
                        pruner="successive-halving", preset=args.preset, folds=args.folds)
            split = search(data, work / f"split-{trials}-{seed}", base, trials=trials, seed=seed,
                           pruner="successive-halving", preset=args.preset, folds=0)
            runs.append({"seed": seed, "cv": cv, "split": split})
        steps_cv, steps_split = sum(r["cv"]["steps"] for r in runs), sum(r["split"]["steps"] for r in runs)
        print(json.dumps({"base": args.base, "preset": args.preset, "trials": trials, "seeds": args.seeds,
                          "speeches": args.speeches, "folds": args.folds, "steps_cv": steps_cv, "steps_split": steps_split,
                          "ratio": round(steps_cv / steps_split, 2), "per_seed": runs}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare", choices=("pruning", "folds"), default="pruning",
                        help="pruning: successive halving against none; folds: cross-validated against one split")
    parser.add_argument("--trials", type=int, nargs="+", default=[10], help="one value for --compare pruning")
    parser.add_argument("--preset", default="quick", help="the preset the search starts from")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--base", default="tiny-hamlet", help="'tiny-hamlet' (default) or any base loracord loads")
    parser.add_argument("--speeches", type=int, default=80)
    parser.add_argument("--folds", type=int, default=None, help="--compare folds: folds by hand (default: by the data's size)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the search folders here")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from trainer.models import cache_dir
    from trainer.text.shakespeare import write_speeches

    base = str(tiny_hamlet(cache_dir() / "bench" / "tiny-hamlet")) if args.base == "tiny-hamlet" else args.base
    work = args.keep or Path(tempfile.mkdtemp(prefix="tune-cost-"))
    data = write_speeches(work / "macbeth.txt", "macbeth", limit=args.speeches, min_words=8)
    if args.compare == "folds":
        compare_folds(data, work, base, args)
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
        return
    args.trials = args.trials[0]
    runs = []
    for seed in args.seeds:
        pruned = search(data, work / f"pruned-{seed}", base, trials=args.trials, seed=seed, pruner="successive-halving",
                        preset=args.preset)
        full = search(data, work / f"full-{seed}", base, trials=args.trials, seed=seed, pruner="none", preset=args.preset)
        runs.append({"seed": seed, "pruned": pruned, "full": full})
    steps_pruned = sum(r["pruned"]["steps"] for r in runs)
    steps_full = sum(r["full"]["steps"] for r in runs)
    best_pruned = sum(r["pruned"]["best_val"] for r in runs) / len(runs)
    best_full = sum(r["full"]["best_val"] for r in runs) / len(runs)
    print(json.dumps({
        "base": args.base, "preset": args.preset, "trials": args.trials, "seeds": args.seeds, "speeches": args.speeches,
        "steps_pruned": steps_pruned, "steps_full": steps_full,
        "compute_saving": round(1 - steps_pruned / steps_full, 4),
        "best_val_pruned": round(best_pruned, 4), "best_val_full": round(best_full, 4),
        "gap_pct": round(100 * (best_pruned - best_full) / best_full, 2),
        "per_seed": runs,
    }))
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
