"""Sampling a trained adapter in a child process, polled by the bot's pump.

Generating loads the base model and the adapter (torch), which must never happen in the bot
process. ``Sampler.start`` launches ``python -m loracord sample RUN ...`` and returns at once;
``Sampler.poll`` (called every pump) collects the processes that ended and parses what they
printed. Storage has no ``sample`` job kind yet, so these runs do not go through the queue;
at most ``max_running`` run at once and anything beyond is refused with a message.

``sample_message`` makes what a model wrote safe to post: control characters gone, mentions
that would ping defused, code fences kept closed, and a long sample cut at a line or word
boundary with an ellipsis so the message fits Discord's limit.
"""

from __future__ import annotations

import re
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


# ---------------------------------------------------------------- what a sample may look like in Discord

MESSAGE_LIMIT = 2000  # characters in one Discord message
# Control characters (tabs and newlines stay), direction overrides, and U+FFFD: a model that emits
# half a character leaves a replacement mark that says nothing to a member.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ufffd]")
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")  # terminal colour and cursor codes
_BROADCAST = re.compile(r"@(everyone|here)", re.IGNORECASE)
_MENTION = re.compile(r"<(@[!&]?|#)(\d+)>")
_ZWSP = "\u200b"


def no_pings(text: str) -> str:
    """``text`` with ``@everyone``/``@here`` and ``<@id>``/``<@&id>``/``<#id>`` shown as written but inert."""
    text = _BROADCAST.sub(lambda m: f"@{_ZWSP}{m.group(1)}", text)
    return _MENTION.sub(lambda m: f"<{m.group(1)}{_ZWSP}{m.group(2)}>", text)


def clean_sample(text: str) -> str:
    """A model's output as members may see it: no control characters (tabs and newlines stay), no pings,
    and no code fence that would close the block it is shown in."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", _ANSI.sub("", text))
    return no_pings(text).replace("```", f"`{_ZWSP}`{_ZWSP}`").strip()


def cut(text: str, limit: int) -> str:
    """``text`` within ``limit`` characters: cut at the last line break or space in its second half,
    else mid-word, with an ellipsis."""
    if len(text) <= limit:
        return text
    room = max(1, limit - 1)
    window = text[:room]
    at = max(window.rfind("\n"), window.rfind(" "))
    if at < room // 2:
        at = room
    return window[:at].rstrip() + "…"


def sample_message(head: str, text: str | None = None) -> str:
    """The message posting a sample: ``head`` (one line, its prompt defused), then the text in a code block."""
    head = no_pings(_CONTROL.sub("", head).replace("\n", " "))
    if text is None:
        return cut(head, MESSAGE_LIMIT)
    head = cut(head, 300)
    body = clean_sample(text) or "(the model wrote nothing)"
    fence = "\n```\n{}\n```"
    return head + fence.format(cut(body, MESSAGE_LIMIT - len(head) - len(fence.format(""))))
