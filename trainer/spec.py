"""The run spec: a run's settings in one typed form, from the edge (slash command, CLI) to the trainer.

A ``RunSpec`` says what to train (``kind``, ``base``), on what (local ``data`` paths, or a
``dataset`` manifest of blobs with their captions and uploaders), how (a ``preset`` and the
``settings`` somebody chose) and whether it is one run or a quick-tries search (``tune``).

- It is built and checked once, at the edge: ``RunSpec.build`` raises one ``ConfigError`` that
  lists every problem, in the format the trainer's own configs use.
- It is serialized once (``model_dump(mode="json")``), stored as the job row's config, and goes
  unchanged through the queue to the worker, which only adds the local ``data`` paths after
  materializing the manifest (``materialize``), and to the job process.
- The trainer reads it as is: ``train_config`` makes the kind's ``TextTrainConfig`` or
  ``ImageTrainConfig`` from it (the kind's record, ``trainer.kinds``, names its config and its
  trainer), and the trainer sizes every knob nobody chose from the preset (``trainer.presets``),
  the same way for text and images, from the bot and from the CLI.
- ``settings`` holds only what somebody chose, so a quick-tries search varies exactly the
  searched knobs (``trainer.tune.SEARCHED``) that are not in it.

Job rows written before the spec existed (flat trainer keyword arguments) still load:
``RunSpec.from_job`` reads both forms. Nothing here imports torch: the bot builds specs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import kinds
from .captions import METADATA_NAME
from .config import problems, settings_error
from .errors import ConfigError
from .presets import Preset

Kind = Literal[kinds.names()]
Pruner = Literal["successive-halving", "hyperband", "median", "none"]
SPEC_VERSION = 1
# Fields of the spec itself: they are never trainer ``settings``.
OWN_FIELDS = ("kind", "base", "preset", "seed", "data", "out", "resume")


class DataItem(BaseModel):
    """One file of a dataset, as stored: its blob, its name, its caption and who gave it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    blob: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the file in the blob store.")
    filename: str = Field(min_length=1, description="The name it was uploaded under; its extension says how it is read.")
    caption: str | None = Field(None, description="The image's caption; None trains it on the instance prompt.")
    caption_source: str | None = Field(None, description="Where the caption came from (trainer.captions.SOURCES): "
                                                         "member, sidecar, metadata or model.")
    uploader: int | None = Field(None, description="Who uploaded it (a Discord user id).")


