"""Train a LoRA adapter for an image pipeline (SD 1.x/2.x, SDXL, FLUX.1, SD 3.5) on a few images.

``train_image`` reads the data, loads the pipeline and caches what stays fixed (``_setup``);
``ImageTask.train_step`` is one optimizer step, run by the loop shared with text runs
(``trainer/loop.py``). Speed comes from caching, not from cutting corners:

- VAE latents are encoded once per image and augmented variant (augmentation is in pixel
  space, so ``augment_variants`` augmented copies are encoded up front and each step picks one;
  the latent distribution's mean and std are kept, so each step still samples a fresh latent);
- text embeddings of the frozen encoders are computed once per caption (and for the empty
  caption used by caption dropout, and the sample prompts); with ``train_text_encoder`` they are
  computed every step. Then the family frees what only caching needed (FLUX.1's and SD 3.5's T5);
- bf16 autocast where the hardware has fast bf16, the frozen denoiser stored in bf16 (LoRA weights
  and the optimizer stay fp32).

What differs between families (the denoiser, prompt encoding, the objective, sampling, exports)
is asked of the base's family module (``trainer.image.families``); nothing here names one.

All randomness of a step (batch, variant, noise, timesteps, caption dropout) comes from one
``torch.Generator`` saved in checkpoints, so a resumed run continues exactly. Under
``accelerate launch`` each process trains on its own rows of every step's batch.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import kinds
from ..cancel import CancelToken
from ..errors import ConfigError
from ..events import EventCallback
from ..loop import LoopState, Task, fit, lora_optimizer, training_mode
from ..rundir import RunDir, start_run
from .config import ImageTrainConfig

TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
VAL_TIMESTEPS = 4  # fixed timesteps per held-out image for the deterministic validation loss
TAG_ORDERS = 4  # orders of each caption's tags cached with shuffle_tags (the caption itself and three shuffles)


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
    task = ImageTask(_setup(start.config), start.run)
    out = fit(task, start)
    return ImageTrainResult(start.run.root, out.state.step, out.stop_reason, out.state.best_val, out.state.best_step,
                            task.adapter_files, [start.run.root / p for p in out.state.samples], out.metrics)


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
    precision_choice: dict = field(default_factory=dict)  # what auto picked and why
    quantize: Any = None  # trainer.quantize.QuantizeChoice: the denoiser's quantisation, and why


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
    """Read the data, size the run, load the base in its precision, add LoRA, cache, and move to the device."""
    import torch

    from ..precision import make_accelerator
    from ..quantize import check_quantize, run_device
    from .data import load_images, training_limits
    from .presets import run_sizes, size_defaults

    started = time.time()
    if config.threads:
        torch.set_num_threads(config.threads)
    sizes = run_sizes(config)  # once: the images are read and the run trains at the same sizes
    if config.train_text_encoder and not sizes.family.part.TEXT_ENCODER_LORA:
        raise ConfigError(f"train_text_encoder: loracord keeps a {sizes.family.label} base's text encoders frozen "
                          f"(their embeddings are cached and T5 is freed); leave it off to train the "
                          f"{sizes.family.part.DENOISER} alone.")
    if config.train_text_encoder:
        check_text_encoder_lora()
    check_quantize(config.quantize, kinds.IMAGE.name, run_device())  # before any work: what this machine lacks
    dataset = load_images(config.data, instance_prompt=config.instance_prompt, limits=training_limits(config, sizes))
    if config.holdout:  # a cross-validation fold, or every image (trainer.folds)
        from ..folds import split_holdout

        train, val = split_holdout(dataset.examples, config.holdout, config.seed)
    else:
        train, val = split(dataset.examples, config.val_fraction, config.seed)
    config = size_defaults(config, len(train), sizes)
    loaded, choice, quantize = _load_in_precision(config, sizes.family.part)
    accelerator = make_accelerator(choice.precision)
    noise_scheduler = loaded.part.training_scheduler(loaded.pipe)
    _add_lora(config, loaded, choice.precision)

    # The VAE and text encoders go to the device first and cache; the family frees what only caching
    # needed (a flow family's T5) before the denoiser joins them, so the two never share the device.
    for module in (loaded.pipe.vae, *loaded.text_encoders):
        module.to(accelerator.device)
    prompts = config.sample_prompts or list(dict.fromkeys([config.instance_prompt] + [e.caption for e in val[:1]]))
    cache = _build_cache(config, loaded, noise_scheduler, train, val, prompts, accelerator.device)
    if "embeds" in cache:
        loaded.part.free_after_caching(loaded.pipe)  # samples and steps read the cached embeddings from here on
    loaded.pipe.to(accelerator.device)
    return _Setup(config, dataset, train, val, loaded, noise_scheduler, accelerator, choice.precision, cache, prompts,
                  setup_s=time.time() - started, precision_choice=choice.as_dict(), quantize=quantize)


def _load_in_precision(config: ImageTrainConfig, part):
    """(the loaded base, the precision choice, the quantisation choice). A family whose denoiser is
    cheap to copy is timed in both precisions (``--precision auto``), as loaded: float32, or
    quantised (``--quantize``); a big transformer takes the hardware's half precision untimed and
    loads in it (half the memory), its quantisation decided for that precision."""
    from ..models import resolve_base
    from ..precision import choose_precision, compute_dtype, image_probe, model_key
    from ..quantize import decide
    from .pipelines import load_pipeline

    shape = dict(resolution=config.resolution, batch_size=config.batch_size, rank=config.rank)
    denoiser = resolve_base(config.base) / part.DENOISER
    if part.PRECISION_PROBE:
        quantize = decide(config.quantize, kind=kinds.IMAGE.name, folder=denoiser, precision="fp32")
        loaded = load_pipeline(config.base, quantize=quantize.mode)
        key = f"image|{model_key(loaded.path)}|q={quantize.mode}|" + ",".join(f"{k}={v}" for k, v in shape.items())
        # A quantised denoiser is not timed: the probe would copy it; it takes the hardware's half precision.
        probe = image_probe(loaded, **shape) if quantize.mode == "none" else None
        return loaded, choose_precision(config.precision, probe=probe, key=key), quantize
    choice = choose_precision(config.precision, probe=None, key="")
    quantize = decide(config.quantize, kind=kinds.IMAGE.name, folder=denoiser, precision=choice.precision)
    dtype = None if choice.precision == "fp32" else compute_dtype(choice.precision)
    return load_pipeline(config.base, dtype=dtype, quantize=quantize.mode), choice, quantize


def _add_lora(config: ImageTrainConfig, loaded, precision: str) -> None:
    """Freeze the pipeline, add a float32 LoRA to the denoiser (and the text encoders with
    ``train_text_encoder``), seeded, and store the frozen denoiser in the compute dtype."""
    import torch
    from accelerate.utils import set_seed
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    from ..precision import compute_dtype, store_frozen_in

    for module in [loaded.pipe.vae, loaded.denoiser, *loaded.text_encoders]:
        module.requires_grad_(False)
    set_seed(config.seed)  # the same initial adapter every run
    # use_dora: peft's DoRA; the magnitudes are set from the base's weights here, before the cast below
    lora = dict(r=config.rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                init_lora_weights="gaussian", use_dora=config.dora)
    loaded.denoiser.add_adapter(LoraConfig(target_modules=list(loaded.part.LORA_TARGETS), **lora))
    cast_training_params(loaded.denoiser, dtype=torch.float32)  # the adapter trains in float32 whatever the base's dtype
    if config.train_text_encoder:
        from peft import inject_adapter_in_model

        for encoder in loaded.text_encoders:
            # peft directly rather than transformers' add_adapter, which needs a newer peft
            lora_config = LoraConfig(target_modules=TEXT_TARGETS, **lora)
            inject_adapter_in_model(lora_config, encoder)
            encoder.peft_config = {"default": lora_config}

    # The frozen denoiser is stored in the compute dtype, as diffusers' LoRA recipe and the text trainer
    # store frozen weights: half its memory, and autocast no longer casts its weights on every step.
    # Cast after the LoRA layers were made, so the adapter's float32 initialisation is the same in
    # every precision (for the UNet families; flow families load in the compute dtype already, VAE
    # and encoders too); the adapter (and so the optimizer) stays float32. The UNet families' VAE
    # and text encoders stay float32: they run to cache latents and embeddings and to decode
    # samples, not per step, and SDXL's VAE overflows in fp16. Cast before the move to the device,
    # so a GPU never holds the fp32 denoiser.
    if precision != "fp32":
        store_frozen_in(loaded.denoiser, compute_dtype(precision))
    if config.gradient_checkpointing:
        loaded.denoiser.enable_gradient_checkpointing()


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


def _build_cache(config: ImageTrainConfig, loaded, noise_scheduler, train: list, val: list, prompts: list[str],
                 device) -> dict[str, Any]:
    """Per aspect bucket, latent distributions of every (augmented variant, image); embeddings of every
    caption and sample prompt; the validation images' clean latents with fixed noise, per bucket."""
    import torch

    from .augment import augment
    from .data import normalize

    variants = config.augment_variants if config.augment > 0 else 1
    buckets = []
    for size, rows in _buckets(config, loaded, train).items():
        pixels, conditioning = _prepare(loaded, [train[i] for i in rows], size, device)
        means, stds = [], []
        for v in range(variants):
            # Variant 0 is the image itself; the others are seeded augmentations of it.
            batch = pixels if v == 0 else augment(pixels.clone(), config.augment, generator_seed=config.seed * 1000 + v)
            mean, std = _encode_latents(loaded.pipe.vae, normalize(batch), device)
            means.append(mean)
            stds.append(std)
        buckets.append({"size": size, "rows": rows, "latent_mean": torch.stack(means), "latent_std": torch.stack(stds),
                        "conditioning": conditioning})
    cache = {"buckets": buckets, "captions": [e.caption for e in train]}
    if config.shuffle_tags:  # a few orders of each caption's tags, embedded once like the latents' variants
        cache["tag_orders"] = [tag_orders(e.caption, config.keep_tags, TAG_ORDERS, seed=config.seed * 1000 + i)
                               for i, e in enumerate(train)]
    orders = [c for row in cache.get("tag_orders", []) for c in row]
    if not config.train_text_encoder:
        cache["embeds"] = _embed_captions(loaded, [e.caption for e in train + val] + [""] + prompts + orders, device)

    # Validation: clean latents (the distribution's mean), fixed timesteps and fixed noise.
    if val:
        generator = torch.Generator().manual_seed(config.seed + 1)
        cache["val"] = {"timesteps": loaded.part.val_timesteps(noise_scheduler, VAL_TIMESTEPS).to(device),
                        "buckets": []}
        for size, rows in _buckets(config, loaded, val).items():
            pixels, conditioning = _prepare(loaded, [val[i] for i in rows], size, device)
            latents = _encode_latents(loaded.pipe.vae, normalize(pixels), device)[0]
            noise = torch.randn((len(rows), VAL_TIMESTEPS, *latents.shape[1:]), generator=generator)
            cache["val"]["buckets"].append({"size": size, "rows": rows, "latents": latents, "noise": noise.to(device),
                                            "captions": [val[i].caption for i in rows], "conditioning": conditioning})
    return cache


