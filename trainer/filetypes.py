"""What a file really is, from its content and its name together.

A member's file name says what they meant; its bytes say what it is. ``sniff`` reads both and
returns a ``FileType``: text, an image, an archive loracord unpacks (zip, tar and compressed
tar), a document that must be saved as something else first (a ``.docx`` is a zip container,
but one file to its owner, not an archive of XML parts), or other binary data (a program, a
sound, a database, an archive format loracord does not open). ``what`` names it in a member's
words and ``instead`` says what to upload in its place.

Magic numbers come from the ``filetype`` library. Some of its signatures are plain letters
(``ID3``, ``CWS``, ``%!``), so a file whose bytes read as clean text is taken for text unless
it is one of the text-based document formats (PDF, RTF, PostScript). The bot (which must not
import torch) and the trainers' readers share this module; it imports neither.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import io
import lzma
import zipfile
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal

import filetype

from .limits import MAX_ARCHIVE_BYTES, MAX_ARCHIVE_MEMBERS  # noqa: F401 (still importable here; rules: limits)

ARCHIVE_EXTENSIONS = (".zip", ".tar", ".tgz", ".tar.gz", ".tbz2", ".tar.bz2", ".txz", ".tar.xz")
TEXT_INSTEAD = "save its text as a .txt or .md file (in your editor: Save As, plain text) and upload that"
SHEET_INSTEAD = "export the sheet as .csv (with a \"text\" column, or \"prompt\" and \"completion\") and upload that"

Kind = Literal["text", "image", "archive", "document", "binary"]


@dataclass(frozen=True)
class FileType:
    """What a file is: ``kind`` for decisions, ``what`` and ``instead`` for the member."""

    kind: Kind
    format: str
    """Short name of the format: ``txt``, ``png``, ``zip``, ``tar``, ``docx``, ``pdf``, ``exe``..."""
    what: str
    """The format in a member's words, with its article: "a Word document (.docx)"."""
    instead: str = ""
    """What to upload in its place, when it cannot be used as it is."""


# Zip containers that are documents, by the mime type their ``mimetype`` member or filetype names.
_CONTAINERS = {
    "docx": ("a Word document (.docx)", TEXT_INSTEAD),
    "xlsx": ("an Excel workbook (.xlsx)", SHEET_INSTEAD),
    "pptx": ("a PowerPoint presentation (.pptx)", TEXT_INSTEAD),
    "odt": ("an OpenDocument text (.odt)", TEXT_INSTEAD),
    "ods": ("an OpenDocument spreadsheet (.ods)", SHEET_INSTEAD),
    "odp": ("an OpenDocument presentation (.odp)", TEXT_INSTEAD),
    "odg": ("an OpenDocument drawing (.odg)", "export it as .png and upload that"),
    "epub": ("an e-book (.epub)", TEXT_INSTEAD),
    "pages": ("a Pages document (.pages)", TEXT_INSTEAD),
    "numbers": ("a Numbers spreadsheet (.numbers)", SHEET_INSTEAD),
    "key": ("a Keynote presentation (.key)", TEXT_INSTEAD),
    "jar": ("a Java program (.jar)", "upload the data it holds instead"),
    "apk": ("an Android app (.apk)", "upload the data it holds instead"),
}
_ODF_MIMES = {"application/vnd.oasis.opendocument.text": "odt",
              "application/vnd.oasis.opendocument.spreadsheet": "ods",
              "application/vnd.oasis.opendocument.presentation": "odp",
              "application/vnd.oasis.opendocument.graphics": "odg",
              "application/epub+zip": "epub"}
_OOXML_FOLDERS = {"word/": "docx", "xl/": "xlsx", "ppt/": "pptx"}

_DOCUMENTS = {
    "pdf": ("a PDF document", "copy its text into a .txt or .md file and upload that"),
    "rtf": ("an RTF document", TEXT_INSTEAD),
    "ps": ("a PostScript document", "copy its text into a .txt or .md file and upload that"),
    "doc": ("a Word 97-2003 document (.doc)", TEXT_INSTEAD),
    "xls": ("an Excel 97-2003 workbook (.xls)", SHEET_INSTEAD),
    "ppt": ("a PowerPoint 97-2003 presentation (.ppt)", TEXT_INSTEAD),
}
_UNPACK = "loracord unpacks .zip and .tar archives: unpack it and upload the files, or pack them as a .zip"
_OPEN_IT = "unpack it and upload the files inside it"
_OTHER_ARCHIVES = {"rar": "a RAR archive", "7z": "a 7-Zip archive", "gz": "a gzip-compressed file",
                   "bz2": "a bzip2-compressed file", "xz": "an xz-compressed file", "zst": "a zstd-compressed file",
                   "lz": "an lzip-compressed file", "lz4": "an LZ4-compressed file", "lzo": "an lzop-compressed file",
                   "Z": "a compress (.Z) file", "br": "a Brotli-compressed file", "cab": "a CAB archive",
                   "deb": "a Debian package", "rpm": "an RPM package", "ar": "an ar archive",
                   "crx": "a Chrome extension"}
_IMAGE_NAMES = {"jpg": "JPEG", "png": "PNG", "apng": "PNG", "gif": "GIF", "webp": "WebP", "tif": "TIFF",
                "bmp": "BMP", "heic": "HEIC", "avif": "AVIF", "ico": "icon", "psd": "Photoshop",
                "xcf": "GIMP", "jpx": "JPEG 2000", "jxr": "JPEG XR", "cr2": "Canon raw", "dwg": "AutoCAD"}
_BINARY_NAMES = {"exe": "a Windows program", "elf": "a Linux program", "wasm": "a WebAssembly program",
                 "sqlite": "an SQLite database", "swf": "a Flash file", "nes": "a NES game",
                 "woff": "a font", "woff2": "a font", "ttf": "a font", "otf": "a font", "eot": "a font",
                 "dcm": "a DICOM medical image"}
