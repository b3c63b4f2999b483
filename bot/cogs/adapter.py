"""``/adapter export`` and ``/adapter publish``: the trained adapter as a zip or a GGUF file, or on the Hub.

The zip is made here (``zip_adapter``), off the event loop: it carries the adapter's files as
others load them, never a path of the worker that trained it, and always a model card. A text
adapter's GGUF file (``format:gguf``, for llama.cpp, Ollama, LM Studio) is converted here too,
in a thread: it is a few megabytes, and the conversion needs numpy and gguf, not torch.
``/adapter publish`` stages the same files with a card naming the Hub repository and uploads
them through ``trainer.publish``, which checks the token's rights first and commits once.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import zipfile
from pathlib import Path
from typing import Optional

import discord
from discord import app_commands
from discord.ext import commands

from trainer import kinds
from trainer.models import loadable_name

from ..client import LoracordBot, actor_of
from ..jobpick import pick_job
from ..services import Refusal


def file_size(size: int) -> str:
    """A file's size the way the attachment's file card under the message draws it (simcord's
    playground: whole MB of 2**20 bytes rounded up from 1 MB, whole KB below), so both agree."""
    if size >= 2**20:
        return f"{math.ceil(size / 2**20)} MB"
    return f"{max(1, math.ceil(size / 1024))} KB"


def zip_adapter(blobs, manifest_hash: str, dest: Path, *, base: str | None = None, metrics: dict | None = None,
                run_files: dict[str, str] | None = None) -> Path:
    """Write the adapter tree as one zip file (off the event loop: it reads every blob).

    The zip never carries a path of the worker that trained it, and always a card. Adapters
    stored before runs wrote their card (``trainer.card``) name their base by that worker's
    folder: in the zip, ``adapter_config.json`` names ``base`` as others load it (a built-in's
    hub id, a local folder's name), and a README.md that is not loracord's card, or holds a host
    path, is replaced by (a missing one added as) the card made from the run's metrics.json and
    samples.json (``run_files``: the job's stored files by name; ``metrics``: the adapter's own
    numbers where metrics.json is missing). The stored blobs stay as they are.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".part")
    files = blobs.tree_files(manifest_hash)
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for rel, blob_hash in sorted(files.items()):
            data = blobs.get_bytes(blob_hash)
            if rel in ("adapter_config.json", "README.md"):
                data = _portable_adapter_file(blobs, rel, data, base=base, metrics=metrics, run_files=run_files)
            archive.writestr(rel, data)
        if "README.md" not in files:  # image adapters stored before runs wrote a card had none
            archive.writestr("README.md", _portable_adapter_file(blobs, "README.md", b"", base=base, metrics=metrics,
                                                                 run_files=run_files))
    shutil.move(tmp, dest)
    return dest


def _portable_adapter_file(blobs, rel: str, data: bytes, *, base: str | None, metrics: dict | None,
                           run_files: dict[str, str] | None) -> bytes:
    """An adapter's config or card as the zip carries it: base named as others load it, no host paths."""
    import json

    import yaml
    from huggingface_hub import ModelCard

    from trainer.card import model_card, portable_adapter_config
    from trainer.hostpaths import scrub_paths

    if rel == "adapter_config.json":
        try:
            config = json.loads(data)
        except ValueError:
            return data  # not peft's file; nothing of ours to fix
        if not isinstance(config, dict) or "base_model_name_or_path" not in config:
            return data
        return json.dumps(portable_adapter_config(config, base or ""), indent=2, sort_keys=True).encode()
    text = data.decode("utf-8", errors="replace")
    try:
        ours = "loracord" in (ModelCard(text, ignore_metadata_errors=True).data.tags or [])
    except (ValueError, yaml.YAMLError):  # a header that does not parse: not a card to keep
        ours = False
    if ours and scrub_paths(text) == text:
        return data  # the run wrote its card already

    def stored(name: str):
        digest = (run_files or {}).get(name)
        return json.loads(blobs.get_bytes(digest)) if digest and blobs.exists(digest) else None

    run_metrics = stored("metrics.json") or {**(metrics or {}), "kind": (metrics or {}).get("kind", kinds.DEFAULT.name)}
    if base:
        run_metrics = {**run_metrics, "base": base}
    return str(model_card(run_metrics, stored("samples.json"))).encode()


