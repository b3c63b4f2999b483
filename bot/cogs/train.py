"""``/train``: start a run (a preset or overrides), quick tries, status and cancel."""

from __future__ import annotations

import io
from typing import Literal, Optional

import discord
from discord import app_commands
from discord.ext import commands

from ..client import LoracordBot, actor_of
from ..jobpick import pick_job
from ..progress import headline, progress_embed, steps_of
from ..sampling import clean_sample, cut, no_pings
from ..report import cv_plan, pick_preset, size_line
from ..views import job_view


def _train_cooldown(interaction: discord.Interaction) -> app_commands.Cooldown | None:
    seconds = interaction.client.config.train_cooldown_s
    return app_commands.Cooldown(1, seconds) if seconds > 0 else None


class TrainCog(commands.GroupCog, group_name="train", group_description="Train a LoRA adapter on the session's data"):
    def __init__(self, bot: LoracordBot):
        self.bot = bot
        self.svc = bot.services

    async def _submit(self, interaction: discord.Interaction, start, intro: str) -> None:
        """Check quickly (refusals stay ephemeral), defer, prepare and queue the job, post its progress message."""
        session = await self.bot.db(self.svc.session_here, interaction.channel_id)
        await self.bot.db(self.svc.check_can_train, session, actor_of(interaction))
        await interaction.response.defer(thinking=True)  # copying the dataset may take a while
        submitted = await self.bot.db(start, session, actor_of(interaction))
        view = await self.bot.job_progress(submitted.job.id, interaction.guild)
        # The pump edits this message as the job goes on: its words and embed come from the same view.
        message = await interaction.followup.send(
            f"{intro} {headline(view)}".strip(), embed=progress_embed(view),
            view=job_view(submitted.job.id, finished=view["job"].finished), wait=True)
        await self.bot.db(self.svc.state.set_progress, submitted.job.id, message.channel.id, message.id, intro)

    @app_commands.command(name="start", description="Train a LoRA adapter on this session's data")
    @app_commands.describe(preset="auto: the one /data report recommends; quick: a short first run; balanced: "
                                  "sized to the data; best: longer, for 100+ examples",
                           steps="Optimizer steps (overrides the preset)", lr="Peak learning rate (overrides the preset)",
                           rank="LoRA rank: capacity of the adapter", seed="Random seed, for a repeatable run",
                           resolution="Image sessions: training and sample side in pixels (default: sized to the "
                                      "base and the worker's device)",
                           sample_steps="Image sessions: denoising steps per sample (default: sized to the device)",
                           text_kind="Text sessions: what the text is, which decides the augmentation (auto: "
                                     "detected, as /data report shows)")
    @app_commands.checks.dynamic_cooldown(_train_cooldown)
    async def start(self, interaction: discord.Interaction,
                    preset: Literal["auto", "quick", "balanced", "best"] = "auto",
                    steps: Optional[app_commands.Range[int, 1, 100_000]] = None,
                    lr: Optional[app_commands.Range[float, 1e-6, 1.0]] = None,
                    rank: Optional[app_commands.Range[int, 1, 256]] = None,
                    seed: Optional[int] = None,
                    resolution: Optional[app_commands.Range[int, 8, 2048]] = None,
                    sample_steps: Optional[app_commands.Range[int, 1, 200]] = None,
                    text_kind: Optional[Literal["auto", "code", "dialogue", "verse", "prose"]] = None) -> None:
        session = await self.bot.db(self.svc.session_here, interaction.channel_id)
        why = ""
        if preset == "auto":
            items = await self.bot.db(self.svc.items, session)
            preset, reason = pick_preset(session.kind, sum(int(i.checks.get("examples", 1)) for i in items))
            why = f"Preset **{preset}**: {reason}."
        overrides = {"steps": steps, "lr": lr, "rank": rank, "seed": seed}
        sizes = {"resolution": resolution, "sample_steps": sample_steps}
        if session.kind == "image":
            if text_kind is not None:
                await self.bot.refuse(interaction, "`text_kind` chooses the augmentation of text runs; this is an "
                                                   "image session. Leave it out.")
                return
            overrides.update(sizes)
            why = f"{why}\n{size_line(await self.bot.db(self.svc.image_sizes, session, overrides))}.".strip()
        elif any(v is not None for v in sizes.values()):
            await self.bot.refuse(interaction, "`resolution` and `sample_steps` size image runs; this is a text "
                                               "session. Leave them out.")
            return
        else:
            overrides["text_kind"] = text_kind
        await self._submit(interaction, lambda s, a: self.svc.start_training(s, a, preset, overrides), why)

    @app_commands.command(name="tune", description="Quick tries: several short runs with different settings, ranked")
    @app_commands.describe(trials="How many settings to try",
                           steps="Steps per try (left out: the tries vary it too, with rate, rank, dropout, "
                                 "augmentation)")
    @app_commands.checks.dynamic_cooldown(_train_cooldown)
    async def tune(self, interaction: discord.Interaction, trials: app_commands.Range[int, 2, 20] = 4,
                   steps: Optional[app_commands.Range[int, 5, 1000]] = None) -> None:
        intro = f"{trials} quick tries, ranked by validation loss (and then by your votes on their samples)."
        session = await self.bot.db(self.svc.session_here, interaction.channel_id)
        if session.kind == "image":
            intro += f"\n{size_line(await self.bot.db(self.svc.image_sizes, session))}."
        items = await self.bot.db(self.svc.items, session)
        plan = cv_plan(session.kind, sum(int(i.checks.get("examples", 1)) for i in items), trials)
        intro += f"\n{plan}" if plan else ""
        await self._submit(interaction, lambda s, a: self.svc.start_tuning(s, a, trials, steps), intro)

    @app_commands.command(name="status", description="Show a job's progress and the best-voted samples")
    @app_commands.describe(job="A job number (default: the newest running one, else the newest with results)")
    async def status(self, interaction: discord.Interaction, job: Optional[app_commands.Range[int, 1]] = None) -> None:
        session = await self.bot.db(self.svc.session_here, interaction.channel_id)
        found, note = await self.bot.db(pick_job, self.svc, session, job, need="status")
        view = await self.bot.job_progress(found.id, interaction.guild)
        embed = progress_embed(view)
        ranking = await self.bot.db(self.svc.ranking, session)
        files = []
        if ranking:
            lines = [await self._best_line(s) for s in ranking]
            embed.add_field(name="Best samples by votes", inline=False, value="\n".join(lines)[:1024])
            best_image = next((s for s in ranking if s.kind == "image"), None)
            if best_image is not None:  # an image is what was generated: show the best-voted one itself
                data = await self.bot.db(self.svc.blob_bytes, best_image.blob_hash)
                files.append(discord.File(io.BytesIO(data), f"sample-{best_image.id}.png"))
                embed.set_image(url=f"attachment://sample-{best_image.id}.png")
        content = (f"Showing {note}; `/train status job:` shows another. " if note else "") + headline(view, live=False)
        await interaction.response.send_message(content, embed=embed, files=files,
                                                allowed_mentions=discord.AllowedMentions.none())

    async def _best_line(self, sample) -> str:
        """One ranked sample: what was generated (a text's opening words; an image shown above), then its prompt."""
        head = f"#{sample.id} (job #{sample.job_id}) score {sample.votes:+d}: "
        prompt = no_pings(sample.prompt or "")
        if sample.kind == "image":  # a grid's "prompt" says its rows and columns; a /sample image has its prompt
            what = f"a training {prompt}" if sample.seed is None else f"an image of “{prompt}”, seed {sample.seed}"
            return cut(f"{head}{what}", 200)
        text = (await self.bot.db(self.svc.blob_bytes, sample.blob_hash)).decode("utf-8", "replace")
        wrote = cut(" ".join(clean_sample(text).split()), 110) or "(the model wrote nothing)"
        return cut(f"{head}“{wrote}”" + (f" (prompt: {prompt})" if prompt else ""), 200)

    @app_commands.command(name="cancel", description="Cancel a queued or running job (its starter, owner or manager)")
    @app_commands.describe(job="A job number (default: the session's newest active one)")
    async def cancel(self, interaction: discord.Interaction, job: Optional[app_commands.Range[int, 1]] = None) -> None:
        session = await self.bot.db(self.svc.session_here, interaction.channel_id)
        cancelled = await self.bot.db(self.svc.cancel, session, actor_of(interaction), job)
        self.bot.dirty.add(cancelled.id)
        view = await self.bot.job_progress(cancelled.id, interaction.guild)
        if cancelled.finished:
            state = "cancelled"
        elif steps_of(view)[0]:
            state = "stopping at its next step (its last checkpoint is kept)"
        else:  # still loading: the worker stops it at once, there is nothing to keep
            state = "stopping now: it had not started training, so there is nothing to keep"
        await interaction.response.send_message(f"Job #{cancelled.id}: {state}. **Next:** `/train start` when ready.")

    async def from_button(self, interaction: discord.Interaction, job_id: int) -> None:
        job = await self.bot.db(self.svc.job, job_id)
        session = await self.bot.db(self.svc.db.get_session, job.session_id)
        cancelled = await self.bot.db(self.svc.cancel, session, actor_of(interaction), job_id)
        self.bot.dirty.add(job_id)
        await interaction.response.send_message(f"Cancelling job #{cancelled.id}…", ephemeral=True)


async def setup(bot: LoracordBot) -> None:
    await bot.add_cog(TrainCog(bot))
