"""What members see, through SimCord: every message true, specific and safe.

Files are classified by content and name (office documents and e-books refused as one file,
tar archives unpacked, archives and programs named .txt refused saying what they are); a job's
messages agree with its state from queued to an early stop; wording (a/an, a file named once,
dataset-wide advice from the whole dataset, invited members told to join); `/train status` and
`/adapter export` without a job pick the job that has what they need and say which; private
sessions, host paths and samples (control characters, pings, length) stay safe.

Jobs here are driven by writing their rows the way the collector does after a worker reports
(no worker process: tests/test_bot_walk.py runs the real one); the bot's pump, the progress
message and everything posted are real.
"""

from __future__ import annotations

import io
import re
import tarfile
import zipfile

import pytest

from bot.config import BotSettings
from bot.display import model_name, scrub_paths
from bot.sampling import MESSAGE_LIMIT, clean_sample, cut, sample_message
from tests.bot_world import *  # noqa: F401,F403

pytestmark = pytest.mark.asyncio


# ---------------------------------------------------------------- helpers

def zip_bytes(files: list[tuple[str, str | bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in files:
            archive.writestr(name, content)
    return buffer.getvalue()


def tar_bytes(files: dict[str, bytes], mode: str = "w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


DOCX = zip_bytes([("[Content_Types].xml", "<Types/>"), ("_rels/.rels", "<r/>"), ("docProps/app.xml", "<a/>"),
                  ("word/document.xml", "<w:document/>"), ("word/styles.xml", "<s/>")])
XLSX = zip_bytes([("[Content_Types].xml", "<Types/>"), ("xl/workbook.xml", "<wb/>"), ("xl/sheet1.xml", "<s/>")])
ODT = zip_bytes([("mimetype", "application/vnd.oasis.opendocument.text"), ("content.xml", "<c/>")])
EPUB = zip_bytes([("mimetype", "application/epub+zip"), ("OEBPS/ch1.xhtml", "<p/>")])


def upload_fields(result):
    message = result.followups[0] if result.followups else result.response
    return {f.name: f.value for f in message.embeds[0].fields}, message


async def text_session(w, **options):
    await w.alice.slash(w.channel, "session new", kind="text", title="Fox stories", **options)
    return w.channel.threads[-1]


async def started_job(w, thread, **options):
    """A real /train start: job #N queued, its progress message posted (no worker takes it)."""
    await w.alice.slash(thread, "data add", file=("fox.txt", text_bytes(12)))
    started = await w.alice.slash(thread, "train start", **options)
    return started, w.env.bot.services.db.list_jobs()[0]


def report(w, job_id: int, *events: dict, attempt: int = 1) -> None:
    """Store worker events as the collector does, and tell the pump the job changed."""
    db = w.env.bot.services.db
    start = len(db.list_events(job_id))
    for seq, event in enumerate(events, start=start):
        db.add_event(job_id, attempt, seq, {"loss": None, "val_loss": None, "message": None, **event})
    w.env.bot.dirty.add(job_id)


def progress_message(thread, started):
    return next(m for m in thread.history() if m.id == started.response.id)


def fields_of(message):
    return {f.name: f.value for f in message.embeds[0].fields}


# ---------------------------------------------------------------- 1. files by content and name

async def test_office_documents_and_ebooks_are_refused_as_one_file_with_what_to_upload(world):
    thread = await text_session(world)
    result = await world.alice.slash(thread, "data add", file=("poems.docx", DOCX), file2=("lines.xlsx", XLSX),
                                     file3=("notes.odt", ODT), file4=("book.epub", EPUB),
                                     file5=("word-in-disguise.zip", DOCX))
    got, message = upload_fields(result)
    assert message.embeds[0].title == "Dataset: 0 file(s) added, 5 rejected"
    rejected = got["Rejected"].splitlines()
    assert len(rejected) == 5  # one line per uploaded file, none for the XML parts inside
    assert "[Content_Types].xml" not in got["Rejected"] and "word/" not in got["Rejected"]
    assert rejected[0].startswith("`poems.docx`: this is a Word document (.docx); save its text as a .txt or .md")
    assert rejected[1].startswith("`lines.xlsx`: this is an Excel workbook (.xlsx); export the sheet as .csv")
    assert rejected[2].startswith("`notes.odt`: this is an OpenDocument text (.odt); save its text")
    assert rejected[3].startswith("`book.epub`: this is an e-book (.epub); save its text")
    assert rejected[4].startswith("`word-in-disguise.zip`: this is a Word document (.docx)")


async def test_tar_archives_are_unpacked_and_disguised_archives_and_binaries_are_refused(world):
    thread = await text_session(world)
    packed = tar_bytes({"fox/a.txt": text_bytes(5), "fox/b.md": text_bytes(5, start=5), "fox/.hidden": b"x"}, "w:gz")
    result = await world.alice.slash(thread, "data add", file=("stories.tar.gz", packed))
    got, message = upload_fields(result)
    assert message.embeds[0].title == "Dataset: 2 file(s) added, 0 rejected"
    assert "`a.txt` · 5 example(s)" in got["Accepted"] and "`b.md` · 5 example(s)" in got["Accepted"]

    headers = tar_bytes({f"poem{i}.txt": b"A line of verse.\n" for i in range(42)})
    result = await world.alice.slash(thread, "data add", file=("poem_scan.txt", headers),
                                     file2=("notes.txt", zip_bytes([("a.txt", "hello there")])),
                                     file3=("run.txt", b"\x7fELF\x02\x01\x01" + b"\x00" * 64),
                                     file4=("scan.txt", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj"),
                                     file5=("nested.zip", zip_bytes([("inner.zip", zip_bytes([("x.txt", "x")]))])))
    got, message = upload_fields(result)
    assert message.embeds[0].title == "Dataset: 0 file(s) added, 5 rejected"
    lines = got["Rejected"].splitlines()
    assert lines[0] == ("`poem_scan.txt`: this is a tar archive, not a .txt file: name it .tar to have its files "
                        "added, or upload the files inside it")
    assert lines[1].startswith("`notes.txt`: this is a zip archive, not a .txt file: name it .zip")
    assert lines[2].startswith("`run.txt`: this is a Linux program; upload text (.txt, .md, .jsonl, .csv)")
    assert lines[3].startswith("`scan.txt`: this is a PDF document; copy its text into a .txt or .md file")
    assert lines[4].startswith("`nested.zip/inner.zip`: this is a zip archive inside the archive: unpack it")
    assert len(world.env.bot.services.db.list_dataset_items(1)) == 2  # nothing of the refused files was stored


async def test_an_image_session_unpacks_a_tar_with_sidecar_captions(world):
    from PIL import Image

    await world.alice.slash(world.channel, "session new", kind="image", title="Squares")
    thread = world.channel.threads[-1]
    buffer = io.BytesIO()
    Image.new("RGB", (128, 128), "red").save(buffer, "PNG")
    packed = tar_bytes({"red.png": buffer.getvalue(), "red.txt": b"a red square"})
    result = await world.alice.slash(thread, "data add", file=("squares.tar", packed),
                                     file2=("photo.txt", buffer.getvalue()))
    got, _ = upload_fields(result)
    assert "`red.png`" in got["Accepted"]
    assert got["Rejected"] == "`photo.txt`: this is a PNG image named .txt: rename it to .png and upload it again"
    listed = await world.alice.slash(thread, "data list")
    assert "“a red square”" in listed.response.embeds[0].description


# ---------------------------------------------------------------- 3. wording

async def test_wording_names_each_file_once_and_uses_a_and_an(world):
    thread = await text_session(world)
    result = await world.alice.slash(thread, "data add", file=("poem_scan.txt", b"caf\xe9 \xff broken"),
                                     file2=("cat.gif", b"GIF89a" + b"\x00" * 20),
                                     file3=("chat.jsonl", b'{"text": "fine"}\nnot json\n{"other": 1}\n'))
    got, _ = upload_fields(result)
    text = got["Rejected"]
    assert "`poem_scan.txt`: not UTF-8 text (first bad byte at offset 3, line 1)" in text
    assert "poem_scan.txt: not" not in text and "chat.jsonl line" not in text
    assert "`chat.jsonl`: 2 problems:\n- line 2: not valid JSON" in text and "- line 3: keys 'other'" in text
    assert "a text session" in text and "an text" not in text
    await world.alice.slash(world.channel, "session new", kind="image", title="Pics")
    image_thread = world.channel.threads[-1]
    result = await world.alice.slash(image_thread, "data add", file=("notes.md", b"# hello\n"),
                                     file2=("broken.png", b"\x89PNG\r\n\x1a\n garbage"))
    got, _ = upload_fields(result)
    assert got["Rejected"].splitlines() == [
        "`notes.md`: .md files are not accepted in an image session; upload .png, .jpg, .jpeg, .webp files "
        "(or a .zip of them)",
        "`broken.png`: corrupt image (Truncated File Read)"]  # one problem: no "1 problem(s)" list, no temp path


async def test_upload_advice_speaks_of_the_whole_dataset(world):
    thread = await text_session(world)
    await world.bob.slash(thread, "session join")
    first = await world.bob.slash(thread, "data add", file=("few.txt", text_bytes(5, word="poem")))
    got, _ = upload_fields(first)
    assert got["Next"].startswith("5 examples is enough to try")
    assert "Advice" not in got  # the count is said once, in Next
    second = await world.alice.slash(thread, "data add", file=("many.txt", text_bytes(30, start=100)))
    got, _ = upload_fields(second)
    assert got["Next"] == "35 examples: check them with `/data report`, then `/train start`."
    assert "Only" not in str(got) and "only 30" not in str(got)  # never the upload's own count as the dataset's
    third = await world.alice.slash(thread, "data add", file=("more.txt", text_bytes(3, start=100) + text_bytes(2, start=500)))
    got, _ = upload_fields(third)
    assert got["Next"].startswith("37 examples")  # 3 of its 5 were already in the dataset: counted once


async def test_an_invited_member_who_has_not_joined_is_told_to_join(world):
    thread = await text_session(world, visibility="private")
    await world.alice.slash(thread, "session settings", invite=world.bob)
    refused = await world.bob.slash(thread, "data add", file=("b.txt", text_bytes(5)))
    assert refused.ephemeral
    assert refused.response.content == ("You are invited to this session but have not joined it yet: "
                                        "run `/session join` here first.")
    await world.bob.slash(thread, "session join")
    added = await world.bob.slash(thread, "data add", file=("b.txt", text_bytes(5)))
    assert not added.ephemeral


# ---------------------------------------------------------------- 2. a job's messages agree with its state

async def test_progress_messages_follow_the_job_to_an_early_stop(world):
    thread = await text_session(world)
    started, job = await started_job(world, thread, steps=12)
    assert "Job #1 is queued (position 1 in the queue)" in started.response.content
    db = world.env.bot.services.db

    db.mark_job_running(job.id, worker="w", attempt=1)
    world.env.bot.dirty.add(job.id)
    await world.env.advance_time(1.5)
    message = progress_message(thread, started)
    assert "Job #1 is running" in message.content and "queued" not in message.content
    assert message.embeds[0].description == "Starting: loading the base model and the data…"
    assert "0/0" not in message.embeds[0].description and fields_of(message)["Status"] == "running"

    report(world, job.id, {"kind": "start", "step": 0, "total_steps": 12},
           {"kind": "step", "step": 1, "total_steps": 12, "loss": 2.0, "eta_s": 99.0})
    await world.env.advance_time(1.5)
    assert fields_of(progress_message(thread, started))["ETA"] == "1m 39s"  # while the steps run
    report(world, job.id, {"kind": "step", "step": 2, "total_steps": 12, "loss": 1.9, "eta_s": 80.0},
           {"kind": "eval", "step": 2, "total_steps": 12, "loss": 1.9, "val_loss": 1.5})
    await world.env.advance_time(1.5)
    message = progress_message(thread, started)
    # a validation loss between two steps leaves the last step's estimate standing
    assert fields_of(message)["Validation loss"] == "1.5000" and fields_of(message)["ETA"] == "1m 20s"
    report(world, job.id, {"kind": "eval", "step": 4, "total_steps": 12, "loss": 1.7, "val_loss": 1.6})
    await world.env.advance_time(1.5)
    message = progress_message(thread, started)
    assert message.embeds[0].description.endswith("step 4/12")

    report(world, job.id, {"kind": "stopped_early", "step": 4, "total_steps": 12, "val_loss": 1.6,
                           "message": "validation loss has not improved for 1 evaluations; keeping the adapter from step 2"},
           {"kind": "done", "step": 4, "total_steps": 12, "val_loss": 1.5})
    db.finish_job(job.id, "done", attempt=1, result={"metrics": {"stop_reason": "early_stopped", "best_step": 2,
                                                                 "steps_done": 4, "best_val_loss": 1.5}})
    await world.env.advance_time(1.5)
    message = progress_message(thread, started)
    assert message.content.endswith("✅ Job #1 finished: it stopped early at step 4 of 12 and kept the adapter of "
                                    "step 2, where the validation loss was lowest.")
    assert "queued" not in message.content and "running" not in message.content
    description = message.embeds[0].description
    assert description.startswith("`▰▰▰▰▰▰▰▰▰▰▰▰▰▰▰▰▰▰▰▰ 100%`  stopped early at step 4 of 12\n"
                                  "Kept the adapter of step 2 (validation loss 1.5000)")
    assert fields_of(message)["Status"] == "finished (stopped early)"
    assert thread.last_message.content.startswith("✅ Job #1 finished: it stopped early at step 4 of 12")


async def test_a_finished_job_is_never_shown_queued_and_a_failure_shows_no_host_path(world, storage_settings):
    thread = await text_session(world)
    started, job = await started_job(world, thread)
    db = world.env.bot.services.db
    db.mark_job_running(job.id, worker="w", attempt=1)
    report(world, job.id, {"kind": "step", "step": 3, "total_steps": 8, "loss": 2.0})
    run = storage_settings.data_dir / "runs" / "job-1"
    db.finish_job(job.id, "failed", attempt=1,
                  error=f"FileNotFoundError: [Errno 2] No such file or directory: '{run}/checkpoints/step-3/x.bin'")
    await world.env.advance_time(1.5)
    message = progress_message(thread, started)
    assert message.content.endswith("❌ Job #1 failed: FileNotFoundError: [Errno 2] No such file or directory: "
                                    "'x.bin'")
    assert message.embeds[0].description.endswith("step 3/8  · failed at step 3")
    assert str(storage_settings.data_dir) not in message.content + str(message.embeds[0].to_dict())
    assert str(storage_settings.data_dir) not in thread.last_message.content


# ---------------------------------------------------------------- 4. which job a command means

def finished_job(w, session_id: int, status: str, *, adapter: bool):
    services = w.env.bot.services
    db = services.db
    job = db.enqueue_job("train_text", {"base": "smollm2-135m"}, session_id=session_id, guild_id=w.guild.id,
                         user_id=w.alice.id)
    if status == "cancelled":
        db.finish_job(job.id, "cancelled", error="cancelled before it started")
        return job
    db.mark_job_running(job.id, worker="w", attempt=1)
    db.add_event(job.id, 1, 0, {"kind": "step", "step": 4, "total_steps": 4, "loss": 1.0})
    db.finish_job(job.id, status, attempt=1)
    if adapter:
        return job, db.add_adapter(job_id=job.id, session_id=session_id, base_model="smollm2-135m",
                                   blob_hash=services.blobs.put_tree(adapter))
    return job


async def test_status_and_export_without_a_job_pick_the_one_that_has_what_they_need(world, tmp_path):
    thread = await text_session(world)
    db = world.env.bot.services.db
    session = db.session_by_thread(thread.id)
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"r": 4}')
    finished_job(world, session.id, "done", adapter=folder)                    # #1: has an adapter
    finished_job(world, session.id, "cancelled", adapter=None)                 # #2: cancelled, empty

    status = await world.bob.slash(thread, "train status")
    assert status.response.content.startswith("Showing job #1, the newest finished with an adapter (#2 is cancelled)")
    assert status.response.embeds[0].title == "Training (text) · job #1"
    exported = await world.alice.slash(thread, "adapter export")
    message = exported.followups[0] if exported.followups else exported.response
    assert message.attachments[0].filename == "loracord-job-1-adapter.zip"
    assert "I took job #1, the newest with an adapter (#2 is cancelled)" in message.content

    running = db.enqueue_job("train_text", {}, session_id=session.id, guild_id=world.guild.id, user_id=world.bob.id)
    db.mark_job_running(running.id, worker="w", attempt=1)
    status = await world.bob.slash(thread, "train status")
    assert status.response.content.startswith(f"Showing job #{running.id}, the newest running job")
    named = await world.bob.slash(thread, "train status", job=2)
    assert not named.response.content.startswith("Showing") and "Job #2 was cancelled" in named.response.content


async def test_sample_without_an_adapter_says_what_is_going_on(world):
    thread = await text_session(world)
    await started_job(world, thread)
    refused = await world.alice.slash(thread, "sample", prompt="hello")
    assert refused.ephemeral
    assert refused.response.content == ("No trained adapter here yet: job #1 is queued: wait for it to finish "
                                        "(`/train status`).")


# ---------------------------------------------------------------- 5. privacy and safety

@pytest.fixture
def bot_config(tmp_path) -> BotSettings:
    # A base model given as a local folder on the host: members must see its name only.
    return BotSettings(_env_file=None, discord_token="", progress_edit_s=0, train_cooldown_s=0, pump_s=1.0,
                       allowed_models=[str(tmp_path / "host" / "models" / "tiny-llama"), "image:tiny/sd"],
                       train_threads=1)


async def test_a_local_base_model_is_shown_by_its_folder_name(world, tmp_path):
    host = str(tmp_path / "host")
    created = await world.alice.slash(world.channel, "session new", kind="text", title="Local")
    thread = world.channel.threads[-1]
    assert "on `tiny-llama`" in created.response.content if not created.followups else \
        "on `tiny-llama`" in created.followups[0].content
    by_name = await world.bob.slash(world.channel, "session new", kind="text", title="By name", base_model="tiny-llama")
    assert not by_name.ephemeral  # the name members see is a name they may use
    refused = await world.bob.slash(world.channel, "session new", kind="text", title="x", base_model="/etc/other")
    assert refused.ephemeral and refused.response.content == ("`other` is not one of this server's text models: "
                                                              "pick one of `tiny-llama`.")
    info = await world.alice.slash(thread, "session info")
    listed = await world.alice.slash(world.channel, "session list")
    limits = await world.mod.slash(world.channel, "server settings")
    assert fields_of(info.response)["Base model"] == "`tiny-llama`"
    for message in [*world.channel.history(), *thread.history(), info.response, listed.response, limits.response]:
        text = message.content + "".join(str(e.to_dict()) for e in message.embeds)
        assert host not in text and "/host/" not in text, text


async def test_posted_samples_are_cleaned_cut_and_ping_nobody(world):
    thread = await text_session(world)
    started, job = await started_job(world, thread)
    services = world.env.bot.services
    db = services.db
    db.mark_job_running(job.id, worker="w", attempt=1)
    nasty = ("Hi @everyone and @here, <@123456789012345678> <@&987654321098765432>\x00\x1b[31m red\x1b[0m\x07 "
             "```escape``` " + "word " * 600)
    db.add_sample(blob_hash=services.blobs.put_bytes(nasty.encode()), job_id=job.id, session_id=job.session_id,
                  kind="text", prompt="@everyone look", seed=0)
    world.env.bot.dirty.add(job.id)
    await world.env.advance_time(1.5)
    posted = next(m for m in thread.history() if m.content.startswith("**Sample #1**"))
    assert len(posted.content) <= MESSAGE_LIMIT
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", posted.content)
    assert "@everyone" not in posted.content and "@\u200beveryone" in posted.content
    assert "<@123456789012345678>" not in posted.content and "<@&987654321098765432>" not in posted.content
    assert posted.content.count("```") == 2  # the sample cannot close its code block early
    assert posted.content.endswith("word word…\n```")  # cut at a word, with an ellipsis
    stored = world.env.backend.messages[thread.id][posted.id]
    assert not stored.mention_everyone and stored.ping_user_ids == [] and stored.ping_role_ids == []
    policy = stored.allowed_mentions  # the bot asked Discord to ping nobody, whatever the text says
    assert not policy.everyone and policy.users == frozenset() and policy.roles == frozenset()


# ---------------------------------------------------------------- the cleaning functions themselves

async def test_clean_sample_cut_and_scrub_paths():
    assert clean_sample("a\x00b\x1b[1mc\x1b[0m\r\nd \u202eevil <@&5> @Here") == "abc\nd evil <@&\u200b5> @\u200bHere"
    assert cut("one two three four", 12) == "one two…"
    assert cut("x" * 30, 10) == "x" * 9 + "…"
    assert len(sample_message("**Sample #1**", "y " * 5000)) <= MESSAGE_LIMIT
    # the scores line under a sample stays whole however long the text: the text is cut instead
    scored = sample_message("**Sample #1**", "y " * 5000, "**Scores:** distinct word pairs 50%")
    assert len(scored) <= MESSAGE_LIMIT and scored.endswith("```\n**Scores:** distinct word pairs 50%")
    assert model_name("/srv/models/llama-3") == "llama-3" and model_name("org/model") == "org/model"
    assert model_name("image:/srv/sd/tiny") == "image:tiny"
    assert scrub_paths("kept in /tmp/abc/runs/job-1/checkpoints; see https://x.org/a/b and/or org/model") == \
        "kept in checkpoints; see https://x.org/a/b and/or org/model"


async def test_progress_messages_recorded_before_intros_keep_working(tmp_path):
    """bot.db files from before the progress message kept its intro gain the column, empty."""
    import sqlite3

    from bot.state import BotState

    old = sqlite3.connect(tmp_path / "bot.db")
    old.execute("create table progress (job_id integer primary key, channel_id integer, message_id integer, "
                "final integer default 0)")
    old.execute("insert into progress values (7, 1, 2, 0)")
    old.commit()
    old.close()
    state = BotState(tmp_path / "bot.db")
    assert state.progress(7).intro == "" and [p.job_id for p in state.open_progress()] == [7]
    state.set_progress(8, 1, 3, "Preset **quick**.")
    assert state.progress(8).intro == "Preset **quick**."
    state.close()
