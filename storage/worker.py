"""The worker: a huey consumer that runs each job in a subprocess and reports back.

``run_worker(settings)`` is what ``loracord worker`` (or ``python -m storage.worker``) runs on
each GPU machine; the bot starts one itself for the embedded SQLite queue
(``start_worker_process``). For each job ``execute_job`` runs one ``JobAttempt``:

1. reports at once that it took the task, and from then on sends heartbeats from a thread,
   also while it waits, fetches data or uploads, so a job is taken for lost only when its
   worker has really stopped,
2. takes the run folder's lock, so an earlier attempt on this machine has really ended first,
   publishes the events that attempt left unpublished, and collects its run if it finished,
3. fetches the job's last checkpoint, and its inputs (a dataset, an adapter to sample: the job
   kind's ``prepare``, see ``storage.jobkinds``), from the blob store when this machine lacks them,
4. starts ``python -m storage.jobrun RUN/job.json`` (``accelerate launch`` with several GPUs)
   in its own process group, set to die with the worker,
5. tails RUN/events.jsonl and publishes each event (artifacts and checkpoints go to the blob
   store first, so a report never names a blob that is not there; a checkpoint is uploaded
   from a snapshot of hard links, so the trainer writing or pruning never races the upload),
6. on cancel touches RUN/CANCEL and keeps it there until the trainer has stopped, then sends
   SIGTERM and SIGKILL to the group after grace periods. A cancel that arrives before this
   attempt's first step (the trainer still loads its model, data or caches: nothing to keep)
   sends SIGTERM at once and SIGKILL after ``kill_grace_s``, and the job ends with the kind's
   ``cancelled_early`` reason. When the bot has given up on this attempt
   (``Channel.superseded``) it kills the group at once,
7. publishes the end: status, error (and whether it is worth retrying), and the blobs of the
   adapter, samples, metrics and chart, plus what the job kind's ``publish`` adds (a search's
   trial adapters, a sample job's samples).

Whatever goes wrong in the worker itself, the trainer's process group ends before the task
does. Workers never open the database; see ``storage.channel``.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from trainer import kinds
from trainer.errors import UserError
from trainer.events import grid_words
from trainer.rundir import RunDir, atomic_folder, checkpoint_step, write_json_atomic

from . import jobkinds
from .blobs import BlobStore
from .channel import Channel
from .jobrun import EXIT_DONE, EXIT_PERMANENT, EXIT_TRANSIENT  # how a job process ends
from .lock import RunLock
from .settings import Settings

log = logging.getLogger("loracord.worker")


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def execute_job(spec: dict, settings: Settings, *, channel: Channel | None = None,
                blobs: BlobStore | None = None) -> str:
    """Run one dispatched job to its end; returns the status it reported."""
    return JobAttempt(spec, settings, channel or Channel(settings),
                      blobs or BlobStore(settings.blob_location)).execute()


class Superseded(Exception):
    """The bot gave up on this attempt (it took its worker for lost) and counts on a later one."""


class JobAttempt:
    """One attempt of one job on this worker, from taking the task to reporting its end."""

    def __init__(self, spec: dict, settings: Settings, channel: Channel, blobs: BlobStore):
        self.spec, self.settings, self.channel, self.blobs = spec, settings, channel, blobs
        self.job_id, self.attempt = spec["job_id"], spec["attempt"]
        self.run = RunDir(settings.run_root / f"job-{self.job_id}")
        self.run.root.mkdir(parents=True, exist_ok=True)
        self.reporter = Reporter(channel, blobs, spec, self.run)
        self.lock = RunLock(self.run.root / "worker.lock")
        self.proc: subprocess.Popen | None = None
        self.cancel_at: float | None = None
        self.stop_at_once = False  # the cancel came before this attempt's first step: nothing to keep
        self.resume_step = checkpoint_step(spec.get("checkpoint"))  # a retry's, from the bot or this run folder
        self.last_superseded_check = 0.0

    def execute(self) -> str:
        self.reporter.started()  # at once: from now on the bot expects our heartbeats
        heartbeat = Heartbeat(self.settings, self.spec)
        heartbeat.start()
        try:
            return self._run(heartbeat)
        except Superseded:
            log.warning("job %s attempt %s: the bot has moved on to a later attempt; stopped", self.job_id, self.attempt)
            return "superseded"
        except UserError as exc:  # e.g. a dataset blob that is not in the store
            self._stop_trainer()
            return self.reporter.finish("failed", str(exc))
        except Exception as exc:
            log.exception("job %s attempt %s: the worker failed", self.job_id, self.attempt)
            self._stop_trainer()
            return self.reporter.finish("failed", f"the worker failed: {type(exc).__name__}: {exc}", retry=True)
        finally:
            self._stop_trainer()  # no trainer outlives its task, whatever happened above
            heartbeat.stop()
            self.lock.release()

    def _run(self, heartbeat: "Heartbeat") -> str:
        run, spec = self.run, self.spec
        if self._cancel_requested():
            return self.reporter.finish("cancelled", self._nothing_trained())
        # An earlier attempt on this machine (a worker that was taken for lost) ends first.
        self.lock.acquire(while_waiting=self._check_superseded, every_s=0.2)
        RunLock(run.root / "trainer.lock").acquire(while_waiting=self._check_superseded, every_s=0.2).release()
        self.reporter.begin()
        if self._cancel_requested():  # asked while we waited
            return self.reporter.finish("cancelled", self._nothing_trained())
        finished = finished_run(run)
        if finished is not None:  # it trained to the end, but its report never arrived
            log.info("job %s attempt %s: collecting the run an earlier attempt finished", self.job_id, self.attempt)
            return self.reporter.finish("done", None, result=finished)
        _restore_checkpoint(self.blobs, run, spec.get("checkpoint"))
        run.cancel_file.unlink(missing_ok=True)  # stale; a cancel asked for now is in the channel
        (run.root / "result.json").unlink(missing_ok=True)
        # Resume whenever a checkpoint is here (restored or left by an earlier attempt on this
        # machine); an attempt lost before its first checkpoint starts over.
        resume = run.latest_checkpoint() is not None
        if resume:
            self.resume_step = checkpoint_step(run.latest_checkpoint().name)
        config = jobkinds.get(spec["kind"]).prepare_inputs(self.blobs, run, spec["config"])  # its dataset, adapter, ...
        if self._cancel_requested():  # asked while we fetched them
            return self.reporter.finish("cancelled", self._nothing_trained())
        spec_path = run.root / "job.json"
        write_json_atomic(spec_path, {**spec, "config": config, "run_dir": str(run.root), "resume": resume})
        self._check_superseded()

        with (run.root / "job.log").open("ab") as job_log:
            self.proc = subprocess.Popen(_job_command(spec["kind"], spec_path), stdout=job_log,
                                         stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)
        heartbeat.pid = self.proc.pid
        log.info("job %s attempt %s started (pid %s)", self.job_id, self.attempt, self.proc.pid)
        while self.proc.poll() is None:
            self.reporter.pump()
            if self.cancel_at is None and self._cancel_requested():
                self.cancel_at = time.monotonic()
                self.stop_at_once = not self.reporter.stepped
            if self.cancel_at is not None:
                self._press_cancel()
            self._check_superseded()
            time.sleep(0.1)
        self.reporter.pump()
        status, error, retry = _outcome(self.proc.returncode, run, cancelled=self.cancel_at is not None)
        if status == "cancelled" and not self.reporter.stepped:
            error = self._nothing_trained()
        log.info("job %s attempt %s ended: %s %s", self.job_id, self.attempt, status, error or "")
        return self.reporter.finish(status, error, retry=retry)

    def _cancel_requested(self) -> bool:
        return self.channel.cancel_requested(self.job_id)

    def _press_cancel(self) -> None:
        """Keep the cancel asserted until the trainer stops: the CANCEL file first (the trainer
        stops after its step with a checkpoint), then SIGTERM and SIGKILL after grace periods.

        Before the first step the trainer is loading (a model, data, caches), which can take
        longer than the grace and never looks at the CANCEL file, and there is nothing to keep:
        SIGTERM at once."""
        if not self.run.cancel_file.exists():  # a trainer starting up may have cleared it
            self.run.cancel_file.touch()
        waited = time.monotonic() - self.cancel_at
        grace = 0.0 if self.stop_at_once else self.settings.cancel_grace_s
        if waited > grace + self.settings.kill_grace_s:
            _kill_group(self.proc, signal.SIGKILL)
        elif waited >= grace:
            _kill_group(self.proc, signal.SIGTERM)
            _kill_group(self.proc, signal.SIGCONT)  # a stopped trainer (SIGSTOP, a debugger) acts on it now

    def _nothing_trained(self) -> str:
        """Why a job cancelled before this attempt's first step ended: nothing was trained, or,
        for a retry, nothing since the checkpoint it would have resumed from."""
        if self.resume_step:
            return f"cancelled before training resumed from step {self.resume_step}; nothing more was trained"
        return jobkinds.get(self.spec["kind"]).cancelled_early

    def _check_superseded(self) -> None:
        if time.monotonic() - self.last_superseded_check < 1.0:
            return
        self.last_superseded_check = time.monotonic()
        if self.channel.superseded(self.job_id, self.attempt):
            raise Superseded()

    def _stop_trainer(self) -> None:
        """End the trainer's process group (if it still runs) and wait until it has."""
        if self.proc is None or self.proc.returncode is not None:
            return
        if self.proc.poll() is None:
            _kill_group(self.proc, signal.SIGKILL)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            log.error("job %s: the trainer (pid %s) did not die", self.job_id, self.proc.pid)


