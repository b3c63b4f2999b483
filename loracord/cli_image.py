"""``loracord train image``: LoRA-fine-tune a Stable Diffusion 1.x/2.x or SDXL pipeline on a few images.

Registered in ``loracord.registry``; its options are the image config's settings
(``loracord.options``). ``loracord sample RUN`` draws grids from the result; ``loracord caption
DATA`` writes sidecar captions for a folder of images first.
"""

from __future__ import annotations

from pathlib import Path

import typer

from trainer.image.captioner import DEFAULT_MAX_TOKENS, DEFAULT_MODEL
from trainer.kinds import IMAGE

from .options import train_command


def _print_result(result) -> None:
    typer.echo(f"run folder: {result.run_dir}")
    if result.val_loss is not None:
        typer.echo(f"validation loss {result.val_loss:.4f} at step {result.best_step}, stopped: {result.stop_reason}")
    for name, path in result.adapter_files.items():
        typer.echo(f"{name} LoRA: {path}")
    for path in result.sample_grids:
        typer.echo(f"samples: {path}")


train_image = train_command(IMAGE, "LoRA-fine-tune a Stable Diffusion or SDXL pipeline on a few images.", _print_result)


def caption_cmd(
    data: Path = typer.Argument(..., help="A folder of images; a caption .txt is written beside each image without one."),
    model: str = typer.Option(DEFAULT_MODEL, help="Captioning model: a hub id in the local cache or a folder "
                                                  "(loaded natively by transformers, safetensors)."),
    trigger: str = typer.Option("", help="Trigger word put first in every caption (e.g. sks)."),
    max_tokens: int = typer.Option(DEFAULT_MAX_TOKENS, min=8, help="Cut captions to this many text-encoder tokens "
                                                                   "(77: SD and SDXL; 256: FLUX.1 and SD 3.5)."),
    overwrite: bool = typer.Option(False, help="Caption every image, replacing the sidecar captions already there."),
) -> None:
    """Caption a folder's images with a vision-language model, as sidecar .txt files for `loracord train image`."""
    from trainer.errors import DataError
    from trainer.image.captioner import caption_folder

    if not data.is_dir():
        raise DataError(f"{data} is not a folder of images")
    written = caption_folder(data, model, trigger=trigger, max_tokens=max_tokens, overwrite=overwrite)
    for path, caption in written.items():
        typer.echo(f"{path}: {caption}")
    typer.echo(f"{len(written)} caption(s) written" + ("" if overwrite else "; images with a caption kept theirs"))
