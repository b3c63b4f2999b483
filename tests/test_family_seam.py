"""Image families are parts: outside ``trainer/image/families/`` no code compares family names,
reaches for a pipeline's UNet or builds a noise scheduler; it asks the family module instead."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from trainer.image import families

from tests.family_fixtures import tiny_flux_schnell, tiny_sd3  # noqa: F401 - fixtures

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("trainer", "bot", "storage", "loracord")
FAMILIES = ROOT / "trainer" / "image" / "families"
# What only a family module may say: the UNet attribute, SD/SDXL names as strings compared or
# written, and the DDPM schedule.
FORBIDDEN = {
    "a pipeline's UNet": re.compile(r"\.unet\b"),
    "the SDXL family's name": re.compile(r"""["']sdxl["']"""),
    "a comparison with the SD family's name": re.compile(r"""[=!]=\s*["']sd["']"""),
    "the DDPM noise schedule": re.compile(r"\bDDPMScheduler\b"),
    "a family compared by name": re.compile(r"\bfamily\s*[=!]=|[=!]=\s*\w*\.?family\b"),
}


def sources() -> list[Path]:
    return [p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))
            if FAMILIES not in p.parents]


@pytest.mark.parametrize("what", list(FORBIDDEN))
def test_only_family_modules_know_families(what):
    pattern = FORBIDDEN[what]
    found = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}" for p in sources()
             for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not found, f"{what} outside trainer/image/families/:\n" + "\n".join(found)


def test_the_seam_check_sees_the_code():
    assert len(sources()) > 50 and not any(FAMILIES in p.parents for p in sources())


@pytest.mark.parametrize("cls", ["StableVideoDiffusionPipeline", "StableDiffusionInpaintPipeline",
                                 "StableDiffusionControlNetPipeline", ""])
def test_other_pipeline_classes_are_refused_naming_the_trained_families(cls):
    from trainer.errors import ModelError
    from trainer.image import families

    with pytest.raises(ModelError) as refused:
        families.family_for(cls, "the base")
    assert f"the base holds a {cls or 'unknown'} pipeline" in str(refused.value)
    for part in families.TRAINED:
        assert part.label() in str(refused.value) and part.PIPELINE_CLASSES[0] in str(refused.value)


def test_each_class_has_one_family():
    from trainer.image import families

    classes = [c for part in families.FAMILIES for c in part.PIPELINE_CLASSES]
    assert len(classes) == len(set(classes))
    assert [families.find(c) for c in classes] == [p for p in families.FAMILIES for _ in p.PIPELINE_CLASSES]
    assert [families.named(part.NAME) for part in families.FAMILIES] == list(families.FAMILIES)
    assert all(families.family_for(c) in families.TRAINED
               for part in families.TRAINED for c in part.PIPELINE_CLASSES)


@pytest.mark.parametrize("fixture, label", [("tiny_flux_schnell", "FLUX.1"), ("tiny_sd3", "SD 3.5")])
def test_flow_families_are_sized_and_trained(request, fixture, label, monkeypatch):
    from trainer.errors import ModelError
    from trainer.image.pipelines import pipeline_family
    from trainer.image.sizes import read_family, resolution_problem, resolve_sizes

    folder = request.getfixturevalue(fixture)
    family = read_family(folder)
    assert family.label == label and family.native == family.part.native_size(folder)
    sizes = resolve_sizes(family, "gpu", {})
    assert (sizes.resolution, sizes.batch_size) == (family.native, 1) and sizes.step_s > 0
    assert "multiple of 16" in resolution_problem(family, family.min_resolution + 8)
    assert pipeline_family(folder) is family.part
    # A family registered for sizes but not yet trained (how a new one starts) is refused by name.
    monkeypatch.setattr(families, "TRAINED", tuple(p for p in families.TRAINED if p is not family.part))
    with pytest.raises(ModelError, match=f"is a {label} base .* does not train yet; it trains SD 1.x/2.x"):
        pipeline_family(folder)


def test_refusals_name_every_trained_family():
    assert families.trained() == ("SD 1.x/2.x (StableDiffusionPipeline), SDXL (StableDiffusionXLPipeline), "
                                  "FLUX.1 (FluxPipeline) and SD 3.5 (StableDiffusion3Pipeline)")


@pytest.mark.parametrize("name, label, native", [
    ("black-forest-labs/FLUX.1-schnell", "FLUX.1", 1024), ("black-forest-labs/FLUX.1-dev", "FLUX.1", 1024),
    ("stabilityai/stable-diffusion-3.5-large", "SD 3.5", 1024), ("stabilityai/stable-diffusion-3.5-medium", "SD 3.5", 1024),
])
def test_hub_names_of_flow_families_give_their_sizes(name, label, native):
    from trainer.image.sizes import guess_family

    family = guess_family(name)
    assert (family.label, family.native) == (label, native)
