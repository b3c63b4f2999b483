"""Checking uploads: what a member sent, which files the session accepts, and why not the others.

Pure functions, no Discord and no database: the bot downloads the bytes, calls
``check_uploads`` off the event loop, and records what it returns. Text files go through the
trainer's own reader (``trainer.text.data.read_text_examples``) and images through
``trainer.image.data.load_images``, so a file accepted here is a file the trainer can read.
Zip archives are opened in memory; each member becomes its own dataset item (so it keeps its
uploader and can be removed alone), after checks against path tricks and zip bombs.
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from storage.blobs import BlobStore
from trainer.errors import DataError

TEXT_EXTENSIONS = (".txt", ".md", ".jsonl", ".csv")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
MAX_ZIP_MEMBERS = 500
MAX_ZIP_BYTES = 512 * 2**20
MAX_ZIP_RATIO = 200
_JUNK = ("__MACOSX/", ".DS_Store", "Thumbs.db", "desktop.ini")


@dataclass
class Checked:
    """One accepted file: stored in the blob store, with what the checks found."""
    filename: str
    blob_hash: str
    size: int
    caption: str | None = None
    checks: dict = field(default_factory=dict)


@dataclass
class Rejected:
    filename: str
    reason: str


@dataclass
class CheckResult:
    accepted: list[Checked] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


def accepted_extensions(kind: str) -> tuple[str, ...]:
    return IMAGE_EXTENSIONS if kind == "image" else TEXT_EXTENSIONS


def check_uploads(kind: str, uploads: list[tuple[str, bytes]], blobs: BlobStore, *,
                  caption: str | None = None) -> CheckResult:
    """Check every ``(filename, bytes)`` for a session of ``kind`` and store the good ones."""
    result = CheckResult()
    for filename, data in uploads:
        if filename.lower().endswith(".zip") or data[:4] == b"PK\x03\x04":
            _check_zip(kind, filename, data, blobs, caption, result)
        else:
            _check_file(kind, filename, data, blobs, caption, result)
    return result


def _check_file(kind: str, filename: str, data: bytes, blobs: BlobStore, caption: str | None,
                result: CheckResult) -> None:
    name = PurePosixPath(filename).name or "upload"
    ext = PurePosixPath(name).suffix.lower()
    if ext not in accepted_extensions(kind):
        shown = ext or "a file without extension"
        result.rejected.append(Rejected(name, f"{shown} is not accepted in an {kind} session; "
                                              f"upload {', '.join(accepted_extensions(kind))} files (or a .zip of them)"))
        return
    if not data:
        result.rejected.append(Rejected(name, "the file is empty"))
        return
    try:
        checks = _check_text(name, data) if kind == "text" else _check_image(name, data)
    except DataError as exc:
        result.rejected.append(Rejected(name, str(exc).strip()))
        return
    result.accepted.append(Checked(name, blobs.put_bytes(data), len(data), caption, checks))


def _check_text(name: str, data: bytes) -> dict:
    from trainer.text.data import read_text_examples

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        examples, report = read_text_examples([path])
    return {"examples": len(examples), "kinds": report.kinds, "duplicates": report.duplicates_dropped,
            "chars_median": report.chars_median, "warnings": report.warnings}


def _check_image(name: str, data: bytes) -> dict:
    from trainer.image.data import load_images

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        dataset = load_images([path], instance_prompt="")
    width, height = dataset.examples[0].image.size
    return {"examples": 1, "width": width, "height": height}


def _check_zip(kind: str, filename: str, data: bytes, blobs: BlobStore, caption: str | None,
               result: CheckResult) -> None:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [m for m in archive.infolist() if not m.is_dir() and not any(j in m.filename for j in _JUNK)
                   and not PurePosixPath(m.filename).name.startswith(".")]
    except zipfile.BadZipFile:
        result.rejected.append(Rejected(filename, "not a readable zip archive; zip the files again and re-upload"))
        return
    problem = _unsafe_zip(members)
    if problem:
        result.rejected.append(Rejected(filename, problem))
        return
    files = {m.filename: archive.read(m) for m in members}
    captions = {}
    if kind == "image":  # sidecar captions: cat.png + cat.txt
        for path, content in list(files.items()):
            if path.lower().endswith(".txt"):
                captions[str(PurePosixPath(path).with_suffix(""))] = content.decode("utf-8", "replace").strip()
                del files[path]
    if not files:
        result.rejected.append(Rejected(filename, "the archive holds no files to train on"))
        return
    for path, content in files.items():
        own = captions.get(str(PurePosixPath(path).with_suffix(""))) or caption
        before = len(result.rejected)
        _check_file(kind, path, content, blobs, own, result)
        for rejected in result.rejected[before:]:
            rejected.filename = f"{filename}/{path}"


def _unsafe_zip(members: list[zipfile.ZipInfo]) -> str | None:
    if len(members) > MAX_ZIP_MEMBERS:
        return f"the archive holds {len(members)} files, over the limit of {MAX_ZIP_MEMBERS}; split it"
    total = 0
    for m in members:
        parts = PurePosixPath(m.filename).parts
        if m.filename.startswith("/") or ".." in parts:
            return f"the archive names a path outside itself ({m.filename}); zip only the files"
        if m.compress_size and m.file_size / m.compress_size > MAX_ZIP_RATIO:
            return f"{m.filename} inflates {m.file_size // max(1, m.compress_size)}x: refusing a possible zip bomb"
        total += m.file_size
    if total > MAX_ZIP_BYTES:
        return f"the archive unpacks to {total / 2**20:.0f} MiB, over the {MAX_ZIP_BYTES // 2**20} MiB limit"
    return None
