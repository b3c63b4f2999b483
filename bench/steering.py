"""Do members' comparisons steer quick tries to better adapters? A simulated community.

    .venv/bin/python bench/steering.py [--kind text|image] [--seeds 0 1 2] [--n 64] [--trials 4] [--flip 0.25] [--members 3]

For each seed: round 1 is an ordinary search (``trainer.tune.tune``) of ``--trials`` tries.
Every complete try's adapter is scored; a simulated community of ``--members`` answers every
pair of complete tries: each picks the try of the better score, except that one answer in four
(``--flip``) is flipped. Round 2 then runs ``--trials`` more tries twice, from the same sampler
seed: unsteered (as today) and steered by those answers (``tune(..., steer=...)``,
trainer/steer.py). Both end with as many trials.

- ``--kind text`` (default): ``--n`` Shakespeare passages (bench/corpora.py: the data-efficiency
  corpus), each try scored by held-out perplexity (lower is better) on passages from other
  plays. The base model is bench/tune_cost.py's tiny Llama pre-trained on Hamlet (the built-in
  135M model takes ~20 s a step on a shared 2-core CPU).
- ``--kind image``: ``--n`` pattern images with captions on the bench's small SD
  (bench/time_to_quality.py's sd1-small: SD 1.x's layout at a tenth of its widths, random
  weights), each try scored by the likeness of its final samples to the run's held-out images
  (``score_likeness``, higher is better: trainer.scores, the score members see under a grid),
  measured by a tiny CLIP with random weights built here (no pretrained image model can be had
  offline). What that shows is whether steering follows a score, not whether it finds
  better-looking adapters.

Prints one JSON line per seed and a summary: the score of round 2's pick (its lowest validation
loss) and of its best try, unsteered against steered, and how many of the seeds the steered
round won.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [str(HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != HERE]

SETTINGS = {"text": {"seq_len": 64, "batch_size": 4, "max_new_tokens": 8, "prompts": ["MACBETH:\n"], "threads": 1},
            "image": {"resolution": 64, "min_image_side": 16, "sample_steps": 8, "sample_seeds": [0, 1],
                      "sample_prompts": ["a photo of sks pattern 1"], "threads": 1}}
SCORE = {"text": ("heldout_ppl", False), "image": ("likeness", True)}  # (name, higher is better)


def heldout_ppl(run_dir: str, heldout: Path) -> float:
    from trainer.text.evaluate import evaluate

    return evaluate(data=heldout, run=run_dir, seq_len=SETTINGS["text"]["seq_len"])["perplexity"]


def likeness(run_dir: str) -> float:
    """The final samples' likeness to the run's held-out images, as its metrics.json holds it."""
    return json.loads((Path(run_dir) / "metrics.json").read_text())["score_likeness"]


def scored_round(kind: str, data: Path, heldout: Path | None, out: Path, base: str, trials: int, seed: int,
                 settings: dict, steer=()) -> dict:
    from trainer.tune import tune

    name, higher = SCORE[kind]
    result = tune(kind, [data], out, base=base, trials=trials, preset="quick", settings=settings, seed=seed,
                  full_run=False, folds=0, steer=steer)
    done = [r for r in result.trials if r.status == "complete" and r.run_dir]
    tries = [{"number": r.number, "params": r.params, "val_loss": r.val_loss, "note": r.note,
              name: heldout_ppl(r.run_dir, heldout) if kind == "text" else likeness(r.run_dir)} for r in done]
    pick = min(tries, key=lambda t: t["val_loss"]) if tries else None
    best = (max if higher else min)((t[name] for t in tries), default=None)
    return {"tries": tries, f"pick_{name}": pick and pick[name], f"best_{name}": best, "steps": result.steps_spent}


def community(tries: list[dict], members: int, flip: float, rng: random.Random, score: str = "heldout_ppl",
              higher: bool = False) -> list[dict]:
    """Every member answers every pair: the better ``score`` wins, flipped with chance ``flip``."""
    answers = []
    for a, b in itertools.combinations(tries, 2):
        for _ in range(members):
            better, worse = (a, b) if (a[score] > b[score]) == higher else (b, a)
            if rng.random() < flip:
                better, worse = worse, better
            answers.append({"better": better["params"], "worse": worse["params"]})
    return answers


def inputs(kind: str, work: Path, n: int, seed: int) -> tuple[str, Path, Path | None, dict]:
    """(base, training data, held-out data or None, settings) of one seed."""
    if kind == "text":
        from bench.corpora import select
        from bench.data_efficiency import write_passages
        from bench.tune_cost import tiny_hamlet
        from trainer.models import cache_dir

        train, held = select("shakespeare", n, seed)
        return (str(tiny_hamlet(cache_dir() / "bench" / "tiny-hamlet")), write_passages(work / f"train-{seed}.txt", train),
                write_passages(work / f"heldout-{seed}.txt", held), dict(SETTINGS["text"]))
    from bench import time_to_quality as ttq
    from tests.image_fixtures import build_clip, build_sd1_small

    base = work / "sd1-small"
    if not (base / "model_index.json").exists():
        build_sd1_small(base)
    clip = work / "clip"
    if not (clip / "config.json").exists():
        build_clip(clip)
    data, _ = ttq.write_data("image", work, n, seed, "shakespeare", 0)
    return str(base), data, None, {**SETTINGS["image"], "scorer": str(clip)}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=("text", "image"), default="text")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n", type=int, default=None, help="training passages (default 64) or images (default 8)")
    parser.add_argument("--trials", type=int, default=4, help="tries per round")
    parser.add_argument("--flip", type=float, default=0.25)
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=None, help="cap every try's steps (tests)")
    parser.add_argument("--keep", type=Path, default=None)
    args = parser.parse_args(argv)
    kind, n = args.kind, args.n or (64 if args.kind == "text" else 8)
    name, higher = SCORE[kind]

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = args.keep or Path(tempfile.mkdtemp(prefix="steering-"))
    rows = []
    for seed in args.seeds:
        base, data, heldout, settings = inputs(kind, work, n, seed)
        if args.max_steps:
            settings["steps"] = args.max_steps
        first = scored_round(kind, data, heldout, work / f"r1-{seed}", base, args.trials, seed, settings)
        answers = community(first["tries"], args.members, args.flip, random.Random(seed), name, higher)
        plain = scored_round(kind, data, heldout, work / f"plain-{seed}", base, args.trials, seed + 1000, settings)
        steered = scored_round(kind, data, heldout, work / f"steered-{seed}", base, args.trials, seed + 1000, settings,
                               steer=answers)
        row = {"kind": kind, "seed": seed, "round1": first, "answers": len(answers), "plain": plain, "steered": steered}
        rows.append(row)
        print(json.dumps(row), flush=True)
    better = (lambda a, b: a > b) if higher else (lambda a, b: a < b)
    wins = sum(better(r["steered"][f"pick_{name}"], r["plain"][f"pick_{name}"]) for r in rows)
    mean = statistics.geometric_mean if kind == "text" else statistics.fmean  # perplexities: geometric
    summary = {"kind": kind, "score": name, "higher_is_better": higher, "seeds": args.seeds, "n": n,
               "trials": args.trials, "flip": args.flip, "members": args.members,
               **{f"{w}_{name}_{side}": round(mean([r[side][f"{w}_{name}"] for r in rows]), 4)
                  for w in ("pick", "best") for side in ("plain", "steered")},
               "steered_won": f"{wins} of {len(rows)}"}
    print(json.dumps(summary), flush=True)
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return rows + [summary]


if __name__ == "__main__":
    main()
