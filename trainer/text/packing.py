"""Tokenize examples with loss masks, and pack them into sequences without padding waste.

Packing puts several examples into one row of ``seq_len`` tokens. Each example's position
ids restart at 0, and the row is fed with ``attention_mask=None``: transformers then builds a
block-diagonal causal mask from the position ids, so packed examples never attend to each
other. Rows are filled first-fit-decreasing, which leaves almost no padding.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

IGNORE = -100

# Used only when a tokenizer has no chat template of its own (tiny test models, base models).
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass
class Encoded:
    """One tokenized example: ids, and labels with IGNORE where no loss is taken."""

    ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


@dataclass
class Row:
    """One packed sequence: several examples back to back."""

    ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)

    def add(self, piece: Encoded) -> None:
        # The first token of a piece has no context inside the piece, so it is never a target
        # (unpacked training never predicts it either).
        self.ids += piece.ids
        self.labels += [IGNORE] + piece.labels[1:]
        self.positions += list(range(len(piece.ids)))


def encode(example, tokenizer) -> Encoded:
    """Tokenize one TextExample; loss on everything for plain text, on completions otherwise."""
    eos = tokenizer.eos_token or ""
    if example.kind == "text":
        text, spans = example.text + eos, [(0, len(example.text) + len(eos))]
    elif example.kind == "completion":
        text = example.prompt + example.completion + eos
        spans = [(len(example.prompt), len(text))]
    else:
        text, spans = _render_chat(example.messages, tokenizer)
    enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    ids = enc["input_ids"]
    labels = [tok if _inside(start, end, spans) else IGNORE for tok, (start, end) in zip(ids, enc["offset_mapping"])]
    # Special tokens added by the tokenizer (BOS) have empty offsets; never learn to emit them.
    return Encoded(ids=ids, labels=labels)


def _inside(start: int, end: int, spans: list[tuple[int, int]]) -> bool:
    # Overlap, not containment: a byte-level token such as " mainly" starts on the prompt's
    # trailing space but belongs to the completion.
    return end > start and any(start < hi and end > lo for lo, hi in spans)


def _render_chat(messages: list[dict], tokenizer) -> tuple[str, list[tuple[int, int]]]:
    """Render a conversation with the model's chat template; return it and the assistant spans."""
    template = tokenizer.chat_template or CHATML_TEMPLATE

    def render(msgs, generation_prompt=False) -> str:
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation_prompt,
                                             chat_template=template)

    text = render(messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            start = len(render(messages[:i], generation_prompt=True)) if i else 0
            end = len(render(messages[: i + 1]))
            spans.append((start, end))
    return text, spans


def chunk(piece: Encoded, seq_len: int) -> list[Encoded]:
    """Cut an example longer than ``seq_len`` into pieces that fit (each keeps its labels)."""
    return [Encoded(piece.ids[i:i + seq_len], piece.labels[i:i + seq_len]) for i in range(0, len(piece.ids), seq_len)]


def pack(pieces: list[Encoded], seq_len: int, rng: random.Random | None = None) -> list[Row]:
    """First-fit-decreasing packing into rows of at most ``seq_len`` tokens, then shuffled."""
    items = [c for p in pieces for c in chunk(p, seq_len) if len(c.ids) > 1 and any(x != IGNORE for x in c.labels[1:])]
    items.sort(key=lambda c: len(c.ids), reverse=True)
    rows: list[Row] = []
    space: list[int] = []
    for item in items:
        for i, free in enumerate(space):
            if len(item.ids) <= free:
                rows[i].add(item)
                space[i] -= len(item.ids)
                break
        else:
            row = Row()
            row.add(item)
            rows.append(row)
            space.append(seq_len - len(item.ids))
    if rng is not None:
        rng.shuffle(rows)
    return rows


def collate(rows: list[Row], pad_id: int):
    """Stack rows into tensors, right-padded to the longest row of this batch.

    Padding continues the position count of the row's last example as a separate span, gets
    IGNORE labels, and is the only padding a batch carries.
    """
    import torch

    width = max(len(r.ids) for r in rows)
    ids, labels, positions = [], [], []
    for r in rows:
        pad = width - len(r.ids)
        ids.append(r.ids + [pad_id] * pad)
        labels.append(r.labels + [IGNORE] * pad)
        positions.append(r.positions + list(range(pad)))
    return {
        "input_ids": torch.tensor(ids),
        "labels": torch.tensor(labels),
        "position_ids": torch.tensor(positions),
        "real_tokens": sum(len(r.ids) for r in rows),
    }
