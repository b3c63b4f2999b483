"""``/adapter publish`` and ``/adapter export format:gguf`` in a SimCord session.

A text adapter on the tiny Llama is stored as a worker stores it (blob tree, metrics.json).
``/adapter export format:gguf`` posts it in llama.cpp's GGUF format; ``/adapter publish`` sends
it to a local stand-in for the Hub's HTTP API (``tests.hub_standin``; no machine here reaches the
Hub), by its starter, the session's owner or a manager only, with the members' files only when
the session's owner ticks ``with_data``.
"""

from __future__ import annotations

import json

import pytest
from huggingface_hub import ModelCard

from tests.bot_world import *  # noqa: F401,F403
from tests.hub_standin import hub  # noqa: F401 (the stand-in Hub, a fixture)


async def stored_text_adapter(world, tiny_llama, tmp_path, *, starter=None, kind="text", stop_reason="completed",
                              base_path=None):
    """A session of alice's with a finished job of ``starter`` (default alice) whose LoRA on the tiny Llama is
    stored, recorded as a run of ``kind`` that ended for ``stop_reason``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    await world.alice.slash(world.channel, "session new", kind="text", title="Fox talk")
    thread = world.channel.threads[-1]
    services, db = world.env.bot.services, world.env.bot.services.db
    session = db.session_by_thread(thread.id)
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    folder = tmp_path / "worker-run" / "adapter"
    model.save_pretrained(folder)
    metrics = {"kind": kind, "base": str(tiny_llama), "base_path": str(tiny_llama), "best_val_loss": 2.5,
               "best_step": 3, "steps_done": 3, "stop_reason": stop_reason,
               "config": {"rank": 4, "alpha": 8.0, "steps": 3}, "data_report": {"n_train": 10, "n_val": 2}}
    who = starter or world.alice
    job = db.enqueue_job("train_text", {"base": str(tiny_llama)}, session_id=session.id, guild_id=world.guild.id,
                         user_id=who.id)
    db.mark_job_running(job.id, worker="w", attempt=1)
    files = {"metrics.json": services.blobs.put_bytes(json.dumps(metrics).encode())}
    db.finish_job(job.id, "done", attempt=1, result={"files": files})
    db.add_adapter(job_id=job.id, session_id=session.id, base_model=str(tiny_llama),
                   blob_hash=services.blobs.put_tree(folder),
                   metrics={"kind": kind, "best_val_loss": 2.5, "base_path": str(base_path or tiny_llama)})
    return thread, job, session


def message_of(reply):
    return reply.followups[0] if reply.followups else reply.response


@pytest.mark.asyncio
async def test_export_format_gguf_posts_a_llama_cpp_adapter(world, tiny_llama, tmp_path):
    from gguf import GGUFReader

    thread, job, _ = await stored_text_adapter(world, tiny_llama, tmp_path)
    message = message_of(await world.alice.slash(thread, "adapter export", job=job.id, format="gguf"))
    assert message.content.startswith(f"📦 Adapter of job #{job.id} (")
    assert "a LoRA in llama.cpp's GGUF format for a `llama` base" in message.content
    attachment = message.attachments[0]
    assert attachment.filename == f"loracord-job-{job.id}-adapter.gguf"
    path = tmp_path / "posted.gguf"
    path.write_bytes(await attachment.read())
    reader = GGUFReader(path)
    assert reader.fields["general.type"].contents() == "adapter"
    assert {t.name for t in reader.tensors} == {f"blk.{b}.{n}.weight.lora_{ab}" for b in range(2)
                                               for n in ("attn_q", "attn_v") for ab in "ab"}


@pytest.mark.asyncio
async def test_export_refuses_a_format_that_does_not_fit_the_run_or_its_options(world, tiny_llama, tmp_path):
    thread, job, _ = await stored_text_adapter(world, tiny_llama, tmp_path, kind="image")
    reply = await world.alice.slash(thread, "adapter export", job=job.id, format="gguf")
    assert reply.response.ephemeral
    assert reply.response.content == (f"`format:gguf` (the adapter as a GGUF file for llama.cpp, Ollama and LM Studio) "
                                      f"does not fit job #{job.id}, a run of kind image: export it with `format:zip` or `format:merged`.")
    thread, job, _ = await stored_text_adapter(world, tiny_llama, tmp_path)
    reply = await world.alice.slash(thread, "adapter export", job=job.id, format="gguf", options="weight=0.5")
    assert reply.response.ephemeral
    assert reply.response.content == ("`format:gguf` does not take `weight=0.5`: it takes no options, given as "
                                      "`name=value`.")
    reply = await world.alice.slash(thread, "adapter export", job=job.id, options="weight=0.5")
    assert reply.response.ephemeral and "`format:zip` takes no options" in reply.response.content
    assert [j.kind for j in world.env.bot.services.db.list_jobs()] == ["train_text", "train_text"]


@pytest.mark.asyncio
async def test_a_merged_checkpoint_of_a_base_whose_licence_forbids_it_is_refused_before_anything_is_queued(
        world, tiny_llama, tmp_path):
    """The bot reads the base's card where the base is on its machine (``format:merged``'s check), so a
    forbidding licence is said at once instead of after a worker loaded the base."""
    base = tmp_path / "non-commercial-base"
    base.mkdir()
    (base / "model_index.json").write_text("{}")
    (base / "README.md").write_text("---\nlicense: other\nlicense_name: flux-1-dev-non-commercial-license\n---\n")
    thread, job, _ = await stored_text_adapter(world, tiny_llama, tmp_path, kind="image", base_path=base)
    reply = await world.alice.slash(thread, "adapter export", job=job.id, format="merged", options="weight=0.8")
    assert reply.response.ephemeral
    assert reply.response.content.startswith(f"`format:merged` of job #{job.id} is refused: The base's licence, "
                                             "flux-1-dev-non-commercial-license, is not one under which loracord "
                                             "redistributes a model")
    assert [j.kind for j in world.env.bot.services.db.list_jobs()] == ["train_text"]  # no export job
    # an allowed licence passes the check: the export is queued for a worker
    (base / "README.md").write_text("---\nlicense: creativeml-openrail-m\n---\n")
    queued = await world.alice.slash(thread, "adapter export", job=job.id, format="merged")
    assert "on a worker (export job #" in queued.response.content
    assert sorted(j.kind for j in world.env.bot.services.db.list_jobs()) == ["export", "train_text"]


@pytest.mark.asyncio
async def test_a_worker_export_over_the_servers_quota_is_refused_up_front(world, tiny_llama, tmp_path, monkeypatch):
    from dataclasses import replace

    from trainer import export

    monkeypatch.setitem(export.FORMATS, "gguf", replace(export.FORMATS["gguf"], big=True))  # made on a worker
    thread, job, _ = await stored_text_adapter(world, tiny_llama, tmp_path)
    settings = await world.mod.slash(world.channel, "server settings", max_export_mb=0.001)
    assert {f.name: f.value for f in settings.response.embeds[0].fields}["max export mb"] == "0.001"
    reply = await world.alice.slash(thread, "adapter export", job=job.id, format="gguf")
    assert reply.response.ephemeral
    assert reply.response.content.startswith(f"`format:gguf` of job #{job.id} would be about ")
    assert reply.response.content.endswith("KB, over this server's export quota of 0.001 MiB: a server manager can "
                                           "raise it with `/server settings max_export_mb:`.")
    assert [j.kind for j in world.env.bot.services.db.list_jobs()] == ["train_text"]  # nothing queued
    await world.mod.slash(world.channel, "server settings", max_export_mb=1.0)
    reply = await world.alice.slash(thread, "adapter export", job=job.id, format="gguf")
    assert reply.response.content.startswith(f"📦 Exporting job #{job.id} as `format:gguf`")
    [queued] = [j for j in world.env.bot.services.db.list_jobs() if j.kind == "export"]
    assert queued.config["max_bytes"] == 2**20 and queued.config["format"] == "gguf"
    assert queued.session_id is None  # not a run of the session: no run limits, not in its job list


@pytest.mark.asyncio
async def test_publish_sends_the_adapter_and_its_card_to_the_hub(world, tiny_llama, tmp_path, hub):
    thread, job, _ = await stored_text_adapter(world, tiny_llama, tmp_path)
    message = message_of(await world.alice.slash(thread, "adapter publish", repo="alice/fox-talk", private=True))
    assert message.content.startswith(f"🚀 Published the adapter of job #{job.id} to {hub.endpoint}/alice/fox-talk "
                                      "(private, 3 files in one commit)")
    stored = hub.repos["alice/fox-talk"]
    assert sorted(stored) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    card = ModelCard(stored["README.md"].decode())
    assert 'PeftModel.from_pretrained(base, "alice/fox-talk")' in card.text
    assert json.loads(stored["adapter_config.json"])["base_model_name_or_path"] == "tiny-llama"
    assert str(tmp_path) not in stored["README.md"].decode()


@pytest.mark.asyncio
async def test_publish_by_someone_else_is_refused_and_sends_nothing(world, tiny_llama, tmp_path, hub):
    thread, job, session = await stored_text_adapter(world, tiny_llama, tmp_path)
    reply = await world.bob.slash(thread, "adapter publish", repo="alice/fox-talk")
    assert reply.response.ephemeral
    assert f"Only the member who started job #{job.id}, the session's owner" in reply.response.content
    assert hub.calls == []


@pytest.mark.asyncio
async def test_a_manager_may_publish_but_only_the_owner_shares_the_members_files(world, tiny_llama, tmp_path, hub):
    thread, job, _ = await stored_text_adapter(world, tiny_llama, tmp_path)
    reply = await world.mod.slash(thread, "adapter publish", repo="alice/fox-talk", with_data=True)
    assert reply.response.ephemeral and "Only the session's owner" in reply.response.content
    assert hub.calls == []
    message = message_of(await world.mod.slash(thread, "adapter publish", repo="alice/fox-talk"))
    assert message.content.startswith("🚀 Published")


@pytest.mark.asyncio
async def test_publish_without_a_token_or_with_a_bad_name_says_what_to_do(world, tiny_llama, tmp_path, hub, monkeypatch):
    thread, _, _ = await stored_text_adapter(world, tiny_llama, tmp_path)
    reply = await world.alice.slash(thread, "adapter publish", repo="fox-talk")
    assert reply.response.ephemeral and "give it as USER/NAME" in reply.response.content
    monkeypatch.delenv("HF_TOKEN")
    reply = await world.alice.slash(thread, "adapter publish", repo="alice/fox-talk")
    assert reply.response.ephemeral and "set HF_TOKEN to a token with write access" in reply.response.content
    assert hub.calls == [] and hub.repos == {}


@pytest.mark.asyncio
async def test_publish_to_a_namespace_the_token_cannot_write_says_so_after_deferring(world, tiny_llama, tmp_path, hub):
    thread, _, _ = await stored_text_adapter(world, tiny_llama, tmp_path)
    reply = await world.alice.slash(thread, "adapter publish", repo="bob/fox-talk")
    assert "belongs to alice, who cannot write in 'bob'" in message_of(reply).content
    assert hub.repos == {}


@pytest.mark.parametrize("kind, config, metrics, offered", [
    ("train_text", {}, {"kind": "text"}, "`format:gguf`: the adapter as a GGUF file for llama.cpp, Ollama and LM Studio"),
    ("train_image", {}, {"kind": "image"}, "a single file for ComfyUI and other UIs"),
    ("train_image", {}, {}, "a single file for ComfyUI and other UIs"),  # a run recorded before kinds were
    ("tune", {"kind": "image"}, {}, "a single file for ComfyUI and other UIs"),  # a search's spec names its kind
    ("tune", {}, {}, "`format:gguf`"),  # an old flat search without one searched text
])
def test_the_finished_run_message_offers_the_formats_of_its_kind(kind, config, metrics, offered):
    from storage.db import Job

    from bot.client import next_after

    text = next_after(Job(id=1, status="done", kind=kind, config=config, result={"metrics": metrics}))
    assert offered in text and "`/adapter publish`" in text
    assert ("gguf" not in text) == ("ComfyUI" in offered)
    assert next_after(Job(id=1, status="failed", kind=kind, config=config, result={})).startswith("**Next:** check the data")


def test_the_finished_run_message_offers_every_format_of_the_table_that_fits(monkeypatch):
    """A format added to the table (here a big image one) is offered to the runs it fits, and only those."""
    from dataclasses import replace
    from types import SimpleNamespace

    from bot.client import next_after
    from trainer import export

    merged = replace(export.FORMATS["gguf"], name="merged", makes_images=True, big=True,
                     description="one checkpoint with the LoRA fused in")
    monkeypatch.setitem(export.FORMATS, "merged", merged)
    image = next_after(SimpleNamespace(status="done", kind="train_image", result={"metrics": {"kind": "image"}}))
    text = next_after(SimpleNamespace(status="done", kind="train_text", result={"metrics": {"kind": "text"}}))
    assert "`format:merged`: one checkpoint with the LoRA fused in" in image and "format:gguf" not in image
    assert "format:merged" not in text and "`format:gguf`" in text


@pytest.mark.asyncio
async def test_a_failed_export_job_says_why_in_the_thread_without_host_paths(world, tiny_llama, tmp_path):
    thread, job, _ = await stored_text_adapter(world, tiny_llama, tmp_path)
    db = world.env.bot.services.db
    config = {"source_job": job.id, "format": "gguf", "channel": thread.id, "requested_by": world.alice.id}
    failed = db.enqueue_job("export", config)
    db.mark_job_running(failed.id, worker="w", attempt=1)
    db.finish_job(failed.id, "failed", attempt=1, error=f"no config.json in {tmp_path}/base @everyone")
    await world.env.bot.post_export(failed.id)
    said = thread.last_message.content
    assert said.startswith(f"<@{world.alice.id}> the export of job #{job.id} as `format:gguf` failed: no config.json in ")
    assert str(tmp_path) not in said and "@everyone" not in said
