"""Which precision a run trains in, and the Accelerator built for it.

``auto`` is a measured choice. Where bf16 (or fp16 on a GPU without bf16) could pay, a short
probe times a few training steps of the run's own model (LoRA on, the run's batch shape) in
fp32 and in the half precision, alternating, and keeps the half precision only if it is
clearly faster. The verdict is cached per machine, torch version, thread count, model and
shape (``$LORACORD_CACHE/precision.json``), so the probe runs once. On a CPU without native
bf16 (no AVX-512 BF16 or AMX) bf16 is emulated and always slower, so fp32 is picked without a
probe. Text models usually gain on a bf16 CPU; small UNets often lose, which is why the
choice is made per model and not from the CPU flags alone.

``LORACORD_CPU_BF16`` overrides the CPU's verdict without probing: ``1`` makes ``auto`` pick
bf16 on any CPU, ``0`` fp32. CI runs the suite both ways, so both paths are exercised
whatever CPU the machine has.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import ConfigError

CPU_BF16_ENV = "LORACORD_CPU_BF16"
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def forced_cpu_bf16() -> bool | None:
    """What ``LORACORD_CPU_BF16`` forces: True, False, or None when it is unset."""
    forced = os.environ.get(CPU_BF16_ENV, "").strip().lower()
    if forced in _TRUE:
        return True
    if forced in _FALSE:
        return False
    if forced:
        raise ConfigError(f"{CPU_BF16_ENV}={forced!r}: use 1 (treat the CPU as bf16-capable) or 0 (fp32).")
    return None


def cpu_has_fast_bf16() -> bool:
    """True where the CPU multiplies bf16 natively (or ``LORACORD_CPU_BF16=1`` says so)."""
    forced = forced_cpu_bf16()
    if forced is not None:
        return forced
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_precision(requested: str) -> str:
    """Resolve ``auto``/``bf16``/``fp16``/``fp32`` to what this run trains in."""
    import torch

    if requested not in {"auto", "bf16", "fp16", "fp32"}:
        raise ConfigError(f"precision {requested!r}: use auto, bf16, fp16 or fp32.")
    if requested == "fp16" and not torch.cuda.is_available():
        raise ConfigError("fp16 needs a GPU; use --precision bf16 or fp32 on a CPU.")
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def compute_dtype(precision: str):
    """The torch dtype a run of ``precision`` ('bf16', 'fp16' or 'fp32') computes in."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def store_frozen_in(module, dtype) -> None:
    """Store ``module``'s frozen parameters in ``dtype``, leaving the trained ones (LoRA) and quantised
    weights (``--quantize``: they keep their own storage and compute dtype) as they are."""
    from .quantize import is_quantized

    for param in module.parameters():
        if not param.requires_grad and not is_quantized(param):
            param.data = param.data.to(dtype)


def make_accelerator(precision: str, **kwargs):
    """An ``Accelerator`` for ``precision`` ('bf16', 'fp16' or 'fp32'), in any process.

    accelerate keeps one ``AcceleratorState`` per process and refuses an Accelerator whose
    mixed precision differs from the first one's. One process may train several runs one
    after another (quick tries, the demo, a test session), each with its own precision, so
    the precision part of that state is reset here; the distributed part (``PartialState``,
    the process group under ``accelerate launch``) is kept.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    return Accelerator(mixed_precision="no" if precision == "fp32" else precision, **kwargs)


# --------------------------------------------------------------------------------------------
# auto, measured

# The half precision must be at least this much faster to be picked: a near tie keeps fp32.
MIN_GAIN = 1.10
PROBE_ROUNDS = 3


@dataclass
class PrecisionChoice:
    """What a run trains in and why; ``metrics.json`` records it."""
    precision: str
    reason: str
    step_s: dict[str, float] = field(default_factory=dict)  # probe: best seconds per step, by precision
    cached: bool = False

    def as_dict(self) -> dict:
        return {"picked": self.precision, "reason": self.reason, "probe_step_s": self.step_s, "cached": self.cached}


def choose_precision(requested: str, *, key: str, probe: Callable[[str], float] | None) -> PrecisionChoice:
    """Resolve ``requested``; for ``auto``, measure with ``probe(precision) -> seconds per step``.

    ``key`` names the model and batch shape (the machine, torch version and threads are added
    here). ``probe`` is called alternately for fp32 and the half precision, ``PROBE_ROUNDS``
    times each, and the best time of each side is compared.
    """
    import torch

    if requested != "auto":
        return PrecisionChoice(pick_precision(requested), f"{requested} was asked for")
    forced = forced_cpu_bf16()
    on_gpu = torch.cuda.is_available()
    if not on_gpu and forced is not None:
        picked = "bf16" if forced else "fp32"
        return PrecisionChoice(picked, f"{CPU_BF16_ENV}={os.environ[CPU_BF16_ENV]} forces {picked} on this CPU")
    if not on_gpu and not cpu_has_fast_bf16():
        return PrecisionChoice("fp32", "this CPU has no native bf16 (AVX-512 BF16 or AMX): bf16 would be emulated "
                                       "and slower than fp32")
    half = pick_precision("auto") if on_gpu else "bf16"
    if probe is None or several_processes():
        # Under ``accelerate launch`` each process would measure on its own and could pick
        # differently; every process takes the hardware's native half precision instead.
        return PrecisionChoice(half, f"{half} runs natively here (not measured)")
    full_key = f"{machine_signature()}|threads={torch.get_num_threads()}|{key}"
    cache = _cache_path()
    known = _read_cache(cache)
    if full_key in known:
        entry = known[full_key]
        return PrecisionChoice(entry["picked"], entry["reason"], entry.get("probe_step_s", {}), cached=True)
    times: dict[str, list[float]] = {"fp32": [], half: []}
    for _ in range(PROBE_ROUNDS):
        for precision in ("fp32", half):
            times[precision].append(probe(precision))
    best = {p: min(t) for p, t in times.items()}
    gain = best["fp32"] / best[half]
    if gain >= MIN_GAIN:
        choice = PrecisionChoice(half, f"measured: {half} steps {gain:.2f}x as fast as fp32 for this model", best)
    else:
        choice = PrecisionChoice("fp32", f"measured: {half} is not faster than fp32 for this model "
                                         f"({gain:.2f}x; needs {MIN_GAIN:.2f}x)", best)
    known[full_key] = choice.as_dict()
    _write_cache(cache, known)
    return choice


def several_processes() -> bool:
    """True under ``accelerate launch`` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def machine_signature() -> str:
    """The hardware a probe's verdict holds for: the GPU's name, or the CPU's model and bf16 flags."""
    import torch

    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}|torch={torch.__version__}"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu:{model}|bf16={int(cpu_has_fast_bf16())}|torch={torch.__version__}"


