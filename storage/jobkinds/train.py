"""``train_text`` and ``train_image``: one training run from a run spec (``trainer.spec``)."""

from __future__ import annotations

from pathlib import Path

from .base import JobKind

KINDS = (
    JobKind("train_text", run="storage.jobkinds.train:train_text", prepare="storage.jobkinds.train:fetch_dataset",
            multi_gpu=True, summary="train a text LoRA"),
    JobKind("train_image", run="storage.jobkinds.train:train_image", prepare="storage.jobkinds.train:fetch_dataset",
            multi_gpu=True, summary="train an image LoRA"),
)


def train_text(config: dict, run, *, resume: bool, cancel) -> dict:
    return run_training("train_text", config, run, resume=resume, cancel=cancel)


def train_image(config: dict, run, *, resume: bool, cancel) -> dict:
    return run_training("train_image", config, run, resume=resume, cancel=cancel)


def run_training(job_kind: str, config: dict, run, *, resume: bool, cancel) -> dict:
    """Train as the job row's run spec says; the trainer reads the spec as is."""
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
    """
    if "spec" in config and config.get("dataset"):
        from pydantic import ValidationError

        from trainer.spec import RunSpec

        try:
            spec = RunSpec.model_validate(config)
        except ValidationError:
            return config  # the job process fails it, saying what does not read
        return spec.materialized(run.root / "data", blobs.get_file).to_job()
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
