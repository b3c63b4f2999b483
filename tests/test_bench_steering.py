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
