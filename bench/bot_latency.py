"""Bot latency under load: slash command to first response, while a training job runs.

The real bot (all cogs, the database thread, the embedded worker) runs against SimCord's
in-memory Discord in this process; a real ``train_text`` job on the built-in smollm2-135m
(``--base`` to change it) trains in the worker's subprocess on the same cores the whole time.
For ``/session info`` and ``/data add`` (a new small .txt each time), N invocations each; the
time is from the member's invocation to the bot's first interaction response (its
``send_message``/``defer`` call reaching Discord), p50 and p99. Between invocations the
bot's pump runs once per wall-clock second, as in production. Prints one JSON line:

    python bench/bot_latency.py [--n 200] [--base smollm2-135m]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# bench/queue.py would shadow the standard library's queue module for scripts run from bench/.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import discord  # noqa: E402
import simcord  # noqa: E402

from bot.client import LoracordBot  # noqa: E402
from bot.config import BotSettings  # noqa: E402
from storage.settings import Settings  # noqa: E402

FIRST: dict[int, float] = {}


def _record_first_response() -> None:
    """Note when the bot first answers each interaction (defer or message), by interaction id."""
    for name in ("defer", "send_message", "send_modal"):
        original = getattr(discord.InteractionResponse, name)

        async def wrapped(self, *args, __original=original, **kwargs):
            FIRST.setdefault(self._parent.id, time.perf_counter())
            return await __original(self, *args, **kwargs)

        setattr(discord.InteractionResponse, name, wrapped)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def text_file(i: int) -> bytes:
    return "\n\n".join(f"Line {i}-{k}: a small fox number {i} writes verse {k} by the river." for k in range(6)).encode()


async def measure(env, member, channel, name: str, n: int, options) -> dict:
    first, whole = [], []
    last_pump = time.monotonic()
    for i in range(n):
        if time.monotonic() - last_pump >= 1.0:  # the pump's once-a-second round, as in production
            await env.advance_time(1.0)
            last_pump = time.monotonic()
        start = time.perf_counter()
        result = await member.slash(channel, name, **options(i))
        end = time.perf_counter()
        interaction_id = result._interaction.id if hasattr(result, "_interaction") else None
        answered = FIRST.get(interaction_id) if interaction_id else None
        first.append(((answered or end) - start) * 1000)
        whole.append((end - start) * 1000)
    return {"p50_ms": round(statistics.median(first), 2), "p99_ms": round(percentile(first, 0.99), 2),
            "roundtrip_p50_ms": round(statistics.median(whole), 2), "roundtrip_p99_ms": round(percentile(whole, 0.99), 2)}


async def main(n: int, base: str) -> dict:
    _record_first_response()
    data = Path(tempfile.mkdtemp(prefix="loracord-bench-"))
    settings = Settings(_env_file=None, data_dir=data, heartbeat_s=1.0)
    config = BotSettings(_env_file=None, allowed_models=[base], max_dataset_items=n + 10, train_cooldown_s=0,
                         text_train_defaults={"seq_len": 128, "batch_size": 4, "eval_every": 1000,
                                              "prompts": ["Hello"], "max_new_tokens": 8})
    bot = LoracordBot(settings, config)
    try:
        async with simcord.run(bot, settle_timeout=30.0) as env:
            guild = env.create_guild(name="bench")
            channel = guild.create_text_channel("training")
            alice = guild.add_member(env.create_user("alice"))
            await alice.slash(channel, "session new", kind="text", title="bench", base_model=base)
            thread = channel.threads[-1]
            await alice.slash(thread, "data add", file=("seed.txt", text_file(-1) + b"\n\n" + text_file(-2)))
            await alice.slash(thread, "train start", preset="balanced", steps=100_000)
            db = bot.services.db
            deadline = time.monotonic() + 300
            while not db.list_events(1, kind="step"):  # wait until the job really trains
                if time.monotonic() > deadline or db.get_job(1).finished:
                    raise SystemExit(f"the training job did not start: {db.get_job(1).status} {db.get_job(1).error}")
                await env.advance_time(1.0)
                time.sleep(0.5)
            step_before = db.list_events(1, kind="step")[-1].step
            measured = time.monotonic()
            info = await measure(env, alice, thread, "session info", n, lambda i: {})
            add = await measure(env, alice, thread, "data add", n, lambda i: {"file": (f"f{i}.txt", text_file(i))})
            measured = time.monotonic() - measured
            await env.advance_time(1.0)
            steps_during = db.list_events(1, kind="step")[-1].step - step_before
            status = db.get_job(1).status
            await alice.slash(thread, "train cancel")
    finally:
        bot.services.stop()
    return {"bench": "bot_latency", "n": n, "cpus": os.cpu_count(), "base": base, "session_info": info,
            "data_add": add, "training_job": {"status_during": status, "optimizer_steps_during": steps_during,
                             "measured_s": round(measured, 1)},
            "target_p99_ms": 500, "met": info["p99_ms"] < 500 and add["p99_ms"] < 500}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200, help="invocations per command")
    parser.add_argument("--base", default="smollm2-135m", help="base model the background job trains")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.n, args.base))))
