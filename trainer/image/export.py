"""Write a trained image LoRA in two formats and prove that each loads back into a pipeline.

- ``adapter/pytorch_lora_weights.safetensors``: diffusers/peft format, for
  ``pipe.load_lora_weights(RUN/adapter)``. Rank and alpha travel in the file's metadata.
- ``adapter/lora_kohya.safetensors``: kohya format (``lora_unet_<module>.lora_down.weight``,
  ``.lora_up.weight``, ``.alpha``), what AUTOMATIC1111, ComfyUI and most UIs load.

Both are made with diffusers' own converters. Right after writing, each file is loaded into a
fresh copy of the base pipeline and its weight updates are compared with the trained ones;
a file that does not load, drops modules or scales differently raises ``TrainingError``.

A DoRA adapter (``use_dora`` in its LoRA config, set when LoRA is added, before training) is
written as the diffusers file only (``single_file_skipped``): the file keeps each layer's
magnitude (``lora_magnitude_vector``), which no single-file format diffusers loads does.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from ..errors import TrainingError

DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"
KOHYA_FILE = "lora_kohya.safetensors"
# metrics.json's single_file_skipped for a DoRA run, and the model card's sentence about it
DORA_SINGLE_FILE = ("a single-file LoRA keeps DoRA's magnitudes as LyCORIS' dora_scale, which diffusers drops "
                    "when loading, so a DoRA run writes the diffusers file only; load that one")


def single_file_skipped(denoiser) -> str | None:
    """Why a run writes no single file beside the diffusers one, or None: the adapter's own LoRA
    config says DoRA (fixed when LoRA was added, before the first step, so nothing is tried and dropped)."""
    config = (getattr(denoiser, "peft_config", None) or {}).get("default")
    return DORA_SINGLE_FILE if config is not None and getattr(config, "use_dora", False) else None


def lora_layers(loaded) -> dict[str, dict]:
    """Trained LoRA weights per pipeline component, in diffusers' layout (what save_lora_weights takes)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = {}
    for name in (loaded.part.DENOISER, "text_encoder", "text_encoder_2"):
        module = getattr(loaded.pipe, name, None)
        if module is not None and getattr(module, "peft_config", None):
            layers[name] = convert_state_dict_to_diffusers(get_peft_model_state_dict(module))
    return layers


def save_diffusers(loaded, folder: Path) -> Path:
    pipe = loaded.pipe
    layers = lora_layers(loaded)
    kwargs = {f"{name}_lora_layers": sd for name, sd in layers.items()}
    kwargs |= {f"{name}_lora_adapter_metadata": getattr(pipe, name).peft_config["default"].to_dict() for name in layers}
    type(pipe).save_lora_weights(save_directory=folder, safe_serialization=True, weight_name=DIFFUSERS_FILE, **kwargs)
    return folder / DIFFUSERS_FILE


def save_kohya(loaded, diffusers_file: Path, folder: Path, *, rank: int, alpha: float) -> Path:
    """Convert the diffusers file to kohya keys, as the family names them (``kohya_key``); alpha is
    written as trained (the converter assumes alpha = rank)."""
    import torch
    from diffusers.utils.state_dict_utils import convert_all_state_dict_to_peft, convert_state_dict_to_kohya
    from safetensors.torch import load_file, save_file

    kohya = convert_state_dict_to_kohya(convert_all_state_dict_to_peft(load_file(str(diffusers_file))))
    out = {}
    for key, tensor in kohya.items():
        key = loaded.part.kohya_key(key)
        out[key] = torch.tensor(float(alpha)) if key.endswith(".alpha") else tensor.contiguous()
    metadata = {"ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_network_alpha": str(alpha),
                "ss_base_model_version": loaded.part.KOHYA_BASE_VERSION}
    path = folder / KOHYA_FILE
    save_file(out, str(path), metadata=metadata)
    return path


def lora_deltas(module, adapter: str = "default", bases: dict | None = None) -> dict[str, "torch.Tensor"]:
    """The weight change each LoRA layer of ``module`` makes, by module path: B @ A x scale.

    A DoRA layer's change is more than that (peft's ``get_delta_weight`` leaves its magnitude out):
    it is the layer's effective weight less its base weight, ``m / ||W + dW|| * (W + dW) - W``, the
    norm per output feature as peft takes it, which is exactly what merging the layer would write
    into it. ``bases``: the base weight ``W`` to take it on, by path (``dora_bases`` of the trained
    copy, so that a fresh pipeline storing its base in another dtype is compared on the same W:
    the file carries dW and m, not W); default: each layer's own. A layer whose weights did not
    load is left out (diffusers leaves a file's missing keys on the meta device, with a warning).
    """
    from peft.tuners.lora import LoraLayer

    deltas = {}
    for name, layer in module.named_modules():
        if isinstance(layer, LoraLayer) and adapter in layer.lora_A:
            dora = bool(layer.use_dora.get(adapter))
            weights = [layer.lora_A[adapter].weight, layer.lora_B[adapter].weight]
            if any(w.is_meta for w in weights + ([layer.lora_magnitude_vector[adapter].weight] if dora else [])):
                continue
            delta = layer.get_delta_weight(adapter).detach().float().cpu()
            if dora:
                base = (bases or {}).get(name)
                base = base_weight(layer) if base is None else base
                magnitude = layer.lora_magnitude_vector[adapter].weight.detach().float().cpu().flatten()
                merged = base + delta
                scale = magnitude / merged.flatten(1).norm(dim=1)
                delta = scale.view(-1, *[1] * (merged.dim() - 1)) * merged - base
            deltas[name] = delta
    return deltas


