"""Base model references: folders, hub ids offline, GGUF, built-in names, and their errors."""

from __future__ import annotations

import pytest

from trainer.errors import ModelError
from trainer.models import resolve_base


def test_local_folder_resolves_to_itself(tiny_llama):
    assert resolve_base(str(tiny_llama)) == tiny_llama


def test_folder_with_only_pickles_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelError, match="safetensors only"):
        resolve_base(str(tmp_path))


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ModelError, match="config.json"):
        resolve_base(str(tmp_path))


@pytest.mark.parametrize("ref", ["", "   ", "not a model", "../nope/"])
def test_unknown_reference(ref):
    with pytest.raises(ModelError):
        resolve_base(ref)


def test_hub_id_offline_without_cache_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(ModelError, match="not in the local cache"):
        resolve_base("someone/some-model")


def test_missing_gguf_file(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        resolve_base(str(tmp_path / "model.gguf"))


def test_non_gguf_file_is_refused(tmp_path):
    path = tmp_path / "weights.safetensors"
    path.write_bytes(b"x")
    with pytest.raises(ModelError, match="not a .gguf"):
        resolve_base(str(path))


def test_hub_cache_snapshot_resolves_offline(monkeypatch, tmp_path, tiny_llama):
    """A model already in the huggingface-hub cache loads with HF_HUB_OFFLINE=1 by its hub id."""
    import shutil

    import huggingface_hub.constants as constants

    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--tiny" / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_llama, snapshot)
    (cache / "models--someone--tiny" / "refs").mkdir()
    (cache / "models--someone--tiny" / "refs" / "main").write_text("0123456789abcdef0123456789abcdef01234567")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    path = resolve_base("someone/tiny")
    assert (path / "config.json").exists() and path.name == snapshot.name
