"""``/train``: start a run (a preset or overrides), quick tries, status and cancel.

The rules of a run live here: who may start one and how many (``check_can_train``), the run
spec it is built into (``run_spec``), and who may cancel it (``cancel_job``). They run on the
bot's database thread and ask the shared services (``bot.services``) for what is stored.
"""

from __future__ import annotations

import io
import time
from typing import Literal, Optional

import discord
from discord import app_commands
from discord.ext import commands

from storage.db import Comparison, Job, Session
from trainer import kinds
from trainer.errors import ConfigError
from trainer.scores import steering_score
from trainer.spec import RunSpec, TuneOptions
from trainer.steer import describe

from ..client import LoracordBot, actor_of
from ..ingest import session_words
from ..jobpick import pick_job
from ..options import Setting, descriptions
from ..progress import headline, progress_embed, steps_of
from ..sampling import clean_sample, cut, no_pings
from ..report import cv_plan, pick_preset, scores_line, size_line
from ..services import Actor, Refusal, Services, Submitted
from ..views import compare_view, job_view

DAY_S = 86_400


# ---- the rules of a run (on the bot's database thread)
def check_quota(svc: Services, session: Session, actor: Actor) -> None:
    """Refuse a run over the member's or the server's limits: jobs waiting, runs per day."""
    limit_of = svc.server.limit
    mine = svc.jobs.find(user_id=actor.user_id, unfinished=True)
    limit = int(limit_of(session.guild_id, "max_pending_jobs_per_user"))
    if len(mine) >= limit:
        ids = ", ".join(f"#{j.id}" for j in mine)
        raise Refusal(f"You already have {len(mine)} job(s) queued or running ({ids}); the limit is {limit}. "
                      f"Wait for one to finish or `/train cancel` it.")
    since = time.time() - DAY_S
    today = [j for j in svc.jobs.find(user_id=actor.user_id) if (j.queued_at or 0) > since]
    per_day = int(limit_of(session.guild_id, "runs_per_day"))
    if len(today) >= per_day:
        raise Refusal(f"You have started {len(today)} runs in the last 24 hours, this server's limit is {per_day}. "
                      f"Try again tomorrow, or `/sample` the adapters you have.")
    guild_today = [j for j in svc.jobs.find(guild_id=session.guild_id) if (j.queued_at or 0) > since]
    guild_per_day = int(limit_of(session.guild_id, "guild_runs_per_day"))
    if len(guild_today) >= guild_per_day:
        raise Refusal(f"This server has started {len(guild_today)} runs in the last 24 hours (limit "
                      f"{guild_per_day}). Try again tomorrow.")


def check_can_train(svc: Services, session: Session, actor: Actor) -> None:
    """The quick checks before a run is prepared: permission, quotas, enough data."""
    svc.sessions.require(session, actor, "train")
    check_quota(svc, session, actor)
    have, kind = svc.data.examples(svc.data.items(session)), kinds.get(session.kind)
    need = kind.min_examples  # the trainer's own minimum (trainer.kinds)
    if have < need:
        raise Refusal(f"The dataset has {have} {kind.units}; training needs at least {need}. "
                      f"Add data with `/data add`, then check it with `/data report`.")


def run_spec(svc: Services, session: Session, preset: str | None, chosen: dict, *,
             tune: TuneOptions | None = None) -> RunSpec:
    """The run spec of a run (or search) on the session's data: built and checked once, here.

    ``chosen`` holds the member's options (``None``: not chosen). They and the server's
    defaults for the kind are the spec's ``settings``; the trainer sizes every other knob
    from ``preset``, and a search varies the searched knobs among those.
    """
    chosen = {k: v for k, v in chosen.items() if v is not None}
    seed = chosen.pop("seed", 0)  # explicit, so samples and the run record which seed made them
    config = svc.config
    settings = {**config.train_defaults(session.kind), **svc.server.run_defaults(session), **chosen}
    if kinds.get(session.kind).sized_to_device:  # sizes the server or session chose; the worker sizes the rest
        settings.update(svc.sizes.image_sizes(session, chosen).chosen)
    if config.train_threads:
        settings.setdefault("threads", config.train_threads)
    scorer = svc.server.settings(session.guild_id).get("image_scorer")  # the server's choice (/server settings)
    if scorer and "scorer" in kinds.get(session.kind).settings:
        settings.setdefault("scorer", scorer)
    try:
        return RunSpec.build(kind=session.kind, base=session.base_model, preset=preset, seed=seed,
                             settings=settings, dataset=svc.data.manifest(session), tune=tune)
    except ConfigError as exc:
        problems = str(exc).removeprefix("invalid training settings: ")
        raise Refusal(f"Those settings do not work: {problems}. Change them and try again.") from None


