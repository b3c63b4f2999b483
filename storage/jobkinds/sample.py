"""``sample``: generate from a finished run's adapter, or from one trial of quick tries.

The job names its adapter by blob hashes (``adapter``: a tree, ``metrics``: the run's
metrics.json, which says the kind and the base model), so any worker that shares the blob
store serves it, whichever machine trained the adapter. Config::

    {"source_job": 12, "trial": 3 | None, "kind": "text" | "image", "base": "...",
     "adapter": TREE_HASH, "metrics": BLOB_HASH | None,
     "prompts": ["..."], "count": 1, "seed": 0, "max_new_tokens": 60,
     "scorer": "CLIP model" | None, "dataset": MANIFEST | None}

Each sample carries its scores (``trainer.scores``), posted under it: an image grid is scored by
the server's ``scorer`` (prompt adherence; "unavailable" without one); a text by how much it
copies the run's training split (the source run's ``dataset``, split as the run split it) and
how varied it is, beside the adapter's held-out perplexity from the run's metrics.

The samples are published as the source job's (and trial's), so votes on them rank that run.
Sampling is short: it travels on the ``quick`` lane, which every worker serves with a thread of
its own, so it runs beside a training run instead of waiting for it to end.
"""

from __future__ import annotations

import json
import logging
import shutil

from trainer import kinds

from .base import JobKind

log = logging.getLogger(__name__)

KIND = JobKind("sample", run="storage.jobkinds.sample:run_sample", prepare="storage.jobkinds.sample:fetch_adapter",
               publish="storage.jobkinds.sample:publish_samples", priority=10, lane="quick",
               summary="sample an adapter", cancelled_early="cancelled before the samples were made")


def source_folder(run):
    return run.root / "source"


def fetch_adapter(blobs, run, config: dict) -> dict:
    """Rebuild the adapter's run folder (``RUN/source``: adapter/ and metrics.json) from the blob store."""
    from trainer.errors import UserError
    from trainer.rundir import atomic_folder

    if not config.get("adapter") or not blobs.exists(config["adapter"]):
        raise UserError("the adapter to sample is not in the blob store any more; train the run again")
    source = source_folder(run)
    if not (source / "adapter").is_dir():
        source.mkdir(parents=True, exist_ok=True)
        with atomic_folder(source / "adapter") as tmp:
            blobs.get_tree(config["adapter"], tmp)
    metrics = source / "metrics.json"
    if not metrics.is_file():
        if config.get("metrics"):
            blobs.get_file(config["metrics"], metrics)
        else:
            metrics.write_text(json.dumps({"kind": config.get("kind", kinds.DEFAULT.name), "base": config.get("base")}))
    kind = kinds.recorded(config.get("kind"))
    if config.get("dataset") and (config.get("scorer") or not kind.makes_images):  # what the samples are scored against
        from trainer.spec import DatasetManifest

        manifest = DatasetManifest.model_validate(config["dataset"])
        return {**config, "data": manifest.materialize(kind.name, run.root / "data", blobs.get_file)}
    return config


def run_sample(config: dict, run, *, resume: bool, cancel) -> dict:
    """Generate ``count`` samples per prompt into ``RUN/samples``; returns them in the result."""
    from trainer.errors import UserError

    prompts = [str(p) for p in config.get("prompts") or []]
    if not prompts:
        raise UserError("give at least one prompt")
    seed, count = int(config.get("seed", 0)), max(1, int(config.get("count", 1)))
    source, out = source_folder(run), run.root / "samples"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    if cancel.is_set():
        return {"status": "cancelled"}
    rows, kind = [], kinds.recorded(config.get("kind"))
    if kind.makes_images:
        from trainer.image.sample import sample_run as sample_images

        drawn = sample_images(source, prompts, seed=seed, count=count, aspect=config.get("aspect"))
        for index, (prompt, path) in enumerate(zip(prompts, drawn)):
            target = out / f"sample-{index}.png"  # one grid per prompt, seeds seed .. seed+count-1
            shutil.move(str(path), target)
            rows.append({"file": f"samples/{target.name}", "prompt": prompt, "seed": seed, "kind": kind.name})
    else:
        from trainer.text.sample import sample_run as sample_text

        generated = sample_text(source, prompts, seed=seed, count=count,
                                max_new_tokens=int(config.get("max_new_tokens", 60)))
        for index, row in enumerate(generated):
            target = out / f"sample-{index}.txt"
            target.write_text(row["text"], encoding="utf-8")
            rows.append({"file": f"samples/{target.name}", "prompt": row["prompt"], "seed": row["seed"],
                         "kind": kind.name})
    try:
        found = sample_scores(config, run.root, rows, kind)
    except Exception as exc:  # the samples are made: a scorer that breaks costs their numbers, not them
        log.warning("sample job: scoring failed (%s: %s); the samples are posted without scores",
                    type(exc).__name__, exc)
        found = [{"scores_unavailable": f"scoring failed on the worker ({type(exc).__name__})"} for _ in rows]
    for row, scores in zip(rows, found):
        row["scores"] = scores
    return {"status": "done", "samples": rows,
            "source": {"job": config.get("source_job"), "trial": config.get("trial")}}


