"""Image datasets: captions from every source, each bad input gets its own clear error, augmentation."""

from __future__ import annotations

import zipfile

import pytest
import torch
from PIL import Image

from tests.image_fixtures import image_bytes, pattern_image, tiny_sd, write_image_folder, write_metadata  # noqa: F401
from trainer.errors import DataError
from trainer.image.augment import augment
from trainer.image.data import DataLimits, load_images, normalize, resize_and_crop, to_tensor

LIMITS = DataLimits(min_side=32)


def load(paths, **kw):
    return load_images([paths] if not isinstance(paths, list) else paths, instance_prompt="a photo of sks",
                       limits=kw.pop("limits", LIMITS), **kw)


def test_sidecar_captions_and_formats(tmp_path):
    data = load(write_image_folder(tmp_path / "d", count=6))
    assert data.report.images == 6
    assert data.report.caption_sources == {"sidecar": 6, "metadata": 0, "instance_prompt": 0}
    assert {ex.caption for ex in data.examples} == {f"a photo of sks pattern {i}" for i in range(3)}
    assert all(ex.image.mode == "RGB" for ex in data.examples)


def test_metadata_jsonl_and_missing_captions_filled(tmp_path):
    folder = write_image_folder(tmp_path / "d", count=4, captions=False)
    write_metadata(folder, [{"file_name": "img0.png", "text": "first"}, {"file_name": "img1.jpg", "text": "second"},
                            {"file_name": "gone.png", "text": "no such image"}])
    (folder / "img2.txt").write_text("from sidecar")
    data = load(folder)
    captions = {ex.name.split("/")[-1]: ex.caption for ex in data.examples}
    assert captions == {"img0.png": "first", "img1.jpg": "second", "img2.webp": "from sidecar",
                        "img3.png": "a photo of sks"}
    assert [n.split("/")[-1] for n in data.report.missing_captions] == ["img3.png"]
    assert data.report.unmatched_metadata[0].endswith("gone.png")


def test_no_captions_at_all_uses_instance_prompt_without_reporting_missing(tmp_path):
    data = load(write_image_folder(tmp_path / "d", count=3, captions=False))
    assert {ex.caption for ex in data.examples} == {"a photo of sks"}
    assert data.report.missing_captions == []


def test_zip_archive_with_captions_and_duplicates(tmp_path):
    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("pics/a.png", image_bytes(pattern_image(1)))
        z.writestr("pics/a.txt", "caption a")
        z.writestr("pics/b.jpg", image_bytes(pattern_image(2), "JPEG"))
        z.writestr("pics/copy.png", image_bytes(pattern_image(1)))
        z.writestr("__MACOSX/pics/._a.png", b"junk")
    data = load(archive)
    assert [ex.caption for ex in data.examples] == ["caption a", "a photo of sks"]
    assert data.report.duplicates == [{"dropped": f"{archive}:pics/copy.png", "same_as": f"{archive}:pics/a.png"}]
    assert data.report.ignored == [f"{archive}:__MACOSX/pics/._a.png"]


