"""A causal LM folder with another model's shapes and tokenizer but random weights.

For throughput benchmarks on a machine the real weights cannot reach: a GPU machine that sees
no model hub, where a run carries at most 64 MiB and the built-in model's GGUF is 98 MB. A
training step's speed and memory depend on the shapes, not on the values of the weights.

    python bench/shape_copy.py OUT [--base smollm2-135m]   # config and tokenizer only (a few MB)
    python bench/shape_copy.py OUT --weights               # then, where it runs: random weights

``OUT`` then works as ``--base OUT`` for ``bench/text_throughput.py`` (and any text run).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])

# What a model folder needs besides its weights; the tokenizer files that exist are copied.
SHAPE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "chat_template.jinja")


def copy_shapes(base: str, out: Path) -> list[str]:
    """Copy ``base``'s config and tokenizer (no weights) into ``out``; the names copied."""
    from trainer.models import resolve_base

    source = resolve_base(base)
    shutil.rmtree(out, ignore_errors=True)  # no weights left from an earlier --weights: they must not travel
    out.mkdir(parents=True)
    copied = [name for name in SHAPE_FILES if (source / name).exists()]
    for name in copied:
        shutil.copy2(source / name, out / name)
    if "config.json" not in copied:
        raise SystemExit(f"{source} has no config.json to copy")
    return copied


def add_random_weights(out: Path, seed: int = 0) -> int:
    """Write random weights of ``out/config.json``'s shapes as safetensors; the parameter count."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(out))
    model.save_pretrained(out, safe_serialization=True)
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--base", default="smollm2-135m", help="the model whose shapes and tokenizer are copied")
    parser.add_argument("--weights", action="store_true", help="add random weights to OUT (from OUT/config.json)")
    args = parser.parse_args()
    if args.weights:
        print(f"{args.out}: {add_random_weights(args.out) / 1e6:.1f}M random parameters")
    else:
        print(f"{args.out}: {', '.join(copy_shapes(args.base, args.out))}")


if __name__ == "__main__":
    main()