class Heartbeat(threading.Thread):
    """Reports every ``heartbeat_s`` that this attempt is alive, from the moment the worker took
    the task until it reported the end, whatever the worker's main thread is busy with."""

    def __init__(self, settings: Settings, spec: dict):
        super().__init__(daemon=True, name=f"heartbeat-{spec['job_id']}")
        self.settings, self.job_id, self.attempt = settings, spec["job_id"], spec["attempt"]
        self.pid: int | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        channel = Channel(self.settings)  # its own connection: the main thread's is busy
        beat = 0
        try:
            while not self._stop_event.is_set():
                beat += 1
                try:
                    channel.publish("h", self.job_id, self.attempt, {"beat": beat, "pid": self.pid, "worker": worker_id()})
                except Exception:  # the queue's store is briefly unreachable: try at the next beat
                    log.warning("job %s: heartbeat not sent", self.job_id, exc_info=True)
                self._stop_event.wait(self.settings.heartbeat_s)
        finally:
            channel.close()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)


def finished_run(run: RunDir) -> dict | None:
    """What an earlier attempt left when it trained to the end (its report lost), else None."""
    result_file = run.root / "result.json"
    if result_file.is_file():
        result = json.loads(result_file.read_text())
        return result if result.get("status") == "done" else None
    if run.metrics.is_file() and run.adapter.is_dir() and run.latest_checkpoint() is None:
        if json.loads(run.metrics.read_text()).get("status") == "done":
            return {"status": "done"}
    return None


