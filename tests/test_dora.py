"""DoRA (``dora``: peft's weight-decomposed LoRA) in both kinds of run, on tiny bases.

A text run saves each layer's magnitude beside A and B, and the adapter folder a member downloads
loads with ``PeftModel.from_pretrained`` and samples what the run sampled. An image run writes the
diffusers file alone (metrics.json and the card say why: no single-file format diffusers loads keeps
the magnitudes), and that file draws in a fresh pipeline what the trained pipeline drew. The export's
load-back check compares a DoRA layer's effective weight change, so a file without the magnitudes fails it.
The CLI's ``--dora`` and ``/train start``'s ``dora`` option reach the trainer.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from bot.config import BotSettings
from loracord.cli import app
from storage import jobkinds
from storage.jobrun import run_job
from tests.bot_world import *  # noqa: F401,F403
from tests.family_fixtures import tiny_sd3  # noqa: F401
from tests.image_fixtures import RESOLUTION, image_folder, tiny_sd  # noqa: F401
from trainer.errors import TrainingError
from trainer.image.config import ImageTrainConfig
from trainer.image.export import DIFFUSERS_FILE, DORA_SINGLE_FILE, KOHYA_FILE, lora_deltas, save_diffusers, verify_loads
from trainer.image.pipelines import load_pipeline
from trainer.image.sample import sample_grid
from trainer.image.train import train_image
from trainer.text.config import TextTrainConfig
from trainer.rundir import RunDir
from trainer.spec import RunSpec
from trainer.text.train import generate, train_text

MAGNITUDE = "lora_magnitude_vector"
TEXT_CLI = ["--steps", "4", "--patience", "0", "--seq-len", "64", "--batch-size", "2", "--max-new-tokens", "4",
            "--prompt", "To be", "--precision", "fp32", "--threads", "1"]


def keys(path) -> list[str]:
    with safe_open(str(path), "pt") as f:
        return list(f.keys())


# --------------------------------------------------------------------------------------------
# text runs


@pytest.fixture(scope="module")
def text_runs(tiny_llama, tmp_path_factory):
    """A DoRA run and a LoRA run of the same seed and settings on the tiny Llama."""
    from tests.conftest import TINY_CORPUS

    root = tmp_path_factory.mktemp("dora-text")
    data = root / "texts.txt"
    data.write_text("\n\n".join(f"{s} Line {i}." for i, s in enumerate(TINY_CORPUS * 2)), encoding="utf-8")
    settings = dict(data=[str(data)], base=str(tiny_llama), steps=16, lr=5e-3, rank=8, target_modules="all-linear",
                    seq_len=64, batch_size=2, eval_every=4, augment=0.0, lora_dropout=0.0, max_new_tokens=8,
                    precision="fp32", threads=1)
    return {name: train_text(TextTrainConfig(out=str(root / name), dora=name == "dora", **settings))
            for name in ("dora", "lora")}


def test_a_text_dora_run_learns_and_saves_its_magnitudes(text_runs, tiny_llama):
    from trainer.models import load_causal_lm

    dora, lora = text_runs["dora"], text_runs["lora"]
    val = dora.metrics["curves"]["val_loss"]
    assert val[-1][1] < val[0][1]
    assert json.loads((dora.run_dir / "adapter" / "adapter_config.json").read_text())["use_dora"] is True
    assert json.loads((lora.run_dir / "adapter" / "adapter_config.json").read_text())["use_dora"] is False

    saved = load_file(str(dora.run_dir / "adapter" / "adapter_model.safetensors"))
    magnitudes = {k: v for k, v in saved.items() if MAGNITUDE in k}
    assert len(magnitudes) == sum(".lora_A." in k for k in saved) > 0  # one per adapted layer
    assert not [k for k in keys(lora.run_dir / "adapter" / "adapter_model.safetensors") if MAGNITUDE in k]

    # The magnitudes trained: they start as the base's weight norm per output feature, and moved.
    base, _ = load_causal_lm(tiny_llama)
    name = next(k for k in magnitudes if ".q_proj." in k)
    weight = base.get_submodule(name.removeprefix("base_model.model.").split(f".{MAGNITUDE}")[0]).weight
    assert magnitudes[name].shape == (weight.shape[0],)
    assert not torch.allclose(magnitudes[name], weight.detach().norm(dim=1), atol=1e-5)

    # Same seed, same data: DoRA trains another adapter than LoRA.
    other = load_file(str(lora.run_dir / "adapter" / "adapter_model.safetensors"))
    b = next(k for k in saved if ".lora_B." in k)
    assert not torch.allclose(saved[b], other[b], atol=1e-4)


def test_a_text_dora_adapter_loads_with_peft_and_samples_as_the_run_did(text_runs, tiny_llama):
    """The member's download: a fresh base and ``PeftModel.from_pretrained`` give the trained model back."""
    from peft import PeftModel

    from trainer.models import load_causal_lm

    run = text_runs["dora"].run_dir
    base, tokenizer = load_causal_lm(tiny_llama)
    ids = tokenizer("To be, or not to be", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        before = base(input_ids=ids).logits
    model = PeftModel.from_pretrained(base, str(run / "adapter"))
    assert any(MAGNITUDE in name for name, _ in model.named_parameters())
    with torch.no_grad():
        assert (model(input_ids=ids).logits - before).abs().max() > 1e-3

    # samples.json's "after" texts were drawn by the trained model itself, seeded: the same texts again
    samples = json.loads((run / "samples.json").read_text())
    config = json.loads((run / "metrics.json").read_text())["config"]
    again = generate(model, tokenizer, [s["prompt"] for s in samples], config["max_new_tokens"], config["seed"])
    assert again == [s["after"] for s in samples]

    card = (run / "adapter" / "README.md").read_text()
    assert "| dora | True |" in card
    assert "| dora |" not in (text_runs["lora"].run_dir / "adapter" / "README.md").read_text()


# --------------------------------------------------------------------------------------------
# image runs


def image_config(data, out, base, **kw) -> ImageTrainConfig:
    settings = dict(resolution=RESOLUTION, steps=12, rank=4, lr=2e-3, batch_size=4, eval_every=6, sample_every=0,
                    sample_steps=2, sample_seeds=[0], sample_prompts=["a photo of sks"], min_image_side=16,
                    augment=0.0, precision="fp32", dora=True)
    return ImageTrainConfig(data=[str(data)], out=str(out), base=str(base), **(settings | kw))


@pytest.fixture(scope="module")
def sd_dora_run(tmp_path_factory, tiny_sd, image_folder):
    return train_image(image_config(image_folder, tmp_path_factory.mktemp("dora-image") / "sd", tiny_sd))


def test_an_image_dora_run_writes_the_diffusers_file_alone_and_says_why(sd_dora_run):
    result = sd_dora_run
    adapter = result.run_dir / "adapter"
    assert sorted(p.name for p in adapter.iterdir()) == ["README.md", DIFFUSERS_FILE]
    assert set(result.adapter_files) == {"diffusers"}
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["single_file_skipped"] == DORA_SINGLE_FILE
    assert metrics["adapter_files"] == {"diffusers": f"adapter/{DIFFUSERS_FILE}"}
    assert metrics["config"]["dora"] is True

    names = keys(adapter / DIFFUSERS_FILE)
    assert sum(MAGNITUDE in k for k in names) == sum(".lora.down." in k for k in names) > 0

    card = (adapter / "README.md").read_text()
    assert DORA_SINGLE_FILE in card and KOHYA_FILE not in card and "| dora | True |" in card


def test_the_image_dora_file_draws_in_a_fresh_pipeline_what_the_run_drew(sd_dora_run, tiny_sd):
    result = sd_dora_run
    config = json.loads((result.run_dir / "metrics.json").read_text())["config"]
    with Image.open(result.run_dir / "samples" / "final.png") as image:  # the trained pipeline's last drawing
        trained = np.asarray(image, dtype=np.float32)

    def draw(loaded):
        side = config["resolution"]
        grid = sample_grid(loaded, config["sample_prompts"], config["sample_seeds"], size=(side, side),
                           steps=config["sample_steps"], guidance_scale=config["guidance_scale"])
        return np.asarray(grid, dtype=np.float32)

    fresh = load_pipeline(tiny_sd)
    base = draw(fresh)
    fresh.pipe.load_lora_weights(str(result.run_dir / "adapter"), weight_name=DIFFUSERS_FILE)
    assert [c.use_dora for c in fresh.denoiser.peft_config.values()] == [True]  # diffusers made DoRA layers of it
    loaded = draw(fresh)
    assert np.abs(loaded - base).mean() > 1.0  # uint8 levels: the adapter changes the drawing
    assert np.abs(loaded - trained).max() <= 2.0  # and draws what training drew (PNG rounding aside)


def test_a_flow_dora_run_writes_the_diffusers_file_alone(tiny_sd3, image_folder, tmp_path):
    """SD 3.5's alpha-baked ComfyUI file is left out too; the diffusers file passes the transformer's load-back check."""
    result = train_image(image_config(image_folder, tmp_path / "run", tiny_sd3, resolution=64, steps=4, eval_every=4,
                                      batch_size=2))
    assert set(result.adapter_files) == {"diffusers"}
    assert result.metrics["single_file_skipped"] == DORA_SINGLE_FILE
    assert sum(MAGNITUDE in k for k in keys(result.adapter_files["diffusers"])) > 0


# --------------------------------------------------------------------------------------------
# the load-back check


@pytest.fixture
def dora_pipeline(tiny_sd):
    """A tiny SD pipeline with a DoRA adapter whose B and magnitudes are far from their start."""
    from peft import LoraConfig

    loaded = load_pipeline(tiny_sd)
    torch.manual_seed(0)
    loaded.denoiser.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=list(loaded.part.LORA_TARGETS),
                                           init_lora_weights="gaussian", use_dora=True))
    with torch.no_grad():
        for name, param in loaded.denoiser.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
            elif MAGNITUDE in name:
                param.mul_(1 + 0.2 * torch.randn_like(param))
    return loaded


