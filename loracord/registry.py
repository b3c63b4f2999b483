"""Plugs in the commands that live beside the training CLI (image, queue, bot).

Each part owns a module with its typer commands; ``loracord.cli`` calls ``register`` once, and
none of these modules imports ``loracord.cli`` back. Modules are light at import time: heavy
libraries load inside the command functions.
"""

from __future__ import annotations

import typer

from trainer.kinds import IMAGE

from . import cli_bot, cli_image, cli_ops, cli_share, cli_tune


def register(app: typer.Typer, train_app: typer.Typer) -> None:
    cli_ops.register(app)  # storage: worker, jobs, db
    train_app.command(IMAGE.name)(cli_image.train_image)  # image training
    app.command("caption")(cli_image.caption_cmd)  # image captions
    cli_tune.register(app)  # tune, presets
    cli_bot.register(app)  # bot: run
    cli_share.register(app)  # export, publish
