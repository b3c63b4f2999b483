"""Registers the commands that live beside the training CLI (image, queue, bot).

Each part owns a module with its typer commands; this file only plugs them in. Modules are
light at import time: heavy libraries load inside the command functions.
"""
