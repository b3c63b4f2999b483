"""``train_text`` and ``train_image``: one training run from a run spec (``trainer.spec``).

One job kind per kind of run (``trainer.kinds``): a new run kind has its job kind here at once.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from trainer import kinds

from .base import JobKind

KINDS = tuple(JobKind(f"train_{kind.name}", run=f"storage.jobkinds.train:train_{kind.name}",
                      prepare="storage.jobkinds.train:fetch_dataset", multi_gpu=True,
                      summary=f"train {'an' if kind.name[:1] in 'aeiou' else 'a'} {kind.name} LoRA")
              for kind in kinds.KINDS.values())


def __getattr__(name: str):
    """``train_text``, ``train_image``: the run function of each job kind above."""
    if name in {job.name for job in KINDS}:
        return partial(run_training, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run_training(job_kind: str, config: dict, run, *, resume: bool, cancel) -> dict:
    """Train as the job row's run spec says: the spec is read once, here, and the trainer reads it as is."""
    from trainer.spec import RunSpec

    return train_result(RunSpec.from_job(job_kind, config).train(run.root, resume=resume, cancel=cancel))


def train_result(result) -> dict:
    stop = getattr(result, "stop_reason", None)
    status = "cancelled" if stop == "cancelled" else "done"
    return {"status": status, "val_loss": getattr(result, "val_loss", None), "stop_reason": stop}


def fetch_dataset(blobs, run, config: dict) -> dict:
    """Fetch a job's dataset from the blob store into ``RUN/data`` and point ``data`` at it.

    The bot names the dataset by blob hashes (a run spec's ``dataset`` manifest, see
    ``trainer.spec``; jobs queued before it: ``data_blobs``, ``[[sha256, filename], ...]``)
    so that a worker on another machine, sharing only the blob store, can train on it. Files
    keep their names (the extension decides how a file is read) and their order; an image
    dataset's captions are written beside them as ``metadata.jsonl``.

    Only the manifest is read here: the job process reads the whole spec, once
    (``run_training``), and fails a job whose settings do not read, saying why.
    """
    if "spec" in config and config.get("dataset"):
        from pydantic import ValidationError

        from trainer.errors import ConfigError
        from trainer.spec import DatasetManifest

        try:
            manifest, kind = DatasetManifest.model_validate(config["dataset"]), kinds.get(config.get("kind")).name
        except (ValidationError, ConfigError):
            return config  # the job process fails it, saying what does not read
        return {**config, "data": manifest.materialize(kind, run.root / "data", blobs.get_file)}
    refs = config.get("data_blobs")
    if not refs:
        return config
    folder = run.root / "data"
    paths = []
    for index, (digest, name) in enumerate(refs):
        path = folder / f"{index:04d}-{Path(name).name or 'file'}"
        if not path.exists():
            blobs.get_file(digest, path)
        paths.append(str(path))
    return {**{k: v for k, v in config.items() if k != "data_blobs"}, "data": paths}
