/*
 * attn_tile.glsl - prefill attention for ubatches of more than 32 tokens: a
 * workgroup per (tile of up to 64 consecutive tokens of one sequence, i.e.
 * one attn_table entry, head), so that every K/V row of the head is read
 * from memory once per tile instead of once per token. The tiles
 * (start token, count, the largest n_kv of the tile) are built on the host
 * by set_ubatch and come after the block tables in the ubatch binding.
 *
 * Four subgroups of 32 (the workgroup is 128 invocations); subgroup sg owns
 * tokens 16 sg .. 16 sg + 15 of the tile. The tile's queries are split once
 * into two F16 parts, hi and lo = q - hi (staged in shared memory, kept in
 * registers), and so are the probabilities: every product is made for both
 * parts, so the matrix cores' F16 inputs cost no accuracy (3e-7 relative
 * to the CPU backend; with q and P rounded to F16 once, as CUDA's kernel
 * does, 2e-4, and test_batching's n_ubatch 7 vs 512 logits differed by
 * 0.027 on lavapipe, over its 0.02 bound). The workgroup
 * walks the positions 32 at a time: the 32 K and V rows (F16, found through
 * the block table) are copied to shared memory (fetched into registers
 * during the previous step's products), each subgroup computes
 * S = Q K^T for its 16 tokens (16 x 32, F32), goes through S in shared
 * memory for the per-token mask (position < n_kv of the token) and the
 * online softmax (F32; running max m, sum l), writes P's two F16 parts (hi
 * in place of S) and adds P V to its 16 x D output (F32 accumulators).
 *
 * The running max is lazy: a row keeps its reference max until a step's
 * scores exceed it by more than 2^8 (the probabilities stay below 256,
 * well inside F16's range), so the output is rescaled (through shared memory,
 * 16 x 16 at a time: accumulators are opaque) only then, not every step
 * (KILN_VK_ATTN_EAGER=1: whenever the max grows, as the textbook online
 * softmax does; tests reach the rescale path that way).
 * A row's result depends only on its own positions (each is visited in the
 * same order whatever else the tile holds), not on the other tokens.
 *
 * HEAD_DIM is 64 or 128 (attn_mc_D / attn_mce_D). ATTN_EMULATE (attn_mce_D):
 * the same staging, softmax and patches with the 16 x 16 products done by
 * plain arithmetic, each invocation holding the elements of a fragment the
 * patches give it (row lane / 2, columns 8 (lane % 2) .. + 7); its
 * synchronisation is workgroup-wide (a subgroup's 32 invocations need not
 * be one subgroup there), so every branch around it is taken by the whole
 * workgroup. It is the kernel of devices without matrix cores (and what
 * lavapipe tests: KILN_VK_COOPMAT_EMULATE=1 or not). Without it
 * GL_NV_cooperative_matrix does the products (16 x 16 x 16, F16 inputs,
 * F32 accumulation), as mmc.glsl does. 30 KiB of shared memory at D 128.
 */
#extension GL_EXT_control_flow_attributes : require
#ifndef ATTN_EMULATE
#extension GL_NV_cooperative_matrix : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
#extension GL_KHR_shader_subgroup_basic : require
#endif

layout(local_size_x = 128) in;

#define D HEAD_DIM
#define KS (D / 16u)   /* 16-wide steps of Q K^T; output fragments */
#define RV (D / 8u + 1u) /* vectors (8 halves) per staged row: D + 8 halves */
#define STEP 32u       /* positions per step */
#define NEG (-1e30)

layout(binding = 0) readonly buffer QB { float Q[]; };
layout(binding = 1) readonly buffer KC { uvec4 K4[]; };
layout(binding = 2) readonly buffer VC { uvec4 V4[]; };
layout(binding = 3) writeonly buffer DB { float O[]; };
layout(binding = 4) readonly buffer UB { int U[]; };

