"""A merged single-file checkpoint of an image run: the base with its LoRA fused in at a chosen weight.

``loracord export RUN --merged [--weight 0.8] [--fp32]`` and the bot's export call
``export_merged_checkpoint``. It writes ONE safetensors file in the original Stable Diffusion
layout (UNet, VAE and text encoder(s) together, ``trainer.image.ldm``), which the tools that take
a single checkpoint read (AUTOMATIC1111, ComfyUI, Forge, diffusers' ``from_single_file``). Each
family says how its pipeline becomes that file (``single_checkpoint``); a family without one is
refused by name.

Two refusals come before anything is loaded, from the base's folder alone:

- the licence (``trainer.licences.merge_refusal``): a merged file redistributes the base, so a
  base whose licence does not allow that, or whose licence cannot be found, is refused, naming it;
  the adapter itself can still be exported;
- the size: estimated from the base's safetensors headers in the file's dtype, refused when over
  ``max_bytes`` (the server's disk quota), naming both sizes.

The LoRA is fused with diffusers' ``fuse_lora(lora_scale=weight)`` into a float32 copy of the
base, then written in fp16 (what single-checkpoint tools share; ``fp32=True`` keeps float32),
under ``NAME.part`` first and renamed when complete.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")  # what an SD/SDXL single checkpoint holds
MAX_WEIGHT = 2.0  # beyond twice the trained strength a LoRA mostly breaks images; UIs stop there too


@dataclass(frozen=True)
class MergedCheckpoint:
    path: Path
    files: tuple[Path, ...]
    note: str  # which step's adapter a stopped run's merge holds ('' for a finished run)
    weight: float
    licence: str
    family: str
    dtype: str  # "fp16" or "fp32"
    bytes: int  # the file's size


def export_merged_checkpoint(run_root: str | Path, out_dir: str | Path, *, weight: float = 1.0,
                             max_bytes: int | None = None, may_load: bool = True,
                             fp32: bool = False) -> MergedCheckpoint:
    """Write ``out_dir/<run>-merged-w<weight>-<fp16|fp32>.safetensors`` from an image run's adapter.

    ``max_bytes``: the largest file allowed (None: no limit). ``may_load``: whether a base missing
    from this machine may be fetched (False: refused instead). Raises ``UserError`` for what the
    caller can change (a text run, no adapter, a weight out of range, the licence, the size).
    """
    from ..kinds import recorded
    from ..licences import base_licence, merge_refusal
    from ..rundir import RunDir, which_step
    from .export import DIFFUSERS_FILE

    run = RunDir.open(run_root)
    metrics = run.read_metrics()
    if not recorded(metrics.get("kind")).makes_images:
        raise UserError("A merged single-file checkpoint is written for image runs; for a text run, merge through "
                        "the GGUF export (`loracord export RUN --gguf --merged`).")
    weight = _check_weight(weight)
    if not (run.adapter / DIFFUSERS_FILE).is_file():
        raise UserError(f"{run.root} has no trained adapter ({run.adapter.name}/{DIFFUSERS_FILE}); a cancelled run "
                        "keeps only its checkpoint: resume it to the end first.")
    part = _family(metrics)
    folder = _base_folder(metrics, may_load)
    licence = base_licence(metrics.get("base"), folder)
    refusal = merge_refusal(licence)
    if refusal:
        raise UserError(refusal)
    dtype = "fp32" if fp32 else "fp16"
    _check_size(estimated_bytes(folder, 4 if fp32 else 2), max_bytes, dtype)

    state = _fused_state(part, folder, run.adapter / DIFFUSERS_FILE, weight)
    out = Path(out_dir) / f"{run.root.name}-merged-w{weight:g}-{dtype}.safetensors"
    note = which_step(metrics)
    metadata = {"format": "pt", "loracord.base": str(metrics.get("base") or folder), "loracord.run": run.root.name,
                "loracord.family": part.NAME, "loracord.weight": f"{weight:g}", "loracord.licence": licence,
                **({"loracord.note": note} if note else {})}
    _write(state, out, metadata, fp32)
    return MergedCheckpoint(out, (out,), note, weight, licence, part.NAME, dtype, out.stat().st_size)


def _check_weight(weight) -> float:
    try:
        weight = float(weight)
    except (TypeError, ValueError):
        weight = math.nan
    if not (0 < weight <= MAX_WEIGHT):
        raise UserError(f"The LoRA's weight in a merged checkpoint is a number above 0 and at most {MAX_WEIGHT:g} "
                        "(1 = as trained, 0.5 = half as strong); got " + str(weight) + ".")
    return weight


def _family(metrics: dict):
    """The run's family module, when it knows how to become a single checkpoint; ``UserError`` naming those that do."""
    from . import families

    part = families.named(metrics.get("family") or families.DEFAULT.NAME)
    able = [f.label() for f in families.FAMILIES if hasattr(f, "single_checkpoint")]
    if part is None or not hasattr(part, "single_checkpoint"):
        name = part.label() if part else repr(metrics.get("family"))
        raise UserError(f"loracord cannot write a merged single-file checkpoint of a {name} base yet; it can for "
                        f"{' and '.join(able)} bases. The adapter itself is in RUN/adapter/.")
    return part


