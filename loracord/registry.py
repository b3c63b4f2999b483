"""Registers the commands that live beside the training CLI (image, queue, bot).

Each part owns a module with its typer commands; this file only plugs them in. Modules are
light at import time: heavy libraries load inside the command functions.
"""
from . import cli, cli_ops; cli_ops.register(cli.app)  # noqa: E702 (storage: worker, jobs, db)
from .cli_image import train_image; cli.train_app.command("image")(train_image)  # noqa: E402,E702 (image training)
from . import cli, cli_tune; cli_tune.register(cli.app)  # noqa: E702 (tune, presets)
from . import cli, cli_bot; cli_bot.register(cli.app)  # noqa: E702 (bot: run)
