"""Captions beside images, as the image reader and the bot's upload check both read them.

An image's caption comes from a sidecar ``.txt`` with the image's stem, or from a row of a
``metadata.jsonl`` in its folder (``{"file_name": ..., "text": ...}`` per line, the imagefolder
convention; ``caption`` is read too). ``trainer.image.data`` reads them to train, ``bot.ingest``
to show where each upload's caption came from, and ``trainer.spec`` writes the metadata file a
run gets. This module imports nothing heavy (no Pillow, no torch): ``bot/`` imports it.
"""

from __future__ import annotations

import json
import re
from pathlib import PurePosixPath

METADATA_NAME = "metadata.jsonl"
CAPTION_SUFFIX = ".txt"
BAD_ROW = "expected a JSON object with 'file_name' and 'text'"


def metadata_captions(text: str, folder: str | PurePosixPath = ".") -> tuple[dict[str, str], list[str]]:
    """The captions of a ``metadata.jsonl`` whose lines are ``text``, and what is wrong with it.

    Returns ``{image path: caption}``, each path the row's ``file_name`` in ``folder`` (the
    metadata file's own folder), each caption stripped; rows whose file name or caption is not
    a string, or whose caption is blank, give none. The problems say ``line N: ...`` for each
    line that is not such a row; the caller words them beside the file's name.
    """
    where = PurePosixPath(folder)
    captions, problems = {}, []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            name, caption = row["file_name"], row.get("text", row.get("caption"))
        except (ValueError, KeyError, TypeError):
            problems.append(f"line {number}: {BAD_ROW}")
            continue
        if isinstance(name, str) and isinstance(caption, str) and caption.strip():
            captions[(where / name).as_posix()] = caption.strip()
    return captions, problems


# --------------------------------------------------------------------------------------------
# where a caption came from, the trigger word, and how long a caption the text encoder reads

SOURCES = ("member", "sidecar", "metadata", "model", "instance_prompt")
"""Where a caption comes from, as the bot's list and ``metrics.json`` show it. A member's own
caption (an attachment's description, an upload's ``caption:``, an edit) is ``member``; only a
member's edit replaces it."""
MEMBER_SOURCES = frozenset({"member", "description", "caption"})  # upload-time names of a member's caption


def source_name(recorded: str | None) -> str:
    """The shown source of a caption recorded as ``recorded`` (None: no caption, the instance prompt)."""
    if not recorded:
        return "instance_prompt"
    return "member" if recorded in MEMBER_SOURCES else recorded


def metadata_sources(text: str, folder: str | PurePosixPath = ".") -> dict[str, str]:
    """``{image path: source}`` for the rows of a ``metadata.jsonl`` that say where their caption
    came from (a ``source`` key, as ``trainer.spec`` writes it); rows without one say nothing."""
    where, sources = PurePosixPath(folder), {}
    for line in text.splitlines():
        try:
            row = json.loads(line)
            name, source = row["file_name"], row["source"]
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(name, str) and source in SOURCES:
            sources[(where / name).as_posix()] = source
    return sources


def trigger_word(instance_prompt: str) -> str:
    """The trigger word of an instance prompt: its last word ('a photo of sks' -> 'sks'), the
    DreamBooth convention the default prompt follows."""
    words = instance_prompt.replace(",", " ").split()
    return words[-1] if words else ""


def with_trigger(caption: str, trigger: str) -> str:
    """``caption`` with ``trigger`` first ('sks, a cat on grass'), once, however the caption began."""
    caption = caption.strip()
    if not trigger:
        return caption
    rest = re.sub(rf"^{re.escape(trigger)}\b[\s,]*", "", caption, flags=re.IGNORECASE)
    return f"{trigger}, {rest}" if rest else trigger


def has_trigger(caption: str, trigger: str) -> bool:
    """Whether ``trigger`` appears in ``caption`` as a word."""
    return not trigger or re.search(rf"(?<!\w){re.escape(trigger)}(?!\w)", caption, flags=re.IGNORECASE) is not None


# CLIP's pre-tokenizer splits text into letter runs, single digits and punctuation runs before
# BPE; each piece is at least one token (a rare word is more), so this count is a lower bound.
_PIECES = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+", re.IGNORECASE)
SPECIAL_TOKENS = 2  # start and end of text, inside the encoder's length


def caption_tokens(caption: str) -> int:
    """An estimate of the tokens ``caption`` takes in a text encoder (no tokenizer here: the bot
    imports this): its words, digits and punctuation runs, plus start and end."""
    return len(_PIECES.findall(caption)) + SPECIAL_TOKENS


def fit_caption(caption: str, max_tokens: int) -> tuple[str, bool]:
    """``caption`` cut to what a text encoder of ``max_tokens`` reads (``caption_tokens``'
    estimate), at a piece boundary; returns (caption, whether it was cut)."""
    pieces = list(_PIECES.finditer(caption))
    room = max_tokens - SPECIAL_TOKENS
    if len(pieces) <= room:
        return caption, False
    return caption[: pieces[room - 1].end()].rstrip(" ,;"), True
