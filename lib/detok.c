/*
 * detok.c - the streaming detokenizer (see detok.h). The only state is the
 * tail of an incomplete UTF-8 sequence, at most 3 bytes.
 */
#include <stdbool.h>
#include <string.h>

#include "detok.h"
#include "internal.h"
#include "unicode.h"

struct kiln_detok {
    const kiln_vocab *v;
    uint32_t flags;
    uint8_t held[3];
    size_t n_held;
};

kiln_status kiln_detok_create_vocab(const kiln_vocab *v, uint32_t flags, kiln_detok **out) {
    if (!out) return kiln_error(KILN_E_INVALID_ARG, "detokenizer: NULL out");
    *out = NULL;
    if (!v) return kiln_error(KILN_E_INVALID_ARG, "detokenizer: NULL vocab");
    kiln_detok *d = kiln_calloc(1, sizeof(*d));
    if (!d) return kiln_error(KILN_E_OOM_HOST, "detokenizer: out of memory");
    d->v = v;
    d->flags = flags;
    *out = d;
    return KILN_OK;
}

void kiln_detok_free(kiln_detok *d) { kiln_free(d); }

static const char k_replacement[3] = {'\xEF', '\xBF', '\xBD'}; /* U+FFFD */

/* Converts held ++ s[0..n) into complete, well-formed UTF-8. Writes to out
 * when non-NULL; the incomplete tail (when !final) goes to tail/n_tail.
 * Returns the output length. */
static size_t convert(const uint8_t *held, size_t n_held, const uint8_t *s, size_t n, bool final,
                      char *out, uint8_t *tail, size_t *n_tail) {
    size_t total = n_held + n, i = 0, o = 0;
    *n_tail = 0;
    while (i < total) {
        uint8_t b[4];
        size_t k = KILN_MIN((size_t)4, total - i);
        for (size_t j = 0; j < k; j++) b[j] = i + j < n_held ? held[i + j] : s[i + j - n_held];
        int r = kiln_utf8_check(b, k);
        if (r > 0) {
            if (out) memcpy(out + o, b, (size_t)r);
            o += (size_t)r;
            i += (size_t)r;
        } else if (r == 0 && !final) {
            /* A proper prefix that reaches the end (so k < 4): keep it. */
            memcpy(tail, b, k);
            *n_tail = k;
            break;
        } else {
            if (out) memcpy(out + o, k_replacement, 3);
            o += 3;
            i += r == 0 ? k : (size_t)-r;
        }
    }
    return o;
}

static kiln_status emit(kiln_detok *d, const char *piece, size_t n, bool final, char *buf,
                        size_t capacity, size_t *n_out) {
    uint8_t tail[4];
    size_t n_tail;
    size_t need = convert(d->held, d->n_held, (const uint8_t *)piece, n, final, NULL, tail, &n_tail);
    *n_out = need;
    if (!buf) return KILN_OK;
    if (capacity < need)
        return kiln_error(KILN_E_BUFFER_TOO_SMALL, "detokenizer: %zu bytes do not fit in %zu",
                          need, capacity);
    convert(d->held, d->n_held, (const uint8_t *)piece, n, final, buf, tail, &n_tail);
    memcpy(d->held, tail, n_tail);
    d->n_held = n_tail;
    return KILN_OK;
}

kiln_status kiln_detok_push(kiln_detok *d, int32_t token, char *buf, size_t capacity,
                            size_t *n_out) {
    if (!d || !n_out) return kiln_error(KILN_E_INVALID_ARG, "detokenizer: NULL argument");
    *n_out = 0;
    if (token < 0 || token >= kiln_vocab_n_tokens(d->v))
        return kiln_error(KILN_E_INVALID_ARG, "detokenizer: token %d is not in [0, %d)", token,
                          kiln_vocab_n_tokens(d->v));
    size_t n;
    const char *piece = kiln_vocab_piece(d->v, token, d->flags, &n);
    return emit(d, piece, n, false, buf, capacity, n_out);
}

kiln_status kiln_detok_flush(kiln_detok *d, char *buf, size_t capacity, size_t *n_out) {
    if (!d || !n_out) return kiln_error(KILN_E_INVALID_ARG, "detokenizer: NULL argument");
    *n_out = 0;
    return emit(d, NULL, 0, true, buf, capacity, n_out);
}
