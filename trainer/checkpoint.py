"""Checkpoints that resume exactly: trainable weights, optimizer, scheduler, RNG and step.

Only the LoRA weights are saved (the base model is frozen and reloaded from its reference),
so a checkpoint is a few megabytes. Everything is safetensors or JSON except the optimizer
state, which torch saves and loads with ``weights_only=True`` (tensors and numbers, no code).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the trainable weights on the CPU. A copy on every device: on a CPU ``.cpu()`` and
    ``.contiguous()`` return the parameter itself, and the best adapter kept in memory would
    go on training with the run."""
    return {n: p.detach().to("cpu", copy=True, memory_format=torch.contiguous_format)
            for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy ``weights`` (from ``trainable_state``) into the model's parameters of the same names."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))


def lr_factor(step: int, warmup: int, total: int, schedule: str = "cosine") -> float:
    """The learning rate at ``step`` as a share of the peak: linear warm-up over ``warmup`` steps,
    then ``schedule`` (``TrainConfig.lr_scheduler``): cosine decay to 10% of the peak, a straight
    line down to the same 10%, or the peak held (constant)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return 1.0 - 0.9 * progress
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def lr_schedule(optimizer: torch.optim.Optimizer, config) -> torch.optim.lr_scheduler.LambdaLR:
    """The scheduler of a run of ``config`` (its ``steps``, ``warmup_ratio`` and ``lr_scheduler``)."""
    warmup = int(config.warmup_ratio * config.steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup, config.steps, config.lr_scheduler))


def rng_state() -> dict[str, Any]:
    """Every RNG a run draws from, as tensors and plain numbers (loadable with weights_only)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, torch.tensor(internal, dtype=torch.int64), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal.tolist()), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(folder: Path, *, model, optimizer, scheduler, step: int, extra: dict | None = None,
                    generator: torch.Generator | None = None,
                    tensors: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """Write a checkpoint into ``folder`` atomically: it is filled under a temporary name and
    renamed at the end, so ``folder`` is complete whenever it exists and never changes after.

    ``tensors`` adds safetensors files to it, e.g. ``{"best": weights}`` -> ``best.safetensors``.
    """
    from .rundir import atomic_folder

    with atomic_folder(folder) as tmp:
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        for name, weights in (tensors or {}).items():
            save_file(weights, str(tmp / f"{name}.safetensors"))
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "rng": rng_state(),
                "generator": generator.get_state() if generator is not None else None,
            },
            tmp / "training_state.pt",
        )
        (tmp / "state.json").write_text(json.dumps({"step": step, **(extra or {})}, indent=2, default=str))
    return folder


def load_checkpoint(folder: Path, *, model, optimizer, scheduler,
                    generator: torch.Generator | None = None) -> dict[str, Any]:
    """Restore a checkpoint written by ``save_checkpoint``; returns its ``state.json``."""
    weights = load_file(str(folder / "trainable.safetensors"))
    missing = [n for n in weights if n not in dict(model.named_parameters())]
    if missing:
        raise ValueError(f"checkpoint {folder} does not match the model (e.g. {missing[0]})")
    load_trainable(model, weights)
    state = torch.load(folder / "training_state.pt", weights_only=True, map_location="cpu")
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    if generator is not None and state.get("generator") is not None:
        generator.set_state(state["generator"])
    return json.loads((folder / "state.json").read_text())
