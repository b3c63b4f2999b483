"""The benchmark's corpora (bench/corpora.py): each loads, keeps training and held-out sources apart,
and picks the same passages for the same seed; the ablation's cells, settings and table. No model."""

from __future__ import annotations

import ast

import pytest

from bench import corpora
from bench.data_efficiency import ABLATION, Bench, ablation_markdown, summarise, write_passages
from tests.image_fixtures import tiny_sd  # noqa: F401  (the session's tiny SD pipeline)

NAMES = list(corpora.CORPORA)


def test_four_kinds_of_text():
    assert {c.kind for c in corpora.CORPORA.values()} == {"verse", "source code", "technical prose", "dialogue"}
    with pytest.raises(ValueError, match="shakespeare, code, docs, chat"):
        corpora.corpus("novels")


@pytest.mark.parametrize("name", NAMES)
def test_corpus_loads_with_disjoint_sources(name):
    c = corpora.corpus(name)
    assert not set(c.train_sources) & set(c.heldout_sources)
    train, heldout = corpora.select(c, 128, seed=0)
    assert len(train) == 128 and len(set(train)) == 128
    assert len(heldout) == 60 == corpora.HELDOUT_PER_SOURCE * len(c.heldout_sources)
    assert all(p.strip() and len(p.splitlines()) >= 2 for p in train + heldout)
    # no held-out passage is text of a training source, not even a stock line shared by two sources
    pool = {p for s in c.train_sources for p in c.passages(s)}
    assert not pool & set(heldout)
    assert len(c.prompts) == 5 and all(c.prompts)


@pytest.mark.parametrize("name", NAMES)
def test_selection_is_fixed_by_the_seed(name):
    train, heldout = corpora.select(name, 32, seed=1)
    assert corpora.select(name, 32, seed=1) == (train, heldout)
    other, heldout_again = corpora.select(name, 32, seed=2)
    assert other != train and heldout_again == heldout  # the held-out set never depends on the seed


def test_sources_both_trained_on_and_held_out_are_refused():
    with pytest.raises(ValueError, match="fractions"):
        corpora.select("code", 8, 0, train_sources=("argparse", "fractions"), heldout_sources=("fractions",))
    with pytest.raises(ValueError, match="asked for 100000"):
        corpora.select("chat", 100000, 0)


