"""``loracord run``: the Discord bot with its embedded queue consumer, or the offline playground."""

from __future__ import annotations

import logging
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    app.command("run")(run_cmd)


class _DropMessages(logging.Filter):
    """Drop log records whose message contains one of ``parts``; everything else passes."""

    def __init__(self, *parts: str):
        super().__init__()
        self.parts = parts

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(part in message for part in self.parts)


def quiet_discord_warnings(*, playground: bool) -> None:
    """Silence discord.py's start-up warnings that need no action here, and only those.

    loracord never joins voice, so "PyNaCl/davey is not installed, voice will NOT be supported"
    is noise. In the offline playground the simulated gateway makes discord.py guess that the
    guilds intent is off ("Guilds intent seems to be disabled") although the bot asks for it, and
    its login and gateway INFO lines say nothing a newcomer can act on (warnings still show).
    """
    logging.getLogger("discord.client").addFilter(_DropMessages("voice will NOT be supported"))
    if playground:
        logging.getLogger("discord.state").addFilter(_DropMessages("Guilds intent seems to be disabled"))
        logging.getLogger("discord").setLevel(logging.WARNING)


def run_cmd(
    dev_guild: Optional[int] = typer.Option(None, help="Sync commands to this guild id at once (LORACORD_DEV_GUILD_ID)."),
    playground: bool = typer.Option(False, "--playground", help="Start the offline playground even with a token."),
    port: Optional[int] = typer.Option(None, help="Playground: the local port of the browser page."),
    open_browser: bool = typer.Option(True, "--open/--no-open", help="Playground: open the page in a browser."),
) -> None:
    """Start the bot (reads .env: DISCORD_TOKEN, LORACORD_*); without a token, the offline playground."""
    import asyncio

    from bot.config import BotSettings
    from storage.settings import Settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("huey").setLevel(logging.WARNING)
    settings, bot_settings = Settings(), BotSettings()
    if dev_guild is not None:
        bot_settings = bot_settings.model_copy(update={"dev_guild_id": dev_guild})
    playground = playground or not bot_settings.discord_token
    quiet_discord_warnings(playground=playground)
    if playground:
        from bot.playground import run_playground

        typer.echo("No DISCORD_TOKEN: starting the offline playground (a simulated Discord in your browser)...")
        try:
            asyncio.run(run_playground(settings, bot_settings, port=port, open_browser=open_browser))
        except KeyboardInterrupt:
            pass
        typer.echo("loracord playground stopped.")
        return
    from bot.client import LoracordBot

    LoracordBot(settings, bot_settings).run(bot_settings.discord_token, log_handler=None)
