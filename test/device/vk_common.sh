# test/device/vk_common.sh - sourced by the Vulkan device scripts
# (vkprof.sh, vkpp.sh) from the repository root, with $build set:
# installs the carried Vulkan loader (.gl/*.deb) where the machine lacks
# one, points the loader at NVIDIA's driver and kiln at $build's plugins.
if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1' && ls .gl/*.deb >/dev/null 2>&1; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
nv_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$nv_icd" ]; then export VK_DRIVER_FILES=$nv_icd; fi
export KILN_BACKEND_PATH=$PWD/$build

# vk_model SHAPE:TYPE: the path of a kiln-gen-model file of that shape and
# type in /tmp (generated unless it is there already), or nothing.
vk_model() {
    local shape=${1%%:*} type=${1##*:} f=/tmp/${1%%:*}-${1##*:}.gguf
    [ -f "$f" ] || "$build/bin/kiln-gen-model" --shape "$shape" --type "$type" \
        --vocab "${KILN_SHARED:-devdata/shared}/vocab/vocab-llama-spm.gguf" -o "$f" -q >/dev/null 2>&1
    [ -f "$f" ] && echo "$f"
}

# vk_bench FILE CUDA LINES ARGS...: kiln-bench ARGS on Vulkan and, where
# CUDA is non-empty and the CUDA plugin was carried, on CUDA (the ratio
# from one machine start); the last LINES lines of each.
vk_bench() {
    local f=$1 cuda=$2 lines=$3
    shift 3
    "$build/bin/kiln-bench" --backend vulkan -m "$f" "$@" 2>&1 | tail -n "$lines"
    if [ -n "$cuda" ] && [ -f "$build/libkiln-cuda.so" ]; then
        "$build/bin/kiln-bench" --backend cuda -m "$f" "$@" 2>&1 | tail -n "$lines"
    fi
}
