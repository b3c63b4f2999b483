"""Files are classified by their content and their name together (trainer.filetypes), and the
text reader refuses a file whose bytes are not text, whatever its name says."""

from __future__ import annotations

import codecs
import gzip
import io
import tarfile
import zipfile

import pytest

from trainer.errors import DataError
from trainer.filetypes import extension, not_text, sniff
from trainer.text.data import read_text_examples


def zip_bytes(files: list[tuple[str, str | bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in files:
            archive.writestr(name, content)
    return buffer.getvalue()


def tar_bytes(mode: str = "w", files: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        for name, data in (files or {"poem.txt": b"Roses are red.\n\nViolets are blue.\n"}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


DOCX = zip_bytes([("[Content_Types].xml", "<Types/>"), ("_rels/.rels", "<r/>"), ("word/document.xml", "<w/>")])
ODT = zip_bytes([("mimetype", "application/vnd.oasis.opendocument.text"), ("content.xml", "<c/>")])
EPUB = zip_bytes([("mimetype", "application/epub+zip"), ("OEBPS/ch1.xhtml", "<p/>")])
PLAIN_ZIP = zip_bytes([("a.txt", "hello there")])


@pytest.mark.parametrize("name, data, kind, fmt", [
    ("poems.docx", DOCX, "document", "docx"),
    ("poems.zip", DOCX, "document", "docx"),          # the parts say Word, whatever the name
    ("notes.odt", ODT, "document", "odt"),
    ("book.epub", EPUB, "document", "epub"),
    ("sheet.xlsx", PLAIN_ZIP, "document", "xlsx"),    # the name settles a bare zip container
    ("stories.zip", PLAIN_ZIP, "archive", "zip"),
    ("stories", PLAIN_ZIP, "archive", "zip"),
    ("poems.txt", tar_bytes(), "archive", "tar"),
    ("poems.tgz", tar_bytes("w:gz"), "archive", "tar"),
    ("poems.tar.xz", tar_bytes("w:xz"), "archive", "tar"),
    ("notes.gz", gzip.compress(b"hello"), "binary", "gz"),
    ("scan.txt", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj", "document", "pdf"),
    ("letter.txt", b"{\\rtf1\\ansi Dear fox}", "document", "rtf"),
    ("cat.txt", b"\x89PNG\r\n\x1a\n" + b"\x00" * 32, "image", "png"),
    ("tool.txt", b"\x7fELF\x02\x01\x01" + b"\x00" * 64, "binary", "elf"),
    ("noise.txt", bytes(range(256)) * 8, "binary", "bin"),
    ("wide.txt", "héllo".encode("utf-16"), "binary", "utf-16"),
    # plain letters that happen to be magic numbers of other formats stay text
    ("tags.txt", b"ID3 tags name the song.\n\nCWS met on Monday.\n", "text", "txt"),
    ("latin.txt", b"caf\xe9 au lait", "text", "txt"),  # not UTF-8, but text: the reader says where
    ("poem.md", "Ünïcode ✓ poem\n".encode(), "text", "txt"),
])
def test_sniff_reads_content_and_name(name, data, kind, fmt):
    found = sniff(data, name)
    assert (found.kind, found.format) == (kind, fmt), found


def test_documents_say_what_they_are_and_what_to_upload_instead():
    assert sniff(DOCX, "poems.docx").what == "a Word document (.docx)"
    assert "save its text as a .txt or .md file" in sniff(DOCX, "poems.docx").instead
    assert ".csv" in sniff(PLAIN_ZIP, "sheet.xlsx").instead
    assert not_text(tar_bytes(), "poems.txt") == "this is a tar archive, not text; unpack it and upload the files inside it."
    assert not_text(codecs.BOM_UTF16_LE + "hi".encode("utf-16-le"), "a.txt").startswith("this is UTF-16 text; save it as UTF-8")
    assert not_text(b"plain words\n", "a.txt") is None


def test_extension_knows_double_extensions():
    assert [extension(n) for n in ("a.tar.gz", "B.TXT", "x", "dir/c.tgz")] == [".tar.gz", ".txt", "", ".tgz"]


def test_the_text_reader_refuses_a_tar_archive_named_txt(tmp_path):
    disguised = tmp_path / "poems.txt"
    disguised.write_bytes(tar_bytes(files={f"poem{i}.txt": b"A line of verse.\n" * 3 for i in range(40)}))
    with pytest.raises(DataError) as caught:
        read_text_examples([disguised])
    assert str(caught.value) == ("poems.txt: this is a tar archive, not text; unpack it and upload the files "
                                 "inside it.")


def test_the_text_reader_refuses_a_docx_named_txt(tmp_path):
    disguised = tmp_path / "essay.txt"
    disguised.write_bytes(DOCX)
    with pytest.raises(DataError, match=r"essay.txt: this is a Word document \(.docx\), not text; save its text"):
        read_text_examples([disguised])
