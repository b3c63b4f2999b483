"""Scores beside samples (trainer.scores): text scores need no model; image scores come from a
CLIP model built here with random weights (a tiny CLIPModel and its processor, saved and loaded
back through from_pretrained), which is enough to show identical images score highest."""

from __future__ import annotations

import math

import pytest

from bot.report import scores_line
from tests.bot_world import *  # noqa: F401,F403
from tests.image_fixtures import image_folder, tiny_sd  # noqa: F401
from PIL import Image

from trainer.charts import plot_curves
from trainer.scores import (UNAVAILABLE, chart_lines, distinct_share, image_scores, load_scorer, longest_shared_run,
                            text_scores)

TRAINING = ["the quick brown fox jumps over the lazy dog", "to be or not to be that is the question"]


def test_longest_shared_run_counts_words_copied_from_the_training_text():
    assert longest_shared_run("a quick brown fox ran", TRAINING) == 3
    assert longest_shared_run("to be or not to be that is", TRAINING) == 8
    assert longest_shared_run("nothing here matches", TRAINING) == 0
    assert longest_shared_run("", TRAINING) == 0


def test_distinct_share_falls_as_samples_repeat_themselves():
    assert distinct_share(["a b c d"]) == 1.0
    assert distinct_share(["a b a b a b"]) == pytest.approx(2 / 5)
    assert distinct_share(["one"]) is None


def test_text_scores_are_flat_numbers_for_metrics_json():
    scores = text_scores(["the lazy dog sleeps", "a new line"], TRAINING, val_loss=math.log(12.0))
    assert scores == {"score_heldout_ppl": pytest.approx(12.0), "score_copied_words": 3,
                      "score_distinct_2": 1.0}
    line = scores_line({"kind": "text", **scores})
    assert line == ("**Scores:** held-out perplexity 12.00 · longest run copied from the training text 3 words · "
                    "distinct word pairs 100%")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from tests.image_fixtures import build_clip

    return build_clip(tmp_path_factory.mktemp("clip"))


def picture(seed: int):
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8))


def stripes():
    import numpy as np
    from PIL import Image

    pixels = np.zeros((32, 32, 3), dtype=np.uint8)
    pixels[:, ::4] = (255, 200, 0)
    return Image.fromarray(pixels)


def test_identical_images_are_the_most_alike(tiny_clip):
    scorer = load_scorer(str(tiny_clip))
    assert scorer is not None
    same = image_scores(scorer, [picture(1)], [picture(1)], [])["score_likeness"]
    other = image_scores(scorer, [stripes()], [picture(1)], [])["score_likeness"]
    assert same == pytest.approx(1.0, abs=1e-5)  # cosine of an embedding with itself
    assert other < same - 1e-3


def test_prompt_adherence_is_a_clip_score(tiny_clip):
    scores = image_scores(load_scorer(str(tiny_clip)), [picture(1), picture(2)], [], ["a fox", "a dog"])
    assert 0.0 <= scores["score_adherence"] <= 100.0 and "score_likeness" not in scores


def test_with_no_scoring_model_the_scores_are_unavailable(tmp_path):
    assert load_scorer(str(tmp_path / "no-such-model")) is None and load_scorer(None) is None
    scores = image_scores(None, [picture(1)], [picture(2)], ["a fox"])
    assert set(scores) == {"scores_unavailable"}
    assert scores_line({"kind": "image", **scores}) == \
        "**Scores:** unavailable: no scoring model is on the worker's machine."
    assert scores_line({}) is None  # nothing reported yet: nothing said


def test_an_image_run_scores_its_final_samples(tmp_path, tiny_sd, image_folder, tiny_clip):  # noqa: F811
    import json

    from tests.test_image_train import config
    from trainer.image.train import train_image

    result = train_image(config(image_folder, tmp_path / "run", tiny_sd, steps=2, eval_every=2, sample_every=0,
                                sample_seeds=[0, 1], scorer=str(tiny_clip)))
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert -1.0 <= metrics["score_likeness"] <= 1.0 and 0.0 <= metrics["score_adherence"] <= 100.0
    assert "scores_unavailable" not in metrics
    assert scores_line(metrics).startswith("**Scores:** likeness to your held-out images ")
    # the final grid's event carries those scores (posted under the grid), and so does the run's chart
    events = [json.loads(line) for line in (result.run_dir / "events.jsonl").read_text().splitlines()]
    final = [e for e in events if e["kind"] == "sample" and e["artifacts"] == ["samples/final.png"]]
    assert [e["scores"] for e in final] == [{k: metrics[k] for k in ("score_likeness", "score_adherence")}]
    chart = Image.open(result.run_dir / "loss.png").text["Scores"].splitlines()
    assert chart == [f"likeness {metrics['score_likeness']:.2f}", f"prompt adherence {metrics['score_adherence']:.1f}"]


def test_the_chart_carries_the_final_scores(tmp_path):
    curves = {"train loss": [(1, 2.0), (2, 1.5)], "validation loss": [(2, 1.8)]}
    lines = chart_lines({"score_heldout_ppl": 6.05, "score_copied_words": 4, "score_distinct_2": 0.875})
    assert lines == ["held-out perplexity 6.05", "longest copied run 4 words", "distinct word pairs 88%"]
    scored = Image.open(plot_curves(tmp_path / "a.png", curves, "run", notes=lines))
    assert scored.text["Scores"].splitlines() == lines
    assert chart_lines({"scores_unavailable": UNAVAILABLE}) == ["scores unavailable (no scoring model)"]
    assert "Scores" not in Image.open(plot_curves(tmp_path / "b.png", curves, "run")).text  # nothing scored


@pytest.fixture
def bot_config(tiny_sd):  # noqa: F811
    from bot.config import BotSettings

    return BotSettings(_env_file=None, allowed_models=[f"image:{tiny_sd}", "smollm2-135m"], progress_edit_s=0,
                       train_cooldown_s=0, train_threads=1)


@pytest.mark.asyncio
async def test_the_server_chooses_the_scoring_model_of_its_image_runs(world, tiny_sd):  # noqa: F811
    from tests.image_fixtures import image_bytes, pattern_image
    from trainer.spec import RunSpec

    w = world
    shown = await w.mod.slash(w.channel, "server settings", image_scorer="openai/clip-vit-base-patch32")
    assert {f.name: f.value for f in shown.response.embeds[0].fields}["Image scorer"] == "`openai/clip-vit-base-patch32`"
    await w.alice.slash(w.channel, "session new", kind="image", title="Patterns", base_model=str(tiny_sd))
    thread = w.channel.threads[-1]
    for i in range(5):
        await w.alice.slash(thread, "data add", file=(f"p{i}.png", image_bytes(pattern_image(i))))
    await w.alice.slash(thread, "train start", steps=4)
    job = w.env.bot.services.db.list_jobs()[0]
    assert RunSpec.from_job(job.kind, job.config).settings["scorer"] == "openai/clip-vit-base-patch32"
