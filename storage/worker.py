"""The worker: a huey consumer that runs each job in a subprocess and reports back.

``run_worker(settings)`` is what ``loracord worker`` (or ``python -m storage.worker``) runs on
each GPU machine; the bot starts one itself for the embedded SQLite queue
(``start_worker_process``). For each job ``execute_job``:

1. fetches the job's last checkpoint from the blob store when this machine lacks it,
2. starts ``python -m storage.jobrun RUN/job.json`` (``accelerate launch`` with several GPUs)
   in its own process group, set to die with the worker,
3. tails RUN/events.jsonl and publishes each event (artifacts and checkpoints go to the blob
   store first, so a report never names a blob that is not there), with a heartbeat,
4. on cancel touches RUN/CANCEL, then sends SIGTERM and SIGKILL to the group after grace periods,
5. publishes the end: status, error, and the blobs of the adapter, samples, metrics and chart.

Workers never open the database; see ``storage.channel``.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from trainer.rundir import RunDir, write_json_atomic

from .blobs import BlobStore
from .channel import Channel
from .settings import Settings

log = logging.getLogger("loracord.worker")

_TRAIN_KINDS = ("train_text", "train_image", "tune")


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def execute_job(spec: dict, settings: Settings, *, channel: Channel | None = None,
                blobs: BlobStore | None = None) -> str:
    """Run one dispatched job to its end; returns the status it reported."""
    channel = channel or Channel(settings)
    blobs = blobs or BlobStore(settings.blob_location)
    run = RunDir(settings.run_root / f"job-{spec['job_id']}")
    run.root.mkdir(parents=True, exist_ok=True)
    reporter = Reporter(channel, blobs, spec, run)
    if channel.cancel_requested(spec["job_id"]):
        return reporter.finish("cancelled", None)
    _restore_checkpoint(blobs, run, spec.get("checkpoint"))
    run.cancel_file.unlink(missing_ok=True)
    (run.root / "result.json").unlink(missing_ok=True)
    # Resume whenever a checkpoint is here (restored or left by an earlier attempt on this
    # machine); an attempt lost before its first checkpoint starts over.
    resume = run.latest_checkpoint() is not None
    spec_path = run.root / "job.json"
    config = fetch_dataset(blobs, run, spec["config"])
    write_json_atomic(spec_path, {**spec, "config": config, "run_dir": str(run.root), "resume": resume})
    reporter.skip_existing_events()

    with (run.root / "job.log").open("ab") as job_log:
        proc = subprocess.Popen(_job_command(spec["kind"], spec_path), stdout=job_log, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_die_with_parent)
    reporter.started(proc.pid)
    log.info("job %s attempt %s started (pid %s)", spec["job_id"], spec["attempt"], proc.pid)
    cancel_at = None
    signalled = None
    while proc.poll() is None:
        reporter.pump()
        reporter.heartbeat(settings.heartbeat_s)
        if cancel_at is None and channel.cancel_requested(spec["job_id"]):
            cancel_at = time.monotonic()
            run.cancel_file.touch()  # cooperative first: the trainer stops at the next step
        if cancel_at is not None:
            waited = time.monotonic() - cancel_at
            if waited > settings.cancel_grace_s + settings.kill_grace_s:
                signalled = _kill_group(proc, signal.SIGKILL)
            elif waited > settings.cancel_grace_s and signalled is None:
                signalled = _kill_group(proc, signal.SIGTERM)
        time.sleep(0.1)
    reporter.pump()
    status, error = _outcome(proc.returncode, run, cancelled=cancel_at is not None)
    log.info("job %s attempt %s ended: %s %s", spec["job_id"], spec["attempt"], status, error or "")
    return reporter.finish(status, error)


def _job_command(kind: str, spec_path: Path) -> list[str]:
    gpus = _gpu_count() if kind in _TRAIN_KINDS else 0
    if gpus > 1:
        return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(gpus),
                "-m", "storage.jobrun", str(spec_path)]
    return [sys.executable, "-m", "storage.jobrun", str(spec_path)]


def _gpu_count() -> int:
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: never dlopen between fork and exec


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL when the worker thread that started us dies (Linux)."""
    _LIBC.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _kill_group(proc: subprocess.Popen, sig: int) -> int:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    return sig


