"""The kinds of run, text and image: one record each, and the one place their names are declared.

A ``RunKind`` holds what differs between the kinds, so that the spec, the presets, quick tries,
the job kinds, the CLI and the bot ask the record instead of comparing names: the trainer
config class and the trainer entry, the preset table and the quick tries' probe of the data,
the files a session takes, and the words the bot says for it.

Code parts are named as ``"module:attribute"`` strings and imported only where they are used
(``RunKind.part``), so this module imports nothing heavy: the bot reads the records without
torch, and the trainer never loads the bot's parts (``card``, ``upload_check``). (Not to be confused with
``trainer.text.kinds``, the kinds of *text*: code, dialogue, verse, prose.)
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True)
class RunKind:
    """One kind of run."""

    name: str
    config: str  # its trainer config class, a ``trainer.config.TrainConfig``
    train: str  # fn(config, *, on_event, cancel) -> the trainer's result
    presets: str  # fn(preset, n_examples, **sizing) -> knobs, its row of the preset table (trainer.presets)
    probe: str  # fn(fixed, preset) -> trainer.tune.Probe: quick tries read the data and size the preset
    extensions: tuple[str, ...]  # the files a session of this kind takes (besides archives of them)
    units: str  # what a dataset of this kind counts, in a member's words
    good_from: int  # examples from which a dataset grades "good" (bot.report)
    first_step: str  # what to drop into a new session (/session new, /session info)
    sample_prompt: str  # /sample's prompt when a member gives none
    card: str  # the bot's report-card reader: fn(card, items, paths, settings, sizes) (bot.report)
    upload_check: str  # the bot's check of one uploaded file: fn(name, data, resolution) -> its checks (bot.ingest)
    refused_elsewhere: str  # /train start's answer when its options of this kind are given in another kind's {session}
    too_large_fix: str  # what to do with a file of this kind over the size limit (trainer.limits.file_size_problem)
    library: str  # what loads its adapters, as the model card and /adapter export name it
    base_is: str  # what its base model is, in the model card's words ({family}: the image family's label)
    alpha_per_rank: float  # LoRA alpha when none is given: this many times the rank
    quantizers: str  # how its frozen base loads quantised, by mode: a table of trainer.quantize.Quantizer
    min_examples: int = 5  # fewest examples a run takes: one held out (early stopping, quick tries), four to train on
    captioned: bool = False  # its items carry captions, written beside the files as metadata.jsonl
    sized_to_device: bool = False  # resolution, batch and sampling steps are sized to the base and device
    makes_images: bool = False  # it learns from images and its samples are images (posted as files), else texts
    card_on_upload: bool = False  # cheap to read: the bot re-reads the whole dataset after each upload
    needs_base: str | None = None  # why a run of this kind needs a base model; None: it has a default
    model_prefix: str = ""  # what marks its base models in a server's allowed list ('image:'); '': unmarked, DEFAULT's
    grid_extras: tuple[str, ...] = ()  # what a quick-tries grid may name besides settings (trainer.tune)

    def part(self, field: str) -> Any:
        """The code part ``field`` names (``"config"``, ``"train"``...), imported now."""
        module, _, attribute = getattr(self, field).partition(":")
        return getattr(importlib.import_module(module), attribute)

    @property
    def config_class(self):
        """Its ``TrainConfig`` subclass (pydantic, no torch)."""
        return self.part("config")

    @property
    def settings(self) -> tuple[str, ...]:
        """The names of the trainer settings runs of this kind take."""
        return tuple(self.config_class.model_fields)


TEXT = RunKind(
    "text", config="trainer.text.config:TextTrainConfig", train="trainer.text.train:train_text",
    presets="trainer.presets:text_presets", probe="trainer.tune:probe_text",
    extensions=(".txt", ".md", ".jsonl", ".csv"), units="examples", good_from=20,
    first_step="drop 20+ examples: `.txt`/`.md` files (a blank line between examples), `.jsonl` or `.csv` "
               "(40 chat lines make a good start)",
    sample_prompt="Once upon a time", card="bot.report:text_card", upload_check="bot.ingest:check_text",
    refused_elsewhere="`text_kind` chooses the augmentation of text runs; this is {session}. Leave it out.",
    too_large_fix="split it into smaller files", library="peft", base_is="a causal language model", alpha_per_rank=2,
    quantizers="trainer.quantize:TRANSFORMERS",
    card_on_upload=True, grid_extras=("epochs",))

IMAGE = RunKind(
    "image", config="trainer.image.config:ImageTrainConfig", train="trainer.image.train:train_image",
    presets="trainer.presets:image_presets", probe="trainer.tune:probe_image",
    extensions=(".png", ".jpg", ".jpeg", ".webp"), units="images", good_from=10,
    first_step="drop 10–30 images (`.png`, `.jpg`, `.webp`, or one `.zip`) of your subject, with captions if you can",
    sample_prompt="a photo of sks", card="bot.report:image_card", upload_check="bot.ingest:check_image",
    refused_elsewhere="`resolution`, `sample_steps` and `crop` shape image runs; this is {session}. Leave them out.",
    too_large_fix="resize or re-export it", library="diffusers", base_is="a diffusion pipeline of the {family} family", alpha_per_rank=1,
    quantizers="trainer.quantize:DIFFUSERS",
    captioned=True, sized_to_device=True, makes_images=True, model_prefix="image:",
    needs_base="image runs need a base pipeline (a hub id or a local diffusers folder)")

KINDS: dict[str, RunKind] = {kind.name: kind for kind in (TEXT, IMAGE)}
DEFAULT = TEXT  # a session or stored job that names no kind


def names() -> tuple[str, ...]:
    """The kinds' names, in order: what a ``Literal`` of kinds lists."""
    return tuple(KINDS)


def choices() -> str:
    """The kinds' names as a member reads them: ``'text' or 'image'``."""
    quoted = [repr(name) for name in KINDS]
    return ", ".join(quoted[:-1]) + " or " + quoted[-1] if len(quoted) > 1 else quoted[0]


def get(name: str) -> RunKind:
    """The kind called ``name``; a ``ConfigError`` naming the kinds otherwise."""
    try:
        return KINDS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown kind {name!r}; choose {choices()}") from None


def recorded(name: str | None) -> RunKind:
    """The kind a stored record names (a job's config, a run's metrics.json, a sample's row):
    ``DEFAULT`` when it names none, as records from before kinds were recorded do, or one this
    version does not know."""
    return KINDS.get(name or DEFAULT.name, DEFAULT)


def for_file(name: str) -> RunKind:
    """The kind whose sessions take a file called ``name`` (by its extension); ``DEFAULT`` when none does."""
    return next((kind for kind in KINDS.values() if name.lower().endswith(kind.extensions)), DEFAULT)


def of_model(entry: str) -> tuple[RunKind, str]:
    """A base model as a server's allowed list names it, as (its kind, the model): a kind's
    ``model_prefix`` marks its models (``image:org/model``); an unmarked one is ``DEFAULT``'s."""
    return next(((kind, entry[len(kind.model_prefix):]) for kind in KINDS.values()
                 if kind.model_prefix and entry.startswith(kind.model_prefix)), (DEFAULT, entry))


def taking(setting: str) -> tuple[RunKind, ...]:
    """The kinds whose runs take ``setting`` (a field of their config)."""
    return tuple(kind for kind in KINDS.values() if setting in kind.settings)
