"""Image LoRA training throughput: loracord's loop against the diffusers example loop, same model and data.

Builds a small SD 1.x pipeline with random weights (no hub needed), writes a few images, then
times two loops on the same model, data, batch size, resolution and LoRA rank:

- ``loracord``: ``trainer.image.train.train_image`` with augmentation on (cached latents of
  several augmented variants, cached text embeddings, precision 'auto');
- ``baseline``: the loop of diffusers' ``examples/text_to_image/train_text_to_image_lora.py``,
  which runs the VAE encoder and the text encoder on every step (random flip as its only
  augmentation, pixels already resized so its data loading costs nothing).

Steps per second count the training loop only (setup, caching and export are reported apart
as ``setup_s``). Peak RSS is the process's high-water mark right after the loracord run. On a
GPU both loops run there, the baseline in the example's mixed precision (``--baseline-precision``,
by default what loracord's run trained in), and the line adds each side's peak GPU memory.
The two loops alternate for ``--repeats`` rounds (the machine is shared and noisy); the JSON
line gives the best and the median of each, with the CPU, its bf16 flags, threads and
precision. Run: ``.venv/bin/python bench/image_throughput.py`` (the tiny 64 px setting), or
``--resolution 128 --channels 32,64,128 --rank 4 --images 12`` for a small SD 1.x.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

# The repo root replaces this script's folder on the path: bench/ has modules named like stdlib ones.
sys.path[0] = str(Path(__file__).resolve().parents[1])


def run_loracord(base: Path, data: Path, out: Path, args) -> dict:
    from trainer.image.config import ImageTrainConfig
    from trainer.image.train import train_image

    config = ImageTrainConfig(data=[str(data)], out=str(out), base=str(base), steps=args.steps,
                              resolution=args.resolution, batch_size=args.batch_size, rank=args.rank, lr=1e-4,
                              augment=0.5, augment_variants=4, val_fraction=0, sample_every=0, sample_steps=2,
                              sample_seeds=[0], min_image_side=16, precision=args.precision, seed=0)
    result = train_image(config)
    return {"steps_per_s": result.metrics["steps_per_s"], "setup_s": result.metrics["setup_time_s"],
            "precision": result.metrics["precision"]}


def run_baseline(base: Path, data: Path, args, precision: str) -> float:
    """The diffusers example's inner loop, on the same images, batch, rank and resolution.

    ``precision`` is the example's ``--mixed_precision`` ('fp32' for 'no'): as there, the frozen
    VAE, text encoder and UNet are cast to that dtype, fp16 keeps the LoRA weights in float32, and
    accelerate's autocast and gradient scaling wrap the step, on the GPU when there is one."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    from trainer.image.data import DataLimits, load_images, normalize, resize_and_crop, to_tensor
    from trainer.image.pipelines import load_pipeline
    from trainer.precision import compute_dtype, make_accelerator

    torch.manual_seed(0)
    accelerator = make_accelerator(precision)
    device, weight_dtype = accelerator.device, compute_dtype(precision)
    loaded = load_pipeline(base)
    pipe = loaded.pipe
    vae, text_encoder, unet, tokenizer = pipe.vae, pipe.text_encoder, pipe.unet, pipe.tokenizer
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    for module in (vae, text_encoder, unet):
        module.requires_grad_(False)
        module.to(device, dtype=weight_dtype)
    unet.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    if precision == "fp16":
        cast_training_params(unet, dtype=torch.float32)
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    examples = load_images([data], instance_prompt="a photo of sks", limits=DataLimits(min_side=16)).examples
    pixels = normalize(to_tensor([resize_and_crop(e.image, args.resolution)[0] for e in examples])).to(device)
    input_ids = tokenizer([e.caption for e in examples], max_length=tokenizer.model_max_length, padding="max_length",
                          truncation=True, return_tensors="pt").input_ids.to(device)
    generator = torch.Generator().manual_seed(0)

    unet.train()
    start = time.perf_counter()
    for _ in range(args.steps):
        idx = torch.randint(len(examples), (args.batch_size,), generator=generator).to(device)
        batch = pixels[idx]
        flip = torch.rand(args.batch_size, generator=generator).to(device) < 0.5  # transforms.RandomHorizontalFlip
        batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
        latents = vae.encode(batch.to(weight_dtype)).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (args.batch_size,),
                                  device=device).long()
        noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
        encoder_hidden_states = text_encoder(input_ids[idx], return_dict=False)[0]
        target = noise
        model_pred = unet(noisy_latents, timesteps, encoder_hidden_states, return_dict=False)[0]
        loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(params, 1.0)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return args.steps / (time.perf_counter() - start)


