"""A whole shared session walked through SimCord with the real queue, worker and trainer, and
EVERY message the bot posts checked: no host path (the test's temporary folders, the local base
model's folder, the bot's data folder), no control character, no file named twice in a row, no
"a/an" slip, no "step 0/0", and no progress message that contradicts its job's state, at any
moment the pump edited it.

Three members: the owner uploads good text; a second member uploads a file that is not UTF-8,
a Word document and a tar.gz of text files; a third tries before joining, then sends a tar
archive named .txt, a zip named .txt as a plain attachment, and a good .jsonl. The owner's run
stops early (its settings make any second validation count as no improvement), the second
member's run is cancelled, and `/train status` and `/sample` without a job pick the run that
has results.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import zipfile

import pytest

from bot.config import BotSettings
from tests.bot_world import *  # noqa: F401,F403

pytestmark = pytest.mark.asyncio

STATES = {"queued": "is queued", "running": "is running", "finished": "finished", "cancelled": "was cancelled",
          "failed": "failed"}


@pytest.fixture
def bot_config(tiny_llama) -> BotSettings:
    # eval every step with an improvement threshold no loss can meet: the run stops early at step 3
    # of 6 and keeps step 1's adapter, deterministically.
    return BotSettings(_env_file=None, allowed_models=[str(tiny_llama)], progress_edit_s=0, train_cooldown_s=0,
                       train_threads=1, text_train_defaults={
                           "seq_len": 64, "batch_size": 2, "max_new_tokens": 8, "precision": "fp32", "augment": 0.0,
                           "prompts": ["To be"], "eval_every": 1, "patience": 2, "min_delta": 100.0})


@pytest.fixture
def simcord_bot(make_bot):
    return make_bot(worker=True)


def packed(files: dict[str, bytes], mode: str = "w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def zipped(files: dict[str, bytes | str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


DOCX = zipped({"[Content_Types].xml": "<Types/>", "_rels/.rels": "<r/>", "word/document.xml": "<w:document/>"})
UPLOADED = ["alice.txt", "poem_scan.txt", "poems.docx", "stories.tar.gz", "a.txt", "b.txt", "verses.txt",
            "carol.jsonl", "more.txt"]


def strings(value):
    """Every string inside a message's embeds or components (what Discord would render)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from strings(item)


def answer(result):
    return result.followups[0] if result.followups else result.response


def fields(result) -> dict[str, str]:
    message = answer(result)
    assert message.embeds, message.content
    return {f.name: f.value for f in message.embeds[0].fields}


class Watcher:
    """Everything the bot posted, and every state its progress messages passed through."""

    def __init__(self, world, forbidden: list[str]):
        self.world, self.forbidden = world, forbidden
        self.snapshots: list[tuple[int, str, str, str]] = []  # (job id, job status then, content, embed text)

    def bot_messages(self):
        env = self.world.env
        return [m for channel in env.backend.messages.values() for m in channel.values()
                if m.author_id == env.bot.user.id]

    def snapshot(self) -> None:
        services = self.world.env.bot.services
        for job in services.db.list_jobs():
            progress = services.state.progress(job.id)
            if progress is None:
                continue
            message = self.world.env.backend.messages[progress.channel_id][progress.message_id]
            self.snapshots.append((job.id, services.db.get_job(job.id).status, message.content,
                                   json.dumps(message.embeds, ensure_ascii=False)))

    async def pump_until(self, done, **kwargs) -> None:
        await pump_until(self.world.env, lambda: (self.snapshot(), done())[1], **kwargs)

    def check_every_message(self) -> int:
        messages = self.bot_messages()
        for message in messages:
            shown = "\n".join([message.content, *strings(message.embeds), *strings(message.components)])
            for path in self.forbidden:
                assert path not in shown, f"host path {path!r} in: {shown[:300]}"
            assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f\ufffd]", shown), shown
            for name in UPLOADED:
                assert f"`{name}`: {name}" not in shown, shown
            assert not re.search(r"\ban (text|sample|session|job)\b|\ba (image|example)\b", shown), shown
            assert "step 0/0" not in shown and "0/0" not in re.sub(r"\d+/\d+/\d+", "", shown)
        for job_id, status, content, embeds in self.snapshots:
            self._agree(job_id, status, content, embeds)
        return len(messages)

    @staticmethod
    def _agree(job_id: int, status: str, content: str, embeds: str) -> None:
        """A progress message says one state, in its words and in its embed."""
        said = [state for state, words in STATES.items() if f"Job #{job_id} {words}" in content]
        assert len(said) == 1, f"job #{job_id} ({status}) says {said}: {content}"
        status_field = re.search(r'"name": "Status", "value": "([^"]+)"', embeds).group(1)
        assert status_field.split(" (")[0] == said[0] or (said[0] == "queued" and status_field == "starting"), \
            (content, status_field)
        if status in ("done", "failed", "cancelled"):
            assert said[0] in ("finished", "failed", "cancelled"), content


