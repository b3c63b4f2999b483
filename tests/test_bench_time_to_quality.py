"""The time-to-quality bench on tiny models: every side trains in its own process, saves adapters
at intervals and at its end, and one judge per kind scores every side's adapters."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import bench.time_to_quality as ttq


def _snaps(*pairs):
    return [{"elapsed_s": t, "loss": loss} for t, loss in pairs]


def test_time_to_the_reference_best_and_the_ratio():
    reference = {"snapshots": _snaps((10, 3.0), (20, 2.0), (30, 2.5))}  # best 2.0, reached at 20 s
    ours = {"snapshots": _snaps((4, 2.6), (8, 1.9), (12, 1.5))}
    got = ttq.compare(ours, reference)
    assert got["target_loss"] == 2.0 and got["reference_s"] == 20 and got["ours_s"] == 8 and got["ratio"] == 0.4
    never = ttq.compare({"snapshots": _snaps((5, 2.1))}, reference)
    assert never["ours_s"] is None and math.isinf(never["ratio"])
    within = ttq.compare({"snapshots": _snaps((5, 2.1))}, reference, tolerance=0.1)  # target 2.2
    assert within["reference_s"] == 20 and within["ratio"] == 0.25


def test_report_takes_the_median_and_the_least_favourable_reference():
    def cell(side, seed, pairs):
        return {"side": side, "seed": seed, "snapshots": _snaps(*pairs), "process_s": 1.0, "steps_done": 1,
                "settings": {}}

    cells = {}
    for seed, ours_t in enumerate((5, 10, 40)):  # ratios 0.25, 0.5, 2.0 against "a"; 0.5, 1, 4 against "b"
        cells["loracord", seed] = cell("loracord", seed, [(ours_t, 1.0)])
        cells["a", seed] = cell("a", seed, [(20, 1.0)])
        cells["b", seed] = cell("b", seed, [(10, 1.0)])
    line = ttq.report("text", cells, ["loracord", "a", "b"], [0, 1, 2], {})
    assert line["references"]["a"]["time_ratio"] == 0.5 and line["references"]["b"]["time_ratio"] == 1.0
    assert line["time_ratio"] == 1.0 and line["against"] == "b"
    assert line["references"]["b"]["min"] == 0.5 and line["references"]["b"]["max"] == 4.0


def _spy_judge(monkeypatch) -> list:
    calls, real = [], ttq.judge

    def judge(kind, base, heldout, resolution, snapshots):
        losses = real(kind, base, heldout, resolution, snapshots)
        calls.append({"kind": kind, "base": base, "heldout": str(heldout), "paths": [s["path"] for s in snapshots],
                      "losses": losses})
        return losses
    monkeypatch.setattr(ttq, "judge", judge)
    return calls


def _check_sides(line: dict, calls: list, sides: list[str], out: Path, kind: str) -> None:
    """Each side trained in its process and saved adapters at intervals and at its end; one judge, with
    the same base and held-out data, scored every side's adapters, and scores them the same again."""
    assert line["kind"] == kind and "time_ratio" in line and set(line["references"]) == set(sides[1:])
    assert [Path(c["paths"][0]).parent.parent.name for c in calls] == [f"{s}-s0" for s in sides]
    assert len({(c["kind"], c["base"], c["heldout"]) for c in calls}) == 1
    for side, call in zip(sides, calls):
        cell = json.loads((out / kind / "cells" / f"{side}-s0.json").read_text())
        assert [s["final"] for s in cell["snapshots"]] == [False] * (len(cell["snapshots"]) - 1) + [True]
        assert len(cell["snapshots"]) >= 2 and all(math.isfinite(s["loss"]) for s in cell["snapshots"])
        assert [s["loss"] for s in cell["snapshots"]] == call["losses"]
        times = [s["elapsed_s"] for s in cell["snapshots"]]
        assert times == sorted(times) and 0 < times[-1] <= cell["process_s"]
    # the judge is deterministic: the first reference's final adapter and ours score as recorded
    snaps = [ttq.read_snapshots(Path(c["paths"][0]).parent)[-1] for c in calls[:2]]
    again = ttq.judge(kind, calls[0]["base"], Path(calls[0]["heldout"]), 32, snaps)
    assert again == pytest.approx([calls[0]["losses"][-1], calls[1]["losses"][-1]], rel=1e-6)


def test_text_bench_end_to_end(tiny_llama, tmp_path, monkeypatch):
    calls = _spy_judge(monkeypatch)
    sides = ["loracord", "sft-preset", "trainer-peft"]
    line, = ttq.main(["--kind", "text", "--base", str(tiny_llama), "--sides", *sides, "--seeds", "0", "--n", "8",
                      "--heldout-per-source", "2", "--every", "2", "--max-steps", "4", "--threads", "1",
                      "--out", str(tmp_path)])
    _check_sides(line, calls, sides, tmp_path, "text")
    assert line["sides"]["sft-preset"]["settings"]["lr"] == line["sides"]["loracord"]["settings"]["lr"]
    assert line["data_lengths"]["passages"] == 8 and line["data_lengths"]["tokens"]["max"] > 0
    # cached: a rerun trains nothing and judges nothing
    assert ttq.main(["--kind", "text", "--base", str(tiny_llama), "--sides", *sides, "--seeds", "0", "--n", "8",
                     "--heldout-per-source", "2", "--out", str(tmp_path)])[0]["references"] == line["references"]
    assert len(calls) == len(sides) + 1  # the one judging per side, and _check_sides' second look


