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
import time
import zipfile
from pathlib import Path
from typing import Optional

import discord
from discord import app_commands
from discord.ext import commands

from trainer import export, kinds
from trainer.models import loadable_name

from ..client import LoracordBot, actor_of
from ..display import scrub_paths
from ..jobpick import pick_job
from ..sampling import no_pings
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
    for name in metrics.get("samples") or []:  # an image run's grids, which its card shows
        digest = (run_files or {}).get(name) if isinstance(name, str) else None
        target = (dest / name).resolve()
        if digest and blobs.exists(digest) and target.is_relative_to(dest.resolve()):  # names stay inside the run
            blobs.get_file(digest, target)
    return dest


def export_here(blobs, adapter, run_files, fmt, options: dict, work: Path, prefix: Path):
    """A small format made in the bot (off the event loop): the returned object and its files as
    ``(name, local path, bytes)``, moved to ``PREFIX-NAME``, the main one first."""
    run = run_folder_from_blobs(blobs, adapter, run_files, work / "run")
    try:
        written = fmt.export(run, work / "out", may_load=False, **options)
        files = []
        for path in export.written_files(written):
            target = prefix.with_name(f"{prefix.name}-{path.name}")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(path, target)
            files.append((path.name, target, target.stat().st_size))
        return written, files
    finally:
        shutil.rmtree(work, ignore_errors=True)


def how_to_use(fmt, file: str, details: dict) -> str:
    """The format's line on how to use ``file``, filled from what its function returned (``details``);
    its description where the line names a detail the function did not return."""
    try:
        return fmt.how.format(file=file, **details) if fmt.how else f"{fmt.description}."
    except (KeyError, IndexError):
        return f"{fmt.description}."


def tree_bytes(blobs, manifest_hash: str) -> int:
    """The size of a stored folder (an adapter): what a format that exports the adapter alone estimates from."""
    return sum(blobs.size(blob) for blob in blobs.tree_files(manifest_hash).values())


def local_copy(blobs, where, dest: Path) -> Path:
    """A file to attach: a local one as it is, a blob copied to ``dest``."""
    return where if isinstance(where, Path) else blobs.get_file(where, dest)


def export_link(blobs, config, blob_hash: str) -> str:
    """Where a member gets a blob too large to post: a signed link where the store signs them, else
    the host's public URL of the store (``export_base_url``) and the blob's path, else the file's
    place on the host, for the host to hand out."""
    expires = int(config.export_link_hours * 3600)
    signed = blobs.signed_url(blob_hash, expires)
    if signed:
        return f"<{signed}> (valid until <t:{int(time.time()) + expires}:f>)"
    if config.export_base_url:
        return f"<{config.export_base_url.rstrip('/')}/{blobs.relative_path(blob_hash)}>"
    return f"on the bot's host at `{blobs.path(blob_hash)}`: ask the host for it"


def stage_for_hub(blobs, adapter, run_files, repo: str, work: Path, data_items=()) -> Path:
    """The folder ``/adapter publish`` uploads: the adapter, its card naming ``repo``, and the
    dataset's files under data/ when the session's owner chose to share them (``data_items``)."""
    from trainer.publish import stage_run

    run = run_folder_from_blobs(blobs, adapter, run_files, work / "run")
    data = []
    for item in data_items:  # by the names members gave them; the blob store keeps the bytes
        data.append(blobs.get_file(item.blob_hash, work / "data" / str(item.id) / Path(item.filename or "file").name))
    return stage_run(run, repo, work / "staged", data=data)


FORMAT_CHOICES = [app_commands.Choice(name="zip", value="zip")] + [
    app_commands.Choice(name=name, value=name) for name in export.FORMATS]