async def test_a_shared_session_walked_through_every_message_checked(world, tiny_llama, tmp_path, storage_settings):
    import tempfile

    w, db = world, world.env.bot.services.db
    watch = Watcher(w, [str(tmp_path), str(tiny_llama), str(tiny_llama.parent), str(storage_settings.data_dir),
                        tempfile.gettempdir() + "/"])
    created = await w.alice.slash(w.channel, "session new", kind="text", title="Fox tales", base_model=str(tiny_llama))
    thread = w.channel.threads[-1]
    assert "on `tiny-llama`" in answer(created).content

    early = await w.carol.slash(thread, "data add", file=("carol.jsonl", b'{"text": "too early"}\n'))
    assert early.ephemeral and "/session join" in early.response.content
    await w.bob.slash(thread, "session join")
    await w.carol.slash(thread, "session join")

    await w.alice.slash(thread, "data add", file=("alice.txt", text_bytes(12, word="drawing")))
    bob = await w.bob.slash(thread, "data add", file=("poem_scan.txt", "café poème".encode("latin-1")),
                            file2=("poems.docx", DOCX),
                            file3=("stories.tar.gz", packed({"a.txt": text_bytes(4, start=40, word="story"),
                                                             "b.txt": text_bytes(4, start=50, word="story")}, "w:gz")))
    bob_fields = fields(bob)
    assert "`a.txt` · 4 example(s)" in bob_fields["Accepted"] and "`b.txt` · 4 example(s)" in bob_fields["Accepted"]
    assert "`poem_scan.txt`: not UTF-8 text" in bob_fields["Rejected"]
    assert "`poems.docx`: this is a Word document (.docx)" in bob_fields["Rejected"]
    assert "Only" not in bob_fields.get("Advice", "")  # 20 examples in the whole dataset by now
    carol = await w.carol.slash(thread, "data add", file=("verses.txt", packed({"v.txt": b"A verse.\n" * 3})),
                                file2=("carol.jsonl", "\n".join(json.dumps({"prompt": f"Line {i}", "completion":
                                                                            f" the fox {i} runs."}) for i in range(6)).encode()))
    carol_fields = fields(carol)
    assert carol_fields["Rejected"].startswith("`verses.txt`: this is a tar archive, not a .txt file")
    await w.carol.send(thread, "and these", attachments=[("more.txt", zipped({"x.txt": "hello"}))])
    reply = thread.last_message
    assert "`more.txt`: this is a zip archive, not a .txt file" in reply.embeds[0].fields[0].value or \
        any("`more.txt`: this is a zip archive" in f.value for f in reply.embeds[0].fields)
    await w.alice.slash(thread, "data report")

    # The owner's run stops early; the second member's run is cancelled.
    run = await w.alice.slash(thread, "train start", steps=6, lr=0.005, rank=4)
    await watch.pump_until(lambda: db.get_job(1).finished, timeout=300, what="the training job")
    job = db.get_job(1)
    assert job.status == "done", job.error
    progress = next(m for m in thread.history() if m.id == answer(run).id)
    assert "✅ Job #1 finished: it stopped early at step 3 of 6 and kept the adapter of step 1" in progress.content
    assert progress.embeds[0].description.startswith("`▰▰▰▰▰▰▰▰▰▰▰▰▰▰▰▰▰▰▰▰ 100%`  stopped early at step 3 of 6")

    await w.bob.slash(thread, "train start", steps=4)
    cancelled = await w.bob.slash(thread, "train cancel")
    assert "Job #2" in cancelled.response.content
    await watch.pump_until(lambda: db.get_job(2).finished, timeout=120, what="the cancel")
    assert db.get_job(2).status == "cancelled"
    await w.env.advance_time(1.5)
    watch.snapshot()

    status = await w.carol.slash(thread, "train status")
    assert status.response.content.startswith("Showing job #1, the newest finished with an adapter (#2 is cancelled)")
    asked = await w.carol.slash(thread, "sample", prompt="To be @everyone")
    assert "I took job #1, the newest with an adapter" in asked.response.content
    await watch.pump_until(lambda: any(s.prompt == "To be @everyone" for s in db.list_samples(job_id=1)),
                           timeout=180, what="the sampling")
    posted = thread.last_message
    assert posted.content.startswith("**Sample #") and "@\u200beveryone" in posted.content
    assert not w.env.backend.messages[thread.id][posted.id].mention_everyone

    counted = watch.check_every_message()
    assert counted >= 15 and len(watch.snapshots) >= 5


async def test_the_watcher_catches_a_progress_message_that_contradicts_its_job():
    """The checks above can fail: a finished job still reading "queued" is caught."""
    embed = json.dumps([{"fields": [{"name": "Status", "value": "finished"}]}])
    Watcher._agree(1, "done", "✅ Job #1 finished after 4 steps.", embed)
    with pytest.raises(AssertionError):
        Watcher._agree(1, "done", "Job #1 is queued (position 1 in the queue); ✅ Job #1 finished.", embed)
    with pytest.raises(AssertionError):
        Watcher._agree(1, "running", "Job #1 is running; this message shows its progress.", embed)
