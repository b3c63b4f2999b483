"""Data limits: one number per limit, read by the bot's upload checks, the trainers and the CLI.

The bot refuses an upload by the same numbers the trainer later reads the data with, so a file
the bot accepted is never refused at training time. This module imports nothing heavy (no
torch, no Pillow): ``bot/`` imports it. A server can lower the bot's own upload limits
(``bot.config.BotSettings``: files per session, MiB per session, MiB per upload) but the upload
limit is capped at ``MAX_FILE_BYTES``, the most any reader accepts.
"""

from __future__ import annotations

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

MIN_EXAMPLES = {"text": 5, "image": 5}
"""Fewest training examples a run takes: a held-out example (validation: early stopping, quick
tries) and four to train on, for text and images alike."""
MIN_IMAGE_SIDE = 64
"""Shortest image side any reader takes; training asks for more (``min_image_side``)."""


def min_image_side(resolution: int | None) -> int:
    """The shortest side an image may have to train at ``resolution``: half of it (smaller
    images upscale into mush); ``MIN_IMAGE_SIDE`` when no resolution is known."""
    return MIN_IMAGE_SIDE if resolution is None else max(8, resolution // 2)


def image_size_problem(width: int, height: int, min_side: int, resolution: int | None = None) -> str | None:
    """The one rule for image size, in the words the bot's upload check and the trainer both show:
    why a ``width`` x ``height`` image is too small (None when it is fine)."""
    if min(width, height) >= min_side:
        return None
    at = f" to train at {resolution} px" if resolution else ""
    return f"{width}x{height} px is too small{at}; the shorter side must be at least {min_side} px"


def looks_like_zip_bomb(file_size: int, compress_size: int) -> bool:
    """Whether a zip member of ``file_size`` bytes stored in ``compress_size`` inflates suspiciously."""
    return file_size > RATIO_CHECKED_ABOVE and file_size / max(compress_size, 1) > MAX_COMPRESSION_RATIO


def mib(n_bytes: float) -> str:
    """``n_bytes`` in MiB, as messages show it."""
    return f"{n_bytes / MiB:.0f} MiB"
