"""The setup script's stamp depends on what is installed, not on the path the checkout is reached by."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _checkout(folder: Path) -> Path:
    """A checkout whose .venv is already set up: the two stamped files, a python and a current stamp."""
    (folder / "scripts").mkdir(parents=True)
    for name in ("pyproject.toml", "scripts/bootstrap.sh"):
        shutil.copy2(ROOT / name, folder / name)
    (folder / ".venv" / "bin").mkdir(parents=True)
    (folder / ".venv" / "bin" / "python").symlink_to(sys.executable)
    data = (folder / "pyproject.toml").read_bytes() + (folder / "scripts" / "bootstrap.sh").read_bytes()
    (folder / ".venv" / ".loracord-installed").write_text(hashlib.sha256(data).hexdigest()[:16] + "\n")
    return folder


def _bootstrap(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f'source "{root}/scripts/bootstrap.sh" && echo "$ROOT"'],
                          capture_output=True, text=True, timeout=120)


def test_same_venv_through_another_path_is_not_reinstalled(tmp_path):
    real = _checkout(tmp_path / "real")
    link = tmp_path / "elsewhere"
    link.symlink_to(real)
    stamp = (real / ".venv" / ".loracord-installed").read_text()
    for root in (real, link):
        done = _bootstrap(root)
        assert done.returncode == 0, done.stderr
        assert "installing dependencies" not in done.stderr
        assert done.stdout.strip() == str(real.resolve())  # the physical path: an editable install never moves
    assert (real / ".venv" / ".loracord-installed").read_text() == stamp


def test_a_changed_project_file_is_noticed(tmp_path):
    real = _checkout(tmp_path / "real")
    with open(real / "pyproject.toml", "a") as f:
        f.write("\n# a new dependency would go here\n")
    # The stamp no longer matches: the script goes on to install. Stop it at its first pip call
    # by giving it a python that only answers that import torch fails.
    fake = real / ".venv" / "bin" / "python"
    fake.unlink()
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    done = _bootstrap(real)
    assert "installing dependencies" in done.stderr
