"""The ``loracord`` command line: a thin layer over ``trainer``, ``storage`` and ``bot``.

Each command parses its options, builds a validated config, and calls one library function.
Known errors (``trainer.errors.LoracordError``) become one red line and exit code 2; anything
else is a bug and keeps its traceback. Heavy libraries are imported inside the commands so
that ``loracord --help`` stays fast.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Optional

import typer

from trainer import kinds
from trainer.errors import LoracordError
from trainer.kinds import TEXT

from . import registry
from .options import train_command

app = typer.Typer(help="loracord: LoRA fine-tuning on small data, from Discord or the command line.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
train_app = typer.Typer(help="Train a LoRA adapter on a dataset.", no_args_is_help=True)
app.add_typer(train_app, name="train")


def main() -> None:
    # peft still asks models `is_gradient_checkpointing`, which transformers 5 deprecates: nothing for a user to do.
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    try:
        app()
    except LoracordError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)


def _print_text_result(result) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]run folder:[/] {result.run_dir}")
    if result.metrics.get("text_kind"):
        how = "declared" if result.metrics.get("text_kind_declared") else "detected"
        console.print(f"kind of text: {result.metrics['text_kind']} ({how}: {result.metrics['text_kind_reason']})",
                      markup=False)
    if result.val_loss is not None:
        console.print(f"validation loss {result.val_loss:.4f} (perplexity {result.val_perplexity:.2f}), "
                      f"stopped: {result.stop_reason}")
    table = Table("prompt", "before", "after", show_lines=True)
    for row in result.samples:
        table.add_row(row["prompt"], row["before"], row["after"])
    console.print(table)


@app.command("sample")
def sample_cmd(
    run: Path = typer.Argument(..., help="A run folder written by `loracord train`."),
    prompt: list[str] = typer.Option(..., "--prompt", "-p", help="Prompt to complete (repeatable)."),
    seed: int = typer.Option(0, help="Sampling seed."),
    max_new_tokens: int = typer.Option(60, help="Text runs: tokens to generate."),
    count: int = typer.Option(1, help="Samples per prompt."),
    aspect: Optional[str] = typer.Option(None, help="Image runs: the images' aspect as W:H (3:4, 16:9); "
                                                   "default: the run's sample aspect, else square."),
) -> None:
    """Generate from a trained adapter (text completions, or an image grid for image runs)."""
    from trainer.rundir import RunDir

    kind = kinds.get(RunDir.open(run).read_metrics().get("kind", kinds.DEFAULT.name))
    if kind.makes_images:
        from trainer.image.sample import sample_run  # noqa: PLC0415 (image stack is heavy)

        for path in sample_run(run, prompts=prompt, seed=seed, count=count, aspect=aspect):
            typer.echo(str(path))
        return
    if aspect:
        raise typer.BadParameter(f"{run} is a {kind.name} run; --aspect is for image runs.", param_hint="--aspect")
    from trainer.text.sample import sample_run as sample_text_run

    for row in sample_text_run(run, prompt, seed=seed, max_new_tokens=max_new_tokens, count=count):
        typer.echo(f"--- {row['prompt']}\n{row['text']}")


@app.command("eval")
def eval_cmd(
    args: list[str] = typer.Argument(..., help="RUN DATA, or just DATA together with --base."),
    base: Optional[str] = typer.Option(None, help="Evaluate this base model instead of a run's adapter."),
    seq_len: int = typer.Option(256, help="Tokens per evaluated window."),
) -> None:
    """Print validation loss and perplexity of an adapter (RUN DATA) or a base model (--base M DATA)."""
    from trainer.text.evaluate import evaluate

    if base is None and len(args) != 2:
        raise typer.BadParameter("give RUN DATA, or --base MODEL DATA")
    if base is not None and len(args) != 1:
        raise typer.BadParameter("with --base give only DATA")
    run, data = (None, args[0]) if base is not None else (args[0], args[1])
    result = evaluate(data=data, run=run, base=base, seq_len=seq_len)
    typer.echo(f"loss {result['loss']:.4f}  perplexity {result['perplexity']:.2f}  tokens {result['tokens']}")


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("runs/demo"), help="Run folder for the demo."),
    steps: int = typer.Option(60, help="Optimizer steps."),
) -> None:
    """Train the built-in model on speeches from Macbeth and print samples before and after."""
    from trainer.text.demo import run_demo
    from .progress import RichProgress

    with RichProgress() as progress:
        result = run_demo(out, steps=steps, on_event=progress)
    _print_text_result(result)


# ``loracord train text``: its options are the text config's settings (loracord.options).
train_app.command(TEXT.name)(train_command(TEXT, "LoRA-fine-tune a language model on a few texts.", _print_text_result))

# Commands from other parts (image training, queue, bot).
registry.register(app, train_app)
