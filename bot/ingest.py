"""Checking uploads: what a member sent, which files the session accepts, and why not the others.

Pure functions, no Discord and no database: the bot downloads the bytes, calls
``check_uploads`` off the event loop, and records what it returns. Each file is classified by
its content and its name together (``trainer.filetypes``): an archive the member named as one
(``.zip``, ``.tar``, ``.tar.gz``...) is unpacked in memory, and each member becomes its own
dataset item (so it keeps its uploader and can be removed alone), after checks against path
tricks and bombs; a document that happens to be a zip container (``.docx``, ``.epub``...) is
one file and is refused with what to upload instead; an archive or a program named ``.txt``
is refused saying what it is. Text files then go through the trainer's own reader
(``trainer.text.data.read_text_examples``) and images through ``trainer.image.data.load_images``,
so a file accepted here is a file the trainer can read.

Every reason speaks of the file it is shown beside without repeating its name, and never
shows the temporary folder the checks ran in.
"""

from __future__ import annotations

import io
import re
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from storage.blobs import BlobStore
from trainer import kinds
from trainer.captions import CAPTION_SUFFIX, METADATA_NAME, metadata_captions
from trainer.errors import DataError
from trainer.filetypes import FileType, extension, is_archive_name, sniff
from trainer.limits import (MAX_ARCHIVE_BYTES, MAX_ARCHIVE_MEMBERS, MAX_CAPTION_CHARS, encrypted_member,
                            file_size_problem, looks_like_zip_bomb, mib, min_image_side, unsafe_archive_path)

from .display import scrub_paths

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
    return kinds.get(kind).extensions


def takes(kind: str) -> str:
    """What a session of ``kind`` accepts, in a member's words."""
    return f"{', '.join(accepted_extensions(kind))} files (or a .zip of them)"


def session_words(kind: str) -> str:
    """'a text session', 'an image session'."""
    return f"{'an' if kind[:1] in 'aeiou' else 'a'} {kind} session"


def check_uploads(kind: str, uploads: list[tuple], blobs: BlobStore, *,
                  caption: str | None = None, resolution: int | None = None) -> CheckResult:
    """Check every ``(filename, bytes)`` or ``(filename, bytes, caption)`` for a session of ``kind``
    and store the good ones. A file's own caption (an attachment's description) wins over the
    upload's ``caption``; inside an archive, a sidecar ``.txt`` or ``metadata.jsonl`` wins over both.
    Images are checked against ``resolution``, the side the session trains at (the trainer's own
    rule, ``trainer.limits.image_size_problem``). Each accepted file's ``checks["caption_from"]``
    says where its caption came from: description, caption, sidecar or metadata."""
    result = CheckResult()
    for filename, data, *own in uploads:
        own_caption = _caption(own[0] if own else None)
        caption_here = own_caption or _caption(caption)
        source = "description" if own_caption else "caption" if caption_here else None
        name = PurePosixPath(filename.replace("\\", "/")).name or "upload"
        found = sniff(data, name)
        if found.kind == "archive" and (is_archive_name(name) or not extension(name)):
            _check_archive(kind, name, data, found, blobs, caption_here, result, source, resolution)
        else:
            _check_file(kind, name, data, blobs, caption_here, result, source=source, resolution=resolution)
    return result


def _check_file(kind: str, filename: str, data: bytes, blobs: BlobStore, caption: str | None,
                result: CheckResult, *, shown: str | None = None, source: str | None = None,
                resolution: int | None = None) -> None:
    """Check one file (an upload, or a member of an archive shown as ``shown``) and store it."""
    name = PurePosixPath(filename).name or "upload"
    shown = shown or name
    if not data:
        result.rejected.append(Rejected(shown, "the file is empty"))
        return
    # The size before the content, as the trainer's readers do: a huge file is refused for its size.
    problem = file_size_problem(len(data), kind) or _refusal(kind, name, sniff(data, name),
                                                             inside_archive=shown != name)
    if problem:
        result.rejected.append(Rejected(shown, problem))
        return
    try:
        checks = kinds.get(kind).part("upload_check")(name, data, resolution)  # check_text, check_image
    except DataError as exc:
        result.rejected.append(Rejected(shown, _own_words(str(exc), name)))
        return
    if kinds.get(kind).captioned and caption:
        checks["caption_from"] = source or "caption"
    result.accepted.append(Checked(name, blobs.put_bytes(data), len(data), caption, checks))