def start_training(svc: Services, session: Session, actor: Actor, preset: str, overrides: dict) -> Submitted:
    check_can_train(svc, session, actor)
    spec = run_spec(svc, session, preset, overrides)
    return svc.jobs.submit(spec.job_kind, spec.to_job(), session=session, actor=actor)


def start_tuning(svc: Services, session: Session, actor: Actor, trials: int, steps: int | None,
                 steer: list[dict] = ()) -> Submitted:
    """Queue quick tries: short runs from the ``quick`` preset that vary what the member left open;
    ``steer`` (members' comparisons, ``Comparisons.preferences``) chooses the first tries."""
    check_can_train(svc, session, actor)
    comparisons = [{k: c[k] for k in ("better", "worse", "by") if k in c} for c in steer]  # "by": scores decided it
    spec = run_spec(svc, session, "quick", {"steps": steps}, tune=TuneOptions(trials=trials, steer=comparisons))
    return svc.jobs.submit(spec.job_kind, spec.to_job(), session=session, actor=actor)


def steering_line(preferences: list[dict], by_scores: list[dict] | None = None, kind: str | None = None) -> str:
    """What a steered round tells the session: how many answers, from whom, and which way they leaned;
    with ``by_scores`` (the session counts scores), how many pairs members left open the scores decided."""
    counted = ""
    if by_scores is not None:
        _, _, better = steering_score(kinds.get(kind).makes_images)
        counted = (f" Scores decided {len(by_scores)} pair(s) of tries members left open ({better} counted as "
                   f"closer)." if by_scores else " No pair members left open had scores on both tries to decide it.")
    if not preferences:
        if by_scores:
            return ("No comparisons are answered in this session yet: the first tries are what a preferential "
                    "model of the scores proposes." + counted)
        return ("No comparisons are answered in this session yet, so this round is not steered "
                "(`/train compare` asks members which tries are closer)." + counted)
    members = len({p["user"] for p in preferences})
    leaned = describe(preferences)
    return (f"Steered by {len(preferences)} answers from {members} member(s)"
            + (f": {leaned}" if leaned else ", which leaned no clear way on any setting")
            + ". The first tries are what a preferential model of those answers proposes." + counted)


def tune_job_to_compare(svc: Services, session: Session, actor: Actor, job_id: int | None) -> Job:
    """The quick tries a member asks to compare: the one named, else the session's newest finished one."""
    svc.sessions.require(session, actor, "vote")
    if session.status != "open":
        raise Refusal(f"This session is {session.status}: it asks no more comparisons.")
    if job_id is not None:
        return svc.jobs.job_for(session, job_id)
    done = [j for j in svc.jobs.find(session=session, status="done") if j.kind == "tune"]
    if not done:
        raise Refusal("No finished quick tries here yet: run `/train tune`, then compare its tries.")
    return done[0]


def cancel_job(svc: Services, session: Session, actor: Actor, job_id: int | None) -> Job:
    """Cancel the named job of the session, else its newest unfinished one (its starter, the owner or a manager)."""
    if job_id is None:
        active = svc.jobs.find(session=session, unfinished=True)
        if not active:
            raise Refusal("Nothing is queued or running in this session.")
        job = active[0]
    else:
        job = svc.jobs.job_for(session, job_id)
    svc.sessions.require_author_or_manager(session, actor, job.user_id,
                                           f"Job #{job.id} was started by <@{job.user_id}>: only they, the session "
                                           f"owner or a server manager can cancel it.")
    if job.finished:
        raise Refusal(f"Job #{job.id} has already ended ({job.status}).")
    return svc.jobs.cancel(job.id)


