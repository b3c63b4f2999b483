"""``/adapter export`` as an ``export`` job on a worker, through SimCord with the real queue, worker
and trainer: a tiny text run trains, its export is made by the worker from the blob store, and the
bot posts the file into the thread, or, over the channel's upload limit, a link to the blob.

Only the big formats (a base merged with the adapter) go to a worker in production, and none is in
the table on this branch; the test sends the small ``gguf`` format down the same path by marking
it big in the bot's copy of the table (the worker runs any format of the table alike).
"""

from __future__ import annotations

import json
from dataclasses import replace

import discord
import pytest

from bot.cogs.adapter import file_size
from bot.config import BotSettings
from tests.bot_world import *  # noqa: F401,F403
from trainer import export

pytestmark = pytest.mark.asyncio


@pytest.fixture
def bot_config(tiny_llama) -> BotSettings:
    return BotSettings(_env_file=None, allowed_models=[str(tiny_llama)], progress_edit_s=0, train_cooldown_s=0,
                       train_threads=1, text_train_defaults={"seq_len": 64, "batch_size": 2, "max_new_tokens": 4,
                                                             "precision": "fp32", "augment": 0.0, "prompts": ["To be"]})


@pytest.fixture
def simcord_bot(make_bot):
    return make_bot(worker=True)


@pytest.fixture
def gguf_on_a_worker(monkeypatch):
    monkeypatch.setitem(export.FORMATS, "gguf", replace(export.FORMATS["gguf"], big=True))


async def trained_text_session(w, tiny_llama, title: str):
    """A text session of alice's whose first job, a 2-step run on the tiny Llama, finished; its thread."""
    db = w.env.bot.services.db
    await w.alice.slash(w.channel, "session new", kind="text", title=title, base_model=str(tiny_llama))
    thread = w.channel.threads[-1]
    await w.alice.slash(thread, "data add", file=("fox.txt", text_bytes(12)))
    await w.alice.slash(thread, "train start", steps=2, lr=0.005, rank=4)
    await pump_until(w.env, lambda: db.get_job(1).finished, timeout=240, what="the training job")
    assert db.get_job(1).status == "done", db.get_job(1).error
    return thread


def upload_limit(monkeypatch, size: int) -> None:
    """SimCord always grants 25 MiB uploads; a channel with a smaller limit is stood in for here."""
    read = discord.Interaction._from_data

    def with_limit(self, data):
        read(self, data)
        self.filesize_limit = size

    monkeypatch.setattr(discord.Interaction, "_from_data", with_limit)


async def test_a_worker_exports_the_run_and_the_bot_posts_the_file_or_a_link(world, tiny_llama, tmp_path,
                                                                             gguf_on_a_worker, monkeypatch):
    from gguf import GGUFReader

    w, services = world, world.env.bot.services
    db = services.db
    thread = await trained_text_session(w, tiny_llama, "Fox export")

    asked = await w.alice.slash(thread, "adapter export", job=1, format="gguf")
    assert asked.response.content.startswith("📦 Exporting job #1 as `format:gguf` (the adapter as a GGUF file for "
                                             "llama.cpp, Ollama and LM Studio) on a worker (export job #2")
    await pump_until(w.env, lambda: db.get_job(2).finished, timeout=120, what="the export job")
    job = db.get_job(2)
    assert job.status == "done", job.error
    assert job.worker and not (services.settings.run_root / "job-1" / "export").exists()
    await pump_until(w.env, lambda: thread.last_message.attachments, timeout=10, what="the posted export")
    posted = thread.last_message
    assert posted.content.startswith(f"<@{w.alice.id}> 📦 Adapter of job #1 (")
    assert "a LoRA in llama.cpp's GGUF format for a `llama` base" in posted.content
    [attachment] = posted.attachments
    assert attachment.filename == "loracord-job-1-adapter.gguf"
    first = await attachment.read()
    (tmp_path / "posted.gguf").write_bytes(first)
    reader = GGUFReader(tmp_path / "posted.gguf")
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.tensors and all(".lora_" in t.name for t in reader.tensors)
    [stored] = job.result["export"]["files"]
    assert (stored["name"], stored["bytes"]) == ("adapter.gguf", len(first))

    # Over the channel's upload limit: a link to the blob (no signing store, no public URL: its place on the host).
    upload_limit(monkeypatch, 100)
    await w.alice.slash(thread, "adapter export", job=1, format="gguf")
    await pump_until(w.env, lambda: db.get_job(3).finished, timeout=120, what="the second export job")
    await pump_until(w.env, lambda: "upload limit" in thread.last_message.content, timeout=10, what="the link")
    linked = thread.last_message
    assert not linked.attachments
    assert "over this channel's 1 KB upload limit" in linked.content
    blob = db.get_job(3).result["export"]["files"][0]["blob"]
    where = services.blobs.path(blob)
    assert f"`loracord-job-1-adapter.gguf` ({file_size(len(first))}): on the bot's host at `{where}`" in linked.content
    assert open(where, "rb").read() == first  # the same file the first export posted

    # With a public URL of the blob folder, the link is that URL and the blob's path under it.
    monkeypatch.setattr(world.env.bot.config, "export_base_url", "https://files.example.org/blobs/")
    await w.alice.slash(thread, "adapter export", job=1, format="gguf")
    await pump_until(w.env, lambda: db.get_job(4).finished, timeout=120, what="the third export job")
    await pump_until(w.env, lambda: "files.example.org" in thread.last_message.content, timeout=10, what="the URL")
    url = f"https://files.example.org/blobs/{blob[:2]}/{blob[2:4]}/{blob}"
    assert f"<{url}>" in thread.last_message.content
    assert (services.blobs.fs.cat_file(f"{services.blobs.root}/{url.split('/blobs/')[1]}")) == first


