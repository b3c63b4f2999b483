"""Image datasets: folders, files and zip archives of png/jpg/webp images with optional captions.

Every file is decoded with Pillow, whatever its extension says. Captions come from, in order
of precedence: a sidecar ``.txt`` with the image's stem, a ``metadata.jsonl`` beside the images
(``{"file_name": ..., "text": ...}`` per line, the imagefolder convention), or the instance
prompt, which also fills any caption that is missing (and the report lists those images).

``load_images`` collects every problem it finds into one ``DataError`` instead of stopping at
the first, so a user fixes a dataset in one go. Each file is classified by its content and its
name together (``trainer.filetypes``): a zip archive named as one (or without an extension) is
read in memory, never extracted, and checked for path traversal and zip bombs before anything
is decompressed; any other file over the size limit is refused for its size, whatever its bytes
are; then a document that is a zip container (``.docx``, ``.epub``...) or another archive, a
program or a zip named ``.png`` is refused saying what it is.

How small an image may be is one rule (``trainer.limits.image_size_problem``) that the bot's
upload check shows in the same words, against the same training resolution.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator

from PIL import Image, ImageOps, UnidentifiedImageError

from .. import kinds
from .. import limits as L
from ..captions import CAPTION_SUFFIX, METADATA_NAME, metadata_captions, metadata_sources
from ..errors import DataError
from ..filetypes import extension, is_archive_name, sniff

IMAGE_FORMATS = {"PNG", "JPEG", "MPO", "WEBP"}  # MPO: the JPEG variant many phones write
_JUNK = re.compile(r"(^|/)(\.[^/]*|__MACOSX|Thumbs\.db|desktop\.ini)(/|$)", re.IGNORECASE)


@dataclass(frozen=True)
class DataLimits:
    """Safety and quality limits applied while reading a dataset (defaults: ``trainer.limits``)."""

    min_side: int = L.MIN_IMAGE_SIDE  # shorter side in pixels; smaller images upscale into mush
    resolution: int | None = None  # the training side min_side was derived from, for the message
    max_pixels: int = L.MAX_IMAGE_PIXELS  # decompression-bomb cap, checked from the header before decoding
    max_file_bytes: int = L.MAX_FILE_BYTES  # one image or caption file
    max_archive_bytes: int = L.MAX_ARCHIVE_BYTES  # all members of one zip, uncompressed
    max_compression_ratio: float = L.MAX_COMPRESSION_RATIO  # a member that inflates more than this is a zip bomb
    max_images: int = L.MAX_IMAGES
    min_images: int = 1  # training asks for ``kinds.IMAGE.min_examples``; one file alone can be checked


def training_limits(config, sizes=None) -> DataLimits:
    """The limits a training run (or a search's probe) reads its images with, at the resolution
    it will train at: ``sizes``' (the run's ``trainer.image.presets.run_sizes``, resolved once),
    else the config's, else resolved here (sized to the base and this machine's device)."""
    if sizes is None and config.resolution is None:
        from .presets import run_sizes

        sizes = run_sizes(config)
    resolution = sizes.resolution if sizes is not None else config.resolution
    return DataLimits(min_side=config.min_image_side or L.min_image_side(resolution), resolution=resolution,
                      max_pixels=config.max_pixels, min_images=kinds.IMAGE.min_examples)


@dataclass
class ImageExample:
    """One training image: where it came from, the decoded picture (RGB, upright) and its caption."""

    name: str
    image: Image.Image
    caption: str
    sha256: str


@dataclass
class DataReport:
    """What ``load_images`` found, for metrics.json and the bot's summary."""

    images: int = 0
    sources: list[str] = field(default_factory=list)
    caption_sources: dict[str, int] = field(default_factory=lambda: {"sidecar": 0, "metadata": 0, "instance_prompt": 0})
    missing_captions: list[str] = field(default_factory=list)
    captions: dict[str, str] = field(default_factory=dict)  # image name -> the caption it trains with
    caption_from: dict[str, str] = field(default_factory=dict)  # image name -> its caption's source (trainer.captions.SOURCES)
    duplicates: list[dict[str, str]] = field(default_factory=list)  # {"dropped": name, "same_as": name}
    ignored: list[str] = field(default_factory=list)  # hidden files and OS clutter
    unmatched_metadata: list[str] = field(default_factory=list)  # metadata rows naming no image
    sizes: dict[str, int] = field(default_factory=dict)  # smallest and largest side seen

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ImageDataset:
    examples: list[ImageExample]
    report: DataReport