layout(push_constant) uniform P {
    uint q_off, q_stride, d_off, d_stride;
    uint group, kv_dim;
    float scale;
    uint block_size, nkv_off, bt_off, tab_off, tiles_off;
    float lazy; /* log2 of the growth of a row's max that triggers a rescale: 8, 0 (KILN_VK_ATTN_EAGER) */
} p;

/* K rows 0..31 then V rows 0..31 of a step; the 64 query rows before the
 * first step */
shared uvec4 KV[64u * RV];
/* per subgroup 192 vectors: S (16 x 32 F32) in the first 128, then P's
 * hi part (16 x 32 F16) in the first 64, a 16 x 16 F32 output fragment in
 * the next 64, P's lo part in the last 64 */
shared uvec4 SP[4u * 192u];
shared float red[128];
shared uint needf[4];

#ifdef ATTN_EMULATE
#define SYNC() barrier()
#else
#define SYNC() { subgroupMemoryBarrierShared(); subgroupBarrier(); }
#define CM16 fcoopmatNV<16, gl_ScopeSubgroup, 16, 16>
#define CM32 fcoopmatNV<32, gl_ScopeSubgroup, 16, 16>
#endif

#define NLD (STEP * (D / 8u) / 128u) /* K (and V) vectors per invocation and step */

/* the K and V vectors of positions p0 .. p0 + 31 this invocation stages
 * (zeros past maxkv: never NaN times a zero probability) */
void fetch_kv(uint p0, uint maxkv, uint tab, uint kvb, uint tid, out uvec4 kr[NLD], out uvec4 vr[NLD]) {
    [[unroll]] for (uint j = 0u; j < NLD; j++) {
        uint i = tid + 128u * j, r = i / (D / 8u), v = i % (D / 8u), pos = p0 + r;
        kr[j] = uvec4(0u);
        vr[j] = uvec4(0u);
        if (pos < maxkv) {
            uint cell = uint(U[p.bt_off + tab + pos / p.block_size]) * p.block_size + pos % p.block_size;
            uint a = cell * (p.kv_dim / 8u) + kvb + v;
            kr[j] = K4[a];
            vr[j] = V4[a];
        }
    }
}

/* part 0: the tile's query rows (head h) rounded to F16 into KV; part 1:
 * what that rounding lost, as F16; rows past cnt zeros */
void stage_q(uint part, uint tid, uint start, uint cnt, uint h) {
    for (uint i = tid; i < 64u * (D / 8u); i += 128u) {
        uint r = i / (D / 8u), v = i % (D / 8u);
        uvec4 w = uvec4(0u);
        if (r < cnt) {
            uint o = p.q_off + (start + r) * p.q_stride + h * D + 8u * v;
            [[unroll]] for (uint c = 0u; c < 4u; c++) {
                vec2 x = vec2(Q[o + 2u * c], Q[o + 2u * c + 1u]);
                uint hi = packHalf2x16(x);
                w[c] = part == 0u ? hi : packHalf2x16(x - unpackHalf2x16(hi));
            }
        }
        KV[r * RV + v] = w;
    }
}

