"""``/sample``: generate from a trained adapter with a member's own prompt, as a job on a worker; results come back with vote buttons."""

from __future__ import annotations

import random
from typing import Optional

import discord
from discord import app_commands
from discord.ext import commands

from ..client import LoracordBot, actor_of
from ..jobpick import pick_job
from ..sampling import no_pings

DEFAULT_PROMPTS = {"text": "Once upon a time", "image": "a photo of sks"}


class SampleCog(commands.Cog):
    def __init__(self, bot: LoracordBot):
        self.bot = bot
        self.svc = bot.services

    async def _start(self, interaction: discord.Interaction, session, job, prompt: str, count: int, seed: int,
                     trial: int | None = None, note: str | None = None) -> None:
        """Queue a sample job (it runs on a worker, see ``storage.jobkinds.sample``) and say so; the bot
        posts the samples into this thread when the job ends (``LoracordBot.post_sampling``)."""
        await self.bot.db(self.svc.request_sample, session, actor_of(interaction), job, prompt=prompt,
                          count=count, seed=seed, trial=trial, channel_id=interaction.channel_id)
        source = f"trial #{trial} of job #{job.id}" if trial is not None else f"job #{job.id}"
        picked = f"\nI took {note}; `job:` picks another." if note else ""
        await interaction.response.send_message(
            f"🎲 Sampling {count} from {source} (seed {seed}) for “{no_pings(prompt)}”: a worker runs it beside "
            f"any training (sampling has a lane of its own); the results appear here with 👍/👎 buttons for "
            f"everyone in the session.{picked}",
            allowed_mentions=discord.AllowedMentions.none())

    @app_commands.command(name="sample", description="Generate from a trained adapter with your prompt")
    @app_commands.describe(prompt="What to generate from", count="How many samples",
                           seed="Random seed (same seed, same result)",
                           job="Which run (default: the newest with an adapter)",
                           trial="Quick tries only: which trial of that job (default: its best run)")
    @app_commands.checks.cooldown(1, 5.0)
    async def sample(self, interaction: discord.Interaction, prompt: app_commands.Range[str, 1, 500],
                     count: app_commands.Range[int, 1, 4] = 1, seed: app_commands.Range[int, 0, 2**31 - 1] = 0,
                     job: Optional[app_commands.Range[int, 1]] = None,
                     trial: Optional[app_commands.Range[int, 0]] = None) -> None:
        session = await self.bot.db(self.svc.session_here, interaction.channel_id)
        found, note = await self.bot.db(pick_job, self.svc, session, job, need="adapter")
        await self._start(interaction, session, found, prompt, count, seed, trial, note)

    async def from_button(self, interaction: discord.Interaction, job_id: int) -> None:
        job = await self.bot.db(self.svc.job, job_id)
        session = await self.bot.db(self.svc.db.get_session, job.session_id)
        found = await self.bot.db(self.svc.job_for, session, job_id, need_adapter=True)
        samples = await self.bot.db(self.svc.samples, job_id)
        prompt = next((s.prompt for s in samples if s.prompt), DEFAULT_PROMPTS[session.kind])
        await self._start(interaction, session, found, prompt, 1, random.randrange(1, 2**31))


async def setup(bot: LoracordBot) -> None:
    await bot.add_cog(SampleCog(bot))
