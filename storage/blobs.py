"""A content-addressed blob store: files are named by the sha256 of their bytes.

The store is a folder (the default, ``DATA/blobs``) or any fsspec URL (``s3://bucket/loracord``,
``file:///mnt/nfs/blobs``, ``memory://``) so that the bot and remote workers share it. A blob
lives at ``ab/cd/abcd...`` and is written under a temporary name first and then moved, so a
reader never sees half a blob and writing the same bytes twice is harmless.

Folders (an adapter, a checkpoint) are stored as a *tree*: each file is a blob, and a JSON
manifest ``{"kind": "tree", "files": {relative path: hash}}`` is itself a blob whose hash names
the folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from pathlib import Path
from typing import IO

import fsspec
from fsspec.core import url_to_fs

from trainer.errors import UserError

_HASH = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


class BlobNotFound(UserError):
    """No blob has this hash (or the hash is malformed)."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


class BlobStore:
    """Put bytes or files in, get them back by hash."""

    def __init__(self, url: str | Path):
        self.url = str(url)
        self.fs, self.root = url_to_fs(self.url)
        self.local = isinstance(self.fs, fsspec.implementations.local.LocalFileSystem)
        self.fs.makedirs(self.root, exist_ok=True)

    def __repr__(self) -> str:
        return f"BlobStore({self.url!r})"

    def path(self, blob_hash: str) -> str:
        """Where the blob lives in the store's filesystem (validates the hash)."""
        if not isinstance(blob_hash, str) or not _HASH.match(blob_hash):
            raise BlobNotFound(f"not a sha256 blob hash: {blob_hash!r}")
        return f"{self.root}/{blob_hash[:2]}/{blob_hash[2:4]}/{blob_hash}"

    def exists(self, blob_hash: str) -> bool:
        return self.fs.exists(self.path(blob_hash))

    def put_bytes(self, data: bytes) -> str:
        """Store ``data``; returns its sha256."""
        blob_hash = sha256_bytes(data)
        if not self.exists(blob_hash):
            self._write(blob_hash, lambda f: f.write(data))
        return blob_hash

    def put_file(self, path: str | Path) -> str:
        """Store a local file's bytes; returns their sha256."""
        blob_hash = sha256_file(path)
        if not self.exists(blob_hash):
            def copy(f: IO[bytes]) -> None:
                with open(path, "rb") as src:
                    for chunk in iter(lambda: src.read(_CHUNK), b""):
                        f.write(chunk)
            self._write(blob_hash, copy)
        return blob_hash

    def _write(self, blob_hash: str, write) -> None:
        final = self.path(blob_hash)
        self.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
        tmp = f"{final}.{uuid.uuid4().hex}.tmp"
        with self.fs.open(tmp, "wb") as f:
            write(f)
        if self.local:
            os.replace(tmp, final)  # atomic on one filesystem
        else:
            self.fs.mv(tmp, final)

    def get_bytes(self, blob_hash: str) -> bytes:
        try:
            return self.fs.cat_file(self.path(blob_hash))
        except FileNotFoundError:
            raise BlobNotFound(f"blob {blob_hash} is not in {self.url}") from None

    def open(self, blob_hash: str) -> IO[bytes]:
        if not self.exists(blob_hash):
            raise BlobNotFound(f"blob {blob_hash} is not in {self.url}")
        return self.fs.open(self.path(blob_hash), "rb")

    def get_file(self, blob_hash: str, dest: str | Path) -> Path:
        """Copy a blob into the local file ``dest`` (checking its hash on the way)."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        digest = hashlib.sha256()
        with self.open(blob_hash) as src, tmp.open("wb") as out:
            for chunk in iter(lambda: src.read(_CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != blob_hash:
            tmp.unlink()
            raise BlobNotFound(f"blob {blob_hash} in {self.url} is corrupt")
        os.replace(tmp, dest)
        return dest

    def size(self, blob_hash: str) -> int:
        """The blob's size in bytes."""
        try:
            return int(self.fs.size(self.path(blob_hash)))
        except FileNotFoundError:
            raise BlobNotFound(f"blob {blob_hash} is not in {self.url}") from None

    def signed_url(self, blob_hash: str, expires_s: int) -> str | None:
        """A URL that reads the blob without credentials for ``expires_s`` seconds, where the store can
        sign one (s3, gcs: fsspec's ``sign``); None for a store that cannot (a local folder)."""
        try:
            return self.fs.sign(self.path(blob_hash), expiration=expires_s)
        except NotImplementedError:
            return None

    def relative_path(self, blob_hash: str) -> str:
        """The blob's path inside the store (``ab/cd/abcd...``), what a public base URL of the store is followed by."""
        return self.path(blob_hash)[len(self.root):].lstrip("/")

    def delete(self, blob_hash: str) -> None:
        if self.exists(blob_hash):
            self.fs.rm(self.path(blob_hash))

    # ---- trees
    def put_tree(self, folder: str | Path) -> str:
        """Store every file under ``folder``; returns the hash of its manifest."""
        folder = Path(folder)
        if not folder.is_dir():
            raise BlobNotFound(f"{folder} is not a folder")
        files = {p.relative_to(folder).as_posix(): self.put_file(p)
                 for p in sorted(folder.rglob("*")) if p.is_file()}
        manifest = {"kind": "tree", "files": files}
        return self.put_bytes(json.dumps(manifest, sort_keys=True).encode())

    def tree_files(self, manifest_hash: str) -> dict[str, str]:
        manifest = json.loads(self.get_bytes(manifest_hash))
        if manifest.get("kind") != "tree":
            raise BlobNotFound(f"blob {manifest_hash} is not a tree manifest")
        return manifest["files"]

    def get_tree(self, manifest_hash: str, dest: str | Path) -> Path:
        """Recreate a stored folder under ``dest``."""
        dest = Path(dest)
        for rel, blob_hash in self.tree_files(manifest_hash).items():
            target = dest / rel
            if not target.resolve().is_relative_to(dest.resolve()):
                raise BlobNotFound(f"tree {manifest_hash} names a path outside its folder: {rel}")
            self.get_file(blob_hash, target)
        dest.mkdir(parents=True, exist_ok=True)
        return dest
