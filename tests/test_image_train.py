"""Image LoRA training on tiny SD 1.x and SDXL pipelines: artifacts, learning, exports, resume, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from tests.family_fixtures import tiny_flux_dev, tiny_sd3  # noqa: F401
from tests.image_fixtures import (cancel_at, RESOLUTION, assert_same_run, image_folder, tiny_sd, tiny_sd_v, tiny_sdxl,  # noqa: F401
                                  write_image_folder)
from trainer.errors import Cancelled, ConfigError, DataError, ModelError
from trainer.events import JsonlEventLog
from trainer.image.config import ImageTrainConfig
from trainer.image.export import DIFFUSERS_FILE, KOHYA_FILE
from trainer.image.pipelines import load_pipeline
from trainer.image.sample import sample_run
from trainer.image.train import train_image


def config(data, out, base, **kw) -> ImageTrainConfig:
    settings = dict(resolution=RESOLUTION, steps=24, rank=4, lr=2e-3, batch_size=4, eval_every=8, sample_every=12,
                    sample_steps=2, sample_seeds=[0], sample_prompts=["a photo of sks"], min_image_side=16,
                    augment=0.5, augment_variants=2, precision="fp32")
    return ImageTrainConfig(data=[str(data)], out=str(out), base=str(base), **(settings | kw))


@pytest.fixture(scope="module")
def sd_run(tmp_path_factory, tiny_sd, image_folder):
    events = []
    result = train_image(config(image_folder, tmp_path_factory.mktemp("runs") / "sd", tiny_sd, sample_seeds=[0, 1],
                                sample_prompts=None), on_event=events.append)
    return result, events


def render(pipe, prompt="a photo of sks pattern 1", seed=0) -> np.ndarray:
    return pipe(prompt, num_inference_steps=2, guidance_scale=1.0, height=RESOLUTION, width=RESOLUTION,
                generator=torch.Generator().manual_seed(seed), output_type="np").images[0]


def test_sd_run_writes_exactly_the_expected_files(sd_run):
    result, _ = sd_run
    files = sorted(str(p.relative_to(result.run_dir)) for p in result.run_dir.rglob("*") if p.is_file())
    assert files == ["adapter/README.md", "adapter/lora_kohya.safetensors", "adapter/pytorch_lora_weights.safetensors",
                     "events.jsonl", "loss.png", "metrics.json", "samples/final.png", "samples/step-000012.png"]


def test_metrics_describe_the_run(sd_run, tiny_sd):
    result, _ = sd_run
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["kind"] == "image" and metrics["status"] == "done"
    assert metrics["base"] == str(tiny_sd) and metrics["family"] == "sd"
    assert metrics["config"]["rank"] == 4 and metrics["config"]["steps"] == 24
    assert metrics["data_report"]["images"] == 6
    assert metrics["scores_unavailable"]  # no scoring model configured: the bot says so (trainer.scores)
    assert metrics["data_report"]["train_images"] + metrics["data_report"]["val_images"] == 6
    assert [s for s, _ in metrics["curves"]["train_loss"]] == list(range(1, 25))
    assert [s for s, _ in metrics["curves"]["val_loss"]] == [8, 16, 24]


def test_validation_loss_falls(sd_run):
    result, _ = sd_run
    val = result.metrics["curves"]["val_loss"]
    assert val[-1][1] < val[0][1] - 1e-3
    assert result.val_loss == min(v for _, v in val)


def test_progress_events_match_the_text_trainer(sd_run):
    result, events = sd_run
    kinds = [e.kind for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert kinds.count("step") == 24 and kinds.count("eval") == 3 and kinds.count("sample") == 2
    assert [e.kind for e in JsonlEventLog(result.run_dir / "events.jsonl").read()] == kinds
    assert next(e for e in events if e.kind == "sample").artifacts == ["samples/step-000012.png"]


def test_sample_grid_has_one_row_per_prompt_and_one_column_per_seed(sd_run):
    from PIL import Image

    result, _ = sd_run
    prompts = result.metrics["sample_prompts"]
    with Image.open(result.run_dir / "samples" / "final.png") as grid:
        assert grid.size == (2 * RESOLUTION, len(prompts) * RESOLUTION)


def test_both_exports_load_into_a_pipeline_and_change_its_output(sd_run, tiny_sd):
    result, _ = sd_run
    pipe = load_pipeline(tiny_sd).pipe
    base = render(pipe)
    outputs = {}
    for fmt, name in (("diffusers", DIFFUSERS_FILE), ("kohya", KOHYA_FILE)):
        pipe.load_lora_weights(str(result.run_dir / "adapter"), weight_name=name, adapter_name=fmt)
        pipe.set_adapters([fmt])
        outputs[fmt] = render(pipe)
        assert np.abs(outputs[fmt] - base).mean() > 1e-4, f"{fmt} LoRA did not change the output"
    np.testing.assert_allclose(outputs["kohya"], outputs["diffusers"], atol=1e-4)


def test_kohya_file_uses_kohya_keys_and_trained_alpha(sd_run):
    result, _ = sd_run
    with safe_open(str(result.run_dir / "adapter" / KOHYA_FILE), "pt") as f:
        keys = list(f.keys())
        alphas = {f.get_tensor(k).item() for k in keys if k.endswith(".alpha")}
        assert f.metadata()["ss_network_dim"] == "4"
    assert keys and all(k.startswith("lora_unet_") for k in keys)
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in keys
    assert {k.rsplit(".", 2)[-2] + "." + k.rsplit(".", 1)[-1] if not k.endswith("alpha") else "alpha"
            for k in keys} == {"lora_down.weight", "lora_up.weight", "alpha"}
    assert alphas == {4.0}


def test_sample_run_writes_a_png_grid_per_prompt(sd_run):
    from PIL import Image

    result, _ = sd_run
    paths = sample_run(result.run_dir, prompts=["a photo of sks", "sks pattern 2"], seed=3, count=3, steps=2)
    assert len(paths) == 2 and all(p.suffix == ".png" and p.exists() for p in paths)
    with Image.open(paths[0]) as grid:
        assert grid.size == (3 * RESOLUTION, RESOLUTION)


def test_sdxl_trains_and_both_exports_load(tmp_path, tiny_sdxl, image_folder):
    result = train_image(config(image_folder, tmp_path / "xl", tiny_sdxl, steps=8, eval_every=4, sample_every=0,
                                alpha=8.0))
    assert result.metrics["family"] == "sdxl"
    val = result.metrics["curves"]["val_loss"]
    assert val[-1][1] < val[0][1]
    with safe_open(str(result.adapter_files["kohya"]), "pt") as f:
        assert all(k.startswith("lora_unet_") for k in f.keys())
        assert {f.get_tensor(k).item() for k in f.keys() if k.endswith(".alpha")} == {8.0}
    pipe = load_pipeline(tiny_sdxl).pipe
    base = render(pipe)
    for fmt, name in (("diffusers", DIFFUSERS_FILE), ("kohya", KOHYA_FILE)):
        pipe.load_lora_weights(str(result.run_dir / "adapter"), weight_name=name, adapter_name=fmt)
        pipe.set_adapters([fmt])
        assert np.abs(render(pipe) - base).mean() > 1e-4, fmt


def test_text_encoder_lora_trains_or_is_refused_up_front(tmp_path, tiny_sdxl, image_folder):
    """Where transformers can load text-encoder LoRA (peft new enough) it trains; elsewhere a clear ConfigError."""
    from trainer.image.train import check_text_encoder_lora

    settings = config(image_folder, tmp_path / "te", tiny_sdxl, steps=4, eval_every=4, sample_every=0,
                      train_text_encoder=True)
    try:
        check_text_encoder_lora()
    except ConfigError:
        with pytest.raises(ConfigError, match="peft>="):
            train_image(settings)
        assert not (tmp_path / "te" / "metrics.json").exists()
        return
    result = train_image(settings)
    with safe_open(str(result.adapter_files["kohya"]), "pt") as f:
        assert {"_".join(k.split("_")[:2]) for k in f.keys()} == {"lora_unet", "lora_te1", "lora_te2"}


def test_v_prediction_base_trains(tmp_path, tiny_sd_v, image_folder):
    result = train_image(config(image_folder, tmp_path / "v", tiny_sd_v, steps=8, eval_every=4, sample_every=0, noise_offset=0.05))
    assert result.metrics["prediction_type"] == "v_prediction"
    val = result.metrics["curves"]["val_loss"]
    assert val[-1][1] < val[0][1]


@pytest.mark.parametrize("fixture, side", [("tiny_sd", RESOLUTION), ("tiny_flux_dev", 256), ("tiny_sd3", 64)])
def test_cancel_then_resume_continues_exactly(fixture, side, request, tmp_path, image_folder):
    """For a UNet family and both flow families (FLUX.1-dev's guidance, SD 3.5's logit-normal timesteps)."""
    tiny_sd = request.getfixturevalue(fixture)
    settings = dict(steps=8, eval_every=4, sample_every=0, lora_dropout=0.1, resolution=side)
    straight = train_image(config(image_folder, tmp_path / "straight", tiny_sd, **settings))

    stop_after_five, cancel = cancel_at(5)

    out = tmp_path / "resumed"
    with pytest.raises(Cancelled, match="step 5"):
        train_image(config(image_folder, out, tiny_sd, **settings), on_event=stop_after_five, cancel=cancel)
    assert (out / "checkpoints" / "step-000005" / "state.json").exists()
    assert json.loads((out / "metrics.json").read_text())["status"] == "cancelled"
    assert not (out / "adapter").exists()

    resumed = train_image(config(image_folder, out, tiny_sd, resume=True, **settings))
    assert resumed.steps_done == 8
    assert_same_run(resumed, straight)
    assert not (out / "checkpoints").exists()


def test_early_stopping_keeps_the_best_adapter(tmp_path, tiny_sd, image_folder):
    events = []
    result = train_image(config(image_folder, tmp_path / "early", tiny_sd, steps=40, eval_every=2, sample_every=0,
                                patience=2, min_delta=10.0), on_event=events.append)
    assert result.stop_reason == "early_stopped"
    assert result.steps_done == 6 and result.best_step == 2
    assert [e.kind for e in events].count("stopped_early") == 1


def test_resume_without_checkpoint_and_finished_run_are_refused(sd_run, tmp_path, tiny_sd, image_folder):
    with pytest.raises(ConfigError, match="no checkpoint"):
        train_image(config(image_folder, tmp_path / "empty", tiny_sd, resume=True))
    result, _ = sd_run
    with pytest.raises(Exception, match="already holds a finished run"):
        train_image(config(image_folder, result.run_dir, tiny_sd))


def test_bad_data_fails_before_training(tmp_path, tiny_sd):
    folder = write_image_folder(tmp_path / "data", count=3)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(DataError, match="broken.jpg"):
        train_image(config(folder, tmp_path / "run", tiny_sd))
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_bad_base_models_get_clear_errors(tmp_path, image_folder):
    not_a_pipeline = tmp_path / "plain"
    not_a_pipeline.mkdir()
    (not_a_pipeline / "config.json").write_text("{}")
    (not_a_pipeline / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="model_index.json"):
        train_image(config(image_folder, tmp_path / "r1", not_a_pipeline))
    other = tmp_path / "video"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "CogVideoXPipeline"}))
    (other / "x.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="CogVideoXPipeline pipeline; loracord trains SD 1.x/2.x .* FLUX.1"):
        train_image(config(image_folder, tmp_path / "r2", other))
    with pytest.raises(ModelError, match="Unknown base model"):
        train_image(config(image_folder, tmp_path / "r3", "not a model"))


def test_config_errors_list_every_problem():
    with pytest.raises(ConfigError) as info:
        ImageTrainConfig.build(data=[], out="o", base="b", resolution=30, rank=0, augment=2)
    message = str(info.value)
    assert all(word in message for word in ("data", "multiple of 8", "rank", "augment"))
    with pytest.raises(ConfigError, match=r"eval_every \(10\) is larger than steps \(4\)"):
        ImageTrainConfig.build(data=["x"], out="o", base="b", steps=4, eval_every=10)


def test_an_image_job_runs_through_the_queue_job_runner(tiny_sd, image_folder, tmp_path):
    """storage.jobrun runs a `train_image` job as a worker does, from a JSON config."""
    from storage.jobrun import run_job
    from trainer.rundir import RunDir

    settings = config(image_folder, tmp_path / "unused", tiny_sd, steps=4, eval_every=2, sample_every=4).model_dump()
    settings.pop("out"), settings.pop("resume")
    run = RunDir(tmp_path / "job")
    run.root.mkdir()
    result = run_job("train_image", settings, run, resume=False)
    assert result["status"] == "done" and result["val_loss"] is not None
    assert (run.adapter / DIFFUSERS_FILE).exists() and (run.adapter / KOHYA_FILE).exists()
    assert json.loads(run.metrics.read_text())["kind"] == "image"
