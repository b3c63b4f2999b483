"""The progress message of a job: how it looks, and how often it may be edited.

One message per job, posted when the job is queued and edited as worker reports arrive, at
most once every ``min_interval_s`` (Discord rate-limits message edits; ~3 s keeps us well
inside) except for the final edit, which is never held back.
"""

from __future__ import annotations

import time

import discord

COLOURS = {"queued": 0x95A5A6, "dispatched": 0x95A5A6, "running": 0x3498DB, "done": 0x2ECC71,
           "failed": 0xE74C3C, "cancelled": 0xE67E22}
TITLES = {"train_text": "Training (text)", "train_image": "Training (image)", "tune": "Quick tries (tuning)"}


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


def progress_embed(view: dict) -> discord.Embed:
    """The embed of a job's progress message, from ``Services.job_progress``."""
    job = view["job"]
    status = job.status
    embed = discord.Embed(title=f"{TITLES.get(job.kind, job.kind)} · job #{job.id}", colour=COLOURS.get(status, 0))
    latest = view.get("latest")
    if status in ("queued", "dispatched") and not latest:
        position = view.get("position")
        embed.description = f"Waiting in the queue{f' (position {position})' if position else ''}."
    else:
        step, total = (latest.step or 0, latest.total_steps or 0) if latest else (0, 0)
        embed.description = f"`{progress_bar(step, total)}`  step {step}/{total}"
    embed.add_field(name="Status", value=status)
    embed.add_field(name="Loss", value=f"{view['loss']:.4f}" if view.get("loss") is not None else "–")
    embed.add_field(name="Validation loss", value=f"{view['val_loss']:.4f}" if view.get("val_loss") is not None else "–")
    if status == "running":
        embed.add_field(name="ETA", value=format_eta(view.get("eta_s")))
    if view.get("trials"):
        votes = view.get("trial_votes") or {}
        # Ranked by validation loss; members' votes on a trial's samples break near-ties.
        ranked = sorted(view["trials"], key=lambda t: (t.value is None, round(t.value or 0, 2), -votes.get(t.number, 0)))
        lines = [f"#{t.number}: {t.value:.4f} ({t.status}){_votes(votes, t.number)} {t.params}" if t.value is not None
                 else f"#{t.number}: {t.status}" for t in ranked[:10]]
        embed.add_field(name="Trials", value="\n".join(lines)[:1024], inline=False)
    if job.error and status in ("failed", "cancelled"):
        embed.add_field(name="Why", value=job.error[:1024], inline=False)
    embed.set_footer(text=f"started by member {job.user_id}")
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
