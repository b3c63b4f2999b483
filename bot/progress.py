"""The progress message of a job: how it looks, and how often it may be edited.

One message per job, posted when the job is queued and edited as worker reports arrive, at
most once every ``min_interval_s`` (Discord rate-limits message edits; ~3 s keeps us well
inside) except for the final edit, which is never held back.

Its words (``headline``), its embed (``progress_embed``) and the line posted when the job ends
(``outcome``) are all made from one view of the job (``bot.services.Jobs.progress``), so they
cannot disagree: a finished job never reads "queued", a starting one never "step 0/0", and a
run that stopped early says where, and which step's adapter it kept.
"""

from __future__ import annotations

import time

import discord

from .display import scrub_paths

COLOURS = {"queued": 0x95A5A6, "dispatched": 0x95A5A6, "running": 0x3498DB, "done": 0x2ECC71,
           "failed": 0xE74C3C, "cancelled": 0xE67E22}
TITLES = {"train_text": "Training (text)", "train_image": "Training (image)", "tune": "Quick tries (tuning)"}
# A dispatched job waits for a free worker: to its members it is still queued.
STATUS_WORDS = {"queued": "queued", "dispatched": "queued", "running": "running", "done": "finished",
                "failed": "failed", "cancelled": "cancelled"}


def progress_bar(done: int, total: int, width: int = 20) -> str:
    """``▰▰▰▰▱▱▱▱ 50%``: a bar of ``width`` cells for ``done`` of ``total``."""
    if total <= 0:
        return "▱" * width + "   0%"
    share = min(1.0, max(0.0, done / total))
    filled = round(share * width)
    return "▰" * filled + "▱" * (width - filled) + f" {share * 100:3.0f}%"


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def steps_of(view: dict) -> tuple[int, int]:
    """(steps done, steps planned) as the latest report says; (0, 0) before any report."""
    latest = view.get("latest")
    if latest is None:
        return 0, 0
    overall = (latest.data or {}).get("overall")
    if overall and view["job"].status != "done":
        # quick tries: one figure over all their runs (trainer.tune); a finished job is told by its final run
        return overall["step"], overall["total"]
    return latest.step or 0, latest.total_steps or 0


def early_stop(view: dict) -> dict | None:
    """``{"step", "total", "best_step", "best_val"}`` of a finished run that stopped early, else None."""
    job = view["job"]
    metrics = (job.result or {}).get("metrics") or {}
    if job.status != "done" or metrics.get("stop_reason") != "early_stopped":
        return None
    step, total = steps_of(view)
    step = int(metrics.get("steps_done") or step)
    if total and step >= total:
        return None  # patience ran out on the last planned step: the run was complete anyway
    return {"step": step, "total": total, "best_step": metrics.get("best_step"), "best_val": metrics.get("best_val_loss")}


def kept_step(view: dict) -> int | None:
    """The step whose adapter a finished run kept, when it is not its last step."""
    job = view["job"]
    metrics = (job.result or {}).get("metrics") or {}
    best, done = metrics.get("best_step"), metrics.get("steps_done") or steps_of(view)[0]
    return int(best) if job.status == "done" and best and done and int(best) != int(done) else None


def why(job) -> str | None:
    """A failed or cancelled job's reason, without host paths."""
    return scrub_paths(job.error).strip() if job.error else None


def headline(view: dict, *, live: bool = True) -> str:
    """What a message about the job says above its embed, true for the job's state right now.

    ``live``: the message is the job's progress message, which the pump keeps editing."""
    job = view["job"]
    status, n = job.status, job.id
    follow = "; this message shows its progress" if live else ""
    position = view.get("position")
    if status == "queued" or (status == "dispatched" and position and not view.get("latest")):
        # a dispatched job waits for a free worker: to its owner it is still in the queue
        where = f" (position {position} in the queue)" if position else ""
        return f"Job #{n} is queued{where}{follow}. **Next:** wait for the samples, then vote."
    if status == "dispatched":
        return f"Job #{n} is starting on a worker{follow}."
    if status == "running":
        return f"Job #{n} is running{follow}."
    return outcome(view)


