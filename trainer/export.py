"""The export formats of a finished run: one table, read by ``/adapter export``, the finished-run
message and the ``export`` job kind (``storage.jobkinds.export``).

Each format names its function as ``"module:function"``, imported only where it runs, so the
bot reads the table without torch. The function is called as
``fn(run_root, out_dir, *, may_load=..., **options)`` on a run folder (``adapter/`` and
``metrics.json``) and returns an object with ``.path`` (the main file), and where it writes more
than one file ``.files`` (all of them), and ``.note`` (e.g. which step's adapter a stopped run
holds). A *big* format needs the base model (a merged checkpoint): it runs as an ``export`` job
on a worker, never in the bot's process. A small one reads the adapter only; the bot may make it
itself, and the job kind runs it too.

Adding a format is one entry in ``FORMATS`` (and its options in ``OPTIONS`` where new).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError
from .kinds import RunKind


@dataclass(frozen=True)
class ExportOption:
    """One option a format's function takes, as a member gives it (``name=value``)."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple = ()
    low: float | None = None
    high: float | None = None

    def parse(self, text: str):
        """The option's value from a member's text; a ``UserError`` saying what is allowed otherwise."""
        try:
            value = self.type(text)
        except ValueError:
            raise UserError(f"`{self.name}` takes {self.describe()}; got {text!r}.") from None
        if (self.choices and value not in self.choices) or (self.low is not None and value < self.low) \
                or (self.high is not None and value > self.high):
            raise UserError(f"`{self.name}` takes {self.describe()}; got {text!r}.")
        return value

    def describe(self) -> str:
        if self.choices:
            return " or ".join(map(str, self.choices))
        return f"a number from {self.low:g} to {self.high:g}"


OPTIONS = {option.name: option for option in (
    ExportOption("outtype", str, "f16", "the merged model's number format", choices=("f16", "q8_0")),
    ExportOption("weight", float, 1.0, "how strongly the LoRA is fused into the base", low=0.0, high=2.0),
)}
"""Options members may give a format (``/adapter export options:outtype=q8_0``); ``max_bytes`` is
not one of them: the server's export quota sets it (``ExportFormat.takes_max_bytes``)."""


@dataclass(frozen=True)
class ExportFormat:
    """One export format of a run's adapter."""

    name: str  # what /adapter export format: and `loracord export` call it
    entry: str  # "module:function", see the module's docstring
    description: str  # one line for the bot: what the file is and what loads it
    how: str = ""  # how to use the posted file; {file} and the returned object's scalar fields fill it
    makes_images: bool | None = None  # fits runs whose kind record says so; None: runs of every kind
    big: bool = False  # needs the base model: runs as an ``export`` job on a worker
    options: tuple[str, ...] = ()  # keys of OPTIONS its function takes
    takes_max_bytes: bool = False  # its function takes max_bytes (the server's export quota)
    estimate: str | None = None  # "module:function": fn(metrics, adapter_bytes, **options) -> bytes or None
    names_kept: bool = False  # its files name each other (a Modelfile's FROM): posted under their own names
    check: str | None = None  # "module:function": fn(metrics) -> why the run is refused, or None (asked first)

    def fits(self, kind: RunKind) -> bool:
        """Whether runs of ``kind`` export in this format."""
        return self.makes_images is None or self.makes_images == kind.makes_images

    def export(self, run_root: str | Path, out_dir: str | Path, *, may_load: bool = True, max_bytes: int | None = None,
               **options):
        """Run the format's function; options it does not take are refused, missing ones get their defaults."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise UserError(f"`format:{self.name}` takes no option {', '.join(unknown)}; {self.options_line()}.")
        chosen = {name: options.get(name, OPTIONS[name].default) for name in self.options}
        if self.takes_max_bytes:
            chosen["max_bytes"] = max_bytes
        return _load(self.entry)(run_root, out_dir, may_load=may_load, **chosen)

    def estimated_bytes(self, metrics: dict, adapter_bytes: int, **options) -> int | None:
        """The export's size before it is made, where the format can tell; None otherwise."""
        return _load(self.estimate)(metrics, adapter_bytes, **options) if self.estimate else None

    def refusal(self, metrics: dict) -> str | None:
        """Why this format refuses the run, where that is known before anything is made (a base's licence
        read on this machine); None otherwise: the format's function checks again where it runs."""
        return _load(self.check)(metrics) if self.check else None

    def options_line(self) -> str:
        if not self.options:
            return "it takes no options"
        return "it takes " + ", ".join(f"`{n}` ({OPTIONS[n].describe()}, default {OPTIONS[n].default})"
                                       for n in self.options)

    def parse_options(self, text: str | None) -> dict:
        """``name=value`` pairs (spaces or commas between them) as this format's options."""
        chosen = {}
        for pair in (text or "").replace(",", " ").split():
            name, sep, value = pair.partition("=")
            if not sep or name not in self.options:
                raise UserError(f"`format:{self.name}` does not take `{pair}`: {self.options_line()}, given as "
                                "`name=value`.")
            chosen[name] = OPTIONS[name].parse(value)
        return chosen


