// header_cxx.cpp - compiled by test/abi.sh as C++11 with -pedantic -Werror:
// C++ callers include both public headers directly (extern "C", no C-only
// constructs such as designated initializers or flexible arrays leaking out).
#include "kiln.h"
#include "kiln_backend.h"

#include <cstddef>

static_assert(offsetof(kiln_model_params, struct_size) == 0, "struct_size first");
static_assert(offsetof(kiln_context_params, struct_size) == 0, "struct_size first");
static_assert(offsetof(kiln_sampler_params, struct_size) == 0, "struct_size first");
static_assert(offsetof(kiln_model_info, struct_size) == 0, "struct_size first");
static_assert(offsetof(kiln_batch, struct_size) == 0, "struct_size first");
static_assert(sizeof(kiln_status) == 4, "kiln_status is 32 bits");

namespace {
// Taking the address checks the C linkage and the exact signatures.
kiln_status (*const create_fn)(kiln_model *, const kiln_context_params *,
                               kiln_context **) = kiln_context_create;
const kiln_backend_iface *(*entry_fn)(uint32_t) = nullptr;
}

int kiln_abi_header_cxx();
int kiln_abi_header_cxx() {
    kiln_context_params p = {};
    p.struct_size = static_cast<uint32_t>(sizeof p);
    kiln_backend_entry_fn fn = entry_fn;
    (void)create_fn;
    (void)fn;
    return static_cast<int>(p.struct_size);
}