@dataclass
class _Entry:
    """A file inside a folder or an archive, readable on demand."""

    name: str  # shown to the user
    key: str  # path relative to its container, '/'-separated; captions match on it
    container: str
    read: object  # () -> bytes


def load_images(paths: Iterable[str | Path], *, instance_prompt: str, limits: DataLimits = DataLimits()) -> ImageDataset:
    """Read images and captions from files, folders and zip archives.

    Raises ``DataError`` listing every unusable file (not an image, corrupt, too small, over
    the pixel cap, unsafe archive), or when no image is left.
    """
    problems: list[str] = []
    report = DataReport()
    entries: list[_Entry] = []
    for raw in paths:
        path = Path(raw)
        report.sources.append(str(path))
        if not path.exists():
            problems.append(f"{path}: no such file or folder")
        elif path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                entries.extend(_file_entries(file, file.relative_to(path).as_posix(), str(path), limits, problems))
        else:
            entries.extend(_file_entries(path, path.name, str(path.parent), limits, problems))

    captions, metadata, sources, images = {}, {}, {}, []
    for entry in entries:
        if _JUNK.search(entry.key):
            report.ignored.append(entry.name)
        elif PurePosixPath(entry.key).name == METADATA_NAME:
            metadata.update(_read_metadata(entry, limits, problems, sources))
        elif entry.key.lower().endswith(CAPTION_SUFFIX):
            text = _read_text(entry, limits, problems)
            if text:
                captions[(entry.container, entry.key[: -len(CAPTION_SUFFIX)])] = text
        else:
            images.append(entry)

    examples, seen = [], {}
    used_metadata = set()
    for entry in images:
        decoded = _decode(entry, limits, problems)
        if decoded is None:
            continue
        image, digest = decoded
        if digest in seen:
            report.duplicates.append({"dropped": entry.name, "same_as": seen[digest]})
            continue
        seen[digest] = entry.name
        stem_key = (entry.container, str(PurePosixPath(entry.key).with_suffix("")))
        if stem_key in captions:
            caption, source = captions[stem_key], "sidecar"
        elif (entry.container, entry.key) in metadata:
            caption, source = metadata[(entry.container, entry.key)], "metadata"
        else:
            caption, source = instance_prompt, "instance_prompt"
        used_metadata.add((entry.container, entry.key))
        if source == "instance_prompt" and (captions or metadata):
            report.missing_captions.append(entry.name)
        report.caption_sources[source] += 1
        report.captions[entry.name] = caption
        # a metadata row the bot wrote says where its caption came from (a member, a model...)
        report.caption_from[entry.name] = sources.get((entry.container, entry.key), source) if source == "metadata" else source
        examples.append(ImageExample(entry.name, image, caption, digest))

    report.unmatched_metadata = sorted(f"{c}/{k}" for c, k in metadata if (c, k) not in used_metadata)
    if len(examples) > limits.max_images:
        problems.append(f"{len(examples)} images is more than the limit of {limits.max_images}")
    if examples and len(examples) < limits.min_images:
        problems.append(f"{len(examples)} usable image(s): training needs at least {limits.min_images} "
                        f"(one is held out to check the run); add {limits.min_images - len(examples)} more")
    if problems:
        shown = "\n  - ".join(problems[:20])
        more = f"\n  (and {len(problems) - 20} more)" if len(problems) > 20 else ""
        raise DataError(f"{len(problems)} problem(s) in the image dataset:\n  - {shown}{more}")
    if not examples:
        raise DataError(f"No images found in {', '.join(report.sources) or 'the given paths'}: "
                        "give png, jpg or webp files, folders of them, or zip archives.")
    report.images = len(examples)
    sides = [s for ex in examples for s in ex.image.size]
    report.sizes = {"min_side": min(sides), "max_side": max(sides)}
    return ImageDataset(examples, report)


