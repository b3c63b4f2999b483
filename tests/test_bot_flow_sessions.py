"""FLUX.1 and SD 3.5 image sessions through SimCord with the real queue, worker and trainer on tiny
pipelines of each (FLUX.1 schnell-like, SD 3.5-like): the server allows the base, the bot sizes the
run from the family's native side, the worker trains it, the grid comes back from the family's own
pipeline, and the adapter a member downloads with ``/adapter export`` loads into a fresh pipeline of
that family and changes what it draws."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from huggingface_hub import ModelCard
from PIL import Image

from bot.config import BotSettings
from tests.bot_world import *  # noqa: F401,F403
from tests.family_fixtures import tiny_flux_schnell, tiny_sd3  # noqa: F401
from tests.image_fixtures import image_bytes, pattern_image

pytestmark = pytest.mark.asyncio

# fixture -> (label, family, the side a CPU worker trains at, the zip's files besides README.md)
FAMILIES = {
    # FLUX.1: the smallest side it takes (a quarter of FluxPipeline's 1024 px); the tiny transformer's
    # widths leave the kohya file out (diffusers reads it back only at FLUX.1's)
    "tiny_flux_schnell": ("FLUX.1", "flux", 256, ["pytorch_lora_weights.safetensors"]),
    # SD 3.5: half its 256 px native side, as on any CPU; with its ComfyUI single file
    "tiny_sd3": ("SD 3.5", "sd3", 128, ["lora_comfyui.safetensors", "pytorch_lora_weights.safetensors"]),
}
IMAGE_DEFAULTS = {"sample_steps": 2, "sample_seeds": [0], "sample_every": 0, "precision": "fp32",
                  "augment_variants": 1}


@pytest.fixture(params=list(FAMILIES))
def base(request):
    return request.param, request.getfixturevalue(request.param)


@pytest.fixture
def bot_config(base) -> BotSettings:
    return BotSettings(_env_file=None, allowed_models=[f"image:{base[1]}"], progress_edit_s=0,
                       train_cooldown_s=0, train_threads=1, image_train_defaults=IMAGE_DEFAULTS)


@pytest.fixture
def simcord_bot(make_bot):
    return make_bot(worker=True)


def draw(folder, adapter_dir=None) -> np.ndarray:
    from trainer.image.pipelines import load_pipeline

    loaded = load_pipeline(folder)
    if adapter_dir is not None:
        loaded.pipe.load_lora_weights(str(adapter_dir), weight_name="pytorch_lora_weights.safetensors")
    image = loaded.part.sample(loaded.pipe, "a photo of sks", seed=0, steps=2, guidance_scale=1.0, size=64)
    return np.asarray(image, dtype=np.float32)


async def test_a_flow_session_trains_posts_its_grid_and_exports_an_adapter_that_loads(world, base, tmp_path):
    (fixture, folder), w, db = base, world, world.env.bot.services.db
    label, family, side, files = FAMILIES[fixture]
    await w.alice.slash(w.channel, "session new", kind="image", title="Patterns", base_model=str(folder))
    thread = w.channel.threads[-1]
    for i in range(5):
        added = await w.alice.slash(thread, "data add", file=(f"p{i}.png", image_bytes(pattern_image(i, size=(160, 144)))),
                                    caption=f"sks pattern {i}")
        message = added.followups[0] if added.followups else added.response
        assert message.embeds[0].title == "Dataset: 1 file(s) added, 0 rejected", message.embeds[0].fields
    report = await w.alice.slash(thread, "data report")
    text = json.dumps([e.to_dict() for e in report.response.embeds]) + (report.response.content or "")
    assert label in text, text  # the family, read from the base's configs

    started = await w.alice.slash(thread, "train start", steps=2)
    assert "Job #1 is queued" in started.response.content
    assert f"{side} px" in started.response.content, started.response.content  # sized from the family's side
    await pump_until(w.env, lambda: db.get_job(1).finished, timeout=400, what="the training job")
    job = db.get_job(1)
    assert job.status == "done", job.error
    run = w.env.bot.services.settings.run_root / "job-1"
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["family"], metrics["prediction_type"], metrics["config"]["resolution"]) == (family, "flow", side)

    # The grid the thread shows is the family's drawing at the run's side.
    await pump_until(w.env, lambda: any(m.attachments and m.attachments[0].filename.startswith("sample-")
                                        for m in thread.history()), timeout=60, what="the sample grid")
    posted = next(m for m in thread.history() if m.attachments and m.attachments[0].filename.startswith("sample-"))
    with Image.open(io.BytesIO(await posted.attachments[0].read())) as grid:
        assert grid.size == (side, side * len(metrics["sample_prompts"]))  # a row per prompt, a column per seed

    exported = await w.alice.slash(thread, "adapter export")
    message = exported.followups[0] if exported.followups else exported.response
    assert message.attachments[0].filename == "loracord-job-1-adapter.zip"
    download = tmp_path / "download"
    with zipfile.ZipFile(io.BytesIO(await message.attachments[0].read())) as archive:
        assert sorted(archive.namelist()) == ["README.md", *files]
        archive.extractall(download)
    card = (download / "README.md").read_text()
    assert f"the {label} family" in card and ModelCard(card).data.tags
    assert ("lora_kohya" in card) == ("lora_kohya.safetensors" in files)  # the card names only files it holds
    assert ("lora_comfyui" in card) == ("lora_comfyui.safetensors" in files)
    assert np.abs(draw(folder, download) - draw(folder)).mean() > 1e-3
