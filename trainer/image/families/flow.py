"""Flow matching as FLUX.1 and SD 3.5 are trained, following diffusers' DreamBooth LoRA examples.

``train_dreambooth_lora_flux.py`` and ``train_dreambooth_lora_sd3.py`` train the same way:

- latents are the VAE's, shifted and scaled: ``(latents - shift_factor) * scaling_factor``;
- a timestep index is drawn from a density over ``[0, 1)`` (``compute_density_for_timestep_sampling``:
  uniform ``"none"``, ``"logit_normal"`` with mean 0 and std 1, or ``"mode"``), and its sigma is
  read from a fresh copy of the pipeline's ``FlowMatchEulerDiscreteScheduler`` (so SD3's
  ``shift=3`` applies; FLUX.1-dev's scheduler shifts only at inference, by image size, and
  trains on unshifted sigmas);
- the input is ``(1 - sigma) * latents + sigma * noise`` and the target the velocity
  ``noise - latents``; the per-image MSE is optionally weighted (``compute_loss_weighting_for_sd3``:
  ``"none"``, ``"sigma_sqrt"``, ``"cosmap"``).

(SD3's example can instead "precondition" the output, ``pred * -sigma + noisy``, against the
clean latents; that is the same loss weighted by ``sigma**2``, so it is not a separate mode here.)

The training loop (``trainer/image/train.py``) draws the noise and, through ``draw_sigmas``, the
sigmas from its one ``torch.Generator``, so a resumed run continues exactly; its validation loss
uses ``val_sigmas``, fixed points of [0, 1), with fixed noise: the same number for the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

TEXT_ENCODER_LORA = False  # their text encoders stay frozen (T5 is freed once captions are cached)
PREDICTION_TYPE = "flow"  # what runs record as the prediction type: velocity, noise - latents
# Not timed: a probe would copy a multi-billion-parameter transformer. A run takes the hardware's
# half precision (or what LORACORD_CPU_BF16 / --precision say) and loads the pipeline in it.
PRECISION_PROBE = False
TIMESTEP_SAMPLING = ("none", "logit_normal", "mode")
LOSS_WEIGHTING = ("none", "sigma_sqrt", "cosmap")

Predict = Callable[[Any, Any], Any]  # (noisy latents, sigmas) -> predicted velocity, same shape


class Conditioning(NamedTuple):
    """Text conditioning: the token sequence the denoiser attends to and the pooled vector.

    Batched (``prompt`` [B, S, D], ``pooled`` [B, P]) or one caption's rows ([S, D], [P]), as
    cached per caption; ``stack`` turns cached rows into a batch. A pair, as every family's
    ``encode_prompts`` answers the training loop: ``(prompt embeddings, pooled)``.
    """

    prompt: Any
    pooled: Any

    def to(self, device=None, dtype=None) -> "Conditioning":
        return Conditioning(self.prompt.to(device=device, dtype=dtype), self.pooled.to(device=device, dtype=dtype))


def stack(rows: list[Conditioning]) -> Conditioning:
    """A batch from cached per-caption rows."""
    import torch

    return Conditioning(torch.stack([r.prompt for r in rows]), torch.stack([r.pooled for r in rows]))


@dataclass(frozen=True)
class FlowObjective:
    """How a flow-matching family is trained; built by the family's ``objective(pipe)``.

    ``sigmas`` is the training sigma per timestep index (the scheduler's own table, descending
    from 1). ``guidance`` is the constant fed to a guidance-distilled denoiser (FLUX.1-dev), or
    None. Unknown scheme names raise ``ValueError``.
    """

    sigmas: Any
    num_train_timesteps: int
    timestep_sampling: str = "logit_normal"
    loss_weighting: str = "none"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    guidance: float | None = None

    def __post_init__(self):
        problems = []
        if self.timestep_sampling not in TIMESTEP_SAMPLING:
            problems.append(f"timestep_sampling {self.timestep_sampling!r} is not one of {TIMESTEP_SAMPLING}")
        if self.loss_weighting not in LOSS_WEIGHTING:
            problems.append(f"loss_weighting {self.loss_weighting!r} is not one of {LOSS_WEIGHTING}")
        if problems:
            raise ValueError("; ".join(problems))


def flow_objective(scheduler_config, **settings) -> FlowObjective:
    """The objective for a pipeline whose scheduler has ``scheduler_config``; ``settings`` are
    ``FlowObjective`` fields (timestep_sampling, loss_weighting, logit_mean, logit_std, mode_scale, guidance)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    # A copy, as the examples keep one: sampling calls set_timesteps on the pipeline's own scheduler.
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
    return FlowObjective(scheduler.sigmas.float().clone(), scheduler.config.num_train_timesteps, **settings)


