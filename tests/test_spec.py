"""The run spec (trainer.spec) and the data limits (trainer.limits): one form from the edge to
the trainer, one error listing every problem, stored job rows of before still read, a dataset
manifest materialized with its captions, and a search that varies what nobody chose."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from tests.image_fixtures import image_bytes, pattern_image
from trainer import limits
from trainer.errors import ConfigError
from trainer.image.config import ImageTrainConfig
from trainer.image.data import DataLimits, load_images
from trainer.image.presets import size_defaults as size_image
from trainer.presets import preset_overrides
from trainer.spec import DatasetManifest, RunSpec
from trainer.tune import SEARCHED, Probe, _space

HASH = "ab" * 32


def test_a_spec_is_built_once_and_read_back_as_is():
    spec = RunSpec.build(kind="image", base="pipe", preset="quick", seed=4, data=["imgs"],
                         settings={"lr": 2e-4, "resolution": 64, "rank": None})
    stored = json.loads(json.dumps(spec.to_job()))  # what the job row and the queue carry
    assert stored == {"spec": 1, "kind": "image", "base": "pipe", "preset": "quick", "seed": 4,
                      "settings": {"lr": 2e-4, "resolution": 64}, "data": ["imgs"]}
    again = RunSpec.from_job("train_image", stored)
    assert again == spec and again.job_kind == "train_image"
    config = again.train_config("run")
    assert isinstance(config, ImageTrainConfig)
    assert (config.out, config.preset, config.seed, config.lr, config.resolution) == ("run", "quick", 4, 2e-4, 64)
    assert config.rank is None and config.steps is None  # left to the preset, sized by the trainer


def test_every_problem_is_listed_in_one_error():
    with pytest.raises(ConfigError) as info:
        RunSpec.build(kind="image", data=["x"], settings={"lr": 5, "resolution": 30, "seed": 1, "bogus": 2},
                      tune={"trials": 0})
    message = str(info.value)
    assert message.startswith("invalid training settings: ")
    for part in ("image runs need a base pipeline", "seed is not a trainer setting", "lr: Input should be less",
                 "resolution 30 is not a multiple of 8", "bogus: Extra inputs", "tune.trials"):
        assert part in message, part
    with pytest.raises(ConfigError, match="'rank' is both fixed in settings and in the grid"):
        RunSpec.build(kind="text", data=["x"], settings={"rank": 4}, tune={"grid": {"rank": [4, 8]}})
    with pytest.raises(ConfigError, match="give the data to train on"):
        RunSpec.build(kind="text")


@pytest.mark.parametrize("job_kind, row, expect", [
    # what the bot stored before the spec existed (flat trainer arguments, data by blob hash)
    ("train_text", {"data": ["/bot/1-fox.txt"], "data_blobs": [[HASH, "fox.txt"]], "base": "smollm2-135m",
                    "preset": "quick", "steps": 4, "seed": 3, "threads": 1, "lr": None},
     {"kind": "text", "preset": "quick", "seed": 3, "settings": {"steps": 4, "threads": 1}, "data": [],
      "blobs": [HASH]}),
    ("train_image", {"data": ["/bot/a.png"], "data_blobs": [[HASH, "a.png"]], "base": "pipe", "steps": 200,
                     "rank": 8, "alpha": 8.0, "lr": 1e-4, "lora_dropout": 0.0, "augment": 0.5, "seed": 0},
     {"kind": "image", "preset": None, "seed": 0, "data": [], "blobs": [HASH],
      "settings": {"steps": 200, "rank": 8, "alpha": 8.0, "lr": 1e-4, "lora_dropout": 0.0, "augment": 0.5}}),
    ("tune", {"kind": "text", "data": ["a.txt"], "base": "m", "trials": 3, "preset": "quick",
              "settings": {"steps": 6, "seed": 0, "seq_len": 64}},
     {"kind": "text", "preset": "quick", "seed": 0, "settings": {"steps": 6, "seq_len": 64}, "data": ["a.txt"],
      "blobs": None}),
])
def test_job_rows_from_before_the_spec_still_load(job_kind, row, expect):
    spec = RunSpec.from_job(job_kind, row)
    blobs = [i.blob for i in spec.dataset.items] if spec.dataset else None
    got = {"kind": spec.kind, "preset": spec.preset, "seed": spec.seed, "settings": spec.settings,
           "data": spec.data, "blobs": blobs}
    assert got == expect
    assert spec.job_kind == job_kind
    if job_kind == "tune":
        assert spec.tune.trials == 3


def test_a_stored_job_that_does_not_read_fails_with_a_message():
    with pytest.raises(ConfigError, match="this job's stored settings do not read: wat: Extra inputs"):
        RunSpec.from_job("train_text", {"data": ["x.txt"], "wat": 1})
    with pytest.raises(ConfigError, match="stored settings do not read: kind"):
        RunSpec.from_job("train_text", {"spec": 1, "kind": "audio", "data": ["x"]})
    with pytest.raises(ConfigError, match="a train_text job holds the settings of a train_image job"):
        RunSpec.from_job("train_text", {"spec": 1, "kind": "image", "base": "b", "data": ["x"]})


def fake_store(tmp_path: Path, files: dict[str, bytes]):
    """A stand-in for the blob store's ``get_file``: these tests need only its copy."""
    fetched = []

    def fetch(digest: str, path: Path) -> None:
        fetched.append(digest)
        path.write_bytes(files[digest])

    return fetch, fetched