def adapter_sized(metrics: dict, adapter_bytes: int, **options) -> int:
    """An adapter's export is about as large as the adapter's own files."""
    return adapter_bytes


FORMATS: dict[str, ExportFormat] = {fmt.name: fmt for fmt in (
    ExportFormat("gguf", "trainer.text.gguf:export_gguf", makes_images=False, estimate="trainer.export:adapter_sized",
                 description="the adapter as a GGUF file for llama.cpp, Ollama and LM Studio",
                 how="a LoRA in llama.cpp's GGUF format for a `{arch}` base: load it over the base in GGUF with "
                     "`llama-cli -m base.gguf --lora {file}`, or `ADAPTER {file}` in an Ollama Modelfile."),
    # The big formats: each needs the base, so a worker that has it makes them (big=True).
    ExportFormat("gguf-merged", "trainer.text.gguf_merged:export_merged_gguf", makes_images=False, big=True,
                 options=("outtype",), names_kept=True, estimate="trainer.text.gguf_merged:estimate",
                 description="the base merged with the adapter as one GGUF model, with an Ollama Modelfile",
                 how="a `{arch}` model of its own ({outtype}, chat template: {chat_template}): "
                     "`ollama create NAME -f Modelfile` beside it, or `llama-cli -m {file}`."),
    ExportFormat("merged", "trainer.image.merged:export_merged_checkpoint", makes_images=True, big=True,
                 options=("weight",), takes_max_bytes=True, estimate="trainer.image.merged:estimate",
                 check="trainer.image.merged:licence_refusal",
                 description="the base with the LoRA fused in, as one single-file checkpoint (AUTOMATIC1111, "
                             "ComfyUI, Forge)",
                 how="a {family} checkpoint with the LoRA fused at weight {weight:g} ({dtype}, licence {licence}): "
                     "put {file} among your UI's checkpoints."),
)}


def get(name: str) -> ExportFormat:
    """The format called ``name``; a ``UserError`` naming the formats otherwise."""
    try:
        return FORMATS[name]
    except KeyError:
        raise UserError(f"unknown export format {name!r}; choose {', '.join(FORMATS)}") from None


def fitting(kind: RunKind) -> list[ExportFormat]:
    """The formats runs of ``kind`` export in, in the table's order."""
    return [fmt for fmt in FORMATS.values() if fmt.fits(kind)]


def written_files(written) -> list[Path]:
    """Every file an export function wrote: its ``.files``, else its ``.path``; the main file first."""
    files = [Path(p) for p in (getattr(written, "files", None) or [written.path])]
    main = Path(written.path)
    return [main] + [p for p in files if p != main]


def details(written) -> dict:
    """The returned object's scalar fields (``arch``, ``alpha``...), for a format's ``how`` line."""
    fields = getattr(written, "__dict__", None) or {name: getattr(written, name)
                                                    for name in getattr(written, "__dataclass_fields__", ())}
    return {k: v for k, v in fields.items() if isinstance(v, (str, int, float, bool)) and k not in ("path", "note")}


def _load(ref: str):
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)