def _job_command(kind: str, spec_path: Path) -> list[str]:
    gpus = _gpu_count() if jobkinds.get(kind).multi_gpu else 0
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


def _outcome(returncode: int, run: RunDir, *, cancelled: bool) -> tuple[str, str | None, bool]:
    """Turn the job process's exit into (status, error, worth retrying)."""
    result_file = run.root / "result.json"
    result = json.loads(result_file.read_text()) if result_file.exists() else {}
    if returncode == EXIT_DONE and result.get("status") in ("done", "cancelled"):
        return result["status"], None, False
    if cancelled:
        return "cancelled", None, False
    if returncode in (EXIT_PERMANENT, EXIT_TRANSIENT) and result.get("error"):
        return "failed", result["error"], returncode == EXIT_TRANSIENT
    if returncode < 0:
        name = signal.Signals(-returncode).name
        hint = " (out of memory?)" if returncode == -signal.SIGKILL else ""
        return "failed", f"the job process was killed by {name}{hint}", True
    return "failed", f"the job process crashed (exit {returncode}): {_last_line(run.root / 'job.log')}", False


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()] if path.exists() else []
    return lines[-1][:500] if lines else "no output"


def _restore_checkpoint(blobs: BlobStore, run: RunDir, checkpoint: str | None) -> None:
    """Bring ``name/tree-hash`` from the blob store unless this run folder already has it."""
    if not checkpoint:
        return
    name, tree = checkpoint.rsplit("/", 1)
    if not (run.checkpoints / name / "state.json").exists():
        with atomic_folder(run.checkpoints / name) as tmp:  # a worker killed meanwhile leaves no half checkpoint
            blobs.get_tree(tree, tmp)


