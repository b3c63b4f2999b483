"""Precision: what ``auto`` picks, forced each way, and runs of different precisions in one process.

CI runs the whole suite with ``LORACORD_CPU_BF16=0`` and again with ``=1``, so the bf16 path
runs even on a CPU without native bf16; these tests force both paths inside one process.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.image_fixtures import RESOLUTION, image_folder, tiny_sd  # noqa: F401
from trainer.errors import ConfigError
from trainer.image.config import ImageTrainConfig
from trainer.image.train import train_image
from trainer.precision import CPU_BF16_ENV, cpu_has_fast_bf16, pick_precision
from trainer.text.config import TextTrainConfig
from trainer.text.train import train_text

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="auto picks from the GPU there, not the CPU flags")


@no_gpu
@pytest.mark.parametrize(("forced", "picked"), [("1", "bf16"), ("0", "fp32"), ("true", "bf16"), ("off", "fp32")])
def test_auto_follows_the_forced_cpu_flag(monkeypatch, forced, picked):
    monkeypatch.setenv(CPU_BF16_ENV, forced)
    assert pick_precision("auto") == picked
    assert pick_precision("fp32") == "fp32" and pick_precision("bf16") == "bf16"


def test_unforced_reads_the_cpu_flags(monkeypatch):
    monkeypatch.delenv(CPU_BF16_ENV, raising=False)
    flags = open("/proc/cpuinfo").read().split()
    assert cpu_has_fast_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)


def test_bad_values_are_refused_with_what_to_use(monkeypatch):
    monkeypatch.setenv(CPU_BF16_ENV, "maybe")
    with pytest.raises(ConfigError, match="use 1"):
        cpu_has_fast_bf16()
    with pytest.raises(ConfigError, match="auto, bf16, fp16 or fp32"):
        pick_precision("fp64")


def _text(tiny_llama, data, out, precision):
    return TextTrainConfig(data=[str(data)], out=str(out), base=str(tiny_llama), steps=2, lr=5e-3, rank=4,
                           seq_len=32, batch_size=2, eval_every=2, augment=0.0, lora_dropout=0.0,
                           max_new_tokens=2, precision=precision, threads=1)


@no_gpu
def test_text_runs_of_each_precision_follow_one_another(monkeypatch, tiny_llama, text_file, tmp_path):
    """An ``auto`` run that picked bf16, then fp32 runs, then bf16 again, in one process."""
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    order = [("auto", "bf16"), ("fp32", "fp32"), ("bf16", "bf16"), ("fp32", "fp32")]
    for i, (asked, expected) in enumerate(order):
        train_text(_text(tiny_llama, text_file, tmp_path / f"run{i}", asked))
        metrics = json.loads((tmp_path / f"run{i}" / "metrics.json").read_text())
        assert metrics["precision"] == expected == metrics["precision_choice"]["picked"]
        assert (tmp_path / f"run{i}" / "adapter" / "adapter_model.safetensors").is_file()
    assert CPU_BF16_ENV in metrics["precision_choice"]["reason"] or "asked" in metrics["precision_choice"]["reason"]


@no_gpu
def test_image_runs_of_each_precision_follow_one_another(monkeypatch, tiny_sd, image_folder, tmp_path):
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    for i, (asked, expected) in enumerate([("auto", "bf16"), ("fp32", "fp32")]):
        config = ImageTrainConfig(data=[str(image_folder)], out=str(tmp_path / f"run{i}"), base=str(tiny_sd),
                                  resolution=RESOLUTION, steps=2, rank=4, batch_size=2, eval_every=2,
                                  sample_every=0, sample_steps=1, sample_seeds=[0], min_image_side=16,
                                  augment=0.0, precision=asked, threads=1)
        train_image(config)
        metrics = json.loads((tmp_path / f"run{i}" / "metrics.json").read_text())
        assert metrics["precision"] == expected


# ---- auto as a measured choice


@pytest.fixture
def probe_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LORACORD_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "precision.json"


class FakeProbe:
    """Seconds per step by precision: stands in for timing, which a test must not depend on."""

    def __init__(self, **step_s):
        self.step_s, self.calls = step_s, []

    def __call__(self, precision):
        self.calls.append(precision)
        return self.step_s[precision]


@no_gpu
@pytest.mark.parametrize(("bf16_s", "picked"), [(0.5, "bf16"), (0.95, "fp32"), (2.0, "fp32")])
def test_auto_keeps_bf16_only_where_the_probe_measured_it_faster(monkeypatch, probe_cache, bf16_s, picked):
    from trainer import precision as module

    monkeypatch.delenv(CPU_BF16_ENV, raising=False)
    monkeypatch.setattr(module, "cpu_has_fast_bf16", lambda: True)  # as on an AMX / AVX-512 BF16 CPU
    probe = FakeProbe(fp32=1.0, bf16=bf16_s)
    choice = module.choose_precision("auto", key="text|model-a", probe=probe)
    assert choice.precision == picked and "measured" in choice.reason
    assert choice.step_s == {"fp32": 1.0, "bf16": bf16_s}
    assert probe.calls == ["fp32", "bf16"] * module.PROBE_ROUNDS  # sides alternate

    again = module.choose_precision("auto", key="text|model-a", probe=FakeProbe(fp32=1.0, bf16=9.0))
    assert again.precision == picked and again.cached  # cached per machine and model: no second probe
    other = module.choose_precision("auto", key="image|model-b", probe=FakeProbe(fp32=1.0, bf16=9.0))
    assert other.precision == "fp32" and not other.cached
    assert len(json.loads(probe_cache.read_text())) == 2


@no_gpu
def test_auto_without_native_bf16_never_probes(monkeypatch, probe_cache):
    from trainer import precision as module

    monkeypatch.delenv(CPU_BF16_ENV, raising=False)
    monkeypatch.setattr(module, "cpu_has_fast_bf16", lambda: False)
    probe = FakeProbe(fp32=1.0, bf16=0.1)
    choice = module.choose_precision("auto", key="k", probe=probe)
    assert choice.precision == "fp32" and "emulated" in choice.reason and probe.calls == []
    assert module.choose_precision("bf16", key="k", probe=probe).precision == "bf16"
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    forced = module.choose_precision("auto", key="k", probe=probe)
    assert forced.precision == "bf16" and CPU_BF16_ENV in forced.reason and probe.calls == []


def test_real_probes_time_both_precisions_on_tiny_models(tiny_llama, tiny_sd):
    from trainer.image.pipelines import load_pipeline
    from trainer.precision import image_probe, text_probe

    probe = text_probe(tiny_llama, seq_len=16, batch_size=2, rank=4)
    assert probe("fp32") > 0 and probe("bf16") > 0
    loaded = load_pipeline(tiny_sd)
    before = {k: v.clone() for k, v in loaded.pipe.unet.state_dict().items()}
    probe = image_probe(loaded, resolution=RESOLUTION, batch_size=2, rank=4)
    assert probe("fp32") > 0 and probe("bf16") > 0
    after = loaded.pipe.unet.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)  # untouched


@no_gpu
def test_bf16_holds_quality_against_fp32_on_the_same_data(tiny_llama, text_file, tmp_path):
    """The validation loss of a bf16 run stays within 5% of the fp32 run's, same data and seed."""
    losses = {}
    for precision in ("fp32", "bf16"):
        config = _text(tiny_llama, text_file, tmp_path / precision, precision).model_copy(
            update={"steps": 16, "eval_every": 8})
        losses[precision] = train_text(config).val_loss
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.05)