class DatasetManifest(BaseModel):
    """A dataset by blob hashes, so that a worker sharing only the blob store can train on it."""

    model_config = ConfigDict(extra="forbid")

    items: list[DataItem] = Field(min_length=1, description="The files, in the order the trainer reads them.")

    def materialize(self, kind: Kind, folder: str | Path, fetch: Callable[[str, Path], Any]) -> list[str]:
        """Write the files into ``folder`` (``fetch(blob, path)`` copies one blob) in the form the
        trainer reads, and return the paths to train on.

        Files are named ``NNNN-name`` (the index keeps two uploads of ``cat.png`` apart; the
        extension still decides how a file is read). An image dataset's captions go into one
        ``metadata.jsonl`` beside the images, keyed by those names, each row with its ``source``. A file already there (an
        earlier attempt of the job) is not fetched again.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        captioned = kinds.get(kind).captioned
        paths, rows = [], []
        for index, item in enumerate(self.items):
            name = f"{index:04d}-{PurePosixPath(item.filename.replace(chr(92), '/')).name or 'file'}"
            path = folder / name
            if not path.exists():
                fetch(item.blob, path)
            paths.append(str(path))
            if captioned and item.caption and item.caption.strip():
                source = {"source": item.caption_source} if item.caption_source else {}
                rows.append({"file_name": name, "text": item.caption.strip()} | source)
        if rows:
            metadata = folder / METADATA_NAME
            tmp = metadata.with_name(metadata.name + ".part")
            tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
            os.replace(tmp, metadata)
            paths.append(str(metadata))
        return paths


class TuneOptions(BaseModel):
    """How a quick-tries search runs (``trainer.tune.tune``'s options beside the trainer settings)."""

    model_config = ConfigDict(extra="forbid")

    trials: int | None = Field(8, ge=1, le=500, description="Finished trials the study should hold.")
    budget_minutes: float | None = Field(None, gt=0, description="Stop the search after this many minutes.")
    grid: dict[str, list] | None = Field(None, description="Walk these value lists instead of a TPE search.")
    storage: str | None = Field(None, description="Optuna storage URL shared by workers; None: sqlite in the run folder.")
    study_name: str = Field("tune", min_length=1, description="Study name inside the storage.")
    pruner: Pruner = Field("successive-halving", description="How trials that fall behind are cut.")
    seed: int = Field(0, description="Seed of the sampler (the runs' own seed is the spec's seed).")
    full_run: bool = Field(True, description="Train the best settings in full at the end.")
    full_steps: int | None = Field(None, ge=1, description="Steps of the full run; None: the best trial's.")
    folds: int | None = Field(None, ge=0, description="Folds each setting is scored on: 0 one validation split, "
                              "2 or more cross-validates; None: by the data's size (trainer.folds.folds_for).")
    top_k: int = Field(3, ge=1, le=20, description="Trials whose samples the report shows.")
    steer: list[dict] = Field(default_factory=list, description=(
        "Members' comparisons of an earlier round's trials, each {'better': params, 'worse': params}; "
        "the preferential GP's proposals from them are tried first (trainer.steer). Empty: not steered."))

    @field_validator("steer")
    @classmethod
    def _pairs(cls, value: list[dict]) -> list[dict]:
        bad = [i for i, c in enumerate(value) if not (isinstance(c.get("better"), dict) and isinstance(c.get("worse"), dict))]
        if bad:
            raise ValueError(f"each comparison needs 'better' and 'worse' settings (comparison {bad[0]} has not)")
        return value


class RunSpec(BaseModel):
    """One training run, or one quick-tries search, as somebody asked for it."""

    model_config = ConfigDict(extra="forbid")

    spec: Literal[1] = Field(SPEC_VERSION, description="Format version, so stored jobs can be read later.")
    kind: Kind = Field(description=f"{kinds.choices()}.")
    base: str | None = Field(None, description="Base model; None: the built-in text model (image runs need one).")
    preset: Preset | None = Field(None, description="Preset that sizes every knob nobody chose; None: 'balanced'.")
    seed: int = Field(0, description="Seed of the run: split, augmentation, initialisation, samples.")
    settings: dict[str, Any] = Field(default_factory=dict, description=(
        "Trainer settings somebody chose (the member, the server's defaults, the CLI), by the names of "
        "TextTrainConfig / ImageTrainConfig. Only these are fixed; a search varies the others."))
    data: list[str] = Field(default_factory=list, description="Local files, folders or zips to train on.")
    dataset: DatasetManifest | None = Field(None, description="The data as blobs; the worker materializes it into data.")
    tune: TuneOptions | None = Field(None, description="Set for a quick-tries search instead of one run.")

    @field_validator("settings")
    @classmethod
    def _chosen_only(cls, value: dict[str, Any]) -> dict[str, Any]:
        # None means "not chosen": the preset sizes it.
        return {k: v for k, v in value.items() if v is not None}

    @model_validator(mode="after")
    def _consistent(self) -> "RunSpec":
        found = _combination_problems(self.kind, self.base, self.settings, self.data, self.dataset)
        if found:
            raise ValueError("; ".join(found))
        return self

    # ---- building and checking, at the edge

    @classmethod
    def build(cls, **kwargs) -> "RunSpec":
        """Like the constructor, but also checks ``settings`` against the trainer's config, and
        raises one ``ConfigError`` listing every problem."""
        try:
            spec = cls(**kwargs)
        except ValidationError as exc:
            # List what the fields' errors hid too: the combination, and the trainer's view of the settings.
            found = problems(exc)
            kind, settings = kwargs.get("kind"), kwargs.get("settings") or {}
            if isinstance(settings, dict):
                found += ["config: " + p for p in _combination_problems(
                    kind, kwargs.get("base"), settings, kwargs.get("data"), kwargs.get("dataset"))]
                if kind in kinds.KINDS:
                    chosen = {k: v for k, v in settings.items() if v is not None and k not in OWN_FIELDS}
                    found += _settings_problems(kind, {**chosen, "data": ["data"], "out": "check", "base": "base"})
            raise settings_error(list(dict.fromkeys(found))) from None
        found = spec.problems()
        if found:
            raise settings_error(found)
        return spec

    def problems(self) -> list[str]:
        """What the trainer would refuse in these settings, as ``field: what is wrong`` lines."""
        found = _settings_problems(self.kind, self._config_values(out="check", data=self.data or ["dataset"]))
        if self.tune is not None:
            from .tune import check_search

            t = self.tune
            found.extend(check_search(self.kind, t.trials, t.budget_minutes, t.grid, self.settings, t.pruner))
        return found

    @property
    def job_kind(self) -> str:
        """The queue's name for this job: ``train_text``, ``train_image`` or ``tune``."""
        return "tune" if self.tune is not None else f"train_{self.kind}"

    def to_job(self) -> dict:
        """The JSON form stored on the job row and passed through the queue."""
        return self.model_dump(mode="json", exclude_none=True)

    @classmethod
    def from_job(cls, job_kind: str, config: dict) -> "RunSpec":
        """Read a job row's config: a stored spec, or the flat trainer arguments jobs held before.

        Raises ``ConfigError`` naming what does not read, so such a job fails with a message
        (its row and data stay as they are).
        """
        if "spec" in config:
            try:
                spec = cls.model_validate(config)
            except ValidationError as exc:
                raise ConfigError("this job's stored settings do not read: " + "; ".join(problems(exc))) from None
        else:
            spec = cls._from_flat(job_kind, config)
        if spec.job_kind != job_kind:
            raise ConfigError(f"a {job_kind} job holds the settings of a {spec.job_kind} job")
        return spec

    @staticmethod
    def kind_of(job_kind: str, config: dict) -> str:
        """The kind of run a job row trains, without reading the rest of it: a train job's queue
        name (``train_<kind>``, as ``job_kind`` names it), a search's ``kind`` (a stored spec's or
        a flat one's; the default kind where an old flat search names none). Any other job kind
        is returned as it is."""
        if job_kind == "tune":
            return config.get("kind", kinds.DEFAULT.name)
        return job_kind.removeprefix("train_")

    @classmethod
    def _from_flat(cls, job_kind: str, config: dict) -> "RunSpec":
        """The flat form: ``TextTrainConfig``/``ImageTrainConfig`` arguments (plus ``data_blobs``
        ``[[sha256, filename], ...]``), or ``tune``'s keyword arguments for a ``tune`` job."""
        config = dict(config)
        blobs = config.pop("data_blobs", None)
        values: dict[str, Any] = {"data": list(config.pop("data", None) or [])}
        if blobs:
            values["dataset"] = {"items": [{"blob": digest, "filename": name} for digest, name in blobs]}
            values["data"] = []  # the bot's own copies; the worker fetches the blobs
        kind = cls.kind_of(job_kind, config)
        if job_kind == "tune":
            config.pop("kind", None)
            settings = dict(config.pop("settings", None) or {})
            values["tune"] = {k: config.pop(k) for k in list(config) if k in TuneOptions.model_fields}
        else:
            settings = config
        for key in ("base", "preset", "seed"):
            value = settings.pop(key, None)
            if value is None and job_kind == "tune":
                value = config.pop(key, None)
            if value is not None:
                values[key] = value
        for key in ("out", "resume", "kind"):
            settings.pop(key, None)
        try:
            return cls.build(kind=kind, settings=settings, **values)
        except ConfigError as exc:
            reason = str(exc).removeprefix("invalid training settings: ")
            raise ConfigError(f"this job's stored settings do not read: {reason}") from None

    # ---- reading it, in the worker and the trainer

    def materialized(self, folder: str | Path, fetch: Callable[[str, Path], Any]) -> "RunSpec":
        """This spec with ``data`` pointing at the manifest's files, written into ``folder``."""
        if self.dataset is None:
            return self
        return self.model_copy(update={"data": self.dataset.materialize(self.kind, folder, fetch)})

    def _config_values(self, *, out: str | Path, data: list[str] | None = None, resume: bool = False) -> dict:
        values = {**self.settings, "data": [str(p) for p in (self.data if data is None else data)],
                  "out": str(out), "resume": resume, "seed": self.seed}
        if self.preset is not None:
            values["preset"] = self.preset
        if self.base:
            values["base"] = self.base
        return values

    def train_config(self, out: str | Path, *, resume: bool = False):
        """The trainer's config for one run into ``out`` (``TextTrainConfig`` or ``ImageTrainConfig``)."""
        if not self.data:
            raise ConfigError("the dataset has not been fetched: no data paths to train on")
        return config_class(self.kind).build(**self._config_values(out=out, resume=resume))

    def train(self, out: str | Path, *, resume: bool = False, on_event=None, cancel=None):
        """Train one run into ``out``; returns the trainer's result."""
        config = self.train_config(out, resume=resume)
        return kinds.get(self.kind).part("train")(config, on_event=on_event, cancel=cancel)

    def search(self, out: str | Path, *, on_trial=None, on_event=None, cancel=None):
        """Run the quick-tries search into ``out``; returns ``trainer.tune.TuneResult``."""
        from .tune import tune

        options = (self.tune or TuneOptions()).model_dump()
        return tune(self.kind, self.data, out, base=self.base, preset=self.preset or "balanced",
                    settings={**self.settings, "seed": self.seed}, on_trial=on_trial, on_event=on_event,
                    cancel=cancel, **options)


def _combination_problems(kind, base, settings: dict, data, dataset) -> list[str]:
    found = []
    own = [k for k in settings if k in OWN_FIELDS]
    if own:
        found.append(f"{', '.join(own)} is not a trainer setting here; give it as the run's own field")
    if not data and dataset is None:
        found.append("give the data to train on (files, folders or zips), or a dataset manifest")
    needs_base = kinds.KINDS[kind].needs_base if kind in kinds.KINDS else None
    if needs_base and not base:
        found.append(needs_base)
    return found


def _settings_problems(kind: str, values: dict) -> list[str]:
    try:
        config_class(kind)(**values)
    except ValidationError as exc:
        return problems(exc)
    return []


def config_class(kind: str):
    """The trainer config class of ``kind``; ``ConfigError`` for an unknown kind."""
    return kinds.get(kind).config_class