async def test_an_export_of_a_cancelled_run_says_which_step_it_holds(world, tiny_llama, tmp_path, gguf_on_a_worker):
    from tests.test_bot_adapter_share import stored_text_adapter

    thread, job, _ = await stored_text_adapter(world, tiny_llama, tmp_path, stop_reason="cancelled")
    db = world.env.bot.services.db
    await world.alice.slash(thread, "adapter export", job=job.id, format="gguf")
    export_job = next(j for j in db.list_jobs() if j.kind == "export")
    assert export_job.config["metrics"] and json.loads(world.env.bot.services.blobs.get_bytes(
        export_job.config["metrics"]))["stop_reason"] == "cancelled"
    await pump_until(world.env, lambda: db.get_job(export_job.id).finished, timeout=120, what="the export job")
    await pump_until(world.env, lambda: thread.last_message.attachments, timeout=10, what="the posted export")
    assert "The run stopped (cancelled): this is the adapter of step 3." in thread.last_message.content


async def test_the_merged_gguf_is_made_on_a_worker_and_its_modelfile_names_the_posted_file(world, tiny_llama,
                                                                                            tmp_path):
    """``format:gguf-merged`` (big: the base is loaded) as members get it: made by the worker, posted
    as the GGUF and its Modelfile, whose FROM names the GGUF as it was posted."""
    from gguf import GGUFReader

    w, db = world, world.env.bot.services.db
    thread = await trained_text_session(w, tiny_llama, "Fox merged")

    refused = await w.alice.slash(thread, "adapter export", job=1, format="gguf-merged", options="outtype=q4")
    assert "`outtype` takes f16 or q8_0" in refused.response.content and len(db.list_jobs()) == 1
    asked = await w.alice.slash(thread, "adapter export", job=1, format="gguf-merged", options="outtype=q8_0")
    assert "on a worker (export job #2" in asked.response.content
    await pump_until(w.env, lambda: db.get_job(2).finished, timeout=180, what="the export job")
    assert db.get_job(2).status == "done", db.get_job(2).error
    await pump_until(w.env, lambda: thread.last_message.attachments, timeout=10, what="the posted export")
    posted = thread.last_message
    assert "ollama create NAME -f Modelfile" in posted.content
    files = {a.filename: await a.read() for a in posted.attachments}
    assert set(files) == {"merged-q8_0.gguf", "Modelfile"}
    assert "FROM ./merged-q8_0.gguf" in files["Modelfile"].decode()
    (tmp_path / "merged-q8_0.gguf").write_bytes(files["merged-q8_0.gguf"])
    reader = GGUFReader(tmp_path / "merged-q8_0.gguf")
    assert reader.fields["general.architecture"].contents() == "llama"
    assert any(t.tensor_type.name == "Q8_0" for t in reader.tensors)
    assert not any(".lora_" in t.name for t in reader.tensors)  # the adapter is inside the weights