@no_gpu
def test_bf16_image_validation_loss_close_to_fp32(tiny_sd, image_folder, tmp_path):
    losses = {}
    for precision in ("fp32", "bf16"):
        config = ImageTrainConfig(data=[str(image_folder)], out=str(tmp_path / precision), base=str(tiny_sd),
                                  resolution=RESOLUTION, steps=8, rank=4, batch_size=2, eval_every=4,
                                  sample_every=0, sample_steps=1, sample_seeds=[0], min_image_side=16,
                                  augment=0.0, precision=precision, threads=1)
        losses[precision] = train_image(config).val_loss
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.05)


@no_gpu
def test_a_bf16_image_run_stores_its_frozen_unet_in_bf16_and_its_adapter_in_fp32(tiny_sd, image_folder, tmp_path):
    """Half the UNet's memory, no per-step weight casts; the adapter and optimizer keep full precision,
    and the adapter starts from the same float32 values as an fp32 run's."""
    import torch

    from trainer.image.train import _setup

    made = {}
    for precision in ("fp32", "bf16"):
        config = ImageTrainConfig(data=[str(image_folder)], out=str(tmp_path / precision), base=str(tiny_sd),
                                  resolution=RESOLUTION, steps=2, rank=4, batch_size=2, sample_steps=1,
                                  sample_seeds=[0], min_image_side=16, augment=0.0, precision=precision, seed=0)
        made[precision] = _setup(config)
    unet = made["bf16"].loaded.pipe.unet
    lora = {n: p for n, p in unet.named_parameters() if p.requires_grad}
    frozen = [p for p in unet.parameters() if not p.requires_grad]
    assert lora and all(p.dtype == torch.float32 for p in lora.values())
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    assert all(p.dtype == torch.float32 for p in made["bf16"].loaded.pipe.vae.parameters())
    assert all(p.dtype == torch.float32 for p in made["fp32"].loaded.pipe.unet.parameters())
    start = dict(made["fp32"].loaded.pipe.unet.named_parameters())
    assert all(torch.equal(p, start[n]) for n, p in lora.items())  # cast after the adapter was made

    result = train_image(ImageTrainConfig(data=[str(image_folder)], out=str(tmp_path / "run"), base=str(tiny_sd),
                                          resolution=RESOLUTION, steps=2, rank=4, batch_size=2, sample_steps=1,
                                          sample_seeds=[0], min_image_side=16, augment=0.0, precision="bf16"))
    assert result.metrics["precision"] == "bf16" and list((tmp_path / "run" / "samples").glob("*.png"))


