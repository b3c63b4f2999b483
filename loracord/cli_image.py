"""``loracord train image``: LoRA-fine-tune a Stable Diffusion 1.x/2.x or SDXL pipeline on a few images.

Registered in ``loracord.registry``; ``loracord sample RUN`` draws grids from the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def train_image(
    data: list[Path] = typer.Argument(..., help="Images (png/jpg/webp), folders of them or zip archives; "
                                                "captions from sidecar .txt files or metadata.jsonl."),
    base: str = typer.Option(..., help="Base pipeline: hub id or local folder (SD 1.x/2.x or SDXL, diffusers layout)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder to write (adapter, metrics, samples, chart)."),
    instance_prompt: Optional[str] = typer.Option(None, help="Caption for images without one, with the trigger word."),
    preset: Optional[str] = typer.Option(None, help="'quick', 'balanced' (default) or 'best': sizes every knob you leave out."),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps (default: sized to the dataset)."),
    resolution: Optional[int] = typer.Option(None, help="Training side in pixels (512 for SD 1.x, 1024 for SDXL)."),
    batch_size: Optional[int] = typer.Option(None, help="Images per step."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate."),
    rank: Optional[int] = typer.Option(None, help="LoRA rank."),
    alpha: Optional[float] = typer.Option(None, help="LoRA alpha (default: equal to rank)."),
    lora_dropout: Optional[float] = typer.Option(None, help="Dropout on the LoRA path."),
    train_text_encoder: bool = typer.Option(False, help="Also train LoRA on the text encoder(s)."),
    augment: Optional[float] = typer.Option(None, help="Augmentation strength 0..1 (0 turns it off)."),
    caption_dropout: Optional[float] = typer.Option(None, help="Share of captions dropped (classifier-free guidance)."),
    min_snr_gamma: Optional[float] = typer.Option(None, help="Min-SNR loss weighting gamma."),
    noise_offset: Optional[float] = typer.Option(None, help="Noise offset (0 = off)."),
    val_fraction: Optional[float] = typer.Option(None, help="Share of images held out for validation."),
    eval_every: Optional[int] = typer.Option(None, help="Validate and checkpoint every N steps."),
    patience: Optional[int] = typer.Option(None, help="Stop after N validations without improvement (0: never)."),
    sample_every: Optional[int] = typer.Option(None, help="Draw a sample grid every N steps (0: only at the end)."),
    sample_prompt: Optional[list[str]] = typer.Option(None, "--sample-prompt", help="Prompt for sample grids (repeatable)."),
    sample_steps: Optional[int] = typer.Option(None, help="Denoising steps per sample."),
    precision: Optional[str] = typer.Option(None, help="'auto', 'bf16', 'fp16' or 'fp32'."),
    seed: int = typer.Option(0, help="Random seed (split, augmentation, initialisation, noise, samples)."),
    resume: bool = typer.Option(False, help="Continue from the run folder's last checkpoint."),
) -> None:
    """LoRA-fine-tune a Stable Diffusion or SDXL pipeline on a few images."""
    from trainer.spec import RunSpec

    from .interrupt import cancel_on_ctrl_c
    from .progress import RichProgress

    chosen = dict(
        instance_prompt=instance_prompt, steps=steps, resolution=resolution, batch_size=batch_size, lr=lr, rank=rank,
        alpha=alpha, lora_dropout=lora_dropout, augment=augment, caption_dropout=caption_dropout,
        min_snr_gamma=min_snr_gamma, noise_offset=noise_offset, val_fraction=val_fraction, eval_every=eval_every,
        patience=patience, sample_every=sample_every, sample_prompts=sample_prompt or None, sample_steps=sample_steps,
        precision=precision, train_text_encoder=train_text_encoder or None,
    )
    spec = RunSpec.build(kind="image", data=[str(p) for p in data], base=base, preset=preset, seed=seed,
                         settings=chosen)
    with RichProgress() as progress:
        result = spec.train(out, resume=resume, on_event=progress, cancel=cancel_on_ctrl_c(out))
    typer.echo(f"run folder: {result.run_dir}")
    if result.val_loss is not None:
        typer.echo(f"validation loss {result.val_loss:.4f} at step {result.best_step}, stopped: {result.stop_reason}")
    for name, path in result.adapter_files.items():
        typer.echo(f"{name} LoRA: {path}")
    for path in result.sample_grids:
        typer.echo(f"samples: {path}")
