"""An image session through SimCord with the real queue, worker and trainer on a tiny SD pipeline:
captions given at upload reach the trainer, and quick tries vary the settings the member left open.

Captions come in the three ways a member gives them: an attachment's description (its alt
text), the upload's ``caption`` option, and a zip holding sidecar ``.txt`` files and a
``metadata.jsonl``. The test reads back what the trainer actually trained with: the run's
``metrics.json`` (caption of every image) and the ``metadata.jsonl`` the worker wrote.

SimCord's members upload attachments without descriptions (only a bot's own uploads carry
them), so ``describe`` sets the description on the fake CDN's record, as a Discord client
would when a member types alt text; everything after that is the real bot.
"""

from __future__ import annotations

import io
import json
import zipfile

import pytest
from PIL import Image

from bot.config import BotSettings
from tests.bot_world import *  # noqa: F401,F403
from tests.hub_standin import hub  # noqa: F401 (the stand-in Hub, a fixture)
from tests.image_fixtures import RESOLUTION, image_bytes, pattern_image, tiny_sd  # noqa: F401

pytestmark = pytest.mark.asyncio

# Small and fast on 2 CPU cores: the tiny pipeline's side, few denoising steps, one grid at the end.
IMAGE_DEFAULTS = {"resolution": RESOLUTION, "sample_steps": 2, "sample_seeds": [0], "sample_every": 0,
                  "precision": "fp32", "augment_variants": 1}


@pytest.fixture
def bot_config(tiny_sd) -> BotSettings:
    return BotSettings(_env_file=None, allowed_models=[f"image:{tiny_sd}"], progress_edit_s=0, train_cooldown_s=0,
                       train_threads=1, image_train_defaults=IMAGE_DEFAULTS)


@pytest.fixture
def simcord_bot(make_bot):
    return make_bot(worker=True)


def png(seed: int) -> bytes:
    return image_bytes(pattern_image(seed, size=(72, 64)))  # the bot refuses images under 64 px


def describe(env, descriptions: dict[str, str]) -> None:
    """Give attachments named in ``descriptions`` that alt text when they are uploaded."""
    cdn = env.backend.cdn
    store = cdn.store_attachment

    def store_with_description(attachment_id, channel_id, filename, data, description):
        return store(attachment_id, channel_id, filename, data, description or descriptions.get(filename))

    cdn.store_attachment = store_with_description


def captioned_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("set/blue.png", png(2))
        archive.writestr("set/blue.txt", "sks pattern in blue, sidecar")
        archive.writestr("set/green.png", png(3))
        archive.writestr("set/violet.png", png(4))
        archive.writestr("set/metadata.jsonl", json.dumps({"file_name": "green.png", "text": "sks pattern in green, "
                                                           "metadata"}) + "\n" + json.dumps(
            {"file_name": "violet.png", "caption": "sks pattern in violet, metadata"}) + "\n")
    return buffer.getvalue()


CAPTIONS = {
    "red.png": "sks pattern in red, alt text",
    "amber.png": "sks pattern in amber, upload caption",
    "blue.png": "sks pattern in blue, sidecar",
    "green.png": "sks pattern in green, metadata",
    "violet.png": "sks pattern in violet, metadata",
}


async def image_thread(w, tiny_sd):
    describe(w.env, {"red.png": CAPTIONS["red.png"]})
    await w.alice.slash(w.channel, "session new", kind="image", title="Patterns", base_model=str(tiny_sd))
    thread = w.channel.threads[-1]
    await w.alice.slash(thread, "data add", file=("red.png", png(0)))
    await w.alice.slash(thread, "data add", file=("amber.png", png(1)), caption=CAPTIONS["amber.png"])
    added = await w.alice.slash(thread, "data add", file=("set.zip", captioned_zip()))
    message = added.followups[0] if added.followups else added.response
    assert message.embeds[0].title == "Dataset: 3 file(s) added, 0 rejected", message.embeds[0].fields
    db = w.env.bot.services.db
    items = db.list_dataset_items(db.session_by_thread(thread.id).id)
    assert {i.filename: i.caption for i in items} == CAPTIONS  # recorded at upload
    return thread


async def test_captions_given_at_upload_are_the_captions_the_trainer_used(world, tiny_sd, hub):
    w, db = world, world.env.bot.services.db
    thread = await image_thread(w, tiny_sd)
    started = await w.alice.slash(thread, "train start", preset="quick", steps=2)
    assert "Job #1 is queued" in started.response.content
    await pump_until(w.env, lambda: db.get_job(1).finished, timeout=300, what="the image training job")
    job = db.get_job(1)
    assert job.status == "done", job.error

    run = w.env.bot.services.settings.run_root / "job-1"
    metrics = json.loads((run / "metrics.json").read_text())
    used = {name.rsplit("/", 1)[-1].split("-", 1)[1]: caption for name, caption in
            metrics["data_report"]["captions"].items()}
    assert used == CAPTIONS  # every image trained on its own caption, none on the instance prompt
    assert metrics["data_report"]["caption_sources"] == {"sidecar": 0, "metadata": 5, "instance_prompt": 0}
    rows = [json.loads(line) for line in (run / "data" / "metadata.jsonl").read_text().splitlines()]
    assert sorted(r["text"] for r in rows) == sorted(CAPTIONS.values())
    # the preset was sized in the trainer: the member's steps, the quick preset's rank and rate
    assert (metrics["config"]["preset"], metrics["config"]["steps"], metrics["config"]["rank"]) == ("quick", 2, 4)
    assert metrics["config"]["resolution"] == RESOLUTION  # the server's default for image runs
    # the final grid is posted with its scores line: this server names no scoring model, so no number
    grids = [m for m in thread.history() if m.content.startswith("**Sample #")]
    assert grids and grids[-1].attachments
    assert grids[-1].content.endswith("\n**Scores:** unavailable: no scoring model is on the worker's machine.")

    # published to the Hub (a local stand-in for its HTTP API, tests/hub_standin.py): the run's
    # sample grids travel from the worker through the blob store, and the card shows each of them
    await w.alice.slash(thread, "adapter publish", repo="alice/fox-style")
    stored = hub.repos["alice/fox-style"]
    sent = sorted(name for name in stored if name.endswith(".png"))
    assert sent and sent == sorted(metrics["samples"])
    assert all(stored[name] == (run / name).read_bytes() for name in sent)
    card = stored["README.md"].decode()
    assert all(name in card for name in sent)


