/*
 * vocab_spm.c - the SentencePiece-style tokenizer ("llama" GGUF vocabs), as
 * llama.cpp runs it: the text (spaces already turned into U+2581) is cut
 * into UTF-8 characters, then the adjacent pair whose concatenation is the
 * highest-scoring token is merged, repeatedly, until no pair forms a token.
 * What is left and is not a token falls back to byte tokens <0xNN>.
 *
 * Statuses: KILN_E_OOM_HOST only. Nothing is kept between calls.
 */
#include "internal.h"
#include "unicode.h"
#include "vocab_internal.h"

typedef struct spm_sym {
    int32_t prev, next;  /* neighbours in the current segmentation, -1 */
    uint32_t start, n;   /* bytes of the text; n == 0 once merged away */
} spm_sym;

typedef struct spm_pair {
    float score;
    int32_t left, right;
    uint32_t size; /* bytes of left + right when queued */
} spm_pair;

typedef struct spm_heap {
    spm_pair *a;
    size_t n, cap;
} spm_heap;

/* The pair merged first: highest score, then leftmost. */
static bool before(const spm_pair *x, const spm_pair *y) {
    return x->score > y->score || (x->score == y->score && x->left < y->left);
}

static kiln_status heap_push(spm_heap *h, spm_pair p) {
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64, bytes;
        if (!kiln_mul_size(cap, sizeof(spm_pair), &bytes))
            return kiln_error(KILN_E_OOM_HOST, "spm: size overflow");
        spm_pair *a = kiln_realloc(h->a, bytes);
        if (!a) return kiln_error(KILN_E_OOM_HOST, "spm: out of memory");
        h->a = a;
        h->cap = cap;
    }
    size_t i = h->n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!before(&p, &h->a[parent])) break;
        h->a[i] = h->a[parent];
        i = parent;
    }
    h->a[i] = p;
    return KILN_OK;
}

static spm_pair heap_pop(spm_heap *h) {
    spm_pair top = h->a[0], last = h->a[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && before(&h->a[c + 1], &h->a[c])) c++;
        if (!before(&h->a[c], &last)) break;
        h->a[i] = h->a[c];
        i = c;
    }
    if (h->n) h->a[i] = last;
    return top;
}

typedef struct spm_state {
    const kiln_vocab *v;
    const char *text;
    spm_sym *sym;
    spm_heap heap;
} spm_state;

/* Queues (left, right) if their concatenation is a token. */
static kiln_status try_pair(spm_state *s, int32_t left, int32_t right) {
    if (left < 0 || right < 0) return KILN_OK;
    const spm_sym *l = &s->sym[left], *r = &s->sym[right];
    uint32_t size = l->n + r->n;
    int32_t id = kiln_vocab_find(s->v, s->text + l->start, size);
    if (id < 0) return KILN_OK;
    return heap_push(&s->heap, (spm_pair){s->v->tok[id].score, left, right, size});
}

/* Emits a final symbol: its token, or its bytes as byte tokens. */
static kiln_status emit(spm_state *s, const spm_sym *sym, kiln_ivec *out) {
    const kiln_vocab *v = s->v;
    int32_t id = kiln_vocab_find(v, s->text + sym->start, sym->n);
    if (id >= 0) return kiln_ivec_push(out, id);
    for (uint32_t i = 0; i < sym->n; i++) {
        int32_t b = v->byte_tok[(uint8_t)s->text[sym->start + i]];
        /* A vocab without byte tokens: llama.cpp would fail here; the
         * unknown token is the graceful answer (or nothing at all). */
        if (b < 0) b = v->unk;
        if (b < 0) continue;
        kiln_status st = kiln_ivec_push(out, b);
        if (st) return st;
    }
    return KILN_OK;
}

kiln_status kiln_spm_tokenize(const kiln_vocab *v, const char *text, size_t n, kiln_ivec *out) {
    if (n == 0) return KILN_OK;
    size_t bytes;
    if (!kiln_mul_size(n, sizeof(spm_sym), &bytes))
        return kiln_error(KILN_E_OOM_HOST, "spm: size overflow");
    spm_state s = {v, text, kiln_malloc(bytes), {0}};
    if (!s.sym) return kiln_error(KILN_E_OOM_HOST, "spm: out of memory for %zu bytes", n);

    int32_t count = 0;
    for (size_t off = 0; off < n;) {
        size_t len = KILN_MIN(kiln_utf8_lead_len((uint8_t)text[off]), n - off);
        s.sym[count] = (spm_sym){count - 1, off + len == n ? -1 : count + 1, (uint32_t)off,
                                 (uint32_t)len};
        count++;
        off += len;
    }

    kiln_status st = KILN_OK;
    for (int32_t i = 1; i < count && st == KILN_OK; i++) st = try_pair(&s, i - 1, i);
    while (s.heap.n > 0 && st == KILN_OK) {
        spm_pair p = heap_pop(&s.heap);
        spm_sym *l = &s.sym[p.left], *r = &s.sym[p.right];
        /* Stale: one side was merged away or grew since it was queued. */
        if (l->n == 0 || r->n == 0 || l->n + r->n != p.size) continue;
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) s.sym[r->next].prev = p.left;
        st = try_pair(&s, l->prev, p.left);
        if (st == KILN_OK) st = try_pair(&s, p.left, l->next);
    }
    for (int32_t i = 0; i != -1 && st == KILN_OK; i = s.sym[i].next) st = emit(&s, &s.sym[i], out);

    kiln_free(s.heap.a);
    kiln_free(s.sym);
    return st;
}
