"""``/adapter export``: the trained adapter as a zip, posted when it fits the upload limit."""

from __future__ import annotations

import asyncio
import math
from typing import Optional

import discord
from discord import app_commands
from discord.ext import commands

from trainer.models import loadable_name

from ..client import LoracordBot
from ..jobpick import pick_job
from ..services import zip_adapter


def file_size(size: int) -> str:
    """A file's size the way the attachment's file card under the message draws it (simcord's
    playground: whole MB of 2**20 bytes rounded up from 1 MB, whole KB below), so both agree."""
    if size >= 2**20:
        return f"{math.ceil(size / 2**20)} MB"
    return f"{max(1, math.ceil(size / 1024))} KB"


class AdapterCog(commands.GroupCog, group_name="adapter", group_description="Trained LoRA adapters"):
    def __init__(self, bot: LoracordBot):
        self.bot = bot
        self.svc = bot.services

    async def export(self, interaction: discord.Interaction, job, note: str | None = None) -> None:
        adapter = await self.bot.db(self.svc.db.adapter_for_job, job.id)
        await interaction.response.defer(thinking=True)
        dest = self.svc.settings.data_dir / "exports" / f"loracord-job-{job.id}-adapter.zip"
        path = await asyncio.to_thread(zip_adapter, self.svc.blobs, adapter.blob_hash, dest, base=adapter.base_model,
                                       metrics=adapter.metrics, run_files=(job.result or {}).get("files"))
        size, limit = path.stat().st_size, interaction.filesize_limit
        library = "diffusers" if (adapter.metrics or {}).get("kind") == "image" else "peft"
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

    @app_commands.command(name="export", description="Download a trained adapter: a zip of its files and a model card that says how to load it")
    @app_commands.describe(job="Which run (default: the newest with an adapter)")
    async def export_cmd(self, interaction: discord.Interaction, job: Optional[app_commands.Range[int, 1]] = None) -> None:
        session = await self.bot.db(self.svc.session_here, interaction.channel_id)
        found, note = await self.bot.db(pick_job, self.svc, session, job, need="adapter")
        await self.export(interaction, found, note)

    async def from_button(self, interaction: discord.Interaction, job_id: int) -> None:
        job = await self.bot.db(self.svc.job, job_id)
        session = await self.bot.db(self.svc.db.get_session, job.session_id)
        await self.export(interaction, await self.bot.db(self.svc.job_for, session, job_id, need_adapter=True))


async def setup(bot: LoracordBot) -> None:
    await bot.add_cog(AdapterCog(bot))