def _gpu_peak_mb() -> float | None:
    """The GPU's allocated-memory high-water mark since the last call (None without a GPU)."""
    import torch

    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**20
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return round(peak, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--precision", default="auto", help="loracord's precision: auto, bf16, fp16 (GPU) or fp32")
    parser.add_argument("--baseline-precision", default="same", choices=("same", "fp32", "bf16", "fp16"),
                        help="the example's --mixed_precision (fp32: 'no'); 'same': what loracord's run trained in")
    parser.add_argument("--repeats", type=int, default=3, help="alternate both loops this often")
    parser.add_argument("--channels", default="32,64,64", help="the tiny UNet's block channels (size of the model)")
    parser.add_argument("--model", choices=("tiny", "sd1-small"), default="tiny",
                        help="tiny: the tests' two-block pipeline (VAE downsamples 2x); sd1-small: SD 1.x's layout "
                             "at a tenth of its widths (8.8M-parameter UNet, VAE downsamples 8x)")
    args = parser.parse_args()

    import logging
    import os

    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.disable(logging.WARNING)
    from diffusers.utils import logging as dlogging
    dlogging.disable_progress_bar()
    from tests.image_fixtures import build_sd, build_sd1_small, write_image_folder

    work = Path(tempfile.mkdtemp(prefix="loracord-bench-"))
    try:
        if args.model == "sd1-small":
            base = build_sd1_small(work / "pipe")
        else:
            base = build_sd(work / "pipe", channels=tuple(int(c) for c in args.channels.split(",")))
        data = write_image_folder(work / "data", count=args.images, size=(96, 80))
        ours, baseline, peak_rss = [], [], None
        gpu_peak = {"loracord": [], "baseline": []}
        for i in range(args.repeats):
            # alternate which side goes first, so drift hits both alike; loracord goes first in the
            # first round, so the baseline can follow the precision its 'auto' resolved to
            if i % 2:
                baseline.append(run_baseline(base, data, args, baseline_precision))
                gpu_peak["baseline"].append(_gpu_peak_mb())
            ours.append(run_loracord(base, data, work / f"run{i}", args))
            gpu_peak["loracord"].append(_gpu_peak_mb())
            if peak_rss is None:
                peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            baseline_precision = (ours[0]["precision"] if args.baseline_precision == "same"
                                  else args.baseline_precision)
            if not i % 2:
                baseline.append(run_baseline(base, data, args, baseline_precision))
                gpu_peak["baseline"].append(_gpu_peak_mb())
        from bench.benchlib import machine, speedup, summary
        from diffusers import UNet2DConditionModel

        best = max(ours, key=lambda r: r["steps_per_s"])
        rates = [r["steps_per_s"] for r in ours]
        unet_params = sum(p.numel() for p in UNet2DConditionModel.from_pretrained(base / "unet").parameters())
        line = {"bench": "image_throughput", "steps_per_s": summary(rates), "baseline_steps_per_s": summary(baseline),
                "speedup": speedup(rates, baseline), "peak_rss_mb": round(peak_rss, 1),
                "setup_s": round(best["setup_s"], 2), "precision": best["precision"],
                "baseline_precision": baseline_precision, "steps": args.steps,
                "batch_size": args.batch_size, "resolution": args.resolution, "rank": args.rank,
                "images": args.images, "model": args.model, "unet_params_m": round(unet_params / 1e6, 1), "augment": 0.5,
                "repeats": args.repeats, "threads": torch.get_num_threads(),
                "device": "cuda" if torch.cuda.is_available() else "cpu", **machine()}
        if torch.cuda.is_available():  # GPU memory is what limits a GPU run; RSS says little there
            line["peak_gpu_mb"] = {side: max(peaks) for side, peaks in gpu_peak.items()}
        print(json.dumps(line))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