FORMAT_HELP = ("zip: the adapter and a card (default); " + ", ".join(export.FORMATS)
               + ": made for other tools (see /adapter export's answer)")[:100]


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

    async def export_as(self, interaction: discord.Interaction, job, fmt, options: str | None,
                        note: str | None = None) -> None:
        """``/adapter export`` in a format of ``trainer.export.FORMATS``: a small one made here, a big
        one (it needs the base) as an ``export`` job on a worker, posted by ``post_export``."""
        adapter = await self.bot.db(self.svc.jobs.adapter, job.id)
        kind = kinds.recorded((adapter.metrics or {}).get("kind"))
        if not fmt.fits(kind):
            others = "".join(f" or `format:{f.name}`" for f in export.fitting(kind))
            raise Refusal(f"`format:{fmt.name}` ({fmt.description}) does not fit job #{job.id}, a run of kind "
                          f"{kind.name}: export it with `format:zip`{others}.")
        chosen = fmt.parse_options(options)
        if fmt.big:
            return await self.export_on_worker(interaction, job, adapter, kind, fmt, chosen, note)
        await interaction.response.defer(thinking=True)
        exports = self.svc.settings.data_dir / "exports"
        work = exports / f".{fmt.name}-job-{job.id}-{interaction.id}"
        written, files = await asyncio.to_thread(export_here, self.svc.blobs, adapter, (job.result or {}).get("files"),
                                                 fmt, chosen, work, exports / f"loracord-job-{job.id}")
        picked = f"\nI took {note}; `job:` picks another." if note else ""
        await self.post_files(interaction.followup.send, job.id, fmt, files, getattr(written, "note", "") or "",
                              export.details(written), interaction.filesize_limit, picked)

    async def export_on_worker(self, interaction: discord.Interaction, job, adapter, kind, fmt, options: dict,
                               note: str | None) -> None:
        """Queue an ``export`` job, refused up front where the server's export quota says no."""
        why = await asyncio.to_thread(fmt.refusal, {**(adapter.metrics or {}), "base": adapter.base_model})
        if why:
            raise Refusal(f"`format:{fmt.name}` of job #{job.id} is refused: {why}")
        quota_mb = await self.bot.db(self.svc.server.limit, interaction.guild_id, "max_export_mb")
        quota = int(quota_mb * 2**20)
        adapter_bytes = await asyncio.to_thread(tree_bytes, self.svc.blobs, adapter.blob_hash)
        estimate = fmt.estimated_bytes({**(adapter.metrics or {}), "base": adapter.base_model}, adapter_bytes,
                                       **options)
        if estimate is not None and estimate > quota:
            raise Refusal(f"`format:{fmt.name}` of job #{job.id} would be about {file_size(estimate)}, over this "
                          f"server's export quota of {quota_mb:g} MiB: a server manager can raise it with "
                          f"`/server settings max_export_mb:`.")
        actor = actor_of(interaction)
        busy = await self.bot.db(self.svc.jobs.find, unfinished=True)
        if any(j.kind == "export" and j.config.get("requested_by") == actor.user_id for j in busy):
            raise Refusal("You have an export on its way already: I post it here when it is ready; ask again then.")
        config = {"source_job": job.id, "format": fmt.name, "options": options, "max_bytes": quota,
                  "kind": kind.name, "base": adapter.base_model, "adapter": adapter.blob_hash,
                  "metrics": (job.result or {}).get("files", {}).get("metrics.json"),
                  "channel": interaction.channel_id, "requested_by": actor.user_id,
                  "upload_limit": interaction.filesize_limit}
        submitted = await self.bot.db(self.svc.jobs.submit, "export", config)
        picked = f"\nI took {note}; `job:` picks another." if note else ""
        ahead = f", {submitted.position} job(s) ahead of it" if submitted.position else ""
        await interaction.response.send_message(
            f"📦 Exporting job #{job.id} as `format:{fmt.name}` ({fmt.description}) on a worker (export job "
            f"#{submitted.job.id}{ahead}): I post it here when it is ready.{picked}")

    async def post_export(self, job) -> None:
        """Post a finished ``export`` job's files into the thread it was asked in, or why there are none."""
        asked = job.config
        channel = self.bot.get_channel(asked["channel"]) or await self.bot.fetch_channel(asked["channel"])
        pings = discord.AllowedMentions(users=True, everyone=False, roles=False)
        # a format taken out of the table since the job was queued is still posted, by its name
        fmt = export.FORMATS.get(asked["format"]) or export.ExportFormat(asked["format"], "", f"a {asked['format']} file")

        async def send(text, **kwargs):
            return await channel.send(f"<@{asked.get('requested_by')}> {text}", allowed_mentions=pings, **kwargs)

        if job.status != "done":
            why = "was cancelled" if job.status == "cancelled" else \
                f"failed: {no_pings(scrub_paths(job.error or 'no reason given'))}"
            await send(f"the export of job #{asked.get('source_job')} as `format:{fmt.name}` {why}")
            return
        made = job.result.get("export") or {}
        files = [(row["name"], row["blob"], row["bytes"]) for row in made.get("files", [])]
        limit = asked.get("upload_limit") or getattr(getattr(channel, "guild", None), "filesize_limit", 10 * 2**20)
        await self.post_files(send, asked.get("source_job"), fmt, files, made.get("note", ""),
                              made.get("details") or {}, limit, "")

    async def post_files(self, send, source_job: int, fmt, files, note: str, details: dict, limit: int,
                         picked: str) -> None:
        """Post an export's files (``(name, blob hash or local path, bytes)``, the main one first) when
        they fit under the upload ``limit``; else a link to each in the blob store (``export_link``)."""
        prefix = "" if fmt.names_kept else f"loracord-job-{source_job}-"  # a Modelfile's FROM names its GGUF
        named = [(f"{prefix}{name}", where, size) for name, where, size in files]
        how = how_to_use(fmt, named[0][0], details)
        step = f"\n{note}" if note else ""
        total = sum(size for _, _, size in named)
        if total <= limit:
            exports = self.svc.settings.data_dir / "exports"
            # a folder per source job: two exports' files of the same name never meet
            paths = [await asyncio.to_thread(local_copy, self.svc.blobs, where, exports / f"job-{source_job}" / name)
                     for name, where, _ in named]
            await send(f"📦 Adapter of job #{source_job} ({file_size(total)}), {how}{step}{picked}",
                       files=[discord.File(p) for p in paths])
            return
        links = []
        for name, where, size in named:
            blob = where if isinstance(where, str) else await asyncio.to_thread(self.svc.blobs.put_file, where)
            links.append(f"`{name}` ({file_size(size)}): {export_link(self.svc.blobs, self.bot.config, blob)}")
        await send(f"📦 The export of job #{source_job} as `format:{fmt.name}` is {file_size(total)}, over this "
                   f"channel's {file_size(limit)} upload limit; {how}\n" + "\n".join(links) + f"{step}{picked}")

    @app_commands.command(name="export", description="Download a trained adapter: a zip with a model card, or a GGUF file for llama.cpp")
    @app_commands.describe(job="Which run (default: the newest with an adapter)",
                           format=FORMAT_HELP,
                           options="The format's options as name=value (e.g. outtype=q8_0); the format's refusal lists them")
    @app_commands.choices(format=FORMAT_CHOICES)
    async def export_cmd(self, interaction: discord.Interaction, job: Optional[app_commands.Range[int, 1]] = None,
                         format: Optional[app_commands.Choice[str]] = None,
                         options: Optional[app_commands.Range[str, 1, 200]] = None) -> None:
        session = await self.bot.db(self.svc.sessions.session_here, interaction.channel_id)
        found, note = await self.bot.db(pick_job, self.svc.jobs, session, job, need="adapter")
        if format is None or format.value == "zip":
            if options:
                raise Refusal("`format:zip` takes no options: leave `options` out.")
            await self.export(interaction, found, note)
        else:
            await self.export_as(interaction, found, export.get(format.value), options, note)

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
