"""Sharing a trained adapter: ``loracord export RUN [--gguf [--merged] | --merged]`` and ``loracord publish RUN --repo USER/NAME``.

Thin wrappers over ``trainer.publish``, ``trainer.text.gguf`` and ``trainer.image.merged``; their errors are
``LoracordError``s that ``loracord.cli.main`` prints as one line.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    app.command("export")(export_cmd)
    app.command("publish")(publish_cmd)


def export_cmd(
    run: Path = typer.Argument(..., help="A run folder written by `loracord train`."),
    gguf: bool = typer.Option(False, "--gguf", help="Text runs: write the adapter in llama.cpp's GGUF LoRA format "
                                                    "(for llama.cpp, Ollama, LM Studio)."),
    merged: bool = typer.Option(False, "--merged", help="Image runs: the base with the LoRA fused in, as one single-file "
                                                        "checkpoint (AUTOMATIC1111, ComfyUI, Forge). With --gguf (text "
                                                        "runs): the base merged with the adapter as one GGUF, with an "
                                                        "Ollama Modelfile beside it."),
    outtype: str = typer.Option("f16", "--outtype", help="With --gguf --merged: f16 (exact) or q8_0 (half the size)."),
    weight: float = typer.Option(1.0, "--weight", help="With --merged (image runs): the LoRA's strength fused in "
                                                       "(1 = as trained)."),
    fp32: bool = typer.Option(False, "--fp32", help="With --merged (image runs): write float32 weights "
                                                    "(default fp16, half the size)."),
    out: Optional[Path] = typer.Option(None, help="Where to write (default: RUN/export/)."),
) -> None:
    """Write a run's adapter in another format (--gguf: llama.cpp's GGUF LoRA adapter; --gguf --merged: the base
    merged with it, a model of its own for llama.cpp and Ollama; --merged: an image run's single checkpoint)."""
    from trainer.errors import UserError

    if merged and not gguf:
        return _export_merged(run, out or Path(run) / "export", weight=weight, fp32=fp32)
    if not gguf:
        raise UserError("Say which format to export: --gguf (text runs) or --merged (image runs). The adapter itself "
                        "is RUN/adapter/.")
    if merged:
        return _export_merged_gguf(run, out or Path(run) / "export", outtype)
    if outtype != "f16":
        raise UserError("--outtype is for the merged GGUF: add --merged (the adapter GGUF is always float32).")
    from trainer.text.gguf import export_gguf

    written = export_gguf(run, (out or Path(run) / "export"))
    typer.echo(f"{written.path} ({written.tensors} tensors, {written.arch}, LoRA alpha {written.alpha:g})")
    if written.note:
        typer.echo(written.note)


def _export_merged_gguf(run: Path, out: Path, outtype: str) -> None:
    from trainer.text.gguf_merged import export_merged_gguf

    written = export_merged_gguf(run, out, outtype=outtype)
    size = written.path.stat().st_size / 2**20
    typer.echo(f"{written.path} ({written.arch}, {written.outtype}, {size:.0f} MiB; chat template: "
               f"{written.chat_template})\n{written.files[1]}")
    typer.echo(f"Run it: cd {out} && ollama create NAME -f Modelfile && ollama run NAME\n"
               f"    or: llama-cli -m {written.path}")
    if written.note:
        typer.echo(written.note)


def _export_merged(run: Path, out: Path, *, weight: float, fp32: bool) -> None:
    from trainer.image.merged import export_merged_checkpoint

    written = export_merged_checkpoint(run, out, weight=weight, fp32=fp32)
    typer.echo(f"{written.path} ({written.family}, LoRA weight {written.weight:g}, {written.dtype}, "
               f"{written.bytes / 2**20:.1f} MiB; licence {written.licence})")
    if written.note:
        typer.echo(written.note)


def publish_cmd(
    run: Path = typer.Argument(..., help="A run folder written by `loracord train`."),
    repo: str = typer.Option(..., "--repo", help="The Hub repository to publish to, as USER/NAME."),
    private: bool = typer.Option(False, "--private", help="Create the repository as private."),
    with_data: bool = typer.Option(False, "--with-data", help="Publish the training files too, under data/ "
                                                              "(only if everyone whose files they are agrees)."),
) -> None:
    """Publish a run's adapter to the Hugging Face Hub with its model card (needs HF_TOKEN with write access)."""
    from trainer.publish import check_repo_name, publish_folder, stage_run, training_files

    repo = check_repo_name(repo)
    with tempfile.TemporaryDirectory(prefix="loracord-publish-") as tmp:
        folder = stage_run(run, repo, Path(tmp) / "adapter", data=training_files(run) if with_data else ())
        published = publish_folder(folder, repo, private=private)
    typer.echo(f"published {len(published.files)} files to {published.url} (commit {published.commit[:12]})")
