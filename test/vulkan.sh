#!/bin/bash
# test/vulkan.sh - the Vulkan backend (libkiln-vulkan.so) on whatever Vulkan
# device the machine has (Mesa's lavapipe in CI). Run by make check from the
# repository root; KILN_BUILD names the build.
#   device       the plugin loads and decodes with the bundled model; the
#                whole script skips (exit 77) when the plugin was not built
#                (no glslc / Vulkan headers) or no Vulkan device exists
#   reference    test_reference with KILN_BACKEND=vulkan: llama.cpp's logits
#                within ../shared/README.md's bounds, like the CPU backend
#   lifecycle    test_lifecycle, test_kv, test_draft on Vulkan
#   proof        test_proof on Vulkan with few cycles (KILN_VK_PROOF_CYCLES,
#                default 3) and no fault injection
#   validation   a short prefill + decode under the Khronos validation layer
#                (when installed), synchronization validation on, reports no
#                error
#   greedy       kiln-run's greedy text equals the CPU backend's
#   layout       kiln-run's greedy text on tiny-target-q4_0 (its Q4_0
#                weights split by weight_prepare at load) equals that with
#                KILN_VK_LAYOUT=0 (GGUF layout): the kernels give the same
#                bits either way
#   coopmat      test_vulkan_ops with the matrix-core batch kernel emulated
#                (KILN_VK_COOPMAT_EMULATE=1; the real one needs a GPU), with
#                every fusion on, with the weights kept in the GGUF layout
#                (KILN_VK_LAYOUT=0: no split Q4_0), and its split-layout
#                case without subgroups (the portable row-group kernel)
#   attn         test_backend_attn against the CPU backend: the tiled
#                prefill attention (attn_tile.glsl; on lavapipe its form
#                without matrix cores, which is also what
#                KILN_VK_COOPMAT_EMULATE=1 runs) and the decode kernel, then
#                with KILN_VK_ATTN_EAGER=1 (its output rescaled whenever a
#                row's max grows: the rescale path) and KILN_VK_ATTN_OLD=1
#                (attention.comp for prefill too)
#   split        test_split with the layers on "cpu:0:N,vulkan:0" against
#                the CPU backend alone, F16 models (a quantized model's
#                re-quantized activations turn float-order differences into
#                logit differences of ~0.3 on Vulkan alone), |diff| <= 0.05
#                and the same argmax (lavapipe measured 0.005); CI: n_ubatch
#                512 and no draft case
# KILN_VK_TESTS="reference lifecycle ..." picks a subset. lavapipe is slow,
# so by default (CI) the reference suite runs on two models (F16 llama,
# qwen3's NEOX rope with q/k norms) with prompts of at most 32 tokens plus
# the batching test (test_vulkan_ops checks every weight type against the
# CPU backend), the lifecycle cycles are 5 and test_draft runs only its
# argument and vocabulary cases;
# KILN_VK_FULL=1 (the GPU machine, test/device/vulkan.sh) runs everything.
set -u
cd "$(dirname "$0")/.."
build=${KILN_BUILD:-build}
pass=0; fail=0; skip=0
ok() { echo "ok   $1"; pass=$((pass + 1)); }
bad() { echo "FAIL $1: $2"; fail=$((fail + 1)); }
skipped() { echo "skip $1: $2"; skip=$((skip + 1)); }
finish() { echo "kt: $pass passed, $fail failed, $skip skipped"; [ "$fail" -eq 0 ]; exit $?; }
want() { [ -z "${KILN_VK_TESTS:-}" ] || [[ " $KILN_VK_TESTS " == *" $1 "* ]]; }