def outcome(view: dict) -> str:
    """The one line that says how a finished job ended (also posted in the thread when it ends)."""
    job = view["job"]
    n = job.id
    if job.status == "done":
        stopped = early_stop(view)
        if stopped:
            return (f"✅ Job #{n} finished: it stopped early at step {stopped['step']} of {stopped['total']} "
                    f"and kept the adapter of step {stopped['best_step']}, where the validation loss was lowest.")
        step, total = steps_of(view)
        kept = kept_step(view)
        return (f"✅ Job #{n} finished" + (f" after {total} steps" if total else "")
                + (f" and kept the adapter of step {kept}, where the validation loss was lowest." if kept else "."))
    if job.status == "failed":
        return f"❌ Job #{n} failed: {why(job) or 'no reason was reported'}"
    if job.status == "cancelled":
        step, total = steps_of(view)
        if total and step:
            return f"⏹ Job #{n} was cancelled at step {step} of {total}."
        # before any step the reason says when ("before it started", "before training started; nothing was trained")
        reason = why(job) or ""
        when = reason.removeprefix("cancelled ") if reason.startswith("cancelled before") else ""
        return f"⏹ Job #{n} was cancelled" + (f" {when}." if when else ".")
    return headline(view)


def _description(view: dict) -> str:
    job = view["job"]
    status = job.status
    step, total = steps_of(view)
    if status in ("queued", "dispatched") and not view.get("latest"):
        position = view.get("position")
        return (f"Waiting in the queue{f' (position {position})' if position else ''}."
                if status == "queued" or position else "Starting on a worker…")
    if status == "done":
        stopped = early_stop(view)
        if stopped:
            best = f" (validation loss {stopped['best_val']:.4f})" if stopped["best_val"] is not None else ""
            return (f"`{progress_bar(1, 1)}`  stopped early at step {stopped['step']} of {stopped['total']}\n"
                    f"Kept the adapter of step {stopped['best_step']}{best}: the validation loss did not improve "
                    f"after it, so more steps would only have fitted the training data more closely.")
        kept = kept_step(view)
        done = f"`{progress_bar(1, 1)}`  step {total}/{total}" if total else "Finished."
        return done + (f"\nKept the adapter of step {kept}, where the validation loss was lowest." if kept else "")
    if not total:
        return "Nothing trained yet." if job.finished else "Starting: loading the base model and the data…"
    ended = {"failed": f"  · failed at step {step}", "cancelled": f"  · cancelled at step {step}"}.get(status, "")
    return f"`{progress_bar(step, total)}`  step {step}/{total}{ended}"


def progress_embed(view: dict) -> discord.Embed:
    """The embed of a job's progress message, from ``Jobs.progress``.

    Its footer names who started the job by ``view["starter"]``, a display name the bot looked
    up (``LoracordBot.member_name``): never a raw member id."""
    job = view["job"]
    status = job.status
    embed = discord.Embed(title=f"{TITLES.get(job.kind, job.kind)} · job #{job.id}", colour=COLOURS.get(status, 0))
    embed.description = _description(view)
    word = STATUS_WORDS.get(status, status)
    if status == "dispatched" and not view.get("position"):
        word = "starting"
    embed.add_field(name="Status", value=f"{word} (stopped early)" if early_stop(view) else word)
    embed.add_field(name="Loss", value=f"{view['loss']:.4f}" if view.get("loss") is not None else "–")
    embed.add_field(name="Validation loss", value=f"{view['val_loss']:.4f}" if view.get("val_loss") is not None else "–")
    if status == "running" and steps_of(view)[1]:
        overall = (view["latest"].data or {}).get("overall") or {}
        embed.add_field(name="ETA", value=format_eta(overall.get("eta_s", view.get("eta_s"))))
    if view.get("trials"):
        votes = view.get("trial_votes") or {}
        # Ranked by validation loss; members' votes on a trial's samples break near-ties.
        ranked = sorted(view["trials"], key=lambda t: (t.value is None, round(t.value or 0, 2), -votes.get(t.number, 0)))
        lines = [f"#{t.number}: {t.value:.4f} ({t.status}){_votes(votes, t.number)} {t.params}" if t.value is not None
                 else f"#{t.number}: {t.status}" for t in ranked[:10]]
        embed.add_field(name="Trials", value="\n".join(lines)[:1024], inline=False)
    if status in ("failed", "cancelled") and why(job):
        embed.add_field(name="Why", value=why(job)[:1024], inline=False)
    embed.set_footer(text=f"started by {view.get('starter') or 'a member'}")
    return embed


def _votes(votes: dict[int, int], number: int) -> str:
    return f", votes {votes[number]:+d}" if number in votes else ""


class Throttle:
    """Allows one edit per key every ``min_interval_s`` seconds; a final edit always passes."""

    def __init__(self, min_interval_s: float = 3.0, clock=time.monotonic):
        self.min_interval_s = min_interval_s
        self.clock = clock
        self._last: dict[int, float] = {}

    def allow(self, key: int, *, final: bool = False) -> bool:
        now = self.clock()
        last = self._last.get(key)
        if final or last is None or now - last >= self.min_interval_s:
            self._last[key] = now
            return True
        return False
