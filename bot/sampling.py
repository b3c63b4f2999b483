"""Sampling a trained adapter in a child process, polled by the bot's pump.

Generating loads the base model and the adapter (torch), which must never happen in the bot
process. ``Sampler.start`` launches ``python -m loracord sample RUN ...`` and returns at once;
``Sampler.poll`` (called every pump) collects the processes that ended and parses what they
printed. Storage has no ``sample`` job kind yet, so these runs do not go through the queue;
at most ``max_running`` run at once and anything beyond is refused with a message.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from trainer.errors import UserError


@dataclass
class SampleRequest:
    job_id: int
    channel_id: int
    user_id: int
    kind: str
    prompt: str
    count: int
    seed: int
    proc: subprocess.Popen
    out: Path
    err: Path
    trial: int | None = None
    results: list[dict] = field(default_factory=list)
    error: str | None = None


class Sampler:
    def __init__(self, max_running: int = 2):
        self.max_running = max_running
        self.running: list[SampleRequest] = []
        self._tmp = Path(tempfile.mkdtemp(prefix="loracord-samples-"))

    def start(self, run: Path, *, job_id: int, channel_id: int, user_id: int, kind: str, prompt: str,
              count: int, seed: int, trial: int | None = None) -> SampleRequest:
        if len(self.running) >= self.max_running:
            raise UserError(f"{len(self.running)} samplings are running already; try again in a minute.")
        n = len(list(self._tmp.iterdir()))
        out, err = self._tmp / f"{n}.out", self._tmp / f"{n}.err"
        command = [sys.executable, "-m", "loracord", "sample", str(run), "--prompt", prompt,
                   "--count", str(count), "--seed", str(seed)]
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = subprocess.Popen(command, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL)
        request = SampleRequest(job_id, channel_id, user_id, kind, prompt, count, seed, proc, out, err, trial=trial)
        self.running.append(request)
        return request

    def poll(self) -> list[SampleRequest]:
        """Requests whose process ended, with ``results`` or ``error`` filled in."""
        done = [r for r in self.running if r.proc.poll() is not None]
        for request in done:
            self.running.remove(request)
            text = request.out.read_text(encoding="utf-8", errors="replace")
            if request.proc.returncode != 0:
                lines = [l for l in request.err.read_text(errors="replace").splitlines() if l.strip()]
                request.error = (lines[-1] if lines else f"exit {request.proc.returncode}")[:500]
            elif request.kind == "image":
                request.results = [{"path": line.strip(), "seed": request.seed + i}
                                   for i, line in enumerate(text.splitlines()) if line.strip()]
            else:
                request.results = parse_text_samples(text, request.prompt, request.seed)
        return done

    def stop(self) -> None:
        for request in self.running:
            if request.proc.poll() is None:
                request.proc.kill()
                request.proc.wait()
        self.running.clear()


def parse_text_samples(output: str, prompt: str, seed: int) -> list[dict]:
    """Split ``loracord sample`` output (``--- PROMPT`` before each sample) into rows."""
    header = f"--- {prompt}"
    rows, current = [], None
    for line in output.splitlines():
        if line == header:
            if current is not None:
                rows.append(current)
            current = []
        elif current is not None:
            current.append(line)
    if current is not None:
        rows.append(current)
    return [{"text": "\n".join(lines).strip(), "seed": seed + i} for i, lines in enumerate(rows)]
