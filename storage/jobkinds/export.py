"""``export``: a finished run's adapter in one of ``trainer.export.FORMATS``, made on a worker.

A big format (a base merged with the adapter) loads the whole base, so it is made here and not
in the bot's process; any format of the table runs here alike. The job names its adapter by blob
hashes, as a ``sample`` job does, so any worker that shares the blob store serves it. Config::

    {"source_job": 12, "format": "gguf", "options": {...}, "max_bytes": 2000000000 | None,
     "kind": "text" | "image", "base": "...", "adapter": TREE_HASH, "metrics": BLOB_HASH | None,
     "channel": THREAD_ID, "requested_by": USER_ID, "upload_limit": BYTES}

The files it writes go to the blob store; the job's report carries ``export``: the format, the
files (name, blob, bytes; the main one first), the note and the details its ``how`` line reads.
It travels on the ``runs`` lane: a merged export holds the whole base in memory, as a training
run does, so it takes a run's place on a worker instead of running beside one (its priority puts
it ahead of queued runs).
"""

from __future__ import annotations

import shutil

from .base import JobKind
from .sample import source_folder

KIND = JobKind("export", run="storage.jobkinds.export:run_export", prepare="storage.jobkinds.sample:fetch_adapter",
               publish="storage.jobkinds.export:publish_export", priority=5, lane="runs",
               summary="export an adapter", cancelled_early="cancelled before the export was made")


def run_export(config: dict, run, *, resume: bool, cancel) -> dict:
    """Make the export into ``RUN/export``; returns its files (relative to the run folder) and note."""
    from trainer.export import details, get, written_files

    fmt = get(str(config.get("format")))
    out = run.root / "export"
    shutil.rmtree(out, ignore_errors=True)
    if cancel.is_set():
        return {"status": "cancelled"}
    written = fmt.export(source_folder(run), out, may_load=True, max_bytes=config.get("max_bytes"),
                         **(config.get("options") or {}))
    paths = written_files(written)
    check_quota(paths, out, config.get("max_bytes"))
    files = [p.resolve().relative_to(run.root.resolve()).as_posix() for p in paths]
    return {"status": "done", "format": fmt.name, "files": files, "note": getattr(written, "note", "") or "",
            "details": details(written), "source": {"job": config.get("source_job")}}


def publish_export(blobs, run, outputs: dict) -> None:
    """Each written file to the blob store, named in the job's report as ``export``."""
    result = outputs.get("result") or {}
    if not result.get("files"):
        return
    files = []
    for rel in result["files"]:
        path = run.root / rel
        files.append({"name": path.name, "blob": blobs.put_file(path), "bytes": path.stat().st_size})
    outputs["export"] = {"format": result.get("format"), "files": files, "note": result.get("note", ""),
                         "details": result.get("details") or {}}


def check_quota(paths, out, max_bytes: int | None) -> None:
    """Refuse (and remove) an export over the server's quota that its format could not foresee, so
    nothing over it reaches the blob store."""
    from trainer.errors import UserError

    total = sum(p.stat().st_size for p in paths)
    if max_bytes is not None and total > max_bytes:
        shutil.rmtree(out, ignore_errors=True)
        raise UserError(f"the export is {total:,} bytes, over this server's export quota of {max_bytes:,} bytes; a "
                        "server manager can raise it with `/server settings max_export_mb:`")
