"""FLUX.1 (schnell and dev) and SD 3.5 through the one image training loop (``train_image``), on tiny
offline pipelines loaded through ``from_pretrained`` as hub bases are: the validation loss falls,
the T5 encoder is freed once captions are cached, both export files load back into a fresh pipeline
and change what it draws, and sampling a finished run works (exact resume after a cancel:
tests/test_image_train.py, for every family)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from tests.family_fixtures import build_tiny_flux, tiny_flux_dev, tiny_flux_schnell, tiny_sd3  # noqa: F401
from tests.image_fixtures import RESOLUTION, assert_same_run, image_folder, tiny_sd  # noqa: F401
from trainer.errors import ConfigError
from trainer.image.config import ImageTrainConfig
from trainer.image.pipelines import load_pipeline
from trainer.image.sample import sample_run
from trainer.image.train import train_image

# FLUX.1's side is sized from FluxPipeline's fixed 1024 px default (256 at the least); the tiny SD 3.5
# says 256 px in its transformer config (64 at the least).
SIDES = {"tiny_flux_schnell": 256, "tiny_flux_dev": 256, "tiny_sd3": 64}
SINGLE_FILE = {"tiny_flux_schnell": None, "tiny_flux_dev": None, "tiny_sd3": "comfyui"}


def config(data, out, base, resolution: int, **kw) -> ImageTrainConfig:
    settings = dict(resolution=resolution, steps=12, rank=4, lr=3e-3, batch_size=2, eval_every=4, sample_every=0,
                    sample_steps=2, sample_seeds=[0], sample_prompts=["a photo of sks"], min_image_side=16,
                    augment=0.3, augment_variants=2, precision="fp32")
    return ImageTrainConfig(data=[str(data)], out=str(out), base=str(base), **(settings | kw))


@pytest.fixture(params=list(SIDES))
def flow_base(request):
    """(fixture name, tiny pipeline folder) for FLUX.1 schnell-like, dev-like and SD 3.5-like bases."""
    return request.param, request.getfixturevalue(request.param)


def draw(folder, run_dir=None, weight_name="pytorch_lora_weights.safetensors", side=64) -> np.ndarray:
    """What a fresh pipeline of ``folder`` draws (with the run's adapter file loaded, if given)."""
    loaded = load_pipeline(folder)
    if run_dir is not None:
        loaded.pipe.load_lora_weights(str(run_dir / "adapter"), weight_name=weight_name)
    image = loaded.part.sample(loaded.pipe, "a photo of sks", seed=0, steps=2, guidance_scale=1.0, size=side)
    return np.asarray(image, dtype=np.float32)


def test_flow_family_trains_exports_and_samples_through_the_loop(flow_base, image_folder, tmp_path):
    name, base = flow_base
    side = SIDES[name]
    result = train_image(config(image_folder, tmp_path / "run", base, side, sample_every=6))
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["status"] == "done" and metrics["prediction_type"] == "flow"
    assert metrics["family"] == load_pipeline(base).family and metrics["family"] in ("flux", "sd3")
    val = metrics["curves"]["val_loss"]
    assert len(val) == 3 and val[-1][1] < val[0][1]
    # Guidance and sample steps were left to the family: schnell 0, dev 3.5, SD 3.5 4.5.
    assert metrics["config"]["guidance_scale"] == {"tiny_flux_schnell": 0.0, "tiny_flux_dev": 3.5,
                                                   "tiny_sd3": 4.5}[name]

    # Samples came from the family's pipeline at the run's side, from cached embeddings (T5 was freed).
    assert sorted(metrics["samples"]) == ["samples/final.png", "samples/step-000006.png"]
    with Image.open(result.run_dir / "samples" / "final.png") as grid:
        assert grid.size == (side, side)

    # Each file is already proven by loading back during export; here the downloaded file also
    # changes what a fresh pipeline draws.
    wanted = {"diffusers"} | ({SINGLE_FILE[name]} if SINGLE_FILE[name] else set())
    assert set(result.adapter_files) == wanted
    before = draw(base)
    for path in result.adapter_files.values():
        assert np.abs(draw(base, result.run_dir, path.name) - before).mean() > 1e-3, path.name

    # A finished run samples again from its metrics, with the base's T5 loaded anew.
    paths = sample_run(result.run_dir, ["a photo of sks"], seed=3, count=2, steps=2)
    with Image.open(paths[0]) as grid:
        assert grid.size == (2 * side, side)


def test_flux_kohya_file_comes_with_the_loop_where_diffusers_reads_it_back(image_folder, tmp_path):
    """Without single-stream blocks (whose kohya layout diffusers reads only at FLUX.1's widths) the
    loop writes the kohya file too, with the trained alpha, and it changes a fresh pipeline's drawing."""
    base = build_tiny_flux(tmp_path / "flux-double", single_layers=0)
    result = train_image(config(image_folder, tmp_path / "run", base, 256, steps=4, eval_every=4, alpha=8.0))
    assert set(result.adapter_files) == {"diffusers", "kohya"}
    with safe_open(str(result.adapter_files["kohya"]), "pt") as f:
        assert all(k.startswith("lora_unet_double_blocks_0_") for k in f.keys())
        assert f.metadata()["ss_network_alpha"] == "8.0"
    before = draw(base)
    assert np.abs(draw(base, result.run_dir, "lora_kohya.safetensors") - before).mean() > 1e-3


def test_t5_is_freed_once_captions_are_cached(tiny_flux_dev, tiny_sd3, image_folder, tmp_path):
    from trainer.image.presets import size_defaults
    from trainer.image.train import _setup

    for base, side, t5 in ((tiny_flux_dev, 256, "text_encoder_2"), (tiny_sd3, 64, "text_encoder_3")):
        s = _setup(size_defaults(config(image_folder, tmp_path / "setup", base, side), 6))
        assert getattr(s.loaded.pipe, t5) is None
        assert {"", "a photo of sks"} <= set(s.cache["embeds"])  # dropout's and the sample prompt's embeddings
        assert [e for e in s.loaded.text_encoders if "T5" in type(e).__name__] == []


def test_bf16_run_loads_the_pipeline_in_bf16_and_trains_a_float32_adapter(tiny_sd3, image_folder, tmp_path,
                                                                          monkeypatch):
    """A flow family is not probed: bf16 asked for, the base loads in bf16, its LoRA trains in float32, and
    its files are checked in a fresh pipeline loaded in bf16."""
    from trainer.image.presets import size_defaults
    from trainer.image.train import _setup

    s = _setup(size_defaults(config(image_folder, tmp_path / "bf16", tiny_sd3, 64, precision="bf16"), 6))
    assert s.precision == "bf16" and s.precision_choice["reason"] == "bf16 was asked for"
    params = dict(s.loaded.denoiser.named_parameters())
    assert {p.dtype for n, p in params.items() if "lora_" in n} == {torch.float32}
    assert {p.dtype for n, p in params.items() if "lora_" not in n} == {torch.bfloat16}
    assert s.loaded.pipe.vae.dtype == torch.bfloat16
    # and the run's files are checked in a fresh pipeline loaded in bf16 too (a 12B base is not loaded in fp32)
    import trainer.image.pipelines as pipelines

    loads, real = [], pipelines.load_pipeline
    monkeypatch.setattr(pipelines, "load_pipeline",
                        lambda base, dtype=None, **kw: loads.append(dtype) or real(base, dtype, **kw))
    result = train_image(config(image_folder, tmp_path / "run", tiny_sd3, 64, precision="bf16", steps=2, eval_every=2))
    assert set(result.adapter_files) == {"diffusers", "comfyui"} and result.metrics["precision"] == "bf16"
    assert loads == [torch.bfloat16, torch.bfloat16]  # the base, then the fresh pipeline the files load into


def test_text_encoder_lora_is_refused_for_flow_families(tiny_flux_schnell, image_folder, tmp_path):
    with pytest.raises(ConfigError, match="keeps a FLUX.1 base's text encoders frozen"):
        train_image(config(image_folder, tmp_path / "te", tiny_flux_schnell, 256, train_text_encoder=True))
    assert not (tmp_path / "te" / "adapter").exists()


@pytest.mark.parametrize("fixture", ["tiny_sd3", "tiny_sd"])
def test_gradient_checkpointing_trains_the_same_adapter(fixture, request, image_folder, tmp_path):
    """Recomputing activations in the backward pass saves memory, not results: same losses, same adapter."""
    base = request.getfixturevalue(fixture)
    side = SIDES.get(fixture, RESOLUTION)
    runs = [train_image(config(image_folder, tmp_path / str(on), base, side, steps=4, eval_every=2, lora_dropout=0.1,
                               gradient_checkpointing=on)) for on in (False, True)]
    assert_same_run(runs[1], runs[0])
    assert runs[1].metrics["config"]["gradient_checkpointing"] is True
    from trainer.image.presets import size_defaults
    from trainer.image.train import _setup

    s = _setup(size_defaults(config(image_folder, tmp_path / "setup", base, side, gradient_checkpointing=True), 6))
    assert s.loaded.denoiser.is_gradient_checkpointing  # the denoiser really recomputes


def test_quick_tries_search_a_flow_family(tiny_sd3, image_folder, tmp_path):
    """Quick tries run on a flow base like on the others: each trial trains with its own settings."""
    from trainer.tune import tune

    fixed = dict(resolution=64, steps=4, eval_every=2, sample_every=0, sample_steps=2, sample_seeds=[0],
                 min_image_side=16, augment_variants=1, precision="fp32")
    result = tune("image", [str(image_folder)], tmp_path / "search", base=str(tiny_sd3), trials=2, settings=fixed,
                  folds=0, full_run=False)
    complete = [r for r in result.trials if r.status == "complete"]
    assert len(complete) == 2 and complete[0].params != complete[1].params
    assert all(r.val_loss is not None for r in complete) and result.best is not None
    for row in complete:
        run = json.loads((Path(row.run_dir) / "metrics.json").read_text())
        assert run["family"] == "sd3" and {k: run["config"][k] for k in row.params} == row.params