class Reporter:
    """Publishes one attempt's start, events, checkpoints and end on the channel.

    Events are keyed by their line in RUN/events.jsonl: ``RUN/published.json`` records where
    each attempt's lines begin and how far publishing got, so an attempt publishes what the
    one before it (on this machine) wrote but could not publish, and a line published twice is
    stored once.
    """

    def __init__(self, channel: Channel, blobs: BlobStore, spec: dict, run: RunDir):
        self.channel, self.blobs, self.run = channel, blobs, run
        self.job_id, self.attempt = spec["job_id"], spec["attempt"]
        self.kind = jobkinds.get(spec["kind"])
        self.seed = spec.get("config", {}).get("seed")
        self.state_file = run.root / "published.json"
        self.state = {"attempts": [], "line": 0, "offset": 0}
        self.last_checkpoint: str | None = None
        self.stepped = False  # this attempt's trainer has reported a training step

    def _publish(self, kind: str, payload: dict, seq: int | None = None, attempt: int | None = None) -> None:
        self.channel.publish(kind, self.job_id, attempt or self.attempt, payload, seq)

    def started(self) -> None:
        self._publish("s", {"worker": worker_id(), "time": time.time()})

    def begin(self) -> None:
        """Publish what earlier attempts left unpublished, then start this attempt's lines."""
        if self.state_file.is_file():
            self.state = json.loads(self.state_file.read_text())
        events = self.run.events
        size = events.stat().st_size if events.exists() else 0
        if size < self.state["offset"]:  # the file was replaced: publish it from the start
            self.state.update(line=0, offset=0)
        if size:
            with events.open("rb+") as f:  # a trainer killed mid-line left half a line: drop it
                data = f.read()
                if not data.endswith(b"\n"):
                    f.truncate(data.rfind(b"\n") + 1)
        self.pump()
        if not any(attempt == self.attempt for attempt, _ in self.state["attempts"]):
            self.state["attempts"].append([self.attempt, self.state["line"]])
        self._save_state()
        latest = self.run.latest_checkpoint()
        self.last_checkpoint = latest.name if latest else None

    def _save_state(self) -> None:
        write_json_atomic(self.state_file, self.state)

    def _key(self, line: int) -> tuple[int, int] | None:
        """(attempt, seq) of the events file's line ``line``, or None for a line no attempt wrote."""
        owner = None
        for attempt, first in self.state["attempts"]:
            if first <= line:
                owner = (attempt, line - first)
        return owner

    def pump(self) -> None:
        """Publish the complete lines appended to events.jsonl since the last call."""
        if not self.run.events.exists():
            return
        with self.run.events.open("rb") as f:
            f.seek(self.state["offset"])
            chunk = f.read()
        end = chunk.rfind(b"\n")
        if end < 0:
            return
        for raw in chunk[: end + 1].split(b"\n")[:-1]:
            key = self._key(self.state["line"])
            if key is not None and raw.strip():
                try:
                    event = json.loads(raw)
                except ValueError:
                    log.warning("job %s: skipped a damaged line in events.jsonl", self.job_id)
                else:
                    self._publish_event(event, *key)
            self.state["line"] += 1
            self.state["offset"] += len(raw) + 1
        self._save_state()

    def _publish_event(self, event: dict, attempt: int, seq: int) -> None:
        payload: dict = {"event": event, "blobs": {}}
        for name in event.get("artifacts") or []:
            path = self.run.root / name
            if path.is_file():
                payload["blobs"][name] = self.blobs.put_file(path)
        if event.get("kind") == "sample":
            shows = event.get("shows")  # a grid says its prompts and seeds; its file name is no prompt
            prompt, seed = (grid_words(shows), None) if shows else (event.get("message"), self.seed)
            scores = {"scores": event["scores"]} if event.get("scores") else {}  # the final grid's (trainer.scores)
            payload["samples"] = [{"blob": h, "prompt": prompt, "seed": seed, "kind": kinds.for_file(n).name, **scores}
                                  for n, h in payload["blobs"].items()]
        if attempt == self.attempt:
            self.stepped = self.stepped or event.get("kind") == "step"
            checkpoint = self._checkpoint_to_publish(event)
            if checkpoint is not None:
                payload["checkpoint"] = checkpoint
        self._publish("e", payload, seq, attempt)

    def _checkpoint_to_publish(self, event: dict) -> str | None:
        """Upload the checkpoint an event announces (or, as trainers may checkpoint without
        saying so, the latest one when it is new); returns ``name/tree-hash`` or None."""
        if event.get("kind") == "checkpoint" and event.get("step") is not None:
            folder = self.run.checkpoint(int(event["step"]))
        else:
            folder = self.run.latest_checkpoint()
        if folder is None or folder.name == self.last_checkpoint:
            return None
        snapshot = self._snapshot(folder)
        if snapshot is None:  # pruned before we got to it: a newer one is announced next
            return None
        try:
            tree = self.blobs.put_tree(snapshot)
        finally:
            shutil.rmtree(snapshot.parent, ignore_errors=True)
        self.last_checkpoint = folder.name
        return f"{folder.name}/{tree}"

    def _snapshot(self, folder: Path) -> Path | None:
        """Hard links to a checkpoint's files, which stay whole whatever the trainer does next
        (checkpoints are written under a temporary name and renamed, never changed in place)."""
        snapshot = self.run.root / ".upload" / folder.name
        shutil.rmtree(snapshot.parent, ignore_errors=True)
        try:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    target = snapshot / path.relative_to(folder)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        os.link(path, target)
                    except FileNotFoundError:
                        raise
                    except OSError:  # a filesystem without hard links
                        shutil.copy2(path, target)
            if not (snapshot / "state.json").is_file():
                raise FileNotFoundError(folder / "state.json")
        except FileNotFoundError:
            shutil.rmtree(snapshot.parent, ignore_errors=True)
            return None
        return snapshot

    def finish(self, status: str, error: str | None, *, retry: bool = False, result: dict | None = None) -> str:
        payload: dict = {"status": status, "error": error, "retry": retry, "files": {}, "samples": []}
        if status == "done":
            payload.update(self._collect_outputs(result))
        self._publish("r", payload)
        return status

    def _collect_outputs(self, result: dict | None = None) -> dict:
        run, out = self.run, {"files": {}, "samples": []}
        if run.adapter.is_dir():
            out["adapter"] = self.blobs.put_tree(run.adapter)
        for name in ("metrics.json", "loss.png", "samples.json"):
            if (run.root / name).is_file():
                out["files"][name] = self.blobs.put_file(run.root / name)
        if run.metrics.is_file():
            metrics = json.loads(run.metrics.read_text())
            out["metrics"] = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
            # an image run's sample grids, by the names metrics.json gives them, so that what the bot
            # rebuilds of the run (a Hub upload's card) shows them; the store keeps each grid once
            for name in metrics.get("samples") or []:
                if isinstance(name, str) and (run.root / name).is_file():
                    out["files"][name] = self.blobs.put_file(run.root / name)
        if result is None and (run.root / "result.json").is_file():  # e.g. a tuning job's table of trials
            result = json.loads((run.root / "result.json").read_text())
        if result:
            out["result"] = result
        samples_json = run.root / "samples.json"
        if samples_json.is_file():
            for row in json.loads(samples_json.read_text()):
                text = row.get("after") or row.get("text")
                if text:
                    out["samples"].append({"blob": self.blobs.put_bytes(text.encode()), "prompt": row.get("prompt"),
                                           "seed": self.seed, "kind": kinds.TEXT.name,  # rows of texts
                                           "scores": row.get("scores")})
        self.kind.publish_outputs(self.blobs, run, out)  # what only this kind makes (trial adapters, samples)
        return out


