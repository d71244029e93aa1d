#!/bin/bash
# test/device/ops.sh - the decode products alone, on CUDA and Vulkan, on a
# GPU machine, given a tree built elsewhere (carry KILN_BUILD, default
# build-device, made with `bash test/device/vulkan.sh --pack build-device`,
# plus build-device/bench/{backend_ops,decode_kernels}, and .gl/ for the
# Vulkan loader):
#   1. bench/decode_kernels (Q4_0 decode kernels over the GGUF layout and over
#      a layout with quants and scales apart), if built;
#   2. bench/backend_ops on libkiln-cuda.so and libkiln-vulkan.so, one
#      token and 8 (BENCH_TYPES, default f16,q4_0,q8_0,q4_k,q6_k); Vulkan
#      Q4_0 again with KILN_VK_LAYOUT=0 (the GGUF layout, not split);
#   3. with SHAPE:TYPE arguments (kiln-gen-model shapes), the per-kernel
#      profile of a few Vulkan decode steps (KILN_VK_PROFILE=1) and the
#      CUDA step's profile (KILN_CUDA_PROFILE=1).
# Logs go to $OUT (the device tool's output folder) or /tmp/kiln-ops.
set -u
cd "$(dirname "$0")/../.."
build=${KILN_BUILD:-build-device}
out=${OUT:-/tmp/kiln-ops}
mkdir -p "$out"
if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1' && ls .gl/*.deb >/dev/null 2>&1; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
nv_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$nv_icd" ] && export VK_DRIVER_FILES=$nv_icd
export KILN_BACKEND_PATH=$build
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv 2>&1 | tee "$out/gpu.txt"
if [ -x "$build/bench/decode_kernels" ]; then
    echo "== decode_kernels"
    "$build/bench/decode_kernels" "${KILN_OPS_REPS:-200}" 2>&1 | tee "$out/layout.txt"
fi
types=${BENCH_TYPES:-f16,q4_0,q8_0,q4_k,q6_k}
for lib in cuda vulkan; do
    [ -f "$build/libkiln-$lib.so" ] || continue
    echo "== backend_ops $lib"
    BENCH_TYPES=$types BENCH_NS=${BENCH_NS:-,1,8,} "$build/bench/backend_ops" "$build/libkiln-$lib.so" \
        "${KILN_OPS_REPS:-50}" 2>&1 | tee "$out/ops-$lib.txt"
done
if [ -f "$build/libkiln-vulkan.so" ]; then
    echo "== backend_ops vulkan q4_0, KILN_VK_LAYOUT=0 (GGUF layout)"
    KILN_VK_LAYOUT=0 BENCH_TYPES=q4_0 BENCH_NS=${BENCH_NS:-,1,8,} "$build/bench/backend_ops" \
        "$build/libkiln-vulkan.so" "${KILN_OPS_REPS:-50}" 2>&1 | tee "$out/ops-vulkan-gguf.txt"
fi
for m in "$@"; do
    shape=${m%%:*}; type=${m##*:}; f=/tmp/$shape-$type.gguf
    vocab=${KILN_SHARED:-../shared}/vocab/vocab-llama-spm.gguf
    [ -f "$f" ] || "$build/bin/kiln-gen-model" --shape "$shape" --type "$type" --vocab "$vocab" -o "$f" -q \
        > "$out/gen.txt" 2>&1
    [ -f "$f" ] || { echo "cannot generate $m: $(tail -n 2 "$out/gen.txt")"; continue; }
    name=$shape-$type
    echo "== profiles $name"
    KILN_VK_PROFILE=1 "$build/bin/kiln-bench" --backend vulkan -m "$f" -p 0 -n 16 -r 1 > /dev/null \
        2> "$out/profile-vulkan-$name.txt"
    KILN_CUDA_PROFILE=1 "$build/bin/kiln-bench" --backend cuda -m "$f" -p 0 -n 64 -r 1 \
        > "$out/profile-cuda-$name.txt" 2>&1
    tail -n 40 "$out/profile-vulkan-$name.txt"
    [ -n "${KILN_OPS_KEEP:-}" ] || rm -f "$f"
done
