# test/device/vk_common.sh - sourced by the Vulkan device scripts
# (vkprof.sh, vkpp.sh) from the repository root, with $build set:
# unpacks the carried loaders (.gl/*.deb, the device README's list), points
# the loader at NVIDIA's driver and kiln at $build's plugins.
# The device README: unpack the carried loaders in every run (a machine
# may have libvulkan but not libglvnd, which NVIDIA's ICD needs).
if ls .gl/*.deb >/dev/null 2>&1; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
nv_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$nv_icd" ] || nv_icd=$(find /usr/local/nvidia /usr/share/vulkan /etc/vulkan -name 'nvidia_icd*.json' 2>/dev/null | head -n 1)
if [ -z "${VK_DRIVER_FILES:-}" ] && [ -n "$nv_icd" ] && [ -f "$nv_icd" ]; then export VK_DRIVER_FILES=$nv_icd; fi
[ -f /usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json ] &&
    export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
echo "vk_common: loader $(ldconfig -p | grep -c 'libvulkan.so.1') ICD ${VK_DRIVER_FILES:-none}"
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
