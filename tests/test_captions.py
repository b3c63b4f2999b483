"""Automatic captions: the rules (trigger word first, cut to the text encoder), a tiny BLIP model
built locally captioning images through the captioner, a real worker's ``caption`` job and
``loracord caption``, and what happens without the model (offline)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from storage.blobs import BlobStore
from storage.settings import Settings
from storage.testing import tick_until
from tests.caption_fixtures import WORDS, tiny_captioner  # noqa: F401
from tests.image_fixtures import image_bytes, pattern_image
from tests.queue_world import queue, worker  # noqa: F401  (fixtures)
from trainer.captions import caption_tokens, fit_caption, has_trigger, metadata_sources, trigger_word, with_trigger


# ---- the rules, without a model

@pytest.mark.parametrize("caption, want", [
    ("a cat on grass", "sks, a cat on grass"),
    ("sks, a cat on grass", "sks, a cat on grass"),
    ("SKS a cat", "sks, a cat"),
    ("sksy cat", "sks, sksy cat"),  # a longer word is not the trigger
    ("", "sks"),
])
def test_the_trigger_word_goes_first_once(caption, want):
    assert with_trigger(caption, "sks") == want


def test_trigger_word_of_an_instance_prompt_and_finding_it():
    assert trigger_word("a photo of sks") == "sks"
    assert has_trigger("a photo of sks, smiling", "sks") and not has_trigger("a photo of sksy", "sks")


def test_a_caption_longer_than_the_encoder_is_cut_at_a_word():
    long = ", ".join(f"word{i}" for i in range(100))  # 'word', digits and commas: ~300 pieces
    cut, was_cut = fit_caption(long, 77)
    assert was_cut and long.startswith(cut) and caption_tokens(cut) <= 77 < caption_tokens(long)
    assert not cut.endswith(",")
    assert fit_caption("sks, a red cat", 77) == ("sks, a red cat", False)


def test_metadata_rows_the_bot_wrote_say_their_source():
    text = '{"file_name": "a.png", "text": "x", "source": "model"}\n{"file_name": "b.png", "text": "y"}\n'
    assert metadata_sources(text, "d") == {"d/a.png": "model"}


# ---- a tiny captioning model

def test_a_tiny_model_captions_images_trigger_first_and_cut(tiny_captioner):
    from trainer.image.captioner import caption_images, load_captioner

    captioner = load_captioner(str(tiny_captioner))
    assert type(captioner.model).__name__ == "BlipForConditionalGeneration"  # transformers' own class, no remote code
    images = [pattern_image(i, size=(40 + 8 * i, 30)) for i in range(5)]  # more than a batch, odd shapes
    captions = caption_images(captioner, images, trigger="sks", max_tokens=8)
    assert len(captions) == 5
    for caption in captions:
        assert caption.startswith("sks, ") and caption_tokens(caption) <= 8
        assert set(caption.replace(",", " ").split()) - {"sks"} <= set(WORDS)  # its own words, no special tokens
        assert "[" not in caption


def test_a_model_not_on_the_machine_is_unavailable(tmp_path, monkeypatch):
    from trainer.image.captioner import CaptionerUnavailable, load_captioner

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(CaptionerUnavailable, match="not on this machine"):
        load_captioner("someone/no-such-captioner")


# ---- the caption job on a real worker

@pytest.fixture
def settings(tmp_path):
    return Settings(data_dir=tmp_path / "data", heartbeat_s=0.2, heartbeat_timeout_s=30, cancel_grace_s=0.5,
                    kill_grace_s=0.5, poll_s=0.05, max_jobs_per_user=1, max_jobs_per_guild=2)


def _items(settings, count=3):
    blobs = BlobStore(settings.blob_url or settings.data_dir / "blobs")
    return [{"id": 10 + i, "blob": blobs.put_bytes(image_bytes(pattern_image(i, size=(48, 36 + 4 * i)))),
             "filename": f"img{i}.png"} for i in range(count)]


def test_a_worker_captions_a_jobs_images(queue, worker, settings, tiny_captioner):
    job = queue.submit("caption", {"model": str(tiny_captioner), "trigger": "sks", "max_tokens": 77,
                                   "items": _items(settings)})
    tick_until(queue, lambda: queue.db.get_job(job.id).finished, timeout=240, what="the caption job")
    done = queue.db.get_job(job.id)
    assert done.status == "done", done.error
    answer = done.result["captions"]
    assert answer["model"] == str(tiny_captioner) and "unavailable" not in answer
    assert [row["item"] for row in answer["captions"]] == [10, 11, 12]
    assert all(row["caption"].startswith("sks, ") for row in answer["captions"])


def test_a_worker_without_the_model_says_so_and_captions_nothing(queue, worker, settings):
    job = queue.submit("caption", {"model": "someone/no-such-captioner", "trigger": "sks", "items": _items(settings, 1)})
    tick_until(queue, lambda: queue.db.get_job(job.id).finished, timeout=240, what="the caption job")
    done = queue.db.get_job(job.id)
    assert done.status == "done", done.error
    assert done.result["captions"]["captions"] == []
    assert "someone/no-such-captioner is not on this machine" in done.result["captions"]["unavailable"]


# ---- loracord caption DATA

def test_the_cli_writes_sidecars_for_images_without_one(tmp_path, tiny_captioner):
    from loracord.cli import app

    for i in range(3):
        (tmp_path / f"img{i}.png").write_bytes(image_bytes(pattern_image(i)))
    (tmp_path / "img0.txt").write_text("sks, my own words\n")
    result = CliRunner().invoke(app, ["caption", str(tmp_path), "--model", str(tiny_captioner), "--trigger", "sks"])
    assert result.exit_code == 0, result.output
    assert "2 caption(s) written" in result.output
    assert (tmp_path / "img0.txt").read_text() == "sks, my own words\n"  # kept
    for i in (1, 2):
        assert (tmp_path / f"img{i}.txt").read_text().startswith("sks, ")


def test_the_cli_says_what_to_do_without_the_model(tmp_path, monkeypatch):
    from loracord.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    (tmp_path / "img0.png").write_bytes(image_bytes(pattern_image(0)))
    monkeypatch.setattr("sys.argv", ["loracord", "caption", str(tmp_path), "--model", "someone/no-such-captioner"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert not (tmp_path / "img0.txt").exists()


def test_the_default_family_florence2_captions_with_its_task_prompt(tmp_path):
    """Florence-2 (the default model's family) through the same path, on a tiny one built here."""
    from tests.caption_fixtures import build_florence2
    from trainer.image.captioner import FLORENCE_TASK, _inputs, caption_images, load_captioner

    captioner = load_captioner(str(build_florence2(tmp_path / "tiny-florence")))
    assert type(captioner.model).__name__ == "Florence2ForConditionalGeneration" and captioner.model_type == "florence2"
    images = [pattern_image(0, size=(80, 60)), pattern_image(1, size=(60, 80))]
    asked = captioner.processor.batch_decode(_inputs(captioner, images)["input_ids"], skip_special_tokens=True)
    assert all("Describe in detail what is shown in the image." in text for text in asked)  # FLORENCE_TASK's prompt
    assert FLORENCE_TASK == "<DETAILED_CAPTION>"
    captions = caption_images(captioner, images, trigger="sks", max_tokens=20)
    assert len(captions) == 2 and all(c.startswith("sks") and caption_tokens(c) <= 20 for c in captions)
