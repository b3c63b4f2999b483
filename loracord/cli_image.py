"""``loracord train image``: LoRA-fine-tune a Stable Diffusion 1.x/2.x or SDXL pipeline on a few images.

Registered in ``loracord.registry``; its options are the image config's settings
(``loracord.options``). ``loracord sample RUN`` draws grids from the result.
"""

from __future__ import annotations

import typer

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
