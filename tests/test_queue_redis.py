"""Scale-out on a real redis-server: two workers on two "machines" share the jobs.

Each worker gets its own run folder root (as separate machines would); only the Redis queue
and the blob store are shared. Killing one worker mid-job makes the other resume it from the
checkpoint it fetches from the blob store.
"""

from __future__ import annotations

import os
import signal

import pytest

from storage.queue import JobQueue
from storage.settings import Settings
from storage.testing import tick_until
from storage.worker import start_worker_process


@pytest.fixture
def settings(tmp_path, redis):
    return Settings(data_dir=tmp_path / "bot", queue_url=redis, queue_name=f"t{os.getpid()}",
                    blob_url=f"file://{tmp_path / 'shared-blobs'}", heartbeat_s=0.2, heartbeat_timeout_s=2,
                    poll_s=0.05)


def start_machine(settings: Settings, name: str, tmp_path):
    machine = settings.model_copy(update={"data_dir": tmp_path / name})
    return start_worker_process(machine, log_path=tmp_path / f"{name}.log")


def test_two_workers_share_the_jobs(settings, tmp_path):
    queue = JobQueue(settings)
    workers = [start_machine(settings, f"gpu{i}", tmp_path) for i in (1, 2)]
    try:
        jobs = [queue.submit("sleep", {"steps": 10, "step_s": 0.1, "seed": i}) for i in range(4)]
        tick_until(queue, lambda: all(queue.db.get_job(j.id).finished for j in jobs), timeout=300, what="4 jobs")
        done = [queue.db.get_job(j.id) for j in jobs]
        assert [j.status for j in done] == ["done"] * 4
        assert len({j.worker for j in done}) == 2  # both machines ran jobs
        assert {j.worker.split(":")[1] for j in done} == {str(w.pid) for w in workers}
        assert len(queue.db.list_samples()) == 4 and len(queue.db.list_adapters()) == 4
    finally:
        for w in workers:
            w.kill()
            w.wait()
        queue.close()


def test_a_job_moves_to_the_other_machine_when_its_worker_dies(settings, tmp_path):
    queue = JobQueue(settings)
    first = start_machine(settings, "gpu1", tmp_path)
    job = queue.submit("sleep", {"steps": 30, "step_s": 0.05, "checkpoint_every": 5})
    second = None
    try:
        tick_until(queue, lambda: queue.db.get_job(job.id).checkpoint is not None, what="a checkpoint")
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        second = start_machine(settings, "gpu2", tmp_path)
        tick_until(queue, lambda: queue.db.get_job(job.id).finished, timeout=300, what="the moved job")
        job = queue.db.get_job(job.id)
        assert job.status == "done" and job.worker.endswith(f":{second.pid}")
        starts = queue.db.list_events(job.id, kind="start")
        assert [e.attempt for e in starts] == [1, 2] and starts[1].step > 0  # resumed on gpu2
        assert (tmp_path / "gpu2" / "runs" / f"job-{job.id}" / "checkpoints").is_dir()
        assert len(queue.db.list_adapters()) == 1
    finally:
        for w in (first, second):
            if w is not None:
                w.kill()
                w.wait()
        queue.close()
