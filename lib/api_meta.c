/*
 * api_meta.c - the public GGUF metadata getter of a loaded model (e.g.
 * tokenizer.chat_template for a server's chat templates). Reads the model's
 * own mapping; nothing is allocated.
 */
#include <string.h>

#include "model.h"

kiln_status kiln_model_meta_str(const kiln_model *model, const char *key, char *buf, size_t capacity,
                                size_t *n_out) {
    kiln_error_clear();
    if (!model || !key || !n_out) return kiln_error(KILN_E_INVALID_ARG, "kiln_model_meta_str: NULL argument");
    if (!model->gguf) return kiln_error(KILN_E_NOT_FOUND, "kiln_model_meta_str: the model has no metadata");
    int64_t idx = kiln_gguf_find_key(model->gguf, key);
    if (idx < 0) return kiln_error(KILN_E_NOT_FOUND, "kiln_model_meta_str: no metadata key '%s'", key);
    const char *s = NULL;
    uint64_t len = 0;
    kiln_status st = kiln_gguf_get_str(model->gguf, key, &s, &len);
    if (st != KILN_OK)
        return kiln_error(KILN_E_INVALID_ARG, "kiln_model_meta_str: metadata key '%s' is a %s, not a string", key,
                          kiln_gguf_type_name(kiln_gguf_key_type(model->gguf, idx)));
    if (len >= SIZE_MAX) return kiln_error(KILN_E_FORMAT, "kiln_model_meta_str: '%s' is too long", key);
    /* one byte more than the text: the copy is NUL-terminated */
    *n_out = (size_t)len + 1;
    if (!buf) return KILN_OK;
    if (capacity < (size_t)len + 1)
        return kiln_error(KILN_E_BUFFER_TOO_SMALL, "kiln_model_meta_str: '%s' needs %zu bytes, buffer has %zu", key,
                          (size_t)len + 1, capacity);
    memcpy(buf, s, (size_t)len);
    buf[len] = '\0';
    return KILN_OK;
}
