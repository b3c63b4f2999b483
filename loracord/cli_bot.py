"""``loracord run``: the Discord bot with its embedded queue consumer, or the offline playground."""

from __future__ import annotations

from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    app.command("run")(run_cmd)


def run_cmd(
    dev_guild: Optional[int] = typer.Option(None, help="Sync commands to this guild id at once (LORACORD_DEV_GUILD_ID)."),
    playground: bool = typer.Option(False, "--playground", help="Start the offline playground even with a token."),
    port: Optional[int] = typer.Option(None, help="Playground: the local port of the browser page."),
    open_browser: bool = typer.Option(True, "--open/--no-open", help="Playground: open the page in a browser."),
) -> None:
    """Start the bot (reads .env: DISCORD_TOKEN, LORACORD_*); without a token, the offline playground."""
    import asyncio
    import logging

    from bot.config import BotSettings
    from storage.settings import Settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("huey").setLevel(logging.WARNING)
    settings, bot_settings = Settings(), BotSettings()
    if dev_guild is not None:
        bot_settings = bot_settings.model_copy(update={"dev_guild_id": dev_guild})
    if playground or not bot_settings.discord_token:
        from bot.playground import run_playground

        typer.echo("No DISCORD_TOKEN: starting the offline playground (a simulated Discord in your browser).")
        try:
            asyncio.run(run_playground(settings, bot_settings, port=port, open_browser=open_browser))
        except KeyboardInterrupt:
            pass
        return
    from bot.client import LoracordBot

    LoracordBot(settings, bot_settings).run(bot_settings.discord_token, log_handler=None)
