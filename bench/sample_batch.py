"""Seconds to draw a text run's samples: loracord's ``generate`` (every prompt in one left-padded
batch) against drawing the prompts one at a time, as loracord did before.

A text run draws its samples twice, before training (the base) and after (the adapter): 3 prompts
of ``--tokens`` new tokens each with the defaults. The sides alternate for ``--rounds`` rounds on
one loaded model, each in the run's precision choice (``--precision``), and the line gives the
best and median seconds of each side and their ratio (one-by-one over batched: above 1, batching
is faster).

    flock /tmp/loracord-cpu.lock .venv/bin/python bench/sample_batch.py --precision fp32 bf16
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

PROMPTS = ["HAMLET: To be, or not to be, that", "MACBETH: Is this a dagger which I see",
           "LEAR: Blow, winds, and crack your cheeks! rage!"]


def one_by_one(model, tokenizer, prompts: list[str], max_new_tokens: int, seed: int) -> list[str]:
    """The baseline: each prompt alone, seeded per prompt (loracord's sampling until batching)."""
    import torch

    from trainer.text.train import SAMPLE_TEMPERATURE

    out = []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        for prompt in prompts:
            torch.manual_seed(seed)
            inputs = tokenizer(prompt, return_tensors="pt")
            ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=True,
                                 temperature=SAMPLE_TEMPERATURE, top_p=0.95, pad_token_id=tokenizer.pad_token_id)
            out.append(tokenizer.decode(ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
    return out


def measure(base: str, precision: str, tokens: int, rounds: int) -> dict:
    import torch

    from trainer.models import load_causal_lm, resolve_base
    from trainer.text.train import generate

    model, tokenizer = load_causal_lm(resolve_base(base), dtype=torch.bfloat16 if precision == "bf16" else None)
    model.eval()
    sides = {"batched": generate, "one_by_one": one_by_one}
    for fn in sides.values():  # warm-up, not timed
        fn(model, tokenizer, PROMPTS[:1], 2, 0)
    times: dict[str, list[float]] = {name: [] for name in sides}
    lengths: dict[str, list[int]] = {name: [] for name in sides}
    for r in range(rounds):
        for name in (sides if r % 2 == 0 else list(sides)[::-1]):
            started = time.perf_counter()
            texts = sides[name](model, tokenizer, PROMPTS, tokens, r)
            times[name].append(time.perf_counter() - started)
            lengths[name].append(sum(len(tokenizer(t)["input_ids"]) for t in texts))
    summary = {name: {"best_s": round(min(v), 3), "median_s": round(statistics.median(v), 3),
                      "rounds": [round(x, 3) for x in v], "new_tokens_mean": statistics.fmean(lengths[name])}
               for name, v in times.items()}
    return {"precision": precision, **summary,
            "one_by_one_over_batched": {"best": round(min(times["one_by_one"]) / min(times["batched"]), 2),
                                        "median": round(statistics.median(times["one_by_one"])
                                                        / statistics.median(times["batched"]), 2)}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="smollm2-135m")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    parser.add_argument("--tokens", type=int, default=48, help="new tokens per prompt (a run's max_new_tokens)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    import torch

    from bench.benchlib import machine

    torch.set_num_threads(args.threads)
    line = {"bench": "sample_batch", "base": args.base, "prompts": len(PROMPTS), "tokens": args.tokens,
            "results": [measure(args.base, p, args.tokens, args.rounds) for p in args.precision], **machine()}
    print(json.dumps(line), flush=True)
    return line


if __name__ == "__main__":
    main()
