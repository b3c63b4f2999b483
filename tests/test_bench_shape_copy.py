"""bench/shape_copy.py: a model folder with another's shapes and tokenizer, random weights, loadable as a base."""

from __future__ import annotations

from bench.shape_copy import add_random_weights, copy_shapes
from trainer.models import load_causal_lm


def test_a_shape_copy_travels_without_weights_then_loads_with_random_ones(tiny_llama, tmp_path):
    out = tmp_path / "shape"
    (out).mkdir()
    (out / "model.safetensors").write_bytes(b"stale weights from an earlier run")
    copied = copy_shapes(str(tiny_llama), out)
    assert "config.json" in copied and "tokenizer.json" in copied
    assert sorted(p.name for p in out.iterdir()) == sorted(copied)  # no weights: it must stay small

    n = add_random_weights(out, seed=1)  # the tiny Llama itself was drawn with seed 0
    copy, tokenizer = load_causal_lm(out)
    source, source_tokenizer = load_causal_lm(tiny_llama)
    assert n == sum(p.numel() for p in source.parameters())
    assert {k: v.shape for k, v in copy.state_dict().items()} == {k: v.shape for k, v in source.state_dict().items()}
    assert tokenizer("To be, or not").input_ids == source_tokenizer("To be, or not").input_ids
    assert not all((a == b).all() for a, b in zip(copy.parameters(), source.parameters()))  # random, not copied
