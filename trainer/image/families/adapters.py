"""LoRA on a transformer denoiser (FLUX.1, SD 3.5): read it, save it, prove a file loads back; and
what every family shares (loading a pipeline, reading a folder's configs).

The diffusers file (``pytorch_lora_weights.safetensors``) is what the pipeline class's own
``save_lora_weights(transformer_lora_layers=...)`` writes, with the peft config (rank, alpha,
targets) in its metadata, so ``pipe.load_lora_weights`` restores the adapter exactly. Each family
adds a single-file format for UIs; ``verify_loads`` loads every file into a fresh pipeline and
compares the weight updates with the trained ones.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from ...errors import ModelError, TrainingError
from ..export import DIFFUSERS_FILE, dora_bases, lora_deltas, quiet_check, same_update

ADAPTER = "default"


def lora_factors(transformer, adapter: str = ADAPTER) -> dict[str, tuple]:
    """``{module path: (A, B, scale)}`` of every LoRA layer: its update is ``scale * B @ A``."""
    from peft.tuners.lora import LoraLayer

    return {name: (layer.lora_A[adapter].weight.detach(), layer.lora_B[adapter].weight.detach(),
                   float(layer.scaling[adapter]))
            for name, layer in transformer.named_modules() if isinstance(layer, LoraLayer) and adapter in layer.lora_A}


def save_diffusers(pipe, folder: Path) -> Path:
    """Write ``folder/pytorch_lora_weights.safetensors`` with the pipeline class's ``save_lora_weights``."""
    from peft.utils import get_peft_model_state_dict

    transformer = pipe.transformer
    type(pipe).save_lora_weights(save_directory=folder, transformer_lora_layers=get_peft_model_state_dict(transformer),
                                 transformer_lora_adapter_metadata=transformer.peft_config[ADAPTER].to_dict(),
                                 weight_name=DIFFUSERS_FILE, safe_serialization=True)
    return folder / DIFFUSERS_FILE


def verify_loads(fresh, trained, files: dict[str, Path]) -> None:
    """Load each file into ``fresh`` (the base pipeline, no adapters) and compare with ``trained``'s transformer.

    A loaded layer the trained adapter lacks must change nothing (a fused kohya block brings
    zero-valued neighbours). Raises ``TrainingError`` naming the file when it does not load,
    drops layers, or scales differently.
    """
    import torch

    expected, bases = lora_deltas(trained.transformer), dora_bases(trained.transformer)
    for fmt, path in files.items():
        adapter = f"check_{fmt}"
        try:
            with quiet_check():
                fresh.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter)
        except (ValueError, KeyError, RuntimeError, OSError, TypeError, AssertionError) as exc:
            raise TrainingError(f"The exported {fmt} LoRA {path} does not load into "
                                f"{type(fresh).__name__}: {exc}") from exc
        got = lora_deltas(fresh.transformer, adapter, bases)
        missing = sorted(set(expected) - set(got))
        if missing:
            raise TrainingError(f"The exported {fmt} LoRA {path} loads only {len(expected) - len(missing)} of "
                                f"{len(expected)} transformer layers (missing e.g. {missing[0]}).")
        extra = [name for name in set(got) - set(expected) if got[name].abs().max() > 0]
        if extra:
            raise TrainingError(f"The exported {fmt} LoRA {path} changes {extra[0]}, which was not trained.")
        for name, delta in expected.items():
            if not same_update(got[name], delta, fresh.transformer.dtype):
                raise TrainingError(f"The exported {fmt} LoRA {path} changes transformer.{name} differently "
                                    "from the trained adapter (scale or conversion error).")


def drop_module(pipe, *names: str) -> None:
    """Remove pipeline components (``pipe.text_encoder_3 = None`` and so on) and free their memory."""
    import gc

    for name in names:
        setattr(pipe, name, None)
    gc.collect()


def sides(size) -> tuple[int, int]:
    """(width, height) of a sample ``size``: a side (a square) or (width, height) already."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def read_json(path: Path) -> dict:
    """A JSON object from ``path``, or {} when it is missing or not an object (no torch needed)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def vae_scale(folder: Path) -> int:
    """The VAE's downscale (2 ** (blocks - 1)) from its config, 8 when the config is missing."""
    blocks = read_json(Path(folder) / "vae" / "config.json").get("block_out_channels")
    return 2 ** (len(blocks) - 1) if blocks else 8


def open_pipeline(part, path: Path, dtype=None, quantization_config=None):
    """The family ``part``'s pipeline from the folder ``path``: safetensors only, its own loading
    options (``part.LOAD_KWARGS``), no progress bars; ``ModelError`` when it does not load.
    ``quantization_config``: diffusers' pipeline quantization config (``trainer.quantize.image_config``)."""
    import diffusers

    cls = getattr(diffusers, part.PIPELINE_CLASSES[0])
    quantized = {"quantization_config": quantization_config} if quantization_config is not None else {}
    try:
        with _quiet_loading():
            pipe = cls.from_pretrained(path, use_safetensors=True, dtype=dtype, **part.LOAD_KWARGS, **quantized)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"Could not load a {cls.__name__} from {path}: {exc}") from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe


@contextlib.contextmanager
def _quiet_loading():
    """No per-component loading bars from diffusers and transformers (the CLI draws its own progress)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    restore = [m.enable_progress_bar for m in (diffusers_logging, transformers_logging)
               if m.is_progress_bar_enabled()]
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        for enable in restore:
            enable()


def export_files(pipe, fresh, folder: Path, **single_file) -> dict[str, Path]:
    """Write the diffusers file and the family's single file (``name=writer(pipe, folder)``) into
    ``folder``, and prove each loads into ``fresh`` with the trained updates (``verify_loads``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {"diffusers": save_diffusers(pipe, folder)}
    files |= {name: write(pipe, folder) for name, write in single_file.items()}
    verify_loads(fresh, pipe, files)
    return files
