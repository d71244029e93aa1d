/*
 * vocab_bpe.c - byte-level BPE ("gpt2" GGUF vocabs), as llama.cpp runs it:
 * the text is decoded to code points (invalid UTF-8 becomes U+FFFD), split
 * into words by the pre-tokenizer, each word's UTF-8 bytes are spelled in
 * GPT-2's byte alphabet, and within each word the adjacent pair with the
 * lowest merge rank is merged until no listed merge applies. The resulting
 * symbols are looked up as tokens.
 *
 * Statuses: KILN_E_OOM_HOST only. Nothing is kept between calls.
 */
#include <string.h>

#include "internal.h"
#include "unicode.h"
#include "vocab_internal.h"

typedef struct bpe_sym {
    int32_t prev, next;
    uint32_t start, n; /* bytes of the encoded word; n == 0 once merged away */
} bpe_sym;

typedef struct bpe_pair {
    int32_t rank;
    int32_t left, right;
    uint32_t size;
} bpe_pair;

/* Scratch buffers of one tokenize call, grown as needed. */
typedef struct bpe_state {
    const kiln_vocab *v;
    char *word;         /* the encoded word */
    size_t word_cap;
    bpe_sym *sym;
    size_t sym_cap;
    bpe_pair *heap;
    size_t heap_n, heap_cap;
} bpe_state;

static kiln_status grow(void **p, size_t *cap, size_t want, size_t elem) {
    if (*cap >= want) return KILN_OK;
    size_t cap2 = *cap ? *cap : 64, bytes;
    while (cap2 < want) {
        if (cap2 > SIZE_MAX / 2) return kiln_error(KILN_E_OOM_HOST, "bpe: size overflow");
        cap2 *= 2;
    }
    if (!kiln_mul_size(cap2, elem, &bytes)) return kiln_error(KILN_E_OOM_HOST, "bpe: size overflow");
    void *q = kiln_realloc(*p, bytes);
    if (!q) return kiln_error(KILN_E_OOM_HOST, "bpe: out of memory (%zu bytes)", bytes);
    *p = q;
    *cap = cap2;
    return KILN_OK;
}

/* Merged first: lowest rank, then leftmost. */
static bool before(const bpe_pair *x, const bpe_pair *y) {
    return x->rank < y->rank || (x->rank == y->rank && x->left < y->left);
}

static kiln_status heap_push(bpe_state *s, bpe_pair p) {
    kiln_status st = grow((void **)&s->heap, &s->heap_cap, s->heap_n + 1, sizeof(bpe_pair));
    if (st) return st;
    size_t i = s->heap_n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!before(&p, &s->heap[parent])) break;
        s->heap[i] = s->heap[parent];
        i = parent;
    }
    s->heap[i] = p;
    return KILN_OK;
}

static bpe_pair heap_pop(bpe_state *s) {
    bpe_pair top = s->heap[0], last = s->heap[--s->heap_n];
    size_t i = 0, n = s->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && before(&s->heap[c + 1], &s->heap[c])) c++;
        if (!before(&s->heap[c], &last)) break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (n) s->heap[i] = last;
    return top;
}

static kiln_status try_pair(bpe_state *s, int32_t left, int32_t right) {
    if (left < 0 || right < 0) return KILN_OK;
    const bpe_sym *l = &s->sym[left], *r = &s->sym[right];
    int32_t rank = kiln_vocab_merge_rank(s->v, s->word + l->start, l->n, s->word + r->start, r->n);
    if (rank < 0) return KILN_OK;
    return heap_push(s, (bpe_pair){rank, left, right, l->n + r->n});
}

/* The token of a final symbol; a symbol that is no token is emitted as the
 * single-byte tokens of its bytes that exist (llama.cpp's fallback). */
static kiln_status emit(const kiln_vocab *v, const char *s, size_t n, kiln_ivec *out) {
    int32_t id = kiln_vocab_find(v, s, n);
    if (id >= 0) return kiln_ivec_push(out, id);
    for (size_t i = 0; i < n; i++) {
        id = kiln_vocab_find(v, s + i, 1);
        if (id < 0) continue;
        kiln_status st = kiln_ivec_push(out, id);
        if (st) return st;
    }
    return KILN_OK;
}

