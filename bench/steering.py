"""Do members' comparisons steer quick tries to better adapters? A simulated community, on text.

    .venv/bin/python bench/steering.py [--seeds 0 1 2] [--n 64] [--trials 4] [--flip 0.25] [--members 3]

For each seed: round 1 is an ordinary search (``trainer.tune.tune``) of ``--trials`` tries on
``--n`` Shakespeare passages (bench/corpora.py: the data-efficiency corpus, held-out passages
from other plays). Every complete try's adapter is scored by held-out perplexity. A simulated
community of ``--members`` answers every pair of complete tries: each picks the try of lower
held-out perplexity, except that one answer in four (``--flip``) is flipped. Round 2 then runs
``--trials`` more tries twice, from the same sampler seed: unsteered (as today) and steered by
those answers (``tune(..., steer=...)``, trainer/steer.py). Both end with as many trials.

Prints one JSON line per seed and a summary: the held-out perplexity of round 2's pick (its
lowest validation loss) and of its best try, unsteered against steered, and how many of the
seeds the steered round won. The base model is bench/tune_cost.py's tiny Llama pre-trained on
Hamlet (the built-in 135M model takes ~20 s a step on a shared 2-core CPU).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [str(HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != HERE]

SETTINGS = {"seq_len": 64, "batch_size": 4, "max_new_tokens": 8, "prompts": ["MACBETH:\n"], "threads": 1}


def heldout_ppl(run_dir: str, heldout: Path) -> float:
    from trainer.text.evaluate import evaluate

    return evaluate(data=heldout, run=run_dir, seq_len=SETTINGS["seq_len"])["perplexity"]


def scored_round(data: Path, heldout: Path, out: Path, base: str, trials: int, seed: int, steer=()) -> dict:
    from trainer.tune import tune

    result = tune("text", [data], out, base=base, trials=trials, preset="quick", settings=SETTINGS, seed=seed,
                  full_run=False, folds=0, steer=steer)
    done = [r for r in result.trials if r.status == "complete" and r.run_dir]
    tries = [{"number": r.number, "params": r.params, "val_loss": r.val_loss, "note": r.note,
              "heldout_ppl": heldout_ppl(r.run_dir, heldout)} for r in done]
    pick = min(tries, key=lambda t: t["val_loss"]) if tries else None
    return {"tries": tries, "pick_ppl": pick and pick["heldout_ppl"],
            "best_ppl": min((t["heldout_ppl"] for t in tries), default=None), "steps": result.steps_spent}


def community(tries: list[dict], members: int, flip: float, rng: random.Random) -> list[dict]:
    """Every member answers every pair: the lower held-out perplexity wins, flipped with chance ``flip``."""
    answers = []
    for a, b in itertools.combinations(tries, 2):
        for _ in range(members):
            better, worse = (a, b) if a["heldout_ppl"] < b["heldout_ppl"] else (b, a)
            if rng.random() < flip:
                better, worse = worse, better
            answers.append({"better": better["params"], "worse": worse["params"]})
    return answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n", type=int, default=64, help="training passages")
    parser.add_argument("--trials", type=int, default=4, help="tries per round")
    parser.add_argument("--flip", type=float, default=0.25)
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--keep", type=Path, default=None)
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from bench.corpora import select
    from bench.data_efficiency import write_passages
    from bench.tune_cost import tiny_hamlet
    from trainer.models import cache_dir

    base = str(tiny_hamlet(cache_dir() / "bench" / "tiny-hamlet"))
    work = args.keep or Path(tempfile.mkdtemp(prefix="steering-"))
    rows = []
    for seed in args.seeds:
        train, held = select("shakespeare", args.n, seed)
        data = write_passages(work / f"train-{seed}.txt", train)
        heldout = write_passages(work / f"heldout-{seed}.txt", held)
        first = scored_round(data, heldout, work / f"r1-{seed}", base, args.trials, seed)
        answers = community(first["tries"], args.members, args.flip, random.Random(seed))
        plain = scored_round(data, heldout, work / f"plain-{seed}", base, args.trials, seed + 1000)
        steered = scored_round(data, heldout, work / f"steered-{seed}", base, args.trials, seed + 1000, steer=answers)
        row = {"seed": seed, "round1": first, "answers": len(answers), "plain": plain, "steered": steered}
        rows.append(row)
        print(json.dumps(row), flush=True)
    wins = sum(r["steered"]["pick_ppl"] < r["plain"]["pick_ppl"] for r in rows)
    geo = lambda key, which: math.exp(sum(math.log(r[which][key]) for r in rows) / len(rows))  # noqa: E731
    print(json.dumps({"seeds": args.seeds, "n": args.n, "trials": args.trials, "flip": args.flip, "members": args.members,
                      "pick_ppl_plain": round(geo("pick_ppl", "plain"), 3),
                      "pick_ppl_steered": round(geo("pick_ppl", "steered"), 3),
                      "best_ppl_plain": round(geo("best_ppl", "plain"), 3),
                      "best_ppl_steered": round(geo("best_ppl", "steered"), 3),
                      "steered_won": f"{wins} of {len(rows)}"}), flush=True)
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
