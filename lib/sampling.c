/*
 * sampling.c - the sampling chain behind kiln_sampler_* (include/kiln.h).
 *
 * Chain, applied to a private copy of the caller's logits (never modified):
 *   1. penalties over the last penalty_last_n accepted tokens:
 *        repeat:   logit > 0 ? logit / r : logit * r        (once per token)
 *        freq/presence: logit -= count * freq + (count > 0) * presence
 *   2. temperature <= 0: greedy argmax (ties -> lowest id). Otherwise
 *   3. top-k -> top-p -> min-p -> temperature -> softmax -> one draw,
 *      the order of llama.cpp's common sampler (typical-p is not offered).
 *      top-p and min-p therefore see the untempered (T = 1) distribution;
 *      temperature only shapes the final draw among the survivors.
 *
 * Determinism: the RNG is xoshiro256** seeded through splitmix64, the
 * exponential is our own (kiln_sampling_exp below, plain IEEE double
 * arithmetic, no libm), every sum runs in a fixed order in double and every
 * sort uses a total order (logit descending, then id ascending). With
 * identical logits the token sequence is therefore identical on every
 * platform that has IEEE doubles (the build is ISO C, so no FMA contraction).
 *
 * Non-finite logits: NaN counts as -inf; +inf is clamped to FLT_MAX so that
 * (l - max) stays defined and the +inf tokens share the mass. If no logit is
 * above -inf there is nothing to draw from: KILN_E_INVALID_ARG.
 *
 * Memory: the sampler and its history ring are allocated at create; the
 * per-vocab scratch (candidates, penalty counts) is grown with kiln_realloc
 * the first time a larger n_vocab is seen and reused afterwards, so steady
 * state sampling allocates nothing. A failed grow returns KILN_E_OOM_HOST
 * and leaves the sampler usable.
 */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "memtrack.h"

typedef struct kiln_sampling_cand {
    int32_t id;
    float logit;
    double w;       /* exp(logit - max), filled by the stages that need it */
} kiln_sampling_cand;

struct kiln_sampler {
    kiln_sampler_params params;
    uint64_t rng[4];            /* xoshiro256** state */

    int32_t *hist;              /* ring of the last penalty_last_n tokens */
    int32_t hist_len;           /* tokens stored, <= penalty_last_n */
    int32_t hist_head;          /* next slot to write */

    kiln_sampling_cand *cand;   /* scratch: candidates, cand_cap entries */
    int32_t cand_cap;
    int32_t *counts;            /* scratch: per-token history counts, all 0
                                   between calls; counts_cap entries */
    int32_t counts_cap;
};

/* ---- RNG: splitmix64 to seed xoshiro256** ------------------------------ */

static uint64_t kiln_sampling_splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void kiln_sampling_seed(kiln_sampler *s, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) s->rng[i] = kiln_sampling_splitmix64(&x);
}

static inline uint64_t kiln_sampling_rotl(uint64_t x, int k) {
    return (x << k) | (x >> (64 - k));
}

static uint64_t kiln_sampling_next(kiln_sampler *s) {
    uint64_t *st = s->rng;
    uint64_t result = kiln_sampling_rotl(st[1] * 5, 7) * 9;
    uint64_t t = st[1] << 17;
    st[2] ^= st[0];
    st[3] ^= st[1];
    st[1] ^= st[2];
    st[0] ^= st[3];
    st[2] ^= t;
    st[3] = kiln_sampling_rotl(st[3], 45);
    return result;
}

/* Uniform double in [0, 1) from the top 53 bits: exact on every platform. */
static double kiln_sampling_uniform(kiln_sampler *s) {
    return (double)(kiln_sampling_next(s) >> 11) * (1.0 / 9007199254740992.0);
}

/* ---- a platform-independent exp ----------------------------------------- */

/* exp(x) for x <= 0 (all the chain needs: logits minus their maximum).
 * libm's exp may differ in the last bit between C libraries, which could
 * flip a draw; this one uses only IEEE double +,*,/ so it cannot. Range
 * reduction x = k*ln2 + r with |r| <= ln2/2 and a degree-13 Taylor
 * polynomial (relative error ~1e-16), then an exact scaling by 2^k. */