if [ ! -f "$build/libkiln-vulkan.so" ]; then
    echo "skip: $build/libkiln-vulkan.so was not built (needs glslc and vulkan/vulkan.h)"; exit 77
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export KILN_BACKEND_PATH=$build
if [ -n "${SANITIZE:-}" ]; then
    # the driver's own never-freed allocations are not kiln's leaks; under
    # sanitizers (slower still) only the lifecycle test runs, briefly
    export LSAN_OPTIONS="suppressions=$PWD/test/lsan-vulkan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
    export KILN_VK_TESTS=${KILN_VK_TESTS-lifecycle-only}
    export KILN_LIFECYCLE_CYCLES=${KILN_LIFECYCLE_CYCLES-3}
fi
if [ -z "${KILN_VK_FULL:-}" ]; then
    export KILN_REF_MODELS=${KILN_REF_MODELS-tiny-draft-f16,tiny-qwen3-f16,batching}
    export KILN_REF_MAX_TOKENS=${KILN_REF_MAX_TOKENS-32}
    export KILN_LIFECYCLE_CYCLES=${KILN_LIFECYCLE_CYCLES-5}
fi
model=models/tiny-target-q4_k_m.gguf
run=$build/bin/kiln-run

"$run" -m "$model" -p "In the beginning" -n 4 --temp 0 --backend vulkan > "$tmp/out" 2> "$tmp/err"; rc=$?
if [ "$rc" -ne 0 ]; then
    if grep -q -e "no device" -e "not available" -e "no Vulkan" -e "incompatible driver" "$tmp/err"; then
        echo "skip: no usable Vulkan device ($(tail -n 1 "$tmp/err"))"; exit 77
    fi
    bad device "rc=$rc: $(cat "$tmp/err")"; finish
fi
ok device

# Greedy text on an F16 model (a quantized one re-quantizes activations
# before every matmul, so float-order differences can flip a late token).
f16=${KILN_SHARED:-../shared}/models/tiny-target-f16.gguf
if [ -f "$f16" ]; then
    "$run" -m "$f16" -p "In the beginning" -n 24 --temp 0 -t 2 > "$tmp/cpu" 2> /dev/null
    "$run" -m "$f16" -p "In the beginning" -n 24 --temp 0 --backend vulkan > "$tmp/vk" 2> "$tmp/err"; rc=$?
    if [ "$rc" -eq 0 ] && cmp -s "$tmp/cpu" "$tmp/vk"; then ok greedy
    else bad greedy "rc=$rc: '$(cat "$tmp/vk")' vs cpu '$(cat "$tmp/cpu")' $(tail -n 2 "$tmp/err")"; fi
else
    skipped greedy "../shared not found"
fi

# The split Q4_0 layout through a model load (lib/model.c calls
# weight_prepare) against the GGUF layout: the same text.
q40=${KILN_SHARED:-../shared}/models/tiny-target-q4_0.gguf
if ! want layout; then :
elif [ -f "$q40" ]; then
    "$run" -m "$q40" -p "In the beginning" -n 24 --temp 0 --backend vulkan > "$tmp/split" 2> "$tmp/err"; rc=$?
    KILN_VK_LAYOUT=0 "$run" -m "$q40" -p "In the beginning" -n 24 --temp 0 --backend vulkan > "$tmp/gguf" 2>> "$tmp/err"
    rc2=$?
    if [ "$rc" -eq 0 ] && [ "$rc2" -eq 0 ] && [ -s "$tmp/split" ] && cmp -s "$tmp/split" "$tmp/gguf"; then ok layout
    else bad layout "rc=$rc/$rc2: '$(cat "$tmp/split")' vs GGUF layout '$(cat "$tmp/gguf")' $(tail -n 2 "$tmp/err")"; fi
else
    skipped layout "../shared not found"
fi