_TEXT_DOCUMENT_MAGIC = ((b"%PDF-", "pdf"), (b"{\\rtf", "rtf"), (b"%!PS", "ps"))
_HEAD = 8192


def extension(name: str) -> str:
    """The extension as members think of it, lower case: ``.tar.gz`` for ``a.tar.gz``, ``.txt``."""
    lower = PurePosixPath(name).name.lower()
    for double in (".tar.gz", ".tar.bz2", ".tar.xz"):
        if lower.endswith(double):
            return double
    return PurePosixPath(lower).suffix


def is_archive_name(name: str) -> bool:
    return extension(name) in ARCHIVE_EXTENSIONS


def sniff(data: bytes, name: str = "") -> FileType:
    """What ``data`` (a whole file, or at least its first 8 KiB) is; ``name`` settles zip containers.

    A zip whose parts make it an office document or an e-book, or whose name says so
    (``.docx``, ``.epub``...), is a ``document``; any other zip is an ``archive``.
    """
    head = data[:_HEAD]
    if _clean_text(head):
        for magic, fmt in _TEXT_DOCUMENT_MAGIC:
            if head.startswith(magic):
                return _document(fmt)
        return FileType("text", "txt", "text")
    guess = filetype.guess(head)
    fmt = guess.extension if guess else None
    if fmt == "zip" or fmt in _CONTAINERS or head.startswith(b"PK\x03\x04"):
        container = _zip_container(data, fmt, name)
        if container:
            what, instead = _CONTAINERS[container]
            return FileType("document", container, what, instead)
        return FileType("archive", "zip", "a zip archive", _OPEN_IT)
    if fmt == "tar" or _compressed_tar(head, fmt):
        return FileType("archive", "tar", "a tar archive" if fmt == "tar" else f"a compressed tar archive ({fmt})",
                        _OPEN_IT)
    if fmt in _DOCUMENTS:
        return _document(fmt)
    if fmt in _OTHER_ARCHIVES:
        return FileType("binary", fmt, _OTHER_ARCHIVES[fmt], _UNPACK)
    if guess is not None:
        top = guess.mime.split("/")[0]
        if top == "image":
            label = _IMAGE_NAMES.get(fmt, fmt.upper())
            return FileType("image", fmt, f"{_article(label)} {label} image")
        if top in ("audio", "video"):
            return FileType("binary", fmt, f"{_article(fmt)} {fmt.upper()} {top} file",
                            "loracord trains on text and images only")
        return FileType("binary", fmt, _BINARY_NAMES.get(fmt, f"{_article(fmt)} .{fmt} file"),
                        "upload text (.txt, .md, .jsonl, .csv) or images (.png, .jpg, .webp)")
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return FileType("binary", "utf-16", "UTF-16 text", "save it as UTF-8 text (in your editor: Save As, "
                                                             "encoding UTF-8) and upload it again")
    if _binary(head):
        return FileType("binary", "bin", "binary data",
                        "upload text (.txt, .md, .jsonl, .csv) or images (.png, .jpg, .webp)")
    return FileType("text", "txt", "text")  # perhaps not UTF-8: the text readers say where


def not_text(data: bytes, name: str) -> str | None:
    """Why ``data`` cannot be read as a text file named ``name``, or None when it is text."""
    found = sniff(data, name)
    if found.kind == "text":
        return None
    instead = found.instead or "a text dataset takes .txt, .md, .jsonl or .csv files"
    return f"this is {found.what}{'' if 'text' in found.what else ', not text'}; {instead}."


def _document(fmt: str) -> FileType:
    what, instead = _DOCUMENTS[fmt]
    return FileType("document", fmt, what, instead)


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeio" else "a"


def _clean_text(head: bytes) -> bool:
    """UTF-8 (a character cut at the end is fine) without NUL and with few control bytes."""
    if not head or b"\x00" in head:
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return not _binary(head)


def _binary(head: bytes) -> bool:
    """NUL bytes, or more than 1 in 10 bytes a control code that text does not use."""
    if b"\x00" in head:
        return True
    controls = sum(1 for b in head if b < 32 and b not in (9, 10, 12, 13, 27))
    return controls * 10 > len(head)


def _zip_container(data: bytes, fmt: str | None, name: str) -> str | None:
    """The document format of a zip container, from its parts, filetype's guess or its name."""
    if fmt in _CONTAINERS:
        return fmt
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = archive.namelist()
            if "mimetype" in names:
                mime = archive.read("mimetype")[:100].decode("ascii", "replace").strip()
                if mime in _ODF_MIMES:
                    return _ODF_MIMES[mime]
            if "[Content_Types].xml" in names:
                for folder, found in _OOXML_FOLDERS.items():
                    if any(n.startswith(folder) for n in names):
                        return found
    except (zipfile.BadZipFile, EOFError, ValueError, OSError):
        pass  # a cut-off head or a broken zip: the name is all there is to go on
    ext = extension(name).lstrip(".")
    return ext if ext in _CONTAINERS else None


def _compressed_tar(head: bytes, fmt: str | None) -> bool:
    """Whether a gzip/bzip2/xz stream starts with a tar header (``ustar`` at offset 257)."""
    opener = {"gz": lambda f: gzip.GzipFile(fileobj=f), "bz2": bz2.BZ2File, "xz": lzma.LZMAFile}.get(fmt or "")
    if opener is None:
        return False
    try:
        with opener(io.BytesIO(head)) as stream:
            block = stream.read(512)
    except (OSError, EOFError, lzma.LZMAError):
        return False
    return block[257:262] == b"ustar"
