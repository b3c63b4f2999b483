"""The text commands of the ``loracord`` CLI, run as a user runs them (a real subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest



def loracord(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "loracord", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600, env={**__import__("os").environ, "COLUMNS": "200"})


def test_help_lists_the_commands():
    out = loracord("--help")
    assert out.returncode == 0
    for command in ("train", "sample", "eval", "demo"):
        assert command in out.stdout


def test_train_sample_eval_round_trip(tiny_llama, text_file, tmp_path):
    run = tmp_path / "run"
    trained = loracord("train", "text", text_file, "--out", run, "--base", tiny_llama, "--steps", "6", "--lr", "5e-3",
                       "--rank", "4", "--lora-dropout", "0.05", "--augment", "0.2", "--seed", "3", "--seq-len", "64",
                       "--eval-every", "3", "--prompt", "To be, or")
    assert trained.returncode == 0, trained.stderr
    assert "validation loss" in trained.stdout and "To be, or" in trained.stdout
    config = json.loads((run / "metrics.json").read_text())["config"]
    assert (config["steps"], config["lr"], config["rank"], config["lora_dropout"], config["augment"], config["seed"]) == \
           (6, 5e-3, 4, 0.05, 0.2, 3)

    sampled = loracord("sample", run, "--prompt", "All that", "--seed", "1")
    assert sampled.returncode == 0, sampled.stderr
    assert sampled.stdout.startswith("--- All that")

    evaluated = loracord("eval", run, text_file)
    base_eval = loracord("eval", "--base", tiny_llama, text_file)
    assert evaluated.returncode == 0 and base_eval.returncode == 0, evaluated.stderr + base_eval.stderr
    tuned_loss = float(evaluated.stdout.split()[1])
    base_loss = float(base_eval.stdout.split()[1])
    assert tuned_loss < base_loss  # trained on this very file


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe bad bytes", "UTF-8"),
    (b"", "empty"),
    (b"one\n\ntwo\n", "5"),
])
def test_bad_data_is_one_clear_line(tiny_llama, tmp_path, content, message):
    data = tmp_path / "data.txt"
    data.write_bytes(content)
    out = loracord("train", "text", data, "--out", tmp_path / "run", "--base", tiny_llama)
    assert out.returncode == 2
    assert out.stderr.startswith("error:") and message in out.stderr
    assert "Traceback" not in out.stderr


def test_bad_option_is_refused(tiny_llama, text_file, tmp_path):
    out = loracord("train", "text", text_file, "--out", tmp_path / "run", "--lr", "-1")
    assert out.returncode == 2 and "lr" in out.stderr and "Traceback" not in out.stderr


def test_two_processes_with_accelerate_launch(tiny_llama, text_file, tmp_path):
    """The multi-GPU path, on CPU: two processes (gloo) share the batches; only the main one writes."""
    import os

    run = tmp_path / "run"
    out = subprocess.run(
        # accelerate's --cpu starts one process; its torchrun launcher (--multi_gpu) starts two,
        # and ACCELERATE_USE_CPU makes them join over gloo on the CPU.
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "loracord", "train", "text", str(text_file),
         "--out", str(run), "--base", str(tiny_llama), "--steps", "4", "--eval-every", "2", "--seq-len", "64",
         "--batch-size", "2", "--precision", "fp32", "--threads", "1"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"})
    assert out.returncode == 0, out.stderr[-2000:]
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["kind"] == "step"] == [1, 2, 3, 4]  # one writer, not two
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps_done"] == 4 and metrics["processes"] == 2
    assert (run / "adapter" / "adapter_model.safetensors").exists()


def test_ctrl_c_cancels_after_the_step_and_resume_finishes(tiny_llama, text_file, tmp_path):
    import os
    import signal
    import time

    run = tmp_path / "run"
    args = [sys.executable, "-m", "loracord", "train", "text", str(text_file), "--out", str(run), "--base",
            str(tiny_llama), "--steps", "150", "--eval-every", "5", "--patience", "0", "--seq-len", "64", "--batch-size", "2"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    events = run / "events.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (events.exists() and '"step": 3,' in events.read_text()):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "cancelled at step" in err and "Traceback" not in err
    assert json.loads((run / "metrics.json").read_text())["status"] == "cancelled"
    step = json.loads(events.read_text().splitlines()[-1])["step"]
    assert (run / "checkpoints" / f"step-{step:06d}").is_dir()
    resumed = loracord(*args[3:], "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "metrics.json").read_text())["steps_done"] == 150
