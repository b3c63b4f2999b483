"""Image ablation, a CODE-PATH CHECK: augmentation and LoRA dropout switched off one at a time.

This is not a quality finding. No pretrained diffusion model runs offline, so the runs use the
tiny SD 1.x pipeline the tests build (random weights, 32 px; ``tests/image_fixtures.py``) on
smooth colour patterns. It checks that each ingredient reaches the training run and changes
what it should, and it gives the table a pretrained base would fill in.

Four runs on the same images, seed, split and step count, everything else as the default
preset (``balanced``) sizes it:

- ``default``: the preset as is;
- ``no-augment``: ``augment=0``;
- ``no-dropout``: ``lora_dropout=0`` (the image preset's dropout is already 0, so this run is
  the default's twin until a preset sets one: the report says so);
- ``none``: both 0.

For each run: the validation loss on the trainer's own held-out images at fixed timesteps and
fixed noise (the trainer's deterministic validation: the same number for the same weights),
at its first evaluation (a quarter of the steps) and at its best, and the memorisation distance of ``bench/memorisation.py``
(RMS over 16 x 16 grey pixels from each sample to the nearest training image and to the
nearest of some held-out patterns; a ratio near 1 means no sign of copying). Prints one JSON
line and, with ``--markdown``, a table.

    python bench/image_ablation.py --steps 40 --markdown     # about two minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

# bench/queue.py would shadow the standard library's queue module for scripts run from bench/.
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from bench.memorisation import nearest_distances, split_grid  # noqa: E402

METHODS = {"default": {}, "no-augment": {"augment": 0.0}, "no-dropout": {"lora_dropout": 0.0},
           "none": {"augment": 0.0, "lora_dropout": 0.0}}
PROMPT = "a photo of sks pattern"
SAMPLE_STEPS = 8


def prepare(out: Path, n_train: int, base: Path | None = None) -> tuple[Path, Path]:
    """The tiny pipeline (``base``, or one built once under ``out``) and a folder of ``n_train`` pattern images."""
    from tests.image_fixtures import RESOLUTION, pattern_image

    pipe = base or out / "tiny-sd"
    if not (pipe / "model_index.json").exists():
        from tests.image_fixtures import build_sd

        build_sd(pipe)
    data = out / f"images-{n_train}"
    data.mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        pattern_image(i, (RESOLUTION, RESOLUTION)).save(data / f"img{i}.png")
    return pipe, data


def run(method: str, out: Path, pipe: Path, data: Path, *, steps: int, seed: int, threads: int,
        n_samples: int, n_heldout: int) -> dict:
    """Train one method, then score it: validation loss at fixed timesteps and noise, memorisation distance."""
    from PIL import Image

    from tests.image_fixtures import RESOLUTION, pattern_image
    from trainer.image.config import ImageTrainConfig
    from trainer.image.sample import sample_run
    from trainer.image.train import train_image

    run_dir = out / "runs" / f"{method}-s{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    config = ImageTrainConfig(data=[str(data)], out=str(run_dir), base=str(pipe), instance_prompt=PROMPT,
                              resolution=RESOLUTION, steps=steps, batch_size=2, val_fraction=0.25, patience=0,
                              eval_every=max(1, steps // 4), sample_every=0, sample_seeds=[0],
                              sample_steps=SAMPLE_STEPS, threads=threads, seed=seed, **METHODS[method])
    started = time.time()
    result = train_image(config)
    used = result.metrics["config"]
    curve = [[step, loss] for step, loss in result.metrics["curves"]["val_loss"]]  # [[step, loss], ...]
    grid = sample_run(result.run_dir, [PROMPT], seed=seed, count=n_samples, steps=SAMPLE_STEPS)[0]
    train_images = [Image.open(p).convert("RGB") for p in sorted(data.glob("*.png"))]
    heldout = [pattern_image(1000 + i, (RESOLUTION, RESOLUTION)) for i in range(n_heldout)]
    return {"method": method, "seed": seed, "steps_done": result.steps_done, "best_step": result.best_step,
            "val_loss_best": result.val_loss, "val_loss_curve": curve,
            "settings": {k: used.get(k) for k in ("steps", "rank", "lr", "lora_dropout", "augment")},
            "memorisation": nearest_distances(split_grid(grid, RESOLUTION), train_images, heldout),
            "seconds": round(time.time() - started, 1)}


def markdown(rows: list[dict]) -> str:
    """The runs as a table; "best − none" shows whether an ingredient reached the run at all."""
    none = next((r for r in rows if r["method"] == "none"), None)
    lines = ["Code-path check on a random-weight 32 px pipeline, not a quality finding.", "",
             "| method | augment | dropout | val loss: first eval → best (fixed timesteps, noise) | best − none | "
             "distance to train / held-out (ratio) |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        s, m, curve = r["settings"], r["memorisation"], r["val_loss_curve"]
        first = f"{curve[0][1]:.6f} (step {curve[0][0]}) → " if curve else ""
        delta = "–" if none is None else f"{r['val_loss_best'] - none['val_loss_best']:+.2e}"
        lines.append(f"| {r['method']} | {s['augment']} | {s['lora_dropout']} | {first}{r['val_loss_best']:.6f} | "
                     f"{delta} | {m['to_train']:.3f} / {m['to_heldout']:.3f} ({m['ratio']:.2f}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps of every run")
    parser.add_argument("--images", type=int, default=8, help="pattern images given to the trainer (25%% validation)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=4, help="samples per run for the memorisation distance")
    parser.add_argument("--out", default="runs/bench/image-ablation", help="working folder")
    parser.add_argument("--base", type=Path, default=None,
                        help="a tiny 32 px pipeline folder already built (default: build one under --out)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    args = parser.parse_args(argv)
    out = Path(args.out)
    pipe, data = prepare(out, args.images, args.base)
    rows = [run(m, out, pipe, data, steps=args.steps, seed=args.seed, threads=args.threads, n_samples=args.samples,
                n_heldout=args.images) for m in args.methods]
    same = [r["method"] for r in rows if r["method"] != "default" and rows[0]["method"] == "default"
            and r["settings"] == rows[0]["settings"]]
    report = {"bench": "image_ablation", "check": "code path only: tiny random-weight pipeline",
              "pipeline": "tiny SD 1.x, random weights, 32 px", "steps": args.steps, "images": args.images,
              "identical_to_default": same, "runs": rows}
    if args.markdown:
        print(markdown(rows))
        if same:
            print(f"\n{', '.join(same)}: the same settings as default (the preset already sets that knob to 0).")
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
