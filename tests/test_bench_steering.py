"""The simulated community of bench/steering.py: every member answers every pair by held-out
perplexity, and the share of flipped answers is what --flip asks for."""

from __future__ import annotations

import random

from bench.steering import community


def test_the_community_answers_every_pair_by_perplexity_with_some_answers_flipped():
    tries = [{"params": {"lr": lr}, "heldout_ppl": ppl} for lr, ppl in [(1e-3, 10.0), (2e-3, 20.0), (3e-3, 30.0)]]
    faithful = community(tries, members=3, flip=0.0, rng=random.Random(0))
    assert len(faithful) == 9  # three pairs, three members
    assert all(a["better"]["lr"] < a["worse"]["lr"] for a in faithful)  # lower perplexity wins

    many = [{"params": {"lr": i}, "heldout_ppl": float(i)} for i in range(20)]
    answers = community(many, members=3, flip=0.25, rng=random.Random(0))
    flipped = sum(a["better"]["lr"] > a["worse"]["lr"] for a in answers) / len(answers)
    assert 0.2 < flipped < 0.3


def test_the_image_simulation_answers_by_likeness_and_runs_both_second_rounds(tmp_path):
    """bench/steering.py --kind image end to end on the bench's small SD at 64 px, 2 steps a try:
    every complete try carries the likeness its run's metrics.json holds, the answers follow it
    (higher wins), and both second rounds ran as many tries from the same sampler seed."""
    import json

    from bench.steering import main

    *rows, summary = main(["--kind", "image", "--seeds", "0", "--trials", "2", "--n", "5", "--max-steps", "2",
                           "--flip", "0", "--keep", str(tmp_path)])
    row, = rows
    tries = row["round1"]["tries"]
    assert tries and all(isinstance(t["likeness"], float) for t in tries)
    metrics = json.loads(next((tmp_path / "r1-0").rglob("metrics.json")).read_text())
    assert metrics["score_likeness"] in {t["likeness"] for t in tries}
    assert row["answers"] == 3 * len(tries) * (len(tries) - 1) // 2
    answers = community(tries, members=1, flip=0.0, rng=random.Random(0), score="likeness", higher=True)
    by_params = {json.dumps(t["params"], sort_keys=True): t["likeness"] for t in tries}
    assert all(by_params[json.dumps(a["better"], sort_keys=True)] >= by_params[json.dumps(a["worse"], sort_keys=True)]
               for a in answers)
    assert len(row["plain"]["tries"]) == len(row["steered"]["tries"]) == 2
    assert summary["kind"] == "image" and summary["higher_is_better"] is True
    assert any("members' comparisons" in t["note"] for t in row["steered"]["tries"])
