"""What the cogs call: sessions, permissions, quotas, datasets, jobs, samples and adapters.

No Discord objects and no SQL here: callers pass ids and an ``Actor`` (who is asking and
whether they manage the server), and get back storage rows or small dataclasses. Every
refusal is a ``Refusal`` whose message says why and what to do; the bot shows it ephemerally.

All methods are synchronous and touch one SQLite connection, so the bot runs them on one
dedicated thread (``LoracordBot.db``): the event loop never waits on the database or the queue.
Heavy work (checking uploads, reading a whole dataset, zipping adapters) is in ``ingest`` and
``report`` and runs on other threads.
"""

from __future__ import annotations

import os
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from storage.db import ACTIVE, WAITING, Database, DatasetItem, Job, Session
from storage.queue import JobQueue, TickResult
from storage.service import QueueService
from storage.settings import Settings
from trainer.errors import ConfigError, UserError
from trainer.image.sizes import ImageFamily, guess_family, resolution_problem, rough_step_seconds, sizes_for
from trainer.limits import MIN_EXAMPLES
from trainer.spec import DataItem, DatasetManifest, RunSpec, TuneOptions

from .config import BotSettings
from .display import model_name
from .ingest import CheckResult
from .state import BotState

KINDS = ("text", "image")
DAY_S = 86_400
MAX_SAMPLINGS_PER_USER = 2  # sample jobs one member may have waiting or running



class Refusal(UserError):
    """The member may not do this now; the message says why and what to do instead."""


@dataclass(frozen=True)
class Actor:
    """Who is asking: their user id, and whether they may manage the server (Manage Server)."""
    user_id: int
    manager: bool = False


SIZE_KEYS = ("resolution", "batch_size", "sample_steps")
"""Image run sizes a server, a session or a run may choose (``trainer.image.sizes`` sizes the rest)."""


@dataclass(frozen=True)
class ImageSizes:
    """The size an image session's next run will use, where it was chosen, and a rough step time."""
    family: ImageFamily
    device: str
    resolution: int
    batch_size: int
    sample_steps: int
    chosen: dict  # the sizes somebody chose (run > session > server > bot defaults); the rest are the device's
    step_s: float


@dataclass
class Submitted:
    job: Job
    position: int | None


