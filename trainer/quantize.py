"""Which quantisation a run's frozen base loads in, and the loading config for it (QLoRA).

``quantize`` is ``none``, ``8bit``, ``4bit`` or ``auto``. Only the frozen base is quantised: the
LoRA weights, their gradients and the optimizer stay float32, and the adapter a run writes is the
same LoRA it would write on an unquantised base (it loads into the unquantised model).

The stack, per path (measured on this project's CPU machines, bitsandbytes 0.50.2, torchao 0.18,
transformers 5.24, diffusers 0.42; docs/trainer.md says why):

- text, 8bit and 4bit: bitsandbytes through transformers' ``BitsAndBytesConfig`` (LLM.int8 and
  nf4, QLoRA's recipe; peft wraps its layers). Both run on a CPU and on a CUDA GPU.
- image, 8bit: torchao's int8 weight-only through diffusers' ``TorchAoConfig`` (peft wraps it
  too). diffusers' bitsandbytes quantizer refuses to load without a GPU; torchao's runs anywhere.
- image, 4bit: bitsandbytes nf4 through diffusers' ``BitsAndBytesConfig``, on a CUDA GPU only
  (torchao's int4 needs the ``mslk`` kernels, which have no CPU build).

``auto`` decides from the base's parameter count and the device's free memory
(``choose_quantize`` takes both, so tests inject them): unquantised where the base in its compute
dtype leaves room (``FIT_SHARE``), else the smallest quantisation this device runs. On a CPU a
quantised step is slower and a tiny base gains little memory (docs/benchmarks.md), so there it
only quantises a base that would not fit otherwise.

Nothing here imports torch at import time: the bot reads ``AUTO_WORDS`` and ``MODES``.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

MODES = ("none", "8bit", "4bit", "auto")
# The base in its compute dtype must take at most this share of the free memory: the rest is for
# activations, the adapter and its optimizer state, the caches, and the allocator's slack.
FIT_SHARE = 0.6
BYTES_PER_PARAM = {"none": None, "8bit": 1.0, "4bit": 0.55}  # nf4 with its block scales
MIN_BNB = "0.50"  # the first bitsandbytes measured to run 8-bit and nf4 on a CPU here
AUTO_WORDS = ("auto: the base loads unquantised where it leaves room for training in the worker's memory; "
              "else 4-bit (text; image on a GPU) or 8-bit (image on a CPU). On a CPU a quantised base trains "
              "slower, so a base that fits is never quantised there.")


@dataclass
class QuantizeChoice:
    """What a run's frozen base loads in and why; ``metrics.json`` records it as ``quantize_choice``."""
    mode: str  # none, 8bit, 4bit
    reason: str
    stack: str | None = None  # e.g. "bitsandbytes nf4 (transformers)"
    params: int | None = None
    free_bytes: int | None = None

    def as_dict(self) -> dict:
        return {"picked": self.mode, "reason": self.reason, "stack": self.stack, "params": self.params,
                "free_bytes": self.free_bytes}

    def words(self) -> str:
        """The start message's words: ``4bit (bitsandbytes nf4: ...)``."""
        return "unquantised base" if self.mode == "none" else f"{self.mode} base ({self.stack})"


@dataclass(frozen=True)
class Quantizer:
    """How one kind's base loads in one quantisation: the library and, where it has one, why it needs a GPU."""
    stack: str  # the words a member reads: "bitsandbytes nf4 (transformers)"
    package: str
    minimum: str
    gpu_only: str | None = None  # why it needs a CUDA GPU, or None where a CPU runs it too


# A run kind's ``quantizers`` (trainer.kinds) names one of these tables.
TRANSFORMERS = {"8bit": Quantizer("bitsandbytes LLM.int8 (transformers)", "bitsandbytes", MIN_BNB),
                "4bit": Quantizer("bitsandbytes nf4 (transformers)", "bitsandbytes", MIN_BNB)}
DIFFUSERS = {"8bit": Quantizer("torchao int8 weight-only (diffusers)", "torchao", "0.18"),
             "4bit": Quantizer("bitsandbytes nf4 (diffusers)", "bitsandbytes", MIN_BNB, gpu_only=(
                 "4-bit image bases need a CUDA GPU: diffusers' bitsandbytes quantizer refuses to load without one, "
                 "and torchao's int4 needs the mslk kernels, which have no CPU build. Use quantize 8bit (torchao "
                 "int8) or none on a CPU"))}


def quantizers(kind: str) -> dict[str, Quantizer]:
    """The quantisations a ``kind`` run's base loads in, by mode (its record's ``quantizers``)."""
    from .kinds import get

    return get(kind).part("quantizers")


def stack(mode: str, kind: str) -> str:
    """The library that quantises a ``kind`` run's base to ``mode``."""
    return quantizers(kind)[mode].stack


def missing(mode: str, kind: str, device: str) -> str | None:
    """What this machine lacks to load a ``kind`` base in ``mode`` on ``device``, or None where it can."""
    if mode == "none":
        return None
    if device not in ("cpu", "cuda"):
        return f"{mode} bases load on a CUDA GPU or a CPU; this run's device is {device}"
    quantizer = quantizers(kind)[mode]
    if quantizer.gpu_only and device != "cuda":
        return quantizer.gpu_only
    return _needs(quantizer.package, quantizer.minimum, f"pip install '{quantizer.package}>={quantizer.minimum}'")


def _needs(package: str, minimum: str, how: str) -> str | None:
    from packaging.version import Version

    try:
        have = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return f"it needs the {package} package, which is not installed ({how})"
    if Version(have) < Version(minimum):
        return f"it needs {package}>={minimum} (installed: {have}; {how})"
    return None


