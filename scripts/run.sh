#!/usr/bin/env bash
# The main job. Sets up .venv on first use, then runs `loracord run` (or any loracord
# command given as arguments, e.g. `bash scripts/run.sh train text my.txt --out runs/a`).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
if [ "$#" -eq 0 ]; then set -- run; fi
exec loracord "$@"
