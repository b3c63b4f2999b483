"""``/sample``: generate from a trained adapter with a member's own prompt, as a job on a worker; results come back with vote buttons."""

from __future__ import annotations

import random
from typing import Optional

import discord
from discord import app_commands
from discord.ext import commands

from storage.db import Job, Session
from trainer import kinds

from ..client import LoracordBot, actor_of
from ..jobpick import pick_job
from ..sampling import no_pings
from ..services import Actor, Jobs, Refusal, Services, Submitted

MAX_SAMPLINGS_PER_USER = 2  # sample jobs one member may have waiting or running


# ---- the rules of a sampling (on the bot's database thread): a ``sample`` job on any worker (storage.jobkinds.sample)
def sample_source(jobs: Jobs, job: Job, trial: int | None = None) -> tuple[str, str | None]:
    """The blobs to sample from: (adapter tree, metrics.json or None) of a finished run, or of
    one trial of quick tries when ``trial`` is given."""
    if trial is None:
        adapter = jobs.adapter(job.id)
        if adapter is None:
            raise Refusal(f"Job #{job.id} has no adapter ({job.status}); pick a finished run, or wait for this one.")
        return adapter.blob_hash, job.result.get("files", {}).get("metrics.json")
    if job.kind != "tune":
        raise Refusal(f"Job #{job.id} is a training run, not quick tries: leave out `trial`.")
    numbers = {t.number: t for t in jobs.trials(job.id)}
    if trial not in numbers:
        known = ", ".join(f"#{n}" for n in sorted(numbers)) or "none recorded yet"
        raise Refusal(f"Job #{job.id} has no trial #{trial} (its trials: {known}).")
    found = numbers[trial]
    if found.adapter is None:
        why = (f"it was {found.status}" if found.status != "complete"
               else "its search ran before trial adapters were kept")
        raise Refusal(f"Trial #{trial} of job #{job.id} has no adapter to sample ({why}). "
                      f"Sample the job's best run by leaving out `trial`.")
    return found.adapter, found.metrics


def request_sample(svc: Services, session: Session, actor: Actor, job: Job, *, prompt: str, count: int, seed: int,
                   trial: int | None = None, channel_id: int | None = None, aspect: str | None = None) -> Submitted:
    """Queue a ``sample`` job for ``job``'s adapter (or one trial's); the bot posts its samples
    into ``channel_id`` when it ends. It is not one of the session's runs (no session, member or
    server on its row: it neither counts against run limits nor waits for them) and goes ahead
    of waiting runs on a lane of its own (``storage.jobkinds``)."""
    svc.sessions.require(session, actor, "contribute")
    aspect = sample_aspect(session, aspect)
    adapter, metrics = sample_source(svc.jobs, job, trial)
    waiting = [j for j in svc.jobs.find(unfinished=True)
               if j.kind == "sample" and j.config.get("requested_by") == actor.user_id]
    if len(waiting) >= MAX_SAMPLINGS_PER_USER:
        raise Refusal(f"{len(waiting)} samplings of yours are waiting already; ask again once they are posted.")
    config = {"source_job": job.id, "trial": trial, "kind": session.kind, "base": session.base_model,
              "adapter": adapter, "metrics": metrics, "prompts": [prompt], "count": count, "seed": seed,
              "requested_by": actor.user_id, "session": session.id, "channel": channel_id,
              **({"aspect": aspect} if aspect else {}), **scoring(svc, session, job)}
    return svc.jobs.submit("sample", config)


def scoring(svc: Services, session: Session, job: Job) -> dict:
    """What the sample job scores its samples with (storage.jobkinds.sample): the run's dataset (its
    held-out images, or the texts a sample may copy) and, for images, the server's scoring model
    (none: scores unavailable)."""
    found = {"dataset": job.config["dataset"]} if job.config.get("dataset") else {}
    if kinds.get(session.kind).makes_images:
        found["scorer"] = svc.server.settings(session.guild_id).get("image_scorer")
    return found


def sample_aspect(session: Session, aspect: str | None) -> str | None:
    """``aspect`` as W:H when this session's samples are images; a ``Refusal`` saying why otherwise."""
    if not aspect:
        return None
    if not kinds.get(session.kind).makes_images:
        raise Refusal("`aspect` shapes image samples; this session's samples are texts. Leave it out.")
    from trainer.image.sizes import parse_aspect

    try:
        w, h = parse_aspect(aspect)
    except ValueError as exc:
        raise Refusal(f"{exc}.") from None
    return f"{w}:{h}"


class SampleCog(commands.Cog):
    def __init__(self, bot: LoracordBot):
        self.bot = bot
        self.svc = bot.services

    async def _start(self, interaction: discord.Interaction, session, job, prompt: str, count: int, seed: int,
                     trial: int | None = None, note: str | None = None, aspect: str | None = None) -> None:
        """Queue a sample job (it runs on a worker, see ``storage.jobkinds.sample``) and say so; the bot
        posts the samples into this thread when the job ends (``LoracordBot.post_sampling``)."""
        await self.bot.db(request_sample, self.svc, session, actor_of(interaction), job, prompt=prompt,
                          count=count, seed=seed, trial=trial, channel_id=interaction.channel_id, aspect=aspect)
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
                           trial="Quick tries only: which trial of that job (default: its best run)",
                           aspect="Image sessions: the images' shape as W:H, e.g. 3:4 or 16:9 (default: the run's)")
    @app_commands.checks.cooldown(1, 5.0)
    async def sample(self, interaction: discord.Interaction, prompt: app_commands.Range[str, 1, 500],
                     count: app_commands.Range[int, 1, 4] = 1, seed: app_commands.Range[int, 0, 2**31 - 1] = 0,
                     job: Optional[app_commands.Range[int, 1]] = None,
                     trial: Optional[app_commands.Range[int, 0]] = None,
                     aspect: Optional[app_commands.Range[str, 3, 11]] = None) -> None:
        session = await self.bot.db(self.svc.sessions.session_here, interaction.channel_id)
        found, note = await self.bot.db(pick_job, self.svc.jobs, session, job, need="adapter")
        await self._start(interaction, session, found, prompt, count, seed, trial, note, aspect)

    async def from_button(self, interaction: discord.Interaction, job_id: int) -> None:
        job = await self.bot.db(self.svc.jobs.job, job_id)
        session = await self.bot.db(self.svc.sessions.get, job.session_id)
        found = await self.bot.db(self.svc.jobs.job_for, session, job_id, need_adapter=True)
        samples = await self.bot.db(self.svc.samples.of_job, job_id)
        prompt = next((s.prompt for s in samples if s.prompt), kinds.get(session.kind).sample_prompt)
        await self._start(interaction, session, found, prompt, 1, random.randrange(1, 2**31))


async def setup(bot: LoracordBot) -> None:
    await bot.add_cog(SampleCog(bot))