def model_key(path: Path) -> str:
    """A model folder's identity for the cache: its path and the newest weight file's time and size."""
    weights = sorted(Path(path).rglob("*.safetensors"))
    stamp = max(((w.stat().st_mtime_ns, w.stat().st_size) for w in weights), default=(0, 0))
    return f"{Path(path).resolve()}@{stamp[0]}:{stamp[1]}"


def _cache_path() -> Path:
    from .models import cache_dir

    return cache_dir() / "precision.json"


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _timed(step: Callable[[], None], repeats: int = 2) -> float:
    """Best wall time of ``repeats`` calls of ``step`` after one warm-up call."""
    step()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - started)
    return best


def text_probe(base_path: Path, *, seq_len: int, batch_size: int, rank: int,
               target_modules: list[str] | str = "all-linear") -> Callable[[str], float]:
    """``probe(precision)``: seconds of one LoRA training step of the causal LM at ``base_path``.

    The base is stored in the compute dtype and run under autocast, as the text trainer does.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    from .models import load_causal_lm

    models: dict[str, object] = {}

    def probe(precision: str) -> float:
        dtype = compute_dtype(precision)
        if precision not in models:
            model, _ = load_causal_lm(base_path, dtype=dtype)
            models[precision] = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank,
                                                                 target_modules=target_modules or "all-linear"))
        model = models[precision]
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model.to(device)
        ids = torch.randint(0, model.config.vocab_size, (batch_size, seq_len), device=device)

        def step() -> None:
            with torch.autocast(device, dtype=dtype, enabled=precision != "fp32"):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            model.zero_grad(set_to_none=True)

        return _timed(step)

    return probe


def image_probe(loaded, *, resolution: int, batch_size: int, rank: int) -> Callable[[str], float]:
    """``probe(precision)``: seconds of one LoRA training step of ``loaded``'s denoiser at ``resolution``.

    As the image trainer runs it: the frozen denoiser (UNet or transformer) stored in the compute
    dtype, its LoRA weights float32, under autocast; the family gives a forward's random inputs
    (``probe_inputs``). A copy with LoRA is made, so the run's own denoiser is left untouched.
    """
    import copy

    import torch
    from peft import LoraConfig, get_peft_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    built: dict = {}

    def build() -> dict:
        """The LoRA copy of the denoiser and its inputs, made on the first call only."""
        if built:
            return built
        denoiser = get_peft_model(copy.deepcopy(loaded.denoiser),
                                  LoraConfig(r=rank, lora_alpha=rank, target_modules=list(loaded.part.LORA_TARGETS)))
        denoiser.to(device)
        scale = 2 ** (len(loaded.pipe.vae.config.block_out_channels) - 1)
        side = max(resolution // scale, 8)
        inputs = loaded.part.probe_inputs(loaded.denoiser.config, side=side, resolution=resolution,
                                          batch_size=batch_size, device=device)
        built.update(denoiser=denoiser, inputs=inputs)
        return built

    def probe(precision: str) -> float:
        dtype = compute_dtype(precision)
        b = build()
        store_frozen_in(b["denoiser"], dtype)  # outside the timed steps

        def step() -> None:
            with torch.autocast(device, dtype=dtype, enabled=precision != "fp32"):
                out = b["denoiser"](**b["inputs"], return_dict=False)[0]
                loss = out.float().pow(2).mean()
            loss.backward()
            b["denoiser"].zero_grad(set_to_none=True)

        return _timed(step)

    return probe
