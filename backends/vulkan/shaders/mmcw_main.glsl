/*
 * mmcw_main.glsl - the warp-specialized form of mmc.glsl's batch matmul
 * (mmcw_TYPE.comp: mmc.glsl with MMC_WS, which includes this for its
 * shared memory and main; KILN_VK_MMC_WS selects it on devices with
 * cooperative matrices). The same 128 x 128 tile, fetch and decode as
 * mmc.glsl, K in 32-element stages through two halves of the tile, but
 * the workgroup's eight subgroups split the work:
 *   - subgroups 0-3 multiply: 64 x 64 of the tile each (4 x 4 accumulators;
 *     per 16-wide step of K eight fragment loads feed sixteen products);
 *   - subgroups 4-7 move data: while stage s is multiplied in one half,
 *     they store stage s + 1 (already decoded to F16 in registers) into the
 *     other half, decode stage s + 2 and issue the global loads of stage
 *     s + 3, so a load has two stages to arrive and the decode runs beside
 *     the products. One barrier per stage.
 * Why: in mmc.glsl every invocation both waits on its loads and multiplies,
 * and with one workgroup per SM (its registers and shared memory) the
 * loads' latency set the pace: the products and fragment loads alone run
 * ~2.2x faster than the whole kernel (H100, KILN_VK_MMC_SKIP, bench/NOTES.md).
 *
 * The two roles run loops of their own with the same barriers: in one
 * shared loop the compiler keeps the movers' registers and the
 * multipliers' accumulators live together (255 registers and spills on
 * NVIDIA's driver). A barrier in control flow that is uniform per subgroup
 * but not per workgroup is outside what SPIR-V promises; NVIDIA's barrier
 * counts subgroups, which is why this form is opt-in and checked on the
 * device (test_vulkan_ops).
 */
#define WS_ROWV 5u  /* vectors per staged row: 32 elements + one of padding */
#define WS_PARTS 4u /* parts of each tile per moving invocation per stage */
#define WS_HALF (128u * WS_ROWV)
shared uvec4 As[2u * WS_HALF];
shared uvec4 Bs[2u * WS_HALF];

/* Stage (chunk) c's raw parts for moving invocation pt (0..127): part t =
 * pt + 128 j is row t / 4, elements 8 (t % 4) .. + 7 of the chunk. */
struct WsRaw { uvec4 x[WS_PARTS]; WRaw w[WS_PARTS]; };
struct WsParts { uvec4 x[WS_PARTS]; uvec4 w[WS_PARTS]; };

void ws_fetch(uint c, uint m0, uint n0, uint pt, inout WsRaw r) {
    [[unroll]] for (uint j = 0u; j < WS_PARTS; j++) {
        uint t = pt + 128u * j;
        r.x[j] = X4[p.x_off + min(m0 + (t >> 2), p.M - 1u) * p.x_stride + 4u * c + (t & 3u)];
        r.w[j] = fetch_w(c, n0 + (t >> 2), 8u * (t & 3u));
    }
}

void ws_decode(uint c, uint n0, uint pt, WsRaw r, out WsParts d) {
    [[unroll]] for (uint j = 0u; j < WS_PARTS; j++) {
        uint t = pt + 128u * j;
        d.x[j] = r.x[j];
        d.w[j] = decode_w(c, n0 + (t >> 2), 8u * (t & 3u), r.w[j]);
    }
}

void ws_store(uint h, uint pt, WsParts d) {
    [[unroll]] for (uint j = 0u; j < WS_PARTS; j++) {
        uint t = pt + 128u * j, i = h * WS_HALF + (t >> 2) * WS_ROWV + (t & 3u);
        As[i] = d.x[j];
        Bs[i] = d.w[j];
    }
}

void main() {
    const uint tid = gl_LocalInvocationID.x;
    const uint n0 = p.n_base + (MFIRST != 0u ? gl_WorkGroupID.y : gl_WorkGroupID.x) * 128u;
    const uint m0 = (MFIRST != 0u ? gl_WorkGroupID.x : gl_WorkGroupID.y) * 128u;
    const uint nst = (p.K + 31u) / 32u, last = nst - 1u; /* stages = chunks */
    const uint sg = gl_SubgroupID;
    if (sg >= 4u) {
        /* moving: stage k's raw parts in r[k % 2], named statically (the
         * loop takes two stages per pass); stages past the last fetch the
         * last again, stored into a half never read */
        const uint pt = tid - 128u;
        WsRaw r0, r1;
        WsParts d;
        ws_fetch(0u, m0, n0, pt, r0);
        ws_fetch(min(1u, last), m0, n0, pt, r1);
        ws_decode(0u, n0, pt, r0, d);
        ws_store(0u, pt, d);
        ws_fetch(min(2u, last), m0, n0, pt, r0);
        ws_decode(min(1u, last), n0, pt, r1, d);
        ws_fetch(min(3u, last), m0, n0, pt, r1);
        barrier();
        for (uint s = 0u; s < nst; s += 2u) {
            /* stage s is multiplied in half 0; d holds s + 1, r0 s + 2, r1 s + 3 */
            ws_store(1u, pt, d);
            ws_decode(min(s + 2u, last), n0, pt, r0, d);
            ws_fetch(min(s + 4u, last), m0, n0, pt, r0);
            barrier();
            if (s + 1u >= nst) break;
            /* stage s + 1 in half 1; d holds s + 2, r1 s + 3, r0 s + 4 */
            ws_store(0u, pt, d);
            ws_decode(min(s + 3u, last), n0, pt, r1, d);
            ws_fetch(min(s + 5u, last), m0, n0, pt, r1);
            barrier();
        }
        return;
    }
    const uint sm = (sg >> 1) * 64u, sn = (sg & 1u) * 64u; /* this subgroup's quarter */
    CM32 acc[4][4];
    [[unroll]] for (uint i = 0u; i < 4u; i++)
        [[unroll]] for (uint j = 0u; j < 4u; j++) acc[i][j] = CM32(0.0);
    barrier();
    for (uint s = 0u; s < nst; s++) {
        const uint h = (s & 1u) * WS_HALF;
        /* per 16 elements (2 vectors) the four B fragments held, one A
         * fragment at a time */
        [[unroll]] for (uint kk = 0u; kk < 4u; kk += 2u) {
            CM16 b[4];
            [[unroll]] for (uint j = 0u; j < 4u; j++)
                coopMatLoadNV(b[j], Bs, h + (sn + 16u * j) * WS_ROWV + kk, WS_ROWV, true);
            [[unroll]] for (uint i = 0u; i < 4u; i++) {
                CM16 a;
                coopMatLoadNV(a, As, h + (sm + 16u * i) * WS_ROWV + kk, WS_ROWV, false);
                [[unroll]] for (uint j = 0u; j < 4u; j++) acc[i][j] = coopMatMulAddNV(a, b[j], acc[i][j]);
            }
        }
        barrier();
    }
    /* each accumulator through the subgroup's own patch of As (the loop's
     * last barrier ended all reads of the tile; the movers have stopped) */
    [[unroll]] for (uint i = 0u; i < 4u; i++)
        [[unroll]] for (uint j = 0u; j < 4u; j++) MMC_STORE_ACC(acc[i][j], 64u * sg, m0 + sm + 16u * i, n0 + sn + 16u * j);
}
