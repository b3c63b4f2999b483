#!/usr/bin/env bash
# Prepare, on a machine that reaches PyPI, what bench/gpu_run.sh needs on a GPU machine that
# reaches nothing and already holds Python 3.12 with CUDA torch, accelerate, numpy, Pillow and
# matplotlib, but not the rest of loracord's stack:
#   .whl/   cp312 wheels of the packages it lacks, at the versions this project's .venv tests with
#   .gpu/   the built-in text model's config and tokenizer (bench/shape_copy.py; no weights)
# Both folders are ignored by git; together about 38 MB. Run from the repository root, after
# `bash scripts/test.sh` or `bash scripts/run.sh` made .venv.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
py=.venv/bin/python
[ -x "$py" ] || { echo "no .venv here: run bash scripts/test.sh first" >&2; exit 1; }

# What the trainer and the benchmarks import beyond such a machine's stack, pinned to .venv's versions.
packages=(diffusers kornia kornia_rs peft transformers tokenizers huggingface_hub httpx2 httpcore2 truststore
          pydantic pydantic_core pydantic-settings python-dotenv annotated-types typing-inspection filetype gguf)
pins=()
for name in "${packages[@]}"; do
    version=$("$py" -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
    [ -n "$version" ] || { echo "$name is not installed in .venv" >&2; exit 1; }
    pins+=("$name==$version")
done
rm -rf .whl && mkdir -p .whl
platforms=()
for n in 17 24 27 28 31 34 35 39; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" --platform manylinux2014_x86_64 -d .whl "${pins[@]}"
"$py" bench/shape_copy.py .gpu/smollm2-shape
du -sh .whl .gpu