def _file_entries(path: Path, key: str, container: str, limits: DataLimits, problems: list[str]) -> Iterator[_Entry]:
    """One entry for a plain file, or one per member for a zip archive (detected by content)."""
    if _JUNK.search(key):
        yield _Entry(str(path), key, container, lambda: b"")
        return
    with path.open("rb") as f:
        found = sniff(f.read(2**16), path.name)
    if found.kind == "archive" and (is_archive_name(path.name) or not extension(path.name)):
        if found.format == "zip":  # its own limits: members, unpacked size, bombs
            yield from _zip_entries(path, limits, problems)
        else:
            problems.append(f"{path}: {_not_an_image_file(found, path.name)}")
        return
    # The size before the content: a huge file is refused for its size, whatever its first bytes say.
    too_large = L.file_size_problem(path.stat().st_size, _kind_of(key), limits.max_file_bytes)
    refusal = too_large or _not_an_image_file(found, path.name)
    if refusal:
        problems.append(f"{path}: {refusal}")
        return
    yield _Entry(str(path), key, container, path.read_bytes)


def _kind_of(key: str) -> str:
    """What a file is meant to be, from its name, for the size message: a caption or an image."""
    name = PurePosixPath(key).name
    return "caption" if name == METADATA_NAME or name.lower().endswith(CAPTION_SUFFIX) else "image"


def _not_an_image_file(found, name: str) -> str | None:
    """Why a file that is an archive, a document or a program cannot be read as an image (or a caption)."""
    ext = extension(name)
    if found.kind == "archive":
        if found.format == "zip":
            return f"this is {found.what}, not a {ext} file: name it .zip to have its images read"
        return f"this is {found.what}: unpack it, or pack the images as a .zip"
    if found.kind in ("document", "binary"):
        return f"this is {found.what}, not an image; give png, jpg or webp images (captions as .txt or metadata.jsonl)"
    return None


def _zip_entries(path: Path, limits: DataLimits, problems: list[str]) -> Iterator[_Entry]:
    """Members of a zip archive, after refusing unsafe names and bombs. Nothing is extracted."""
    try:
        archive = zipfile.ZipFile(path)
        members = [m for m in archive.infolist() if not m.is_dir()]
    except (zipfile.BadZipFile, OSError) as exc:
        problems.append(f"{path}: not a readable zip archive ({exc})")
        return
    bad = [m.filename for m in members if L.unsafe_archive_path(m.filename)]
    if bad:
        problems.append(f"{path}: unsafe path(s) in archive (absolute or '..'), refusing it: {', '.join(bad[:5])}")
        return
    total = sum(m.file_size for m in members)
    if total > limits.max_archive_bytes:
        problems.append(f"{path}: unpacks to {L.mib(total)}, over the {L.mib(limits.max_archive_bytes)} "
                        "archive limit (zip bomb?)")
        return
    for m in members:
        if L.looks_like_zip_bomb(m.file_size, m.compress_size, limits.max_compression_ratio):
            ratio = m.file_size / max(m.compress_size, 1)
            problems.append(f"{path}:{m.filename}: compressed {ratio:.0f}:1, refusing a likely zip bomb")
            return
        if L.encrypted_member(m):
            problems.append(f"{path}:{m.filename}: encrypted archive members are not supported")
            return
    for m in members:
        yield _Entry(f"{path}:{m.filename}", m.filename, str(path),
                     lambda m=m: _read_member(archive, m, limits))


def _read_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, limits: DataLimits) -> bytes:
    """Read at most the declared size (headers can lie) and at most the per-file limit."""
    cap = min(member.file_size, limits.max_file_bytes)
    too_large = L.file_size_problem(member.file_size, _kind_of(member.filename), limits.max_file_bytes)
    if too_large:
        raise _TooBig(too_large)
    with archive.open(member) as f:
        data = f.read(cap + 1)
    if len(data) > cap:
        raise _TooBig("unpacks to more than its header declares (zip bomb?)")
    return data


class _TooBig(Exception):
    pass


def _read_bytes(entry: _Entry, problems: list[str]) -> bytes | None:
    try:
        return entry.read()
    except _TooBig as exc:
        problems.append(f"{entry.name}: {exc}")
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        problems.append(f"{entry.name}: could not be read ({exc})")
    return None