def test_code_passages_are_whole_python_definitions():
    for p in corpora.select("code", 128, 0)[0]:
        tree = ast.parse(p)
        assert isinstance(tree.body[0], (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        assert 3 <= len(p.splitlines()) <= 10


def test_chat_passages_take_turns():
    for p in corpora.select("chat", 64, 0)[0]:
        speakers = [line.split(":", 1)[0] for line in p.splitlines()]
        assert speakers == ["User" if i % 2 == 0 else "Bot" for i in range(len(speakers))]


def test_docs_passages_are_prose():
    for p in corpora.select("docs", 64, 0)[0]:
        assert ">>>" not in p and 25 <= len(p.split()) <= 110


def test_passages_with_blank_lines_stay_one_example(tmp_path):
    """Code holds blank lines, so it is written as .jsonl; the trainer's reader gets one example per passage."""
    from trainer.text.data import read_text_examples

    train = corpora.select("code", 32, 0)[0] + ["def f():\n    x = 1\n\n    return x"]
    examples, _ = read_text_examples([str(write_passages(tmp_path / "code.jsonl", train))])
    assert [e.text for e in examples] == train
    verse = corpora.select("shakespeare", 8, 0)[0]
    examples, _ = read_text_examples([str(write_passages(tmp_path / "verse.txt", verse))])
    assert [e.text for e in examples] == verse


def test_cells_per_corpus_keep_shakespeares_old_place(tmp_path):
    old = Bench(tmp_path, "unused", threads=1, trials=2, max_steps=None, heldout_per_play=2)
    assert old.cell_path("default", 8, 0) == tmp_path / "cells" / "default-n8-s0.json"
    code = Bench(tmp_path, "unused", threads=1, trials=2, max_steps=None, heldout_per_play=2, corpus="code")
    assert code.cell_path("default", 8, 0) == tmp_path / "cells" / "code" / "default-n8-s0.json"
    train_path, heldout_path, train = code.data(8, 0)
    assert train_path.suffix == heldout_path.suffix == ".jsonl" and len(train) == 8
    assert code.fixed()["prompts"] == ["def "]


def test_ablation_changes_only_the_regularisers(tmp_path):
    """The ablation's reference is the balanced preset's size-keyed augmentation and dropout, set
    explicitly: the kinds the preset leaves unregularised are still measured with them."""
    bench = Bench(tmp_path, "unused", threads=1, trials=2, max_steps=None, heldout_per_play=2, corpus="code")
    train_path, _, _ = bench.data(32, 0)  # 32 passages: the trainer keeps 29 for training, under 50
    assert bench.settings("regularised", 32, train_path) == {"augment": 0.3, "lora_dropout": 0.1}
    assert bench.settings("no-augment", 32, train_path) == {"augment": 0.0, "lora_dropout": 0.1}
    assert bench.settings("no-dropout", 32, train_path) == {"augment": 0.3, "lora_dropout": 0.0}
    assert bench.settings("none", 32, train_path) == {"augment": 0.0, "lora_dropout": 0.0}
    assert bench.settings("default", 32, train_path) == {}  # the preset as shipped: kind-aware
    # NEFTune on its own: against none, the difference is the noise's alone
    assert bench.settings("neftune", 32, train_path) == {"augment": 0.0, "lora_dropout": 0.0, "neftune_alpha": 5.0}
    capped = Bench(tmp_path, "unused", threads=1, trials=2, max_steps=3, heldout_per_play=2, corpus="code")
    assert capped.settings("none", 32, train_path) == {"augment": 0.0, "lora_dropout": 0.0, "steps": 3}


@pytest.mark.parametrize("name", NAMES)
def test_each_corpus_is_detected_as_the_kind_it_says(name):
    from trainer.text.data import TextExample
    from trainer.text.kinds import detect_kind

    c = corpora.corpus(name)
    train, _ = corpora.select(c, 32, seed=0)
    assert detect_kind([TextExample(text=p) for p in train]).kind == c.detected


def test_ablation_table():
    ppl = {"regularised": 19.0, "no-augment": 19.5, "no-dropout": 19.8, "none": 20.0}
    cells = [{"method": m, "n": 32, "seed": s, "heldout_ppl": p + s, "copied_8gram_share": None, "steps_done": 20,
              "train_seconds": 1.0} for m, p in ppl.items() for s in (-1, 0, 1)]
    text = ablation_markdown(summarise(cells), "code")
    assert "| N | regularised | no-augment | no-dropout | none | regularised vs none |" in text
    assert "| 32 | 19.00 ± 1.00 (3) | 19.50 ± 1.00 (3) | 19.80 ± 1.00 (3) | 20.00 ± 1.00 (3) | -5.0% |" in text
    assert "code (detected as code)" in text and "trains this kind as `none` from 16 training examples" in text
    assert list(ABLATION) == ["regularised", "no-augment", "no-dropout", "none"]
    assert "neftune" not in text  # its column only where it was measured


def test_ablation_table_with_the_neftune_arm():
    ppl = {"regularised": 19.0, "none": 20.0, "neftune": 20.5}
    cells = [{"method": m, "n": 32, "seed": s, "heldout_ppl": p + s, "copied_8gram_share": None, "steps_done": 20,
              "train_seconds": 1.0} for m, p in ppl.items() for s in (-1, 0, 1)]
    text = ablation_markdown(summarise(cells), "chat")
    assert ("| N | regularised | no-augment | no-dropout | none | neftune | regularised vs none | neftune vs none |"
            in text)
    assert "| 32 | 19.00 ± 1.00 (3) | – | – | 20.00 ± 1.00 (3) | 20.50 ± 1.00 (3) | -5.0% | +2.5% |" in text


def test_image_ablation_runs_each_method_on_the_tiny_pipeline(tiny_sd, tmp_path, capsys):
    """The image ablation end to end (a code-path check): each run trains, validates and is scored."""
    from bench.image_ablation import main as image_ablation

    report = image_ablation(["--steps", "2", "--images", "5", "--samples", "1", "--threads", "1",
                             "--methods", "default", "none", "--out", str(tmp_path), "--base", str(tiny_sd), "--markdown"])
    default, none = report["runs"]
    assert default["settings"]["augment"] > 0 and none["settings"]["augment"] == none["settings"]["lora_dropout"] == 0
    assert default["steps_done"] == none["steps_done"] == 2
    assert default["val_loss_curve"] and none["val_loss_best"] > 0
    assert 0 <= default["memorisation"]["to_train"] <= 1 and default["memorisation"]["samples"] == 1
    assert "| none | 0.0 | 0.0 |" in capsys.readouterr().out