def _base_folder(metrics: dict, may_load: bool) -> Path:
    """The base's pipeline folder: where the run trained, else (``may_load``) resolved again (fetched from the hub)."""
    from ..models import resolve_base

    trained_on = metrics.get("base_path")
    if trained_on and (Path(trained_on) / "model_index.json").is_file():
        return Path(trained_on)
    base = str(metrics.get("base") or "")
    if not may_load:
        raise UserError(f"The base {base!r} is not on this machine; write the merged checkpoint where the run trained "
                        "(`loracord export RUN --merged`).")
    return resolve_base(base)


def estimated_bytes(folder: Path, float_bytes: int) -> int:
    """The merged file's size from the base's safetensors headers (nothing loaded): every float weight of
    the single checkpoint's components at ``float_bytes`` each, other tensors as stored."""
    from safetensors import safe_open

    total = 0
    for component in COMPONENTS:
        for path in _weight_files(folder / component):
            with safe_open(str(path), framework="numpy") as f:  # headers only: the bot estimates too, without torch
                for key in f.keys():
                    piece = f.get_slice(key)
                    count = math.prod(piece.get_shape())
                    total += count * (float_bytes if piece.get_dtype().startswith(("F", "BF")) else _size(piece))
    return total


def estimate(metrics: dict, adapter_bytes: int, *, weight: float = 1.0, **options) -> int | None:
    """The fp16 file's size before it is made (``trainer.export``'s estimate, in the bot before it queues
    the job): None where the base is not on this machine, so the worker's own check decides."""
    try:
        return estimated_bytes(_base_folder(metrics, may_load=False), 2)
    except UserError:
        return None


def licence_refusal(metrics: dict) -> str | None:
    """The licence refusal, asked before the job is queued where the base's card is on this machine
    (``trainer.export``); None where it is not: the worker's export checks it again."""
    from ..licences import base_licence, merge_refusal

    try:
        folder = _base_folder(metrics, may_load=False)
    except UserError:
        return None
    return merge_refusal(base_licence(metrics.get("base"), folder))


def _weight_files(folder: Path) -> list[Path]:
    """A component's safetensors files as ``from_pretrained`` reads them: the plain ones, not a variant's
    (``model.fp16.safetensors``) beside them."""
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    plain = [f for f in files if f.name.count(".") == 1]
    return plain or files


def _size(piece) -> int:
    digits = "".join(c for c in piece.get_dtype() if c.isdigit())
    return max(1, int(digits or 8) // 8)


def _check_size(estimate: int, max_bytes: int | None, dtype: str) -> None:
    from ..limits import mib

    if max_bytes is not None and estimate > max_bytes:
        raise UserError(f"The merged checkpoint would take about {mib(estimate)} ({dtype}), more than the "
                        f"{mib(max_bytes)} this server allows; export the adapter itself instead (RUN/adapter/).")


def _fused_state(part, folder: Path, lora_file: Path, weight: float) -> dict:
    """The base pipeline (float32, safetensors only) with the LoRA fused at ``weight``, as the family's
    single-checkpoint state dict."""
    import torch

    from .export import quiet_check
    from .pipelines import load_pipeline

    pipe = load_pipeline(folder, dtype=torch.float32).pipe
    with quiet_check():
        pipe.load_lora_weights(str(lora_file.parent), weight_name=lora_file.name, adapter_name="merged")
    pipe.fuse_lora(lora_scale=weight, adapter_names=["merged"])
    pipe.unload_lora_weights()  # the fused weights stay; the LoRA layers go, so the names are the base's
    return part.single_checkpoint(pipe)


def _write(state: dict, out: Path, metadata: dict, fp32: bool) -> None:
    """Save under ``NAME.part`` and rename, so a reader never finds half a checkpoint."""
    import torch
    from safetensors.torch import save_file

    dtype = torch.float32 if fp32 else torch.float16
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    try:
        save_file(tensors, str(part), metadata=metadata)
        os.replace(part, out)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