def check_quantize(requested: str, kind: str, device: str) -> None:
    """Refuse, before any work, a quantisation this machine cannot run (``auto`` never is)."""
    if requested not in MODES:
        raise ConfigError(f"quantize {requested!r}: use {', '.join(MODES)}.")
    if requested in ("none", "auto"):
        return
    lack = missing(requested, kind, device)
    if lack:
        raise ConfigError(f"quantize {requested} cannot run here: {lack}.")


def choose_quantize(requested: str, *, kind: str, device: str, params: int, free_bytes: int,
                    compute_bytes: int) -> QuantizeChoice:
    """Resolve ``requested``. ``params``: the frozen base's (the denoiser's for images) parameter count;
    ``free_bytes``: the device's free memory; ``compute_bytes``: bytes per parameter unquantised (4 fp32, 2 bf16)."""
    check_quantize(requested, kind, device)
    facts = dict(params=params, free_bytes=free_bytes)
    if requested != "auto":
        why = f"{requested} was asked for"
        return QuantizeChoice(requested, why, stack(requested, kind) if requested != "none" else None, **facts)
    need, room = params * compute_bytes, FIT_SHARE * free_bytes
    where = "GPU" if device == "cuda" else "CPU"
    sizes = f"{params / 1e9:.2f}B parameters, {need / 2**30:.1f} GiB unquantised; {free_bytes / 2**30:.1f} GiB free"
    if need <= room:
        slower = "" if device == "cuda" else " (on a CPU a quantised base only trains slower)"
        return QuantizeChoice("none", f"auto: the base fits this {where} unquantised ({sizes}){slower}", **facts)
    order = [mode for mode, q in sorted(quantizers(kind).items(), key=lambda item: BYTES_PER_PARAM[item[0]])
             if device == "cuda" or not q.gpu_only]  # the smallest this device runs first
    for mode in order:
        if missing(mode, kind, device) is None:
            fits = params * BYTES_PER_PARAM[mode] <= room
            return QuantizeChoice(mode, f"auto: the base would not leave room for training on this {where} "
                                        f"unquantised ({sizes}), so it loads {mode}"
                                  + ("" if fits else "; even so it may not fit"), stack(mode, kind), **facts)
    lack = missing(order[0], kind, device)
    return QuantizeChoice("none", f"auto: the base would not leave room unquantised ({sizes}), but {order[0]} "
                                  f"cannot run here ({lack}); trying unquantised", **facts)


# --------------------------------------------------------------------------------------------
# the facts auto reads


def count_params(folder: Path) -> int:
    """Parameters in the safetensors files under ``folder``, read from their headers (no weights loaded).
    safetensors reads them, so a corrupt or cut-short file fails as loading it would (``SafetensorError``)."""
    from safetensors import safe_open

    total = 0
    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(path), framework="numpy") as f:
            for name in f.keys():
                count = 1
                for dim in f.get_slice(name).get_shape():
                    count *= dim
                total += count
    return total


def free_memory(device: str) -> int:
    """Free bytes on ``device``: the GPU's free memory, or the memory the system has available."""
    if device == "cuda":
        import torch

        return int(torch.cuda.mem_get_info()[0])
    import psutil

    return int(psutil.virtual_memory().available)


def run_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def decide(requested: str, *, kind: str, folder: Path, precision: str) -> QuantizeChoice:
    """``choose_quantize`` with this machine's facts: the base's parameters and the free memory."""
    device = run_device()
    check_quantize(requested, kind, device)  # before counting anything
    return choose_quantize(requested, kind=kind, device=device, params=count_params(folder),
                           free_bytes=free_memory(device), compute_bytes=4 if precision == "fp32" else 2)


# --------------------------------------------------------------------------------------------
# the loading configs


def text_config(mode: str, dtype):
    """transformers' ``quantization_config`` for a causal LM in ``mode`` (None: unquantised)."""
    if mode == "none":
        return None
    from transformers import BitsAndBytesConfig

    if mode == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    # QLoRA's recipe: nf4 with nested (double) quantisation of the block scales, computing in the run's dtype
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype)


def image_config(mode: str, denoiser: str, dtype):
    """diffusers' pipeline ``quantization_config`` that quantises the ``denoiser`` component alone."""
    if mode == "none":
        return None
    from diffusers import PipelineQuantizationConfig

    if mode == "8bit":
        from diffusers import TorchAoConfig
        from torchao.quantization import Int8WeightOnlyConfig

        return PipelineQuantizationConfig(quant_mapping={denoiser: TorchAoConfig(Int8WeightOnlyConfig())})
    from diffusers import BitsAndBytesConfig

    return PipelineQuantizationConfig(quant_mapping={denoiser: BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)})


def keep_training_layout(module) -> int:
    """Keep bitsandbytes' 4-bit weights in the layout training reads; returns the layers switched.

    On a CPU with AVX-512 BF16, bitsandbytes (0.50) repacks a ``Linear4bit``'s weight for its
    inference kernel the first time the layer runs in eval mode without gradients: a run's
    samples before training, each validation. From then on the layer's output carries no
    gradient to its input, so every LoRA below it would train on a wrong gradient, silently (and
    the repacking fails outright for layers narrower than a quantisation block). A run
    alternates training and evaluation, so the repacking is switched off for its model.
    """
    switched = 0
    for layer in module.modules():
        if getattr(layer, "support_avx512bf16_for_cpu", False):
            layer.support_avx512bf16_for_cpu = False
            switched += 1
    return switched


def is_quantized(param) -> bool:
    """A quantised weight (bitsandbytes' int8/uint8 storage, a torchao tensor): never cast or copied as floats."""
    return not param.is_floating_point() or type(param.data).__module__.startswith("torchao")
