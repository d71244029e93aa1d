#!/bin/bash
# test/device/ktrace.sh SHAPE:TYPE [kiln-bench args...] - a decode step's
# kernel timeline on the CUDA backend (bench/ktrace.c, bench/ktrace.py):
# builds the CUPTI tracer against the device's CUDA toolkit, runs kiln-bench
# under it (default -p 0 -n 32 -r 1) and prints per-kernel durations and
# deltas. Run from the repository root on the GPU machine, with
# KILN_BUILD=build-device where the build was carried.
set -u
cd "$(dirname "$0")/../.."
build=${KILN_BUILD:-build}
export KILN_BACKEND_PATH=$PWD/$build
spec=${1:-mistral-7b:q4_0}; shift || true
CUDA=${CUDA_HOME:-/usr/local/cuda}
inc=$(dirname "$(ls "$CUDA"/include/cupti.h "$CUDA"/extras/CUPTI/include/cupti.h 2>/dev/null | head -n 1)")
lib=$(dirname "$(ls "$CUDA"/lib64/libcupti.so "$CUDA"/extras/CUPTI/lib64/libcupti.so 2>/dev/null | head -n 1)")
[ -f "$inc/cupti_activity.h" ] || { echo "ktrace: no CUPTI under $CUDA"; exit 1; }
kt=$(grep -o 'CUpti_ActivityKernel[0-9]*' "$inc/cupti_activity.h" | sort -V | tail -n 1)
gcc -O2 -shared -fPIC -DKT="$kt" -I"$inc" bench/ktrace.c -L"$lib" -lcupti -Wl,-rpath,"$lib" -o /tmp/libktrace.so || exit 1
if [ -f "$spec" ]; then f=$spec; else
    f=/tmp/${spec%%:*}-${spec##*:}.gguf
    [ -f "$f" ] || "$build/bin/kiln-gen-model" --shape "${spec%%:*}" --type "${spec##*:}" \
        --vocab "${KILN_SHARED:-devdata/shared}/vocab/vocab-llama-spm.gguf" -o "$f" -q >/dev/null 2>&1
fi
[ $# -gt 0 ] || set -- -p 0 -n 32 -r 1
KTRACE_OUT=/tmp/ktrace.txt LD_PRELOAD=/tmp/libktrace.so "$build/bin/kiln-bench" --backend cuda -m "$f" "$@" 2>&1 | tail -n 1
python3 bench/ktrace.py /tmp/ktrace.txt "${KTRACE_SHOW:-24}"
