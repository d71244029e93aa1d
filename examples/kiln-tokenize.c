/*
 * kiln-tokenize - prints the token ids of a text, space-separated on one
 * line, using only kiln's public API (it links the shared library).
 *
 *     kiln-tokenize -m FILE [-p TEXT | -f FILE] [--no-bos] [--parse-special]
 *
 *   -m FILE           the model (only its tokenizer is loaded)
 *   -p TEXT           the text (default: standard input)
 *   -f FILE           read the text from FILE
 *   --no-bos          do not add the BOS token the model asks for
 *   --parse-special   turn special-token text such as "<|eos|>" into its id
 *
 * Exit status: 0 on success, 1 on a failure ("kiln-tokenize: <reason>" on
 * stderr), 2 on bad usage.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln.h"

static void usage(void) {
    fprintf(stderr,
            "usage: kiln-tokenize -m FILE [-p TEXT | -f FILE] [--no-bos] [--parse-special]\n");
}

/* Reads all of f into a malloc'd buffer. */
static char *slurp(FILE *f, size_t *len) {
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap) break;
        char *bigger = cap < SIZE_MAX / 2 ? realloc(buf, cap * 2) : NULL;
        if (!bigger) {
            free(buf);
            return NULL;
        }
        buf = bigger;
        cap *= 2;
    }
    if (buf && ferror(f)) {
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

int main(int argc, char **argv) {
    const char *model_path = NULL, *prompt = NULL, *file = NULL;
    uint32_t flags = KILN_TOKENIZE_ADD_BOS;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-m") == 0 && i + 1 < argc) {
            model_path = argv[++i];
        } else if (strcmp(a, "-p") == 0 && i + 1 < argc) {
            prompt = argv[++i];
        } else if (strcmp(a, "-f") == 0 && i + 1 < argc) {
            file = argv[++i];
        } else if (strcmp(a, "--no-bos") == 0) {
            flags &= ~KILN_TOKENIZE_ADD_BOS;
        } else if (strcmp(a, "--parse-special") == 0) {
            flags |= KILN_TOKENIZE_PARSE_SPECIAL;
        } else {
            usage();
            return 2;
        }
    }
    if (!model_path || (prompt && file)) {
        usage();
        return 2;
    }

    char *text = NULL;
    size_t len = 0;
    if (prompt) {
        len = strlen(prompt);
    } else {
        FILE *f = file ? fopen(file, "rb") : stdin;
        if (!f) {
            fprintf(stderr, "kiln-tokenize: cannot open %s\n", file);
            return 1;
        }
        text = slurp(f, &len);
        if (f != stdin) fclose(f);
        if (!text) {
            fprintf(stderr, "kiln-tokenize: cannot read %s\n", file ? file : "standard input");
            return 1;
        }
    }

    kiln_model_params params;
    kiln_model_params_init(&params);
    params.flags |= KILN_MODEL_VOCAB_ONLY;
    kiln_model *model = NULL;
    kiln_status st = kiln_model_load(model_path, &params, &model);
    if (st != KILN_OK) {
        fprintf(stderr, "kiln-tokenize: %s: %s\n", model_path, kiln_last_error());
        free(text);
        return 1;
    }

    const char *src = prompt ? prompt : text;
    size_t n = 0;
    int32_t *ids = NULL;
    st = kiln_tokenize(model, src, len, flags, NULL, 0, &n);
    if (st == KILN_OK) {
        ids = malloc((n ? n : 1) * sizeof(int32_t));
        st = ids ? kiln_tokenize(model, src, len, flags, ids, n, &n) : KILN_E_OOM_HOST;
    }
    if (st == KILN_OK) {
        for (size_t i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
        printf("\n");
    } else {
        fprintf(stderr, "kiln-tokenize: %s\n",
                st == KILN_E_OOM_HOST && !*kiln_last_error() ? "out of memory" : kiln_last_error());
    }
    free(ids);
    free(text);
    kiln_model_free(model);
    return st == KILN_OK ? 0 : 1;
}
