"""Text augmentation for small datasets, driven by one ``strength`` knob in [0, 1] and
weighted by the kind of text (``trainer.text.kinds``).

Three operations, each scaled by ``strength`` and by the kind's ``Recipe`` (``RECIPES``),
applied in this order:

1. random window: a long text (over 1.5x ``min_window_chars``) is cut to a random window
   that keeps at least 60% of it (probability ``window * strength``; the kept share shrinks
   from 100% towards 60%). Prose is cut on word boundaries, code and verse on line
   boundaries, dialogue between turns;
2. shuffle (probability ``shuffle * strength``): prose puts its sentences (split after
   . ! ? and at line breaks) in a random order; dialogue its turns, each turn moving whole
   with its speaker's name; verse swaps one pair of neighbouring lines (or stanzas, where a
   text has several), a light touch that keeps most of the metre and rhyme; code never;
3. word dropout: each word is dropped with probability ``dropout * strength``. Prose drops
   across the text (at least one word always stays); verse and dialogue drop within each
   line, keep every line break and never drop a speaker's name; code never.

Code gets only the line-boundary window: any token or span noise inside code (a dropped or
swapped token, a reordered line) trains the model on code that does not parse, and what
tokens could be changed without that (renaming identifiers) needs a parser per language.
Noise that leaves the targets intact is NEFTune (``noisy_embeddings``): noise on the input
embeddings while training, which suits every kind, code included.

Only what the model is trained to produce is changed: the text of a plain example, the
completion of a prompt/completion pair, the assistant turns of a chat (a chat turn is one
turn: dialogue never shuffles or windows inside it). Prompts, system and user turns stay
exactly as they were. No library is used for the text operations: the popular text
augmenters (nlpaug, textattack) bring word-embedding or model downloads for operations this
small. NEFTune is transformers' own hook.
"""

from __future__ import annotations

import math
import random
import re
from contextlib import contextmanager
from dataclasses import dataclass, replace

from ..errors import ConfigError
from ..presets import regularisation_off
from .data import TextExample
from .kinds import QUOTED, KINDS, SPEAKER

_SENTENCE_SEP = re.compile(r"((?<=[.!?])[ \t]+|\n+)")
_LINE_SEP = re.compile(r"(\n+)")
_STANZA_SEP = re.compile(r"(\n[ \t]*\n\s*)")
_WORD = re.compile(r"\S+\s*")
_LINE_WORD = re.compile(r"\S+[ \t]*")


@dataclass(frozen=True)
class Recipe:
    """How strongly each operation runs for one kind of text, as multiples of ``strength``."""

    window: float
    """Probability factor of the random window."""
    cut_on: str
    """Where a window may start and end: ``"word"``, ``"line"`` or ``"turn"``."""
    shuffle: float
    """Probability factor of the shuffle (0: never)."""
    dropout: float
    """Per-word dropout factor (0: never)."""
    used: tuple[str, ...]
    """What runs, in a member's words (the report card shows it)."""
    off: tuple[str, ...] = ()
    """What is switched off for this kind, and why."""


RECIPES = {
    "prose": Recipe(0.5, "word", 0.5, 0.1, used=(
        "random windows of long texts", "sentence-order shuffle", "word dropout")),
    "code": Recipe(0.5, "line", 0.0, 0.0, used=("random windows of long texts, cut on line boundaries",), off=(
        "sentence and line shuffle (reordered statements do not run)",
        "word dropout (a missing token breaks the syntax)")),
    "dialogue": Recipe(0.5, "turn", 0.5, 0.1, used=(
        "random windows cut between turns", "turn-order shuffle (each turn moves whole, with its speaker)",
        "word dropout inside turns (never in a speaker's name)"), off=(
        "sentence shuffle (it would move words from one speaker's turn into another's)",)),
    "verse": Recipe(0.5, "line", 0.25, 0.1, used=(
        "random windows cut on line boundaries", "a light shuffle: two neighbouring lines (or stanzas) swap places",
        "word dropout within lines (line breaks stay)"), off=(
        "full sentence shuffle (verse keeps its lines and most of their order)",)),
}
assert set(RECIPES) == set(KINDS)