static double kiln_sampling_exp(double x) {
    if (!(x > -745.0)) return 0.0;   /* also NaN and -inf */
    if (x >= 0.0) return 1.0;        /* only x == 0 reaches here in practice */
    static const double ln2_hi = 6.93147180369123816490e-01;
    static const double ln2_lo = 1.90821492927058770002e-10;
    static const double inv_ln2 = 1.44269504088896338700e+00;
    double kd = x * inv_ln2;
    int k = (int)(kd - 0.5);          /* round to nearest for kd < 0 */
    double r = (x - k * ln2_hi) - k * ln2_lo;
    /* Horner form of sum r^i / i!, i = 0..13. */
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    /* 2^k for k in [-1075, 0]: scale in two exact steps to stay normal as
     * long as the result is. */
    double scale = 1.0;
    while (k < -1000) { scale *= 0x1p-1000; k += 1000; }
    /* now -1000 <= k <= 0: build 2^k from its bits */
    union { uint64_t u; double d; } b;
    b.u = (uint64_t)(k + 1023) << 52;
    return p * b.d * scale;
}

/* ---- params ------------------------------------------------------------- */

void kiln_sampler_params_init_sized(kiln_sampler_params *p, uint32_t size) {
    kiln_sampler_params d;
    memset(&d, 0, sizeof d);
    d.temperature = 0.8f;
    d.top_k = 40;
    d.top_p = 0.95f;
    d.min_p = 0.05f;
    d.repeat_penalty = 1.0f;
    d.freq_penalty = 0.0f;
    d.presence_penalty = 0.0f;
    d.penalty_last_n = 64;
    d.seed = 0xC0FFEE;
    kiln_params_emit(p, size, &d, sizeof d);
}

static kiln_status kiln_sampling_check_params(const kiln_sampler_params *p) {
    if (!isfinite(p->temperature))
        return kiln_error(KILN_E_INVALID_ARG, "kiln_sampler_create: temperature is not finite");
    if (!isfinite(p->top_p))
        return kiln_error(KILN_E_INVALID_ARG, "kiln_sampler_create: top_p is not finite");
    if (!isfinite(p->min_p))
        return kiln_error(KILN_E_INVALID_ARG, "kiln_sampler_create: min_p is not finite");
    if (!isfinite(p->repeat_penalty) || p->repeat_penalty <= 0.0f)
        return kiln_error(KILN_E_INVALID_ARG,
                          "kiln_sampler_create: repeat_penalty %g must be finite and > 0",
                          (double)p->repeat_penalty);
    if (!isfinite(p->freq_penalty) || !isfinite(p->presence_penalty))
        return kiln_error(KILN_E_INVALID_ARG,
                          "kiln_sampler_create: freq/presence penalty is not finite");
    if (p->penalty_last_n < 0)
        return kiln_error(KILN_E_INVALID_ARG, "kiln_sampler_create: penalty_last_n %d < 0",
                          (int)p->penalty_last_n);
    return KILN_OK;
}

/* ---- lifetime ----------------------------------------------------------- */

kiln_status kiln_sampler_create(const kiln_sampler_params *params, kiln_sampler **out) {
    kiln_error_clear();
    if (out) *out = NULL;
    if (!params || !out)
        return kiln_error(KILN_E_INVALID_ARG, "kiln_sampler_create: params and out must not be NULL");
    if (params->struct_size < sizeof(uint32_t))
        return kiln_error(KILN_E_INVALID_ARG, "kiln_sampler_create: params->struct_size %u too small",
                          (unsigned)params->struct_size);

    /* Read only what the caller's struct holds; defaults for the rest. */
    kiln_sampler_params p;
    kiln_sampler_params_init(&p);
    memcpy(&p, params, KILN_MIN((size_t)params->struct_size, sizeof p));
    p.struct_size = sizeof p;
    kiln_status st = kiln_sampling_check_params(&p);
    if (st != KILN_OK) return st;

    kiln_sampler *s = kiln_calloc(1, sizeof *s);
    if (!s) return kiln_error(KILN_E_OOM_HOST, "kiln_sampler_create: out of memory for the sampler");
    kiln_mem_owner_open(KILN_MEM_OWNER_SAMPLER, s, NULL);
    KILN_MEM_SCOPE(s, KILN_MEM_SAMPLER);
    s->params = p;
    if (p.penalty_last_n > 0) {
        s->hist = kiln_malloc((size_t)p.penalty_last_n * sizeof *s->hist);
        if (!s->hist) {
            kiln_free(s);
            kiln_mem_owner_close(s);
            return kiln_error(KILN_E_OOM_HOST,
                              "kiln_sampler_create: out of memory for %d tokens of history",
                              (int)p.penalty_last_n);
        }
    }
    kiln_sampling_seed(s, p.seed);
    *out = s;
    return KILN_OK;
}

