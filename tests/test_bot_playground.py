"""The offline playground serves the simulated Discord page and stops cleanly (no token needed)."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest

from bot.config import BotSettings
from bot.playground import run_playground
from storage.settings import Settings
from storage.testing import free_port

pytestmark = pytest.mark.asyncio


async def test_playground_serves_the_preview_page(tmp_path, capsys):
    port, until = free_port(), asyncio.Event()
    settings = Settings(_env_file=None, data_dir=tmp_path / "data")
    task = asyncio.ensure_future(run_playground(settings, BotSettings(_env_file=None), port=port,
                                                open_browser=False, until=until))
    page = b""
    for _ in range(100):
        await asyncio.sleep(0.1)
        if "loracord playground: open" in capsys.readouterr().out:
            page = await asyncio.to_thread(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/").read())
            break
    until.set()
    await asyncio.wait_for(task, timeout=30)
    assert b"SimCord Preview" in page
    assert (tmp_path / "data" / "loracord.db").exists()
