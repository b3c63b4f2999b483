"""Base model references: folders, hub ids offline, GGUF, built-in names, and their errors."""

from __future__ import annotations

from pathlib import Path

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


@pytest.mark.parametrize("token", [None, "hf_not_allowed"])
def test_a_gated_base_says_that_hf_token_is_needed(tmp_path, token):
    """Against a local stand-in for the Hub's HTTP API (HF_ENDPOINT; no network here) that answers
    every request as the Hub answers for a gated repo, in a fresh process as a worker starts."""
    import http.server
    import os
    import subprocess
    import sys
    import threading

    class Gated(http.server.BaseHTTPRequestHandler):
        def _gated(self):
            self.send_response(401 if not self.headers.get("authorization") else 403)
            self.send_header("X-Error-Code", "GatedRepo")
            self.send_header("X-Error-Message", "Access to model black-forest-labs/FLUX.1-dev is restricted.")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD = _gated

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Gated)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HF_HUB_OFFLINE")}
    env |= {"HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}", "HF_HOME": str(tmp_path / "hf"),
            "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1"} | ({"HF_TOKEN": token} if token else {})
    code = ("from trainer.errors import ModelError\nfrom trainer.models import resolve_base\n"
            "try:\n    resolve_base('black-forest-labs/FLUX.1-dev')\nexcept ModelError as exc:\n    print(exc)\n")
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                             cwd=Path(__file__).resolve().parents[1])
    finally:
        server.shutdown()
    assert "'black-forest-labs/FLUX.1-dev' is gated on the Hugging Face Hub" in out.stdout, out.stdout + out.stderr
    assert ("the token in HF_TOKEN" if token else "set HF_TOKEN to a read token") in out.stdout
    assert token is None or token not in out.stdout + out.stderr  # never the secret itself