void kiln_sampler_free(kiln_sampler *s) {
    if (!s) return;
    kiln_free(s->hist);
    kiln_free(s->cand);
    kiln_free(s->counts);
    kiln_free(s);
    kiln_mem_owner_close(s); /* the leak guard */
}

void kiln_sampler_reset(kiln_sampler *s, uint64_t seed) {
    if (!s) return;
    s->hist_len = 0;
    s->hist_head = 0;
    kiln_sampling_seed(s, seed);
}

kiln_status kiln_sampler_accept(kiln_sampler *s, int32_t token) {
    kiln_error_clear();
    if (!s) return kiln_error(KILN_E_INVALID_ARG, "kiln_sampler_accept: sampler is NULL");
    if (token < 0)
        return kiln_error(KILN_E_INVALID_ARG, "kiln_sampler_accept: token %d is negative", (int)token);
    int32_t cap = s->params.penalty_last_n;
    if (cap == 0) return KILN_OK;
    s->hist[s->hist_head] = token;
    s->hist_head = (s->hist_head + 1) % cap;
    if (s->hist_len < cap) s->hist_len++;
    return KILN_OK;
}

/* ---- the chain ---------------------------------------------------------- */

static bool kiln_sampling_penalties_on(const kiln_sampler *s) {
    const kiln_sampler_params *p = &s->params;
    return s->hist_len > 0 &&
           (p->repeat_penalty != 1.0f || p->freq_penalty != 0.0f || p->presence_penalty != 0.0f);
}

/* Grows the scratch to n_vocab entries (counts only when penalties need it).
 * On failure the old buffers stay, so the sampler remains usable. */
static kiln_status kiln_sampling_reserve(kiln_sampler *s, int32_t n_vocab, bool need_counts) {
    if (s->cand_cap < n_vocab) {
        void *c = kiln_realloc(s->cand, (size_t)n_vocab * sizeof *s->cand);
        if (!c)
            return kiln_error(KILN_E_OOM_HOST,
                              "kiln_sampler_sample: out of memory for %d candidates", (int)n_vocab);
        s->cand = c;
        s->cand_cap = n_vocab;
    }
    if (need_counts && s->counts_cap < n_vocab) {
        void *c = kiln_realloc(s->counts, (size_t)n_vocab * sizeof *s->counts);
        if (!c)
            return kiln_error(KILN_E_OOM_HOST,
                              "kiln_sampler_sample: out of memory for penalty counts of %d tokens",
                              (int)n_vocab);
        s->counts = c;
        memset(s->counts, 0, (size_t)n_vocab * sizeof *s->counts);
        s->counts_cap = n_vocab;
    }
    return KILN_OK;
}

/* Maps a logit to the chain's domain: NaN -> -inf, +inf -> FLT_MAX. */
static inline float kiln_sampling_sanitize(float x) {
    if (isnan(x)) return -INFINITY;
    if (x > FLT_MAX) return FLT_MAX;
    return x;
}

/* cand[] is indexed by token id here. Each distinct history token is
 * penalized once, with its count over the window. */
static void kiln_sampling_apply_penalties(kiln_sampler *s, int32_t n_vocab) {
    const kiln_sampler_params *p = &s->params;
    int32_t n = s->hist_len;
    for (int32_t i = 0; i < n; i++) {
        int32_t t = s->hist[i];
        if (t < n_vocab) s->counts[t]++;
    }
    for (int32_t i = 0; i < n; i++) {
        int32_t t = s->hist[i];
        if (t >= n_vocab || s->counts[t] == 0) continue;   /* done already */
        int32_t c = s->counts[t];
        s->counts[t] = 0;   /* restores the all-zero invariant as we go */
        float l = s->cand[t].logit;
        if (p->repeat_penalty != 1.0f) l = l > 0.0f ? l / p->repeat_penalty : l * p->repeat_penalty;
        l -= (float)c * p->freq_penalty + (c > 0 ? p->presence_penalty : 0.0f);
        s->cand[t].logit = kiln_sampling_sanitize(l);
    }
}

