"""/data through SimCord: uploads (good, corrupt, oversized, wrong type, zip, modal, plain attachments),
list, remove, the report card, and who may add what."""

from __future__ import annotations

import io
import zipfile

import pytest

from bot.report import first_run
from tests.bot_world import *  # noqa: F401,F403

pytestmark = pytest.mark.asyncio


async def session_thread(w, kind="text", visibility="public"):
    await w.alice.slash(w.channel, "session new", kind=kind, title=f"{kind} things", visibility=visibility)
    return w.channel.threads[-1]


def fields(result):
    message = result.followups[0] if result.followups else result.response
    return {f.name: f.value for f in message.embeds[0].fields}, message


async def test_a_good_text_file_is_accepted_and_attributed(world):
    thread = await session_thread(world)
    result = await world.alice.slash(thread, "data add", file=("fox.txt", text_bytes(12)))
    assert result.acknowledged and not result.ephemeral
    got, message = fields(result)
    assert message.content == f"{world.alice.mention}'s upload"
    assert message.embeds[0].title == "Dataset: 1 file(s) added, 0 rejected"
    assert "#1 `fox.txt` · 12 example(s)" in got["Accepted"]
    assert "enough to try" in got["Next"]
    listed = await world.alice.slash(thread, "data list")
    assert listed.ephemeral and f"`fox.txt` · 12 ex." in listed.response.embeds[0].description
    assert world.alice.mention in listed.response.embeds[0].description


async def test_corrupt_wrong_type_and_duplicate_files_are_rejected_with_reasons(world):
    thread = await session_thread(world)
    await world.alice.slash(thread, "data add", file=("fox.txt", text_bytes(6)))
    result = await world.alice.slash(thread, "data add", file=("bad.txt", b"caf\xe9 \xff\xfe broken"),
                                     file2=("cat.png", b"\x89PNG not really"), file3=("fox-again.txt", text_bytes(6)))
    got, message = fields(result)
    assert message.embeds[0].title == "Dataset: 0 file(s) added, 2 rejected"
    assert "`bad.txt`: not UTF-8 text (first bad byte at offset 3, line 1)" in got["Rejected"]  # named once
    assert "`cat.png`: this is a PNG image: a text session takes .txt, .md, .jsonl, .csv files" in got["Rejected"]
    assert "`fox-again.txt`" in got["Already in the dataset"]


async def test_images_are_checked_by_decoding_them(world):
    from PIL import Image

    thread = await session_thread(world, kind="image")
    buffer = io.BytesIO()
    Image.new("RGB", (160, 144), "red").save(buffer, "PNG")  # at least half the 256 px a CPU trains "tiny/sd" at
    result = await world.alice.slash(thread, "data add", file=("red.png", buffer.getvalue()),
                                     file2=("broken.png", b"\x89PNG\r\n\x1a\n garbage"), caption="a red square")
    got, message = fields(result)
    assert "#1 `red.png`" in got["Accepted"]
    assert "`broken.png`:" in got["Rejected"]
    listed = await world.alice.slash(thread, "data list")
    assert "“a red square”" in listed.response.embeds[0].description


async def test_a_zip_becomes_one_item_per_member_and_unsafe_zips_are_refused(world):
    thread = await session_thread(world)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.txt", text_bytes(5))
        archive.writestr("b.md", text_bytes(5, start=5))
        archive.writestr("notes.pdf", b"%PDF")
        archive.writestr("__MACOSX/._a.txt", b"junk")
    result = await world.alice.slash(thread, "data add", file=("stories.zip", buffer.getvalue()))
    got, _ = fields(result)
    assert "`a.txt` · 5 example(s)" in got["Accepted"] and "`b.md` · 5 example(s)" in got["Accepted"]
    assert "`stories.zip/notes.pdf`: .pdf files are not accepted in a text session" in got["Rejected"]

    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("../../etc/x.txt", b"hello there\n")
    result = await world.alice.slash(thread, "data add", file=("evil.zip", evil.getvalue()))
    got, _ = fields(result)
    assert "names a path outside itself" in got["Rejected"]


async def test_oversized_files_are_rejected_before_download(world):
    thread = await session_thread(world)
    await world.mod.slash(world.channel, "server settings", max_file_mb=0.01)
    result = await world.alice.slash(thread, "data add", file=("big.txt", text_bytes(200)), file2=("ok.txt", text_bytes(5)))
    got, _ = fields(result)
    assert "`big.txt`: 0.0 MiB is over the 0.01 MiB limit per file" in got["Rejected"]
    assert "`ok.txt`" in got["Accepted"]


async def test_the_servers_dataset_limit_is_a_refusal(world):
    thread = await session_thread(world)
    await world.mod.slash(world.channel, "server settings", max_dataset_items=1)
    await world.alice.slash(thread, "data add", file=("a.txt", text_bytes(5)))
    result = await world.alice.slash(thread, "data add", file=("b.txt", text_bytes(5, start=9)))
    assert result.ephemeral and "this server's limit is 1" in result.response.content


