"""The loracord bot: owns the command tree, the queue service and the pump that reports jobs.

``LoracordBot`` loads one cog per feature, registers the persistent buttons, syncs the slash
commands in ``setup_hook`` (to the development guild when one is set: instant) and starts the
pump: every ``pump_s`` it ticks the queue (worker reports in, jobs dispatched), edits progress
messages (throttled), posts samples, charts and next steps, and posts what sample and export jobs made.

Threads: the event loop only awaits. Database and queue calls run on one dedicated thread
(``await bot.db(fn, ...)``); checking uploads, reading datasets and zipping adapters run on
``asyncio.to_thread``; training and sampling are jobs on the queue's workers.
"""

from __future__ import annotations

import asyncio
import io
import logging
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import discord
from discord import app_commands
from discord.ext import commands, tasks

from storage.settings import Settings
from trainer import export, kinds
from trainer.errors import UserError
from trainer.spec import RunSpec

from .config import BotSettings
from .display import scrub_paths
from .progress import Throttle, headline, outcome, progress_embed
from .report import cv_line, scores_line
from .sampling import no_pings, sample_message
from .services import Actor, Services
from .views import CompareButton, JobButton, VoteButton, compare_view, job_view, vote_view
from .wording import reword_for_channels

log = logging.getLogger("loracord.bot")

COGS = ("bot.cogs.session", "bot.cogs.server", "bot.cogs.data", "bot.cogs.train", "bot.cogs.sample",
        "bot.cogs.adapter", "bot.cogs.help")
NEXT_AFTER = {
    "done": "**Next:** vote on the samples with 👍/👎, try your own prompt with `/sample`, download the "
            "adapter with `/adapter export` ({formats}), or share it on the Hugging Face Hub with `/adapter publish`.",
    "failed": "**Next:** check the data with `/data report`, fix what it names, then `/train start` again.",
    "cancelled": "**Next:** `/train start` runs it again when you are ready.",
}

COMPARE_NEXT = ("**Or compare the tries:** `/train compare` asks which of two tries' samples is closer to what you "
                "want; `/train tune steer:True` then lets your answers choose the next round's first tries.")


def next_after(job) -> str:
    """What a member can do once a job ends; a finished run names the downloads that fit its kind."""
    # the run's own record first, else what the job row says (an export or sample job: the default kind)
    kind = kinds.recorded((job.result or {}).get("metrics", {}).get("kind") or RunSpec.kind_of(job.kind, job.config))
    # the zip of an image run holds a kohya single file too (trainer.card); other formats come from the table
    zipped = ("a zip for diffusers, and a single file for ComfyUI and other UIs" if kind.makes_images else
              "a zip for transformers and peft")
    formats = zipped + "".join(f", or `format:{fmt.name}`: {fmt.description}" for fmt in export.fitting(kind))
    return NEXT_AFTER[job.status].format(formats=formats)


def refusal_text(error: BaseException) -> str | None:
    """What to tell a member about an expected refusal, or None for a real error."""
    original = getattr(error, "original", error)
    if isinstance(original, UserError):
        return str(original)
    if isinstance(error, app_commands.CommandOnCooldown):
        return f"Slow down: you can use this again in {error.retry_after:.0f} s."
    if isinstance(error, app_commands.MissingPermissions):
        return "You need the " + ", ".join(error.missing_permissions).replace("_", " ") + " permission for this."
    if isinstance(error, app_commands.NoPrivateMessage):
        return "This command works inside a server only."
    if isinstance(error, app_commands.CheckFailure):
        return "You cannot use this command here."
    return None


class RefusingCommand(app_commands.Command):
    """A slash command that answers expected refusals itself (ephemerally) instead of raising them.

    Refusals are part of the conversation, not failures: they never reach the tree's error
    handler, which is left for real bugs. ``LoracordBot.setup_hook`` gives every command this class.
    """

    async def _invoke_with_namespace(self, interaction, namespace):
        try:
            return await super()._invoke_with_namespace(interaction, namespace)
        except app_commands.AppCommandError as error:
            text = refusal_text(error)
            if text is None:
                raise
            interaction.command_failed = True
            await interaction.client.refuse(interaction, text)


def actor_of(interaction: discord.Interaction) -> Actor:
    perms = interaction.permissions
    return Actor(interaction.user.id, manager=bool(perms and (perms.manage_guild or perms.administrator)))


