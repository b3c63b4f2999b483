"""Tokenization with loss masks, and packing without padding waste or cross-talk."""

from __future__ import annotations

import random

import pytest
import torch

from trainer.text.data import TextExample
from trainer.text.packing import IGNORE, CHATML_TEMPLATE, collate, encode, pack


@pytest.fixture(scope="module")
def tokenizer(tiny_llama):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    tok.chat_template = CHATML_TEMPLATE
    return tok


def labelled_text(tokenizer, enc) -> str:
    return tokenizer.decode([i for i, label in zip(enc.ids, enc.labels) if label != IGNORE])


def test_plain_text_trains_on_everything_and_eos(tokenizer):
    enc = encode(TextExample(text="All that glitters is not gold."), tokenizer)
    assert labelled_text(tokenizer, enc) == "All that glitters is not gold.<|im_end|>"


def test_completion_loss_only_on_completion(tokenizer):
    enc = encode(TextExample(prompt="Question: the rain? ", completion="mainly in the plain"), tokenizer)
    assert labelled_text(tokenizer, enc).strip() == "mainly in the plain<|im_end|>"
    assert enc.labels[0] == IGNORE


def test_chat_loss_only_on_assistant_turns(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "fox?"},
                {"role": "assistant", "content": "quick brown fox"}, {"role": "user", "content": "dog?"},
                {"role": "assistant", "content": "the lazy dog"}]
    enc = encode(TextExample(messages=messages), tokenizer)
    learned = labelled_text(tokenizer, enc)
    assert "quick brown fox" in learned and "the lazy dog" in learned
    assert "fox?" not in learned and "Be brief" not in learned and "dog?" not in learned


@pytest.mark.parametrize("seq_len", [16, 32, 64])
def test_pack_keeps_every_token_within_rows(tokenizer, seq_len):
    texts = [" ".join(["word"] * n) for n in [1, 3, 5, 8, 13, 21, 34, 55]]
    pieces = [encode(TextExample(text=t), tokenizer) for t in texts]
    rows = pack(pieces, seq_len, random.Random(0))
    assert all(len(r.ids) <= seq_len for r in rows)
    assert sum(len(r.ids) for r in rows) == sum(len(p.ids) for p in pieces)
    # positions restart at 0 where each piece starts, so pieces cannot attend to each other
    starts = sum(r.positions.count(0) for r in rows)
    assert starts >= len(pieces)
    # far fewer rows than examples padded one per row would need
    assert len(rows) <= -(-sum(len(p.ids) for p in pieces) // seq_len) + 2


def test_collate_pads_only_to_longest_row(tokenizer):
    pieces = [encode(TextExample(text="word " * n), tokenizer) for n in (3, 9)]
    rows = pack(pieces, 64)
    batch = collate(rows, tokenizer.pad_token_id)
    assert batch["input_ids"].shape[1] == max(len(r.ids) for r in rows)
    assert batch["real_tokens"] == sum(len(p.ids) for p in pieces)


def test_packed_rows_match_unpacked_loss(tiny_llama, tokenizer):
    """Packing changes no example's loss: the block-diagonal mask keeps examples apart."""
    from transformers import AutoModelForCausalLM

    from trainer.text.train import evaluate_rows

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    pieces = [encode(TextExample(text=t), tokenizer) for t in
              ["The quick brown fox jumps.", "To be, or not to be.", "Out, damned spot!"]]
    packed = evaluate_rows(model, pack(pieces, 256), tokenizer.pad_token_id, batch_size=4)
    alone = [pack([p], 256) for p in pieces]
    counts = [sum(1 for x in r[0].labels if x != IGNORE) for r in alone]
    losses = [evaluate_rows(model, r, tokenizer.pad_token_id, batch_size=1) for r in alone]
    assert packed == pytest.approx(sum(l * c for l, c in zip(losses, counts)) / sum(counts), rel=1e-4)