def test_an_image_manifest_materializes_once_with_its_captions(tmp_path):
    files = {c * 64: image_bytes(pattern_image(i)) for i, c in enumerate("abcd")}
    manifest = DatasetManifest(items=[
        {"blob": "a" * 64, "filename": "cat.png", "caption": "a photo of sks cat", "uploader": 7},
        {"blob": "b" * 64, "filename": "cat.png", "caption": "  sks cat asleep ", "uploader": 8},  # same name
        {"blob": "c" * 64, "filename": "../dog.png", "uploader": 7},  # no caption: the instance prompt
        {"blob": "d" * 64, "filename": "bird.png", "caption": "sks bird"},
    ])
    fetch, fetched = fake_store(tmp_path, files)
    paths = manifest.materialize("image", tmp_path / "data", fetch)
    assert [Path(p).name for p in paths] == ["0000-cat.png", "0001-cat.png", "0002-dog.png", "0003-bird.png",
                                            "metadata.jsonl"]
    rows = [json.loads(line) for line in (tmp_path / "data" / "metadata.jsonl").read_text().splitlines()]
    assert rows == [{"file_name": "0000-cat.png", "text": "a photo of sks cat"},
                    {"file_name": "0001-cat.png", "text": "sks cat asleep"},
                    {"file_name": "0003-bird.png", "text": "sks bird"}]
    dataset = load_images(paths, instance_prompt="a photo of sks", limits=DataLimits(min_side=16, min_images=4))
    assert [e.caption for e in dataset.examples] == ["a photo of sks cat", "sks cat asleep", "a photo of sks",
                                                     "sks bird"]
    assert dataset.report.caption_sources == {"sidecar": 0, "metadata": 3, "instance_prompt": 1}
    assert sorted(dataset.report.captions.values()) == sorted(e.caption for e in dataset.examples)
    # a second attempt of the job finds the files there and fetches nothing again
    assert manifest.materialize("image", tmp_path / "data", fetch) == paths and len(fetched) == 4


def test_a_text_manifest_writes_no_captions_file(tmp_path):
    fetch, _ = fake_store(tmp_path, {HASH: b"one\n\ntwo\n"})
    manifest = DatasetManifest(items=[{"blob": HASH, "filename": "a.txt", "caption": "ignored for text"}])
    assert [Path(p).name for p in manifest.materialize("text", tmp_path / "d", fetch)] == ["0000-a.txt"]
    assert not (tmp_path / "d" / "metadata.jsonl").exists()