class LoracordBot(commands.Bot):
    def __init__(self, settings: Settings | None = None, bot_settings: BotSettings | None = None, *,
                 embedded_worker: bool | None = None):
        self.config = bot_settings or BotSettings()
        intents = discord.Intents.default()
        intents.message_content = self.config.message_content
        # Nothing the bot posts pings @everyone, @here or a role; messages that mention members say so themselves.
        super().__init__(command_prefix=commands.when_mentioned, intents=intents, help_command=None,
                         allowed_mentions=discord.AllowedMentions(everyone=False, roles=False, users=True))
        self.services = Services(settings or Settings(), self.config, embedded_worker=embedded_worker)
        self._db_thread = ThreadPoolExecutor(1, thread_name_prefix="loracord-db")
        self.throttle = Throttle(self.config.progress_edit_s)
        self.dirty: set[int] = set()
        self._names: dict[int, str] = {}  # member id -> display name, for text that cannot mention
        self.tree.on_error = self.on_app_command_error

    # ---- plumbing
    async def db(self, fn, /, *args, **kwargs):
        """Run a call of the services (``bot.services``) on the database thread and return its result."""
        return await asyncio.get_running_loop().run_in_executor(self._db_thread, partial(fn, *args, **kwargs))

    async def setup_hook(self) -> None:
        await self.db(self.services.start)
        self.add_dynamic_items(JobButton, VoteButton, CompareButton)
        for extension in COGS:
            await self.load_extension(extension)
        for command in self.tree.walk_commands():
            if type(command) is app_commands.Command:
                command.__class__ = RefusingCommand
        if not self.config.session_threads:
            reword_for_channels(self.tree)  # sessions live in channels here: no description points to a thread
        if self.config.dev_guild_id:
            guild = discord.Object(self.config.dev_guild_id)
            self.tree.copy_global_to(guild=guild)
            await self.tree.sync(guild=guild)
        else:
            await self.tree.sync()
        self.dirty |= {p.job_id for p in await self.db(lambda: self.services.state.open_progress())}
        self.pump_loop.change_interval(seconds=self.config.pump_s)
        self.pump_loop.start()

    async def close(self) -> None:
        self.pump_loop.cancel()
        try:
            await self.db(self.services.stop)
        finally:
            await super().close()

    async def member_name(self, guild: discord.Guild | None, user_id: int) -> str:
        """A member's display name, for text where a mention does not render (embed footers):
        never their raw id. Looked up once per member, from the cache or Discord."""
        if user_id in self._names:
            return self._names[user_id]
        member = guild.get_member(user_id) if guild else None
        if member is None and guild is not None:
            try:
                member = await guild.fetch_member(user_id)
            except discord.HTTPException:
                member = None
        user = member or self.get_user(user_id)
        if user is None:
            return "a member"
        self._names[user_id] = user.display_name
        return user.display_name

    async def job_progress(self, job_id: int, guild: discord.Guild | None) -> dict:
        """``Jobs.progress`` (``bot.services.jobs``) with the starter's display name (``view["starter"]``)."""
        view = await self.db(self.services.jobs.progress, job_id)
        view["starter"] = await self.member_name(guild, view["job"].user_id)
        return view

    # ---- answering
    async def refuse(self, interaction: discord.Interaction, text: str) -> None:
        """An ephemeral message saying why not (and what to do)."""
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True)
        else:
            await interaction.response.send_message(text, ephemeral=True)

    async def on_app_command_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        """The global handler: known errors become ephemeral answers; anything else is a bug, logged."""
        original = getattr(error, "original", error)
        text = refusal_text(error)
        if text is not None:
            await self.refuse(interaction, text)
        else:
            log.exception("command %s failed", interaction.command and interaction.command.qualified_name,
                          exc_info=original)
            await self.refuse(interaction, "Something broke on our side; it is logged. Try again in a moment.")
            raise original

    # ---- the pump
    @tasks.loop(seconds=1.0)
    async def pump_loop(self) -> None:
        await self.pump()

    @pump_loop.before_loop
    async def _before_pump(self) -> None:
        await self.wait_until_ready()

    async def pump(self) -> None:
        """One round: tick the queue, refresh progress messages, post what is new."""
        result = await self.db(self.services.jobs.tick)
        self.dirty |= set(result.dispatched) | set(result.started) | set(result.finished) | {e.job_id for e in result.events}
        for job_id in sorted(self.dirty):
            await self.refresh_job(job_id)
        for job_id in result.finished:
            await self.post_sampling(job_id)
            await self.post_captions(job_id)
            await self.post_export(job_id)

    async def refresh_job(self, job_id: int) -> None:
        state = self.services.state
        message = await self.db(state.progress, job_id)
        if message is None:
            self.dirty.discard(job_id)
            return
        job = await self.db(self.services.jobs.job, job_id)
        if not self.throttle.allow(job_id, final=job.finished):
            return  # stays dirty: the next allowed pump edits it
        self.dirty.discard(job_id)
        channel = self.get_channel(message.channel_id) or await self.fetch_channel(message.channel_id)
        view = await self.job_progress(job_id, getattr(channel, "guild", None))
        job = view["job"]
        adapter = await self.db(self.services.jobs.adapter, job_id)
        await channel.get_partial_message(message.message_id).edit(
            content=f"{message.intro} {headline(view)}".strip(), embed=progress_embed(view),
            view=job_view(job_id, finished=job.finished, has_adapter=adapter is not None))
        await self.post_new_samples(channel, job_id)
        if job.finished and not message.final:
            await self.db(state.mark_final, job_id)
            await self.post_results(channel, view)

    async def post_results(self, channel, view: dict) -> None:
        job = view["job"]
        chart = job.result.get("files", {}).get("loss.png")
        if chart:
            data = await self.db(self.services.samples.blob_bytes, chart)
            await channel.send(f"Loss curve of job #{job.id}", file=discord.File(io.BytesIO(data), f"loss-job-{job.id}.png"))
        chosen = cv_line(job.result.get("metrics") or {}) if job.kind == "tune" else None  # tiny sets: how sure
        scores = scores_line(job.result.get("metrics") or {})  # beside the samples just posted
        compare = COMPARE_NEXT if job.kind == "tune" and job.status == "done" else None
        await channel.send(f"{outcome(view)}\n" + "".join(f"{line}\n" for line in (chosen, scores) if line)
                           + next_after(job) + (f"\n{compare}" if compare else ""))

    async def post_new_samples(self, channel, job_id: int) -> None:
        # a trial's own samples are shown in pairs by /train compare, not one by one
        samples = [s for s in await self.db(self.services.samples.of_job, job_id) if s.trial is None]
        posted = await self.db(self.services.state.posted_samples, [s.id for s in samples])
        for sample in samples:
            if sample.id not in posted:
                await self.send_sample(channel, sample)
                await self.db(self.services.state.mark_posted, sample.id)

    async def send_sample(self, channel, sample) -> None:
        data = await self.db(self.services.samples.blob_bytes, sample.blob_hash)
        source = f"job #{sample.job_id}" + (f", trial #{sample.trial}" if sample.trial is not None else "")
        if sample.seed is None:  # a training grid: its "prompt" says its prompts (rows) and seeds (columns)
            head = f"**Sample #{sample.id}** ({source}) · {sample.prompt or 'grid'}"
        else:
            head = f"**Sample #{sample.id}** ({source}, seed {sample.seed}) · prompt: {sample.prompt or '–'}"
        # What a model wrote is posted cleaned (no control characters, no pings, cut to fit) and pings nobody.
        quiet = discord.AllowedMentions.none()
        scores = scores_line({"kind": sample.kind, **sample.scores}) if sample.scores else None  # this sample's own
        if kinds.recorded(sample.kind).makes_images:
            await channel.send(sample_message(head, tail=scores),
                               file=discord.File(io.BytesIO(data), f"sample-{sample.id}.png"),
                               view=vote_view(sample.id), allowed_mentions=quiet)
        else:
            text = data.decode("utf-8", "replace")
            await channel.send(sample_message(head, text, scores), view=vote_view(sample.id), allowed_mentions=quiet)

    async def post_sampling(self, job_id: int) -> None:
        """Post what a finished ``sample`` job made into the thread it was asked in (other jobs: nothing)."""
        job = await self.db(self.services.jobs.job, job_id)
        if job.kind != "sample" or not job.config.get("channel"):
            return
        asked = job.config
        channel = self.get_channel(asked["channel"]) or await self.fetch_channel(asked["channel"])
        source = f"job #{asked.get('source_job')}" + (f", trial #{asked['trial']}" if asked.get("trial") is not None else "")
        if job.status != "done":
            why = "was cancelled" if job.status == "cancelled" else f"failed: {no_pings(scrub_paths(job.error or 'no reason given'))}"
            await channel.send(f"<@{asked.get('requested_by')}> sampling {source} {why}",
                               allowed_mentions=discord.AllowedMentions(users=True, everyone=False, roles=False))
            return
        for sample_id in job.result.get("samples", []):
            sample = await self.db(self.services.samples.get, sample_id)
            await self.send_sample(channel, sample)
            await self.db(self.services.state.mark_posted, sample.id)

    async def post_captions(self, job_id: int) -> None:
        """Store what a finished ``caption`` job wrote and say so in its thread (``/data``'s; other jobs: nothing)."""
        job = await self.db(self.services.jobs.job, job_id)
        if job.kind == "caption" and job.config.get("channel"):
            await self.get_cog("DataCog").post_captions(job)

    async def post_export(self, job_id: int) -> None:
        """Post what a finished ``export`` job made into the thread it was asked in (other jobs: nothing)."""
        job = await self.db(self.services.jobs.job, job_id)
        if job.kind == "export" and job.config.get("channel"):
            await self.get_cog("AdapterCog").post_export(job)

    # ---- buttons (see bot.views)
    async def on_job_button(self, interaction: discord.Interaction, action: str, job_id: int) -> None:
        cog = self.get_cog("TrainCog") if action == "cancel" else self.get_cog("SampleCog") if action == "sample" \
            else self.get_cog("AdapterCog")
        await cog.from_button(interaction, job_id)

    async def on_compare(self, interaction: discord.Interaction, comparison_id: int, choice: str) -> None:
        pair = await self.db(self.services.comparisons.answer, comparison_id, actor_of(interaction), choice)
        await interaction.response.edit_message(view=compare_view(pair.id, pair.a, pair.b))

    async def on_vote(self, interaction: discord.Interaction, sample_id: int, value: int) -> None:
        sample = await self.db(self.services.samples.vote, sample_id, actor_of(interaction), value)
        await interaction.response.edit_message(view=vote_view(sample.id, score=sample.votes))
