/*
 * getrows.glsl - dst row r = row ids[r] of a table of type WTYPE, as F32.
 * One invocation per 32-element chunk (float types: per element).
 */
layout(local_size_x = 64) in;

layout(binding = 0) readonly buffer WB { uint W[]; };
layout(binding = 1) writeonly buffer DB { float D[]; };
layout(binding = 2) readonly buffer IB { int ids[]; };
layout(binding = 3) readonly buffer AB { uint A[]; }; /* unused: types.glsl reads A */

layout(push_constant) uniform P {
    uint t_off, t_stride;   /* bytes */
    uint d_off, d_stride;   /* words */
    uint n;                 /* elements per row */
    uint rows;
    uint ids_off;           /* words */
} p;

#define KILN_BYTES
#define ROW_K p.n /* types.glsl: split Q4_0 rows find their scales after K/2 bytes */
#include "common.glsl"
#include "types.glsl"

void main() {
    uint r = gl_WorkGroupID.y;
    uint i = gl_GlobalInvocationID.x;
    uint row = p.t_off + uint(ids[p.ids_off + r]) * p.t_stride;
    uint out0 = p.d_off + r * p.d_stride;
#if WTYPE == T_F32 || WTYPE == T_F16 || WTYPE == T_BF16
    if (i >= p.n) return;
#if WTYPE == T_F32
    D[out0 + i] = uintBitsToFloat(w_u32(row + 4u * i));
#elif WTYPE == T_F16
    D[out0 + i] = h2f(w_u16(row + 2u * i));
#else
    D[out0 + i] = bf2f(w_u16(row + 2u * i));
#endif
#else
    if (32u * i >= p.n) return;
    float v[32];
    deq32(row, i, v);
    for (uint k = 0u; k < 32u; k++) D[out0 + 32u * i + k] = v[k];
#endif
}