class TextAugmenter:
    """Returns a randomly changed copy of each example; ``strength=0`` changes nothing.

    ``kind`` (one of ``trainer.text.kinds.KINDS``, default ``"prose"``) picks the recipe.
    Deterministic for a given ``seed``, kind and order of calls (it owns its
    ``random.Random``). The input example is never mutated. Raises ``ConfigError`` for a
    strength outside [0, 1] or an unknown kind.
    """

    def __init__(self, strength: float, seed: int = 0, *, min_window_chars: int = 200, kind: str = "prose"):
        if (isinstance(strength, bool) or not isinstance(strength, (int, float))
                or math.isnan(strength) or not 0 <= strength <= 1):
            raise ConfigError(f"Augmentation strength must be a number from 0 (off) to 1 (strongest), "
                              f"got {strength!r}.")
        if min_window_chars < 1:
            raise ConfigError(f"min_window_chars must be at least 1, got {min_window_chars!r}.")
        if kind not in RECIPES:
            raise ConfigError(f"The kind of text must be one of {', '.join(KINDS)}, got {kind!r}.")
        self.strength = float(strength)
        self.min_window_chars = min_window_chars
        self.kind, self.recipe = kind, RECIPES[kind]
        self.rng = random.Random(seed)

    def __call__(self, example: TextExample) -> TextExample:
        if self.strength == 0:
            return example
        if example.kind == "text":
            return replace(example, text=self.augment_text(example.text))
        if example.kind == "completion":
            return replace(example, completion=self.augment_text(example.completion))
        messages = [{**m, "content": self.augment_text(m["content"], one_turn=True)} if m["role"] == "assistant"
                    else dict(m) for m in example.messages]
        return replace(example, messages=messages)

    def augment_text(self, text: str, *, one_turn: bool = False) -> str:
        """One string through window, shuffle and word dropout, as the kind's recipe weights them.

        ``one_turn``: the string is a single chat turn (dialogue keeps it whole).
        """
        if not text.strip():
            return text
        # Leading whitespace stays: a completion's first space separates it from its prompt. Text
        # cut on lines keeps its first line's indentation as part of that line (it may move or go).
        body = text.lstrip() if self.recipe.cut_on == "word" else text.lstrip("\n")
        lead = text[: len(text) - len(body)]
        rng, r, s = self.rng, self.recipe, self.strength
        whole = one_turn and self.kind == "dialogue"
        if len(body) > 1.5 * self.min_window_chars and rng.random() < r.window * s and not whole:
            body = self._window(body)
        if r.shuffle and rng.random() < r.shuffle * s and not whole:
            body = self._shuffle(body)
        if self.kind == "prose":
            return lead + drop_words(body, r.dropout * s, rng)
        return lead + drop_words_in_lines(body, r.dropout * s, rng)

    def _window(self, text: str) -> str:
        keep = 1.0 - 0.4 * self.strength * self.rng.random()  # from 100% down to 60%
        size = max(self.min_window_chars, math.ceil(len(text) * keep))
        if self.recipe.cut_on == "word":
            start = self.rng.randint(0, len(text) - size)
            return _word_window(text, start, start + size)
        parts = split_turns(text) if self.recipe.cut_on == "turn" else _LINE_SEP.split(text)
        return _unit_window(parts, size, self.rng)

    def _shuffle(self, text: str) -> str:
        if self.kind == "prose":
            return shuffle_sentences(text, self.rng)
        if self.kind == "dialogue":
            return shuffle_units(split_turns(text), self.rng)
        stanzas = _STANZA_SEP.split(text)
        return swap_neighbours(stanzas if len(stanzas) > 2 else _LINE_SEP.split(text), self.rng)


def _word_window(text: str, start: int, end: int) -> str:
    """``text[start:end]`` widened to whole words at both ends, then stripped."""
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    while end < len(text) and not text[end].isspace():
        end += 1
    return text[start:end].strip()


def _unit_window(parts: list[str], size: int, rng: random.Random) -> str:
    """The shortest run of whole units (``parts``: unit, separator, unit, ...) from a random
    start that holds ``size`` characters; indentation of its first line is kept."""
    text = "".join(parts)
    offsets, at = [], 0
    for part in parts:
        offsets.append(at)
        at += len(part)
    starts = [i for i in range(0, len(parts), 2) if len(text) - offsets[i] >= size] or [0]
    first = rng.choice(starts)
    last = first
    while last + 2 < len(parts) and offsets[last] + len(parts[last]) - offsets[first] < size:
        last += 2
    return "".join(parts[first:last + 1]).strip("\n").rstrip()


def split_turns(text: str) -> list[str]:
    """``text`` as [turn, separator, turn, ...]: a turn starts at a line that opens with a
    speaker's name and a colon or a quotation mark, and runs until the next such line. Text
    with no such line has one turn per line."""
    lines = _LINE_SEP.split(text)  # line, separator, line, ...
    if not any(SPEAKER.match(line) or QUOTED.match(line) for line in lines[0::2]):
        return lines
    parts = [lines[0]]
    for i in range(1, len(lines), 2):
        separator, line = lines[i], lines[i + 1]
        if SPEAKER.match(line) or QUOTED.match(line):
            parts += [separator, line]
        else:
            parts[-1] += separator + line
    return parts


def _unit_slots(parts: list[str]) -> list[int]:
    """Where the non-blank units of ``parts`` (unit, separator, unit, ...) are."""
    return [i for i in range(0, len(parts), 2) if parts[i].strip()]


def shuffle_units(parts: list[str], rng: random.Random) -> str:
    """The units of ``parts`` (unit, separator, unit, ...) in a new random order; separators
    keep their places. Fewer than two units come back unchanged."""
    parts = list(parts)
    slots = _unit_slots(parts)
    if len(slots) < 2:
        return "".join(parts)
    units = [parts[i] for i in slots]
    order = list(range(len(units)))
    rng.shuffle(order)
    if order == sorted(order):  # a shuffle that changes nothing wastes the draw
        order = order[1:] + order[:1]
    for slot, j in zip(slots, order):
        parts[slot] = units[j]
    return "".join(parts)