def test_a_dora_layers_change_is_what_merging_writes_into_it(dora_pipeline):
    """``lora_deltas`` of a DoRA layer includes its magnitude: it equals the change peft's merge makes."""
    from peft.tuners.lora import LoraLayer

    unet = dora_pipeline.denoiser
    deltas = lora_deltas(unet)
    name, layer = next((n, m) for n, m in unet.named_modules() if isinstance(m, LoraLayer))
    plain = layer.get_delta_weight("default").detach()
    before = layer.get_base_layer().weight.detach().clone()
    layer.merge(safe_merge=True)
    merged = layer.get_base_layer().weight.detach() - before
    torch.testing.assert_close(deltas[name], merged, atol=1e-6, rtol=1e-4)
    assert not torch.allclose(plain, merged, atol=1e-4)  # B @ A x scale alone is not the layer's change


def test_the_load_back_check_fails_a_dora_file_without_its_magnitudes(dora_pipeline, tiny_sd, tmp_path):
    whole = save_diffusers(dora_pipeline, tmp_path / "whole")
    verify_loads(load_pipeline(tiny_sd), dora_pipeline, {"diffusers": whole})

    with safe_open(str(whole), "pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}

    def check(name, changed, match):
        (tmp_path / name).mkdir()
        save_file(changed, str(tmp_path / name / DIFFUSERS_FILE), metadata=metadata)
        with pytest.raises(TrainingError, match=match):
            verify_loads(load_pipeline(tiny_sd), dora_pipeline, {"diffusers": tmp_path / name / DIFFUSERS_FILE})

    # the magnitudes dropped, as a converter that knows only A and B would write the file: diffusers
    # loads it with a warning and leaves them unset, and the check refuses it
    check("cut", {k: v for k, v in tensors.items() if MAGNITUDE not in k}, "loads only 0 of")
    # A and B as trained, the magnitudes 1% off: B @ A x scale alike, the layers' weights not
    check("off", {k: v * 1.01 if MAGNITUDE in k else v for k, v in tensors.items()}, "differently")


# --------------------------------------------------------------------------------------------
# the edges: the CLI's --dora and /train start's dora option reach the trainer


def test_cli_dora_switch_trains_a_dora_adapter(tiny_llama, text_file, tmp_path):
    from typer.testing import CliRunner

    for extra in ([], ["--dora"]):
        run = tmp_path / ("dora" if extra else "lora")
        result = CliRunner().invoke(app, ["train", "text", str(text_file), "--out", str(run), "--base", str(tiny_llama),
                                          *TEXT_CLI, *extra])
        assert result.exit_code == 0, result.output
        assert json.loads((run / "adapter" / "adapter_config.json").read_text())["use_dora"] is bool(extra)


@pytest.fixture
def bot_config(tiny_llama) -> BotSettings:
    return BotSettings(_env_file=None, allowed_models=[str(tiny_llama)], progress_edit_s=0, train_cooldown_s=0,
                       train_threads=1,
                       text_train_defaults={"precision": "fp32", "patience": 0, "seq_len": 64, "batch_size": 2,
                                            "max_new_tokens": 4, "augment": 0.0, "prompts": ["To be"]})


@pytest.mark.asyncio
async def test_train_start_dora_reaches_the_trainer(world, tiny_llama, tmp_path):
    await world.alice.slash(world.channel, "session new", kind="text", title="Magnitudes", base_model=str(tiny_llama))
    thread = world.channel.threads[-1]
    await world.alice.slash(thread, "data add", file=("fox.txt", text_bytes(12)))
    started = await world.alice.slash(thread, "train start", steps=4, dora=True)
    assert not started.ephemeral, started.response.content
    job = world.env.bot.services.db.list_jobs()[-1]
    assert RunSpec.from_job(job.kind, job.config).settings["dora"] is True
    run = RunDir(tmp_path / f"job-{job.id}")  # run as the worker runs it
    config = jobkinds.get(job.kind).prepare_inputs(world.env.bot.services.blobs, run, job.config)
    assert run_job(job.kind, config, run, resume=False)["status"] == "done"
    assert json.loads((run.adapter / "adapter_config.json").read_text())["use_dora"] is True
