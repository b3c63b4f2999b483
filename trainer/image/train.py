"""Train a LoRA adapter for a Stable Diffusion 1.x/2.x or SDXL pipeline on a few images.

``train_image`` reads the data, loads the pipeline, caches what stays fixed and runs ``_fit``,
one loop read top to bottom. Speed comes from caching, not from cutting corners:

- VAE latents are encoded once per image and augmented variant (augmentation is in pixel
  space, so ``augment_variants`` augmented copies are encoded up front and each step picks one;
  the latent distribution's mean and std are kept, so each step still samples a fresh latent);
- text embeddings of the frozen encoders are computed once per caption (and for the empty
  caption used by caption dropout); with ``train_text_encoder`` they are computed every step;
- bf16 autocast where the hardware has fast bf16 (LoRA weights and the optimizer stay fp32).

All randomness of a step (batch, variant, noise, timesteps, caption dropout) comes from one
``torch.Generator`` saved in checkpoints, so a resumed run continues exactly.
"""

from __future__ import annotations

import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cancel import CancelToken
from ..errors import Cancelled, ConfigError, TrainingError
from ..events import EventCallback, ProgressEvent
from ..rundir import RunDir, start_run
from .config import ImageTrainConfig

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
VAL_TIMESTEPS = 4  # fixed timesteps per held-out image for the deterministic validation loss


@dataclass
class ImageTrainResult:
    """What a finished run reports; everything here is also in ``RUN/metrics.json``."""

    run_dir: Path
    steps_done: int
    stop_reason: str  # "completed", "early_stopped"
    val_loss: float | None
    best_step: int | None
    adapter_files: dict[str, Path] = field(default_factory=dict)
    sample_grids: list[Path] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)


def train_image(config: ImageTrainConfig, on_event: EventCallback | None = None,
                cancel: CancelToken | None = None) -> ImageTrainResult:
    """Train an image LoRA as ``config`` says and write the run folder.

    Raises ``DataError``/``ModelError``/``ConfigError`` for bad input before any training,
    ``TrainingError`` when the loss diverges or an export does not load back, and
    ``Cancelled`` (after writing a checkpoint) when ``cancel`` is set mid-run.
    """
    start = start_run(config, on_event, cancel)
    return _fit(_setup(start.config), start.run, start.emit, start.cancel, start.checkpoint)


# --------------------------------------------------------------------------------------------
# setup: data, defaults, pipeline, LoRA, caches


@dataclass
class _Setup:
    config: ImageTrainConfig  # with every None knob filled in
    dataset: Any
    train: list  # ImageExample
    val: list
    loaded: Any  # LoadedPipeline
    noise_scheduler: Any
    accelerator: Any
    precision: str
    cache: dict[str, Any]
    sample_prompts: list[str]
    setup_s: float = 0.0


