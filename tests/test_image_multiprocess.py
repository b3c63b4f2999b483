"""An image run under ``accelerate launch`` with two CPU processes (gloo), the multi-GPU path.

Two processes of batch 2 must train exactly as one process of batch 4: every process draws the
whole batch from the same generator and keeps its own rows, and DDP averages the gradients. If
both processes trained on the same rows, the adapter would differ from the one-process run's.
Only the main process writes: one event per step, the same files as the one-process run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.family_fixtures import tiny_sd3  # noqa: F401
from tests.image_fixtures import RESOLUTION, image_folder, tiny_sd  # noqa: F401
from trainer.image.config import ImageTrainConfig
from trainer.image.train import train_image

ROOT = Path(__file__).resolve().parents[1]
# accelerate's `--cpu` starts a single process (several only through mpirun); its torchrun
# launcher (`--multi_gpu`) starts two, and ACCELERATE_USE_CPU makes them join over gloo on the CPU.
ACCELERATE_LAUNCH_TWO_CPU_PROCESSES = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                                       "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                                       "--dynamo_backend", "no"]
TWO_CPU_PROCESSES_ENV = {"ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
LAUNCH = """
import json, sys
from trainer.image.config import ImageTrainConfig
from trainer.image.train import train_image
train_image(ImageTrainConfig(**json.loads(sys.argv[1])))
"""


def settings(data, out, base, batch_size: int, resolution: int) -> dict:
    # lora_dropout 0: dropout masks come from each process's own RNG, the one thing not shared.
    return dict(data=[str(data)], out=str(out), base=str(base), resolution=resolution, steps=6, rank=4, lr=2e-3,
                batch_size=batch_size, eval_every=3, sample_every=3, sample_steps=2, sample_seeds=[0],
                sample_prompts=["a photo of sks"], min_image_side=16, augment=0.5, augment_variants=2,
                lora_dropout=0.0, precision="fp32", threads=1, patience=0)


def files_of(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())


@pytest.mark.parametrize("fixture, side, single_file", [("tiny_sd", RESOLUTION, "lora_kohya.safetensors"),
                                                        ("tiny_sd3", 64, "lora_comfyui.safetensors")])
def test_two_processes_train_as_one_process_with_their_batches_together(fixture, side, single_file, request,
                                                                        tmp_path, image_folder):
    """For a UNet family and a flow-matching one (SD 3.5's transformer under DDP, its sigmas shared)."""
    base = request.getfixturevalue(fixture)
    one = train_image(ImageTrainConfig(**settings(image_folder, tmp_path / "one", base, batch_size=4, resolution=side)))

    script = tmp_path / "launch_image.py"
    script.write_text(LAUNCH)
    two = tmp_path / "two"
    out = subprocess.run(
        [*ACCELERATE_LAUNCH_TWO_CPU_PROCESSES, str(script), json.dumps(settings(image_folder, two, base, batch_size=2, resolution=side))],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
        env={**os.environ, **TWO_CPU_PROCESSES_ENV, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]

    # one writer: each event once, the files of a one-process run and nothing else
    events = [json.loads(line) for line in (two / "events.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["kind"] == "step"] == [1, 2, 3, 4, 5, 6]
    assert [e["kind"] for e in events].count("done") == 1
    assert files_of(two) == files_of(one.run_dir)
    assert files_of(two) == ["adapter/README.md", f"adapter/{single_file}",
                             "adapter/pytorch_lora_weights.safetensors", "events.jsonl", "loss.png", "metrics.json", "samples/final.png",
                             "samples/step-000003.png"]
    metrics = json.loads((two / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["steps_done"] == 6 and metrics["config"]["batch_size"] == 2
    assert one.metrics["processes"] == 1

    # disjoint rows of one shared batch: the same losses and the same adapter as batch 4 in one process
    for curve in ("train_loss", "val_loss"):
        assert [v for _, v in metrics["curves"][curve]] == pytest.approx(
            [v for _, v in one.metrics["curves"][curve]], rel=1e-4, abs=1e-5)
    for name in ("pytorch_lora_weights.safetensors", single_file):
        got, want = load_file(str(two / "adapter" / name)), load_file(str(one.run_dir / "adapter" / name))
        assert got.keys() == want.keys()
        for key in want:
            torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=1e-4)