def _outcome(returncode: int, run: RunDir, *, cancelled: bool) -> tuple[str, str | None]:
    """Turn the job process's exit into (status, error)."""
    result_file = run.root / "result.json"
    result = json.loads(result_file.read_text()) if result_file.exists() else {}
    if returncode == 0 and result.get("status") in ("done", "cancelled"):
        return result["status"], None
    if cancelled:
        return "cancelled", None
    if returncode == 2 and result.get("error"):
        return "failed", result["error"]
    if returncode < 0:
        name = signal.Signals(-returncode).name
        hint = " (out of memory?)" if returncode == -signal.SIGKILL else ""
        return "failed", f"the job process was killed by {name}{hint}"
    return "failed", f"the job process crashed (exit {returncode}): {_last_line(run.root / 'job.log')}"


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()] if path.exists() else []
    return lines[-1][:500] if lines else "no output"


def _restore_checkpoint(blobs: BlobStore, run: RunDir, checkpoint: str | None) -> None:
    """Bring ``name/tree-hash`` from the blob store unless this run folder already has it."""
    if not checkpoint:
        return
    name, tree = checkpoint.rsplit("/", 1)
    if not (run.checkpoints / name / "state.json").exists():
        blobs.get_tree(tree, run.checkpoints / name)


class Reporter:
    """Publishes one attempt's start, events, heartbeats and end on the channel."""

    def __init__(self, channel: Channel, blobs: BlobStore, spec: dict, run: RunDir):
        self.channel, self.blobs, self.run = channel, blobs, run
        self.job_id, self.attempt = spec["job_id"], spec["attempt"]
        self.seed = spec.get("config", {}).get("seed")
        self.offset = 0
        self.seq = 0
        self.beat = 0
        self.last_beat = 0.0
        self.pid = None
        self.last_checkpoint = run.latest_checkpoint().name if run.latest_checkpoint() else None

    def _publish(self, kind: str, payload: dict, seq: int | None = None) -> None:
        self.channel.publish(kind, self.job_id, self.attempt, payload, seq)

    def skip_existing_events(self) -> None:
        """Events already in the file belong to an earlier attempt on this machine."""
        self.offset = self.run.events.stat().st_size if self.run.events.exists() else 0

    def started(self, pid: int) -> None:
        self.pid = pid
        self._publish("s", {"worker": worker_id(), "pid": pid, "time": time.time()})

    def heartbeat(self, every_s: float) -> None:
        if time.monotonic() - self.last_beat >= every_s:
            self.beat += 1
            self.last_beat = time.monotonic()
            self._publish("h", {"beat": self.beat, "pid": self.pid, "worker": worker_id()})

    def pump(self) -> None:
        """Publish the complete lines appended to events.jsonl since the last call."""
        if not self.run.events.exists():
            return
        with self.run.events.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        end = chunk.rfind(b"\n")
        if end < 0:
            return
        for line in chunk[: end + 1].splitlines():
            if line.strip():
                self._publish_event(json.loads(line))
        self.offset += end + 1

    def _publish_event(self, event: dict) -> None:
        payload: dict = {"event": event, "blobs": {}}
        for name in event.get("artifacts") or []:
            path = self.run.root / name
            if path.is_file():
                payload["blobs"][name] = self.blobs.put_file(path)
        if event.get("kind") == "sample":
            payload["samples"] = [{"blob": h, "prompt": event.get("message"), "seed": self.seed, "kind": _sample_kind(n)}
                                  for n, h in payload["blobs"].items()]
        latest = self.run.latest_checkpoint()  # trainers checkpoint without always saying so
        if latest is not None and latest.name != self.last_checkpoint:
            payload["checkpoint"] = f"{latest.name}/{self.blobs.put_tree(latest)}"
            self.last_checkpoint = latest.name
        self._publish("e", payload, self.seq)
        self.seq += 1

    def finish(self, status: str, error: str | None) -> str:
        payload: dict = {"status": status, "error": error, "files": {}, "samples": []}
        if status == "done":
            payload.update(self._collect_outputs())
        self._publish("r", payload)
        return status

    def _collect_outputs(self) -> dict:
        run, out = self.run, {"files": {}, "samples": []}
        if run.adapter.is_dir():
            out["adapter"] = self.blobs.put_tree(run.adapter)
        for name in ("metrics.json", "loss.png", "samples.json"):
            if (run.root / name).is_file():
                out["files"][name] = self.blobs.put_file(run.root / name)
        if run.metrics.is_file():
            metrics = json.loads(run.metrics.read_text())
            out["metrics"] = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
        if (run.root / "result.json").is_file():  # e.g. a tuning job's table of trials
            out["result"] = json.loads((run.root / "result.json").read_text())
        samples_json = run.root / "samples.json"
        if samples_json.is_file():
            for row in json.loads(samples_json.read_text()):
                text = row.get("after") or row.get("text")
                if text:
                    out["samples"].append({"blob": self.blobs.put_bytes(text.encode()), "prompt": row.get("prompt"),
                                           "seed": self.seed, "kind": "text"})
        return out


