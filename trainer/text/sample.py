"""Generate from a finished text run: the base model with the run's adapter loaded."""

from __future__ import annotations

from pathlib import Path

from .. import kinds
from ..errors import ModelError
from ..rundir import RunDir


def load_run_model(run: str | Path, dtype=None):
    """Load a text run's base model with its adapter attached; returns (model, tokenizer, metrics)."""
    from peft import PeftModel

    from ..models import load_causal_lm, resolve_base

    run_dir = RunDir.open(run)
    metrics = run_dir.read_metrics()
    if kinds.KINDS.get(metrics.get("kind", kinds.DEFAULT.name)) is not kinds.TEXT:
        raise ModelError(f"{run_dir.root} is an {metrics['kind']} run, not a text run.")
    if not (run_dir.adapter / "adapter_config.json").exists():
        raise ModelError(f"{run_dir.root} has no adapter (status: {metrics.get('status')}); finish or resume the run first.")
    base_path = Path(metrics.get("base_path", ""))
    if not (base_path / "config.json").exists():
        base_path = resolve_base(metrics["base"])
    model, tokenizer = load_causal_lm(base_path, dtype=dtype)
    model = PeftModel.from_pretrained(model, run_dir.adapter, is_trainable=False)
    return model, tokenizer, metrics


def sample_run(run: str | Path, prompts: list[str], *, seed: int = 0, max_new_tokens: int = 60,
               count: int = 1) -> list[dict]:
    """Return ``count`` samples per prompt as ``{"prompt", "seed", "text"}`` dicts."""
    from .train import generate

    model, tokenizer, _ = load_run_model(run)
    rows = []
    for i in range(count):
        for prompt, text in zip(prompts, generate(model, tokenizer, prompts, max_new_tokens, seed + i)):
            rows.append({"prompt": prompt, "seed": seed + i, "text": text})
    return rows
