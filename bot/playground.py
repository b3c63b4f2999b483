"""The offline playground: the real bot against a simulated Discord, in a local browser page.

``loracord run`` without ``DISCORD_TOKEN`` lands here. SimCord runs discord.py's real
machinery against an in-memory Discord (slash commands, attachments, buttons, modals,
threads) and its Preview serves that world on 127.0.0.1 with a composer, so a newcomer can
try every command with the built-in model on their own machine: no token, no server.

The world: a server "loracord playground" with a #training channel, you (a server manager)
and a friend to share sessions with. Virtual time is driven from the wall clock here (one
second per second), so the bot's pump reports training progress as it would on Discord.
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


async def run_playground(settings: Settings, bot_settings: BotSettings, *, port: int | None = None,
                         open_browser: bool = True, until: asyncio.Event | None = None) -> None:
    """Serve the playground until the page's session ends (or ``until`` is set)."""
    import simcord
    from simcord import SetupError

    bot = LoracordBot(settings, bot_settings)
    try:
        async with simcord.run(bot, check_errors=False, settle_timeout=30.0) as env:
            await bot.user.edit(username="loracord")  # the simulated account, named as users will see it
            guild = env.create_guild(name="loracord playground")
            channel = guild.create_text_channel("training", topic="Start here: /session new, or /help")
            managers = guild.create_role("Managers", permissions=discord.Permissions(manage_guild=True))
            you = guild.add_member(env.create_user("you"), roles=[managers])
            friend = guild.add_member(env.create_user("friend"))
            async with env.preview(channel, viewers=[you, friend], layout="channel", port=port) as preview:
                print(f"loracord playground: open {preview.url}\n(type /help in the composer; Ctrl+C to stop)",
                      flush=True)
                if open_browser:
                    webbrowser.open(preview.url)
                closed = asyncio.ensure_future(preview.wait_closed())
                while not closed.done() and not (until and until.is_set()):
                    await asyncio.sleep(1.0)
                    try:  # one virtual second per real second: the pump ticks, progress shows
                        await env.advance_time(1.0)
                        await preview.refresh()
                    except SetupError:
                        pass  # a member's action is running in the page right now; next second
                closed.cancel()
    finally:
        bot.sampler.stop()
        bot.services.stop()