@pytest.mark.parametrize("n", [3, 12, 40])
def test_image_presets_are_sized_in_the_trainer_and_what_was_set_wins(n):
    config = ImageTrainConfig(data=["x"], out="o", base="b", preset="quick")
    filled = size_image(config, n)
    quick = preset_overrides("image", "quick", n)
    assert {k: getattr(filled, k) for k in ("steps", "rank", "lr", "lora_dropout", "augment")} == \
        {k: quick[k] for k in ("steps", "rank", "lr", "lora_dropout", "augment")}
    assert filled.lora_alpha == float(quick["rank"]) and filled.eval_every == max(1, quick["steps"] // 8)
    mine = size_image(config.model_copy(update={"lr": 3e-3, "augment": 0.0, "steps": 7}), n)
    assert (mine.lr, mine.augment, mine.steps) == (3e-3, 0.0, 7)
    balanced = size_image(config.model_copy(update={"preset": None}), n)
    assert balanced.steps == preset_overrides("image", "balanced", n)["steps"]


def test_a_search_varies_exactly_what_nobody_chose():
    # The settings the bot stores for an image `/train tune steps:5` on a server with defaults.
    spec = RunSpec.build(kind="image", base="pipe", preset="quick", data=["x"],
                         settings={"steps": 5, "resolution": 32, "threads": 1}, tune={"trials": 2})
    probe = Probe(8, {"steps": 5, "rank": 4, "lr": 2e-4, "lora_dropout": 0.0, "augment": 0.3}, 1)
    assert set(_space(probe, spec.settings, None)) == set(SEARCHED) - {"steps"}
    assert set(_space(probe, {**spec.settings, "lr": 1e-4, "rank": None}, None)) == {"rank", "lora_dropout", "augment"}


def test_limits_are_one_place_and_the_bot_never_imports_torch():
    assert DataLimits().max_file_bytes == limits.MAX_FILE_BYTES
    assert DataLimits().max_archive_bytes == limits.MAX_ARCHIVE_BYTES
    from bot.config import BotSettings
    from bot.report import TARGETS
    from trainer.filetypes import MAX_ARCHIVE_BYTES, MAX_ARCHIVE_MEMBERS
    from trainer.text.data import MIN_EXAMPLES, TextLimits

    assert TextLimits().max_file_bytes == limits.MAX_FILE_BYTES == BotSettings(_env_file=None).max_file_mb * 2**20
    assert (MAX_ARCHIVE_BYTES, MAX_ARCHIVE_MEMBERS) == (limits.MAX_ARCHIVE_BYTES, limits.MAX_ARCHIVE_MEMBERS)
    assert MIN_EXAMPLES == limits.MIN_EXAMPLES["text"]
    assert {k: v[0] for k, v in TARGETS.items()} == limits.MIN_EXAMPLES
    for module in ("trainer/limits.py", "trainer/spec.py", "trainer/config.py", "trainer/presets.py"):
        tree = ast.parse((Path(__file__).parents[1] / module).read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names} | \
                   {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not {m for m in imported if m.split(".")[0] in ("torch", "PIL", "diffusers", "transformers")}, module


def test_upload_checks_read_captions_from_descriptions_sidecars_and_metadata(tmp_path):
    import io
    import zipfile

    from bot.ingest import check_uploads
    from storage.blobs import BlobStore

    def png(seed):
        return image_bytes(pattern_image(seed, size=(72, 64)))

    def archive(files: dict[str, bytes | str]) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as z:
            for name, content in files.items():
                z.writestr(name, content)
        return buffer.getvalue()

    good = archive({"a.png": png(0), "a.txt": "sidecar wins", "b.png": png(1), "c.png": png(2),
                    "metadata.jsonl": '{"file_name": "a.png", "text": "metadata loses"}\n'
                                      '{"file_name": "b.png", "caption": "from metadata"}\n'})
    bad = archive({"d.png": png(3), "metadata.jsonl": "not json\n"})
    result = check_uploads("image", [("set.zip", good), ("alone.png", png(4), " alt text "), ("e.png", png(5)),
                                     ("bad.zip", bad)], BlobStore(tmp_path / "blobs"), caption="upload caption")
    assert {c.filename: c.caption for c in result.accepted} == {
        "a.png": "sidecar wins", "b.png": "from metadata", "c.png": "upload caption", "alone.png": "alt text",
        "e.png": "upload caption", "d.png": "upload caption"}
    assert [(r.filename, r.reason) for r in result.rejected] == [
        ("bad.zip/metadata.jsonl", "line 1: expected a JSON object with 'file_name' and 'text'")]
