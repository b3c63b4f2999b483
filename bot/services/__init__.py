"""What the cogs share: a few small services over one started queue and database.

Each cog owns its feature and its rules (``bot.cogs``); what several features need is one of
these parts of ``Services``:

- ``server`` (``ServerSettings``): a server's limits and allowed base models;
- ``sessions`` (``Sessions``): the session a channel holds, its members and what each may do;
- ``sizes`` (``ImageSizing``): what an image session's runs train at, as chosen by the server,
  the session or the run (``trainer.image.sizes`` sizes the rest);
- ``data`` (``Datasets``): a session's dataset items, the room for an upload, the run's manifest;
- ``jobs`` (``Jobs``): submitting, finding, cancelling and following jobs (the pump ticks here);
- ``samples`` (``Samples``): what runs generated and the votes on it;
- ``comparisons`` (``Comparisons``): pairs of quick tries' samples and members' answers.

No Discord objects and no SQL outside these modules: callers pass ids and an ``Actor`` (who
is asking and whether they manage the server), and get back storage rows or small dataclasses;
no cog reaches the database past them (``tests/test_bot_layers.py``). Every refusal is a
``Refusal`` whose message says why and what to do; the bot shows it ephemerally.

All calls are synchronous and touch one SQLite connection, so the bot runs them on one
dedicated thread (``LoracordBot.db``): the event loop never waits on the database or the queue.
Heavy work (checking uploads, reading a whole dataset, zipping adapters) runs on other threads.
"""

from __future__ import annotations

import os

from storage.db import Database
from storage.queue import JobQueue
from storage.service import QueueService
from storage.settings import Settings

from ..config import BotSettings
from ..state import BotState
from .base import Actor, Refusal, Service
from .comparisons import Comparisons
from .data import Datasets
from .jobs import Jobs, Submitted
from .samples import Samples
from .server import ServerSettings
from .sessions import Sessions
from .sizes import ImageSizes, ImageSizing

__all__ = ["Actor", "Comparisons", "Datasets", "ImageSizes", "ImageSizing", "Jobs", "Refusal", "Samples", "ServerSettings",
           "Service", "Services", "Sessions", "Submitted"]


class Services:
    """The started queue (with its database and blob store), the bot's own state, and the parts
    the cogs call on them. ``start`` and ``stop`` run on the bot's database thread."""

    def __init__(self, settings: Settings, bot_settings: BotSettings, *, embedded_worker: bool | None = None):
        self.settings = settings
        self.config = bot_settings
        self.service = QueueService(settings, embedded_worker=embedded_worker)
        self.queue: JobQueue | None = None
        self.db: Database | None = None
        self.state: BotState | None = None
        self.server = ServerSettings(self)
        self.sessions = Sessions(self)
        self.sizes = ImageSizing(self)
        self.data = Datasets(self)
        self.jobs = Jobs(self)
        self.samples = Samples(self)
        self.comparisons = Comparisons(self)

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
        """The blob store: uploads, adapters, samples (read off the database thread too)."""
        return self.queue.blobs