def split(examples: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic held-out split; at least one validation image once there are 4 or more."""
    if val_fraction <= 0 or len(examples) < 4:
        return list(examples), []
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(examples) * val_fraction))
    val = sorted(order[:n_val])
    return [e for i, e in enumerate(examples) if i not in val], [examples[i] for i in val]


def _setup(config: ImageTrainConfig) -> _Setup:
    import torch
    from accelerate.utils import set_seed
    from diffusers import DDPMScheduler
    from peft import LoraConfig

    from ..precision import make_accelerator, pick_precision
    from .data import load_images, training_limits
    from .pipelines import load_pipeline
    from .presets import size_defaults

    started = time.time()
    if config.train_text_encoder:
        check_text_encoder_lora()
    if config.threads:
        torch.set_num_threads(config.threads)
    dataset = load_images(config.data, instance_prompt=config.instance_prompt, limits=training_limits(config))
    train, val = split(dataset.examples, config.val_fraction, config.seed)
    config = size_defaults(config, len(train))
    precision = pick_precision(config.precision)
    accelerator = make_accelerator(precision)
    loaded = load_pipeline(config.base)
    pipe = loaded.pipe.to(accelerator.device)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)

    # Freeze everything, then add LoRA (seeded, so the initial adapter is the same every run).
    for module in [pipe.vae, pipe.unet, *loaded.text_encoders]:
        module.requires_grad_(False)
    set_seed(config.seed)
    lora = dict(r=config.rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                init_lora_weights="gaussian")
    pipe.unet.add_adapter(LoraConfig(target_modules=UNET_TARGETS, **lora))
    if config.train_text_encoder:
        from peft import inject_adapter_in_model

        for encoder in loaded.text_encoders:
            # peft directly rather than transformers' add_adapter, which needs a newer peft
            lora_config = LoraConfig(target_modules=TEXT_TARGETS, **lora)
            inject_adapter_in_model(lora_config, encoder)
            encoder.peft_config = {"default": lora_config}

    cache = _build_cache(config, loaded, train, val, accelerator.device)
    prompts = config.sample_prompts or list(dict.fromkeys([config.instance_prompt] + [e.caption for e in val[:1]]))
    return _Setup(config, dataset, train, val, loaded, noise_scheduler, accelerator, precision, cache, prompts,
                  setup_s=time.time() - started)


def check_text_encoder_lora() -> None:
    """Text-encoder LoRA loads into pipelines through transformers' peft integration; refuse early without it."""
    import importlib.metadata

    from transformers.utils.peft_utils import check_peft_version

    try:
        from transformers.integrations.peft import MIN_PEFT_VERSION as needed
    except ImportError:
        return  # a transformers without that integration check
    try:
        check_peft_version(min_version=needed)
    except ValueError as exc:
        raise ConfigError(
            f"--train-text-encoder needs peft>={needed} with this transformers "
            f"(installed: peft {importlib.metadata.version('peft')}); without it diffusers cannot load text-encoder "
            "LoRA weights back. Upgrade peft or train the UNet only.") from exc


def _build_cache(config: ImageTrainConfig, loaded, train: list, val: list, device) -> dict[str, Any]:
    """Latent distributions of every (augmented variant, image) and embeddings of every caption."""
    import torch

    from .augment import augment
    from .data import normalize, resize_and_crop, to_tensor

    def prepare(examples):
        crops = [resize_and_crop(e.image, config.resolution) for e in examples]
        sizes = [(e.image.height, e.image.width) for e in examples]
        return to_tensor([c[0] for c in crops]), sizes, [c[1] for c in crops]

    pixels, sizes, crops = prepare(train)
    variants = config.augment_variants if config.augment > 0 else 1
    means, stds = [], []
    for v in range(variants):
        # Variant 0 is the image itself; the others are seeded augmentations of it.
        batch = pixels if v == 0 else augment(pixels.clone(), config.augment, generator_seed=config.seed * 1000 + v)
        mean, std = _encode_latents(loaded.pipe.vae, normalize(batch), device)
        means.append(mean)
        stds.append(std)
    cache = {"latent_mean": torch.stack(means), "latent_std": torch.stack(stds),
             "captions": [e.caption for e in train]}
    if loaded.family == "sdxl":
        from .pipelines import add_time_ids

        cache["time_ids"] = add_time_ids(sizes, crops, config.resolution).to(device)
    if not config.train_text_encoder:
        cache["embeds"] = _embed_captions(loaded, [e.caption for e in train + val] + [""], device)

    # Validation: clean latents (the distribution's mean), fixed timesteps and fixed noise.
    if val:
        val_pixels, val_sizes, val_crops = prepare(val)
        val_latents = _encode_latents(loaded.pipe.vae, normalize(val_pixels), device)[0]
        total = loaded.pipe.scheduler.config.num_train_timesteps
        timesteps = torch.linspace(total * 0.1, total * 0.9, VAL_TIMESTEPS).long()
        noise = torch.randn((len(val), VAL_TIMESTEPS, *val_latents.shape[1:]),
                            generator=torch.Generator().manual_seed(config.seed + 1))
        cache["val"] = {"latents": val_latents, "timesteps": timesteps.to(device), "noise": noise.to(device),
                        "captions": [e.caption for e in val]}
        if loaded.family == "sdxl":
            cache["val"]["time_ids"] = add_time_ids(val_sizes, val_crops, config.resolution).to(device)
    return cache


def _encode_latents(vae, batch, device, chunk: int = 8):
    """Mean and std of the VAE's latent distribution, in float32, ``chunk`` images at a time."""
    import torch

    means, stds = [], []
    with torch.no_grad():
        for i in range(0, len(batch), chunk):
            dist = vae.encode(batch[i:i + chunk].to(device, vae.dtype)).latent_dist
            means.append(dist.mean.float())
            stds.append(dist.std.float())
    return torch.cat(means), torch.cat(stds)


def _embed_captions(loaded, captions: list[str], device) -> dict[str, tuple]:
    import torch

    from .pipelines import encode_prompts

    unique = list(dict.fromkeys(captions))
    out = {}
    with torch.no_grad():
        for i in range(0, len(unique), 16):
            chunk = unique[i:i + 16]
            embeds, pooled = encode_prompts(loaded, chunk, device)
            for j, caption in enumerate(chunk):
                out[caption] = (embeds[j], pooled[j] if pooled is not None else None)
    return out


# --------------------------------------------------------------------------------------------
# the loop


def _fit(s: _Setup, run: RunDir, emit: EventCallback, cancel: CancelToken, checkpoint: Path | None) -> ImageTrainResult:
    import torch

    from ..charts import plot_curves
    from ..checkpoint import load_checkpoint, load_trainable, lr_factor, save_checkpoint, trainable_state

    cfg, acc, pipe = s.config, s.accelerator, s.loaded.pipe
    trainable = torch.nn.ModuleDict({name: getattr(pipe, name) for name in ("unet", "text_encoder", "text_encoder_2")
                                     if getattr(pipe, name, None) is not None and getattr(getattr(pipe, name),
                                                                                            "peft_config", None)})
    params = [p for p in trainable.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    warmup = int(cfg.warmup_ratio * cfg.steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, warmup, cfg.steps))
    unet, optimizer = acc.prepare(pipe.unet, optimizer)
    generator = torch.Generator().manual_seed(cfg.seed)
    state: dict[str, Any] = {"step": 0, "curves": {"train_loss": [], "val_loss": [], "lr": []}, "best_val": None,
                             "best_step": None, "bad_evals": 0, "samples": []}
    best_weights = None
    if checkpoint is not None:
        saved = load_checkpoint(checkpoint, model=trainable, optimizer=optimizer, scheduler=scheduler,
                                generator=generator)
        saved.pop("config", None)
        state.update(saved)
        if (checkpoint / "best.safetensors").exists():
            from safetensors.torch import load_file
            best_weights = load_file(str(checkpoint / "best.safetensors"))
    emit(ProgressEvent("start", state["step"], cfg.steps, message=(
        f"training {cfg.steps} steps on {len(s.train)} images ({len(s.val)} held out; {s.loaded.family}, "
        f"{s.loaded.prediction_type}, {s.precision}, rank {cfg.rank}, lr {cfg.lr:g}, augment {cfg.augment:g})"
        + (f", resumed at step {state['step']}" if checkpoint else ""))))
    start_time, start_step, stop_reason = time.time(), state["step"], "completed"

    def snapshot(step: int) -> None:
        save_checkpoint(run.checkpoint(step), model=trainable, optimizer=optimizer, scheduler=scheduler,
                        step=step, generator=generator,
                        extra={k: v for k, v in state.items() if k != "step"} | {"config": cfg.model_dump()},
                        tensors={"best": best_weights} if best_weights is not None else None)
        run.prune_checkpoints(keep=1)
        emit(ProgressEvent("checkpoint", step, cfg.steps, message=f"checkpoint at step {step}"))

    def draw(name: str) -> str:
        grid = sample_grid_for(s, autocast=acc.autocast)
        path = run.root / "samples" / f"{name}.png"
        path.parent.mkdir(exist_ok=True)
        grid.save(path)
        rel = str(path.relative_to(run.root))
        state["samples"].append(rel)
        emit(ProgressEvent("sample", state["step"], cfg.steps, artifacts=[rel], message=f"samples: {rel}"))
        return rel

    while state["step"] < cfg.steps:
        # cooperative cancel: keep a checkpoint so the run can resume
        if cancel.is_set():
            snapshot(state["step"])
            emit(ProgressEvent("cancelled", state["step"], cfg.steps, message="cancelled; resume with --resume"))
            _write_metrics(s, run, state, status="cancelled", stop_reason="cancelled")
            raise Cancelled(f"run cancelled at step {state['step']}; its checkpoint is kept in {run.checkpoints}")

        # one batch: cached latents of random images and variants, fresh noise and timesteps
        trainable.train()
        batch = _draw_batch(s, generator)
        with acc.autocast():
            loss = diffusion_loss(s, unet, batch, weighted=True)
        if not torch.isfinite(loss):
            raise TrainingError(f"loss became {loss.item()} at step {state['step'] + 1}: "
                                "lower the learning rate (--lr) and try again.")

        # backward, clip, step
        acc.backward(loss)
        acc.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        step = state["step"]

        # log
        lr = scheduler.get_last_lr()[0]
        state["curves"]["train_loss"].append([step, loss.item()])
        state["curves"]["lr"].append([step, lr])
        elapsed = time.time() - start_time
        emit(ProgressEvent("step", step, cfg.steps, loss=loss.item(), lr=lr,
                           eta_s=elapsed / (step - start_step) * (cfg.steps - step)))

        # samples every N steps (the final grid is drawn after export)
        if cfg.sample_every and step % cfg.sample_every == 0 and step < cfg.steps:
            draw(f"step-{step:06d}")

        # validate, keep the best adapter, checkpoint, stop early
        if s.val and (step % cfg.eval_every == 0 or step == cfg.steps):
            val = validation_loss(s, unet)
            state["curves"]["val_loss"].append([step, val])
            if state["best_val"] is None or val < state["best_val"] - cfg.min_delta:
                state["best_val"], state["best_step"], state["bad_evals"] = val, step, 0
                best_weights = trainable_state(trainable)
            else:
                state["bad_evals"] += 1
            emit(ProgressEvent("eval", step, cfg.steps, loss=loss.item(), val_loss=val, lr=lr,
                               message=f"validation loss {val:.4f}"))
            if cfg.patience and state["bad_evals"] >= cfg.patience:
                stop_reason = "early_stopped"
                emit(ProgressEvent("stopped_early", step, cfg.steps, val_loss=val, message=(
                    f"validation loss has not improved for {cfg.patience} evaluations; "
                    f"keeping the adapter from step {state['best_step']}")))
                break
        if step % cfg.eval_every == 0 and step < cfg.steps:
            snapshot(step)
    train_s = time.time() - start_time

    # outputs: best adapter in both formats (each loaded back), final samples, chart, metrics
    from .export import export_adapter
    from .pipelines import load_pipeline

    if best_weights is not None:
        load_trainable(trainable, best_weights)
    trainable.eval()
    fresh = load_pipeline(s.loaded.path)
    files = export_adapter(s.loaded, fresh, run.adapter, rank=cfg.rank, alpha=cfg.lora_alpha)
    del fresh
    final = draw("final")
    plot_curves(run.loss_chart, {"train loss": state["curves"]["train_loss"],
                                 "validation loss": state["curves"]["val_loss"]}, title=f"{Path(run.root).name}: loss")
    steps_here = state["step"] - start_step
    metrics = _write_metrics(s, run, state, status="done", stop_reason=stop_reason, train_time_s=train_s,
                             steps_per_s=steps_here / train_s if train_s > 0 else None,
                             adapter_files={k: str(v.relative_to(run.root)) for k, v in files.items()})
    shutil.rmtree(run.checkpoints, ignore_errors=True)  # a finished run needs no resume point
    best = state["best_val"]
    emit(ProgressEvent("done", state["step"], cfg.steps, val_loss=best,
                       artifacts=["adapter", "loss.png", final],
                       message="done" + (f": best validation loss {best:.4f} at step {state['best_step']}"
                                         if best is not None else "")))
    return ImageTrainResult(run.root, state["step"], stop_reason, best, state["best_step"], files,
                            [run.root / p for p in state["samples"]], metrics)


def _draw_batch(s: _Setup, generator) -> dict[str, Any]:
    """Everything random about one step, drawn from ``generator`` in a fixed order."""
    import torch

    cfg, cache = s.config, s.cache
    mean, std = cache["latent_mean"], cache["latent_std"]
    n_variants, n_images = mean.shape[:2]
    idx = torch.randint(n_images, (cfg.batch_size,), generator=generator)
    variant = torch.randint(n_variants, (cfg.batch_size,), generator=generator)
    eps = torch.randn((cfg.batch_size, *mean.shape[2:]), generator=generator)
    noise = torch.randn((cfg.batch_size, *mean.shape[2:]), generator=generator)
    if cfg.noise_offset:
        noise += cfg.noise_offset * torch.randn((cfg.batch_size, mean.shape[2], 1, 1), generator=generator)
    timesteps = torch.randint(0, s.noise_scheduler.config.num_train_timesteps, (cfg.batch_size,), generator=generator)
    dropped = torch.rand(cfg.batch_size, generator=generator) < cfg.caption_dropout
    device = mean.device
    latents = mean[variant, idx] + std[variant, idx] * eps.to(device)
    captions = ["" if d else cache["captions"][i] for i, d in zip(idx.tolist(), dropped.tolist())]
    batch = {"latents": latents, "noise": noise.to(device), "timesteps": timesteps.to(device), "captions": captions}
    if "time_ids" in cache:
        batch["time_ids"] = cache["time_ids"][idx.to(device)]
    return batch


def _conditioning(s: _Setup, captions: list[str]):
    """(prompt embeddings, pooled or None) for captions: from the cache, or encoded now (text LoRA)."""
    import torch

    from .pipelines import encode_prompts

    if "embeds" not in s.cache:
        return encode_prompts(s.loaded, captions)
    rows = [s.cache["embeds"][c] for c in captions]
    pooled = torch.stack([r[1] for r in rows]) if rows[0][1] is not None else None
    return torch.stack([r[0] for r in rows]), pooled


def diffusion_loss(s: _Setup, unet, batch: dict[str, Any], *, weighted: bool):
    """Noise the latents, predict with the UNet, and take the (min-SNR weighted) MSE to the target."""
    import torch
    import torch.nn.functional as F

    ns = s.noise_scheduler
    latents = batch["latents"] * s.loaded.pipe.vae.config.scaling_factor
    noisy = ns.add_noise(latents, batch["noise"], batch["timesteps"])
    if s.loaded.prediction_type == "v_prediction":
        target = ns.get_velocity(latents, batch["noise"], batch["timesteps"])
    else:
        target = batch["noise"]
    embeds, pooled = _conditioning(s, batch["captions"])
    extra = {}
    if pooled is not None:
        extra["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": batch["time_ids"]}
    pred = unet(noisy, batch["timesteps"], embeds, return_dict=False, **extra)[0]
    per_image = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if weighted and s.config.min_snr_gamma:
        from diffusers.training_utils import compute_snr

        snr = compute_snr(ns, batch["timesteps"])
        weight = torch.clamp(snr, max=s.config.min_snr_gamma)
        weight = weight / (snr + 1) if s.loaded.prediction_type == "v_prediction" else weight / snr
        per_image = per_image * weight
    return per_image.mean()


def validation_loss(s: _Setup, unet) -> float:
    """Unweighted loss on held-out images at fixed timesteps with fixed noise: the same number every time."""
    import torch

    val = s.cache["val"]
    was_training = unet.training
    unet.eval()
    total, count = 0.0, 0
    with torch.no_grad(), s.accelerator.autocast():
        for k in range(len(val["timesteps"])):
            for i in range(0, len(val["latents"]), s.config.batch_size):
                n = len(val["latents"][i:i + s.config.batch_size])
                batch = {"latents": val["latents"][i:i + n], "noise": val["noise"][i:i + n, k],
                         "timesteps": val["timesteps"][k].repeat(n), "captions": val["captions"][i:i + n]}
                if "time_ids" in val:
                    batch["time_ids"] = val["time_ids"][i:i + n]
                total += diffusion_loss(s, unet, batch, weighted=False).item() * n
                count += n
    unet.train(was_training)
    return total / count


def sample_grid_for(s: _Setup, autocast=None):
    from .sample import sample_grid

    return sample_grid(s.loaded, s.sample_prompts, s.config.sample_seeds, resolution=s.config.resolution,
                       steps=s.config.sample_steps, guidance_scale=s.config.guidance_scale, autocast=autocast)


def _write_metrics(s: _Setup, run: RunDir, state: dict, *, status: str, stop_reason: str, **extra) -> dict:
    metrics = {
        "kind": "image",
        "status": status,
        "base": s.config.base,
        "base_path": str(s.loaded.path),
        "family": s.loaded.family,
        "prediction_type": s.loaded.prediction_type,
        "precision": s.precision,
        "config": s.config.model_dump(),
        "data_report": s.dataset.report.to_dict() | {"train_images": len(s.train), "val_images": len(s.val)},
        "steps_done": state["step"],
        "stop_reason": stop_reason,
        "best_step": state["best_step"],
        "best_val_loss": state["best_val"],
        "curves": state["curves"],
        "sample_prompts": s.sample_prompts,
        "samples": state["samples"],
        "setup_time_s": s.setup_s,
        **extra,
    }
    run.write_metrics(metrics)
    return metrics