def _read_text(entry: _Entry, limits: DataLimits, problems: list[str]) -> str | None:
    data = _read_bytes(entry, problems)
    if data is None:
        return None
    try:
        return data.decode("utf-8-sig").strip()
    except UnicodeDecodeError:
        problems.append(f"{entry.name}: caption is not UTF-8 text")
        return None


def _read_metadata(entry: _Entry, limits: DataLimits, problems: list[str],
                   sources: dict | None = None) -> dict[tuple[str, str], str]:
    text = _read_text(entry, limits, problems) or ""
    captions, bad = metadata_captions(text, PurePosixPath(entry.key).parent)
    problems.extend(f"{entry.name} {problem}" for problem in bad)
    if sources is not None:
        sources.update({(entry.container, key): source
                        for key, source in metadata_sources(text, PurePosixPath(entry.key).parent).items()})
    return {(entry.container, key): caption for key, caption in captions.items()}


def _decode(entry: _Entry, limits: DataLimits, problems: list[str]) -> tuple[Image.Image, str] | None:
    """Decode fully with Pillow and check it; returns (upright RGB image, sha256 of the file)."""
    data = _read_bytes(entry, problems)
    if data is None:
        return None
    try:
        with warnings.catch_warnings():  # the pixel cap below is ours and stricter than Pillow's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            probe = Image.open(io.BytesIO(data))
        with probe:
            fmt, (w, h) = probe.format, probe.size
            if w * h > limits.max_pixels:
                problems.append(f"{entry.name}: {w}x{h} px is over the {limits.max_pixels:,} pixel cap "
                                "(decompression bomb?)")
                return None
            if fmt not in IMAGE_FORMATS:
                problems.append(f"{entry.name}: {fmt} images are not supported; use png, jpg or webp")
                return None
            probe.verify()
        image = Image.open(io.BytesIO(data))
        image.load()
    except Image.DecompressionBombError:
        problems.append(f"{entry.name}: over Pillow's pixel cap (decompression bomb?)")
        return None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        if isinstance(exc, UnidentifiedImageError):
            found = sniff(data, PurePosixPath(entry.key).name)
            reason = "not an image" if found.kind in ("text", "image") else f"this is {found.what}, not an image"
        else:
            reason = f"corrupt image ({exc})"
        problems.append(f"{entry.name}: {reason}")
        return None
    image = to_rgb(ImageOps.exif_transpose(image))
    too_small = L.image_size_problem(image.width, image.height, limits.min_side, limits.resolution)
    if too_small:
        problems.append(f"{entry.name}: {too_small}")
        return None
    return image, hashlib.sha256(data).hexdigest()


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with any transparency flattened onto white (not the black that a plain convert gives)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def resize_and_crop(image: Image.Image, resolution: int) -> tuple[Image.Image, tuple[int, int]]:
    """Scale the shorter side to ``resolution`` and centre-crop a square; returns the crop's top-left."""
    return resize_to_bucket(image, (resolution, resolution))


def resize_to_bucket(image: Image.Image, size: tuple[int, int]) -> tuple[Image.Image, tuple[int, int]]:
    """Scale ``image`` to cover ``size`` (width, height) keeping its aspect, and centre-crop the little
    that overhangs (an image in the bucket closest to its aspect loses a sliver, not its sides);
    returns the crop's top-left (for SDXL's time ids)."""
    bw, bh = size
    scale = max(bw / image.width, bh / image.height)
    w, h = max(bw, round(image.width * scale)), max(bh, round(image.height * scale))
    resized = image.resize((w, h), Image.Resampling.LANCZOS)
    top, left = (h - bh) // 2, (w - bw) // 2
    return resized.crop((left, top, left + bw, top + bh)), (top, left)


def to_tensor(images: list[Image.Image]):
    """Stack RGB images into a float batch in [0, 1], shape (N, 3, H, W)."""
    import numpy as np
    import torch

    array = np.stack([np.asarray(im, dtype=np.uint8) for im in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2).float().div_(255.0)


def normalize(batch):
    """[0, 1] pixels to the [-1, 1] range the VAE expects."""
    return batch * 2.0 - 1.0
