"""The offline playground serves the simulated Discord page and stops cleanly (no token needed)."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest

from bot.config import BotSettings
from bot.playground import run_playground
from storage.settings import Settings
from storage.testing import free_port
from tests.bot_world import *  # noqa: F401,F403

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


def answer(result):
    """The bot's answer to a deferred command: its first follow-up, or the response it edited."""
    return result.followups[0] if result.followups else result.response


class TestSessionsKeptInTheChannel:
    """With ``session_threads`` off (the playground: its page shows one channel) a session lives where it started."""

    @pytest.fixture
    def bot_config(self) -> BotSettings:
        return BotSettings(_env_file=None, allowed_models=["smollm2-135m"], session_threads=False, train_cooldown_s=0)

    async def test_the_session_and_its_commands_stay_in_the_channel(self, world):
        w = world
        started = await w.alice.slash(w.channel, "session new", kind="text", title="My verses")
        assert "Started public text session #1" in answer(started).content
        assert not w.channel.threads
        assert w.channel.last_message.content.startswith("Welcome to **My verses**")
        added = await w.alice.slash(w.channel, "data add", file=("verses.txt", text_bytes(8)))
        assert "1 file(s) added" in answer(added).embeds[0].title
        info = await w.alice.slash(w.channel, "session info")
        assert info.response.embeds[0].title == "Session #1: My verses"

    async def test_a_second_session_is_refused_until_the_first_is_deleted(self, world):
        w = world
        await w.alice.slash(w.channel, "session new", kind="text", title="First")
        again = await w.alice.slash(w.channel, "session new", kind="text", title="Second")
        assert again.ephemeral and "holds session #1 already" in again.response.content
        await w.alice.slash(w.channel, "session delete", confirm=True)
        assert w.channel.name == "training"  # the channel stays
        second = await w.alice.slash(w.channel, "session new", kind="text", title="Second")
        assert "session #2" in answer(second).content

    async def test_no_text_a_member_reads_speaks_of_a_thread(self, world):
        """The descriptions the page shows, /help, the report and the refusals speak of the channel."""
        w, tree = world, world.env.bot.tree
        texts = []
        for command in tree.walk_commands():
            texts.append(str(command.description))
            texts += [str(p.description) for p in getattr(command, "parameters", [])]
        assert any("this channel's session" in t for t in texts)  # the reworded /session join and friends
        refused = await w.alice.slash(w.channel, "data report")
        assert refused.ephemeral and refused.response.content == \
            "No session lives in this channel yet: `/session new` starts one here."
        texts.append(refused.response.content)
        helped = (await w.alice.slash(w.channel, "help")).response.embeds[0]
        texts += [helped.description, *(f.value for f in helped.fields)]
        assert "starts a session for your model in this channel" in helped.description
        await w.alice.slash(w.channel, "session new", kind="text", title="Verses")
        card = answer(await w.alice.slash(w.channel, "data report")).embeds[0]
        texts += [card.description, *(f.value for f in card.fields)]
        assert "Add 5+ examples with `/data add`." in texts[-3:] or any("with `/data add`." in t for t in texts)
        leaking = [t for t in texts if "thread" in t.lower()]
        assert not leaking, leaking

    async def test_a_session_without_a_title_is_named_after_its_starter(self, world):
        w = world
        started = await w.alice.slash(w.channel, "session new", kind="text")
        assert "Started public text session #1" in answer(started).content
        welcome = w.channel.last_message.content
        assert welcome.startswith(f"Welcome to {w.alice.mention}'s text session on `smollm2-135m`"), welcome
        info = await w.alice.slash(w.channel, "session info")
        assert info.response.embeds[0].title == "Session #1: alice's text session"
        renamed = await w.alice.slash(w.channel, "session settings", title="Macbeth speeches")
        assert renamed.response.embeds[0].title == "Session #1: Macbeth speeches"