def shuffle_sentences(text: str, rng: random.Random) -> str:
    """Sentences of ``text`` in a new random order; separators keep their places.

    Text with fewer than two sentences comes back unchanged.
    """
    return shuffle_units(_SENTENCE_SEP.split(text), rng)


def swap_neighbours(parts: list[str], rng: random.Random) -> str:
    """One random pair of neighbouring units of ``parts`` (unit, separator, unit, ...) swapped."""
    parts = list(parts)
    slots = _unit_slots(parts)
    if len(slots) < 2:
        return "".join(parts)
    k = rng.randrange(len(slots) - 1)
    a, b = slots[k], slots[k + 1]
    parts[a], parts[b] = parts[b], parts[a]
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


def drop_words_in_lines(text: str, p: float, rng: random.Random) -> str:
    """Drop each word with probability ``p`` within each line: line breaks, indentation and a
    speaker's name at the start of a line stay, and every line keeps at least one word."""
    if p <= 0:
        return text
    lines = text.split("\n")
    for i, line in enumerate(lines):
        label = SPEAKER.match(line)
        head_end = label.end() if label else len(line) - len(line.lstrip())
        head, rest = line[:head_end], line[head_end:]
        words = _LINE_WORD.findall(rest)
        if not words:
            continue
        kept = [w for w in words if rng.random() >= p]
        if len(kept) < len(words):
            lead = rest[: len(rest) - len(rest.lstrip())]
            lines[i] = head + lead + "".join(kept or [rng.choice(words)]).rstrip()
    return "\n".join(lines)


# Why NEFTune is off unless a member sets it: bench/data_efficiency.py's ``neftune`` arm against
# ``none`` (docs/benchmarks.md, issue 16).
NEFTUNE_OFF = ("off by default: measured at 8 and 32 examples, alpha 5 changed held-out perplexity by -1.4% to "
               "+0.3% on four kinds of text (3 seeds each), under the 2% it must earn; the trainer setting "
               "neftune_alpha turns them on")


@contextmanager
def noisy_embeddings(model, alpha: float):
    """NEFTune (Jain et al. 2023) for the block: uniform noise scaled by ``alpha / sqrt(length x
    width)`` on the input embeddings of ``model`` (a peft model or a plain one).

    It is transformers' own hook (``transformers.integrations.neftune``), which noises only
    while the embedding layer is in training mode; it is attached for the block and removed
    after it, so evaluation, sampling and the saved adapter never see it. ``alpha`` 0 does
    nothing.
    """
    if not alpha:
        yield
        return
    from transformers.integrations.neftune import activate_neftune, deactivate_neftune

    handle = activate_neftune(model, alpha)
    try:
        yield
    finally:
        deactivate_neftune(model, handle)


def augmentation_plan(text_kind, neftune_alpha: float = 0.0, *, preset: str | None = None,
                      augment: float | None = None, lora_dropout: float | None = None,
                      n_train: int | None = None) -> list[tuple[str, str]]:
    """What a run on text of ``text_kind`` (a ``trainer.text.kinds.TextKind``) augments and
    what it leaves off, as (heading, words) pairs in a member's words (the report card).

    ``preset``, ``augment`` and ``lora_dropout`` are the run's settings as a member left them
    (``None``: the preset decides) and ``n_train`` the examples it trains on; where the preset
    switches both off for this kind and size (``trainer.presets.regularisation_off``), the plan
    says so and why."""
    recipe, kind = RECIPES[text_kind.kind], text_kind.kind
    why = regularisation_off(kind, preset, n_train)
    used = "; ".join(recipe.used)
    plan = [("Kind of text", f"{kind} ({'declared' if text_kind.declared else 'detected'}: {text_kind.reason})"),
            (f"Augmentation for {kind}", "off (augment is 0 in the settings)" if augment == 0
             else f"off by default (see below); when on: {used}" if why and augment is None else used)]
    if recipe.off:
        plan.append((f"Off for {kind}", "; ".join(recipe.off)))
    defaulted = [(words, setting) for words, setting, value in (("augmentation", "augment", augment),
                                                                ("LoRA dropout", "lora_dropout", lora_dropout))
                 if value is None]
    if why and defaulted:
        plan.append((f"Off by default for {kind}",
                     f"{' and '.join(w for w, _ in defaulted)}: {why}. The best preset keeps "
                     f"{'them' if len(defaulted) > 1 else 'it'}; setting {' or '.join(s for _, s in defaulted)} "
                     f"above 0 turns {'them' if len(defaulted) > 1 else 'it'} on"))
    plan.append(("Noisy embeddings (NEFTune)", f"on, alpha {neftune_alpha:g}" if neftune_alpha else NEFTUNE_OFF))
    return plan
