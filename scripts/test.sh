#!/usr/bin/env bash
# The test suite. Sets up .venv on first use, then runs pytest (extra arguments go to pytest).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$ROOT"
# The GGUF tests load exported adapters back in llama.cpp through its Python binding, an sdist
# that pip compiles once (about 6 minutes; for any x86-64 CPU, not just this one).
if ! python -c "import llama_cpp" 2>/dev/null; then
    if ! command -v c++ >/dev/null 2>&1; then
        echo "loracord: the tests need llama-cpp-python, which pip compiles: install a C++ compiler and cmake" \
             "(Debian/Ubuntu: apt-get install g++ cmake) and run this again" >&2
        exit 1
    fi
    echo "loracord: compiling llama-cpp-python for the tests (once, about 6 minutes)" >&2
    CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" python -m pip install -q -e "$ROOT[llamacpp]" >&2
fi
exec python -m pytest "$@"
