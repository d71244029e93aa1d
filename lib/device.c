/*
 * device.c - public device enumeration: kiln_backend_device_count/info.
 * Both go through the backend iface's device_count/device_info, which the
 * backend ABI forbids from creating a device context or allocating on a
 * device, so enumerating never opens anything (a plugin backend is loaded,
 * which is process-wide and stays loaded, see backend.h).
 */
#include <stdio.h>
#include <string.h>

#include "backend.h"
#include "internal.h"

void kiln_device_info_init_sized(kiln_device_info *info, uint32_t size) {
    kiln_device_info d;
    memset(&d, 0, sizeof d);
    kiln_params_emit(info, size, &d, sizeof d);
}

int32_t kiln_backend_device_count(const char *backend) {
    kiln_error_clear();
    const kiln_backend_iface *bk;
    if (kiln_backend_find(backend, &bk) != KILN_OK) return -1;
    int32_t n = bk->device_count();
    if (n < 0) {
        kiln_error(KILN_E_BACKEND, "backend '%s' failed to count its devices", bk->name);
        return -1;
    }
    return n;
}

kiln_status kiln_backend_device_info(const char *backend, int32_t index, kiln_device_info *info) {
    kiln_error_clear();
    if (!info || info->struct_size < sizeof(uint32_t))
        return kiln_error(KILN_E_INVALID_ARG, "kiln_backend_device_info: info is NULL or its struct_size is bad");
    const kiln_backend_iface *bk;
    kiln_status st = kiln_backend_find(backend, &bk);
    if (st) return st;
    int32_t n = bk->device_count();
    if (index < 0 || index >= n)
        return kiln_error(KILN_E_NOT_FOUND, "backend '%s' has no device %d (%d devices)", bk->name, index,
                          n < 0 ? 0 : n);
    kiln_bk_device_info bi;
    memset(&bi, 0, sizeof bi);
    bi.struct_size = sizeof bi;
    if ((st = bk->device_info(index, &bi))) {
        char msg[256]; /* copied: the message buffer is also the output's */
        snprintf(msg, sizeof msg, "%s", kiln_last_error());
        return kiln_error(st, "backend '%s': device %d: %s", bk->name, index, msg);
    }
    kiln_device_info full;
    memset(&full, 0, sizeof full);
    snprintf(full.name, sizeof full.name, "%s", bi.name);
    snprintf(full.backend, sizeof full.backend, "%s", bk->name);
    full.mem_total = bi.mem_total;
    full.mem_free = bi.mem_free;
    full.flags = (bi.flags & KILN_BK_DEVICE_HOST_MEMORY) ? KILN_DEVICE_HOST_MEMORY : 0;
    /* write only what the caller's struct has room for */
    uint32_t n_bytes = info->struct_size < sizeof full ? info->struct_size : (uint32_t)sizeof full;
    full.struct_size = n_bytes;
    memcpy(info, &full, n_bytes);
    return KILN_OK;
}