# A C test under KILN_BACKEND=vulkan: its own kt line decides.
ctest() {
    local name=$1; shift
    if [ ! -x "$build/test/$name" ]; then bad "$name" "$build/test/$name is missing"; return; fi
    env KILN_BACKEND=vulkan "$@" "$build/test/$name" > "$tmp/$name.log" 2>&1; local rc=$?
    local line
    line=$(grep -E '^kt: [0-9]+ passed, [0-9]+ failed' "$tmp/$name.log" | tail -n 1)
    if [ "$rc" -eq 0 ]; then ok "$name ($line)"
    elif [ "$rc" -eq 77 ]; then skipped "$name" "$(tail -n 1 "$tmp/$name.log")"
    else bad "$name" "rc=$rc $line"; grep -E '^(FAIL|not ok)|: (FAIL|fail)' "$tmp/$name.log" | head -n 20; fi
}

# the matrix-core batch kernel's staging, tails and output on this device,
# with plain products in place of the cooperative matrix calls (lavapipe
# has none); on a GPU with them test/device/vulkan.sh runs the real one
if want coopmat; then ctest test_vulkan_ops KILN_VK_COOPMAT_EMULATE=1; fi
# several activation rows through the float decode kernels (the integer
# dot product ones otherwise, where the device has them): their bits
# against the one-row integer kernels'
if want coopmat; then ctest test_vulkan_ops KILN_VK_NO_IDOT8=1; fi
# weight_prepare keeping every weight in the GGUF layout (Q4_0 is split
# into quants and scales otherwise: vk_layout.c)
if want coopmat; then ctest test_vulkan_ops KILN_VK_LAYOUT=0; fi
# every split Q4_0 weight summed in KQ order (by default only long, few
# rows: vk_layout.c): decode against verify rows, the fused entries against
# their separate forms, the split layout within tolerance of the GGUF one
if want coopmat; then
    ctest test_vulkan_ops KILN_VK_KQ=2 KILN_TEST_SKIP=test_matmul_float_tails,test_row_ops_and_attention,test_fused_add_rms_norm,test_fused_rope_kv_store,test_fused_quant_producers
fi
# Q4_K and Q6_K products of one x in one dispatch (by default one each:
# vk_fused.c): the multi-product kernels against matmul
if want coopmat; then
    ctest test_vulkan_ops KILN_VK_MULTI_KQUANT=1 KILN_TEST_SKIP=test_matmul_and_get_rows,test_matmul_float_tails,test_row_ops_and_attention,test_fused_add_rms_norm,test_fused_rope_kv_store,test_fused_quant_producers,test_fused_matmul_add_rms_norm,test_fused_prenorm,test_q4_0_split_layout,test_kq_order
fi
# the split Q4_0 layout through mm.glsl without subgroup shuffles (the
# default run takes mmsg_ and mmv_)
if want coopmat; then
    ctest test_vulkan_ops KILN_VK_NO_SUBGROUP=1 KILN_TEST_SKIP=test_matmul_float_tails,test_row_ops_and_attention,test_fused_add_rms_norm,test_fused_matmul_multi,test_fused_rope_kv_store,test_fused_quant_producers,test_mmv_unroll_bits
fi
if want attn; then
    ctest test_backend_attn KILN_ATTN_BACKEND=vulkan
    ctest test_backend_attn KILN_ATTN_BACKEND=vulkan KILN_VK_ATTN_EAGER=1
    ctest test_backend_attn KILN_ATTN_BACKEND=vulkan KILN_VK_ATTN_OLD=1
    # decode attention in splits of 32 positions from any context (the
    # default splits in contexts of 1024 cells and more), folded by the
    # row's last split and by attn_fold.comp
    ctest test_backend_attn KILN_ATTN_BACKEND=vulkan KILN_VK_ATTN_SPLIT=32 KILN_VK_ATTN_SPLIT_MIN=0
    ctest test_backend_attn KILN_ATTN_BACKEND=vulkan KILN_VK_ATTN_SPLIT=32 KILN_VK_ATTN_SPLIT_MIN=0 KILN_VK_ATTN_FOLD_APART=1
    # and splits whose length follows each row's (32 to 256 positions)
    ctest test_backend_attn KILN_ATTN_BACKEND=vulkan KILN_VK_ATTN_SPLIT=256 KILN_VK_ATTN_SPLIT_SHORT=32 KILN_VK_ATTN_SPLIT_MIN=0
