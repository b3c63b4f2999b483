"""The job queue on SQLite: driven by hand, then end to end with a real consumer process.

Jobs are the trivial ``sleep`` kind (storage.jobkinds.sleep.run_sleep): a real subprocess that writes
a run folder like a trainer does, honours RUN/CANCEL and resumes from its checkpoints.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from storage.blobs import BlobStore
from storage.lock import WriterLock
from storage.queue import JobQueue
from storage.settings import Settings
from storage.testing import tick_until
from tests.queue_world import queue, worker  # noqa: F401  (fixtures)
from trainer.errors import UserError


@pytest.fixture
def settings(tmp_path):
    return Settings(data_dir=tmp_path / "data", heartbeat_s=0.2, heartbeat_timeout_s=3, cancel_grace_s=0.5,
                    kill_grace_s=0.5, poll_s=0.05, max_jobs_per_user=1, max_jobs_per_guild=2)


def run_next_task_here(queue: JobQueue, lane: str = "runs") -> None:
    """Be the consumer for one task: take it off huey (the lane's queue) and execute it in this process."""
    huey = queue.lanes[lane][0]
    task = huey.dequeue()
    assert task is not None, "nothing on the huey queue"
    huey.execute(task)


# ---- by hand -----------------------------------------------------------------------------

def test_limits_hold_jobs_back_and_priority_orders_dispatch(queue):
    a1 = queue.submit("sleep", {"steps": 1}, user_id=1, guild_id=7)
    a2 = queue.submit("sleep", {"steps": 1}, user_id=1, guild_id=7)  # user 1 is at their limit
    b1 = queue.submit("sleep", {"steps": 1}, user_id=2, guild_id=7)
    c1 = queue.submit("sleep", {"steps": 1}, user_id=3, guild_id=7)  # guild 7 is at its limit
    urgent = queue.submit("sleep", {"steps": 1}, user_id=4, guild_id=8, priority=10)
    status = {j.id: j.status for j in queue.db.list_jobs()}
    assert status == {a1.id: "dispatched", a2.id: "queued", b1.id: "dispatched", c1.id: "queued",
                      urgent.id: "dispatched"}
    # huey hands out the high-priority job first; our line counts waiting jobs the same way.
    assert queue.position(urgent.id) == 1 and queue.position(c1.id) == 5
    assert queue.huey.dequeue().args[0]["job_id"] == urgent.id


def test_a_sample_job_travels_on_the_quick_lane_ahead_of_runs(queue):
    """A kind's lane and priority (storage.jobkinds) are the job's: a sample job asked while runs wait
    for the worker is on a huey queue of its own, which workers serve beside the runs."""
    runs = [queue.submit("sleep", {"steps": 1}, user_id=i, guild_id=i) for i in (1, 2)]
    sample = queue.submit("sample", {"source_job": runs[0].id, "adapter": "0" * 64, "prompts": ["hi"]})
    assert [queue.db.get_job(j.id).priority for j in (*runs, sample)] == [0, 0, 10]
    assert queue.db.get_job(sample.id).status == "dispatched"
    quick = queue.lanes["quick"][0]
    assert [t.args[0]["job_id"] for t in quick.pending()] == [sample.id]
    assert [t.args[0]["job_id"] for t in queue.huey.pending()] == [r.id for r in runs]
    queue.cancel(sample.id)  # revoked on its own lane
    assert queue.db.get_job(sample.id).status == "cancelled" and quick.is_revoked(quick.dequeue())
    with pytest.raises(UserError, match="unknown job kind 'paint'; expected one of train_text, train_image, tune, sample"):
        queue.submit("paint", {})


def test_a_sample_job_whose_adapter_is_gone_fails_at_once_saying_so(queue):
    sample = queue.submit("sample", {"source_job": 1, "adapter": "ab" * 32, "prompts": ["hi"], "kind": "text"})
    run_next_task_here(queue, lane="quick")
    queue.tick()
    job = queue.db.get_job(sample.id)
    assert (job.status, job.attempts) == ("failed", 0)  # permanent: no retry
    assert job.error == "the adapter to sample is not in the blob store any more; train the run again"


def test_a_guild_setting_overrides_the_guild_limit(queue):
    queue.db.set_guild_setting(7, "max_jobs_per_guild", 1)
    first = queue.submit("sleep", {}, user_id=1, guild_id=7)
    second = queue.submit("sleep", {}, user_id=2, guild_id=7)
    assert [queue.db.get_job(j.id).status for j in (first, second)] == ["dispatched", "queued"]


def test_a_job_driven_by_hand_runs_in_a_subprocess_and_reports(queue, settings):
    job = queue.submit("sleep", {"steps": 3, "checkpoint_every": 2, "seed": 5, "prompt": "a cat"}, user_id=1)
    run_next_task_here(queue)
    queue.tick()
    job = queue.db.get_job(job.id)
    assert job.status == "done" and job.error is None and job.started_at <= job.finished_at
    kinds = [e.kind for e in queue.db.list_events(job.id)]
    assert kinds == ["start", "step", "step", "checkpoint", "step", "sample", "done"]
    assert job.checkpoint.startswith("step-000002/")
    [sample] = queue.db.list_samples(job_id=job.id)
    blobs = BlobStore(settings.blob_location)
    assert (sample.prompt, sample.seed) == ("a cat", 5)
    assert blobs.get_bytes(sample.blob_hash).decode() == "sample after 3 steps, seed 5"
    adapter = queue.db.adapter_for_job(job.id)
    assert set(blobs.tree_files(adapter.blob_hash)) == {"adapter_config.json"}
    assert set(job.result["files"]) == {"metrics.json"}
    # The bot polled; the channel holds nothing more, and a second poll changes nothing.
    assert queue.channel.pending_reports() == [] and queue.tick().events == []


def test_the_next_job_of_a_user_starts_when_the_first_ends(queue):
    first = queue.submit("noop", {}, user_id=1)
    second = queue.submit("noop", {}, user_id=1)
    assert queue.db.get_job(second.id).status == "queued"
    run_next_task_here(queue)
    result = queue.tick()
    assert result.finished == [first.id] and result.dispatched == [second.id]


def test_a_user_error_fails_the_job_with_its_message(queue):
    job = queue.submit("sleep", {"fail": "your dataset has 0 images"})
    run_next_task_here(queue)
    queue.tick()
    job = queue.db.get_job(job.id)
    assert (job.status, job.error) == ("failed", "your dataset has 0 images")


def test_a_crashing_job_fails_alone(queue):
    """A job process killed by SIGKILL (what the out-of-memory killer sends) is retried from its
    last checkpoint; killed on every attempt, it fails with the attempt count."""
    job = queue.submit("sleep", {"steps": 5, "crash_at": 2})
    for attempt in (1, 2):
        run_next_task_here(queue)
        queue.tick()
        job = queue.db.get_job(job.id)
        assert (job.status, job.attempts) == ("dispatched", attempt)
        assert "SIGKILL" in job.error and f"attempt {attempt} of 3; retrying" in job.error
    run_next_task_here(queue)
    queue.tick()
    job = queue.db.get_job(job.id)
    assert job.status == "failed" and "SIGKILL" in job.error and "gave up after 3 attempts" in job.error
    assert [e.kind for e in queue.db.list_events(job.id)] == ["start", "step"] * 3


def test_a_passing_failure_is_retried_and_a_permanent_one_is_not(queue):
    oom = queue.submit("sleep", {"steps": 2, "raise": "MemoryError"}, user_id=1)
    bad = queue.submit("sleep", {"steps": 2, "raise": "ValueError", "message": "rank must be positive"}, user_id=2)
    run_next_task_here(queue)
    run_next_task_here(queue)
    queue.tick()
    oom, bad = queue.db.get_job(oom.id), queue.db.get_job(bad.id)
    assert (oom.status, oom.attempts) == ("dispatched", 1) and "out of memory" in oom.error
    assert (bad.status, bad.attempts) == ("failed", 0)
    assert bad.error == "the job's data or settings were refused (ValueError: rank must be positive)"


def test_cancel_before_start_revokes_the_task(queue):
    job = queue.submit("sleep", {"steps": 50, "step_s": 0.1})
    assert queue.cancel(job.id).status == "cancelled"
    task = queue.huey.dequeue()
    assert queue.huey.execute(task) is None  # huey skips a revoked task
    queued = queue.submit("sleep", {}, user_id=1)
    blocked = queue.submit("sleep", {}, user_id=1)
    assert queue.cancel(blocked.id).status == "cancelled" and queue.db.get_job(queued.id).status == "dispatched"


def test_lost_workers_are_requeued_then_failed(queue, settings):
    job = queue.submit("sleep", {"steps": 3})
    task = queue.huey.dequeue()  # a worker took the task ...
    queue.db.mark_job_running(job.id, worker="gone:1", attempt=1)  # ... said it started, and died
    later = queue.db.get_job(job.id).heartbeat_at + settings.heartbeat_timeout_s + 1
    assert queue.reap_lost(now=later) == [job.id]
    job = queue.db.get_job(job.id)
    assert (job.status, job.attempts) == ("queued", 1) and "lost" in job.error
    queue.huey.execute(task)  # the old task finally runs: its reports are for attempt 1, ignored
    queue.tick()
    assert queue.db.get_job(job.id).status == "dispatched"
    for attempt in (2, 3):
        queue.huey.dequeue()
        queue.db.mark_job_running(job.id, worker="gone:2", attempt=attempt)
        later = queue.db.get_job(job.id).heartbeat_at + settings.heartbeat_timeout_s + 1
        queue.reap_lost(now=later)
        queue.dispatch()
    job = queue.db.get_job(job.id)
    assert (job.status, job.error) == ("failed", "worker lost 3 times; giving up")


def test_a_dispatched_task_that_vanished_is_requeued(queue, settings):
    job = queue.submit("noop", {})
    assert queue.db.get_job(job.id).heartbeat_at is None  # waiting on huey's queue: no clock
    queue.huey.dequeue()  # taken by a worker that died before it could report
    assert queue.reap_lost(now=1000.0) == []  # the clock starts when the task is seen gone
    assert queue.db.get_job(job.id).heartbeat_at == 1000.0
    assert queue.reap_lost(now=1000.0 + settings.heartbeat_timeout_s + 1) == [job.id]
    later = 2000.0
    queue.submit("noop", {})
    queue.dispatch()  # both tasks wait on the huey queue now: not lost, however long they wait
    assert queue.reap_lost(now=later + 100) == []


# ---- with a real consumer process ---------------------------------------------------------

def test_end_to_end_with_a_consumer(queue, worker):
    jobs = [queue.submit("sleep", {"steps": 4, "checkpoint_every": 2, "seed": i}, user_id=i) for i in range(3)]
    tick_until(queue, lambda: all(queue.db.get_job(j.id).finished for j in jobs), timeout=300, what="3 jobs")
    for job in jobs:
        job = queue.db.get_job(job.id)
        assert job.status == "done", job.error
        assert [e.step for e in queue.db.list_events(job.id, kind="step")] == [1, 2, 3, 4]
        assert len(queue.db.list_samples(job_id=job.id)) == 1 and queue.db.adapter_for_job(job.id)
    assert worker.poll() is None


def test_a_sample_job_runs_beside_a_long_run_on_the_same_worker(queue, worker):
    """The embedded worker serves the quick lane with a thread of its own: a sample job asked during a
    run ends (here it fails at once: its adapter is not in the store) while the run still trains."""
    run = queue.submit("sleep", {"steps": 400, "step_s": 0.05}, user_id=1)
    tick_until(queue, lambda: queue.db.latest_event(run.id) is not None, what="the run training")
    sample = queue.submit("sample", {"source_job": run.id, "adapter": "ab" * 32, "prompts": ["hi"]})
    tick_until(queue, lambda: queue.db.get_job(sample.id).finished, what="the sample job")
    assert queue.db.get_job(sample.id).error.startswith("the adapter to sample is not in the blob store")
    assert queue.db.get_job(run.id).status == "running"
    queue.cancel(run.id)
    tick_until(queue, lambda: queue.db.get_job(run.id).finished, what="the cancelled run")


def test_cancel_a_running_job_cooperatively(queue, worker):
    job = queue.submit("sleep", {"steps": 500, "step_s": 0.05})
    tick_until(queue, lambda: len(queue.db.list_events(job.id, kind="step")) >= 2, what="steps")
    assert queue.cancel(job.id).cancel_requested
    tick_until(queue, lambda: queue.db.get_job(job.id).finished, what="cancel")
    assert queue.db.get_job(job.id).status == "cancelled"
    assert queue.db.list_events(job.id)[-1].kind == "cancelled"  # the job stopped itself
    assert queue.db.adapter_for_job(job.id) is None


def test_cancel_kills_a_job_that_does_not_listen(queue, worker):
    job = queue.submit("sleep", {"steps": 500, "step_s": 0.05, "ignore_cancel": True})
    tick_until(queue, lambda: len(queue.db.list_events(job.id, kind="step")) >= 2, what="steps")
    queue.cancel(job.id)
    tick_until(queue, lambda: queue.db.get_job(job.id).finished, what="kill")
    assert queue.db.get_job(job.id).status == "cancelled"
    assert queue.db.list_events(job.id)[-1].kind == "step"  # it never got to say goodbye
    after = queue.submit("noop", {})  # the worker survived the kill
    tick_until(queue, lambda: queue.db.get_job(after.id).status == "done", what="next job")


def test_cli_cancel_while_the_bot_runs_goes_through_the_queue(queue, worker, settings, monkeypatch):
    from typer.testing import CliRunner

    from loracord.cli import app

    job = queue.submit("sleep", {"steps": 500, "step_s": 0.05})
    tick_until(queue, lambda: queue.db.get_job(job.id).status == "running", what="start")
    monkeypatch.setenv("LORACORD_DATA_DIR", str(settings.data_dir))
    with WriterLock(settings.data_dir):  # we are the bot
        out = CliRunner().invoke(app, ["jobs", "cancel", str(job.id)])
        assert out.exit_code == 0 and "asked the running bot" in out.output
        tick_until(queue, lambda: queue.db.get_job(job.id).finished, what="cancel")
    assert queue.db.get_job(job.id).status == "cancelled"
    listing = CliRunner().invoke(app, ["jobs", "list"])
    assert listing.exit_code == 0 and "cancelled" in listing.output


def test_a_text_training_job_through_the_consumer(queue, worker, tiny_llama, text_file, settings):
    """The real trainer on a tiny Llama, run by the worker in a subprocess, reported to the bot."""
    config = dict(data=[str(text_file)], base=str(tiny_llama), steps=8, lr=5e-3, rank=4, seq_len=64, batch_size=2,
                  eval_every=4, augment=0.0, max_new_tokens=4, precision="fp32", threads=1, seed=0,
                  prompts=["To be"])
    job = queue.submit("train_text", config, user_id=1)
    tick_until(queue, lambda: queue.db.get_job(job.id).finished, timeout=240, what="train_text")
    job = queue.db.get_job(job.id)
    assert job.status == "done", job.error
    steps = [e.step for e in queue.db.list_events(job.id, kind="step")]
    assert steps == list(range(1, 9))
    blobs = BlobStore(settings.blob_location)
    adapter = queue.db.adapter_for_job(job.id)
    assert {"adapter_model.safetensors", "adapter_config.json"} <= set(blobs.tree_files(adapter.blob_hash))
    assert adapter.base_model == str(tiny_llama)
    assert {"metrics.json", "loss.png", "samples.json"} <= set(job.result["files"])
    [sample] = queue.db.list_samples(job_id=job.id)
    assert (sample.prompt, sample.kind) == ("To be", "text") and blobs.get_bytes(sample.blob_hash)


def test_a_worker_fetches_the_dataset_from_the_blob_store(tmp_path):
    """Jobs name their files by blob hash, so a worker that shares only the blob store can train."""
    from storage.blobs import BlobStore
    from storage.jobkinds.train import fetch_dataset
    from trainer.rundir import RunDir

    blobs = BlobStore(str(tmp_path / "blobs"))
    first, second = blobs.put_bytes(b"one\n\ntwo\n"), blobs.put_bytes(b'{"text": "three"}\n')
    run = RunDir(tmp_path / "job-1")
    config = {"data": ["/on/the/bot/machine/a.txt"], "data_blobs": [[first, "a.txt"], [second, "../b.jsonl"]],
              "steps": 3}
    fetched = fetch_dataset(blobs, run, config)
    assert "data_blobs" not in fetched and fetched["steps"] == 3
    assert [Path(p).name for p in fetched["data"]] == ["0000-a.txt", "0001-b.jsonl"]
    assert all(Path(p).parent == run.root / "data" for p in fetched["data"])
    assert Path(fetched["data"][1]).read_bytes() == b'{"text": "three"}\n'
    assert fetch_dataset(blobs, run, {"data": ["x.txt"]}) == {"data": ["x.txt"]}
