/*
 * touch.comp - the iface's prefetch hint: reads [0, p.n16 * 16) bytes of
 * binding 0 (a weight the next operations read) so that they are in the
 * GPU's L2 when the product that needs them starts. Recorded without a
 * barrier after a dispatch that leaves memory idle (a decode step's
 * attention, a product's last workgroups and fused epilogue), it uses
 * bandwidth nothing else uses then. The values are dropped: a write to
 * the sink (binding 1, this dispatch's own 16 bytes) only where every
 * loaded word XORs to p.magic's pattern keeps the loads, and changes
 * nothing kiln reads. Each invocation takes 16-byte pieces a grid apart,
 * four in flight.
 */
#version 450
layout(local_size_x = 256) in;
layout(binding = 0) readonly buffer WB { uvec4 W[]; };
layout(binding = 1) writeonly buffer SB { uint S[]; };
layout(push_constant) uniform P { uint n16, magic; } p;

void main() {
    const uint stride = gl_NumWorkGroups.x * 256u;
    uvec4 acc = uvec4(0u);
    for (uint i = gl_GlobalInvocationID.x; i < p.n16; i += 4u * stride) {
        uvec4 a = W[i];
        uvec4 b = i + stride < p.n16 ? W[i + stride] : uvec4(0u);
        uvec4 c = i + 2u * stride < p.n16 ? W[i + 2u * stride] : uvec4(0u);
        uvec4 d = i + 3u * stride < p.n16 ? W[i + 3u * stride] : uvec4(0u);
        acc ^= a ^ b ^ c ^ d;
    }
    if (acc.x == p.magic && acc.y == ~p.magic && acc.z == p.magic && acc.w == ~p.magic) S[gl_LocalInvocationID.x & 3u] = acc.x;
}