/* BPE over the encoded word s->word[0..n). */
static kiln_status merge_word(bpe_state *s, size_t n, kiln_ivec *out) {
    const kiln_vocab *v = s->v;
    if (v->ignore_merges) {
        int32_t id = kiln_vocab_find(v, s->word, n);
        if (id >= 0) return kiln_ivec_push(out, id);
    }
    kiln_status st = grow((void **)&s->sym, &s->sym_cap, n, sizeof(bpe_sym));
    if (st) return st;
    int32_t count = 0;
    for (size_t off = 0; off < n;) {
        size_t len = KILN_MIN(kiln_utf8_lead_len((uint8_t)s->word[off]), n - off);
        s->sym[count] = (bpe_sym){count - 1, off + len == n ? -1 : count + 1, (uint32_t)off,
                                  (uint32_t)len};
        count++;
        off += len;
    }
    s->heap_n = 0;
    for (int32_t i = 1; i < count && st == KILN_OK; i++) st = try_pair(s, i - 1, i);
    while (s->heap_n > 0 && st == KILN_OK) {
        bpe_pair p = heap_pop(s);
        bpe_sym *l = &s->sym[p.left], *r = &s->sym[p.right];
        /* Stale: a side was merged away or grew since it was queued. */
        if (l->n == 0 || r->n == 0 || l->n + r->n != p.size) continue;
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) s->sym[r->next].prev = p.left;
        st = try_pair(s, l->prev, p.left);
        if (st == KILN_OK) st = try_pair(s, p.left, l->next);
    }
    for (int32_t i = 0; i < count && st == KILN_OK; i++)
        if (s->sym[i].n > 0) st = emit(v, s->word + s->sym[i].start, s->sym[i].n, out);
    return st;
}

kiln_status kiln_bpe_tokenize(const kiln_vocab *v, const char *text, size_t n, kiln_ivec *out) {
    if (n == 0) return KILN_OK;
    size_t bytes_cp, bytes_fl;
    if (!kiln_mul_size(n, sizeof(uint32_t), &bytes_cp) || !kiln_mul_size(n, sizeof(uint16_t), &bytes_fl))
        return kiln_error(KILN_E_OOM_HOST, "bpe: size overflow");
    uint32_t *cps = kiln_malloc(bytes_cp);
    uint16_t *fl = kiln_malloc(bytes_fl);
    kiln_ivec words = {0};
    bpe_state s = {v, NULL, 0, NULL, 0, NULL, 0, 0};
    kiln_status st = KILN_OK;
    if (!cps || !fl) st = kiln_error(KILN_E_OOM_HOST, "bpe: out of memory for %zu bytes", n);

    size_t n_cp = 0;
    for (size_t pos = 0; pos < n && st == KILN_OK;) {
        uint32_t cp = kiln_utf8_next_lenient(text, n, &pos);
        cps[n_cp] = cp;
        fl[n_cp] = kiln_ucd_flags(cp);
        n_cp++;
    }
    if (st == KILN_OK) st = kiln_pretok_split(v->pre, cps, fl, n_cp, &words);

    size_t first = 0;
    for (size_t w = 0; w < words.n && st == KILN_OK; w++) {
        size_t len = (size_t)words.v[w];
        /* Each code point is at most 4 UTF-8 bytes, each byte at most 2 in
         * the byte alphabet. */
        st = grow((void **)&s.word, &s.word_cap, len * 8, 1);
        if (st) break;
        size_t wn = 0;
        for (size_t i = first; i < first + len; i++) {
            char utf8[4];
            size_t k = kiln_utf8_put(cps[i], utf8);
            for (size_t j = 0; j < k; j++) wn += kiln_utf8_put(kiln_bytelevel_cp((uint8_t)utf8[j]), s.word + wn);
        }
        first += len;
        st = merge_word(&s, wn, out);
    }

    kiln_free(cps);
    kiln_free(fl);
    kiln_ivec_free(&words);
    kiln_free(s.word);
    kiln_free(s.sym);
    kiln_free(s.heap);
    return st;
}
