"""Fixtures for tests that drive the real queue and a real worker process.

A test module defines its own ``settings`` fixture (graces and timeouts differ by what it
tests) and imports these: ``from tests.queue_world import queue, worker  # noqa: F401``.
"""

from __future__ import annotations

import pytest

from storage.queue import JobQueue
from storage.worker import start_worker_process


@pytest.fixture
def queue(settings):
    q = JobQueue(settings)
    yield q
    q.close()


@pytest.fixture
def worker(settings):
    proc = start_worker_process(settings)
    yield proc
    proc.kill()
    proc.wait()
