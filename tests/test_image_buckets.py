"""Aspect-ratio buckets: images of every shape train at their own aspect, none dropped, none cropped
to a square unless asked, with exact resume, SDXL's time ids at the bucket's size, and sample grids
at an asked aspect."""

from __future__ import annotations

import json
import math

import pytest
from PIL import Image

from tests.image_fixtures import cancel_at, RESOLUTION, assert_same_run, pattern_image, tiny_sd, tiny_sdxl  # noqa: F401
from trainer.errors import Cancelled, ConfigError
from trainer.image.config import ImageTrainConfig
from trainer.image.sizes import aspect_size, bucket_for, bucket_sizes, bucket_step
from trainer.image.train import train_image

# 3:4, 1:1, 16:9, 9:16 and 4:3, as phones, scanners and screenshots give them
SHAPES = {"portrait.png": (60, 80), "square.png": (64, 64), "wide.png": (96, 54), "tall.png": (54, 96),
          "landscape.png": (80, 60)}


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("odd") / "data"
    folder.mkdir()
    for i, (name, size) in enumerate(SHAPES.items()):
        pattern_image(i, size=size).save(folder / name)
        (folder / name).with_suffix(".txt").write_text(f"sks pattern {name.split('.')[0]}")
    return folder


def config(data, out, base, **kw) -> ImageTrainConfig:
    settings = dict(resolution=RESOLUTION, steps=8, rank=4, lr=2e-3, batch_size=2, eval_every=4, sample_every=0,
                    sample_steps=2, sample_seeds=[0], sample_prompts=["a photo of sks"], min_image_side=16,
                    augment=0.5, augment_variants=2, precision="fp32")
    return ImageTrainConfig(data=[str(data)], out=str(out), base=str(base), **(settings | kw))


@pytest.mark.parametrize("resolution, multiple", [(32, 8), (512, 8), (1024, 16), (768, 8)])
def test_buckets_hold_about_the_runs_pixels_at_every_aspect(resolution, multiple):
    sizes = bucket_sizes(resolution, multiple)
    step = bucket_step(resolution, multiple)
    assert sizes[0] == (resolution, resolution) and len(sizes) == len(set(sizes)) >= 3
    for w, h in sizes:
        assert w * h <= resolution * resolution and w % step == 0 and h % step == 0 and w % multiple == 0
        assert max(w, h) <= 2 * min(w, h)
        assert w * h >= 0.75 * resolution * resolution  # about the run's area, not a sliver of it
    assert {(h, w) for w, h in sizes} == set(sizes)  # portrait for every landscape


def test_each_image_goes_to_the_bucket_nearest_its_aspect():
    sizes = bucket_sizes(512, 8)
    for w, h in [(3000, 4000), (1920, 1080), (1080, 1920), (1000, 1000), (4000, 3000), (5000, 1000)]:
        got = bucket_for(w, h, 512, 8)
        best = min(abs(math.log(s[0] / s[1]) - math.log(w / h)) for s in sizes)
        assert abs(math.log(got[0] / got[1]) - math.log(w / h)) == pytest.approx(best)
    assert bucket_for(1920, 1080, 512, 8) == (640, 384) and bucket_for(1080, 1920, 512, 8) == (384, 640)
    assert bucket_for(1920, 1080, 512, 8, square=True) == (512, 512)
    assert aspect_size("3:4", 512, 8) == (448, 576) and aspect_size(None, 512, 8) == (512, 512)


def test_odd_shapes_train_in_their_buckets_with_batch_2_and_none_dropped(odd_images, tiny_sd, tmp_path):
    result = train_image(config(odd_images, tmp_path / "run", tiny_sd, sample_aspect="3:4"))
    buckets = result.metrics["buckets"]
    assert {b["size"] for b in buckets} == {"32x32", "24x40", "40x24"}
    names = [n.rsplit("/", 1)[-1].split("-", 1)[-1] for b in buckets for n in b["images"] + b["held_out"]]
    assert sorted(names) == sorted(SHAPES)  # every image in exactly one bucket, none dropped
    where = {n.rsplit("/", 1)[-1].split("-", 1)[-1]: b["size"] for b in buckets for n in b["images"] + b["held_out"]}
    assert where == {"portrait.png": "24x40", "tall.png": "24x40", "square.png": "32x32", "wide.png": "40x24",
                     "landscape.png": "40x24"}
    val = result.metrics["curves"]["val_loss"]
    assert len(val) == 2 and all(math.isfinite(v) for _, v in val)
    with Image.open(result.run_dir / "samples" / "final.png") as grid:
        assert grid.size == (24, 40)  # one prompt, one seed, at the asked 3:4

    square = train_image(config(odd_images, tmp_path / "square", tiny_sd, crop="square", steps=2, eval_every=2))
    assert [b["size"] for b in square.metrics["buckets"]] == ["32x32"]


def test_a_bucketed_run_resumes_exactly(odd_images, tiny_sd, tmp_path):
    settings = dict(lora_dropout=0.1)
    straight = train_image(config(odd_images, tmp_path / "straight", tiny_sd, **settings))
    stop_after_five, cancel = cancel_at(5)

    out = tmp_path / "resumed"
    with pytest.raises(Cancelled, match="step 5"):
        train_image(config(odd_images, out, tiny_sd, **settings), on_event=stop_after_five, cancel=cancel)
    resumed = train_image(config(odd_images, out, tiny_sd, resume=True, **settings))
    assert_same_run(resumed, straight)


def test_sdxl_time_ids_say_each_buckets_size(odd_images, tiny_sdxl, tmp_path):
    from trainer.image.presets import size_defaults
    from trainer.image.train import _setup

    s = _setup(size_defaults(config(odd_images, tmp_path / "xl", tiny_sdxl, val_fraction=0), 5))
    assert len(s.cache["buckets"]) == 3
    for bucket in s.cache["buckets"]:
        w, h = bucket["size"]
        scale = s.loaded.pipe.vae_scale_factor
        assert bucket["latent_mean"].shape[-2:] == (h // scale, w // scale)  # latents at the bucket's shape
        time_ids = bucket["conditioning"]["time_ids"]
        assert time_ids[:, 4:].tolist() == [[h, w]] * len(bucket["rows"])  # target (height, width)
        originals = [[s.train[i].image.height, s.train[i].image.width] for i in bucket["rows"]]
        assert time_ids[:, :2].tolist() == originals


def test_bad_aspects_are_refused_saying_the_form():
    with pytest.raises(ConfigError, match="aspect '4:1' must be positive, at most 2:1"):
        ImageTrainConfig.build(data=["x"], out="o", base="b", sample_aspect="4:1")
    with pytest.raises(ConfigError, match="is not W:H"):
        ImageTrainConfig.build(data=["x"], out="o", base="b", sample_aspect="wide")
    assert json.loads(ImageTrainConfig(data=["x"], out="o", base="b", sample_aspect=" 9:16 ").model_dump_json())[
        "sample_aspect"] == "9:16"