@no_gpu
def test_a_run_on_a_bf16_cpu_probes_its_model_and_says_why_in_metrics(monkeypatch, probe_cache, tiny_llama, text_file,
                                                                      tmp_path):
    from trainer import precision as module

    monkeypatch.delenv(CPU_BF16_ENV, raising=False)
    monkeypatch.setattr(module, "cpu_has_fast_bf16", lambda: True)  # as on an AMX / AVX-512 BF16 CPU
    train_text(_text(tiny_llama, text_file, tmp_path / "run", "auto"))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    choice = metrics["precision_choice"]
    assert choice["picked"] == metrics["precision"] in {"bf16", "fp32"}
    assert choice["reason"].startswith("measured") and set(choice["probe_step_s"]) == {"fp32", "bf16"}
    assert not choice["cached"]
    assert len(json.loads(probe_cache.read_text())) == 1  # the verdict is kept for the next run

    train_text(_text(tiny_llama, text_file, tmp_path / "again", "auto"))
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())["precision_choice"]
    assert again["cached"] and again["picked"] == choice["picked"]


@no_gpu
def test_an_image_run_records_why_its_precision_was_picked(monkeypatch, probe_cache, tiny_sd, image_folder, tmp_path):
    from trainer import precision as module

    monkeypatch.delenv(CPU_BF16_ENV, raising=False)
    monkeypatch.setattr(module, "cpu_has_fast_bf16", lambda: True)
    config = ImageTrainConfig(data=[str(image_folder)], out=str(tmp_path / "run"), base=str(tiny_sd),
                              resolution=RESOLUTION, steps=2, rank=4, batch_size=2, eval_every=2, sample_every=0,
                              sample_steps=1, sample_seeds=[0], min_image_side=16, augment=0.0, precision="auto",
                              threads=1)
    train_image(config)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["precision_choice"]["picked"] == metrics["precision"]
    assert set(metrics["precision_choice"]["probe_step_s"]) == {"fp32", "bf16"}