def _buckets(config: ImageTrainConfig, loaded, examples: list) -> dict[tuple[int, int], list[int]]:
    """``{(width, height): indices of examples}``: each image in the bucket closest to its aspect
    (``trainer.image.sizes.bucket_for``; every one in the square with ``crop="square"``), square first."""
    from .sizes import bucket_for

    found: dict[tuple[int, int], list[int]] = {}
    for i, e in enumerate(examples):
        size = bucket_for(e.image.width, e.image.height, config.resolution, loaded.part.SIDE_MULTIPLE,
                          square=config.crop == "square")
        found.setdefault(size, []).append(i)
    square = (config.resolution, config.resolution)
    return dict(sorted(found.items(), key=lambda item: (item[0] != square, item[0][0] / item[0][1])))


def _prepare(loaded, examples: list, size: tuple[int, int], device):
    """Pixels of ``examples`` resized to cover the bucket ``size`` and centre-cropped, and the family's
    per-image conditioning besides the prompt (SDXL's time ids), on ``device``."""
    from .data import resize_to_bucket, to_tensor

    crops = [resize_to_bucket(e.image, size) for e in examples]
    originals = [(e.image.height, e.image.width) for e in examples]
    conditioning = loaded.part.image_conditioning(originals, [c[1] for c in crops], (size[1], size[0]))
    return to_tensor([c[0] for c in crops]), {key: value.to(device) for key, value in conditioning.items()}


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
# the step: what trainer/loop.py's ``fit`` runs for an image run


