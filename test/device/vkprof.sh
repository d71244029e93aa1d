#!/bin/bash
# test/device/vkprof.sh SHAPE:TYPE... - where a Vulkan decode step's GPU
# time goes on the device, per pipeline, from timestamps written between
# the dispatches of the replayed step (KILN_VK_TIMESTAMPS=1; the barrier
# before a dispatch counts with it), next to plain kiln-bench tg128 and
# tg128 under each setting of $KILN_VKPROF_ENV (e.g. "KILN_VK_ATTN_DEC_OLD=1",
# a,b for both). Given a tree built elsewhere (KILN_BUILD, default
# build-device, from `bash test/device/vulkan.sh --pack build-device`) and
# .gl/ for the loader, as test/device/vulkan.sh takes them:
#   KILN_SHARED=$PWD/devdata/vk/shared bash test/device/vkprof.sh mistral-7b:q4_0
# KILN_VKPROF_CUDA=1 also runs kiln-bench on CUDA (the ratio on one machine).
# KILN_VKPROF_ENV_TS=1 also takes the timestamps under each setting.
# KILN_VKPROF_TESTS=1 first runs test_backend_attn and test_vulkan_ops and,
# with $KILN_SHARED, test_reference and test_draft on Vulkan.
set -u
cd "$(dirname "$0")/../.."
build=${KILN_BUILD:-build-device}
. test/device/vk_common.sh
shared=${KILN_SHARED:-}
if [ -n "${KILN_VKPROF_TESTS:-}" ]; then
    echo "== test_backend_attn (vulkan)"; KILN_ATTN_BACKEND=vulkan "$build/test/test_backend_attn" 2>&1 | tail -n 1
    echo "== test_vulkan_ops"; "$build/test/test_vulkan_ops" 2>&1 | tail -n 1
    if [ -n "$shared" ]; then
        echo "== test_reference (vulkan)"
        KILN_BACKEND=vulkan KILN_SHARED=$shared "$build/test/test_reference" 2>&1 | grep -E "KL|passed" | tail -n 4
        echo "== test_draft (vulkan)"
        KILN_BACKEND=vulkan KILN_SHARED=$shared "$build/test/test_draft" 2>&1 | tail -n 1
    fi
fi
# timestamps [VAR=VALUE...]: the per-pipeline GPU times of $f's decode step
timestamps() {
    env "$@" KILN_VK_TIMESTAMPS=1 "$build/bin/kiln-bench" --backend vulkan -m "$f" -p 0 -n 128 -r 1 2>&1 |
        grep -A40 "timestamps"
}
for spec in "$@"; do
    f=$(vk_model "$spec") || { echo "no model $spec"; continue; }
    echo "== $spec"
    vk_bench "$f" "${KILN_VKPROF_CUDA:-}" 2 -p 512 -n 128 -r 3
    for e in ${KILN_VKPROF_ENV:-}; do
        echo "$e"; env ${e//,/ } "$build/bin/kiln-bench" --backend vulkan -m "$f" -p 0 -n 128 -r 3 2>&1 | tail -n 1
        [ -z "${KILN_VKPROF_ENV_TS:-}" ] || timestamps ${e//,/ }
    done
    timestamps
    rm -f "$f"
done
