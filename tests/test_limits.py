"""The data limits (trainer.limits): one rule each, checked in the same order everywhere.

A file over the size limit is refused for its size, naming the limit and what to do, before
anything looks at its bytes: through the CLI, the image and text readers and the bot's upload
check alike. Big files here are sparse (``truncate``), so they take no room on disk.
"""

from __future__ import annotations

import io
import random
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from trainer import limits
from trainer.errors import DataError
from trainer.limits import MAX_FILE_BYTES, MiB, file_size_problem, looks_like_zip_bomb, unsafe_archive_path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# What a reader would say of these bytes if it looked at them before the size.
HEADS = {"png": PNG_SIGNATURE, "binary": b"\x00\x01\x02\x03" * 4, "program": b"\x7fELF\x02\x01\x01\x00"}


def sparse(path: Path, head: bytes, size: int = 300 * MiB) -> Path:
    """A ``size``-byte file starting with ``head``, written sparse: no real 300 MB on disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.write(head)
        f.truncate(size)
    return path


def says_image_too_large(message: str) -> bool:
    return ("300.0 MiB, over the 25.0 MiB limit" in message and "resize or re-export it" in message
            and "not an image" not in message)


# ---------------------------------------------------------------- the size before the content

@pytest.mark.parametrize("head", HEADS.values(), ids=HEADS.keys())
def test_the_image_reader_refuses_a_huge_png_for_its_size(tmp_path, head):
    from trainer.image.data import load_images

    photo = sparse(tmp_path / "photo.png", head)
    with pytest.raises(DataError) as err:
        load_images([photo], instance_prompt="x")
    assert "photo.png" in str(err.value) and says_image_too_large(str(err.value))


def test_the_cli_names_the_limit_for_a_huge_png(tmp_path, monkeypatch, capsys):
    from loracord.cli import main

    folder = tmp_path / "photos"
    sparse(folder / "photo.png", PNG_SIGNATURE)
    monkeypatch.setattr(sys, "argv", ["loracord", "train", "image", str(folder), "--base", str(tmp_path / "no-base"),
                                      "--out", str(tmp_path / "run"), "--resolution", "64"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("error:") and "photo.png" in error and says_image_too_large(error)


def test_a_zip_member_is_refused_for_its_size_before_its_bytes(tmp_path):
    from trainer.image.data import DataLimits, load_images

    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("photo.png", b"\x00" * 4096)  # binary data named .png, over a 1 KiB limit
    with pytest.raises(DataError) as err:
        load_images([archive], instance_prompt="x", limits=DataLimits(max_file_bytes=1024))
    assert "photo.png: file is 0.1 MiB, over the 0.0 MiB limit (1024 bytes); resize or re-export it" in str(err.value)


def test_the_text_reader_refuses_a_huge_file_for_its_size(tmp_path):
    from trainer.text.data import read_text_examples

    notes = sparse(tmp_path / "notes.txt", HEADS["program"])
    with pytest.raises(DataError) as err:
        read_text_examples([notes])
    assert str(err.value) == (f"notes.txt: file is 300.0 MiB, over the 25.0 MiB limit ({MAX_FILE_BYTES} bytes); "
                              "split it into smaller files.")


def _zip(files: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buffer.getvalue()


def _check(kind: str, uploads: list[tuple[str, bytes]], tmp_path: Path) -> dict[str, str]:
    from bot.ingest import check_uploads
    from storage.blobs import BlobStore

    result = check_uploads(kind, uploads, BlobStore(tmp_path / "blobs"))
    assert not result.accepted
    return {r.filename: r.reason for r in result.rejected}


def test_the_bot_refuses_an_oversized_file_for_its_size_alone_and_in_an_archive(tmp_path):
    big = b"\x00" * (MAX_FILE_BYTES + 1)  # binary data: refused as such if the bytes came first
    limit = f"over the 25.0 MiB limit ({MAX_FILE_BYTES} bytes)"
    photos = _zip({"b.png": big}, zipfile.ZIP_STORED)
    rejected = _check("image", [("photo.png", PNG_SIGNATURE + big), ("photos.zip", photos)], tmp_path)
    assert rejected == {"photo.png": f"file is 25.1 MiB, {limit}; resize or re-export it.",
                        "photos.zip/b.png": f"file is 25.1 MiB, {limit}; resize or re-export it."}
    rejected = _check("text", [("notes.txt", HEADS["program"] + big)], tmp_path)
    assert rejected == {"notes.txt": f"file is 25.1 MiB, {limit}; split it into smaller files."}


# ---------------------------------------------------------------- zip bombs and paths, one rule each

@pytest.mark.parametrize(("file_size", "compress_size", "bomb"), [
    (MiB, 1, False),  # small members may compress very well
    (MiB + 1, 1, True),
    (200 * MiB, MiB, False),  # exactly the ratio
    (200 * MiB + 1, MiB, True),
    (2 * MiB, 0, True),  # a stored size of zero is not a division by zero
])
def test_the_zip_bomb_rule(file_size, compress_size, bomb):
    assert looks_like_zip_bomb(file_size, compress_size) is bomb


def test_the_bot_refuses_a_zip_bomb_by_member_and_by_whole_archive(tmp_path):
    # a bomb beside 1 MiB that does not compress: the whole archive inflates only ~20x, the member ~1000x
    one = _zip({"zeros.txt": b"\0" * (20 * MiB), "noise.txt": random.Random(0).randbytes(MiB)})
    many = _zip({f"z{i}.txt": b"\0" * (MiB // 2) for i in range(4)})  # each under the member rule, not the whole
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w:gz") as archive:
        info = tarfile.TarInfo("zeros.txt")
        info.size = 2 * MiB
        archive.addfile(info, io.BytesIO(b"\0" * info.size))
    rejected = _check("text", [("one.zip", one), ("many.zip", many), ("zeros.tar.gz", tar.getvalue())], tmp_path)
    assert rejected["one.zip"].startswith("zeros.txt inflates") and rejected["one.zip"].endswith("possible zip bomb")
    assert rejected["many.zip"].startswith("the archive inflates") and "archive bomb" in rejected["many.zip"]
    assert "archive bomb" in rejected["zeros.tar.gz"]


@pytest.mark.parametrize(("name", "unsafe"), [
    ("a/b.png", False), ("a..b.png", False), ("../b.png", True), ("a/../../b.png", True), ("/etc/passwd", True),
    ("\\windows\\x.png", True), ("C:/x.png", True), ("c:x.png", True), ("a\\..\\b.png", True),
])
def test_the_archive_path_rule(name, unsafe):
    assert unsafe_archive_path(name) is unsafe


def test_the_file_size_rule_fits_at_the_limit_and_says_what_to_do():
    assert file_size_problem(MAX_FILE_BYTES, "image") is None
    assert file_size_problem(MAX_FILE_BYTES + 1, "text") == (  # one byte over shows as over
        f"file is 25.1 MiB, over the 25.0 MiB limit ({MAX_FILE_BYTES} bytes); split it into smaller files.")
    assert file_size_problem(2048, "caption", limit=1024).startswith(
        "file is 0.1 MiB, over the 0.0 MiB limit (1024 bytes); a caption is")


def test_the_image_config_reads_its_pixel_cap_from_the_limits():
    from trainer.image.config import ImageTrainConfig

    assert ImageTrainConfig.model_fields["max_pixels"].default == limits.MAX_IMAGE_PIXELS
