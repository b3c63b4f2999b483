"""Captions beside images, as the image reader and the bot's upload check both read them.

An image's caption comes from a sidecar ``.txt`` with the image's stem, or from a row of a
``metadata.jsonl`` in its folder (``{"file_name": ..., "text": ...}`` per line, the imagefolder
convention; ``caption`` is read too). ``trainer.image.data`` reads them to train, ``bot.ingest``
to show where each upload's caption came from, and ``trainer.spec`` writes the metadata file a
run gets. This module imports nothing heavy (no Pillow, no torch): ``bot/`` imports it.
"""

from __future__ import annotations

import json
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
