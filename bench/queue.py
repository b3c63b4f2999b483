"""Queue benchmark: enqueue-to-start latency and throughput of trivial jobs, one JSON line.

    .venv/bin/python bench/queue.py [--jobs 30] [--latency-runs 10]

Runs the ``noop`` job kind (a real subprocess per job, as for training) through the real
queue: SqliteHuey with one worker, and RedisHuey (a throwaway redis-server, or
LORACORD_TEST_REDIS_URL) with one and with two worker processes. Latency is from ``submit``
to the worker's start report, one job at a time on an idle queue; throughput is jobs finished
per second when ``--jobs`` are submitted at once, as the bot sees them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# This file is named queue.py: drop its folder from the path so the stdlib's ``queue`` wins.
sys.path[0] = str(Path(__file__).resolve().parents[1])

from storage.queue import JobQueue  # noqa: E402
from storage.settings import Settings  # noqa: E402
from storage.testing import redis_url, tick_until  # noqa: E402
from storage.worker import start_worker_process  # noqa: E402


def measure(settings: Settings, workers: int, jobs: int, latency_runs: int) -> dict:
    queue = JobQueue(settings)
    procs = [start_worker_process(settings.model_copy(update={"runs_dir": settings.data_dir / f"w{i}"}),
                                  log_path=settings.data_dir / f"w{i}.log") for i in range(workers)]
    try:
        warm = queue.submit("noop", {})  # workers are up and have imported everything
        tick_until(queue, lambda: queue.db.get_job(warm.id).finished, timeout=120, every=0.01, what="warm-up")
        latencies = []
        for _ in range(latency_runs):
            job = queue.submit("noop", {})
            tick_until(queue, lambda: queue.db.get_job(job.id).finished, timeout=60, every=0.01, what="a job")
            job = queue.db.get_job(job.id)
            latencies.append(job.started_at - job.queued_at)
        start = time.perf_counter()
        batch = [queue.submit("noop", {}) for _ in range(jobs)]
        tick_until(queue, lambda: all(queue.db.get_job(j.id).finished for j in batch), timeout=600, every=0.01,
                   what="the batch")
        elapsed = time.perf_counter() - start
        assert all(queue.db.get_job(j.id).status == "done" for j in batch)
        latencies.sort()
        return {"latency_ms_p50": round(statistics.median(latencies) * 1000, 1),
                "latency_ms_max": round(latencies[-1] * 1000, 1),
                "throughput_jobs_per_s": round(jobs / elapsed, 2)}
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        queue.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=30, help="jobs submitted at once for the throughput run")
    parser.add_argument("--latency-runs", type=int, default=10, help="single jobs timed for latency")
    args = parser.parse_args()
    common = dict(heartbeat_s=1.0, poll_s=0.05)
    result: dict = {"bench": "queue", "job": "noop", "jobs": args.jobs, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        result["sqlite_1_worker"] = measure(Settings(data_dir=tmp / "sqlite", **common), 1, args.jobs,
                                            args.latency_runs)
        with redis_url() as url:
            for n in (1, 2):
                settings = Settings(data_dir=tmp / f"redis{n}", queue_url=url, queue_name=f"bench{n}",
                                    blob_url=str(tmp / "shared-blobs"), **common)
                result[f"redis_{n}_workers"] = measure(settings, n, args.jobs, args.latency_runs)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