def dora_bases(module, adapter: str = "default") -> dict[str, "torch.Tensor"]:
    """The base weights (float32, on the CPU) of ``module``'s DoRA layers, by path: what ``lora_deltas``
    takes a loaded copy's DoRA changes on."""
    from peft.tuners.lora import LoraLayer

    return {name: base_weight(layer) for name, layer in module.named_modules()
            if isinstance(layer, LoraLayer) and layer.use_dora.get(adapter)}


def base_weight(layer) -> "torch.Tensor":
    """A LoRA layer's base weight, float32 on the CPU; dequantised where the base loaded quantised
    (``--quantize``), so a DoRA update is compared on the weights the trained layer computed with."""
    from peft.utils.integrations import dequantize_module_weight

    return dequantize_module_weight(layer.get_base_layer()).detach().float().cpu()


def same_update(got, want, dtype) -> bool:
    """Whether a loaded layer's weight update matches the trained one: to float32 rounding, or, in a
    pipeline loaded in half precision (a 12B base is checked in bf16, and its LoRA weights are
    rounded to that on load), to 2% of the update's largest entry; a wrong scale or a dropped
    alpha is off by far more."""
    import torch

    if dtype in (torch.float32, torch.float64):
        return torch.allclose(got, want, rtol=1e-3, atol=1e-6)
    return torch.allclose(got, want, rtol=2e-2, atol=2e-2 * float(want.abs().max()))


@contextlib.contextmanager
def quiet_check():
    """While an exported file loads into a fresh pipeline to be checked: diffusers' note that the
    file holds no keys for a text encoder (true: only the denoiser trained) and peft's warning about
    a second adapter (the check loads one per file) are expected, so neither reaches the console.
    The check itself fails on any layer that did not load."""
    import warnings

    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            yield
    finally:
        diffusers_logging.set_verbosity(level)


def verify_loads(fresh, trained, files: dict[str, Path]) -> None:
    """Load each file into ``fresh`` (a pipeline without adapters) and compare with ``trained``.

    Raises ``TrainingError`` naming the file when it does not load or its updates differ.
    """
    import torch

    for component in (trained.part.DENOISER, "text_encoder", "text_encoder_2"):
        module = getattr(trained.pipe, component, None)
        if module is None or not getattr(module, "peft_config", None):
            continue
        expected, bases = lora_deltas(module), dora_bases(module)
        for fmt, path in files.items():
            adapter = f"check_{fmt}"
            if adapter not in getattr(fresh.denoiser, "peft_config", {}):
                try:
                    with quiet_check():
                        fresh.pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter)
                except (ValueError, KeyError, RuntimeError, OSError, TypeError) as exc:
                    raise TrainingError(f"The exported {fmt} LoRA {path} does not load into "
                                        f"{type(fresh.pipe).__name__}: {exc}") from exc
            got = lora_deltas(getattr(fresh.pipe, component), adapter, bases)
            if set(got) != set(expected):
                missing = sorted(set(expected) - set(got))
                raise TrainingError(f"The exported {fmt} LoRA {path} loads only {len(got)} of {len(expected)} "
                                    f"{component} layers (missing e.g. {missing[:1]}).")
            for name, delta in expected.items():
                if not same_update(got[name], delta, fresh.denoiser.dtype):
                    raise TrainingError(f"The exported {fmt} LoRA {path} changes {component}.{name} differently "
                                        "from the trained adapter (scale or conversion error).")


def export_adapter(trained, fresh, folder: Path, *, rank: int, alpha: float) -> dict[str, Path]:
    """Write both formats into ``folder`` (the diffusers one alone for DoRA: ``single_file_skipped``),
    verify them against ``fresh``, and return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    diffusers_file = save_diffusers(trained, folder)
    files = {"diffusers": diffusers_file}
    if not single_file_skipped(trained.denoiser):
        files["kohya"] = save_kohya(trained, diffusers_file, folder, rank=rank, alpha=alpha)
    verify_loads(fresh, trained, files)
    return files
