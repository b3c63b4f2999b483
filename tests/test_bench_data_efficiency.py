"""The data-efficiency benchmark's pieces, on the tiny Llama: passages, copy share, one cell, the table."""

from __future__ import annotations

import json

import pytest

from bench.data_efficiency import HELDOUT_PLAYS, TRAIN_PLAYS, Bench, main, markdown, plot, select, summarise
from bench.memorisation import copied_share, nearest_distances


@pytest.mark.parametrize("samples, corpus, expected", [
    (["one two three four five six seven eight"], ["One, two; three four five six seven eight nine."], 1.0),
    (["one two three four five six seven eight nine ten"], ["one two three four five six seven eight"], 1 / 3),
    (["one two three four five six seven eight"], ["one two three four five six seven"], 0.0),
    (["line one two three\nfour five six seven"], ["line one two three four five six seven"], 1.0),
    (["too short"], ["too short"], None),
])
def test_copied_share(samples, corpus, expected):
    assert copied_share(samples, corpus) == (pytest.approx(expected) if expected is not None else None)


def test_passages_keep_train_and_heldout_plays_apart():
    train, heldout = select(32, seed=0)
    assert len(train) == 32 and len(heldout) == 10 * len(HELDOUT_PLAYS)
    assert not set(train) & set(heldout)
    assert all(2 <= len(p.splitlines()) - 1 <= 4 for p in train + heldout)
    # the seed picks other passages; the held-out set never changes
    other, heldout_again = select(32, seed=1)
    assert other != train and heldout_again == heldout
    with pytest.raises(ValueError, match="hamlet"):
        select(8, seed=0, train_plays=TRAIN_PLAYS, heldout_plays=("hamlet", "the-tempest"))


def test_nearest_distances_sees_a_copy():
    from PIL import Image

    train = [Image.new("L", (16, 16), 0), Image.new("L", (16, 16), 255)]
    heldout = [Image.new("L", (16, 16), 128)]
    got = nearest_distances([Image.new("L", (16, 16), 0)], train, heldout)
    assert got["to_train"] == 0 and got["to_heldout"] > 0.4 and got["closer_to_train"] == 1.0


def test_method_settings(tmp_path):
    bench = Bench(tmp_path, "unused", threads=1, trials=2, max_steps=None, heldout_per_play=2)
    assert bench.settings("plain", 8, tmp_path)["lora_dropout"] == 0.0
    assert bench.settings("default", 8, tmp_path) == {}  # the preset sizes everything
    assert bench.settings("default-lr0.0008", 8, tmp_path) == {"lr": 0.0008}


def test_one_cell_trains_scores_and_is_cached(tiny_llama, tmp_path):
    bench = Bench(tmp_path, str(tiny_llama), threads=1, trials=2, max_steps=2, heldout_per_play=2)
    row = bench.cell("plain", 8, 0)
    assert row["steps_done"] <= 2 and row["n_train"] == 7 and row["settings"]["lora_dropout"] == 0.0
    assert row["heldout_ppl"] > 1 and len(row["samples"]) == 5
    assert 0 <= row["copied_8gram_share"] <= 1 or row["copied_8gram_share"] is None
    assert json.loads(bench.cell_path("plain", 8, 0).read_text()) == row
    assert bench.cell("plain", 8, 0) == row  # cached: no second run


def test_the_neftune_arm_trains_with_noise_and_nothing_else_changed(tiny_llama, tmp_path):
    """The same seed's run with and without NEFTune: the only setting apart is the noise, and the
    noise reaches the training (the held-out loss moves; runs without it are deterministic)."""
    bench = Bench(tmp_path, str(tiny_llama), threads=1, trials=2, max_steps=2, heldout_per_play=2, sample_seeds=())
    none, noisy = bench.cell("none", 8, 0), bench.cell("neftune", 8, 0)
    assert noisy["settings"] == {**none["settings"], "neftune_alpha": 5.0} and none["settings"]["neftune_alpha"] == 0
    assert noisy["steps_done"] == none["steps_done"] == 2
    assert noisy["heldout_loss"] != none["heldout_loss"]
    bench.cell_path("none", 8, 0).unlink()
    assert bench.cell("none", 8, 0)["heldout_loss"] == none["heldout_loss"]  # what makes the comparison fair


def test_summary_and_chart(tmp_path):
    cells = [{"method": m, "n": n, "seed": s, "heldout_ppl": p + s, "copied_8gram_share": 0.0, "steps_done": 3,
              "train_seconds": 1.0}
             for m, p in (("base", 40.0), ("plain", 20.0)) for n in (8, 32) for s in (0, 1, 2)]
    table = summarise(cells)
    assert table["plain"]["8"]["ppl_mean"] == pytest.approx(21.0)
    assert table["plain"]["8"]["ppl_sd"] == pytest.approx(1.0)
    assert plot(table, tmp_path / "chart.png").stat().st_size > 1000
    assert "| plain | 21.0 ± 1.0 (3) | 21.0 ± 1.0 (3) |" in markdown(table)


def test_quick_run_end_to_end(tiny_llama, tmp_path, capsys):
    report = main(["--quick", "--base", str(tiny_llama), "--out", str(tmp_path / "out"), "--threads", "1",
                   "--chart", str(tmp_path / "c.png")])
    assert set(report["table"]) == {"base", "plain", "default", "tuned"}
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["table"] == report["table"]
    assert json.loads((tmp_path / "out-quick" / "cells" / "tune-n8-s0.json").read_text())["folds"] == 2  # N=8: folds


def test_forced_validation_of_the_search_is_its_own_cached_method(tiny_llama, tmp_path):
    # tuned-split searches 8 passages on one split, where tuned would cross-validate them
    report = main(["--quick", "--base", str(tiny_llama), "--out", str(tmp_path / "out"), "--threads", "1",
                   "--methods", "tuned-split"])
    assert set(report["table"]) == {"tuned-split"}
    cells = tmp_path / "out-quick" / "cells"
    record = json.loads((cells / "tune-split-n8-s0.json").read_text())
    assert record["folds"] == 0 and record["cv"] is None and "holdout" not in record["best_params"]
    assert not (cells / "tune-n8-s0.json").exists()  # the shipped search's cache is not touched
    assert (tmp_path / "out-quick" / "tune" / "split-n8-s0" / "study.db").exists()