/* Total order: higher logit first, then lower id. */
static inline bool kiln_sampling_better(const kiln_sampling_cand *a, const kiln_sampling_cand *b) {
    return a->logit > b->logit || (a->logit == b->logit && a->id < b->id);
}

static int kiln_sampling_cmp(const void *pa, const void *pb) {
    const kiln_sampling_cand *a = pa, *b = pb;
    if (kiln_sampling_better(a, b)) return -1;
    if (kiln_sampling_better(b, a)) return 1;
    return 0;
}

/* Min-heap on "better" (the root is the worst kept candidate). */
static void kiln_sampling_sift_down(kiln_sampling_cand *h, int32_t n, int32_t i) {
    for (;;) {
        int32_t l = 2 * i + 1, r = l + 1, w = i;
        if (l < n && kiln_sampling_better(&h[w], &h[l])) w = l;
        if (r < n && kiln_sampling_better(&h[w], &h[r])) w = r;
        if (w == i) return;
        kiln_sampling_cand t = h[i];
        h[i] = h[w];
        h[w] = t;
        i = w;
    }
}

/* Moves the k best of c[0..n) to c[0..k), sorted best first. O(n log k). */
static void kiln_sampling_top_k(kiln_sampling_cand *c, int32_t n, int32_t k) {
    for (int32_t i = k / 2 - 1; i >= 0; i--) kiln_sampling_sift_down(c, k, i);
    for (int32_t i = k; i < n; i++) {
        if (kiln_sampling_better(&c[i], &c[0])) {
            c[0] = c[i];
            kiln_sampling_sift_down(c, k, 0);
        }
    }
    qsort(c, (size_t)k, sizeof *c, kiln_sampling_cmp);
}

static inline void kiln_sampling_swap(kiln_sampling_cand *a, kiln_sampling_cand *b) {
    kiln_sampling_cand t = *a;
    *a = *b;
    *b = t;
}

/* Top-p without a prior sort: reorders c[0..n) (weights in .w) so that
 * c[0..keep) is the smallest set of best candidates whose weight reaches
 * target, and returns keep. A full sort of a large vocabulary costs
 * milliseconds per token; this is a quickselect on the total order that only
 * keeps partitioning the part holding the cut (expected O(n)) and sorts the
 * last small window. The kept set comes back in a deterministic (partition)
 * order, which is all the draw needs. */
static int32_t kiln_sampling_nucleus(kiln_sampling_cand *c, int32_t n, double target) {
    int32_t lo = 0, hi = n;   /* c[0..lo) kept, c[hi..n) dropped */
    double acc = 0.0;         /* weight of c[0..lo) */
    while (hi - lo > 32) {
        /* median of three as the pivot, parked at hi - 1 */
        int32_t a = lo, b = lo + (hi - lo) / 2, e = hi - 1;
        if (kiln_sampling_better(&c[b], &c[a])) kiln_sampling_swap(&c[a], &c[b]);
        if (kiln_sampling_better(&c[e], &c[b])) kiln_sampling_swap(&c[b], &c[e]);
        if (kiln_sampling_better(&c[b], &c[a])) kiln_sampling_swap(&c[a], &c[b]);
        kiln_sampling_swap(&c[b], &c[e]);
        const kiln_sampling_cand pv = c[e];
        int32_t j = lo;
        double better_w = 0.0;
        for (int32_t i = lo; i < e; i++) {
            if (kiln_sampling_better(&c[i], &pv)) {
                better_w += c[i].w;
                kiln_sampling_swap(&c[i], &c[j]);
                j++;
            }
        }
        kiln_sampling_swap(&c[j], &c[e]);   /* pivot in its final place */
        if (acc + better_w >= target) {
            hi = j;                          /* the cut is among the better ones */
        } else if (acc + better_w + c[j].w >= target) {
            return j + 1;                    /* the pivot completes the nucleus */
        } else {
            acc += better_w + c[j].w;
            lo = j + 1;
        }
    }
    qsort(c + lo, (size_t)(hi - lo), sizeof *c, kiln_sampling_cmp);
    for (int32_t i = lo; i < hi; i++) {
        acc += c[i].w;
        if (acc >= target) return i + 1;
    }
    return hi > 0 ? hi : 1;   /* rounding left the target just out of reach */
}

