#!/bin/bash
# test/device/vksync.sh [SHAPE:TYPE...] - KILN_VK_SYNC (a recorded decode
# step's dependent dispatches ordered by counters instead of barriers,
# backends/vulkan/shaders/sync.glsl) on the device, in one call:
#   1. test_vulkan_ops (test_sync_steps compares recorded steps without
#      barriers with eager dispatches bit for bit, and takes the give-up
#      path), with KILN_VK_SYNC_PREFETCH=4 for its touch before the wait;
#      test_kv, test_lifecycle and test_backend_attn with KILN_VK_SYNC=1
#      (the models they find under $KILN_SHARED);
#   2. per model (default mistral-7b:q4_0, generated with kiln-gen-model
#      into /tmp; a .gguf path is used as it is; one 7B model per call
#      stays within the device tool's 10 minutes, KILN_VKSYNC_SKIP_TESTS=1
#      for the calls after the first): the greedy text of 96 tokens with
#      and without the mode (a stale read would change it), then tg128
#      (3 repetitions) alternating barriers / KILN_VK_SYNC=1 / with
#      KILN_VK_SYNC_PREFETCH 2, 4, 8, twice, the step's counts of barriers
#      and waits (KILN_VK_STATS), tg128 at 4096 positions and with 8
#      sequences both ways, and CUDA's tg128 for the ratio;
# Given a tree built elsewhere (KILN_BUILD, default build-device, from
# `bash test/device/vulkan.sh --pack build-device`) and .gl/ for the loader:
#   KILN_SHARED=$PWD/devdata/vk/shared bash test/device/vksync.sh mistral-7b:q4_0
# KILN_VKSYNC_PREFETCH="2 4 8" sets the prefetch settings compared;
# KILN_VKSYNC_ENV (default "KILN_VK_NO_FUSED=64 KILN_VK_NO_FUSED=192": the
# fused norm, then also the fused swiglu, off) more settings with the
# counters (a,b for two variables at once).
set -u
cd "$(dirname "$0")/../.."
build=${KILN_BUILD:-build-device}
. test/device/vk_common.sh
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader 2>/dev/null
if [ -z "${KILN_VKSYNC_SKIP_TESTS:-}" ]; then
echo "== test_vulkan_ops"
KILN_VK_SYNC_PREFETCH=4 timeout 300 "$build/test/test_vulkan_ops" 2>&1 | grep -E "FAIL|sync|^kt:"
for t in test_kv test_lifecycle test_backend_attn; do
    echo "== $t, KILN_VK_SYNC=1"
    KILN_VK_SYNC=1 KILN_BACKEND=vulkan KILN_ATTN_BACKEND=vulkan timeout 300 "$build/test/$t" 2>&1 | grep -E "FAIL|^kt:"
done
fi

tg() { # tg ARGS...: kiln-bench's last line on Vulkan under the caller's environment
    timeout 180 "$build/bin/kiln-bench" --backend vulkan -m "$f" -p 0 "$@" 2>&1 | tail -n 1
}
specs=("$@")
[ ${#specs[@]} -gt 0 ] || specs=(mistral-7b:q4_0)
for spec in "${specs[@]}"; do
    if [[ "$spec" == *.gguf ]]; then f=$spec; else f=$(vk_model "$spec") || { echo "no model $spec"; continue; }; fi
    echo "== $spec: greedy text, barriers vs counters"
    for s in 0 1; do
        KILN_VK_SYNC=$s KILN_VK_STATS=1 timeout 180 "$build/bin/kiln-run" --backend vulkan -m "$f" \
            -p "The history of the" -n 96 --temp 0 > "/tmp/vksync-$s.txt" 2> "/tmp/vksync-$s.err"
        echo "KILN_VK_SYNC=$s rc=$? md5 $(md5sum < "/tmp/vksync-$s.txt" | cut -c1-12)" \
             "$(grep -o 'the largest recorded.*' "/tmp/vksync-$s.err")"
        grep -i "gave up" "/tmp/vksync-$s.err"
    done
    cmp -s /tmp/vksync-0.txt /tmp/vksync-1.txt && echo "same text" || echo "TEXT DIFFERS"
    echo "== $spec: tg128"
    for round in 1 2; do
        echo "barriers         $(KILN_VK_SYNC=0 tg -n 128 -r 3)"
        echo "KILN_VK_SYNC=1   $(KILN_VK_SYNC=1 tg -n 128 -r 3)"
        for pf in ${KILN_VKSYNC_PREFETCH:-2 4 8}; do
            echo "  + PREFETCH=$pf $(KILN_VK_SYNC=1 KILN_VK_SYNC_PREFETCH=$pf tg -n 128 -r 3)"
        done
    done
    # with counters a dependent dispatch may cost little: do the fusions
    # that save one (the norm, swiglu) still pay?
    for e in ${KILN_VKSYNC_ENV-KILN_VK_NO_FUSED=64 KILN_VK_NO_FUSED=192}; do
        echo "  + $e $(export ${e//,/ } KILN_VK_SYNC=1; tg -n 128 -r 3)"
    done
    echo "== $spec: tg128 at 4096 positions, 8 sequences"
    echo "barriers d4096   $(KILN_VK_SYNC=0 tg -n 128 -r 2 -d 4096)"
    echo "sync d4096       $(KILN_VK_SYNC=1 tg -n 128 -r 2 -d 4096)"
    echo "barriers x8      $(KILN_VK_SYNC=0 tg -n 128 -r 2 -s 8)"
    echo "sync x8          $(KILN_VK_SYNC=1 tg -n 128 -r 2 -s 8)"
    if [ -f "$build/libkiln-cuda.so" ]; then
        echo "cuda             $(timeout 180 "$build/bin/kiln-bench" --backend cuda -m "$f" -p 0 -n 128 -r 3 2>&1 | tail -n 1)"
    fi
    [[ "$spec" == *.gguf ]] || rm -f "$f"
done
