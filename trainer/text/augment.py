"""Text augmentation for small datasets, driven by one ``strength`` knob in [0, 1].

Three operations, each scaled by ``strength``, applied in this order:

1. random window: a long text (over 1.5x ``min_window_chars``) is cut to a random window
   that keeps at least 60% of it, starting and ending on word boundaries
   (probability ``0.5 * strength``; the kept share shrinks from 100% towards 60%);
2. sentence shuffle: sentences (split after . ! ? and at line breaks) are put in a random
   order, line breaks and spaces staying where they were (probability ``0.5 * strength``;
   nothing happens to a single sentence);
3. word dropout: each word is dropped with probability ``0.1 * strength``; at least one word
   always stays.

Only what the model is trained to produce is changed: the text of a plain example, the
completion of a prompt/completion pair, the assistant turns of a chat. Prompts, system and
user turns stay exactly as they were. No library is used: the popular text augmenters
(nlpaug, textattack) bring word-embedding or model downloads for operations this small.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import replace

from ..errors import ConfigError
from .data import TextExample

_SENTENCE_SEP = re.compile(r"((?<=[.!?])[ \t]+|\n+)")
_WORD = re.compile(r"\S+\s*")


class TextAugmenter:
    """Returns a randomly changed copy of each example; ``strength=0`` changes nothing.

    Deterministic for a given ``seed`` and order of calls (it owns its ``random.Random``).
    The input example is never mutated. Raises ``ConfigError`` for a strength outside [0, 1].
    """

    def __init__(self, strength: float, seed: int = 0, *, min_window_chars: int = 200):
        if (isinstance(strength, bool) or not isinstance(strength, (int, float))
                or math.isnan(strength) or not 0 <= strength <= 1):
            raise ConfigError(f"Augmentation strength must be a number from 0 (off) to 1 (strongest), "
                              f"got {strength!r}.")
        if min_window_chars < 1:
            raise ConfigError(f"min_window_chars must be at least 1, got {min_window_chars!r}.")
        self.strength = float(strength)
        self.min_window_chars = min_window_chars
        self.rng = random.Random(seed)

    def __call__(self, example: TextExample) -> TextExample:
        if self.strength == 0:
            return example
        if example.kind == "text":
            return replace(example, text=self.augment_text(example.text))
        if example.kind == "completion":
            return replace(example, completion=self.augment_text(example.completion))
        messages = [{**m, "content": self.augment_text(m["content"])} if m["role"] == "assistant" else dict(m)
                    for m in example.messages]
        return replace(example, messages=messages)

    def augment_text(self, text: str) -> str:
        """One string through window, sentence shuffle and word dropout."""
        if not text.strip():
            return text
        # Leading whitespace stays: a completion's first space separates it from its prompt.
        body = text.lstrip()
        lead = text[: len(text) - len(body)]
        rng, p = self.rng, 0.5 * self.strength
        if len(body) > 1.5 * self.min_window_chars and rng.random() < p:
            body = self._window(body)
        if rng.random() < p:
            body = shuffle_sentences(body, rng)
        return lead + drop_words(body, 0.1 * self.strength, rng)

    def _window(self, text: str) -> str:
        keep = 1.0 - 0.4 * self.strength * self.rng.random()  # from 100% down to 60%
        size = max(self.min_window_chars, math.ceil(len(text) * keep))
        start = self.rng.randint(0, len(text) - size)
        return _word_window(text, start, start + size)


def _word_window(text: str, start: int, end: int) -> str:
    """``text[start:end]`` widened to whole words at both ends, then stripped."""
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    while end < len(text) and not text[end].isspace():
        end += 1
    return text[start:end].strip()


def shuffle_sentences(text: str, rng: random.Random) -> str:
    """Sentences of ``text`` in a new random order; separators keep their places.

    Text with fewer than two sentences comes back unchanged.
    """
    parts = _SENTENCE_SEP.split(text)  # sentence, separator, sentence, ...
    slots = [i for i in range(0, len(parts), 2) if parts[i].strip()]
    if len(slots) < 2:
        return text
    sentences = [parts[i] for i in slots]
    order = list(range(len(sentences)))
    rng.shuffle(order)
    if order == sorted(order):  # a shuffle that changes nothing wastes the draw
        order = order[1:] + order[:1]
    for slot, j in zip(slots, order):
        parts[slot] = sentences[j]
    return "".join(parts)


def drop_words(text: str, p: float, rng: random.Random) -> str:
    """Drop each word (with the whitespace after it) with probability ``p``; one always stays."""
    if p <= 0:
        return text
    lead = text[: len(text) - len(text.lstrip())]
    words = _WORD.findall(text, len(lead))
    kept = [w for w in words if rng.random() >= p]
    if not kept:
        kept = [rng.choice(words)]
    return (lead + "".join(kept)).rstrip() if len(kept) < len(words) else text