def _train_cooldown(interaction: discord.Interaction) -> app_commands.Cooldown | None:
    seconds = interaction.client.config.train_cooldown_s
    return app_commands.Cooldown(1, seconds) if seconds > 0 else None


class TrainCog(commands.GroupCog, group_name="train", group_description="Train a LoRA adapter on the session's data"):
    def __init__(self, bot: LoracordBot):
        self.bot = bot
        self.svc = bot.services

    async def _submit(self, interaction: discord.Interaction, start, intro: str) -> None:
        """Check quickly (refusals stay ephemeral), defer, prepare and queue the job, post its progress message."""
        session = await self.bot.db(self.svc.sessions.session_here, interaction.channel_id)
        await self.bot.db(check_can_train, self.svc, session, actor_of(interaction))
        await interaction.response.defer(thinking=True)  # copying the dataset may take a while
        submitted = await self.bot.db(start, session, actor_of(interaction))
        view = await self.bot.job_progress(submitted.job.id, interaction.guild)
        # The pump edits this message as the job goes on: its words and embed come from the same view.
        message = await interaction.followup.send(
            f"{intro} {headline(view)}".strip(), embed=progress_embed(view),
            view=job_view(submitted.job.id, finished=view["job"].finished), wait=True)
        await self.bot.db(self.svc.state.set_progress, submitted.job.id, message.channel.id, message.id, intro)

    @app_commands.command(name="start", description="Train a LoRA adapter on this session's data")
    # The settings' types, ranges and words are the trainer's declaration of each (bot.options).
    @app_commands.describe(preset="auto: as /data report picks; quick: a short first run; balanced: sized to "
                                  "the data; best: for 100+",
                           **descriptions("steps", "lr", "rank", "seed", "resolution", "sample_steps", "text_kind",
                                          "lr_scheduler", "dora", "quantize", "crop"))
    @app_commands.checks.dynamic_cooldown(_train_cooldown)
    async def start(self, interaction: discord.Interaction,
                    preset: Literal["auto", "quick", "balanced", "best"] = "auto",
                    steps: Setting["steps"] = None, lr: Setting["lr"] = None, rank: Setting["rank"] = None,
                    seed: Setting["seed"] = None, resolution: Setting["resolution"] = None,
                    sample_steps: Setting["sample_steps"] = None, text_kind: Setting["text_kind"] = None,
                    lr_scheduler: Setting["lr_scheduler"] = None, dora: Setting["dora"] = None,
                    quantize: Setting["quantize"] = None, crop: Setting["crop"] = None) -> None:
        session = await self.bot.db(self.svc.sessions.session_here, interaction.channel_id)
        why = ""
        if preset == "auto":
            items = await self.bot.db(self.svc.data.items, session)
            preset, reason = pick_preset(session.kind, self.svc.data.examples(items))
            why = f"Preset **{preset}**: {reason}."
        chosen = {"steps": steps, "lr": lr, "rank": rank, "seed": seed, "resolution": resolution,
                  "sample_steps": sample_steps, "text_kind": text_kind, "lr_scheduler": lr_scheduler, "dora": dora,
                  "quantize": quantize, "crop": crop}
        kind = kinds.get(session.kind)
        elsewhere = [name for name, value in chosen.items() if value is not None and name not in kind.settings]
        if elsewhere:  # a setting of another kind's runs
            refusal = kinds.taking(elsewhere[0])[0].refused_elsewhere
            await self.bot.refuse(interaction, refusal.format(session=session_words(kind.name)))
            return
        if kind.sized_to_device:
            why = f"{why}\n{size_line(await self.bot.db(self.svc.sizes.image_sizes, session, chosen))}.".strip()
        await self._submit(interaction, lambda s, a: start_training(self.svc, s, a, preset, chosen), why)

    @app_commands.command(name="tune", description="Quick tries: several short runs with different settings, ranked")
    @app_commands.describe(trials="How many settings to try",
                           steps="Steps per try (left out: the tries vary it too, with rate, rank, dropout, "
                                 "augmentation)",
                           steer="Let members' answers to /train compare choose the first tries",
                           scores="With steer: the tries' scores decide the pairs members left open")
    @app_commands.checks.dynamic_cooldown(_train_cooldown)
    # Narrower than the declarations (TuneOptions.trials, steps) on purpose: quick tries from Discord stay quick.
    async def tune(self, interaction: discord.Interaction, trials: app_commands.Range[int, 2, 20] = 4,
                   steps: Optional[app_commands.Range[int, 5, 1000]] = None, steer: bool = False,
                   scores: bool = False) -> None:
        intro = f"{trials} quick tries, ranked by validation loss (and then by your votes on their samples)."
        if scores and not steer:
            raise Refusal("`scores:True` counts the tries' scores in a steered round: add `steer:True`.")
        session = await self.bot.db(self.svc.sessions.session_here, interaction.channel_id)
        preferences = await self.bot.db(self.svc.comparisons.preferences, session) if steer else []
        by_scores = await self.bot.db(self.svc.comparisons.decided_by_scores, session) if scores else None
        intro += f"\n{steering_line(preferences, by_scores, session.kind)}" if steer else ""
        preferences = preferences + (by_scores or [])
        if kinds.get(session.kind).sized_to_device:
            intro += f"\n{size_line(await self.bot.db(self.svc.sizes.image_sizes, session))}."
        items = await self.bot.db(self.svc.data.items, session)
        plan = cv_plan(session.kind, self.svc.data.examples(items), trials)
        intro += f"\n{plan}" if plan else ""
        await self._submit(interaction, lambda s, a: start_tuning(self.svc, s, a, trials, steps, preferences), intro)

    @app_commands.command(name="compare", description="Ask which of two quick tries' samples is closer to what you want")
    @app_commands.describe(job="A quick-tries job (default: the newest finished one)", pairs="How many pairs to post")
    async def compare(self, interaction: discord.Interaction, job: Optional[app_commands.Range[int, 1]] = None,
                      pairs: app_commands.Range[int, 1, 5] = 3) -> None:
        session = await self.bot.db(self.svc.sessions.session_here, interaction.channel_id)
        found = await self.bot.db(tune_job_to_compare, self.svc, session, actor_of(interaction), job)
        made = await self.bot.db(self.svc.comparisons.pairs, session, found, pairs)
        await interaction.response.send_message(
            f"{len(made)} pair(s) from the tries of job #{found.id}: each member's answer counts once per pair. "
            f"**Next:** `/train tune steer:True` lets your answers choose the next round's first tries.")
        for pair in made:
            await self._post_pair(interaction.channel, pair)

    async def _post_pair(self, channel, pair: Comparison) -> None:
        """One pair: both samples (texts in the message, images attached) and the two answer buttons."""
        a, b = [await self.bot.db(self.svc.samples.get, i) for i in (pair.sample_a, pair.sample_b)]
        data = [await self.bot.db(self.svc.samples.blob_bytes, s.blob_hash) for s in (a, b)]
        head = no_pings(f"**Which is closer to what you want?** Job #{pair.job_id}, prompt: {cut(pair.prompt or '–', 200)}"
                        + (f", seed {pair.seed}" if pair.seed is not None else ""))
        quiet = discord.AllowedMentions.none()
        if kinds.recorded(a.kind).makes_images:
            files = [discord.File(io.BytesIO(d), f"{side}-try-{t}.png")
                     for side, t, d in (("A", pair.trial_a, data[0]), ("B", pair.trial_b, data[1]))]
            await channel.send(f"{head}\n**A**: try #{pair.trial_a} · **B**: try #{pair.trial_b}", files=files,
                               view=compare_view(pair.id, pair.a, pair.b), allowed_mentions=quiet)
            return
        texts = [cut(clean_sample(d.decode("utf-8", "replace")) or "(the model wrote nothing)", 800) for d in data]
        await channel.send(f"{head}\n**A** (try #{pair.trial_a}):\n```\n{texts[0]}\n```\n"
                           f"**B** (try #{pair.trial_b}):\n```\n{texts[1]}\n```",
                           view=compare_view(pair.id, pair.a, pair.b), allowed_mentions=quiet)

    @app_commands.command(name="status", description="Show a job's progress and the best-voted samples")
    @app_commands.describe(job="A job number (default: the newest running one, else the newest with results)")
    async def status(self, interaction: discord.Interaction, job: Optional[app_commands.Range[int, 1]] = None) -> None:
        session = await self.bot.db(self.svc.sessions.session_here, interaction.channel_id)
        found, note = await self.bot.db(pick_job, self.svc.jobs, session, job, need="status")
        view = await self.bot.job_progress(found.id, interaction.guild)
        embed = progress_embed(view)
        scores = scores_line(found.result.get("metrics") or {}) if found.finished else None
        if scores:
            embed.add_field(name="Scores", inline=False, value=scores.removeprefix("**Scores:** ")[:1024])
        ranking = await self.bot.db(self.svc.samples.ranking, session)
        files = []
        if ranking:
            lines = [await self._best_line(s) for s in ranking]
            embed.add_field(name="Best samples by votes", inline=False, value="\n".join(lines)[:1024])
            best_image = next((s for s in ranking if kinds.recorded(s.kind).makes_images), None)
            if best_image is not None:  # an image is what was generated: show the best-voted one itself
                data = await self.bot.db(self.svc.samples.blob_bytes, best_image.blob_hash)
                files.append(discord.File(io.BytesIO(data), f"sample-{best_image.id}.png"))
                embed.set_image(url=f"attachment://sample-{best_image.id}.png")
        content = (f"Showing {note}; `/train status job:` shows another. " if note else "") + headline(view, live=False)
        await interaction.response.send_message(content, embed=embed, files=files,
                                                allowed_mentions=discord.AllowedMentions.none())

    async def _best_line(self, sample) -> str:
        """One ranked sample: what was generated (a text's opening words; an image shown above), then its prompt."""
        head = f"#{sample.id} (job #{sample.job_id}) score {sample.votes:+d}: "
        prompt = no_pings(sample.prompt or "")
        # an image's "prompt": a grid's says its rows and columns; a /sample image has its prompt
        if kinds.recorded(sample.kind).makes_images:  # a sample of no recorded kind is a text
            what = f"a training {prompt}" if sample.seed is None else f"an image of “{prompt}”, seed {sample.seed}"
            return cut(f"{head}{what}", 200)
        text = (await self.bot.db(self.svc.samples.blob_bytes, sample.blob_hash)).decode("utf-8", "replace")
        wrote = cut(" ".join(clean_sample(text).split()), 110) or "(the model wrote nothing)"
        return cut(f"{head}“{wrote}”" + (f" (prompt: {prompt})" if prompt else ""), 200)

    @app_commands.command(name="cancel", description="Cancel a queued or running job (its starter, owner or manager)")
    @app_commands.describe(job="A job number (default: the session's newest active one)")
    async def cancel(self, interaction: discord.Interaction, job: Optional[app_commands.Range[int, 1]] = None) -> None:
        session = await self.bot.db(self.svc.sessions.session_here, interaction.channel_id)
        cancelled = await self.bot.db(cancel_job, self.svc, session, actor_of(interaction), job)
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
        job = await self.bot.db(self.svc.jobs.job, job_id)
        session = await self.bot.db(self.svc.sessions.get, job.session_id)
        cancelled = await self.bot.db(cancel_job, self.svc, session, actor_of(interaction), job_id)
        self.bot.dirty.add(job_id)
        await interaction.response.send_message(f"Cancelling job #{cancelled.id}…", ephemeral=True)


async def setup(bot: LoracordBot) -> None:
    await bot.add_cog(TrainCog(bot))