class Services:
    def __init__(self, settings: Settings, bot_settings: BotSettings, *, embedded_worker: bool | None = None):
        self.settings = settings
        self.config = bot_settings
        self.service = QueueService(settings, embedded_worker=embedded_worker)
        self.queue: JobQueue | None = None
        self.db: Database | None = None
        self.state: BotState | None = None

    # ---- lifecycle
    def start(self) -> None:
        if self.config.hf_token:
            os.environ.setdefault("HF_TOKEN", self.config.hf_token)  # the embedded worker inherits it
        self.queue = self.service.start()
        self.db = self.queue.db
        self.state = BotState(self.settings.data_dir / "bot.db")

    def stop(self) -> None:
        if self.state is not None:
            self.state.close()
            self.state = None
        if self.queue is not None:
            self.service.stop()
            self.queue = None

    @property
    def blobs(self):
        return self.queue.blobs

    def tick(self) -> TickResult:
        return self.queue.tick()

    # ---- guilds
    def guild_settings(self, guild_id: int) -> dict:
        return self.db.guild_settings(guild_id)

    def allowed_models(self, guild_id: int, kind: str) -> list[str]:
        return self.config.models_for(kind, self.db.guild_settings(guild_id))

    def set_guild_limits(self, guild_id: int, actor: Actor, **values) -> dict:
        if not actor.manager:
            raise Refusal("Only server managers (Manage Server permission) can change the server's limits.")
        settings = {}
        for key, value in values.items():
            if value is not None:
                settings = self.db.set_guild_setting(guild_id, key, value)
        return settings or self.db.guild_settings(guild_id)

    # ---- image sizes: server (guild setting "image_sizes"), session ("session_sizes"), run
    def image_sizes(self, session: Session, run: dict | None = None) -> ImageSizes:
        """What the session's next image run trains at: the sizes chosen for the run, the session,
        the server or the bot, else the base family's defaults on the device jobs are expected to run
        on (the worker resolves those itself). Refuses a resolution the base cannot take."""
        family = guess_family(session.base_model or "")
        chosen = self.chosen_sizes(session, run)
        device = self.config.expected_device()
        sizes = sizes_for(family, device, chosen)
        problem = resolution_problem(family, sizes["resolution"])
        if problem:
            raise Refusal(f"This session cannot train at that size: {problem[0].upper()}{problem[1:]}. Change it "
                          f"with `/train start resolution:`, `/session settings resolution:` or "
                          f"`/server settings image_resolution:`.")
        return ImageSizes(family, device, sizes["resolution"], sizes["batch_size"], sizes["sample_steps"], chosen,
                          rough_step_seconds(family, device, sizes["resolution"], sizes["batch_size"]))

    def chosen_sizes(self, session: Session, run: dict | None = None) -> dict:
        """The image sizes somebody chose for a run of ``session``, the run's own winning."""
        gs = self.db.guild_settings(session.guild_id)
        layers = [self.config.image_train_defaults, gs.get("image_sizes") or {},
                  (gs.get("session_sizes") or {}).get(str(session.id)) or {}, run or {}]
        chosen = {}
        for layer in layers:
            chosen.update({k: layer[k] for k in SIZE_KEYS if layer.get(k) is not None})
        return chosen

    def set_image_sizes(self, guild_id: int, actor: Actor, session: Session | None = None, **values) -> dict:
        """Store image sizes for the server (``session`` None: managers) or one session (owner or manager).
        A resolution is checked against every base it may train (the server's image models, or the session's)."""
        values = {k: v for k, v in values.items() if k in SIZE_KEYS and v is not None}
        if session is None and not actor.manager:
            raise Refusal("Only server managers (Manage Server permission) can change the server's limits.")
        if session is not None:
            self.require(session, actor, "manage")
            if values and session.kind != "image":
                raise Refusal("Resolution, batch size and sampling steps are settings of image sessions.")
        gs = self.db.guild_settings(guild_id)
        if not values:
            return (gs.get("image_sizes") or {}) if session is None else \
                (gs.get("session_sizes") or {}).get(str(session.id)) or {}
        if "resolution" in values:
            bases = [session.base_model] if session is not None else self.allowed_models(guild_id, "image")
            for base in bases:
                problem = resolution_problem(guess_family(base or ""), values["resolution"])
                if problem:
                    raise Refusal(f"`{model_name(base)}`: {problem}.")
        if session is None:
            current = {**(gs.get("image_sizes") or {}), **values}
            return self.db.set_guild_setting(guild_id, "image_sizes", current or None).get("image_sizes") or {}
        by_session = dict(gs.get("session_sizes") or {})
        by_session[str(session.id)] = {**(by_session.get(str(session.id)) or {}), **values}
        return self.db.set_guild_setting(guild_id, "session_sizes", by_session)["session_sizes"][str(session.id)]

    # ---- sessions
    def session_here(self, channel_id: int | None) -> Session:
        session = self.db.session_by_thread(channel_id) if channel_id else None
        if session is None or session.status == "deleted":
            if not self.config.session_threads:  # sessions live in channels (the offline playground)
                raise Refusal("No session lives in this channel yet: `/session new` starts one here.")
            raise Refusal("This is not a session thread. Run this inside a session's thread: "
                          "`/session list` shows them, `/session new` starts one.")
        return session

    def role(self, session: Session, actor: Actor) -> str | None:
        return self.db.member_role(session.id, actor.user_id)

    def require(self, session: Session, actor: Actor, action: str) -> None:
        """Raise a Refusal unless ``actor`` may ``action`` ('contribute', 'manage', 'vote') in ``session``."""
        role = self.role(session, actor)
        if action == "manage":
            if role == "owner" or actor.manager:
                return
            raise Refusal(f"Only the session's owner <@{session.owner_id}> or a server manager can do that.")
        if action in ("contribute", "train") and session.status != "open":
            raise Refusal(f"This session is {session.status}: nothing more can be added or trained. "
                          f"Start a new one with `/session new`.")
        if role in ("owner", "editor") or actor.manager:
            return
        if role == "viewer":
            raise Refusal("You are invited to this session but have not joined it yet: run `/session join` here first.")
        if session.visibility == "private":
            raise Refusal(f"This session is private. Ask its owner <@{session.owner_id}> to invite you "
                          f"(`/session settings invite:`), then `/session join`.")
        raise Refusal("You are not a contributor of this session yet: run `/session join` here first.")

    def new_session(self, *, guild_id: int, actor: Actor, kind: str, base_model: str | None, visibility: str,
                    title: str, thread_id: int) -> Session:
        base = self.check_model(guild_id, kind, base_model)
        return self.db.create_session(guild_id=guild_id, owner_id=actor.user_id, kind=kind, thread_id=thread_id,
                                      base_model=base, visibility=visibility, title=title)

    def check_model(self, guild_id: int, kind: str, base_model: str | None) -> str:
        if kind not in KINDS:
            raise Refusal(f"A session is 'text' or 'image', not {kind!r}.")
        allowed = self.allowed_models(guild_id, kind)
        if not allowed:
            raise Refusal(f"This server allows no {kind} base models yet: a server manager can add some with "
                          f"`/server settings allowed_models:`.")
        if base_model is None:
            return allowed[0]
        by_name = [m for m in allowed if model_name(m) == base_model]  # members see local folders by name
        if base_model not in allowed and len(by_name) == 1:
            return by_name[0]
        if base_model not in allowed:
            raise Refusal(f"`{model_name(base_model)}` is not one of this server's {kind} models: pick one of "
                          + ", ".join(f"`{model_name(m)}`" for m in allowed) + ".")
        return base_model

    def join(self, session: Session, actor: Actor) -> str:
        role = self.role(session, actor)
        if role in ("owner", "editor"):
            raise Refusal("You are already a contributor of this session.")
        if session.status != "open":
            raise Refusal(f"This session is {session.status}; it takes no new contributors.")
        if session.visibility == "private" and role != "viewer" and not actor.manager:
            raise Refusal(f"This session is private: ask its owner <@{session.owner_id}> to invite you "
                          f"with `/session settings invite:`.")
        self.db.add_member(session.id, actor.user_id, "editor")
        return "editor"

    def leave(self, session: Session, actor: Actor) -> None:
        role = self.role(session, actor)
        if role is None:
            raise Refusal("You are not a member of this session.")
        if role == "owner":
            raise Refusal("The owner cannot leave their session: `/session close` ends it, `/session delete` removes it.")
        self.db.remove_member(session.id, actor.user_id)

    def info(self, session: Session) -> dict:
        members = self.db.list_members(session.id)
        items = self.db.list_dataset_items(session.id)
        jobs = self.db.list_jobs(session_id=session.id)
        return {"session": session, "members": members, "items": len(items),
                "examples": sum(int(i.checks.get("examples", 1)) for i in items),
                "jobs": jobs, "adapters": self.db.list_adapters(session.id)}

    def list_sessions(self, guild_id: int) -> list[Session]:
        return [s for s in self.db.list_sessions(guild_id) if s.status != "deleted"]

    def close(self, session: Session, actor: Actor) -> Session:
        self.require(session, actor, "manage")
        for job in self.db.list_jobs(session_id=session.id, status=[*WAITING, *ACTIVE]):
            self.queue.cancel(job.id)
        return self.db.update_session(session.id, status="closed")

    def delete(self, session: Session, actor: Actor) -> Session:
        self.require(session, actor, "manage")
        for job in self.db.list_jobs(session_id=session.id, status=[*WAITING, *ACTIVE]):
            self.queue.cancel(job.id)
        # storage has no delete_session yet: the row stays, marked deleted, and its thread goes.
        return self.db.update_session(session.id, status="deleted", thread_id=None)

    def update_settings(self, session: Session, actor: Actor, *, visibility: str | None = None,
                        title: str | None = None, base_model: str | None = None,
                        invite: int | None = None, remove: int | None = None) -> Session:
        self.require(session, actor, "manage")
        changes = {}
        if visibility is not None:
            changes["visibility"] = visibility
        if title is not None:
            changes["title"] = title
        if base_model is not None:
            changes["base_model"] = self.check_model(session.guild_id, session.kind, base_model)
        if invite is not None and self.role(session, Actor(invite)) is None:
            self.db.add_member(session.id, invite, "viewer")
        if remove is not None:
            if remove == session.owner_id:
                raise Refusal("The owner cannot be removed from their own session.")
            self.db.remove_member(session.id, remove)
        return self.db.update_session(session.id, **changes) if changes else self.db.get_session(session.id)

    # ---- datasets
    def check_dataset_room(self, session: Session, actor: Actor, n_files: int, n_bytes: int) -> None:
        """Refuse an upload that would not fit the session's dataset limits (before downloading it)."""
        self.require(session, actor, "contribute")
        gs = self.db.guild_settings(session.guild_id)
        items = self.db.list_dataset_items(session.id)
        max_items = int(self.config.limit("max_dataset_items", gs))
        max_bytes = float(self.config.limit("max_dataset_mb", gs)) * 2**20
        if len(items) >= max_items:
            raise Refusal(f"The dataset already holds {len(items)} files, this server's limit is {max_items}. "
                          f"Remove some with `/data remove`, or combine texts into fewer files.")
        used = sum(i.size or 0 for i in items)
        if used + n_bytes > max_bytes:
            raise Refusal(f"This upload would bring the dataset to {(used + n_bytes) / 2**20:.1f} MiB, over this "
                          f"server's {max_bytes / 2**20:.0f} MiB limit. Remove files with `/data remove` first.")

    def add_items(self, session: Session, actor: Actor, checked: CheckResult) -> tuple[list[DatasetItem], list[str]]:
        """Record accepted files; returns (new items, names that were already in the dataset)."""
        existing = {i.blob_hash for i in self.db.list_dataset_items(session.id)}
        added, duplicates = [], []
        for c in checked.accepted:
            if c.blob_hash in existing:
                duplicates.append(c.filename)
                continue
            existing.add(c.blob_hash)
            added.append(self.db.add_dataset_item(session_id=session.id, blob_hash=c.blob_hash, kind=session.kind,
                                                   uploader_id=actor.user_id, caption=c.caption, filename=c.filename,
                                                   size=c.size, checks=c.checks))
        return added, duplicates

    def items(self, session: Session) -> list[DatasetItem]:
        return self.db.list_dataset_items(session.id)

    def require_author_or_manager(self, session: Session, actor: Actor, author_id: int | None, refusal: str) -> None:
        """Let the member who made a thing act on it; anyone else needs the session's manage right."""
        if author_id == actor.user_id:
            return
        try:
            self.require(session, actor, "manage")
        except Refusal:
            raise Refusal(refusal) from None

    def remove_item(self, session: Session, actor: Actor, item_id: int) -> DatasetItem:
        item = next((i for i in self.db.list_dataset_items(session.id) if i.id == item_id), None)
        if item is None:
            raise Refusal(f"This session has no item #{item_id}: `/data list` shows the numbers.")
        self.require_author_or_manager(session, actor, item.uploader_id,
                                       f"Item #{item_id} was uploaded by <@{item.uploader_id}>: only they, the "
                                       f"session owner or a server manager can remove it.")
        self.db.remove_dataset_item(item_id)
        return item

    def dataset_manifest(self, session: Session) -> DatasetManifest:
        """The dataset as the trainer gets it: blobs with their names, captions and uploaders.

        Nothing is copied here: the worker that runs the job fetches the blobs and writes the
        captions beside them (``trainer.spec.DatasetManifest.materialize``)."""
        return DatasetManifest(items=[
            DataItem(blob=i.blob_hash, filename=i.filename or "file", caption=i.caption, uploader=i.uploader_id)
            for i in self.db.list_dataset_items(session.id)])

    # ---- training
    def check_quota(self, session: Session, actor: Actor) -> None:
        gs = self.db.guild_settings(session.guild_id)
        mine = self.db.list_jobs(user_id=actor.user_id, status=[*WAITING, *ACTIVE])
        limit = int(self.config.limit("max_pending_jobs_per_user", gs))
        if len(mine) >= limit:
            ids = ", ".join(f"#{j.id}" for j in mine)
            raise Refusal(f"You already have {len(mine)} job(s) queued or running ({ids}); the limit is {limit}. "
                          f"Wait for one to finish or `/train cancel` it.")
        since = time.time() - DAY_S
        today = [j for j in self.db.list_jobs(user_id=actor.user_id) if (j.queued_at or 0) > since]
        per_day = int(self.config.limit("runs_per_day", gs))
        if len(today) >= per_day:
            raise Refusal(f"You have started {len(today)} runs in the last 24 hours, this server's limit is {per_day}. "
                          f"Try again tomorrow, or `/sample` the adapters you have.")
        guild_today = [j for j in self.db.list_jobs(guild_id=session.guild_id) if (j.queued_at or 0) > since]
        guild_per_day = int(self.config.limit("guild_runs_per_day", gs))
        if len(guild_today) >= guild_per_day:
            raise Refusal(f"This server has started {len(guild_today)} runs in the last 24 hours (limit "
                          f"{guild_per_day}). Try again tomorrow.")

    def check_can_train(self, session: Session, actor: Actor) -> None:
        """The quick checks before a run is prepared: permission, quotas, enough data."""
        self.require(session, actor, "train")
        self.check_quota(session, actor)
        have = sum(int(i.checks.get("examples", 1)) for i in self.db.list_dataset_items(session.id))
        need = MIN_EXAMPLES[session.kind]  # the trainer's own minimum (trainer.limits)
        if have < need:
            unit = "examples" if session.kind == "text" else "images"
            raise Refusal(f"The dataset has {have} {unit}; training needs at least {need}. "
                          f"Add data with `/data add`, then check it with `/data report`.")

    def run_spec(self, session: Session, preset: str | None, chosen: dict, *,
                 tune: TuneOptions | None = None) -> RunSpec:
        """The run spec of a run (or search) on the session's data: built and checked once, here.

        ``chosen`` holds the member's options (``None``: not chosen). They and the server's
        defaults for the kind are the spec's ``settings``; the trainer sizes every other knob
        from ``preset``, and a search varies the searched knobs among those.
        """
        chosen = {k: v for k, v in chosen.items() if v is not None}
        seed = chosen.pop("seed", 0)  # explicit, so samples and the run record which seed made them
        defaults = self.config.text_train_defaults if session.kind == "text" else self.config.image_train_defaults
        settings = {**defaults, **chosen}
        if session.kind == "image":  # sizes the server or session chose; the worker sizes the others to its device
            settings.update(self.image_sizes(session, chosen).chosen)
        if self.config.train_threads:
            settings.setdefault("threads", self.config.train_threads)
        try:
            return RunSpec.build(kind=session.kind, base=session.base_model, preset=preset, seed=seed,
                                 settings=settings, dataset=self.dataset_manifest(session), tune=tune)
        except ConfigError as exc:
            problems = str(exc).removeprefix("invalid training settings: ")
            raise Refusal(f"Those settings do not work: {problems}. Change them and try again.") from None

    def start_training(self, session: Session, actor: Actor, preset: str, overrides: dict) -> Submitted:
        self.check_can_train(session, actor)
        spec = self.run_spec(session, preset, overrides)
        return self._submit(spec.job_kind, spec.to_job(), session, actor)

    def start_tuning(self, session: Session, actor: Actor, trials: int, steps: int | None) -> Submitted:
        """Queue quick tries: short runs from the ``quick`` preset that vary what the member left open."""
        self.check_can_train(session, actor)
        spec = self.run_spec(session, "quick", {"steps": steps}, tune=TuneOptions(trials=trials))
        return self._submit(spec.job_kind, spec.to_job(), session, actor)

    def _submit(self, kind: str, config: dict, session: Session, actor: Actor) -> Submitted:
        job = self.queue.submit(kind, config, session_id=session.id, guild_id=session.guild_id, user_id=actor.user_id)
        return Submitted(job, self.queue.position(job.id))

    def job(self, job_id: int) -> Job:
        return self.db.get_job(job_id)

    def position(self, job_id: int) -> int | None:
        return self.queue.position(job_id)

    def job_for(self, session: Session, job_id: int | None, *, need_adapter: bool = False) -> Job:
        """A job of this session: the one named, else the newest (with an adapter, when asked)."""
        jobs = self.db.list_jobs(session_id=session.id)
        if job_id is not None:
            job = next((j for j in jobs if j.id == job_id), None)
            if job is None:
                raise Refusal(f"Job #{job_id} is not one of this session's jobs; `/train status` lists them.")
        else:
            pool = [j for j in jobs if self.db.adapter_for_job(j.id)] if need_adapter else jobs
            if not pool:
                raise Refusal("No trained adapter here yet: start a run with `/train start`." if need_adapter
                              else "No jobs in this session yet: start one with `/train start`.")
            job = pool[0]
        if need_adapter and self.db.adapter_for_job(job.id) is None:
            raise Refusal(f"Job #{job.id} has no adapter ({job.status}); pick a finished run, or wait for this one.")
        return job

    def cancel(self, session: Session, actor: Actor, job_id: int | None) -> Job:
        if job_id is None:
            active = self.db.list_jobs(session_id=session.id, status=[*WAITING, *ACTIVE])
            if not active:
                raise Refusal("Nothing is queued or running in this session.")
            job = active[0]
        else:
            job = self.job_for(session, job_id)
        self.require_author_or_manager(session, actor, job.user_id,
                                       f"Job #{job.id} was started by <@{job.user_id}>: only they, the session owner "
                                       f"or a server manager can cancel it.")
        if job.finished:
            raise Refusal(f"Job #{job.id} has already ended ({job.status}).")
        return self.queue.cancel(job.id)

    def job_progress(self, job_id: int) -> dict:
        job = self.db.get_job(job_id)
        events = self.db.list_events(job_id)
        steps = [e for e in events if e.kind in ("step", "eval")]
        evals = [e for e in events if e.val_loss is not None]
        latest = events[-1] if events else None
        # The ETA of the newest event that has one: a validation or sample event between two steps
        # carries none, and the estimate made at the last step still holds.
        eta = next((e.data["eta_s"] for e in reversed(events) if (e.data or {}).get("eta_s") is not None), None)
        return {"job": job, "position": self.queue.position(job_id), "latest": latest,
                "loss": steps[-1].loss if steps else None,
                "val_loss": evals[-1].val_loss if evals else None,
                "eta_s": eta,
                "trials": self.db.list_trials(job_id) if job.kind == "tune" else [],
                "trial_votes": self.db.trial_votes(job_id) if job.kind == "tune" else {}}

    # ---- samples, votes and adapters
    def samples(self, job_id: int):
        return self.db.list_samples(job_id=job_id)

    def ranking(self, session: Session, limit: int = 5):
        samples = self.db.list_samples(session_id=session.id)
        return sorted(samples, key=lambda s: (-s.votes, s.id))[:limit]

    def vote(self, sample_id: int, actor: Actor, value: int):
        sample = self.db.get_sample(sample_id)
        session = self.db.get_session(sample.session_id)
        if self.role(session, actor) is None and not actor.manager:
            raise Refusal("Only members of this session vote on its samples: `/session join` first.")
        return self.db.record_vote(sample_id, actor.user_id, value)

    def blob_bytes(self, blob_hash: str) -> bytes:
        return self.blobs.get_bytes(blob_hash)

    # ---- sampling: a ``sample`` job on any worker (storage.jobkinds.sample)
    def sample_source(self, job: Job, trial: int | None = None) -> tuple[str, str | None]:
        """The blobs to sample from: (adapter tree, metrics.json or None) of a finished run, or of
        one trial of quick tries when ``trial`` is given."""
        if trial is None:
            adapter = self.db.adapter_for_job(job.id)
            if adapter is None:
                raise Refusal(f"Job #{job.id} has no adapter ({job.status}); pick a finished run, or wait for this one.")
            return adapter.blob_hash, job.result.get("files", {}).get("metrics.json")
        if job.kind != "tune":
            raise Refusal(f"Job #{job.id} is a training run, not quick tries: leave out `trial`.")
        numbers = {t.number: t for t in self.db.list_trials(job.id)}
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

    def request_sample(self, session: Session, actor: Actor, job: Job, *, prompt: str, count: int, seed: int,
                       trial: int | None = None, channel_id: int | None = None) -> Submitted:
        """Queue a ``sample`` job for ``job``'s adapter (or one trial's); the bot posts its samples
        into ``channel_id`` when it ends. It is not one of the session's runs (no session, member or
        server on its row: it neither counts against run limits nor waits for them) and goes ahead
        of waiting runs on a lane of its own (``storage.jobkinds``)."""
        self.require(session, actor, "contribute")
        adapter, metrics = self.sample_source(job, trial)
        waiting = [j for j in self.db.list_jobs(status=[*WAITING, *ACTIVE])
                   if j.kind == "sample" and j.config.get("requested_by") == actor.user_id]
        if len(waiting) >= MAX_SAMPLINGS_PER_USER:
            raise Refusal(f"{len(waiting)} samplings of yours are waiting already; ask again once they are posted.")
        config = {"source_job": job.id, "trial": trial, "kind": session.kind, "base": session.base_model,
                  "adapter": adapter, "metrics": metrics, "prompts": [prompt], "count": count, "seed": seed,
                  "requested_by": actor.user_id, "session": session.id, "channel": channel_id}
        sample_job = self.queue.submit("sample", config)
        return Submitted(sample_job, self.queue.position(sample_job.id))


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

    run_metrics = stored("metrics.json") or {**(metrics or {}), "kind": (metrics or {}).get("kind", "text")}
    if base:
        run_metrics = {**run_metrics, "base": base}
    return str(model_card(run_metrics, stored("samples.json"))).encode()
