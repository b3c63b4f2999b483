"""A whole shared text session through SimCord, with the real queue, worker and trainer:
two members contribute, one trains a tiny Llama, both vote, then sample and export; and the
same path swept for anything a member should not read.

The model is the tiny Llama from conftest (a local folder, allowed on this test server); the
job runs in the embedded worker's subprocess exactly as in production.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from bot.config import BotSettings
from bot.sampling import clean_sample
from tests.bot_world import *  # noqa: F401,F403
from trainer.spec import RunSpec

pytestmark = pytest.mark.asyncio


@pytest.fixture
def bot_config(tiny_llama) -> BotSettings:
    return BotSettings(_env_file=None, allowed_models=[str(tiny_llama)], progress_edit_s=0, train_cooldown_s=0,
                       train_threads=1, text_train_defaults={"seq_len": 64, "batch_size": 2, "max_new_tokens": 4,
                                                             "precision": "fp32", "augment": 0.0, "prompts": ["To be"]})


@pytest.fixture
def simcord_bot(make_bot):
    return make_bot(worker=True)


def embed_fields(message):
    return {f.name: f.value for f in message.embeds[0].fields}


def labels(message):
    return [c.label for row in message.components for c in row.children]


async def test_two_members_train_vote_sample_and_export(world, tiny_llama):
    w, db = world, world.env.bot.services.db
    await w.alice.slash(w.channel, "session new", kind="text", title="Shared fox", base_model=str(tiny_llama))
    thread = w.channel.threads[-1]
    await w.bob.slash(thread, "session join")
    await w.alice.slash(thread, "data add", file=("alice.txt", text_bytes(10, word="drawing")))
    await w.bob.slash(thread, "data add", file=("bob.txt", text_bytes(10, word="poem")))
    report = await w.alice.slash(thread, "data report")
    card = (report.followups[0] if report.followups else report.response).embeds[0].description
    assert "**Contributions:**" in card
    # 20 examples of prose (18 after the validation split): the preset leaves LoRA dropout off and
    # says why (the guild's defaults already set augment 0, so only dropout is named)
    assert "**Off by default for prose:** LoRA dropout: at 32 examples, " in card

    started = await w.alice.slash(thread, "train start", steps=4, lr=0.005, rank=4)
    assert "Job #1 is queued" in started.response.content
    await pump_until(w.env, lambda: db.get_job(1).finished, timeout=240, what="the training job")
    job = db.get_job(1)
    assert job.status == "done", job.error
    # the worker trained on files it fetched from the blob store by hash, not on the bot's copies
    manifest = RunSpec.from_job(job.kind, job.config).dataset
    items = db.list_dataset_items(job.session_id)
    assert [(i.blob, i.uploader) for i in manifest.items] == [(i.blob_hash, i.uploader_id) for i in items]
    fetched = sorted((w.env.bot.services.settings.run_root / "job-1" / "data").iterdir())
    assert len(fetched) == len(manifest.items) and all(p.stat().st_size > 0 for p in fetched)
    # The worker's run followed the report card: prose, where the preset left LoRA dropout off, and
    # metrics.json says why.
    metrics = json.loads(next((w.env.bot.services.settings.run_root / "job-1").rglob("metrics.json")).read_text())
    assert metrics["text_kind"] == "prose" and metrics["config"]["lora_dropout"] == 0.0
    assert metrics["config"]["augment"] == 0.0 and "(docs/benchmarks.md)" in metrics["regularisation_off_for_kind"]
    events = next((w.env.bot.services.settings.run_root / "job-1").rglob("events.jsonl")).read_text().splitlines()
    assert "LoRA dropout 0 (the preset leaves augmentation and dropout off for this kind" in json.loads(events[0])["message"]

    progress = next(m for m in thread.history() if m.id == started.response.id)
    fields = embed_fields(progress)
    assert fields["Status"] == "finished"
    assert progress.embeds[0].description.startswith("`▰▰▰▰▰▰▰▰▰▰▰▰▰▰▰▰▰▰▰▰ 100%`  step 4/4")
    assert "✅ Job #1 finished after 4 steps" in progress.content and "queued" not in progress.content
    assert float(fields["Loss"]) > 0 and float(fields["Validation loss"]) > 0
    assert labels(progress) == ["Sample again", "Export"]

    history = thread.history()
    chart = next(m for m in history if m.content == "Loss curve of job #1")
    assert chart.attachments[0].filename == "loss-job-1.png"
    sample_message = next(m for m in history if m.content.startswith("**Sample #1** (job #1, seed 0) · prompt: To be"))
    assert "```" in sample_message.content
    # under the sample, its own scores (trainer.scores, computed on the worker): no number is made up
    assert "\n**Scores:** held-out perplexity " in sample_message.content
    assert " · longest run copied from the training text " in sample_message.content
    assert db.get_sample(1).scores["score_copied_words"] >= 0
    assert history[-1].content.startswith("✅ Job #1 finished after 4 steps")
    assert "\n**Next:** vote on the samples" in history[-1].content

    # Votes from both members rank the sample; a stranger cannot vote.
    await w.alice.click(sample_message, custom_id="lc:vote:1:up")
    await w.bob.click(sample_message, custom_id="lc:vote:1:up")
    sample_message = next(m for m in thread.history() if m.id == sample_message.id)
    assert labels(sample_message) == ["score +2", None]
    assert db.get_sample(1).votes == 2
    stranger = await w.carol.click(sample_message, custom_id="lc:vote:1:down")
    assert stranger.ephemeral and "Only members of this session vote" in stranger.response.content
    status = await w.bob.slash(thread, "train status")
    # the ranking shows what the model wrote (its opening words), then the prompt it answered
    best = embed_fields(status.response)["Best samples by votes"]
    wrote = " ".join(clean_sample(w.env.bot.services.blobs.get_bytes(db.get_sample(1).blob_hash).decode()).split())
    assert best.startswith(f"#1 (job #1) score +2: “{wrote[:20]}") and best.endswith("(prompt: To be)"), best

    # A member's own prompt, sampled in a child process and posted with vote buttons.
    asked = await w.bob.slash(thread, "sample", prompt="Out, damned", seed=7)
    assert asked.response.content.startswith("🎲 Sampling 1 from job #1 (seed 7)")
    await pump_until(w.env, lambda: len(db.list_samples(job_id=1)) == 2, timeout=120, what="the sampling")
    posted = thread.last_message
    assert posted.content.startswith("**Sample #2** (job #1, seed 7) · prompt: Out, damned")
    assert [c.custom_id for row in posted.components for c in row.children] == ["lc:vote:2:up", "lc:vote:2:down"]

    # The adapter, from the command and from the progress message's button.
    exported = await w.alice.slash(thread, "adapter export")
    message = exported.followups[0] if exported.followups else exported.response
    assert message.attachments[0].filename == "loracord-job-1-adapter.zip"
    assert "a LoRA for `tiny-llama`: its README.md shows how to load it with peft." in message.content
    # The zip carries the run's card and config, which name the base by its folder's name and no
    # path of the machine (the worker's run folder, the bot's data folder, the model's folder).
    with zipfile.ZipFile(io.BytesIO(await message.attachments[0].read())) as archive:
        assert sorted(archive.namelist()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
        card, config = archive.read("README.md").decode(), json.loads(archive.read("adapter_config.json"))
    assert config["base_model_name_or_path"] == "tiny-llama"
    assert "loracord" in ModelCard(card).data.tags and "# Text LoRA adapter for tiny-llama" in card
    assert "| rank | 4 |" in card and "| steps | 4 |" in card and "To be" in card
    for place in (str(tiny_llama), str(w.env.bot.services.settings.data_dir), str(Path.home()), "/tmp/", "/root/"):
        assert place not in card and place not in json.dumps(config), place
    clicked = await w.bob.click(progress, label="Export")
    message = clicked.followups[0] if clicked.followups else clicked.response
    assert message.attachments[0].filename == "loracord-job-1-adapter.zip"


async def test_quick_tries_on_twenty_examples_cross_validate_through_the_worker_and_sample_a_trial(world, tiny_llama):
    """Under FOLDS_BELOW examples the whole path: the bot's plan, the worker's cross-validated
    search, the collector's trial rows, the bot's verdict, then a member samples one trial."""
    w, db = world, world.env.bot.services.db
    await w.alice.slash(w.channel, "session new", kind="text", title="Tried fox", base_model=str(tiny_llama))
    thread = w.channel.threads[-1]
    await w.alice.slash(thread, "data add", file=("fox.txt", text_bytes(20, word="story")))
    started = await w.alice.slash(thread, "train tune", trials=2, steps=5)
    assert "With 20 examples (under 128), quick tries score each setting by 2-fold cross-validation" in \
        started.response.content
    await pump_until(w.env, lambda: db.get_job(1).finished, timeout=400, what="the tuning job")
    job = db.get_job(1)
    assert job.status == "done", job.error

    trials = db.list_trials(job.id)
    best_trial = min((t for t in trials if t.status == "complete"), key=lambda t: t.value)
    assert len(trials) == 2 and best_trial.adapter  # a setting behind the leader may stop after one fold
    run = w.env.bot.services.settings.run_root / "job-1"
    folds = sorted(run.rglob("trials/*/fold-*/metrics.json"))
    assert len(folds) >= 3  # the leader on both folds, the other on at least one
    held = [json.loads(f.read_text())["data_report"] for f in folds]
    assert all(h["n_train"] + h["n_val"] == 20 and h["n_val"] == 10 for h in held), held
    best = json.loads(next(run.rglob("best-run/metrics.json")).read_text())
    assert best["data_report"]["n_train"] == 20 and best["data_report"]["n_val"] == 0  # the choice trains on all 20

    verdict = next(m for m in reversed(thread.history()) if m.content.startswith("✅ Job #1 finished"))
    assert "Settings chosen by 2-fold cross-validation over 20 examples: validation loss " in verdict.content
    ranked = embed_fields((await w.alice.slash(thread, "train status", job=1)).response)["Trials"].splitlines()
    assert ranked[0].startswith(f"#{best_trial.number}: {best_trial.value:.4f} (complete)")

    await w.env.advance_time(6)
    asked = await w.alice.slash(thread, "sample", prompt="Example", job=1, trial=best_trial.number, seed=3)
    assert f"trial #{best_trial.number} of job #1" in asked.response.content
    # the one asked for: the search already sampled its best trial itself, at seed 0
    await pump_until(w.env, lambda: any(s.trial == best_trial.number and s.seed == 3
                                        for s in db.list_samples(job_id=1)),
                     timeout=120, what="the trial's sample")
    assert thread.last_message.content.startswith("**Sample #")
    assert f"trial #{best_trial.number}" in thread.last_message.content


# ---- everything the bot said in a whole session, read the way a member reads it
# Every text the bot sent to Discord (messages, edits, ephemeral answers, embeds, buttons: the
# REST calls SimCord recorded) is swept for what no member should read: raw member ids, paths
# of the bot's machine, control characters and leftover template text.

TEXT_KEYS = {"content", "title", "description", "name", "value", "text", "label", "placeholder"}
MENTION = re.compile(r"<(?:@[!&]?|#)\d+>")
RAW_ID = re.compile(r"(?<![\w/])\d{15,21}(?!\w)")  # a Discord snowflake written out
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ufffd]")
CODE_BLOCK = re.compile(r"```.*?```", re.DOTALL)  # what a model wrote: its words are its own
TEMPLATE = re.compile(r"\{[a-z_][a-z_0-9.]*(?:[:!][^}]*)?\}|\bNone\b|\bnan\b|object at 0x|More Information Needed|"
                      r"Traceback|%\(?[a-z_]*\)?[sd]\b")


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