def fetch_dataset(blobs: BlobStore, run: RunDir, config: dict) -> dict:
    """Fetch a job's dataset from the blob store into ``RUN/data`` and point ``data`` at it.

    The bot names the dataset by blob hashes (``data_blobs``: ``[[sha256, filename], ...]``)
    so that a worker on another machine, sharing only the blob store, can train on it. Files
    keep their names (the extension decides how a file is read) and their order.
    """
    refs = config.get("data_blobs")
    if not refs:
        return config
    folder = run.root / "data"
    paths = []
    for index, (digest, name) in enumerate(refs):
        path = folder / f"{index:04d}-{Path(name).name or 'file'}"
        if not path.exists():
            blobs.get_file(digest, path)
        paths.append(str(path))
    return {**{k: v for k, v in config.items() if k != "data_blobs"}, "data": paths}


def _sample_kind(name: str) -> str:
    return "image" if name.lower().endswith((".png", ".jpg", ".jpeg", ".webp")) else "text"


# --------------------------------------------------------------------------------------------

def run_worker(settings: Settings) -> None:
    """Consume jobs until SIGINT (finish running jobs) or SIGTERM (stop now)."""
    from .queue import make_huey

    huey, _ = make_huey(settings)
    log.info("worker %s on %s, %d job(s) at a time", worker_id(), settings.describe_queue(), settings.workers)
    consumer = huey.create_consumer(workers=settings.workers, worker_type="thread", periodic=False,
                                    initial_delay=settings.poll_s, backoff=1.0, max_delay=settings.poll_s,
                                    check_worker_health=True)
    consumer.run()


def settings_env(settings: Settings) -> dict[str, str]:
    """``LORACORD_*`` variables that give a child process the same settings."""
    env = {}
    for name, value in settings.model_dump().items():
        if value is not None:
            env[f"LORACORD_{name.upper()}"] = str(value)
    return env


def start_worker_process(settings: Settings, *, log_path: Path | None = None) -> subprocess.Popen:
    """Start a worker (the embedded consumer) as a child that dies with this process."""
    env = {**os.environ, **settings_env(settings)}
    log_path = log_path or settings.data_dir / "worker.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "storage.worker"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("huey").setLevel(logging.WARNING)
    run_worker(Settings())


if __name__ == "__main__":
    main()