def sample_scores(config: dict, root, rows: list[dict], kind) -> list[dict]:
    """Each sample's scores (``trainer.scores``), in the order of ``rows``."""
    from trainer import scores

    ran = json.loads((root / "source" / "metrics.json").read_text())  # the source run's (fetch_adapter)
    source = ran.get("config") or {}  # its settings: how it split its data
    if kind.makes_images:
        from PIL import Image

        scorer = scores.load_scorer(config.get("scorer"))
        held_out = _held_out_images(config.get("data"), source) if scorer is not None else []
        found = []
        for row in rows:  # a grid of ``count`` seeds of one prompt: each cell against the prompt
            with Image.open(root / row["file"]) as grid:
                cells = _cells(grid.convert("RGB"), max(1, int(config.get("count", 1))))
            found.append(scores.image_scores(scorer, cells, held_out, [row["prompt"]] * len(cells)))
        return found
    training = _training_texts(config.get("data"), source)
    texts = [(root / row["file"]).read_text(encoding="utf-8") for row in rows]
    ppl = ran.get("score_heldout_ppl")  # the adapter's, as its run measured it on the held-out split
    found = []
    for text in texts:
        own = scores.text_scores([text], training or [], None)
        if training is None:
            own.pop("score_copied_words", None)  # nothing to compare with: no number rather than a false 0
        found.append({**own, **({"score_heldout_ppl": ppl} if ppl is not None else {})})
    return found


def _cells(grid, count: int) -> list:
    """The ``count`` images side by side in one sampled grid."""
    w = grid.width // count
    return [grid.crop((i * w, 0, (i + 1) * w, grid.height)) for i in range(count)]


def _held_out_images(paths, run_config: dict) -> list:
    """The images the source run held out (its split, by its seed, read at its limits); [] where
    they cannot be read, so that no likeness is claimed."""
    from pydantic import ValidationError

    from trainer.errors import UserError
    from trainer.folds import split_holdout
    from trainer.image.config import ImageTrainConfig
    from trainer.image.data import load_images, training_limits
    from trainer.image.train import split

    if not paths or not run_config.get("resolution"):
        return []
    try:
        config = ImageTrainConfig.model_validate({**run_config, "data": list(paths)})
        examples = load_images(paths, instance_prompt=config.instance_prompt, limits=training_limits(config)).examples
    except (UserError, ValidationError):
        return []
    held = split_holdout(examples, config.holdout, config.seed) if config.holdout else \
        split(examples, config.val_fraction, config.seed)
    return [e.image for e in held[1]]


def _training_texts(paths, run_config: dict) -> list[str] | None:
    """The texts the source run trained on (its split, by its seed), or None where they cannot be read."""
    from trainer.errors import UserError
    from trainer.scores import content
    from trainer.text.data import load_text_dataset

    if not paths:
        return None
    try:
        dataset = load_text_dataset(paths, val_fraction=run_config.get("val_fraction", 0.1),
                                    seed=run_config.get("seed", 0), holdout=run_config.get("holdout"))
    except UserError:
        return None
    return [content(e) for e in dataset.train]


def publish_samples(blobs, run, outputs: dict) -> None:
    """Each sample file to the blob store, reported as a sample of the source job (and trial)."""
    result = outputs.get("result") or {}
    source = result.get("source") or {}
    for row in result.get("samples", []):
        path = run.root / row["file"]
        if path.is_file():
            outputs["samples"].append({"blob": blobs.put_file(path), "prompt": row.get("prompt"), "seed": row.get("seed"),
                                       "kind": row.get("kind"), "job": source.get("job"), "trial": source.get("trial"),
                                       "scores": row.get("scores")})
