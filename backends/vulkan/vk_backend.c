/*
 * vk_backend.c - the Vulkan backend's iface and the plugin's entry point
 * (kiln_backend_entry, the one symbol libkiln-vulkan.so exports).
 */
#include "vk_internal.h"

static int32_t vk_supports_type(int32_t index, int32_t type) {
    return index >= 0 && kiln_vk_type_slot(type) >= 0;
}

static void vk_device_close(kiln_bk_device *dev) { kiln_vk_device_close(dev); }

static kiln_status vk_buffer_copy(kiln_bk_device *dev, kiln_bk_buffer *dst, uint64_t dst_offset,
                                  const kiln_bk_buffer *src, uint64_t src_offset, uint64_t size) {
    return kiln_vk_copy(dev, dst, dst_offset, src, src_offset, size);
}

static kiln_status vk_synchronize(kiln_bk_device *dev) {
    if (!dev) return kiln_error(KILN_E_INVALID_ARG, "vulkan backend: synchronize: device is NULL");
    return kiln_vk_finish(dev);
}

static const kiln_backend_iface vk_iface = {
    .struct_size = sizeof(kiln_backend_iface),
    .abi_version = KILN_BACKEND_ABI_VERSION,
    .name = "vulkan",
    .device_count = kiln_vk_device_count,
    .device_info = kiln_vk_device_info,
    .supports_type = vk_supports_type,
    .device_open = kiln_vk_device_open,
    .device_close = vk_device_close,
    .buffer_alloc = kiln_vk_buffer_alloc,
    .buffer_wrap_host = NULL,   /* device memory: the core allocates and uploads */
    .buffer_free = kiln_vk_buffer_free,
    .buffer_upload = kiln_vk_upload,
    .buffer_download = kiln_vk_download,
    .buffer_copy = vk_buffer_copy,
    .buffer_host_ptr = NULL,
    .synchronize = vk_synchronize,
    .pool_stats = kiln_vk_pool_stats,
    .pool_set_cap = kiln_vk_pool_set_cap,
    .pool_purge = kiln_vk_pool_purge,
    .set_ubatch = kiln_vk_set_ubatch,
    .get_rows = kiln_vk_get_rows,
    .rms_norm = kiln_vk_rms_norm,
    .matmul = kiln_vk_matmul,
    .add = kiln_vk_add,
    .rope = kiln_vk_rope,
    .swiglu = kiln_vk_swiglu,
    .kv_store = kiln_vk_kv_store,
    .attention = kiln_vk_attention,
    .set_host = kiln_vk_set_host,
    .graph_begin = kiln_vk_graph_begin, /* vk_graph.c */
    .graph_end = kiln_vk_graph_end,
    .add_rms_norm = kiln_vk_add_rms_norm, /* vk_fused.c */
    .matmul_multi = kiln_vk_matmul_multi,
    .rope_kv_store = kiln_vk_rope_kv_store,
    .rope_kv_attention = kiln_vk_rope_kv_attention,
    .matmul_add_rms_norm = kiln_vk_matmul_add_rms_norm, /* vk_fused.c */
    .matmul_swiglu = kiln_vk_matmul_swiglu,             /* vk_fused.c */
    .weight_prepare = kiln_vk_weight_prepare, /* vk_layout.c */
    .prenorm_fused = kiln_vk_prenorm_fused,   /* vk_fused.c */
    .matmul_add = kiln_vk_matmul_add,
    .rms_norm_matmul_multi = kiln_vk_rms_norm_matmul_multi,
    .rms_norm_matmul_swiglu = kiln_vk_rms_norm_matmul_swiglu,
};

KILN_API const kiln_backend_iface *kiln_backend_entry(uint32_t abi_version) {
    return abi_version == KILN_BACKEND_ABI_VERSION ? &vk_iface : NULL;
}
