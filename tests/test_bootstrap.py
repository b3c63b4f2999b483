"""The setup script's stamp depends on what is installed, not on the path the checkout is reached by."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _want() -> str:
    data = (ROOT / "pyproject.toml").read_bytes() + (ROOT / "scripts" / "bootstrap.sh").read_bytes()
    return hashlib.sha256(data).hexdigest()[:16]


def test_same_venv_through_another_path_is_not_reinstalled(tmp_path):
    stamp = ROOT / ".venv" / ".loracord-installed"
    assert Path(sys.prefix).resolve() == (ROOT / ".venv").resolve(), "run the suite through scripts/test.sh"
    assert stamp.read_text().strip() == _want(), "the stamp is stale: scripts/test.sh refreshes it"
    link = tmp_path / "elsewhere"
    link.symlink_to(ROOT)
    done = subprocess.run(["bash", "-c", f'source "{link}/scripts/bootstrap.sh" && echo "$ROOT"'],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "installing dependencies" not in done.stderr
    assert done.stdout.strip() == str(ROOT)  # the physical path: an editable install never moves
    assert stamp.read_text().strip() == _want()
