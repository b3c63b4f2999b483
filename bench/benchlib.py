"""What every throughput benchmark shares: the machine it ran on and best/median summaries.

A shared machine is noisy, so each benchmark alternates its sides for several rounds and
reports the best and the median of each side; speedups are given best-to-best and
median-to-median.
"""

from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path


def machine() -> dict:
    """CPU model, its bf16 flags, cores and the thread settings, for the benchmark's JSON line."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", platform.machine()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    info = {"cpu": model, "cpu_bf16_flags": sorted(flags & {"avx512_bf16", "amx_bf16", "amx_tile"}),
            "cores": os.cpu_count(), "omp_threads": os.environ.get("OMP_NUM_THREADS")}
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def summary(values: list[float], digits: int = 3) -> dict:
    """Best (highest) and median of a side's rounds, and every value."""
    return {"best": round(max(values), digits), "median": round(statistics.median(values), digits),
            "rounds": [round(v, digits) for v in values]}


def speedup(ours: list[float], theirs: list[float]) -> dict:
    return {"best": round(max(ours) / max(theirs), 2),
            "median": round(statistics.median(ours) / statistics.median(theirs), 2)}
