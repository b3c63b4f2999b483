"""Host paths out of text that leaves the machine (a model card, a member's message).

A path of the machine that trained or serves an adapter says where it keeps its data, models
and caches, and means nothing anywhere else: text that leaves is shown with each absolute path
cut to its last part. Standard library only, so the bot can use it without the trainer's weight.
"""

from __future__ import annotations

import re
from pathlib import PurePath

# An absolute (or home) path of at least two parts, not inside a URL or a word ("and/or",
# "org/model", "https://host/x" are left alone).
_HOST_PATH = re.compile(r"(?<![\w.:/~\\-])~?/(?:[^\s/'\"`;,()\[\]<>]+/)+([^\s/'\"`;,()\[\]<>]*)")
_WINDOWS_PATH = re.compile(r"(?<![\w])[A-Za-z]:\\(?:[^\s\\'\"`;,()\[\]<>]+\\)*([^\s\\'\"`;,()\[\]<>]*)")


def scrub_paths(text: str, *roots) -> str:
    """``text`` with host paths cut to their last part, and each of ``roots`` (folders) dropped."""
    for root in (str(r).rstrip("/\\") for r in roots if r):
        if root:  # "/" itself is no folder to drop
            text = text.replace(root + "/", "").replace(root + "\\", "").replace(root, PurePath(root).name)
    text = _HOST_PATH.sub(lambda m: m.group(1) or "…", text)
    return _WINDOWS_PATH.sub(lambda m: m.group(1) or "…", text)
