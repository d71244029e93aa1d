/*
 * test_abi_struct_size.c - the struct-size protocol of include/kiln.h, as an
 * older caller exercises it: the caller's params struct is a truncated
 * version of today's (struct_size and the first fields only), the bytes
 * after it are garbage (0xA5), and the library must read only struct_size
 * bytes and use defaults for the rest; for output structs (kiln_model_info)
 * it must write only struct_size bytes.
 *
 * Links the shared library (test_abi_* do; see the Makefile) and references
 * the API weakly: while the params functions are not yet in the library, or
 * do not yet fill struct_size, the cases are skipped rather than failing.
 */
#include <stdlib.h>
#include <string.h>

#include "kiln.h"
#include "kt.h"

#pragma weak kiln_model_params_init_sized
#pragma weak kiln_model_load
#pragma weak kiln_model_free
#pragma weak kiln_model_info_init_sized
#pragma weak kiln_model_get_info
#pragma weak kiln_context_params_init_sized
#pragma weak kiln_context_create
#pragma weak kiln_context_free
#pragma weak kiln_batch_init_sized
#pragma weak kiln_decode
#pragma weak kiln_context_logits
#pragma weak kiln_model_n_vocab
#pragma weak kiln_sampler_params_init_sized
#pragma weak kiln_sampler_create
#pragma weak kiln_sampler_free
#pragma weak kiln_sampler_sample

#define GARBAGE 0xA5
#define MODEL "models/tiny-draft-f16.gguf"

/* Old versions of the params structs: struct_size + the first fields. */
typedef struct {
    uint32_t struct_size;
    uint32_t flags;
} old_model_params;

typedef struct {
    uint32_t struct_size;
    uint32_t n_ctx;
    uint32_t n_ubatch;
} old_context_params;

typedef struct {
    uint32_t struct_size;
    float temperature;
} old_sampler_params;

/* A full-size struct filled with garbage, then the old struct written over
 * its start: reading past struct_size reads 0xA5 bytes. */
typedef union {
    kiln_model_params model;
    kiln_context_params context;
    kiln_sampler_params sampler;
    kiln_model_info info;
    unsigned char bytes[1024];
} garbage_buf;

static void fill_garbage(garbage_buf *g) { memset(g, GARBAGE, sizeof *g); }

/* Skips unless the library's _init functions are there and set struct_size. */
static int params_functional(void) {
    if (!kiln_context_params_init_sized || !kiln_model_params_init_sized || !kiln_model_load ||
        !kiln_model_free)
        return 0;
    kiln_context_params p;
    memset(&p, 0, sizeof p);
    kiln_context_params_init(&p);
    return p.struct_size == sizeof p;
}

static kiln_model *load_with(const void *params) {
    const char *path = kt_shared(MODEL);
    if (!path) return NULL;
    kiln_model *m = NULL;
    KT_CHECK_OK(kiln_model_load(path, (const kiln_model_params *)params, &m));
    return m;
}

static void test_model_params_truncated(void) {
    if (!params_functional()) KT_SKIP("params _init functions not functional yet");
    if (!kt_shared(MODEL)) KT_SKIP("../shared/" MODEL " not found");
    /* Garbage tail: backend would be a wild pointer, log_fn a wild function. */
    garbage_buf g;
    fill_garbage(&g);
    old_model_params old = {sizeof(old_model_params), 0};
    memcpy(g.bytes, &old, sizeof old);
    kiln_model *m = load_with(&g);
    KT_CHECK(m != NULL);
    kiln_model_free(m);

    /* Exactly the old size on the heap: an over-read is an ASan error. */
    old_model_params *heap = malloc(sizeof *heap);
    KT_CHECK(heap != NULL);
    if (!heap) return;
    heap->struct_size = sizeof *heap;
    heap->flags = 0;
    m = load_with(heap);
    KT_CHECK(m != NULL);
    kiln_model_free(m);
    free(heap);
}

static void test_model_info_written_up_to_struct_size(void) {
    if (!params_functional()) KT_SKIP("params _init functions not functional yet");
    if (!kiln_model_get_info || !kiln_model_info_init_sized) KT_SKIP("kiln_model_get_info missing");
    if (!kt_shared(MODEL)) KT_SKIP("../shared/" MODEL " not found");
    kiln_model *m = load_with(NULL);
    if (!m) return;
    /* An old caller knows struct_size + arch only. */
    const uint32_t old_size = (uint32_t)(offsetof(kiln_model_info, arch) + 32);
    garbage_buf g;
    fill_garbage(&g);
    g.info.struct_size = old_size;
    KT_CHECK_OK(kiln_model_get_info(m, &g.info));
    KT_CHECK(g.info.struct_size == old_size);
    KT_CHECK(strcmp(g.info.arch, "llama") == 0);
    size_t touched = 0;
    for (size_t i = old_size; i < sizeof g.bytes; i++) touched += g.bytes[i] != GARBAGE;
    KT_CHECKF(touched == 0, "kiln_model_get_info wrote %zu bytes past struct_size", touched);
    kiln_model_free(m);
}

