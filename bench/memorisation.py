"""Memorisation checks: does a trained adapter copy its training data?

Text: ``copied_share`` is the share of word 8-grams in generated samples that appear verbatim
in the training passages (``bench/data_efficiency.py`` computes it for every run it trains).

Images: ``nearest_distances`` measures, for each generated sample, the distance to the nearest
training image and to the nearest held-out image (RMS over downsampled grey pixels, 0..1). A
model that memorises draws samples much closer to its training images than to held-out ones of
the same kind; a ratio (train / held-out) near 1 means no sign of copying.

Run as a script it does the image check on a tiny local SD pipeline (random weights, built the
way the tests build it; there is no pretrained diffusion model offline) trained on a few
pattern images, and prints one JSON line:

    python bench/memorisation.py [--steps 300] [--out runs/bench/memorisation]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

# bench/queue.py would shadow the standard library's queue module for scripts run from bench/.
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

NGRAM = 8
SAMPLE_STEPS = 20
_WORD = re.compile(r"[a-z']+")


def words(text: str) -> list[str]:
    """Lower-case words, punctuation and line breaks dropped (so a copy is found across lines)."""
    return _WORD.findall(text.lower())


def ngrams(tokens: list[str], n: int = NGRAM) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def copied_share(samples: list[str], corpus: list[str], n: int = NGRAM) -> float | None:
    """Share of the ``n``-grams of ``samples`` found verbatim in ``corpus``; None if samples have none."""
    seen = {g for text in corpus for g in ngrams(words(text), n)}
    generated = [g for text in samples for g in ngrams(words(text), n)]
    if not generated:
        return None
    return sum(g in seen for g in generated) / len(generated)


def nearest_distances(samples: list, train: list, heldout: list, size: int = 16) -> dict:
    """Mean nearest-neighbour distance of ``samples`` (PIL images) to ``train`` and to ``heldout``."""
    import numpy as np

    def vec(images):
        return np.stack([np.asarray(im.convert("L").resize((size, size)), dtype=np.float64).ravel() / 255
                         for im in images])

    s, tr, ho = vec(samples), vec(train), vec(heldout)

    def nearest(ref):
        d = np.sqrt(((s[:, None, :] - ref[None, :, :]) ** 2).mean(-1))
        return d.min(1)

    to_train, to_heldout = nearest(tr), nearest(ho)
    return {"to_train": float(to_train.mean()), "to_heldout": float(to_heldout.mean()),
            "ratio": float(to_train.mean() / max(to_heldout.mean(), 1e-12)),
            "closer_to_train": float((to_train < to_heldout).mean()), "samples": len(samples)}


def split_grid(path: Path, side: int) -> list:
    """Cut a sample grid written by ``trainer.image.sample`` back into its images."""
    from PIL import Image

    return split_grid_image(Image.open(path).convert("RGB"), side)


def split_grid_image(grid, side: int) -> list:
    return [grid.crop((x, y, x + side, y + side)) for y in range(0, grid.height, side)
            for x in range(0, grid.width, side)]


def image_check(out: Path, *, steps: int, n_train: int = 6, n_heldout: int = 6, n_samples: int = 8,
                threads: int = 2) -> dict:
    """Train the tiny SD pipeline on ``n_train`` patterns, sample, and measure nearest-neighbour distances."""
    from tests.image_fixtures import RESOLUTION, build_sd, pattern_image
    from trainer.image.config import ImageTrainConfig
    from trainer.image.pipelines import load_pipeline
    from trainer.image.sample import sample_grid, sample_run
    from trainer.image.train import train_image

    out.mkdir(parents=True, exist_ok=True)
    pipe = out / "tiny-sd"
    if not (pipe / "model_index.json").exists():
        build_sd(pipe)
    data = out / "train-images"
    data.mkdir(exist_ok=True)
    train = [pattern_image(i, (RESOLUTION, RESOLUTION)) for i in range(n_train)]
    heldout = [pattern_image(1000 + i, (RESOLUTION, RESOLUTION)) for i in range(n_heldout)]
    for i, image in enumerate(train):
        image.save(data / f"img{i}.png")
    started = time.time()
    prompt = "a photo of sks pattern"
    config = ImageTrainConfig(data=[str(data)], out=str(out / "run"), base=str(pipe), instance_prompt=prompt,
                              resolution=RESOLUTION, steps=steps, batch_size=2, rank=8, lr=1e-3, augment=0.0,
                              val_fraction=0.0, patience=0, sample_every=0, sample_seeds=[0], sample_steps=4,
                              threads=threads, seed=0)
    result = train_image(config)
    grid = sample_run(result.run_dir, [prompt], seed=0, count=n_samples, steps=SAMPLE_STEPS)[0]
    samples = split_grid(grid, RESOLUTION)
    # the same prompt and seeds through the untrained pipeline: where samples fall without the adapter
    loaded = load_pipeline(pipe)
    before = sample_grid(loaded, [prompt], list(range(n_samples)), size=(RESOLUTION, RESOLUTION), steps=SAMPLE_STEPS,
                         guidance_scale=config.guidance_scale)
    report = result.metrics["data_report"]
    return {"pipeline": "tiny SD 1.x, random weights, 32 px", "trained_on": report.get("train_images"),
            "heldout_images": n_heldout, "steps": result.steps_done,
            "adapter": nearest_distances(samples, train, heldout),
            "untrained": nearest_distances(split_grid_image(before, RESOLUTION), train, heldout),
            "seconds": round(time.time() - started, 1)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps of the image run")
    parser.add_argument("--out", default="runs/bench/memorisation", help="working folder")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    report = {"image": image_check(Path(args.out), steps=args.steps, threads=args.threads)}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
