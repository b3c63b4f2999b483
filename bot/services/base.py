"""What every service shares: who is asking (``Actor``), how a service says no (``Refusal``), and
the one started queue and database each of them reads (``Service``)."""

from __future__ import annotations

from dataclasses import dataclass

from trainer.errors import UserError


class Refusal(UserError):
    """The member may not do this now; the message says why and what to do instead."""


@dataclass(frozen=True)
class Actor:
    """Who is asking: their user id, and whether they may manage the server (Manage Server)."""
    user_id: int
    manager: bool = False


class Service:
    """One part of what the cogs call. ``services`` is the ``bot.services.Services`` that built it:
    the queue and database it started, the bot's settings, and the other parts, which a part asks
    rather than repeating their rules."""

    def __init__(self, services):
        self.services = services

    @property
    def _db(self):
        return self.services.db

    @property
    def _config(self):
        return self.services.config
