"""Fixtures for the bot tests: a LoracordBot on a temporary data folder, and a small Discord world.

Import the fixtures into a test module with ``from tests.bot_world import *``. The bot runs
without its embedded worker unless a test asks for ``worker_bot``: most tests only need jobs
to be queued, and a worker process per test would cost seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import discord
import pytest

from bot.client import LoracordBot
from bot.config import BotSettings
from storage.settings import Settings

__all__ = ["storage_settings", "bot_config", "make_bot", "simcord_bot", "world", "World", "pump_until", "text_bytes"]


@pytest.fixture
def storage_settings(tmp_path) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path / "data", heartbeat_s=0.2, heartbeat_timeout_s=30,
                    cancel_grace_s=1.0, kill_grace_s=0.5, poll_s=0.05, max_jobs_per_user=1, max_jobs_per_guild=2)


@pytest.fixture
def bot_config() -> BotSettings:
    return BotSettings(_env_file=None, discord_token="", allowed_models=["smollm2-135m", "image:tiny/sd"],
                       progress_edit_s=0, train_cooldown_s=0, pump_s=1.0, train_threads=1)


@pytest.fixture
def make_bot(storage_settings, bot_config):
    """Build bots on this test's data folder; they are stopped (worker) at teardown.

    SimCord never calls ``bot.close()`` (a restart is like a crash), so this does it.
    """
    bots = []

    def make(*, worker: bool = False) -> LoracordBot:
        bot = LoracordBot(storage_settings, bot_config, embedded_worker=worker)
        bots.append(bot)
        return bot

    yield make
    for bot in bots:
        bot.services.stop()


@pytest.fixture
def simcord_bot(make_bot) -> LoracordBot:
    return make_bot()


@dataclass
class World:
    env: object
    guild: object
    channel: object
    alice: object  # starts sessions
    bob: object
    carol: object
    mod: object  # has Manage Server


@pytest.fixture
def world(simcord_env) -> World:
    env = simcord_env
    guild = env.create_guild(name="Makers")
    channel = guild.create_text_channel("training")
    mods = guild.create_role("Mods", permissions=discord.Permissions(manage_guild=True))
    alice = guild.add_member(env.create_user("alice"))
    bob = guild.add_member(env.create_user("bob"))
    carol = guild.add_member(env.create_user("carol"))
    mod = guild.add_member(env.create_user("mod"), roles=[mods])
    return World(env, guild, channel, alice, bob, carol, mod)


def text_bytes(n: int = 12, start: int = 0, word: str = "drawing") -> bytes:
    """A .txt dataset of ``n`` distinct examples separated by blank lines."""
    lines = [f"Example {i}: the {word} of a small red fox number {i} jumps over the fence." for i in range(start, start + n)]
    return ("\n\n".join(lines) + "\n").encode()


async def pump_until(env, done, *, timeout: float = 120.0, what: str = "condition") -> None:
    """Let virtual time run the bot's pump (one tick per second) until ``done()``; the worker is real."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await env.advance_time(1.0)
        if done():
            return
        time.sleep(0.2)  # the worker is another process: give it real time
    raise TimeoutError(f"timed out waiting for {what}")