kiln_status kiln_sampler_sample(kiln_sampler *s, const float *logits, int32_t n_vocab,
                                int32_t *token) {
    kiln_error_clear();
    if (!s || !logits || !token)
        return kiln_error(KILN_E_INVALID_ARG, "kiln_sampler_sample: sampler, logits and token must not be NULL");
    if (n_vocab <= 0)
        return kiln_error(KILN_E_INVALID_ARG, "kiln_sampler_sample: n_vocab %d <= 0", (int)n_vocab);
    const kiln_sampler_params *p = &s->params;
    bool penalize = kiln_sampling_penalties_on(s);
    KILN_MEM_SCOPE(s, KILN_MEM_SAMPLER); /* the scratch grows with n_vocab */
    kiln_status st = kiln_sampling_reserve(s, n_vocab, penalize);
    if (st != KILN_OK) return st;

    kiln_sampling_cand *c = s->cand;
    for (int32_t i = 0; i < n_vocab; i++) {
        c[i].id = i;
        c[i].logit = kiln_sampling_sanitize(logits[i]);
    }
    if (penalize) kiln_sampling_apply_penalties(s, n_vocab);

    /* The best candidate: the greedy answer, and the max for softmax. */
    int32_t best = 0;
    for (int32_t i = 1; i < n_vocab; i++)
        if (c[i].logit > c[best].logit) best = i;   /* strict: ties keep the lowest id */
    if (c[best].logit == -INFINITY)
        return kiln_error(KILN_E_INVALID_ARG,
                          "kiln_sampler_sample: all %d logits are NaN or -inf", (int)n_vocab);

    int32_t chosen;
    if (p->temperature <= 0.0f) {
        chosen = best;
    } else {
        const double lmax = c[best].logit;
        int32_t n = n_vocab;
        bool sorted = false;

        if (p->top_k > 0 && p->top_k < n) {
            kiln_sampling_top_k(c, n, p->top_k);
            n = p->top_k;
            sorted = true;
        }

        if (p->top_p < 1.0f && n > 1) {
            /* Weights over the current candidates (T = 1) and their sum. */
            double z = 0.0;
            for (int32_t i = 0; i < n; i++) {
                c[i].w = kiln_sampling_exp((double)c[i].logit - lmax);
                z += c[i].w;
            }
            const double target = (double)p->top_p * z;
            if (sorted) {
                double cum = 0.0;
                int32_t keep = n;
                for (int32_t i = 0; i < n; i++) {
                    cum += c[i].w;
                    if (cum >= target) { keep = i + 1; break; }
                }
                n = keep;
            } else {
                /* What min-p will drop is a strict tail of the sorted order
                 * and z is already known, so dropping it first changes
                 * nothing but the work left for the nucleus search. */
                if (p->min_p > 0.0f) {
                    int32_t m = 0;
                    for (int32_t i = 0; i < n; i++)
                        if (c[i].w >= (double)p->min_p) c[m++] = c[i];
                    if (m == 0) c[m++] = (kiln_sampling_cand){best, (float)lmax, 1.0};
                    n = m;
                }
                n = kiln_sampling_nucleus(c, n, target);
            }
        }

        if (p->min_p > 0.0f && n > 1) {
            int32_t m = 0;
            for (int32_t i = 0; i < n; i++)
                if (kiln_sampling_exp((double)c[i].logit - lmax) >= (double)p->min_p) c[m++] = c[i];
            if (m == 0) {   /* min_p > 1 removes even the best: keep it */
                c[0] = (kiln_sampling_cand){best, (float)lmax, 1.0};
                m = 1;
            }
            n = m;
        }

        /* Temperature, softmax and the draw, in candidate order. */
        const double inv_t = 1.0 / (double)p->temperature;
        double sum = 0.0;
        for (int32_t i = 0; i < n; i++) {
            c[i].w = kiln_sampling_exp(((double)c[i].logit - lmax) * inv_t);
            sum += c[i].w;
        }
        double target = kiln_sampling_uniform(s) * sum, cum = 0.0;
        /* target < sum, so the walk ends inside; should rounding say
         * otherwise, take the last candidate that had any weight (never one
         * of weight 0, e.g. a -inf logit). The best one always has weight 1. */
        chosen = best;
        for (int32_t i = 0; i < n; i++) {
            if (c[i].w > 0.0) chosen = c[i].id;
            cum += c[i].w;
            if (cum > target) break;
        }
    }

    *token = chosen;
    return kiln_sampler_accept(s, chosen);
}
