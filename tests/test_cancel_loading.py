"""Cancel a queued run while it still loads, and after it has trained: a real worker, real trainers.

Before its first step a run has nothing to keep, and loading a model never looks at RUN/CANCEL,
so the worker stops the job process at once and the job ends with a reason the bot shows. After
the first step the trainer stops by itself after its step and keeps a checkpoint.

The tests hold the real job process where it loads by stopping it (SIGSTOP) once it has begun
its job (its pid in RUN/trainer.lock), so the cancel arrives before its first step whatever the
machine's speed; the worker's SIGTERM comes with a SIGCONT, as a stopped process would not act
on it otherwise. The grace a trainer gets to stop by itself is 60 s here, so a job that ends
within the tick timeout was not waited for.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import psutil
import pytest

from storage.blobs import BlobStore
from storage.queue import JobQueue
from storage.settings import Settings
from storage.testing import tick_until
from tests.queue_world import queue, worker  # noqa: F401  (fixtures)

NOTHING_TRAINED = "cancelled before training started; nothing was trained"
AT_ONCE_S = 30  # well below the 60 s grace: the worker did not wait for the trainer to stop itself


@pytest.fixture
def settings(tmp_path):
    return Settings(data_dir=tmp_path / "data", heartbeat_s=0.2, heartbeat_timeout_s=10, cancel_grace_s=60,
                    kill_grace_s=5, poll_s=0.05, max_jobs_per_user=1, max_jobs_per_guild=2)


@pytest.fixture
def session(queue, tiny_llama):
    return queue.db.create_session(guild_id=1, owner_id=1, kind="text", base_model=str(tiny_llama)).id


def text_config(tiny_llama: Path, text_file: Path, **overrides) -> dict:
    return {**dict(data=[str(text_file)], base=str(tiny_llama), steps=2, lr=5e-3, rank=4, seq_len=64, batch_size=2,
                   eval_every=2, augment=0.0, max_new_tokens=4, precision="fp32", threads=1, seed=0,
                   prompts=["To be"]), **overrides}


def hold_while_loading(queue: JobQueue, settings: Settings, job_id: int) -> int:
    """Wait until the job process has begun its job, stop it there, and return its pid."""
    run = settings.run_root / f"job-{job_id}"
    found: list[int] = []

    def begun() -> bool:
        for proc in psutil.process_iter(["cmdline"]):
            if str(run / "job.json") in (proc.info["cmdline"] or []) and _lock_holder(run) == str(proc.pid):
                found.append(proc.pid)
                return True
        return False

    tick_until(queue, begun, every=0.01, what="the job process to begin")
    os.kill(found[0], signal.SIGSTOP)
    return found[0]


def _lock_holder(run: Path) -> str:
    try:
        return (run / "trainer.lock").read_text().strip()
    except OSError:
        return ""


def step_events(settings: Settings, job_id: int) -> list[dict]:
    events = settings.run_root / f"job-{job_id}" / "events.jsonl"
    lines = events.read_text().splitlines() if events.exists() else []
    return [e for e in map(json.loads, filter(str.strip, lines)) if e["kind"] == "step"]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_cancel_while_the_model_loads_ends_the_job_at_once(queue, worker, settings, session, tiny_llama,
                                                             text_file):
    job = queue.submit("train_text", text_config(tiny_llama, text_file, steps=500), session_id=session, user_id=1)
    pid = hold_while_loading(queue, settings, job.id)
    assert step_events(settings, job.id) == []  # the cancel comes before the first step

    queue.cancel(job.id)
    tick_until(queue, lambda: queue.db.get_job(job.id).finished, timeout=AT_ONCE_S, what="the cancel")
    cancelled = queue.db.get_job(job.id)
    assert (cancelled.status, cancelled.error) == ("cancelled", NOTHING_TRAINED)
    assert gone(pid) and step_events(settings, job.id) == [] and cancelled.checkpoint is None
    run = settings.run_root / f"job-{job.id}"
    assert not (run / "checkpoints").exists() and not (run / "metrics.json").exists()

    # The worker went on, and the session's next run trains to the end.
    after = queue.submit("train_text", text_config(tiny_llama, text_file), session_id=session, user_id=1)
    tick_until(queue, lambda: queue.db.get_job(after.id).finished, timeout=240, what="the next run")
    after = queue.db.get_job(after.id)
    assert after.status == "done", after.error
    assert [e.step for e in queue.db.list_events(after.id, kind="step")] == [1, 2]
    assert queue.db.adapter_for_job(after.id) is not None and worker.poll() is None


@pytest.fixture
def adapter(tmp_path, tiny_llama, settings) -> str:
    """A LoRA adapter of the tiny model in the blob store (a tree), as a finished run leaves one."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(tmp_path / "adapter")
    return BlobStore(settings.blob_location).put_tree(tmp_path / "adapter")


@pytest.mark.parametrize("kind", ["tune", "sample"])
def test_quick_tries_and_samples_cancelled_while_loading_end_at_once(kind, queue, worker, settings, session,
                                                                     tiny_llama, text_file, request):
    if kind == "tune":
        config = {"kind": "text", "data": [str(text_file)], "base": str(tiny_llama), "trials": 2,
                  "settings": {"steps": 4, "seq_len": 64, "batch_size": 2, "precision": "fp32", "threads": 1}}
        reason = NOTHING_TRAINED
    else:
        config = {"source_job": 1, "adapter": request.getfixturevalue("adapter"), "kind": "text",
                  "base": str(tiny_llama), "prompts": ["To be"], "max_new_tokens": 4}
        reason = "cancelled before the samples were made"
    job = queue.submit(kind, config, session_id=session, user_id=1)
    pid = hold_while_loading(queue, settings, job.id)

    queue.cancel(job.id)
    tick_until(queue, lambda: queue.db.get_job(job.id).finished, timeout=AT_ONCE_S, what="the cancel")
    cancelled = queue.db.get_job(job.id)
    assert (cancelled.status, cancelled.error) == ("cancelled", reason)
    assert gone(pid) and step_events(settings, job.id) == []
    after = queue.submit("noop", {}, session_id=session, user_id=1)  # the worker went on
    tick_until(queue, lambda: queue.db.get_job(after.id).status == "done", what="the next job")


def test_a_cancel_after_the_first_step_keeps_its_checkpoint(queue, worker, settings, session, tiny_llama,
                                                            text_file):
    job = queue.submit("train_text", text_config(tiny_llama, text_file, steps=5000, eval_every=5000),
                       session_id=session, user_id=1)
    tick_until(queue, lambda: queue.db.list_events(job.id, kind="step"), timeout=240, what="the first step")

    queue.cancel(job.id)
    tick_until(queue, lambda: queue.db.get_job(job.id).finished, timeout=120, what="the cancel")
    cancelled = queue.db.get_job(job.id)
    assert (cancelled.status, cancelled.error) == ("cancelled", None)
    kinds = [e.kind for e in queue.db.list_events(job.id)]
    assert kinds[-2:] == ["checkpoint", "cancelled"], kinds  # it stopped by itself after its step
    step = queue.db.list_events(job.id)[-1].step
    assert step >= 1 and cancelled.checkpoint.startswith(f"step-{step:06d}/")
    assert (settings.run_root / f"job-{job.id}" / "checkpoints" / f"step-{step:06d}" / "state.json").is_file()
