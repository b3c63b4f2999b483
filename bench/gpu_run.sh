#!/usr/bin/env bash
# Both throughput benchmarks on a GPU machine, in bf16 and fp16, as one prepared command.
#
# Here first: bash bench/gpu_prepare.sh (wheels into .whl/, the text model's shapes into .gpu/).
# There, from the repository root, with .whl and .gpu carried along:
#     bash bench/gpu_run.sh            # JSON lines into $OUT (or gpu-out/): image.jsonl, text.jsonl
# The text benchmark runs on random weights of the built-in model's shapes (bench/shape_copy.py):
# its weights cannot travel, and speed and memory depend on the shapes alone.
# Knobs: PY (python3), PRECISIONS ("bf16 fp16"), QUICK=1 (a smoke run of a few steps).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
py="${PY:-python3}"
out="${OUT:-gpu-out}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ -d .whl ] && [ -z "${PY:-}" ]; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/loracord-site \
        .whl/*.whl
    export PYTHONPATH="/tmp/loracord-site${PYTHONPATH:+:$PYTHONPATH}"
fi
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')" | tee "$out/machine.txt"
shape=.gpu/smollm2-shape
[ -f "$shape/model.safetensors" ] || "$py" bench/shape_copy.py "$shape" --weights

# About 8 minutes on one GPU by estimate (each text side is a fresh process that loads torch and
# the model); the most wanted lines come first and each is written as soon as it is measured, so
# a run stopped at its limit still returns what it had.
if [ "${QUICK:-0}" = 1 ]; then image_steps=2 repeats=1 text_steps=1 rounds=1; else
    image_steps=40 repeats=3 text_steps=20 rounds=2; fi
precisions=(${PRECISIONS:-bf16 fp16})

bench() {  # one benchmark: its JSON line appended to $out/$1; a failure is noted and the rest still run
    local file=$1
    shift
    if ! "$py" "$@" 2>"$out/stderr.txt" | tail -1 | tee -a "$out/$file"; then
        { echo "failed: $*"; tail -30 "$out/stderr.txt"; } | tee -a "$out/errors.txt"
    fi
}
for precision in "${precisions[@]}"; do
    bench image.jsonl bench/image_throughput.py --model sd1-small --resolution 128 --rank 4 --images 12 \
        --steps "$image_steps" --repeats "$repeats" --precision "$precision"
    bench text.jsonl bench/text_throughput.py --base "$shape" --steps "$text_steps" --rounds "$rounds" \
        --precision "$precision"
done
for precision in "${precisions[@]}"; do  # the tiny 64 px setting last
    bench image.jsonl bench/image_throughput.py --steps "$image_steps" --repeats "$repeats" --precision "$precision"
done
[ ! -s "$out/errors.txt" ]
