#!/bin/bash
# test/device/vkab.sh SHAPE:TYPE... - an A/B of Vulkan settings on the
# device, in one call: for each model (kiln-gen-model into /tmp), the
# greedy text of 64 tokens and the recorded step's dispatches under each
# setting of $KILN_VKAB (default "KILN_VK_NO_FUSED=0 KILN_VK_NO_FUSED=128";
# a,b for two variables at once), then tg128 (3 repetitions) under each,
# alternating, in two rounds, and CUDA's tg128 for the ratio.
# KILN_VKAB_TESTS=1 first runs test_vulkan_ops, test_backend_attn,
# test_lifecycle and, with $KILN_SHARED, test_reference on Vulkan;
# KILN_VKAB_MORE=1 adds tg128 at 4096 positions and with 8 sequences.
# Given a tree built elsewhere (KILN_BUILD, default build-device, from
# `bash test/device/vulkan.sh --pack build-device`) and .gl/ for the loader:
#   KILN_SHARED=$PWD/devdata/vk/shared KILN_VKAB_TESTS=1 bash test/device/vkab.sh mistral-7b:q4_k_m
# Two builds in one call (a change's A/B where no setting turns it off):
# pack the old tree too (its libkiln*.so and bin/kiln-bench, kiln-run) and
# run both with KILN_BACKEND_PATH=$PWD/BUILD BUILD/bin/kiln-bench (session
# 12's attention A/B in bench/NOTES.md).
set -u
cd "$(dirname "$0")/../.."
build=${KILN_BUILD:-build-device}
. test/device/vk_common.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null
sets=${KILN_VKAB:-KILN_VK_NO_FUSED=0 KILN_VK_NO_FUSED=128}
if [ -n "${KILN_VKAB_TESTS:-}" ]; then
    echo "== test_vulkan_ops: $("$build/test/test_vulkan_ops" 2>&1 | grep -E '^FAIL|^kt:' | tr '\n' ' ')"
    echo "== test_backend_attn: $(KILN_ATTN_BACKEND=vulkan "$build/test/test_backend_attn" 2>&1 | tail -n 1)"
    echo "== test_lifecycle: $(KILN_BACKEND=vulkan "$build/test/test_lifecycle" 2>&1 | grep -E '^FAIL|^kt:' | tr '\n' ' ')"
    if [ -n "${KILN_SHARED:-}" ]; then
        echo "== test_reference: $(KILN_BACKEND=vulkan "$build/test/test_reference" 2>&1 | grep -E 'KL|^kt:' | tail -n 2 | tr '\n' ' ')"
    fi
fi
for spec in "$@"; do
    f=$(vk_model "$spec") || { echo "no model $spec"; continue; }
    echo "== $spec: greedy text"
    for e in $sets; do
        md5=$(env ${e//,/ } KILN_VK_STATS=1 timeout 180 "$build/bin/kiln-run" --backend vulkan -m "$f" \
            -p "The history of the" -n 64 --temp 0 2> /tmp/vkab.err | md5sum | cut -c1-12)
        echo "$e md5 $md5 $(grep -o 'the largest recorded.*' /tmp/vkab.err)"
    done
    echo "== $spec: tg128"
    for round in 1 2; do
        for e in $sets; do
            echo "$e $(env ${e//,/ } timeout 180 "$build/bin/kiln-bench" --backend vulkan -m "$f" -p 0 -n 128 -r 3 2>&1 | tail -n 1)"
        done
    done
    if [ -n "${KILN_VKAB_MORE:-}" ]; then
        for e in $sets; do
            echo "$e $(env ${e//,/ } timeout 180 "$build/bin/kiln-bench" --backend vulkan -m "$f" -p 0 -n 128 -r 2 -d 4096 2>&1 | tail -n 1)"
            echo "$e $(env ${e//,/ } timeout 180 "$build/bin/kiln-bench" --backend vulkan -m "$f" -p 0 -n 128 -r 2 -s 8 2>&1 | tail -n 1)"
        done
    fi
    if [ -f "$build/libkiln-cuda.so" ]; then
        echo "cuda $(timeout 180 "$build/bin/kiln-bench" --backend cuda -m "$f" -p 0 -n 128 -r 3 2>&1 | tail -n 1)"
    fi
    rm -f "$f"
done
