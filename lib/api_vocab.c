/*
 * api_vocab.c - the public tokenizer functions: argument checks, then the
 * model's kiln_vocab.
 */
#include "model.h"

kiln_status kiln_tokenize(const kiln_model *model, const char *text, size_t text_len, uint32_t flags,
                          int32_t *tokens, size_t capacity, size_t *n_out) {
    kiln_error_clear();
    if (!model || !n_out || (!text && text_len > 0))
        return kiln_error(KILN_E_INVALID_ARG, "kiln_tokenize: NULL argument");
    return kiln_vocab_tokenize(model->vocab, text ? text : "", text_len, flags, tokens, capacity, n_out);
}

kiln_status kiln_detokenize(const kiln_model *model, const int32_t *tokens, size_t n, uint32_t flags, char *buf,
                            size_t capacity, size_t *n_out) {
    kiln_error_clear();
    if (!model || !n_out || (!tokens && n > 0))
        return kiln_error(KILN_E_INVALID_ARG, "kiln_detokenize: NULL argument");
    return kiln_vocab_detokenize(model->vocab, tokens, n, flags, buf, capacity, n_out);
}

int32_t kiln_token_bos(const kiln_model *m) { return m ? kiln_vocab_bos(m->vocab) : -1; }
int32_t kiln_token_eos(const kiln_model *m) { return m ? kiln_vocab_eos(m->vocab) : -1; }
int32_t kiln_token_is_eog(const kiln_model *m, int32_t t) { return m && kiln_vocab_is_eog(m->vocab, t) ? 1 : 0; }

/* ---- streaming detokenizer: a kiln_detok plus a model reference ---- */

#include "detok.h"
#include "memtrack.h"

struct kiln_detokenizer {
    kiln_model *model;
    kiln_detok *detok;
};

kiln_status kiln_detokenizer_create(kiln_model *model, uint32_t flags, kiln_detokenizer **out) {
    kiln_error_clear();
    if (!out) return kiln_error(KILN_E_INVALID_ARG, "kiln_detokenizer_create: out is NULL");
    *out = NULL;
    if (!model) return kiln_error(KILN_E_INVALID_ARG, "kiln_detokenizer_create: model is NULL");
    kiln_detokenizer *d = kiln_calloc(1, sizeof *d);
    if (!d) return kiln_error(KILN_E_OOM_HOST, "kiln_detokenizer_create: out of memory");
    kiln_mem_owner_open(KILN_MEM_OWNER_DETOKENIZER, d, NULL);
    KILN_MEM_SCOPE(d, KILN_MEM_TOKENIZER);
    kiln_status st = kiln_detok_create_vocab(model->vocab, flags, &d->detok);
    if (st) {
        kiln_free(d);
        kiln_mem_owner_close(d);
        return st;
    }
    kiln_model_retain(model);
    d->model = model;
    *out = d;
    return KILN_OK;
}

void kiln_detokenizer_free(kiln_detokenizer *d) {
    if (!d) return;
    kiln_detok_free(d->detok);
    kiln_model_release(d->model);
    kiln_free(d);
    kiln_mem_owner_close(d); /* the leak guard */
}

kiln_status kiln_detokenizer_push(kiln_detokenizer *d, int32_t token, char *buf, size_t capacity,
                                  size_t *n_out) {
    kiln_error_clear();
    if (!d || !n_out) return kiln_error(KILN_E_INVALID_ARG, "kiln_detokenizer_push: NULL argument");
    return kiln_detok_push(d->detok, token, buf, capacity, n_out);
}

kiln_status kiln_detokenizer_flush(kiln_detokenizer *d, char *buf, size_t capacity, size_t *n_out) {
    kiln_error_clear();
    if (!d || !n_out) return kiln_error(KILN_E_INVALID_ARG, "kiln_detokenizer_flush: NULL argument");
    return kiln_detok_flush(d->detok, buf, capacity, n_out);
}
