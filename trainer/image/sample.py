"""Sample grids: one row per prompt, one column per seed, from fixed seeds so grids compare over time."""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image

from .. import kinds
from ..errors import UserError
from ..rundir import RunDir


def make_grid(rows: list[list[Image.Image]]) -> Image.Image:
    """Paste equally sized images into a grid, rows top to bottom."""
    w, h = rows[0][0].size
    grid = Image.new("RGB", (w * max(len(r) for r in rows), h * len(rows)), "white")
    for y, row in enumerate(rows):
        for x, image in enumerate(row):
            grid.paste(image, (x * w, y * h))
    return grid


def sample_grid(loaded, prompts: list[str], seeds: list[int], *, size: tuple[int, int], steps: int,
                guidance_scale: float, autocast=None, cache: dict | None = None) -> Image.Image:
    """Generate each prompt with each seed through the family's sampler, each image ``size`` (width,
    height); training RNG is left untouched.

    ``cache``: the run's ``{prompt: (embeddings, pooled)}``, which families that freed an encoder
    after caching (FLUX.1's and SD 3.5's T5) sample from; the others encode the prompt themselves.
    """
    import contextlib

    import torch

    denoiser = loaded.denoiser
    was_training = denoiser.training
    denoiser.eval()
    rows = []
    with torch.random.fork_rng(devices=[]), torch.no_grad(), (autocast or contextlib.nullcontext)():
        for prompt in prompts:
            rows.append([loaded.part.sample(loaded.pipe, prompt, seed=seed, steps=steps, guidance_scale=guidance_scale,
                                            size=size, cache=cache) for seed in seeds])
    denoiser.train(was_training)
    return make_grid(rows)


def sample_run(run: str | Path, prompts: list[str], seed: int = 0, count: int = 1,
               steps: int | None = None, aspect: str | None = None) -> list[Path]:
    """Draw ``count`` images per prompt (seeds ``seed`` … ``seed+count-1``) from a finished image run,
    at ``aspect`` (W:H; default: the run's sample aspect, else square).

    Rebuilds the base pipeline from metrics.json, loads ``RUN/adapter``, and writes one PNG grid
    per prompt into ``RUN/samples/``; returns their paths.
    """
    from .export import DIFFUSERS_FILE
    from .pipelines import load_pipeline
    from .sizes import aspect_size

    folder = RunDir.open(run)
    metrics = folder.read_metrics()
    if not kinds.recorded(metrics.get("kind")).makes_images:
        raise UserError(f"{folder.root} is not an image run.")
    adapter = folder.adapter / DIFFUSERS_FILE
    if not adapter.exists():
        raise UserError(f"{folder.root} has no trained adapter ({adapter} is missing); finish or resume the run first.")
    if not prompts:
        raise UserError("give at least one prompt")
    config = metrics["config"]
    loaded = load_pipeline(metrics.get("base_path") if Path(metrics.get("base_path", "")).is_dir() else metrics["base"])
    loaded.pipe.load_lora_weights(str(folder.adapter), weight_name=DIFFUSERS_FILE)
    try:
        size = aspect_size(aspect or config.get("sample_aspect"), config["resolution"], loaded.part.SIDE_MULTIPLE)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    out_dir = folder.root / "samples"
    out_dir.mkdir(exist_ok=True)
    paths = []
    for prompt in prompts:
        grid = sample_grid(loaded, [prompt], list(range(seed, seed + max(1, count))), size=size,
                           steps=steps or config["sample_steps"], guidance_scale=config["guidance_scale"])
        slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:40] or "prompt"
        path = out_dir / f"sample-{slug}-seed{seed}.png"
        grid.save(path)
        paths.append(path)
    return paths
