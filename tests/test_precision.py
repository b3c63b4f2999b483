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
        assert metrics["precision"] == expected
        assert (tmp_path / f"run{i}" / "adapter" / "adapter_model.safetensors").is_file()


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
