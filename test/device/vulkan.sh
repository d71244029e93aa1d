#!/bin/bash
# test/device/vulkan.sh [MODEL.gguf...] - the Vulkan backend on a GPU machine,
# given a tree built elsewhere (carry build/ and, for the loader, .gl/).
#
#   1. makes the Vulkan loader available: if `ldconfig -p` has no
#      libvulkan.so.1, unpacks .gl/*.deb (prepared as
#      /work/.library/device/README.md describes) and points the loader at
#      NVIDIA's ICD when it cannot find one itself;
#   2. runs test_vulkan_ops (matrix-core and portable batch kernels), then
#      test/vulkan.sh (reference suite, lifecycle tests, proof with a
#      few cycles, validation layer when installed, greedy text vs CPU);
#   3. kiln-bench --backend vulkan (pp512, tg128, 3 repetitions) on each
#      MODEL given, and the same with --backend cuda when libkiln-cuda.so
#      was built, for the ratio, and tg128 with KILN_VK_NO_FUSED=1 (the
#      decode step's separate operations: before/after the fusions) and
#      with KILN_VK_MMV_UNROLL=0 (the 8-row decode kernels instead of the
#      default one-row ones) and KILN_VK_NO_IDOT=1 (no integer dot
#      products), and pp512/tg128 with KILN_VK_LAYOUT=0 (Q4_0 weights kept in
#      the GGUF layout: before/after the split layout); then
#      KILN_VK_PROFILE=1 (per-kernel times, graphs off) into
#      profile-NAME.txt; where the matrix-core kernel ran, pp512 and the
#      profile again with the previous one (KILN_VK_MMC_OLD=1) into
#      bench-vulkan-mmcold-NAME.txt / profile-mmcold-NAME.txt.
#      Also pp512 and the profile with the previous prefill attention
#      (KILN_VK_ATTN_OLD=1) into bench-vulkan-attnold-NAME.txt /
#      profile-attnold-NAME.txt; where the matrix-core attention ran, the
#      profile with the portable one (KILN_VK_ATTN_PORTABLE=1) into
#      profile-attnportable-NAME.txt.
# Logs go to $OUT (the device tool's output folder) or /tmp/kiln-vulkan.
# KILN_VK_BENCH_ONLY=1 skips steps 2 (tests) and runs the benchmarks only.
# Example (from the repository root on the device machine):
#   bash test/device/vulkan.sh mistral-7b:q4_0 mistral-7b:q4_k_m mistral-7b:f16
# (SHAPE:TYPE arguments are generated with kiln-gen-model into /tmp; a path
# to a .gguf is used as it is.)
# build/ is larger than what travels to the device; on the build machine
#   bash test/device/vulkan.sh --pack build-device
# copies what these tests need, stripped (a few MiB), into build-device/;
# carry it (and .gl) and run with KILN_BUILD=build-device.
set -u
cd "$(dirname "$0")/../.."
if [ "${1:-}" = "--pack" ]; then
    dst=${2:-build-device}; src=${KILN_BUILD:-build}
    rm -rf "$dst"; mkdir -p "$dst/bin" "$dst/test"
    cp -P "$src"/libkiln.so* "$dst/"
    for f in "$src"/libkiln-*.so; do [ -f "$f" ] && cp "$f" "$dst/"; done
    cp "$src"/bin/kiln-run "$src"/bin/kiln-bench "$src"/bin/kiln-gen-model "$dst/bin/"
    for t in test_reference test_lifecycle test_kv test_draft test_proof test_vulkan_ops test_split test_backend_attn test_cuda_ops; do
        cp "$src/test/$t" "$dst/test/"; done
    strip "$dst"/bin/* "$dst"/test/* "$dst"/libkiln.so.*.*.* 2>/dev/null
    du -sh "$dst"; exit 0
fi
build=${KILN_BUILD:-build}
# the device tool brings back only a few files from $OUT: the logs are
# written to a folder of their own and gathered into $OUT/vulkan-logs.txt
final=${OUT:-}
out=${final:+/tmp/kiln-vulkan-logs}
out=${out:-/tmp/kiln-vulkan}
rm -rf /tmp/kiln-vulkan-logs
mkdir -p "$out"
if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1' && ls .gl/*.deb >/dev/null 2>&1; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
nv_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$nv_icd" ]; then
    export VK_DRIVER_FILES=$nv_icd
fi
export KILN_BACKEND_PATH=$build
# the device machine carries ../shared as shared/ inside the tree
if [ -z "${KILN_SHARED:-}" ] && [ ! -d ../shared ] && [ -d shared ]; then export KILN_SHARED=$PWD/shared; fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$out/gpu.txt"

if [ -z "${KILN_VK_BENCH_ONLY:-}" ]; then
echo "== test_vulkan_ops"
# by default batches go to the matrix-core kernel (VK_NV_cooperative_matrix)
# where the driver has it; the last line says which path ran
KILN_VK_OPS_VERBOSE=1 "$build/test/test_vulkan_ops" 2>&1 | tee "$out/ops.txt"
ops_rc=${PIPESTATUS[0]}
echo "== test_vulkan_ops, portable batch kernel (KILN_VK_NO_COOPMAT=1)"
KILN_VK_NO_COOPMAT=1 "$build/test/test_vulkan_ops" 2>&1 | tail -n 2 | tee "$out/ops-portable.txt"
echo "== test_vulkan_ops, previous matrix-core kernel (KILN_VK_MMC_OLD=1)"
KILN_VK_MMC_OLD=1 "$build/test/test_vulkan_ops" 2>&1 | tail -n 2 | tee "$out/ops-mmcold.txt"
if [ "$ops_rc" -ne 0 ] && grep -q "cooperative matrices" "$out/ops.txt" && grep -q " 0 failed" "$out/ops-mmcold.txt"; then
    # the new matrix-core kernel is wrong on this driver, the previous one
    # is not: measure the rest with the previous one
    echo "!! test_vulkan_ops fails with the new matrix-core kernel only: KILN_VK_MMC_OLD=1 from here on" | tee -a "$out/ops.txt"
    export KILN_VK_MMC_OLD=1
elif [ "$ops_rc" -ne 0 ] && grep -q "cooperative matrices" "$out/ops.txt" && grep -q "0 failed" "$out/ops-portable.txt"; then
    # the matrix-core kernel is wrong on this driver: say so, and let the
    # rest of the run measure everything else on the portable kernel
    echo "!! test_vulkan_ops fails with cooperative matrices only: KILN_VK_NO_COOPMAT=1 from here on" | tee -a "$out/ops.txt"
    export KILN_VK_NO_COOPMAT=1
fi
# prefill attention (matrix cores where the driver has them), with the
# rescale path taken whenever a max grows, without matrix cores, and the
# previous kernel; per-kernel times at the end of each (KILN_VK_PROFILE)
echo "== test_backend_attn: default, KILN_VK_ATTN_EAGER=1, KILN_VK_ATTN_PORTABLE=1, KILN_VK_ATTN_OLD=1"
attn_ok=""
for mode in "" KILN_VK_ATTN_EAGER=1 KILN_VK_ATTN_PORTABLE=1 KILN_VK_ATTN_OLD=1; do
    echo "-- ${mode:-default}" | tee -a "$out/attn.txt"
    env $mode KILN_ATTN_BACKEND=vulkan KILN_VK_PROFILE=1 "$build/test/test_backend_attn" > "$out/attn-run.txt" 2>&1
    rc=$?
    cat "$out/attn-run.txt" | tee -a "$out/attn.txt"
    [ "$rc" -eq 0 ] && attn_ok="$attn_ok ${mode:-default}"
done
rm -f "$out/attn-run.txt"
# a prefill attention kernel that is wrong on this driver: the rest of the
# run measures the next one that passed
if [[ " $attn_ok " != *" default "* ]]; then
    if [[ " $attn_ok " == *" KILN_VK_ATTN_PORTABLE=1 "* ]]; then
        echo "!! test_backend_attn fails with the matrix-core attention: KILN_VK_ATTN_PORTABLE=1 from here on" | tee -a "$out/attn.txt"
        export KILN_VK_ATTN_PORTABLE=1
    else
        echo "!! test_backend_attn fails with the tiled attention: KILN_VK_ATTN_OLD=1 from here on" | tee -a "$out/attn.txt"
        export KILN_VK_ATTN_OLD=1
    fi
fi
echo "== test/vulkan.sh"
KILN_BUILD=$build KILN_VK_FULL=1 KILN_VK_PROOF_CYCLES=${KILN_VK_PROOF_CYCLES:-20} bash test/vulkan.sh 2>&1 | tee "$out/tests.txt"
fi

for m in "$@"; do
    case "$m" in
    *:*) # SHAPE:TYPE, e.g. mistral-7b:q4_0: a random model from kiln-gen-model
        shape=${m%%:*}; type=${m##*:}; f=/tmp/$shape-$type.gguf
        vocab=${KILN_SHARED:-../shared}/vocab/vocab-llama-spm.gguf
        [ -f "$f" ] || "$build/bin/kiln-gen-model" --shape "$shape" --type "$type" --vocab "$vocab" -o "$f" -q \
            > "$out/gen-$shape-$type.txt" 2>&1
        [ -f "$f" ] || { echo "cannot generate $m: $(tail -n 2 "$out/gen-$shape-$type.txt")"; continue; }
        m=$f ;;
    esac
    name=$(basename "$m" .gguf)
    echo "== kiln-bench vulkan $name"
    # KILN_VK_STATS: the decode graphs recorded/replayed/redone, at exit
    KILN_VK_STATS=1 "$build/bin/kiln-bench" --backend vulkan -m "$m" -p 512 -n 128 -r 3 2>&1 | tee "$out/bench-vulkan-$name.txt"
    echo "== kiln-bench vulkan $name, KILN_VK_NO_FUSED=1 (decode with the separate operations)"
    KILN_VK_NO_FUSED=1 KILN_VK_STATS=1 "$build/bin/kiln-bench" --backend vulkan -m "$m" -p 0 -n 128 -r 3 2>&1 \
        | tee "$out/bench-vulkan-nofused-$name.txt"
    echo "== kiln-bench vulkan $name, KILN_VK_MMV_UNROLL=0 (the 8-row decode kernels)"
    KILN_VK_MMV_UNROLL=0 "$build/bin/kiln-bench" --backend vulkan -m "$m" -p 0 -n 128 -r 3 2>&1 \
        | tee "$out/bench-vulkan-unroll0-$name.txt"
    echo "== kiln-bench vulkan $name, KILN_VK_NO_IDOT=1 (no integer dot products)"
    KILN_VK_NO_IDOT=1 "$build/bin/kiln-bench" --backend vulkan -m "$m" -p 0 -n 128 -r 3 2>&1 \
        | tee "$out/bench-vulkan-noidot-$name.txt"
    echo "== kiln-bench vulkan $name, KILN_VK_LAYOUT=0 (weights in the GGUF layout: no split Q4_0)"
    KILN_VK_LAYOUT=0 "$build/bin/kiln-bench" --backend vulkan -m "$m" -p 512 -n 128 -r 3 2>&1 \
        | tee "$out/bench-vulkan-gguf-$name.txt"
    if [ -f "$build/libkiln-cuda.so" ]; then
        echo "== kiln-bench cuda $name"
        "$build/bin/kiln-bench" --backend cuda -m "$m" -p 512 -n 128 -r 3 2>&1 | tee "$out/bench-cuda-$name.txt"
    fi
    KILN_VK_PROFILE=1 "$build/bin/kiln-bench" --backend vulkan -m "$m" -p 512 -n 16 -r 1 > /dev/null 2> "$out/profile-$name.txt"
    if [ -z "${KILN_VK_MMC_OLD:-}" ] && grep -q "mmc_" "$out/profile-$name.txt"; then
        echo "== kiln-bench vulkan $name, previous matrix-core kernel (KILN_VK_MMC_OLD=1)"
        KILN_VK_MMC_OLD=1 "$build/bin/kiln-bench" --backend vulkan -m "$m" -p 512 -n 0 -r 3 2>&1 | tee "$out/bench-vulkan-mmcold-$name.txt"
        KILN_VK_MMC_OLD=1 KILN_VK_PROFILE=1 "$build/bin/kiln-bench" --backend vulkan -m "$m" -p 512 -n 0 -r 1 > /dev/null \
            2> "$out/profile-mmcold-$name.txt"
    fi
    # the prefill attention's previous kernel (attention.comp for every ubatch)
    echo "== kiln-bench vulkan $name, previous prefill attention (KILN_VK_ATTN_OLD=1)"
    KILN_VK_ATTN_OLD=1 "$build/bin/kiln-bench" --backend vulkan -m "$m" -p 512 -n 0 -r 3 2>&1 | tee "$out/bench-vulkan-attnold-$name.txt"
    KILN_VK_ATTN_OLD=1 KILN_VK_PROFILE=1 "$build/bin/kiln-bench" --backend vulkan -m "$m" -p 512 -n 0 -r 1 > /dev/null \
        2> "$out/profile-attnold-$name.txt"
    if grep -q "attn_mc_" "$out/profile-$name.txt"; then
        # the tiled attention without matrix cores (the products keep
        # them): its per-call time in the profile
        KILN_VK_ATTN_PORTABLE=1 KILN_VK_PROFILE=1 "$build/bin/kiln-bench" --backend vulkan -m "$m" -p 512 -n 0 -r 1 > /dev/null \
            2> "$out/profile-attnportable-$name.txt"
    fi
    grep -h -e "mmc" -e "attn" -e "attention" "$out/profile-$name.txt" "$out/profile-mmcold-$name.txt" \
        "$out/profile-attnold-$name.txt" "$out/profile-attnportable-$name.txt" 2>/dev/null
done
if [ -n "$final" ]; then
    for f in "$out"/*; do echo "=== $(basename "$f")"; cat "$f"; done > "$final/vulkan-logs.txt"
    out=$final/vulkan-logs.txt
fi
echo "logs in $out"
