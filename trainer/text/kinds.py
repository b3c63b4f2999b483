"""What kind of text a dataset is: ``code``, ``dialogue``, ``verse`` or ``prose``.

Augmentation that helps prose breaks other text: a shuffled sentence order or a dropped word
turns code into code that does not parse, and a sentence shuffle moves words from one
speaker's turn into another's. So ``TextAugmenter`` weights its transforms by the kind
(``trainer.text.augment.RECIPES``), and this module tells the kinds apart from the examples
themselves, with a few counts a member can check by eye. The checks run in this order, and
the first that holds decides:

1. ``code``: at least 40% of non-blank lines are indented or end in ``:`` / ``{`` / ``;`` /
   ``}`` (a speaker's ``NAME:`` line does not count), *and* brackets and operators make up at
   least 3% of the characters or at least 10% of lines start with a programming keyword.
   Code comes first because it is what the wrong augmentation harms most (a chat whose
   answers are code is code).
2. ``dialogue``: half or more of the examples are chat conversations (``messages`` with
   roles); or, with at least two different speakers, 30% of lines (or half the examples)
   start with a speaker's name and a colon (``ALICE:``, ``First Witch:``); or half the lines
   open with a quotation mark or a dash (quoted turns).
3. ``verse``: half or more of the examples span several lines, the lines are short (60
   characters on average at most) and 60% of them start with a capital letter, as verse lines
   do and hard-wrapped prose or list items mostly do not.
4. ``prose``: everything else.

A member can declare the kind instead (the trainer setting ``text_kind``); ``resolve_kind``
says which one a run uses and why. Nothing here imports torch.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

from ..errors import ConfigError

KINDS = ("code", "dialogue", "verse", "prose")
TEXT_KIND_CHOICES = ("auto", *KINDS)

# A speaker's label at the start of a line: one to four capitalised words (or an all-caps
# name) and a colon, followed by the turn or the end of the line. "KING LEAR:", "Ghost:", "Alice:".
SPEAKER = re.compile(r"^[ \t]*((?:[A-Z][\w'.\-]*)(?:[ \t]+[A-Z][\w'.\-]*){0,3})[ \t]*:(?=\s|$)")
# A quoted turn: a quotation mark or a long dash (not "- ", which opens Markdown list items).
QUOTED = re.compile(r"^[ \t]*[\"“”„‘«»—–]")
_INDENTED = re.compile(r"^(?:\t| {2,})\S")
_CODE_END = (":", "{", ";", "}")
# Not "_", "*" or "/": Markdown emphasis and paths are full of them.
_SYMBOLS = frozenset("{}[]()<>=;\\|&#+%^~$@")
_KEYWORD = re.compile(
    r"^\s*(?:def|class|import|from|return|if|elif|else|for|while|try|except|finally|with|raise|yield|async|await"
    r"|function|var|let|const|public|private|protected|static|void|int|char|struct|enum|fn|func|package|#include"
    r"|#define|switch|case|break|continue|namespace|using|select|insert|update|create)\b")

# Thresholds, named so that the docstring above and the tests can be checked against them.
CODE_LINES = 0.40
CODE_SYMBOLS = 0.03
CODE_KEYWORDS = 0.10
CHAT_EXAMPLES = 0.5
SPEAKER_LINES = 0.30
SPEAKER_OPENERS = 0.5
QUOTED_LINES = 0.5
VERSE_MULTILINE = 0.5
VERSE_MAX_LINE, VERSE_CAPITALS = 60, 0.6


@dataclass(frozen=True)
class TextKind:
    """The kind a run's augmentation follows, and why, in a member's words."""

    kind: str
    reason: str
    declared: bool = False
    detected: str | None = None
    """What detection said, when the kind was declared (so a report can show both)."""

    def to_dict(self) -> dict:
        return asdict(self)


def check_text_kind(value: str) -> str:
    """``value`` as one of ``TEXT_KIND_CHOICES`` (case and spaces ignored).

    Raises ``ConfigError`` listing the allowed values for anything else.
    """
    cleaned = value.strip().lower() if isinstance(value, str) else value
    if cleaned not in TEXT_KIND_CHOICES:
        raise ConfigError(f"text_kind must be one of {', '.join(TEXT_KIND_CHOICES)} "
                          f"('auto' detects it from the examples), got {value!r}")
    return cleaned


def resolve_kind(text_kind: str, examples: Sequence) -> TextKind:
    """The kind for a run: ``detect_kind`` for ``"auto"``, else the declared one (with what
    detection would have said, for the report)."""
    text_kind = check_text_kind(text_kind)
    found = detect_kind(examples)
    if text_kind == "auto":
        return found
    note = "" if found.kind == text_kind else f"; detection would have said {found.kind} ({found.reason})"
    return TextKind(text_kind, f"text_kind={text_kind} in the settings{note}", True, found.kind)


def detect_kind(examples: Sequence) -> TextKind:
    """The kind of a dataset's examples (``TextExample``s), with the counts that decided it."""
    if not examples:
        return TextKind("prose", "no examples to look at")
    texts = list(_trained_texts(examples))
    lines = [line for text in texts for line in text.split("\n") if line.strip()]
    if not lines:
        return TextKind("prose", "no text to look at")

    # 1. code: structure (indentation, line endings) and symbols or keywords
    speaker_lines = [line for line in lines if SPEAKER.match(line)]
    codey = sum(1 for line in lines if _INDENTED.match(line)
                or (line.rstrip().endswith(_CODE_END) and not SPEAKER.match(line)))
    chars = sum(len(line.strip()) for line in lines)
    symbols = sum(1 for line in lines for c in line if c in _SYMBOLS)
    keywords = sum(1 for line in lines if _KEYWORD.match(line))
    code_share, symbol_share, keyword_share = codey / len(lines), symbols / max(chars, 1), keywords / len(lines)
    if code_share >= CODE_LINES and (symbol_share >= CODE_SYMBOLS or keyword_share >= CODE_KEYWORDS):
        return TextKind("code", f"{_pct(code_share)} of lines are indented or end in ':' / '{{' / ';' / '}}', "
                                f"{_pct(symbol_share)} of characters are brackets or operators and "
                                f"{_pct(keyword_share)} of lines start with a keyword")

    # 2. dialogue: chat examples, speaker labels, quoted turns
    chats = sum(1 for e in examples if e.kind == "chat")
    if chats / len(examples) >= CHAT_EXAMPLES:
        return TextKind("dialogue", f"{chats} of {len(examples)} examples are chat conversations "
                                    f"(messages with roles)")
    speakers = {SPEAKER.match(line).group(1) for line in speaker_lines}
    openers = sum(1 for text in texts if SPEAKER.match(text.lstrip("\n")))
    if len(speakers) >= 2 and (len(speaker_lines) / len(lines) >= SPEAKER_LINES
                               or openers / len(texts) >= SPEAKER_OPENERS):
        names = ", ".join(f"{name}:" for name in sorted(speakers)[:3])
        return TextKind("dialogue", f"{_pct(len(speaker_lines) / len(lines))} of lines and {openers} of {len(texts)} "
                                    f"examples start with a speaker's name and a colon ({names} ...), "
                                    f"{len(speakers)} speakers")
    quoted = sum(1 for line in lines if QUOTED.match(line))
    if quoted / len(lines) >= QUOTED_LINES:
        return TextKind("dialogue", f"{_pct(quoted / len(lines))} of lines open with a quotation mark or a dash "
                                    f"(quoted turns)")

    # 3. verse: several short lines per example
    body = [line for line in lines if not SPEAKER.match(line)] or lines
    mean_line = statistics.fmean(len(line.strip()) for line in body)
    multiline = sum(1 for text in texts if sum(1 for line in text.split("\n") if line.strip()) >= 2) / len(texts)
    capitals = sum(1 for line in body if line.strip()[0].isupper()) / len(body)
    if multiline >= VERSE_MULTILINE and mean_line <= VERSE_MAX_LINE and capitals >= VERSE_CAPITALS:
        return TextKind("verse", f"short lines ({mean_line:.0f} characters on average), {_pct(multiline)} of "
                                 f"examples span several lines, {_pct(capitals)} of lines start with a capital")

    # 4. prose
    return TextKind("prose", f"no sign of code, turns or verse: lines average {mean_line:.0f} characters, "
                             f"{_pct(symbol_share)} of characters are brackets or operators, "
                             f"{_pct(len(speaker_lines) / len(lines))} of lines start with a speaker's name")


def _trained_texts(examples: Sequence) -> Iterable[str]:
    """The parts training learns to produce (what augmentation changes): a text, a completion,
    the assistant turns of a chat."""
    for e in examples:
        if e.kind == "chat":
            yield from (m["content"] for m in e.messages if m["role"] == "assistant" and m["content"].strip())
        elif e.kind == "completion":
            yield e.completion
        else:
            yield e.text


def _pct(share: float) -> str:
    return f"{round(100 * share)}%"
