"""The built-in offline default, smollm2-135m: converted once from its GGUF, then trained."""

from __future__ import annotations

import json

from trainer.models import resolve_base
from trainer.text.config import TextTrainConfig
from trainer.text.shakespeare import write_speeches
from trainer.text.train import train_text


def test_builtin_converts_to_plain_safetensors():
    folder = resolve_base("smollm2-135m")
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    assert (folder / "model.safetensors").stat().st_size > 100_000_000
    assert resolve_base("SmolLM2-135M") == folder  # cached: the second call converts nothing


def test_builtin_trains_a_few_steps(tmp_path):
    data = write_speeches(tmp_path / "macbeth.txt", "macbeth", limit=40, min_words=8)
    events = []
    result = train_text(TextTrainConfig(data=[str(data)], out=str(tmp_path / "run"), steps=6, eval_every=3, lr=1e-3,
                                        seq_len=64, batch_size=2, prompts=["MACBETH:\n"], max_new_tokens=8,
                                        augment=0.0), on_event=events.append)
    val = [e.val_loss for e in events if e.kind == "eval"]
    assert result.steps_done == 6 and len(val) == 2
    assert val[1] < val[0] < 7.0  # a pretrained model starts far below log(vocab) ~ 10.8, and improves
    assert (result.run_dir / "adapter" / "adapter_model.safetensors").exists()