def _refusal(kind: str, name: str, found: FileType, *, inside_archive: bool) -> str | None:
    """Why a session of ``kind`` cannot take this file, from what it is and what it is called."""
    ext, images = extension(name), kinds.get(kind).makes_images
    accepted = accepted_extensions(kind)
    if found.kind == "archive":
        if inside_archive:
            return f"this is {found.what} inside the archive: unpack it and upload its files"
        rename = ".zip" if found.format == "zip" else ".tar"
        return (f"this is {found.what}, not a {ext} file: name it {rename} to have its files added, "
                f"or upload the files inside it")
    if found.kind in ("document", "binary"):
        return f"this is {found.what}; {found.instead or 'upload ' + takes(kind)}"
    if is_archive_name(name):
        return f"not a readable {ext} archive; pack the files again and re-upload"
    if found.kind == "image" and not images:
        return (f"this is {found.what}: {session_words(kind)} takes {takes(kind)}; "
                f"images go in an image session")
    if found.kind == "image" and images and ext not in accepted:
        return f"this is {found.what} named {ext or 'without an extension'}: rename it to .{found.format} and upload it again"
    if ext not in accepted:
        what = f"{ext} files are" if ext else "a file without an extension is"
        return f"{what} not accepted in {session_words(kind)}; upload {takes(kind)}"
    if images and found.kind != "image":
        return f"this is {found.what}, not an image; upload {takes(kind)}"
    return None


def check_text(name: str, data: bytes, resolution: int | None = None) -> dict:
    """What the trainer's text reader finds in one file (``resolution``: unused, images only)."""
    from trainer.text.data import read_text_examples

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        try:
            examples, report = read_text_examples([path])
        except DataError as exc:
            raise DataError(scrub_paths(str(exc), folder)) from None
    return {"examples": len(examples), "kinds": report.kinds, "duplicates": report.duplicates_dropped,
            "chars_median": report.chars_median, "warnings": report.warnings}


def check_image(name: str, data: bytes, resolution: int | None = None) -> dict:
    """What the trainer's image reader finds in one file, checked against the training ``resolution``."""
    from trainer.image.data import DataLimits, load_images

    limits = DataLimits(min_side=min_image_side(resolution), resolution=resolution)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        try:
            dataset = load_images([path], instance_prompt="", limits=limits)
        except DataError as exc:
            raise DataError(scrub_paths(str(exc), folder)) from None
    width, height = dataset.examples[0].image.size
    return {"examples": 1, "width": width, "height": height}


def _own_words(reason: str, name: str) -> str:
    """A reader's message about ``name``, shown beside the name: without saying the name again.

    ``poem.txt: not UTF-8 text`` becomes ``not UTF-8 text``; ``poem.jsonl line 3: ...`` becomes
    ``line 3: ...``; a list of problems of this one file keeps its lines without the name.
    """
    lines = []
    for line in reason.strip().splitlines():
        bullet = re.match(r"^(\s*-\s*)", line)
        lead = bullet.group(1) if bullet else ""
        body = line[len(lead):]
        body = re.sub(rf"^{re.escape(name)}:(\d+): ", r"line \1: ", body)
        body = re.sub(rf"^{re.escape(name)}(:\s*| (?=line \d))", "", body)
        lines.append(lead + body)
    if len(lines) == 2 and re.match(r"^1 problem", lines[0]):  # "1 problem(s) in ...:\n - x" says x
        return re.sub(r"^\s*-\s*", "", lines[1])
    text = "\n".join(lines)
    text = re.sub(r"^(\d+) problem\(s\) in the image dataset:", r"\1 problems:", text)
    text = re.sub(r"^(\d+) problems with the dataset:", r"\1 problems:", text)
    return text


# ---------------------------------------------------------------- archives

