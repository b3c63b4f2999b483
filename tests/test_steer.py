"""Steering quick tries by members' comparisons: optuna-dashboard's preferential GP proposes the
first tries of the next round, and they follow the answers.

The GP is the real ``PreferentialGPSampler`` (botorch on CPU torch); the round is the real
search (``trainer.tune.tune``) training the tiny Llama of conftest.
"""

from __future__ import annotations

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution

from tests.test_tune import FAST, trained_tiny  # noqa: F401 (the module's trained tiny Llama)
from trainer.steer import describe, grid_space, proposals, snap
from trainer.tune import tune

SPACE = {"lr": FloatDistribution(1e-4, 1e-2, log=True), "rank": CategoricalDistribution([4, 8, 16, 32]),
         "lora_dropout": FloatDistribution(0.0, 0.3), "augment": FloatDistribution(0.0, 0.6),
         "steps": CategoricalDistribution([10, 20, 30])}
MIDDLE = {"lr": 1e-3, "rank": 8, "lora_dropout": 0.1, "augment": 0.2, "steps": 20}
BIG = {"lr": 5e-3, "rank": 32, "lora_dropout": 0.0, "augment": 0.0, "steps": 30}
SMALL = {"lr": 2e-4, "rank": 4, "lora_dropout": 0.3, "augment": 0.5, "steps": 10}


def prefer(winner: dict, *losers: dict) -> list[dict]:
    return [{"better": winner, "worse": loser} for loser in losers]


def test_describe_says_which_way_members_leaned():
    said = describe(prefer(BIG, MIDDLE, SMALL) + prefer(SMALL, MIDDLE))
    # rank: BIG>MIDDLE, BIG>SMALL higher; SMALL>MIDDLE lower: 2 of 3 higher
    assert "higher rank in 2 of 3 comparisons" in said and said.startswith("members preferred ")
    assert describe(prefer(MIDDLE, MIDDLE)) is None  # nothing differed


def test_earlier_settings_snap_onto_the_grid_the_gp_sees():
    grid = grid_space(SPACE)
    assert len(grid["lr"].choices) == 9 and grid["lr"].choices[0] == 1e-4 and grid["lr"].choices[-1] == 1e-2
    assert snap({"lr": 9.5e-4, "rank": 8, "lora_dropout": 0.11, "augment": 0.61}, grid, {"steps": 20}) == \
        {"lr": 0.001, "rank": 8, "lora_dropout": 0.1, "augment": 0.6, "steps": 20}


def test_proposals_follow_the_answers():
    towards_big = proposals(SPACE, prefer(BIG, MIDDLE, SMALL), 1, seed=0)
    towards_small = proposals(SPACE, prefer(SMALL, MIDDLE, BIG), 1, seed=0)
    assert towards_big and towards_small and towards_big != towards_small
    assert towards_big[0]["rank"] > towards_small[0]["rank"]
    assert towards_big == proposals(SPACE, prefer(BIG, MIDDLE, SMALL), 1, seed=0)  # seeded: reproducible


def test_no_comparison_that_tells_settings_apart_steers_nothing():
    assert proposals(SPACE, [], 2) == []
    assert proposals(SPACE, prefer(MIDDLE, dict(MIDDLE)), 2) == []


@pytest.mark.parametrize("winner, loser", [(BIG, SMALL), (SMALL, BIG)])
def test_a_steered_round_tries_the_proposals_first(trained_tiny, text_file, tmp_path, winner, loser):  # noqa: F811
    answers = prefer(winner, loser, MIDDLE)
    result = tune("text", [text_file], tmp_path / "round", base=str(trained_tiny), trials=1, preset="quick",
                  settings=FAST, full_run=False, folds=0, steer=answers)
    first = result.trials[0]
    assert first.note == "proposed from members' comparisons"
    assert first.params["rank"] == (32 if winner is BIG else 4)  # the GP went where members pointed


def test_a_round_without_comparisons_starts_from_the_preset(trained_tiny, text_file, tmp_path):  # noqa: F811
    result = tune("text", [text_file], tmp_path / "plain", base=str(trained_tiny), trials=1, preset="quick",
                  settings=FAST, full_run=False, folds=0, steer=[])
    assert result.trials[0].params["rank"] == result.baseline["rank"] and result.trials[0].note != \
        "proposed from members' comparisons"


def test_a_tune_job_publishes_each_tries_samples_for_comparing(tmp_path):
    """Each complete try's samples.json becomes samples of its trial, with the run's seed (what
    `/train compare` pairs); a pruned try publishes none."""
    import json

    from storage.blobs import BlobStore
    from storage.jobkinds.tune import publish_trials, trial_folder
    from trainer.rundir import RunDir

    run, blobs = RunDir(tmp_path / "job"), BlobStore(tmp_path / "blobs")
    for number in (0, 1):
        folder = trial_folder(run, number)
        (folder / "adapter").mkdir(parents=True)
        (folder / "adapter" / "adapter_config.json").write_text("{}")
        (folder / "metrics.json").write_text(json.dumps({"config": {"seed": 7}}))
        (folder / "samples.json").write_text(json.dumps([{"prompt": "To be", "text": f"To be, try {number}"}]))
    outputs = {"result": {"trials": [{"number": 0, "status": "complete"}, {"number": 1, "status": "pruned"}]}}
    publish_trials(blobs, run, outputs)
    [sample] = outputs["samples"]
    assert (sample["trial"], sample["prompt"], sample["seed"]) == (0, "To be", 7)
    assert blobs.get_bytes(sample["blob"]) == b"To be, try 0"