def run_folder_from_blobs(blobs, adapter, run_files: dict[str, str] | None, dest: Path) -> Path:
    """A run folder (adapter/ and metrics.json) rebuilt from the blob store, as the trainer's exports read it."""
    import json

    if dest.exists():
        shutil.rmtree(dest)
    blobs.get_tree(adapter.blob_hash, dest / "adapter")
    digest = (run_files or {}).get("metrics.json")
    metrics = json.loads(blobs.get_bytes(digest)) if digest and blobs.exists(digest) else dict(adapter.metrics or {})
    if adapter.base_model:
        metrics["base"] = adapter.base_model
    metrics.setdefault("kind", kinds.DEFAULT.name)
    (dest / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    samples = (run_files or {}).get("samples.json")
    if samples and blobs.exists(samples):
        blobs.get_file(samples, dest / "samples.json")
    return dest


def gguf_adapter(blobs, adapter, run_files, work: Path, dest: Path):
    """The adapter in llama.cpp's GGUF format at ``dest`` (off the event loop)."""
    from trainer.text.gguf import export_gguf

    run = run_folder_from_blobs(blobs, adapter, run_files, work / "run")
    try:
        written = export_gguf(run, work / "gguf", may_load=False)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(written.path, dest)
        return written
    finally:
        shutil.rmtree(work, ignore_errors=True)


def stage_for_hub(blobs, adapter, run_files, repo: str, work: Path, data_items=()) -> Path:
    """The folder ``/adapter publish`` uploads: the adapter, its card naming ``repo``, and the
    dataset's files under data/ when the session's owner chose to share them (``data_items``)."""
    from trainer.publish import stage_run

    run = run_folder_from_blobs(blobs, adapter, run_files, work / "run")
    data = []
    for item in data_items:  # by the names members gave them; the blob store keeps the bytes
        data.append(blobs.get_file(item.blob_hash, work / "data" / str(item.id) / Path(item.filename or "file").name))
    return stage_run(run, repo, work / "staged", data=data)


class AdapterCog(commands.GroupCog, group_name="adapter", group_description="Trained LoRA adapters"):
    def __init__(self, bot: LoracordBot):
        self.bot = bot
        self.svc = bot.services

    async def export(self, interaction: discord.Interaction, job, note: str | None = None) -> None:
        adapter = await self.bot.db(self.svc.jobs.adapter, job.id)
        await interaction.response.defer(thinking=True)
        dest = self.svc.settings.data_dir / "exports" / f"loracord-job-{job.id}-adapter.zip"
        path = await asyncio.to_thread(zip_adapter, self.svc.blobs, adapter.blob_hash, dest, base=adapter.base_model,
                                       metrics=adapter.metrics, run_files=(job.result or {}).get("files"))
        size, limit = path.stat().st_size, interaction.filesize_limit
        library = kinds.recorded((adapter.metrics or {}).get("kind")).library
        base = f"`{loadable_name(adapter.base_model)}`" if adapter.base_model else "its base model"
        picked = f"\nI took {note}; `job:` picks another." if note else ""
        if size <= limit:
            await interaction.followup.send(
                f"📦 Adapter of job #{job.id} ({file_size(size)}), a LoRA for {base}: its README.md shows how to "
                f"load it with {library}.{picked}", file=discord.File(path))
        else:
            # The file stays on the host; its path there is the host's business, not the members'.
            await interaction.followup.send(
                f"📦 The adapter of job #{job.id} is {file_size(size)}, over this channel's "
                f"{file_size(limit)} upload limit. Ask the bot's host for `exports/{path.name}` in the bot's "
                f"data folder (blob tree `{adapter.blob_hash[:12]}…` in the blob store).{picked}")

    async def export_gguf(self, interaction: discord.Interaction, job, note: str | None = None) -> None:
        adapter = await self.bot.db(self.svc.jobs.adapter, job.id)
        if kinds.recorded((adapter.metrics or {}).get("kind")).makes_images:
            raise Refusal("GGUF is for text adapters (llama.cpp runs language models): export this image adapter "
                          "with `format:zip`.")
        await interaction.response.defer(thinking=True)
        exports = self.svc.settings.data_dir / "exports"
        dest = exports / f"loracord-job-{job.id}-adapter.gguf"
        work = exports / f".gguf-job-{job.id}-{interaction.id}"
        written = await asyncio.to_thread(gguf_adapter, self.svc.blobs, adapter, (job.result or {}).get("files"),
                                          work, dest)
        size, limit = dest.stat().st_size, interaction.filesize_limit
        picked = f"\nI took {note}; `job:` picks another." if note else ""
        how = (f"a LoRA in llama.cpp's GGUF format for a `{written.arch}` base: load it over the base in GGUF with "
               f"`llama-cli -m base.gguf --lora {dest.name}`, or `ADAPTER {dest.name}` in an Ollama Modelfile.")
        step = f"\n{written.note}" if written.note else ""
        if size <= limit:
            await interaction.followup.send(f"📦 Adapter of job #{job.id} ({file_size(size)}), {how}{step}{picked}",
                                            file=discord.File(dest))
        else:
            await interaction.followup.send(
                f"📦 The GGUF adapter of job #{job.id} is {file_size(size)}, over this channel's {file_size(limit)} "
                f"upload limit. Ask the bot's host for `exports/{dest.name}` in the bot's data folder.{step}{picked}")

    @app_commands.command(name="export", description="Download a trained adapter: a zip with a model card, or a GGUF file for llama.cpp")
    @app_commands.describe(job="Which run (default: the newest with an adapter)",
                           format="zip: the adapter's files and a card (default); gguf: a text adapter for llama.cpp, Ollama, LM Studio")
    @app_commands.choices(format=[app_commands.Choice(name="zip", value="zip"), app_commands.Choice(name="gguf", value="gguf")])
    async def export_cmd(self, interaction: discord.Interaction, job: Optional[app_commands.Range[int, 1]] = None,
                         format: Optional[app_commands.Choice[str]] = None) -> None:
        session = await self.bot.db(self.svc.sessions.session_here, interaction.channel_id)
        found, note = await self.bot.db(pick_job, self.svc.jobs, session, job, need="adapter")
        if format is not None and format.value == "gguf":
            await self.export_gguf(interaction, found, note)
        else:
            await self.export(interaction, found, note)

    @app_commands.command(name="publish", description="Publish a trained adapter to the Hugging Face Hub with its model card (its starter, the owner or a manager)")
    @app_commands.describe(repo="The Hub repository to publish to, as USER/NAME",
                           private="Create the repository as private (default: public)",
                           job="Which run (default: the newest with an adapter)",
                           with_data="Publish the dataset's files too (the session's owner only)")
    async def publish_cmd(self, interaction: discord.Interaction, repo: str, private: bool = False,
                          job: Optional[app_commands.Range[int, 1]] = None, with_data: bool = False) -> None:
        from trainer.publish import check_repo_name, hub_token, publish_folder

        repo = check_repo_name(repo)
        session = await self.bot.db(self.svc.sessions.session_here, interaction.channel_id)
        found, note = await self.bot.db(pick_job, self.svc.jobs, session, job, need="adapter")
        actor = actor_of(interaction)
        await self.bot.db(self.svc.sessions.require_author_or_manager, session, actor, found.user_id,
                          f"Only the member who started job #{found.id}, the session's owner <@{session.owner_id}> "
                          "or a server manager can publish its adapter.")
        if with_data and actor.user_id != session.owner_id:
            raise Refusal(f"Only the session's owner <@{session.owner_id}> can publish the members' files "
                          "(`with_data`); publish without it, and the card gives counts and kinds only.")
        hub_token()  # no token: say so before anything else
        adapter = await self.bot.db(self.svc.jobs.adapter, found.id)
        items = await self.bot.db(self.svc.data.items, session) if with_data else []
        await interaction.response.defer(thinking=True)
        work = self.svc.settings.data_dir / "exports" / f".publish-job-{found.id}-{interaction.id}"
        try:
            staged = await asyncio.to_thread(stage_for_hub, self.svc.blobs, adapter, (found.result or {}).get("files"),
                                             repo, work, items)
            published = await asyncio.to_thread(publish_folder, staged, repo, private=private)
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)
        picked = f"\nI took {note}; `job:` picks another." if note else ""
        await interaction.followup.send(
            f"🚀 Published the adapter of job #{found.id} to {published.url} ({'private' if private else 'public'}, "
            f"{len(published.files)} files in one commit), with a model card that says how to load it.{picked}")

    async def from_button(self, interaction: discord.Interaction, job_id: int) -> None:
        job = await self.bot.db(self.svc.jobs.job, job_id)
        session = await self.bot.db(self.svc.sessions.get, job.session_id)
        await self.export(interaction, await self.bot.db(self.svc.jobs.job_for, session, job_id, need_adapter=True))


async def setup(bot: LoracordBot) -> None:
    await bot.add_cog(AdapterCog(bot))