class ImageTask(Task):
    """The denoiser's LoRA (and the text encoders' with ``train_text_encoder``) on cached latents."""

    def __init__(self, s: _Setup, run: RunDir):
        import torch

        from ..checkpoint import lr_schedule

        cfg, acc, pipe, denoiser = s.config, s.accelerator, s.loaded.pipe, s.loaded.part.DENOISER
        self.s, self.run, self.config, self.accelerator = s, run, cfg, acc
        self.model = torch.nn.ModuleDict({name: getattr(pipe, name) for name in (denoiser, "text_encoder", "text_encoder_2")
                                          if getattr(getattr(pipe, name, None), "peft_config", None)})
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = lora_optimizer(self.model, self.params, lr=cfg.lr, weight_decay=0.0,
                                   loraplus_ratio=cfg.loraplus_ratio)
        self.scheduler = lr_schedule(optimizer, cfg)
        # Under accelerate launch the denoiser is wrapped to average its gradients over processes
        # (DDP); text-encoder LoRA runs outside that wrapper, so its gradients are averaged here.
        self.denoiser, self.optimizer = acc.prepare(s.loaded.denoiser, optimizer)
        self.unsynced = [p for name, module in self.model.items() if name != denoiser
                         for p in module.parameters() if p.requires_grad] if acc.num_processes > 1 else []
        self.generator = torch.Generator().manual_seed(cfg.seed)  # all of a step's randomness
        self.adapter_files: dict[str, Path] = {}

    def describe(self) -> str:
        s, cfg = self.s, self.config
        return (f"training {cfg.steps} steps on {len(s.train)} images ({len(s.val)} held out; {s.loaded.family}, "
                f"{s.loaded.prediction_type}, {s.precision}, {s.quantize.words()}: {s.quantize.reason}, rank {cfg.rank}, "
                f"lr {cfg.lr:g}, augment {cfg.augment:g})")

    def train_step(self) -> tuple[float, None]:
        """One batch of cached latents with fresh noise and timesteps: forward, backward, clip, step."""
        acc = self.accelerator
        training_mode(self.denoiser, *self.model.values())
        batch = _draw_batch(self.s, self.generator)
        with acc.autocast():
            loss = diffusion_loss(self.s, self.denoiser, batch, weighted=True)
        acc.backward(loss)
        if self.unsynced:
            _average_gradients(self.unsynced, acc)
        acc.clip_grad_norm_(self.params, self.config.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item(), None

    def evaluate(self) -> float | None:
        return validation_loss(self.s, self.s.loaded.denoiser) if self.s.val else None

    def sample(self, name: str) -> str:
        path = self.run.root / "samples" / f"{name}.png"
        path.parent.mkdir(exist_ok=True)
        sample_grid_for(self.s, autocast=self.accelerator.autocast).save(path)
        return str(path.relative_to(self.run.root))

    def sample_shows(self) -> dict:
        return {"prompts": list(self.s.sample_prompts), "seeds": list(self.config.sample_seeds)}

    def finish(self, run: RunDir, state: LoopState) -> tuple[list[str], dict]:
        """The family's adapter files (diffusers and its single file), each loaded back into a fresh pipeline."""
        from .export import single_file_skipped
        from .pipelines import load_pipeline

        self.model.eval()
        fresh = load_pipeline(self.s.loaded.path, dtype=self.s.loaded.dtype)  # as the base loaded: a 12B one in bf16
        self.adapter_files = self.s.loaded.part.export_adapter(self.s.loaded, fresh, run.adapter, rank=self.config.rank,
                                                               alpha=self.config.lora_alpha)
        del fresh
        skipped = single_file_skipped(self.s.loaded.denoiser)  # DoRA, as _add_lora made the adapter
        return ["adapter"], {"adapter_files": {k: str(v.relative_to(run.root)) for k, v in self.adapter_files.items()},
                             **({"single_file_skipped": skipped} if skipped else {}), **self.scores()}

    def scores(self) -> dict:
        """The final grid's prompts and seeds scored by the configured CLIP model (``trainer.scores``):
        each image against the held-out images and its prompt; unavailable without a model."""
        from ..scores import image_scores, load_scorer
        from .sample import sample_grid

        scorer = load_scorer(self.config.scorer)
        if scorer is None:
            return image_scores(None, [], [], [])
        s, seeds = self.s, list(self.config.sample_seeds)
        images, prompts = [], []
        for prompt in s.sample_prompts:  # one by one: the same images as the grid's cells, same seeds
            grid = sample_grid(s.loaded, [prompt], seeds, size=self._sample_size(), steps=s.config.sample_steps,
                               guidance_scale=s.config.guidance_scale, cache=s.cache.get("embeds"))
            w = grid.width // len(seeds)
            images += [grid.crop((i * w, 0, (i + 1) * w, grid.height)) for i in range(len(seeds))]
            prompts += [prompt] * len(seeds)
        return image_scores(scorer, images, [e.image for e in s.val], prompts)

    def _sample_size(self) -> tuple[int, int]:
        from .sizes import aspect_size

        return aspect_size(self.s.config.sample_aspect, self.s.config.resolution, self.s.loaded.part.SIDE_MULTIPLE)

    def metrics(self, state: LoopState) -> dict:
        s = self.s
        return {"kind": kinds.IMAGE.name, "base": s.config.base, "base_path": str(s.loaded.path), "family": s.loaded.family,
                "prediction_type": s.loaded.prediction_type, "precision": s.precision,
                "precision_choice": s.precision_choice, "quantize": s.quantize.mode,
                # the reason again as a plain string: the worker hands the bot metrics.json's scalars only
                "quantize_reason": s.quantize.reason,
                "quantize_choice": s.quantize.as_dict(),
                "data_report": s.dataset.report.to_dict() | {"train_images": len(s.train), "val_images": len(s.val)},
                "buckets": _bucket_report(s),
                "sample_prompts": s.sample_prompts, "samples": state.samples, "setup_time_s": s.setup_s}


def _bucket_report(s: _Setup) -> list[dict]:
    """Each aspect bucket as metrics.json lists it: its size (WxH), its training and held-out images."""
    held_out = {b["size"]: b["rows"] for b in s.cache.get("val", {}).get("buckets", [])}
    sizes = [b["size"] for b in s.cache["buckets"]] + [size for size in held_out if size not in
                                                      {b["size"] for b in s.cache["buckets"]}]
    rows = {b["size"]: b["rows"] for b in s.cache["buckets"]}
    return [{"size": f"{w}x{h}", "images": [s.train[i].name for i in rows.get((w, h), [])],
             "held_out": [s.val[i].name for i in held_out.get((w, h), [])]} for w, h in sizes]


def _average_gradients(params: list, acc) -> None:
    """Average gradients over processes in one collective (for parameters outside the DDP wrapper)."""
    import torch

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = acc.reduce(torch.cat([g.flatten() for g in grads]), reduction="mean")
    for p, g in zip(params, flat.split([g.numel() for g in grads])):
        p.grad = g.view_as(p)


def _draw_batch(s: _Setup, generator) -> dict[str, Any]:
    """This process's share of one step's batch; everything random, drawn from ``generator`` in a fixed order.

    Every process draws the whole batch (``batch_size`` per process) from the same generator
    and keeps its own rows, so processes train on disjoint rows, and n processes of
    ``batch_size`` b train exactly as one process of ``batch_size`` n*b would.
    """
    import torch

    cfg, cache, acc = s.config, s.cache, s.accelerator
    buckets = cache["buckets"]
    if len(buckets) > 1:  # a bucket by its share of the images, so every image is as likely as in one bucket
        shares = torch.tensor([float(len(b["rows"])) for b in buckets])
        bucket = buckets[int(torch.multinomial(shares, 1, generator=generator))]
    else:
        bucket = buckets[0]
    mean, std = bucket["latent_mean"], bucket["latent_std"]
    n_variants, n_images = mean.shape[:2]
    size = cfg.batch_size * acc.num_processes
    idx = torch.randint(n_images, (size,), generator=generator)
    variant = torch.randint(n_variants, (size,), generator=generator)
    eps = torch.randn((size, *mean.shape[2:]), generator=generator)
    noise = torch.randn((size, *mean.shape[2:]), generator=generator)
    if cfg.noise_offset:
        noise += cfg.noise_offset * torch.randn((size, mean.shape[2], 1, 1), generator=generator)
    timesteps = s.loaded.part.draw_timesteps(s.noise_scheduler, size, generator)
    dropped = torch.rand(size, generator=generator) < cfg.caption_dropout
    if "tag_orders" in cache:  # which order of its tags each row's caption comes in
        order = torch.randint(TAG_ORDERS, (size,), generator=generator)
        texts = [cache["tag_orders"][bucket["rows"][i]][k] for i, k in zip(idx.tolist(), order.tolist())]
    else:
        texts = [cache["captions"][bucket["rows"][i]] for i in idx.tolist()]
    mine = slice(acc.process_index, None, acc.num_processes)
    idx, variant, eps, noise, timesteps, dropped = idx[mine], variant[mine], eps[mine], noise[mine], timesteps[mine], dropped[mine]
    device = mean.device
    latents = mean[variant, idx] + std[variant, idx] * eps.to(device)
    captions = ["" if d else text for text, d in zip(texts[mine], dropped.tolist())]
    batch = {"latents": latents, "noise": noise.to(device), "timesteps": timesteps.to(device), "captions": captions}
    batch |= {key: rows[idx.to(device)] for key, rows in bucket["conditioning"].items()}
    return batch


def tag_orders(caption: str, keep: int, count: int, seed: int) -> list[str]:
    """``count`` orders of a caption's comma-separated tags, the caption itself first; the first
    ``keep`` tags stay in place and the rest are shuffled (seeded). A caption of fewer than two
    movable tags has one order, repeated."""
    tags = [t.strip() for t in caption.split(",") if t.strip()]
    kept, moving = tags[:keep], tags[keep:]
    rng = random.Random(seed)
    orders = [caption]
    for _ in range(count - 1):
        shuffled = moving[:]
        rng.shuffle(shuffled)
        orders.append(", ".join(kept + shuffled) if len(moving) > 1 else caption)
    return orders


def _conditioning(s: _Setup, captions: list[str]):
    """(prompt embeddings, pooled or None) for captions: from the cache, or encoded now (text LoRA)."""
    import torch

    from .pipelines import encode_prompts

    if "embeds" not in s.cache:
        return encode_prompts(s.loaded, captions)
    rows = [s.cache["embeds"][c] for c in captions]
    pooled = torch.stack([r[1] for r in rows]) if rows[0][1] is not None else None
    return torch.stack([r[0] for r in rows]), pooled


def diffusion_loss(s: _Setup, denoiser, batch: dict[str, Any], *, weighted: bool):
    """The family's objective on ``batch`` (``noise_loss``), conditioned on the batch's captions."""
    embeds, pooled = _conditioning(s, batch["captions"])
    part = s.loaded.part
    return part.noise_loss(s.noise_scheduler, denoiser, batch, embeds, part.denoiser_kwargs(pooled, batch),
                           vae_config=s.loaded.pipe.vae.config,
                           prediction_type=s.loaded.prediction_type, min_snr_gamma=s.config.min_snr_gamma,
                           weighted=weighted)


def validation_loss(s: _Setup, denoiser) -> float:
    """Unweighted loss on held-out images at fixed timesteps with fixed noise: the same number every time."""
    import torch

    val, acc = s.cache["val"], s.accelerator
    was_training = denoiser.training
    denoiser.eval()
    total, count = 0.0, 0
    with torch.no_grad(), acc.autocast():
        for bucket in val["buckets"]:
            mine = torch.arange(acc.process_index, len(bucket["latents"]), acc.num_processes)  # this process's images
            chunks = mine.split(s.config.batch_size) if len(mine) else []  # fewer images than processes: none here
            for k in range(len(val["timesteps"])):
                for rows in chunks:
                    n = len(rows)
                    batch = {"latents": bucket["latents"][rows], "noise": bucket["noise"][rows, k],
                             "timesteps": val["timesteps"][k].repeat(n),
                             "captions": [bucket["captions"][i] for i in rows.tolist()]}
                    batch |= {key: values[rows] for key, values in bucket["conditioning"].items()}
                    total += diffusion_loss(s, denoiser, batch, weighted=False).item() * n
                    count += n
    denoiser.train(was_training)
    if acc.num_processes > 1:
        total, count = acc.reduce(torch.tensor([total, count], device=acc.device), reduction="sum").tolist()
    return total / count


def sample_grid_for(s: _Setup, autocast=None):
    from .sample import sample_grid

    from .sizes import aspect_size

    size = aspect_size(s.config.sample_aspect, s.config.resolution, s.loaded.part.SIDE_MULTIPLE)
    return sample_grid(s.loaded, s.sample_prompts, s.config.sample_seeds, size=size, steps=s.config.sample_steps,
                       guidance_scale=s.config.guidance_scale, autocast=autocast, cache=s.cache.get("embeds"))
