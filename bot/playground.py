"""The offline playground: the real bot against a simulated Discord, in a local browser page.

``loracord run`` without ``DISCORD_TOKEN`` lands here. SimCord runs discord.py's real
machinery against an in-memory Discord (slash commands, attachments, buttons, modals) and its
Preview serves that world on 127.0.0.1 with a composer, so a newcomer can try every command
with the built-in model on their own machine: no token, no server.

The world: a server "loracord playground" with a #training channel, you (a server manager)
and a friend to share sessions with. The page shows one channel, so sessions live in the
channel where ``/session new`` ran (``session_threads`` off) instead of in threads it could
not show.

How the page stays live without getting in a member's way. The page acts on the revision of
the world it last read (it polls every half second); SimCord refuses an action against an
older revision, and an action that overlaps another SimCord operation (``advance_time``,
``refresh``) leaves the page unable to act until reloaded. So the playground:

- drives the bot's pump from the wall clock itself (``PlaygroundBot``): the pump waits for
  the playground's tick as a declared external input, instead of on discord.ext.tasks'
  virtual interval, which only an ``advance_time`` operation moves;
- republishes the page only when the bot changed something (it made a REST call that is not
  a read), and only between pump rounds, when the bot is idle and the operation takes
  microseconds. New messages and progress edits reach the open page within a second.

What remains is SimCord's own check, and it is about the bot, not the clock: a command sent in
the half second after the bot changed the page (a progress edit during training) is refused
as "Action was not completed"; the page keeps the command, and Enter sends it again.

The simulated clock therefore stays where the world started (messages show that time);
nothing in the bot waits on it: the pump follows the wall clock, cooldowns and the progress
throttle read real time.
"""

from __future__ import annotations

import asyncio
import logging
import webbrowser

import discord

from storage.settings import Settings

from .client import LoracordBot
from .config import BotSettings

log = logging.getLogger("loracord.playground")

CHECK_S = 0.2  # how often the playground looks for bot changes to publish


class PlaygroundClock:
    """The wall-clock ticks the playground hands the bot's pump (see ``PlaygroundBot``)."""

    def __init__(self, env) -> None:
        self.env = env
        self.tick = asyncio.Event()
        self.done = asyncio.Event()
        self.follower: asyncio.Task | None = None  # the bot's task that runs a pump round per tick

    async def pump_once(self) -> None:
        """Let the bot run one pump round and wait until it finished."""
        if self.follower is None or self.follower.done():
            return  # the bot is not up (or is shutting down): nothing to pump
        self.done.clear()
        self.tick.set()
        finished = asyncio.ensure_future(self.done.wait())
        await asyncio.wait([finished, self.follower], return_when=asyncio.FIRST_COMPLETED)
        finished.cancel()


class PlaygroundBot(LoracordBot):
    """LoracordBot whose pump runs on the playground's ticks instead of discord.ext.tasks."""

    clock: PlaygroundClock

    async def setup_hook(self) -> None:
        await super().setup_hook()
        self.pump_loop.cancel()
        self.clock.follower = asyncio.create_task(self._follow_clock())

    async def _follow_clock(self) -> None:
        clock = self.clock
        while True:
            await clock.env.external_wait(clock.tick.wait(), reason="the playground's wall clock")
            clock.tick.clear()
            try:
                await self.pump()
            except Exception:
                log.exception("a pump round failed; the next tick tries again")
            finally:
                clock.done.set()


def welcome(url: str) -> str:
    """What the console says once the page is up: where to go, what to type, how to stop."""
    return (f"\nloracord playground: open {url}\n"
            "  The real bot on a simulated Discord server, in your browser (the address is the key to it: keep it to "
            "yourself).\n"
            "  In the page, type in the message box at the bottom:\n"
            "    /help            how training works here, step by step\n"
            "    /session new     start a text session (kind: text, any title), then follow what the bot says:\n"
            "                     /data add a .txt file, /data report, /train start steps:10, /sample\n"
            "  Stop with Ctrl+C here. Each start is a fresh simulated server; what you trained stays in the data "
            "folder.\n")


async def run_playground(settings: Settings, bot_settings: BotSettings, *, port: int | None = None,
                         open_browser: bool = True, until: asyncio.Event | None = None) -> None:
    """Serve the playground until the page's session ends (or ``until`` is set)."""
    import simcord

    # One channel on the page: sessions live in it. The page's composer posts no files: uploads go through /data add.
    bot = PlaygroundBot(settings, bot_settings.model_copy(update={"session_threads": False, "message_content": False}))
    env = simcord.Env(bot, check_errors=False, settle_timeout=30.0)
    bot.clock = PlaygroundClock(env)
    try:
        await env.start()
        with env.time_context():
            try:
                await _serve(env, bot, port=port, open_browser=open_browser, until=until)
            finally:
                await env.shutdown()
    finally:
        bot.services.stop()


async def _serve(env, bot: PlaygroundBot, *, port: int | None, open_browser: bool,
                 until: asyncio.Event | None) -> None:
    await bot.user.edit(username="loracord")  # the simulated account, named as users will see it
    guild = env.create_guild(name="loracord playground")
    channel = guild.create_text_channel("training", topic="Start here: /help, then /session new")
    managers = guild.create_role("Managers", permissions=discord.Permissions(manage_guild=True))
    you = guild.add_member(env.create_user("you"), roles=[managers])
    friend = guild.add_member(env.create_user("friend"))
    async with env.preview(channel, viewers=[you, friend], layout="channel", port=port) as preview:
        print(welcome(preview.url), flush=True)
        if open_browser:
            webbrowser.open(preview.url)
        closed = asyncio.ensure_future(preview.wait_closed())
        try:
            await _keep_live(env, bot, preview, closed, until)
        finally:
            closed.cancel()


async def _keep_live(env, bot: PlaygroundBot, preview, closed: asyncio.Future, until: asyncio.Event | None) -> None:
    """Tick the pump every ``pump_s`` and publish what the bot changed, until the page or ``until`` ends it."""
    from simcord import SetupError

    loop = asyncio.get_running_loop()
    next_pump, published = loop.time(), len(env.http_requests)
    while not closed.done() and not (until and until.is_set()):
        await asyncio.sleep(CHECK_S)
        if loop.time() >= next_pump:
            next_pump = loop.time() + bot.config.pump_s
            await bot.clock.pump_once()
        if not any(request.method != "GET" for request in env.http_requests[published:]):
            continue
        try:
            await preview.refresh()  # one publication, which the page reads within half a second
            published = len(env.http_requests)
        except SetupError:
            pass  # a member's action is running in the page right now: it publishes itself; look again shortly
        except TimeoutError:
            log.warning("the bot is still busy; the page shows its work once it settles")
