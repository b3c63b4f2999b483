"""What a job kind is: the functions the worker and the job process call for it.

A kind is one module in ``storage.jobkinds`` that defines ``KIND`` (or ``KINDS``), a
``JobKind``. Its functions are named as ``"module:function"`` strings and imported only where
they run, so the bot, which checks a kind's name and priority, never loads a trainer.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

LANES = ("runs", "quick")  # the huey queues; see JobKind.lane


@dataclass(frozen=True)
class JobKind:
    """One kind of job.

    - ``run``: ``fn(config, run: RunDir, *, resume: bool, cancel: CancelToken) -> dict``, called in
      the job process (``storage.jobrun``); it writes the run folder and returns what goes into
      ``RUN/result.json`` (``{"status": "done" | "cancelled", ...}``). It raises ``UserError`` for
      bad input.
    - ``prepare``: ``fn(blobs, run: RunDir, config) -> config``, called by the worker before the
      job process starts, to fetch the job's inputs from the blob store (a dataset, an adapter)
      into the run folder; returns the config the job process reads. None: nothing to fetch.
    - ``publish``: ``fn(blobs, run: RunDir, outputs: dict) -> None``, called by the worker when the
      job is done, to put what the job made into the blob store and name it in ``outputs`` (the
      report the bot's collector reads: ``samples``, ``result``, ...). None: the defaults only
      (adapter, metrics, chart, samples.json).
    - ``multi_gpu``: started under ``accelerate launch`` on a machine with several GPUs.
    - ``priority``: the job's place in the queue when the bot gives none (higher goes first).
    - ``lane``: the huey queue it travels on. ``runs`` (training, searches) is served by
      ``Settings.workers`` threads per worker; ``quick`` (sampling) by a thread of its own in
      every worker, so a short job never waits behind a long run.
    - ``cancelled_early``: the reason a job of this kind ends with when it is cancelled before its
      first ``step`` event (loading its model, data or caches): the worker stops the job process
      at once, as there is nothing to keep. A kind that reports no steps (sampling) is always
      stopped so.
    """

    name: str
    run: str
    prepare: str | None = None
    publish: str | None = None
    multi_gpu: bool = False
    priority: int = 0
    lane: str = "runs"
    summary: str = ""
    cancelled_early: str = "cancelled before training started; nothing was trained"

    def run_job(self, config: dict, run, *, resume: bool, cancel) -> dict:
        return _load(self.run)(config, run, resume=resume, cancel=cancel)

    def prepare_inputs(self, blobs, run, config: dict) -> dict:
        return _load(self.prepare)(blobs, run, config) if self.prepare else config

    def publish_outputs(self, blobs, run, outputs: dict) -> None:
        if self.publish:
            _load(self.publish)(blobs, run, outputs)


def _load(ref: str) -> Callable[..., Any]:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)
