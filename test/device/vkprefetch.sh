#!/bin/bash
# test/device/vkprefetch.sh [SHAPE:TYPE...] - the prefetch hint on the
# device (KILN_VK_PREFETCH=MiB: touch.comp reads the next product's first
# weight bytes into the L2 beside the dispatch before it), in one call:
#   per model (default mistral-7b:q4_0 mistral-7b:q4_k_m, generated with
#   kiln-gen-model into /tmp; a .gguf path is used as it is): the greedy text of 64 tokens with and
#   without the hint (it must not change a bit), then tg128 (3
#   repetitions) over the settings in KILN_VKPF_SET (default "0 8 16 32
#   64"), twice, the first model also at 4096 positions and with 8
#   sequences both ways, and CUDA's tg128 for the ratio.
# Given a tree built elsewhere (KILN_BUILD, default build-device, from
# `bash test/device/vulkan.sh --pack build-device`) and .gl/ for the loader:
#   KILN_SHARED=$PWD/devdata/vk/shared bash test/device/vkprefetch.sh
set -u
cd "$(dirname "$0")/../.."
build=${KILN_BUILD:-build-device}
. test/device/vk_common.sh
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader 2>/dev/null
tg() { # tg ARGS...: kiln-bench's last line on Vulkan under the caller's environment
    timeout 180 "$build/bin/kiln-bench" --backend vulkan -m "$f" -p 0 "$@" 2>&1 | tail -n 1
}
sets=${KILN_VKPF_SET:-0 8 16 32 64}
specs=("$@")
[ ${#specs[@]} -gt 0 ] || specs=(mistral-7b:q4_0 mistral-7b:q4_k_m)
first=1
for spec in "${specs[@]}"; do
    if [[ "$spec" == *.gguf ]]; then f=$spec; else f=$(vk_model "$spec") || { echo "no model $spec"; continue; }; fi
    echo "== $spec: greedy text, with and without the hint"
    for pf in 0 32; do
        KILN_VK_PREFETCH=$pf KILN_VK_STATS=1 timeout 180 "$build/bin/kiln-run" --backend vulkan -m "$f" \
            -p "The history of the" -n 64 --temp 0 > "/tmp/vkpf-$pf.txt" 2> "/tmp/vkpf-$pf.err"
        echo "KILN_VK_PREFETCH=$pf rc=$? md5 $(md5sum < "/tmp/vkpf-$pf.txt" | cut -c1-12)" \
             "$(grep -o 'the largest recorded.*' "/tmp/vkpf-$pf.err")"
    done
    cmp -s /tmp/vkpf-0.txt /tmp/vkpf-32.txt && echo "same text" || echo "TEXT DIFFERS"
    echo "== $spec: tg128 by KILN_VK_PREFETCH (MiB per hint)"
    for round in 1 2; do
        for pf in $sets; do echo "PREFETCH=$pf $(KILN_VK_PREFETCH=$pf tg -n 128 -r 3)"; done
    done
    if [ $first = 1 ]; then
        for pf in 0 32; do
            echo "PREFETCH=$pf d4096 $(KILN_VK_PREFETCH=$pf tg -n 128 -r 2 -d 4096)"
            echo "PREFETCH=$pf x8    $(KILN_VK_PREFETCH=$pf tg -n 128 -r 2 -s 8)"
        done
    fi
    first=0
    if [ -f "$build/libkiln-cuda.so" ]; then
        echo "cuda          $(timeout 180 "$build/bin/kiln-bench" --backend cuda -m "$f" -p 0 -n 128 -r 3 2>&1 | tail -n 1)"
    fi
    [[ "$spec" == *.gguf ]] || rm -f "$f"
done