async def test_quick_tries_from_the_bot_vary_the_settings_the_member_left_open(world, tiny_sd):
    w, db = world, world.env.bot.services.db
    thread = await image_thread(w, tiny_sd)
    started = await w.alice.slash(thread, "train tune", trials=2, steps=5)
    assert "2 quick tries" in started.response.content
    await pump_until(w.env, lambda: db.get_job(1).finished, timeout=400, what="the image tuning job")
    job = db.get_job(1)
    assert job.status == "done", job.error

    trials = db.list_trials(job.id)
    assert len(trials) == 2
    searched = {"lr", "rank", "lora_dropout", "augment"}  # steps was the member's: it stays fixed
    assert all(set(t.params) == searched for t in trials)
    assert trials[0].params != trials[1].params
    # and the trainer ran each trial with its own settings: five images are a tiny set, so every
    # trial is cross-validated, and each of its folds trains with the trial's settings
    folder = w.env.bot.services.settings.run_root / "job-1" / "tune" / "trials"
    configs = []
    for t in trials:
        folds = sorted((folder / f"{t.number:04d}").glob("fold-*/metrics.json"))
        assert folds, f"trial {t.number} left no fold runs"
        fold_configs = [json.loads(f.read_text())["config"] for f in folds]
        for config in fold_configs:
            assert {k: config[k] for k in searched} == t.params
            assert config["steps"] == 5
        configs.append(fold_configs[0])
    assert configs[0]["lr"] != configs[1]["lr"]
    # the member's steps, not a count read from the folds
    assert any(m.content.startswith("✅ Job #1 finished after 5 steps") for m in thread.history())


ODD = {"portrait.png": (72, 96), "square.png": (80, 80), "wide.png": (128, 72), "tall.png": (72, 128),
       "landscape.png": (96, 72)}  # 3:4, 1:1, 16:9, 9:16, 4:3, every side at least the bot's 64 px


async def test_odd_shapes_are_bucketed_from_the_report_to_the_samples(world, tiny_sd):
    """/data report shows each bucket and what it holds, the run trains each image in its bucket,
    /train start crop:square crops them all, and /sample aspect:3:4 draws at 3:4."""
    w, db = world, world.env.bot.services.db
    await w.alice.slash(w.channel, "session new", kind="image", title="Shapes", base_model=str(tiny_sd))
    thread = w.channel.threads[-1]
    for i, (name, size) in enumerate(ODD.items()):
        await w.alice.slash(thread, "data add", file=(name, image_bytes(pattern_image(i, size=size))))
    report = await w.alice.slash(thread, "data report")
    message = report.followups[0] if report.followups else report.response
    text = "\n".join(f.value for f in message.embeds[0].fields) + (message.embeds[0].description or "")
    line = next(line for line in text.splitlines() if line.startswith("**Buckets**"))
    assert "32x32 (square): 1 (square.png)" in line
    assert "24x40 (portrait): 2 (portrait.png, tall.png)" in line and "40x24 (landscape): 2 (" in line

    await w.alice.slash(thread, "train start", steps=2)
    await pump_until(w.env, lambda: db.get_job(1).finished, timeout=300, what="the bucketed run")
    assert db.get_job(1).status == "done", db.get_job(1).error
    metrics = json.loads((w.env.bot.services.settings.run_root / "job-1" / "metrics.json").read_text())
    assert {b["size"] for b in metrics["buckets"]} == {"32x32", "24x40", "40x24"}
    assert sum(len(b["images"]) + len(b["held_out"]) for b in metrics["buckets"]) == 5  # none dropped

    refused = await w.alice.slash(thread, "sample", prompt="a photo of sks", aspect="5:1")
    assert "at most 2:1" in refused.response.content and len(db.list_samples(job_id=1)) == 1
    await w.env.advance_time(6.0)  # /sample's cooldown
    await w.alice.slash(thread, "sample", prompt="a photo of sks", aspect="3:4")
    await pump_until(w.env, lambda: len(db.list_samples(job_id=1)) == 2, timeout=120, what="the 3:4 sample")
    posted = thread.last_message
    with Image.open(io.BytesIO(await posted.attachments[0].read())) as image:
        assert image.size == (24, 40)

    await w.alice.slash(thread, "train start", steps=2, crop="square")
    await pump_until(w.env, lambda: db.get_job(3).finished, timeout=300, what="the square run")
    metrics = json.loads((w.env.bot.services.settings.run_root / "job-3" / "metrics.json").read_text())
    assert [b["size"] for b in metrics["buckets"]] == ["32x32"] and metrics["config"]["crop"] == "square"