void main() {
    const uint tid = gl_LocalInvocationID.x;
#ifdef ATTN_EMULATE
    const uint sg = tid >> 5, lane = tid & 31u;
#else
    /* the hardware's subgroups (32 wide: the host checked), whatever their
     * invocations */
    const uint sg = gl_SubgroupID, lane = gl_SubgroupInvocationID;
#endif
    const uint slot = 32u * sg + lane; /* this invocation's word of red[] */
    const uint tile = gl_WorkGroupID.x, h = gl_WorkGroupID.y;
    const uint start = uint(U[p.tiles_off + 3u * tile]), cnt = uint(U[p.tiles_off + 3u * tile + 1u]);
    const uint maxkv = uint(U[p.tiles_off + 3u * tile + 2u]);
    const uint hk = h / p.group;
    const uint tab = uint(U[p.tab_off + start]);
    const uint pbase = 192u * sg;
    /* this invocation's row of the subgroup's 16 (softmax, patches) and its
     * half of the columns */
    const uint row = lane >> 1, half_ = lane & 1u, trow = 16u * sg + row;
    const uint nk = trow < cnt ? uint(U[p.nkv_off + start + trow]) : 0u;
    uint wmax = 0u; /* the subgroup's last position */
    for (uint r = 16u * sg; r < min(cnt, 16u * sg + 16u); r++) wmax = max(wmax, uint(U[p.nkv_off + start + r]));

    /* the queries as two F16 parts (hi, then lo: q - hi), staged in turn */
    stage_q(0u, tid, start, cnt, h);
    barrier();
#ifdef ATTN_EMULATE
    uvec4 qh[D / 8u], ql[D / 8u]; /* this invocation's query row */
    [[unroll]] for (uint v = 0u; v < D / 8u; v++) qh[v] = KV[trow * RV + v];
#else
    CM16 qfh[KS], qfl[KS];
    [[unroll]] for (uint k = 0u; k < KS; k++) coopMatLoadNV(qfh[k], KV, (16u * sg) * RV + 2u * k, RV, false);
#endif
    barrier();
    stage_q(1u, tid, start, cnt, h);
    barrier();
#ifdef ATTN_EMULATE
    [[unroll]] for (uint v = 0u; v < D / 8u; v++) ql[v] = KV[trow * RV + v];
    float o[KS][8];
    [[unroll]] for (uint j = 0u; j < KS; j++)
        [[unroll]] for (uint e = 0u; e < 8u; e++) o[j][e] = 0.0;
#else
    [[unroll]] for (uint k = 0u; k < KS; k++) coopMatLoadNV(qfl[k], KV, (16u * sg) * RV + 2u * k, RV, false);
    CM32 o[KS];
    [[unroll]] for (uint j = 0u; j < KS; j++) o[j] = CM32(0.0);
#endif
    float m = NEG, l = 0.0; /* row `row`: reference max (log2 units), this half's sum */
    const float sl2 = p.scale * 1.4426950408889634; /* exp(x) = exp2(x log2 e) */
    const uint kvb = (hk * D) / 8u;

    /* the K and V rows of a step are fetched into registers during the
     * previous step's products, stored after its barrier */
    uvec4 kr[NLD], vr[NLD];
    fetch_kv(0u, maxkv, tab, kvb, tid, kr, vr);
    for (uint p0 = 0u; p0 < maxkv; p0 += STEP) {
        barrier(); /* the previous step's (or the queries') readers are done */
        [[unroll]] for (uint j = 0u; j < NLD; j++) {
            uint i = tid + 128u * j, r = i / (D / 8u), v = i % (D / 8u);
            KV[r * RV + v] = kr[j];
            KV[(STEP + r) * RV + v] = vr[j];
        }
        if (lane == 0u) needf[sg] = 0u;
        barrier();
        fetch_kv(p0 + STEP, maxkv, tab, kvb, tid, kr, vr);
#ifdef ATTN_EMULATE
        if (true) { /* workgroup-uniform */
#else
        if (p0 < wmax) { /* subgroup-uniform: positions left for its tokens */
#endif
            /* S = Q K^T into the subgroup's patch: 16 tokens x 32 positions */
#ifdef ATTN_EMULATE
            [[unroll]] for (uint j = 0u; j < 2u; j++) {
                /* element (row, 16 j + 8 half_ + e) of the 16 x 32 patch,
                 * written as it is computed (no per-element array: its
                 * dynamic index would live in memory) */
                const uint b = pbase + row * 8u + 4u * j + 2u * half_;
                [[dont_unroll]] for (uint e = 0u; e < 8u; e++) {
                    uint pr = 16u * j + 8u * half_ + e;
                    float acc = 0.0;
                    [[unroll]] for (uint v = 0u; v < D / 8u; v++) {
                        uvec4 kw = KV[pr * RV + v];
                        [[unroll]] for (uint c = 0u; c < 4u; c++) {
                            vec2 a = unpackHalf2x16(qh[v][c]), al = unpackHalf2x16(ql[v][c]), b = unpackHalf2x16(kw[c]);
                            acc += a.x * b.x + a.y * b.y;
                            acc += al.x * b.x + al.y * b.y;
                        }
                    }
                    SP[b + (e >> 2)][e & 3u] = floatBitsToUint(acc);
                }
            }
#else
            [[unroll]] for (uint j = 0u; j < 2u; j++) {
                CM32 s = CM32(0.0);
                [[unroll]] for (uint k = 0u; k < KS; k++) {
                    CM16 kb;
                    coopMatLoadNV(kb, KV, (16u * j) * RV + 2u * k, RV, true);
                    s = coopMatMulAddNV(qfh[k], kb, s);
                    s = coopMatMulAddNV(qfl[k], kb, s);
                }
                coopMatStoreNV(s, SP, pbase + 4u * j, 8u, false);
            }
#endif
            SYNC();
            /* mask and softmax: this invocation's 16 columns of its row */
            float x[16];
            float mx = NEG;
            [[unroll]] for (uint c4 = 0u; c4 < 4u; c4++) {
                vec4 sv = uintBitsToFloat(SP[pbase + row * 8u + 4u * half_ + c4]);
                [[unroll]] for (uint c = 0u; c < 4u; c++) {
                    uint pos = p0 + 16u * half_ + 4u * c4 + c;
                    x[4u * c4 + c] = pos < nk ? sv[c] * sl2 : NEG;
                    mx = max(mx, x[4u * c4 + c]);
                }
            }
            red[slot] = mx;
            SYNC();
            mx = max(mx, red[slot ^ 1u]);
            float mnew = m;
            if (m == NEG || mx > m + p.lazy) mnew = max(m, mx);
            const bool resc = m != NEG && mnew != m; /* the row's output so far must shrink */
            const float corr = resc ? exp2(m - mnew) : 1.0;
            m = mnew;
            const float ref = m == NEG ? 0.0 : m;
            uint pk[8], pl[8]; /* P as hi and lo F16 parts */
            float ls = 0.0;
            [[unroll]] for (uint c = 0u; c < 16u; c += 2u) {
                float e0 = x[c] == NEG ? 0.0 : exp2(x[c] - ref), e1 = x[c + 1u] == NEG ? 0.0 : exp2(x[c + 1u] - ref);
                ls += e0 + e1;
                pk[c / 2u] = packHalf2x16(vec2(e0, e1));
                pl[c / 2u] = packHalf2x16(vec2(e0, e1) - unpackHalf2x16(pk[c / 2u]));
            }
            l = l * corr + ls;
            /* P (F16) in place: row `row`, columns 16 half_ .. + 15 (every
             * read of S was before the SYNC above) */
            SP[pbase + row * 4u + 2u * half_] = uvec4(pk[0], pk[1], pk[2], pk[3]);
            SP[pbase + row * 4u + 2u * half_ + 1u] = uvec4(pk[4], pk[5], pk[6], pk[7]);
            SP[pbase + 128u + row * 4u + 2u * half_] = uvec4(pl[0], pl[1], pl[2], pl[3]);
            SP[pbase + 128u + row * 4u + 2u * half_ + 1u] = uvec4(pl[4], pl[5], pl[6], pl[7]);
            if (resc) atomicOr(needf[sg], 1u);
            SYNC();
#ifdef ATTN_EMULATE
            if ((needf[0] | needf[1] | needf[2] | needf[3]) != 0u) { /* workgroup-uniform */
#else
            if (needf[sg] != 0u) {
#endif
                /* each output fragment through the last 64 vectors of the
                 * patch: this invocation's 8 elements are of its own row */
                [[unroll]] for (uint j = 0u; j < KS; j++) {
                    const uint fb = pbase + 64u + 2u * lane;
#ifdef ATTN_EMULATE
                    SP[fb] = floatBitsToUint(vec4(o[j][0], o[j][1], o[j][2], o[j][3]));
                    SP[fb + 1u] = floatBitsToUint(vec4(o[j][4], o[j][5], o[j][6], o[j][7]));
#else
                    coopMatStoreNV(o[j], SP, pbase + 64u, 4u, false);
#endif
                    SYNC();
                    SP[fb] = floatBitsToUint(uintBitsToFloat(SP[fb]) * corr);
                    SP[fb + 1u] = floatBitsToUint(uintBitsToFloat(SP[fb + 1u]) * corr);
                    SYNC();
#ifdef ATTN_EMULATE
                    vec4 a = uintBitsToFloat(SP[fb]), b = uintBitsToFloat(SP[fb + 1u]);
                    o[j][0] = a.x, o[j][1] = a.y, o[j][2] = a.z, o[j][3] = a.w;
                    o[j][4] = b.x, o[j][5] = b.y, o[j][6] = b.z, o[j][7] = b.w;
#else
                    coopMatLoadNV(o[j], SP, pbase + 64u, 4u, false);
#endif
                    SYNC();
                }
            }
            /* O += P V */
#ifdef ATTN_EMULATE
            [[dont_unroll]] for (uint pr = 0u; pr < STEP; pr++) {
                vec2 pp = unpackHalf2x16(SP[pbase + row * 4u + pr / 8u][(pr & 7u) >> 1]) +
                          unpackHalf2x16(SP[pbase + 128u + row * 4u + pr / 8u][(pr & 7u) >> 1]);
                float pv = (pr & 1u) != 0u ? pp.y : pp.x;
                [[unroll]] for (uint j = 0u; j < KS; j++) {
                    uvec4 vw = KV[(STEP + pr) * RV + 2u * j + half_];
                    [[unroll]] for (uint c = 0u; c < 4u; c++) {
                        vec2 vv = unpackHalf2x16(vw[c]);
                        o[j][2u * c] += pv * vv.x;
                        o[j][2u * c + 1u] += pv * vv.y;
                    }
                }
            }
#else
            [[unroll]] for (uint kk = 0u; kk < 2u; kk++) {
                CM16 pa, pal;
                coopMatLoadNV(pa, SP, pbase + 2u * kk, 4u, false);
                coopMatLoadNV(pal, SP, pbase + 128u + 2u * kk, 4u, false);
                [[unroll]] for (uint j = 0u; j < KS; j++) {
                    CM16 vb;
                    coopMatLoadNV(vb, KV, (STEP + 16u * kk) * RV + 2u * j, RV, false);
                    o[j] = coopMatMulAddNV(pa, vb, o[j]);
                    o[j] = coopMatMulAddNV(pal, vb, o[j]);
                }
            }
#endif
        }
    }
    /* the row's sum over both halves, then each output fragment through
     * the patch (rows past cnt are not written; rows that attend to
     * nothing give zeros) */
    barrier();
    red[slot] = l;
    barrier();
    l += red[slot ^ 1u];
    const float inv = l > 0.0 ? 1.0 / l : 0.0;
    const uint fb = pbase + 64u + 2u * lane;
    const uint od = p.d_off + (start + trow) * p.d_stride + h * D + 8u * half_;
    [[unroll]] for (uint j = 0u; j < KS; j++) {
#ifdef ATTN_EMULATE
        SP[fb] = floatBitsToUint(vec4(o[j][0], o[j][1], o[j][2], o[j][3]));
        SP[fb + 1u] = floatBitsToUint(vec4(o[j][4], o[j][5], o[j][6], o[j][7]));
#else
        coopMatStoreNV(o[j], SP, pbase + 64u, 4u, false);
#endif
        SYNC();
        if (trow < cnt) {
            vec4 a = uintBitsToFloat(SP[fb]), b = uintBitsToFloat(SP[fb + 1u]);
            uint d = od + 16u * j;
            O[d] = a.x * inv, O[d + 1u] = a.y * inv, O[d + 2u] = a.z * inv, O[d + 3u] = a.w * inv;
            O[d + 4u] = b.x * inv, O[d + 5u] = b.y * inv, O[d + 6u] = b.z * inv, O[d + 7u] = b.w * inv;
        }
        SYNC();
    }
}