/* Decodes "BOS 10 20 30" and copies the last logits into out[n_vocab]. */
static int decode_logits(kiln_model *m, const void *params, float *out, int32_t n_vocab) {
    kiln_context *ctx = NULL;
    kiln_status st = kiln_context_create(m, (const kiln_context_params *)params, &ctx);
    KT_CHECKF(st == KILN_OK, "kiln_context_create -> %d (%s)", (int)st, kiln_last_error());
    if (st != KILN_OK) return 0;
    const int32_t tokens[4] = {0, 10, 20, 30};
    kiln_batch b;
    kiln_batch_init(&b);
    b.n_tokens = 4;
    b.tokens = tokens;
    st = kiln_decode(ctx, &b);
    KT_CHECKF(st == KILN_OK, "kiln_decode -> %d (%s)", (int)st, kiln_last_error());
    const float *l = st == KILN_OK ? kiln_context_logits(ctx, -1) : NULL;
    if (l) memcpy(out, l, sizeof(float) * (size_t)n_vocab);
    kiln_context_free(ctx);
    return l != NULL;
}

static void test_context_params_truncated(void) {
    if (!params_functional()) KT_SKIP("params _init functions not functional yet");
    if (!kiln_context_create || !kiln_decode || !kiln_context_logits || !kiln_batch_init_sized ||
        !kiln_model_n_vocab)
        KT_SKIP("context/decode functions missing");
    if (!kt_shared(MODEL)) KT_SKIP("../shared/" MODEL " not found");
    kiln_model *m = load_with(NULL);
    if (!m) return;
    int32_t n_vocab = kiln_model_n_vocab(m);
    float *want = calloc((size_t)n_vocab, sizeof(float));
    float *got = calloc((size_t)n_vocab, sizeof(float));
    KT_CHECK(want && got);

    /* Reference: today's struct with defaults and the same two fields. */
    kiln_context_params full;
    kiln_context_params_init(&full);
    full.n_ctx = 256;
    full.n_ubatch = 64;
    int ok = want && got && decode_logits(m, &full, want, n_vocab);

    /* An old caller: three fields, garbage after them (n_threads, block
     * size, log_fn... would be nonsense if read). */
    garbage_buf g;
    fill_garbage(&g);
    old_context_params old = {sizeof(old_context_params), 256, 64};
    memcpy(g.bytes, &old, sizeof old);
    ok = ok && decode_logits(m, &g, got, n_vocab);
    if (ok) {
        float max_diff = 0;
        for (int32_t i = 0; i < n_vocab; i++) {
            float d = want[i] > got[i] ? want[i] - got[i] : got[i] - want[i];
            if (d > max_diff) max_diff = d;
        }
        KT_CHECKF(max_diff <= 1e-4f, "truncated params changed the logits by %g", max_diff);
    }

    /* Exactly the old size on the heap (ASan catches an over-read). */
    old_context_params *heap = malloc(sizeof *heap);
    if (heap && ok) {
        *heap = old;
        KT_CHECK(decode_logits(m, heap, got, n_vocab));
    }
    free(heap);
    free(want);
    free(got);
    kiln_model_free(m);
}

static void test_sampler_params_truncated(void) {
    if (!kiln_sampler_params_init_sized || !kiln_sampler_create || !kiln_sampler_sample ||
        !kiln_sampler_free)
        KT_SKIP("sampler functions missing");
    kiln_sampler_params full;
    memset(&full, 0, sizeof full);
    kiln_sampler_params_init(&full);
    if (full.struct_size != sizeof full) KT_SKIP("kiln_sampler_params_init not functional yet");
    full.temperature = 0.7f;

    garbage_buf g;
    fill_garbage(&g);
    old_sampler_params old = {sizeof(old_sampler_params), 0.7f};
    memcpy(g.bytes, &old, sizeof old);

    kiln_sampler *a = NULL, *b = NULL;
    KT_CHECK_OK(kiln_sampler_create(&full, &a));
    KT_CHECK_OK(kiln_sampler_create((const kiln_sampler_params *)&g, &b));
    if (a && b) {
        /* Same defaults (seed included) -> the same draws. */
        enum { N_VOCAB = 64 };
        float logits[N_VOCAB];
        for (int i = 0; i < N_VOCAB; i++) logits[i] = (float)((i * 37) % 11) * 0.3f;
        for (int step = 0; step < 50; step++) {
            int32_t ta = -1, tb = -2;
            KT_CHECK_OK(kiln_sampler_sample(a, logits, N_VOCAB, &ta));
            KT_CHECK_OK(kiln_sampler_sample(b, logits, N_VOCAB, &tb));
            KT_CHECKF(ta == tb, "step %d: %d with full params, %d with truncated", step,
                      (int)ta, (int)tb);
            if (ta != tb) break;
        }
    }
    kiln_sampler_free(a);
    kiln_sampler_free(b);
}

int main(void) {
    KT_RUN(test_model_params_truncated);
    KT_RUN(test_model_info_written_up_to_struct_size);
    KT_RUN(test_context_params_truncated);
    KT_RUN(test_sampler_params_truncated);
    return kt_finish();
}