def test_image_bench_end_to_end(tmp_path, monkeypatch):
    calls = _spy_judge(monkeypatch)
    sides = ["loracord", "recipe-defaults", "recipe-preset"]
    line, = ttq.main(["--kind", "image", "--model", "tiny", "--resolution", "32", "--sides", *sides, "--seeds", "0",
                      "--n", "5", "--every", "2", "--max-steps", "4", "--threads", "1", "--out", str(tmp_path)])
    _check_sides(line, calls, sides, tmp_path, "image")
    preset, ours = line["sides"]["recipe-preset"]["settings"], line["sides"]["loracord"]["settings"]
    assert (preset["lr"], preset["rank"], preset["min_snr_gamma"]) == (ours["lr"], ours["rank"], ours["min_snr_gamma"])
    assert line["sides"]["recipe-defaults"]["settings"]["lr_scheduler"] == "constant"


def test_the_floor_trains_the_same_model_on_the_same_batches(tiny_llama, tmp_path):
    """--floor: loracord's steps and the bare loop's, read from the JSON: the same parameter counts and
    dtypes, and forward calls of the same shapes; the ratio per round is the step times' (no times asserted)."""
    text, image = ttq.main(["--floor", "--kind", "text", "image", "--base", str(tiny_llama), "--model", "tiny",
                            "--resolution", "32", "--n", "8", "--floor-rounds", "2", "--floor-steps", "2",
                            "--threads", "1", "--out", str(tmp_path)])
    for line in (text, image):
        assert line["bench"] == "time_to_quality_floor"
        ours, bare = line["step_s"]["loracord"], line["step_s"]["floor"]
        assert len(ours["rounds"]) == len(bare["rounds"]) == 2 and min(ours["rounds"] + bare["rounds"]) > 0
        per_round = [o / b for o, b in zip(ours["rounds"], bare["rounds"])]
        assert line["ratio"]["rounds"] == pytest.approx(per_round, rel=0.02)
        assert line["model"]["loracord"] == line["model"]["floor"]
        assert 0 < line["model"]["floor"]["trainable"] < line["model"]["floor"]["params"]
        assert line["model"]["floor"]["dtypes"] == ["torch.float32"]
        # the warm-up steps' forward calls: one per step (grad_accum 1), the same tensors of the same shapes
        assert len(line["batches"]["loracord"]) == ttq.FLOOR_WARMUP
        assert line["batches"]["loracord"] == line["batches"]["floor"]
    assert text["batches"]["floor"][0]["input_ids"][1] <= ttq.SEQ_LEN and text["tokens_per_s"]["floor"]["best"] > 0
    assert image["batches"]["floor"][0]["arg0"][0] == image["settings"]["batch_size"]


def test_no_packing_ablation_puts_one_passage_in_each_row(monkeypatch):
    from trainer.text import packing

    monkeypatch.setattr(packing, "pack", packing.pack)  # restored after the test
    pieces = [packing.Encoded(ids=list(range(n)), labels=list(range(n))) for n in (5, 7, 3, 9)]
    packed = packing.pack(pieces, 32)
    ttq._unpacked()
    rows = packing.pack(pieces, 32)
    assert len(packed) == 1 and len(rows) == 4
    assert sorted(len(r.ids) for r in rows) == [3, 5, 7, 9]
    assert "loracord-no-packing" in ttq.LORACORD_VARIANTS


def test_a_bf16_reference_trains_at_the_same_settings_in_bf16(tiny_llama, tmp_path, monkeypatch):
    """``sft-preset-bf16``: the same seed's loracord settings, the base stored in bf16 under TRL's bf16."""
    _spy_judge(monkeypatch)
    sides = ["loracord", "sft-preset-bf16"]
    line, = ttq.main(["--kind", "text", "--base", str(tiny_llama), "--sides", *sides, "--seeds", "1", "--n", "8",
                      "--heldout-per-source", "2", "--every", "2", "--max-steps", "4", "--threads", "1",
                      "--out", str(tmp_path)])
    ref, ours = line["sides"]["sft-preset-bf16"], line["sides"]["loracord"]
    assert ref["settings"]["lr"] == ours["settings"]["lr"] and ref["settings"]["rank"] == ours["settings"]["rank"]
    cell = json.loads((tmp_path / "text" / "cells" / "sft-preset-bf16-s1.json").read_text())
    assert cell["precision"] == "bf16" and ttq.order(sides, 1).index("loracord") < ttq.order(sides, 1).index(sides[1])


def test_the_loraplus_ablation_and_reference(tiny_llama, tmp_path, monkeypatch):
    """``loracord-no-loraplus`` trains plain LoRA; ``sft-preset-loraplus`` is TRL at loracord's settings
    with peft's LoRA+ optimizer passed in: A at the rate, B at loracord's ratio times it."""
    _spy_judge(monkeypatch)
    sides = ["loracord", "loracord-no-loraplus", "sft-preset-loraplus"]
    line, = ttq.main(["--kind", "text", "--base", str(tiny_llama), "--sides", *sides, "--seeds", "0", "--n", "8",
                      "--heldout-per-source", "2", "--every", "2", "--max-steps", "4", "--threads", "1",
                      "--out", str(tmp_path)])
    ratios = {side: line["sides"][side]["settings"]["loraplus_ratio"] for side in sides}
    assert ratios == {"loracord": 4.0, "loracord-no-loraplus": 1.0, "sft-preset-loraplus": 4.0}
    assert set(line["ablations"]["loracord-no-loraplus"]) == {"sft-preset-loraplus"}
    cell = json.loads((tmp_path / "text" / "cells" / "sft-preset-loraplus-s0.json").read_text())
    lr = line["sides"]["loracord"]["settings"]["lr"]
    assert cell["group_lrs"] == pytest.approx([lr, 4 * lr])