fi
if want reference; then ctest test_reference; fi
if [[ " ${KILN_VK_TESTS:-} " == *" lifecycle-only "* ]]; then ctest test_lifecycle; fi
if want lifecycle; then
    ctest test_lifecycle
    ctest test_kv
    # speculative generation is hundreds of decode steps per case (and
    # every allocation fault point repeats them): on lavapipe only the
    # argument and vocabulary checks, unless KILN_VK_FULL
    if [ -n "${KILN_VK_FULL:-}" ]; then ctest test_draft
    else ctest test_draft KILN_TEST_SKIP=test_greedy_with_tiny_draft,test_target_as_own_draft,test_low_level_steps,test_suspend_follows_target,test_free_orders,test_alloc_failures; fi
fi
if want split; then
    sdir=${KILN_SHARED:-../shared}/models
    if [ -f "$sdir/tiny-target-f16.gguf" ]; then
        smodels=$sdir/tiny-target-f16.gguf
        [ -f "$sdir/tiny-qwen3-f16.gguf" ] && smodels=$smodels,$sdir/tiny-qwen3-f16.gguf
        if [ -n "${KILN_VK_FULL:-}" ]; then
            ctest test_split KILN_SPLIT_DEVICES=cpu:0,vulkan:0 KILN_SPLIT_BASE=cpu:0 KILN_SPLIT_TOL=0.05 \
                KILN_SPLIT_MODELS="$smodels"
        else
            ctest test_split KILN_SPLIT_DEVICES=cpu:0,vulkan:0 KILN_SPLIT_BASE=cpu:0 KILN_SPLIT_TOL=0.05 \
                KILN_SPLIT_MODELS="$smodels" KILN_SPLIT_UBATCHES=512 KILN_TEST_SKIP=test_draft
        fi
    else
        skipped split "tiny-target-f16 not found"
    fi
fi
if want proof; then ctest test_proof KILN_PROOF_CYCLES="${KILN_VK_PROOF_CYCLES:-3}" KILN_PROOF_FAULT=0; fi

if want validation; then
    if [ -n "${SANITIZE:-}" ]; then
        skipped validation "not under sanitizers"
    elif VK_LOADER_LAYERS_ENABLE='*validation*' VK_INSTANCE_LAYERS=VK_LAYER_KHRONOS_validation \
         vulkaninfo --summary 2>/dev/null | grep -q VK_LAYER_KHRONOS_validation ||
         [ -f /usr/share/vulkan/explicit_layer.d/VkLayer_khronos_validation.json ]; then
        # with synchronization validation: the backend records only the
        # barriers it needs (hazard tracking); a prompt over 8 tokens takes
        # the batch kernels, the decode steps the recorded graphs
        VK_INSTANCE_LAYERS=VK_LAYER_KHRONOS_validation VK_LOADER_LAYERS_ENABLE='*validation*' \
        VK_LAYER_ENABLES=VK_VALIDATION_FEATURE_ENABLE_SYNCHRONIZATION_VALIDATION_EXT \
            "$run" -m "$model" -p "In the beginning God created the heaven and the earth, and the earth was" \
            -n 8 --temp 0 --backend vulkan > "$tmp/val" 2>&1; rc=$?
        if [ "$rc" -eq 0 ] && ! grep -q -i -e "validation error" -e "VUID-" -e "SYNC-HAZARD" "$tmp/val"; then ok validation
        else bad validation "rc=$rc: $(grep -i -m 5 -e 'validation' -e 'VUID' "$tmp/val")"; fi
    else
        skipped validation "VK_LAYER_KHRONOS_validation not installed (Debian: vulkan-validationlayers)"
    fi
fi
finish