async def test_no_files_opens_the_upload_modal(world):
    thread = await session_thread(world)
    shown = await world.alice.slash(thread, "data add")
    assert shown.modal is not None
    submitted = await world.alice.submit_modal(shown, {"files": [("one.txt", text_bytes(5)), ("two.txt", text_bytes(5, start=5))]})
    got, message = fields(submitted)
    assert message.embeds[0].title == "Dataset: 2 file(s) added, 0 rejected"


async def test_plain_attachments_in_the_thread_are_added(world):
    thread = await session_thread(world)
    await world.alice.send(thread, "here are mine", attachments=[("mine.txt", text_bytes(7))])
    reply = thread.last_message
    assert reply.embeds[0].title == "Dataset: 1 file(s) added, 0 rejected"
    await world.bob.send(thread, "mine too", attachments=[("bob.txt", text_bytes(7, start=20))])
    assert "I did not add these files" in thread.last_message.content
    assert "/session join" in thread.last_message.content


async def test_only_contributors_add_and_only_uploader_owner_or_manager_remove(world):
    thread = await session_thread(world)
    refused = await world.bob.slash(thread, "data add", file=("b.txt", text_bytes(5)))
    assert refused.ephemeral and "/session join" in refused.response.content
    await world.bob.slash(thread, "session join")
    await world.bob.slash(thread, "data add", file=("b.txt", text_bytes(5)))
    await world.carol.slash(thread, "session join")
    carol = await world.carol.slash(thread, "data remove", item=1)
    assert carol.ephemeral and f"uploaded by {world.bob.mention}" in carol.response.content
    missing = await world.bob.slash(thread, "data remove", item=99)
    assert missing.ephemeral and "no item #99" in missing.response.content
    owner = await world.alice.slash(thread, "data remove", item=1)
    assert "Removed #1 `b.txt`" in owner.response.content


async def test_report_card_says_whether_the_picked_preset_keeps_augmentation(world):
    """The card speaks of the run `/train start` would make: with 30 examples of prose it picks
    balanced, which leaves augmentation and dropout off; with 120 it picks best, which keeps them."""
    thread = await session_thread(world)
    await world.alice.slash(thread, "data add", file=("a.txt", text_bytes(30)))
    card = (await world.alice.slash(thread, "data report")).response.embeds[0].description
    assert "**Off by default for prose:** augmentation and LoRA dropout: at 32 examples, " in card
    await world.env.advance_time(60)
    await world.alice.slash(thread, "data add", file=("b.txt", text_bytes(90, start=30)))
    result = await world.alice.slash(thread, "data report")
    got, message = fields(result)
    assert "Preset I would pick: best" in got
    assert "Off by default" not in message.embeds[0].description
    assert ("**Augmentation for prose:** random windows of long texts; sentence-order shuffle; word dropout"
            in message.embeds[0].description)


async def test_report_card_grades_and_picks_a_preset(world):
    thread = await session_thread(world)
    empty = await world.alice.slash(thread, "data report")
    assert "Add 5+ examples" in fields(empty)[0]["Advice"]
    await world.bob.slash(thread, "session join")
    await world.alice.slash(thread, "data add", file=("a.txt", text_bytes(10)))
    await world.bob.slash(thread, "data add", file=("b.txt", text_bytes(4, start=8)))  # 2 duplicates of a.txt
    result = await world.alice.slash(thread, "data report")
    got, message = fields(result)
    embed = message.embeds[0]
    assert "**Grade:** enough to try (12 examples; 5 needed, 20+ works well)" in embed.description
    assert "**Duplicates dropped:** 2" in embed.description
    assert "**Contributions:**" in embed.description
    # Which augmentations the trainer will use for this kind of text, and why (trainer.text.kinds).
    assert "**Kind of text:** prose (detected: no sign of code, turns or verse: lines average" in embed.description
    # 12 examples (11 after the validation split): under the size from which prose trains without them
    assert ("**Augmentation for prose:** random windows of long texts; sentence-order shuffle; word dropout"
            in embed.description)
    assert "Off by default" not in embed.description
    assert "**Noisy embeddings (NEFTune):** off" in embed.description
    assert got["Advice"] == "• Only 12 examples in the whole dataset: 20+ give steadier results; 8 more would help."
    assert got["Preset I would pick: quick"].startswith("Because with 12 examples, a quick run")
    # the first step the README and the playground's console give too (on a GPU: the preset's run)
    assert got["Next"] == first_run("quick", world.env.bot.config.expected_device())


async def test_the_first_run_is_ten_steps_on_a_cpu_and_the_presets_run_on_a_gpu():
    cpu, gpu = first_run("quick", "cpu"), first_run("balanced", "gpu")
    assert cpu.startswith("`/train start steps:10`: a first run of a few minutes") and "**quick** preset" in cpu
    assert gpu == "`/train start`: the **balanced** preset above"
