"""Write a trained image LoRA in two formats and prove that each loads back into a pipeline.

- ``adapter/pytorch_lora_weights.safetensors``: diffusers/peft format, for
  ``pipe.load_lora_weights(RUN/adapter)``. Rank and alpha travel in the file's metadata.
- ``adapter/lora_kohya.safetensors``: kohya format (``lora_unet_<module>.lora_down.weight``,
  ``.lora_up.weight``, ``.alpha``), what AUTOMATIC1111, ComfyUI and most UIs load.

Both are made with diffusers' own converters. Right after writing, each file is loaded into a
fresh copy of the base pipeline and its weight updates are compared with the trained ones;
a file that does not load, drops modules or scales differently raises ``TrainingError``.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import TrainingError

DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"
KOHYA_FILE = "lora_kohya.safetensors"


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


def lora_deltas(module, adapter: str = "default") -> dict[str, "torch.Tensor"]:
    """The weight update (B @ A x scale) each LoRA layer of ``module`` adds, by module path."""
    from peft.tuners.lora import LoraLayer

    deltas = {}
    for name, layer in module.named_modules():
        if isinstance(layer, LoraLayer) and adapter in layer.lora_A:
            deltas[name] = layer.get_delta_weight(adapter).detach().float().cpu()
    return deltas


def verify_loads(fresh, trained, files: dict[str, Path]) -> None:
    """Load each file into ``fresh`` (a pipeline without adapters) and compare with ``trained``.

    Raises ``TrainingError`` naming the file when it does not load or its updates differ.
    """
    import torch

    for component in (trained.part.DENOISER, "text_encoder", "text_encoder_2"):
        module = getattr(trained.pipe, component, None)
        if module is None or not getattr(module, "peft_config", None):
            continue
        expected = lora_deltas(module)
        for fmt, path in files.items():
            adapter = f"check_{fmt}"
            if adapter not in getattr(fresh.denoiser, "peft_config", {}):
                try:
                    fresh.pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter)
                except (ValueError, KeyError, RuntimeError, OSError, TypeError) as exc:
                    raise TrainingError(f"The exported {fmt} LoRA {path} does not load into "
                                        f"{type(fresh.pipe).__name__}: {exc}") from exc
            got = lora_deltas(getattr(fresh.pipe, component), adapter)
            if set(got) != set(expected):
                missing = sorted(set(expected) - set(got))
                raise TrainingError(f"The exported {fmt} LoRA {path} loads only {len(got)} of {len(expected)} "
                                    f"{component} layers (missing e.g. {missing[:1]}).")
            for name, delta in expected.items():
                if not torch.allclose(got[name], delta, rtol=1e-3, atol=1e-6):
                    raise TrainingError(f"The exported {fmt} LoRA {path} changes {component}.{name} differently "
                                        "from the trained adapter (scale or conversion error).")


def export_adapter(trained, fresh, folder: Path, *, rank: int, alpha: float) -> dict[str, Path]:
    """Write both formats into ``folder``, verify them against ``fresh``, and return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    diffusers_file = save_diffusers(trained, folder)
    files = {"diffusers": diffusers_file, "kohya": save_kohya(trained, diffusers_file, folder, rank=rank, alpha=alpha)}
    verify_loads(fresh, trained, files)
    return files
