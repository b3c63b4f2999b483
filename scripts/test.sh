#!/usr/bin/env bash
# The test suite. Sets up .venv on first use, then runs pytest (extra arguments go to pytest).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$ROOT"
exec python -m pytest "$@"