def test_exif_orientation_and_transparency(tmp_path):
    image = pattern_image(3, size=(60, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    (tmp_path / "rot.jpg").write_bytes(image_bytes(image, "JPEG", exif=exif.tobytes()))
    rgba = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    (tmp_path / "clear.png").write_bytes(image_bytes(rgba))
    data = load(tmp_path)
    by_name = {ex.name.split("/")[-1]: ex.image for ex in data.examples}
    assert by_name["rot.jpg"].size == (40, 60)
    assert by_name["clear.png"].getpixel((5, 5)) == (255, 255, 255)


@pytest.mark.parametrize("name, content, message", [
    ("notes.png", b"this is text, not a picture", "not an image"),
    ("cut.png", image_bytes(pattern_image(0))[:200], "corrupt image"),
    ("tiny.png", image_bytes(pattern_image(0, size=(20, 50))), "at least 32 px"),
    ("anim.gif", image_bytes(pattern_image(0), "GIF"), "GIF images are not supported"),
])
def test_bad_files_get_clear_errors(tmp_path, name, content, message):
    write_image_folder(tmp_path, count=2)
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        load(tmp_path)
    assert name in str(info.value)


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    Image.new("1", (12000, 12000)).save(tmp_path / "bomb.png")  # 144 MP, a few KB on disk
    with pytest.raises(DataError, match="pixel cap"):
        load(tmp_path, limits=DataLimits(min_side=32))


def test_zip_path_traversal_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("ok.png", image_bytes(pattern_image(0)))
        z.writestr("../../etc/evil.png", image_bytes(pattern_image(1)))
    with pytest.raises(DataError, match=r"unsafe path.*\.\./\.\./etc/evil\.png"):
        load(archive)


def test_zip_bomb_is_refused(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("zeros.png", b"\0" * (20 * 2**20))  # 20 MiB of zeros deflate to ~20 KiB
    with pytest.raises(DataError, match="zip bomb"):
        load(archive)
    with pytest.raises(DataError, match="archive limit"):
        load(archive, limits=DataLimits(min_side=32, max_archive_bytes=2**20))


def test_many_problems_are_reported_together(tmp_path):
    (tmp_path / "a.png").write_bytes(b"nope")
    (tmp_path / "b.jpg").write_bytes(b"nope either")
    with pytest.raises(DataError, match=r"2 problem\(s\)") as info:
        load(tmp_path)
    assert "a.png" in str(info.value) and "b.jpg" in str(info.value)


def test_empty_folder_and_missing_path(tmp_path):
    with pytest.raises(DataError, match="No images found"):
        load(tmp_path)
    with pytest.raises(DataError, match="no such file"):
        load(tmp_path / "missing")


def test_resize_and_crop_to_resolution():
    square, (top, left) = resize_and_crop(pattern_image(0, size=(90, 60)), 32)
    assert square.size == (32, 32) and top == 0 and left == (48 - 32) // 2
    batch = normalize(to_tensor([square]))
    assert batch.shape == (1, 3, 32, 32) and batch.min() >= -1 and batch.max() <= 1


def test_augmentation_changes_pixels_but_keeps_shape_and_range():
    batch = to_tensor([resize_and_crop(pattern_image(i), 32)[0] for i in range(4)])
    out = augment(batch.clone(), strength=1.0, generator_seed=0)
    assert out.shape == batch.shape and out.dtype == batch.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert (out - batch).abs().mean() > 0.02
    assert torch.equal(out, augment(batch.clone(), strength=1.0, generator_seed=0))  # seeded: reproducible
    assert torch.equal(augment(batch, strength=0.0), batch)
    weak = (augment(batch.clone(), strength=0.1, generator_seed=0) - batch).abs().mean()
    assert weak < (out - batch).abs().mean()


# ---- what a file is, by content and name (trainer.filetypes)

def _docx() -> bytes:
    import io

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("word/document.xml", "<w:document>poems</w:document>")
    return buffer.getvalue()


def _zip_of_images() -> bytes:
    import io

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for i in range(2):
            z.writestr(f"img{i}.png", image_bytes(pattern_image(i)))
    return buffer.getvalue()


@pytest.mark.parametrize("name, content, message", [
    ("poems.docx", _docx(), "this is a Word document (.docx), not an image"),
    ("photo.png", _zip_of_images(), "this is a zip archive, not a .png file: name it .zip"),
    ("notes.txt.png", _docx(), "Word document"),
])
def test_documents_and_disguised_archives_are_not_opened_as_archives(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match="problem") as info:
        load(path)
    assert message in str(info.value)
    assert "img0.png" not in str(info.value)  # the disguised zip's images were not read


def test_a_zip_named_zip_or_without_extension_is_unpacked(tmp_path):
    for name in ("set.zip", "set"):
        path = tmp_path / name
        path.write_bytes(_zip_of_images())
        assert load(path).report.images == 2


# ---- one minimum and one size rule for every entry (trainer.limits)

def test_training_needs_five_images_whatever_the_entry(tmp_path, tiny_sd):
    from trainer.image.config import ImageTrainConfig
    from trainer.image.data import training_limits
    from trainer.limits import MIN_EXAMPLES

    assert MIN_EXAMPLES["image"] == 5
    folder = write_image_folder(tmp_path / "three", count=3, size=(48, 40))
    config = ImageTrainConfig(data=[str(folder)], base=str(tiny_sd), out=str(tmp_path / "run"), resolution=32)
    with pytest.raises(DataError, match="3 usable image\\(s\\): training needs at least 5"):
        load_images([folder], instance_prompt="x", limits=training_limits(config))


def test_the_size_rule_reads_the_same_at_training_and_upload(tmp_path, tiny_sd):
    from trainer.image.config import ImageTrainConfig
    from trainer.image.data import training_limits
    from trainer.limits import image_size_problem, min_image_side

    folder = write_image_folder(tmp_path / "d", count=5, size=(48, 40))
    (folder / "small.png").write_bytes(image_bytes(pattern_image(9, size=(30, 20))))
    config = ImageTrainConfig(data=[str(folder)], base=str(tiny_sd), out=str(tmp_path / "run"), resolution=64)
    limits = training_limits(config)
    assert limits.min_side == min_image_side(64) == 32
    with pytest.raises(DataError) as info:
        load_images([folder], instance_prompt="x", limits=limits)
    rule = image_size_problem(30, 20, 32, 64)
    assert rule == ("30x20 px is too small to train at 64 px: its aspect bucket is 80x48 and an image may be "
                    "enlarged at most 2x; give at least 40x27 px at this shape")
    assert rule in str(info.value)


# ---- sizes per base family and device (trainer.image.sizes), read without torch

def _pipeline_configs(folder, cls, sample_size, prediction="epsilon"):
    import json

    for name, data in {"model_index.json": {"_class_name": cls},
                       "unet/config.json": {"sample_size": sample_size},
                       "vae/config.json": {"block_out_channels": [128, 256, 512, 512]},
                       "scheduler/scheduler_config.json": {"prediction_type": prediction}}.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(data))
    return folder


@pytest.mark.parametrize("cls, sample_size, prediction, native, cpu, gpu_batch, allowed", [
    ("StableDiffusionPipeline", 64, "epsilon", 512, 256, 2, (128, 1024)),
    ("StableDiffusionPipeline", 96, "v_prediction", 768, 256, 2, (192, 1536)),
    ("StableDiffusionXLPipeline", 128, "epsilon", 1024, 256, 1, (256, 2048)),
])
def test_each_family_has_its_size_on_each_device(tmp_path, cls, sample_size, prediction, native, cpu, gpu_batch,
                                                 allowed):
    from trainer.image.sizes import guess_family, resolution_problem, sizes_for

    family = guess_family(str(_pipeline_configs(tmp_path, cls, sample_size, prediction)))
    assert family.native == native
    assert sizes_for(family, "gpu", {}) == {"resolution": native, "batch_size": gpu_batch, "sample_steps": 25}
    assert sizes_for(family, "cpu", {}) == {"resolution": cpu, "batch_size": 1, "sample_steps": 8}
    assert sizes_for(family, "cpu", {"resolution": 384, "sample_steps": 3})["resolution"] == 384
    assert resolution_problem(family, allowed[0]) is None and resolution_problem(family, allowed[1]) is None
    problem = resolution_problem(family, allowed[1] + 8)
    assert f"choose a multiple of 8 from {allowed[0]} to {allowed[1]} px" in problem


def test_hub_names_give_a_family_without_fetching():
    from trainer.image.sizes import guess_family

    assert guess_family("stabilityai/stable-diffusion-xl-base-1.0").native == 1024
    assert guess_family("stabilityai/stable-diffusion-2-1").native == 768
    assert guess_family("stable-diffusion-v1-5/stable-diffusion-v1-5").native == 512


def test_the_trainer_sizes_a_run_nobody_sized_to_its_base_and_device(tmp_path, tiny_sd):
    from trainer.errors import ConfigError
    from trainer.image.config import ImageTrainConfig
    from trainer.image.presets import size_defaults

    config = ImageTrainConfig(data=["x"], base=str(tiny_sd), out=str(tmp_path))
    sized = size_defaults(config, 4)  # this machine has no GPU: the CPU defaults of a 32 px base
    assert (sized.resolution, sized.batch_size, sized.sample_steps) == (16, 1, 8)
    with pytest.raises(ConfigError, match="resolution 128 px does not suit .* from 8 to 64 px"):
        size_defaults(config.model_copy(update={"resolution": 128}), 4)