def _check_archive(kind: str, filename: str, data: bytes, found: FileType, blobs: BlobStore, caption: str | None,
                   result: CheckResult, source: str | None = None, resolution: int | None = None) -> None:
    try:
        files = _zip_files(data) if found.format == "zip" else _tar_files(data)
    except _Refused as exc:
        result.rejected.append(Rejected(filename, str(exc)))
        return
    captions: dict[str, tuple[str | None, str]] = {}  # image path without extension -> (caption, source)
    if kinds.get(kind).captioned:  # captions: metadata.jsonl rows (the imagefolder convention), sidecars (cat.png + cat.txt)
        for path, content in list(files.items()):
            if PurePosixPath(path).name == METADATA_NAME:
                try:
                    captions.update({k: (v, "metadata") for k, v in _metadata_captions(path, content).items()})
                except _Refused as exc:
                    result.rejected.append(Rejected(f"{filename}/{path}", str(exc)))
                del files[path]
        for path, content in list(files.items()):
            if path.lower().endswith(CAPTION_SUFFIX):  # a sidecar wins over a metadata row, as in the trainer's reader
                text = _caption(content.decode("utf-8", "replace"))
                if text:
                    captions[str(PurePosixPath(path).with_suffix(""))] = (text, "sidecar")
                del files[path]
    if not files:
        result.rejected.append(Rejected(filename, "the archive holds no files to train on"))
        return
    for path, content in files.items():
        own, own_source = captions.get(str(PurePosixPath(path).with_suffix("")), (None, None))
        _check_file(kind, path, content, blobs, own or caption, result, shown=f"{filename}/{path}",
                    source=own_source if own else source, resolution=resolution)


class _Refused(Exception):
    """An archive refused as a whole; the message says why."""


def _caption(text: str | None) -> str | None:
    """A caption as stored: stripped, at most ``MAX_CAPTION_CHARS``; None when empty."""
    text = (text or "").strip()
    return text[:MAX_CAPTION_CHARS] or None


def _metadata_captions(path: str, content: bytes) -> dict[str, str]:
    """Captions from a ``metadata.jsonl`` in an archive (read as the trainer reads it,
    ``trainer.captions``), keyed like sidecars (the image's path without its extension);
    refused whole at its first line that is not a row."""
    captions, problems = metadata_captions(content.decode("utf-8-sig", "replace"), PurePosixPath(path).parent)
    if problems:
        raise _Refused(problems[0])
    return {str(PurePosixPath(image).with_suffix("")): _caption(text) for image, text in captions.items()}


def _wanted(path: str) -> bool:
    return not any(j in path for j in _JUNK) and not PurePosixPath(path).name.startswith(".")


def _zip_files(data: bytes) -> dict[str, bytes]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [m for m in archive.infolist() if not m.is_dir() and _wanted(m.filename)]
    except (zipfile.BadZipFile, EOFError, ValueError):
        raise _Refused("not a readable zip archive; zip the files again and re-upload") from None
    _check_members([(m.filename, m.file_size) for m in members], len(data))
    for m in members:
        if looks_like_zip_bomb(m.file_size, m.compress_size):
            raise _Refused(f"{m.filename} inflates {m.file_size // max(1, m.compress_size)}x: "
                           f"refusing a possible zip bomb")
        if encrypted_member(m):
            raise _Refused(f"{m.filename} is encrypted; zip the files again without a password")
    try:
        return {m.filename: archive.read(m) for m in members}
    except (zipfile.BadZipFile, EOFError, OSError, RuntimeError) as exc:
        raise _Refused(f"the archive is damaged ({exc}); zip the files again and re-upload") from None


def _tar_files(data: bytes) -> dict[str, bytes]:
    """Regular files of a (compressed) tar archive; headers are checked one by one before reading."""
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
            members, total = [], 0
            for m in archive:  # lazily: a bomb is refused at its first header, before inflating it
                if m.isdir() or not _wanted(m.name):
                    continue
                if not m.isfile():
                    raise _Refused(f"{m.name} is a link or a device, not a file; archive only the files themselves")
                members.append((m.name, m.size))
                total += m.size
                _check_members(members, len(data))
                reader = archive.extractfile(m)
                files[m.name] = reader.read() if reader else b""
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise _Refused(f"not a readable tar archive ({exc}); pack the files again and re-upload") from None
    return files


def _check_members(members: list[tuple[str, int]], packed: int) -> None:
    if len(members) > MAX_ARCHIVE_MEMBERS:
        raise _Refused(f"the archive holds more than {MAX_ARCHIVE_MEMBERS} files; split it")
    total = 0
    for name, size in members:
        if unsafe_archive_path(name):
            raise _Refused(f"the archive names a path outside itself ({name}); archive only the files")
        total += size
    if total > MAX_ARCHIVE_BYTES:
        raise _Refused(f"the archive unpacks to {mib(total)}, over the {mib(MAX_ARCHIVE_BYTES)} limit")
    if looks_like_zip_bomb(total, packed):
        raise _Refused(f"the archive inflates {total // max(1, packed)}x: refusing a possible archive bomb")
