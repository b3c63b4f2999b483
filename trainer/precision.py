"""Which precision a run trains in, and the Accelerator built for it.

``auto`` picks bf16 on GPUs that have it (fp16 on older ones) and on CPUs that multiply bf16
natively (AVX-512 BF16 or AMX); elsewhere bf16 is emulated and slower than fp32, so fp32.

``LORACORD_CPU_BF16`` overrides what the CPU is taken to support: ``1`` makes ``auto`` pick
bf16 on any CPU, ``0`` makes it pick fp32 on any CPU. CI runs the suite both ways, so both
paths are exercised whatever CPU the machine has.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError

CPU_BF16_ENV = "LORACORD_CPU_BF16"
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def cpu_has_fast_bf16() -> bool:
    """True where the CPU multiplies bf16 natively (or ``LORACORD_CPU_BF16=1`` says so)."""
    forced = os.environ.get(CPU_BF16_ENV, "").strip().lower()
    if forced in _TRUE:
        return True
    if forced in _FALSE:
        return False
    if forced:
        raise ConfigError(f"{CPU_BF16_ENV}={forced!r}: use 1 (treat the CPU as bf16-capable) or 0 (fp32).")
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
