"""Tag captions at training time: with shuffle_tags each step sees one of a few cached orders of an
image's comma-separated tags, the trigger word (the first keep_tags) always first; runs stay exact."""

from __future__ import annotations

import pytest
import torch

from tests.image_fixtures import (cancel_at, RESOLUTION, assert_same_run, tiny_sd,  # noqa: F401
                                  write_image_folder, write_metadata)
from trainer.errors import Cancelled
from trainer.image.config import ImageTrainConfig
from trainer.image.train import TAG_ORDERS, tag_orders, train_image

TAGS = "sks, red square, blue circle, grid, soft light"


@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
    folder = write_image_folder(tmp_path_factory.mktemp("tagged") / "data", count=6, captions=False)
    write_metadata(folder, [{"file_name": p.name, "text": f"{TAGS}, pattern {i}"}
                            for i, p in enumerate(sorted(folder.glob("img*")))])
    return folder


def config(data, out, base, **kw) -> ImageTrainConfig:
    settings = dict(resolution=RESOLUTION, steps=6, rank=4, lr=2e-3, batch_size=2, eval_every=3, sample_every=0,
                    sample_steps=2, sample_seeds=[0], sample_prompts=["sks"], min_image_side=16, augment=0.0,
                    precision="fp32", shuffle_tags=True, keep_tags=1, caption_dropout=0.0)
    return ImageTrainConfig(data=[str(data)], out=str(out), base=str(base), **(settings | kw))


def test_tag_orders_keep_the_leading_tags_and_shuffle_the_rest():
    orders = tag_orders(TAGS, keep=1, count=TAG_ORDERS, seed=3)
    assert orders[0] == TAGS and len(orders) == TAG_ORDERS and len(set(orders)) > 1
    for order in orders:
        tags = order.split(", ")
        assert tags[0] == "sks" and sorted(tags) == sorted(TAGS.split(", "))
    assert tag_orders(TAGS, keep=1, count=4, seed=3) == orders  # seeded
    assert all(o.startswith("sks, red square, ") for o in tag_orders(TAGS, keep=2, count=4, seed=1))
    assert tag_orders("a photo of sks", keep=1, count=3, seed=0) == ["a photo of sks"] * 3  # no tags to move


def test_each_step_draws_an_order_of_the_tags_from_the_cache(tagged, tiny_sd, tmp_path):
    from trainer.image.presets import size_defaults
    from trainer.image.train import _draw_batch, _setup

    s = _setup(size_defaults(config(tagged, tmp_path / "setup", tiny_sd), 6))
    assert all(order in s.cache["embeds"] for row in s.cache["tag_orders"] for order in row)  # embedded once
    generator = torch.Generator().manual_seed(0)
    seen = {c for _ in range(12) for c in _draw_batch(s, generator)["captions"]}
    assert len(seen) > len(s.train)  # more than one order per image over a dozen steps
    assert all(c.startswith("sks, ") for c in seen)


def test_a_shuffled_run_resumes_exactly(tagged, tiny_sd, tmp_path):
    straight = train_image(config(tagged, tmp_path / "straight", tiny_sd))
    stop_after_four, cancel = cancel_at(4)

    out = tmp_path / "resumed"
    with pytest.raises(Cancelled):
        train_image(config(tagged, out, tiny_sd), on_event=stop_after_four, cancel=cancel)
    assert_same_run(train_image(config(tagged, out, tiny_sd, resume=True)), straight)