def sigmas_at(objective: FlowObjective, u):
    """Sigma for positions ``u`` in [0, 1): the examples' ``timesteps[(u * N).long()]``, as a sigma."""
    n = objective.num_train_timesteps
    return objective.sigmas[(u * n).long().clamp(0, n - 1)]


def draw_sigmas(objective: FlowObjective, count: int, generator):
    """One training sigma for each of ``count`` images, from the objective's density and ``generator``."""
    from diffusers.training_utils import compute_density_for_timestep_sampling

    u = compute_density_for_timestep_sampling(objective.timestep_sampling, count, logit_mean=objective.logit_mean,
                                              logit_std=objective.logit_std, mode_scale=objective.mode_scale,
                                              generator=generator)
    return sigmas_at(objective, u)


def val_sigmas(objective: FlowObjective, count: int):
    """``count`` fixed sigmas at evenly spaced points of [0, 1) (0.2, 0.4, 0.6, 0.8 for four), for validation."""
    import torch

    return sigmas_at(objective, torch.tensor([(k + 1) / (count + 1) for k in range(count)]))


def per_image_loss(predict: Predict, objective: FlowObjective, latents, noise, sigmas, *, weighted: bool):
    """MSE between the predicted and the true velocity for each image, weighted as the objective says."""
    from diffusers.training_utils import compute_loss_weighting_for_sd3

    noise = noise.to(latents.device, latents.dtype)
    sigmas = sigmas.to(latents.device, latents.dtype)
    s = sigmas.view(-1, *([1] * (latents.ndim - 1)))
    pred = predict((1.0 - s) * latents + s * noise, sigmas)
    per_image = (pred.float() - (noise - latents).float()).pow(2).flatten(1).mean(1)
    if weighted:
        per_image = per_image * compute_loss_weighting_for_sd3(objective.loss_weighting, sigmas.float())
    return per_image


def image_conditioning(original_sizes, crops_top_left, target: tuple[int, int]) -> dict:
    """Per-image conditioning besides the prompt: none for the flow families."""
    return {}


def denoiser_kwargs(pooled, batch: dict) -> dict:
    """What a flow family's ``noise_loss`` takes besides the prompt embeddings: the pooled ones."""
    return {"pooled": pooled}


def noise_loss(predict, objective: FlowObjective, denoiser, batch: dict, embeds, extra: dict, *, vae_config,
               weighted: bool, **_ddpm):
    """A flow family's ``noise_loss`` (the training loop's question), given the family's
    ``predict(denoiser, noisy, sigmas, cond, objective)``: the mean loss of a batch of raw
    ``latents`` (shifted and scaled here), its ``noise`` and its ``timesteps`` (sigmas, drawn by
    ``draw_sigmas`` or fixed by ``val_sigmas``). The DDPM knobs (prediction type, min-SNR) do not apply."""
    cond = Conditioning(embeds, extra["pooled"])
    latents = model_latents(vae_config, batch["latents"])
    per_image = per_image_loss(lambda x, s: predict(denoiser, x, s, cond, objective), objective, latents,
                               batch["noise"], batch["timesteps"], weighted=weighted)
    return per_image.mean()


def model_latents(vae_config, raw):
    """Raw VAE latents in the denoiser's space: ``(raw - shift_factor) * scaling_factor``."""
    return (raw - (vae_config.shift_factor or 0.0)) * vae_config.scaling_factor


def generate(pipe, kwargs: dict, *, seed: int, steps: int, guidance_scale: float, size):
    """One image from a flow family's pipeline with its prompt ``kwargs`` (text or cached embeddings),
    ``size`` a side or (width, height): the transformer in eval mode, torch's random state untouched,
    a CPU generator seeded ``seed``."""
    import torch

    from .adapters import sides

    width, height = sides(size)

    was_training = pipe.transformer.training
    pipe.transformer.eval()
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            return pipe(num_inference_steps=steps, guidance_scale=guidance_scale, height=height, width=width,
                        generator=torch.Generator("cpu").manual_seed(seed), output_type="pil", **kwargs).images[0]
    finally:
        pipe.transformer.train(was_training)
