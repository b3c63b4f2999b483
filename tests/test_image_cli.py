"""``loracord train image`` and ``loracord sample`` on a tiny SD pipeline, as a user types them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from loracord.cli import app
from tests.image_fixtures import RESOLUTION, image_folder, tiny_sd, write_image_folder  # noqa: F401


def test_train_image_then_sample(tmp_path, tiny_sd, image_folder):
    runner = CliRunner()
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "image", str(image_folder), "--base", str(tiny_sd), "--out", str(run),
                                 "--steps", "4", "--resolution", str(RESOLUTION), "--lr", "1e-3", "--rank", "2",
                                 "--lora-dropout", "0.1", "--augment", "0.3", "--seed", "7", "--eval-every", "2",
                                 "--sample-every", "0", "--sample-steps", "2", "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    assert f"run folder: {run}" in result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["kind"] == "image"
    assert {k: metrics["config"][k] for k in ("steps", "resolution", "lr", "rank", "lora_dropout", "augment", "seed")} \
        == {"steps": 4, "resolution": RESOLUTION, "lr": 1e-3, "rank": 2, "lora_dropout": 0.1, "augment": 0.3, "seed": 7}

    result = runner.invoke(app, ["sample", str(run), "--prompt", "a photo of sks", "--seed", "5", "--count", "2"])
    assert result.exit_code == 0, result.output
    paths = [Path(line) for line in result.stdout.splitlines()]
    assert len(paths) == 1 and paths[0].suffix == ".png"
    with Image.open(paths[0]) as grid:
        assert grid.size == (2 * RESOLUTION, RESOLUTION)


def test_bad_input_is_one_error_line_and_exit_code_2(tmp_path, tiny_sd):
    folder = write_image_folder(tmp_path / "data", count=2)
    (folder / "fake.webp").write_bytes(b"RIFF....WEBPVP8 garbage")
    proc = subprocess.run([sys.executable, "-m", "loracord", "train", "image", str(folder), "--base", str(tiny_sd),
                           "--out", str(tmp_path / "run"), "--resolution", str(RESOLUTION)],
                          capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error:") and "fake.webp" in proc.stderr
