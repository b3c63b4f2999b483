"""Loss and perplexity of a base model or a run's adapter on a text file."""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import UserError


def evaluate(*, data: str | Path | list, run: str | Path | None = None, base: str | None = None,
             seq_len: int = 256, batch_size: int = 4) -> dict:
    """Mean loss per trained token over every example of ``data`` (no split, no augmentation).

    Give exactly one of ``run`` (its base model plus adapter) or ``base`` (a model reference).
    Runs in float32 so that figures compare across machines.
    """
    from ..models import load_causal_lm, resolve_base
    from .data import read_text_examples
    from .packing import encode, pack
    from .sample import load_run_model
    from .train import evaluate_rows

    if (run is None) == (base is None):
        raise UserError("evaluate needs exactly one of a run folder or --base MODEL.")
    paths = data if isinstance(data, list) else [data]
    examples, _ = read_text_examples([str(p) for p in paths])
    if run is not None:
        model, tokenizer, _ = load_run_model(run)
    else:
        model, tokenizer = load_causal_lm(resolve_base(base))
    rows = pack([encode(e, tokenizer) for e in examples], seq_len)
    tokens = sum(sum(1 for x in r.labels if x != -100) for r in rows)
    loss = evaluate_rows(model, rows, tokenizer.pad_token_id, batch_size)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50)), "tokens": tokens, "examples": len(examples)}
