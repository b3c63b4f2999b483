"""What members may see of the host: names, never paths.

A base model given as a local folder is shown by the folder's name; any text that came from
the machine (a trainer's error, a reader's refusal) is shown with its host paths cut to their
last part, so a message never reveals where the bot keeps its data, its models or its
temporary files.
"""

from __future__ import annotations

import re
from pathlib import PurePath, PurePosixPath, PureWindowsPath

from trainer import kinds
from trainer.hostpaths import scrub_paths  # noqa: F401  (the bot's messages cut host paths by the same rule)


def is_local_path(ref: str) -> bool:
    """Whether a model reference names a folder on the host rather than a hub id or a built-in name."""
    return ref.startswith(("/", "~", "./", "../", "\\")) or bool(re.match(r"^[A-Za-z]:[\\/]", ref))


def model_name(ref: str | None) -> str:
    """A base model as members see it: a local folder by its name, anything else as given."""
    if not ref:
        return ""
    kind, model = kinds.of_model(ref)
    if kind.model_prefix:  # the server's list marks image models so ('image:')
        return kind.model_prefix + model_name(model)
    if not is_local_path(ref):
        return ref
    path: PurePath = PureWindowsPath(ref) if "\\" in ref else PurePosixPath(ref)
    return path.name or ref.strip("/\\") or "a local model"