# --------------------------------------------------------------------------------------------

def make_huey(settings: Settings, lane: str = "runs"):
    """The huey instance of one lane (see ``storage.jobkinds.base.JobKind.lane``) and its one task,
    ``run_job(spec)``: ``execute_job``.

    The bot enqueues with it (``storage.queue``), workers consume with it (``run_worker``).
    The ``runs`` lane is the queue named ``queue_name``; another lane is ``<queue_name>.<lane>``.
    """
    name = settings.queue_name if lane == "runs" else f"{settings.queue_name}.{lane}"
    if settings.uses_redis:
        from huey import PriorityRedisHuey

        huey = PriorityRedisHuey(name, url=settings.queue_url, results=False, clean_name=False)
    else:
        from huey import SqliteHuey

        settings.queue_path.parent.mkdir(parents=True, exist_ok=True)
        huey = SqliteHuey(name, filename=str(settings.queue_path), results=False, timeout=30)

    @huey.task(name="run_job")
    def run_job(spec: dict) -> str:
        return execute_job(spec, settings)

    return huey, run_job


def run_worker(settings: Settings) -> None:
    """Consume jobs until SIGINT (finish running jobs) or SIGTERM (stop now).

    One consumer per lane: ``settings.workers`` threads take runs, one more thread takes quick
    jobs (sampling), so those never wait behind a run. The quick lane's consumer is started
    first; the runs lane's consumer owns the signals and the main thread, and stops the other.
    """
    log.info("worker %s on %s, %d run(s) at a time and one quick job", worker_id(), settings.describe_queue(),
             settings.workers)
    quick, runs = (make_huey(settings, lane)[0].create_consumer(
        workers=settings.workers if lane == "runs" else 1, worker_type="thread", periodic=False,
        initial_delay=settings.poll_s, backoff=1.0, max_delay=settings.poll_s, check_worker_health=True)
        for lane in ("quick", "runs"))
    quick.start()
    try:
        runs.run()
    finally:
        quick.stop(graceful=False)  # a sample in flight dies with this process; the bot retries it


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
    # Run the imported module's copy, so that huey names the task ``storage.worker.run_job`` as the bot does.
    from storage.worker import main as worker_main

    worker_main()
