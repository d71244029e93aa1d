#!/bin/bash
# test/device/vkpp.sh SHAPE:TYPE... - where a Vulkan prefill goes on the
# device: bench/backend_ops' 512-token products (TFLOP/s per 7B shape) on
# Vulkan and CUDA, again under each setting of $KILN_VKPP_ENV (e.g.
# "KILN_VK_MMC_OLD=1", a,b for both), then per SHAPE:TYPE kiln-bench pp512
# (plain, under each setting, and on CUDA with KILN_VKPP_CUDA=1) and the
# per-kernel profile of one pp512 (KILN_VK_PROFILE=1: every dispatch timed
# alone; KILN_VKPP_KEEP=1 leaves the generated models in /tmp for
# test/device/vkprof.sh). Given a tree built elsewhere, as test/device/vkprof.sh takes it
# (KILN_BUILD, default build-device, plus build-device/bench/backend_ops):
#   KILN_SHARED=$PWD/devdata/vk/shared bash test/device/vkpp.sh mistral-7b:q4_0
set -u
cd "$(dirname "$0")/../.."
build=${KILN_BUILD:-build-device}
. test/device/vk_common.sh
types=${BENCH_TYPES:-f16,q4_0,q4_k}
ops() { BENCH_TYPES=$types BENCH_NS=,512, "$build/bench/backend_ops" "$build/libkiln-$1.so" "${KILN_OPS_REPS:-20}" 2>&1 |
        grep -v "decode vs"; }
if [ -x "$build/bench/backend_ops" ]; then
    echo "== backend_ops vulkan"; ops vulkan
    [ -n "${KILN_VKPP_CUDA:-}" ] && { echo "== backend_ops cuda"; ops cuda; }
    for e in ${KILN_VKPP_ENV:-}; do echo "== backend_ops vulkan $e"; env ${e//,/ } bash -c "$(declare -f ops); build=$build types=$types ops vulkan"; done
fi
for spec in "$@"; do
    f=$(vk_model "$spec") || { echo "no model $spec"; continue; }
    echo "== $spec"
    vk_bench "$f" "${KILN_VKPP_CUDA:-}" 1 -p 512 -n 0 -r 3
    for e in ${KILN_VKPP_ENV:-}; do
        echo "$e"; env ${e//,/ } "$build/bin/kiln-bench" --backend vulkan -m "$f" -p 512 -n 0 -r 3 2>&1 | tail -n 1
    done
    KILN_VK_PROFILE=1 "$build/bin/kiln-bench" --backend vulkan -m "$f" -p 512 -n 0 -r 1 2>&1 | grep -A40 "profile"
    [ -n "${KILN_VKPP_KEEP:-}" ] || rm -f "$f"
done
