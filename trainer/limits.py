"""Data limits: one number per limit and one function per rule, read by the bot's upload checks,
the trainers and the CLI.

The bot refuses an upload by the same numbers and rules the trainer later reads the data with
(one file's size, zip bombs, paths out of an archive, image size), so a file the bot accepted is
never refused at training time. Every reader checks a file's size before its content. This
module imports nothing heavy (no torch, no Pillow): ``bot/`` imports it. A server can lower the
bot's own upload limits (``bot.config.BotSettings``: files per session, MiB per session, MiB per
upload) but the upload limit is capped at ``MAX_FILE_BYTES``, the most any reader accepts.
"""

from __future__ import annotations

import math
import re
from pathlib import PurePosixPath

from . import kinds

MiB = 2**20

MAX_FILE_BYTES = 25 * MiB
"""One file: an image, a text file, a caption file or a zip member (Discord's own upload cap is lower)."""
MAX_ARCHIVE_BYTES = 512 * MiB
"""All members of one zip archive, uncompressed."""
MAX_ARCHIVE_MEMBERS = 500
"""Files in one zip archive."""
MAX_COMPRESSION_RATIO = 200
"""A zip member over ``RATIO_CHECKED_ABOVE`` that inflates more than this is refused as a zip bomb."""
RATIO_CHECKED_ABOVE = 1 * MiB
"""Small members (a caption, a short text) may compress very well without being a bomb."""

MAX_IMAGES = 1000
"""Images in one image dataset."""
MAX_IMAGE_PIXELS = 50_000_000
"""Pixels of one image, checked from its header before decoding (decompression bombs)."""
MAX_TEXT_EXAMPLES = 10_000
"""Examples in one text dataset, after dropping duplicates."""
MAX_EXAMPLE_CHARS = 20_000
"""Longest .jsonl/.csv text example, in characters."""
MAX_CAPTION_CHARS = 1000
"""Longest image caption; longer ones are cut (the text encoders read 77 tokens anyway)."""

MIN_EXAMPLES = {kind.name: kind.min_examples for kind in kinds.KINDS.values()}
"""Fewest training examples a run takes, by kind (each kind's ``min_examples``)."""
MIN_IMAGE_SIDE = 64
"""Shortest image side any reader takes; training asks for more (``min_image_side``)."""


def min_image_side(resolution: int | None) -> int:
    """The shortest side an image may have to train at ``resolution``: half of it (smaller
    images upscale into mush); ``MIN_IMAGE_SIDE`` when no resolution is known."""
    return MIN_IMAGE_SIDE if resolution is None else max(8, resolution // 2)


def image_size_problem(width: int, height: int, min_side: int, resolution: int | None = None) -> str | None:
    """The one rule for image size, in the words the bot's upload check and the trainer both show:
    why a ``width`` x ``height`` image is too small (None when it is fine).

    Without a training ``resolution``, the shorter side must reach ``min_side``. With one, the image
    trains in the aspect bucket nearest its shape (``trainer.image.sizes.bucket_for``, on the
    8-pixel grid whatever the family, so the bot and every family's trainer agree), and may be
    enlarged at most ``resolution / min_side`` times (2x by default) to fill it; a smaller image is
    refused with the smallest size of its shape that works."""
    if resolution is None:
        if min(width, height) >= min_side:
            return None
        return f"{width}x{height} px is too small; the shorter side must be at least {min_side} px"
    from .image.sizes import bucket_for

    bucket_w, bucket_h = bucket_for(width, height, resolution, 8)
    most = resolution / min_side
    scale = max(bucket_w / width, bucket_h / height)
    if scale <= most + 1e-9:
        return None
    need = scale / most
    return (f"{width}x{height} px is too small to train at {resolution} px: its aspect bucket is {bucket_w}x{bucket_h} "
            f"and an image may be enlarged at most {most:g}x; give at least {math.ceil(width * need)}x"
            f"{math.ceil(height * need)} px at this shape")


TOO_LARGE_FIX = {**{kind.name: kind.too_large_fix for kind in kinds.KINDS.values()},
                 "caption": "a caption is a line or two: check it is the file you meant"}
"""What to do with a file over the size limit, by what it is meant to be: a file of a kind, or a caption."""


def file_size_problem(size: int, kind: str, limit: int = MAX_FILE_BYTES) -> str | None:
    """The one rule for one file's size, in the words the readers and the bot's upload check show:
    why ``size`` bytes is too large and what to do with a ``kind`` file (a key of
    ``TOO_LARGE_FIX``); None when it fits. Every reader checks it before looking at the content,
    so a huge file is refused for its size, not for what its first bytes look like."""
    if size <= limit:
        return None
    shown = math.ceil(size * 10 / MiB) / 10  # rounded up: a file just over 25 MiB never shows as 25.0
    return f"file is {shown:.1f} MiB, over the {mib(limit, 1)} limit ({limit} bytes); {TOO_LARGE_FIX[kind]}."


def looks_like_zip_bomb(file_size: int, compress_size: int, max_ratio: float = MAX_COMPRESSION_RATIO) -> bool:
    """The one zip-bomb rule: whether ``file_size`` bytes (a zip member, or a whole archive) stored
    in ``compress_size`` inflate more than ``max_ratio`` (small ones may: ``RATIO_CHECKED_ABOVE``)."""
    return file_size > RATIO_CHECKED_ABOVE and file_size > max(compress_size, 1) * max_ratio


def unsafe_archive_path(name: str) -> bool:
    """Whether an archive member's ``name`` points outside the archive: absolute, a drive or ``..``."""
    posix = name.replace("\\", "/")
    return posix.startswith("/") or bool(re.match(r"^[A-Za-z]:", posix)) or ".." in PurePosixPath(posix).parts


def encrypted_member(member) -> bool:
    """Whether a zip member (a ``zipfile.ZipInfo``) is encrypted: no reader asks for a password."""
    return bool(member.flag_bits & 0x1)


def mib(n_bytes: float, digits: int = 0) -> str:
    """``n_bytes`` in MiB, as messages show it."""
    return f"{n_bytes / MiB:.{digits}f} MiB"
