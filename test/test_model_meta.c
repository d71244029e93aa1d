/*
 * test_model_meta.c - kiln_model_meta_str, the public GGUF metadata getter
 * (used by kiln-server for tokenizer.chat_template): a string key, the size
 * protocol, a missing key and a key that is not a string.
 */
#include <string.h>

#include "kiln.h"
#include "kt.h"

static void test_meta_str(void) {
    kiln_model *m = NULL;
    KT_CHECK_OK(kt_model_load("models/tiny-target-q4_k_m.gguf", NULL, &m));
    if (!m) return;
    size_t n = 0;
    KT_CHECK_OK(kiln_model_meta_str(m, "general.architecture", NULL, 0, &n));
    KT_CHECK(n == strlen("llama") + 1);
    char small[3], buf[16];
    KT_CHECK(kiln_model_meta_str(m, "general.architecture", small, sizeof small, &n) == KILN_E_BUFFER_TOO_SMALL);
    KT_CHECK(n == 6);
    KT_CHECK_OK(kiln_model_meta_str(m, "general.architecture", buf, sizeof buf, &n));
    KT_CHECK(!strcmp(buf, "llama"));
    KT_CHECK(kiln_model_meta_str(m, "tokenizer.chat_template", NULL, 0, &n) == KILN_E_NOT_FOUND);
    KT_CHECK(kiln_model_meta_str(m, "llama.block_count", NULL, 0, &n) == KILN_E_INVALID_ARG);
    KT_CHECK(strstr(kiln_last_error(), "llama.block_count") != NULL);
    KT_CHECK(kiln_model_meta_str(NULL, "x", NULL, 0, &n) == KILN_E_INVALID_ARG);
    KT_CHECK(kiln_model_meta_str(m, NULL, NULL, 0, &n) == KILN_E_INVALID_ARG);
    KT_CHECK(kiln_model_meta_str(m, "x", NULL, 0, NULL) == KILN_E_INVALID_ARG);
    kiln_model_free(m);
}

int main(void) {
    KT_RUN(test_meta_str);
    return kt_finish();
}
