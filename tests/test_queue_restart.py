"""kill -9 the worker or the bot mid-training: the job resumes from its last checkpoint, and
no event, sample or adapter is lost or stored twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from storage.db import Database
from storage.queue import JobQueue
from storage.settings import Settings
from storage.testing import tick_until
from storage.worker import settings_env, start_worker_process

JOB = {"steps": 40, "step_s": 0.05, "checkpoint_every": 5, "seed": 1}


@pytest.fixture
def settings(tmp_path):
    return Settings(data_dir=tmp_path / "data", heartbeat_s=0.2, heartbeat_timeout_s=2, poll_s=0.05)


def job_processes(run_dir) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "storage.jobrun" in cmd and any(str(run_dir) in part for part in cmd):
            found.append(proc)
    return found


def assert_resumed_once(db: Database, job_id: int) -> None:
    job = db.get_job(job_id)
    assert job.status == "done", job.error
    assert job.attempts == 1  # one lost attempt, then the one that finished
    starts = db.list_events(job_id, kind="start")
    assert [e.attempt for e in starts] == [1, 2]
    resumed_at = starts[1].step
    assert resumed_at > 0 and resumed_at % JOB["checkpoint_every"] == 0  # from a checkpoint, not from scratch
    second = [e.step for e in db.list_events(job_id, kind="step") if e.attempt == 2]
    assert second == list(range(resumed_at + 1, JOB["steps"] + 1))
    assert len(db.list_samples(job_id=job_id)) == 1 and len(db.list_adapters()) == 1


def test_kill_9_the_worker_mid_training(settings):
    queue = JobQueue(settings)
    worker = start_worker_process(settings)
    job = queue.submit("sleep", JOB)
    tick_until(queue, lambda: queue.db.get_job(job.id).checkpoint is not None, what="a checkpoint")
    run_dir = settings.run_root / f"job-{job.id}"
    assert job_processes(run_dir)

    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    deadline = time.monotonic() + 10  # the job process dies with its worker
    while job_processes(run_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not job_processes(run_dir)

    worker = start_worker_process(settings)
    try:
        tick_until(queue, lambda: queue.db.get_job(job.id).finished, timeout=300, what="the resumed job")
        assert_resumed_once(queue.db, job.id)
    finally:
        worker.kill()
        worker.wait()
        queue.close()


def test_kill_9_the_bot_mid_training(settings):
    # The job is queued while the bot is down (as `loracord` CLI commands may do).
    with Database(settings.db_path) as db:
        job = db.enqueue_job("sleep", JOB)
    env = {**os.environ, **settings_env(settings)}

    def start_bot() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "storage.service"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    bot = start_bot()
    try:
        with Database(settings.db_path) as db:  # we only read while the bot writes
            deadline = time.monotonic() + 240
            while db.get_job(job.id).checkpoint is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert db.get_job(job.id).checkpoint is not None
            os.kill(bot.pid, signal.SIGKILL)  # its embedded worker and the job die with it
            bot.wait()
            assert db.get_job(job.id).status == "running"

            bot = start_bot()
            deadline = time.monotonic() + 300
            while not db.get_job(job.id).finished and time.monotonic() < deadline:
                time.sleep(0.2)
            assert_resumed_once(db, job.id)
    finally:
        bot.send_signal(signal.SIGTERM)
        bot.wait(timeout=30)
