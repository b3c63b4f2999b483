"""Everything the bot said in a whole shared session, read the way a member reads it.

A text session through SimCord with the real queue, worker and trainer (the tiny Llama): two
members add data, read the report, train, vote, check the status, sample, export, start a
second run and cancel it. Then every text the bot sent to Discord (messages, edits, ephemeral
answers, embeds, buttons: the REST calls SimCord recorded) is swept for what no member should
read: raw member ids, paths of the bot's machine, control characters and leftover template text.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bot.config import BotSettings
from tests.bot_world import *  # noqa: F401,F403

pytestmark = pytest.mark.asyncio

TEXT_KEYS = {"content", "title", "description", "name", "value", "text", "label", "placeholder"}
MENTION = re.compile(r"<(?:@[!&]?|#)\d+>")
RAW_ID = re.compile(r"(?<![\w/])\d{15,21}(?!\w)")  # a Discord snowflake written out
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ufffd]")
CODE_BLOCK = re.compile(r"```.*?```", re.DOTALL)  # what a model wrote: its words are its own
TEMPLATE = re.compile(r"\{[a-z_][a-z_0-9.]*(?:[:!][^}]*)?\}|\bNone\b|\bnan\b|object at 0x|More Information Needed|"
                      r"Traceback|%\(?[a-z_]*\)?[sd]\b")


@pytest.fixture
def bot_config(tiny_llama) -> BotSettings:
    return BotSettings(_env_file=None, allowed_models=[str(tiny_llama)], progress_edit_s=0, train_cooldown_s=0,
                       train_threads=1, text_train_defaults={"seq_len": 64, "batch_size": 2, "max_new_tokens": 4,
                                                             "precision": "fp32", "augment": 0.0, "prompts": ["To be"]})


@pytest.fixture
def simcord_bot(make_bot):
    return make_bot(worker=True)


def said(requests) -> list[tuple[str, str]]:
    """(REST call, text) for every text the bot sent to a channel or an interaction."""
    found = []

    def walk(where: str, node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in TEXT_KEYS and isinstance(value, str):
                    found.append((where, value))
                else:
                    walk(where, value)
        elif isinstance(node, list):
            for value in node:
                walk(where, value)

    for request in requests:
        if request.path.startswith("/applications/"):  # the command tree's registration, not a message
            continue
        walk(f"{request.method} {request.path}", request.json)
    return found


async def test_no_message_of_a_whole_session_shows_ids_paths_control_characters_or_template_text(
        world, tiny_llama, tmp_path):
    w, db = world, world.env.bot.services.db
    await w.alice.slash(w.channel, "session new", kind="text", base_model=str(tiny_llama))  # the default title
    thread = w.channel.threads[-1]
    await w.bob.slash(thread, "session join")
    await w.alice.slash(thread, "data add", file=("alice.txt", text_bytes(10, word="drawing")))
    await w.bob.slash(thread, "data add", file=("bob.txt", text_bytes(10, word="poem")))
    await w.bob.slash(thread, "data list")
    await w.alice.slash(thread, "data report")
    await w.alice.slash(thread, "session info")
    await w.alice.slash(thread, "train start", steps=4, lr=0.005, rank=4)
    await pump_until(w.env, lambda: db.get_job(1).finished, timeout=240, what="the training job")
    assert db.get_job(1).status == "done", db.get_job(1).error
    sample = next(m for m in thread.history() if m.content.startswith("**Sample #1**"))
    await w.bob.click(sample, custom_id="lc:vote:1:up")
    await w.bob.slash(thread, "train status")
    await w.bob.slash(thread, "sample", prompt="Out, damned", seed=7)
    await pump_until(w.env, lambda: len(db.list_samples(job_id=1)) == 2, timeout=120, what="the sampling")
    await w.alice.slash(thread, "adapter export")
    await w.bob.slash(thread, "train start", steps=50, rank=4)
    await w.env.advance_time(2)
    await w.alice.slash(thread, "train cancel", job=2)  # the owner cancels a member's run
    await pump_until(w.env, lambda: db.get_job(2).finished, timeout=120, what="the cancel")
    await w.alice.slash(thread, "train status", job=2)
    await w.env.advance_time(2)

    texts = said(w.env.http_requests)
    assert any("started by bob" in t for _, t in texts)  # the progress footer names the member
    # the machine's folders: the test's data folder, the model's folder, the home and temporary folders
    machine = [str(tmp_path), str(tiny_llama.parent), str(Path.home()) + "/", "/tmp/", ".cache/"]
    problems = []
    for where, text in texts:
        read = CODE_BLOCK.sub("", text)
        checks = {"raw id": RAW_ID.findall(MENTION.sub("", read)),
                  "host path": [m for m in machine if m in text],
                  "control character": CONTROL.findall(text),
                  "template text": TEMPLATE.findall(read)}
        problems += [f"{what} {found!r} in {where}: {text[:160]!r}" for what, found in checks.items() if found]
    assert not problems, "\n".join(problems)
