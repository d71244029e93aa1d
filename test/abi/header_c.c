/*
 * header_c.c - compiled by test/abi.sh as C99 with -pedantic -Werror (and as
 * C11 by clang when present): both public headers must be valid, complete
 * and warning-free for any C caller, and every public struct must start with
 * struct_size (the struct-size protocol of include/kiln.h).
 */
#include "kiln.h"
#include "kiln_backend.h"
#include "kiln.h" /* include guards */

#include <stddef.h>

#define KILN_ABI_CHECK(name, cond) typedef char name[(cond) ? 1 : -1]

KILN_ABI_CHECK(model_params_size_first, offsetof(kiln_model_params, struct_size) == 0);
KILN_ABI_CHECK(model_info_size_first, offsetof(kiln_model_info, struct_size) == 0);
KILN_ABI_CHECK(context_params_size_first, offsetof(kiln_context_params, struct_size) == 0);
KILN_ABI_CHECK(batch_size_first, offsetof(kiln_batch, struct_size) == 0);
KILN_ABI_CHECK(sampler_params_size_first, offsetof(kiln_sampler_params, struct_size) == 0);
KILN_ABI_CHECK(backend_iface_size_first, offsetof(kiln_backend_iface, struct_size) == 0);
KILN_ABI_CHECK(quantize_params_size_first, offsetof(kiln_quantize_params, struct_size) == 0);
KILN_ABI_CHECK(status_is_32_bits, sizeof(kiln_status) == 4);
KILN_ABI_CHECK(version_number, KILN_VERSION_NUMBER ==
               KILN_VERSION_MAJOR * 10000 + KILN_VERSION_MINOR * 100 + KILN_VERSION_PATCH);

/* Function pointer types must match the declarations exactly. */
static const char *(*const status_str_fn)(kiln_status) = kiln_status_str;
static kiln_status (*const load_fn)(const char *, const kiln_model_params *,
                                    kiln_model **) = kiln_model_load;

int kiln_abi_header_c(void);
int kiln_abi_header_c(void) {
    kiln_context_params p;
    p.struct_size = (uint32_t)sizeof p;
    (void)status_str_fn;
    (void)load_fn;
    return (int)p.struct_size + KILN_BACKEND_ABI_VERSION;
}
