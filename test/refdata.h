/*
 * refdata.h - readers for ../shared/reference: the prompts file and
 * llama.cpp's "LGTS" logits files (format in ../shared/README.md).
 */
#ifndef KILN_REFDATA_H
#define KILN_REFDATA_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct ref_prompt {
    uint32_t n_tokens;
    int32_t *tokens;
    uint32_t n_rows;
    int32_t *row_pos;
    float *logits;           /* n_rows * n_vocab */
    uint32_t n_gen;
    int32_t *gen;
} ref_prompt;

typedef struct ref_file {
    uint32_t n_vocab, n_prompts;
    ref_prompt *p;
    uint8_t *data;
} ref_file;

static inline void *ref_read_all(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *d = malloc((size_t)n + 1);
    if (d && fread(d, 1, (size_t)n, f) != (size_t)n) {
        free(d);
        d = NULL;
    }
    if (d) d[n] = 0;
    fclose(f);
    *size = (size_t)n;
    return d;
}

static inline int ref_load(const char *path, ref_file *rf) {
    size_t size, o = 0;
    memset(rf, 0, sizeof *rf);
    uint8_t *d = ref_read_all(path, &size);
    if (!d || size < 16 || memcmp(d, "LGTS", 4) != 0) {
        free(d);
        return -1;
    }
#define RD_U32(v) do { memcpy(&(v), d + o, 4); o += 4; } while (0)
    uint32_t ver;
    o = 4;
    RD_U32(ver);
    RD_U32(rf->n_vocab);
    RD_U32(rf->n_prompts);
    rf->p = calloc(rf->n_prompts, sizeof *rf->p);
    for (uint32_t i = 0; i < rf->n_prompts; i++) {
        ref_prompt *p = &rf->p[i];
        RD_U32(p->n_tokens);
        p->tokens = (int32_t *)(d + o);
        o += 4u * p->n_tokens;
        RD_U32(p->n_rows);
        p->row_pos = (int32_t *)(d + o);
        o += 4u * p->n_rows;
        p->logits = (float *)(d + o);
        o += 4ull * p->n_rows * rf->n_vocab;
        RD_U32(p->n_gen);
        p->gen = (int32_t *)(d + o);
        o += 4u * p->n_gen;
    }
#undef RD_U32
    rf->data = d;
    return 0;
}

static inline void ref_free(ref_file *rf) {
    free(rf->p);
    free(rf->data);
}

/* Prompts, one per line, with \n \t \\ escapes. Returns count; strings
 * malloc'd into out[]. */
static inline int ref_prompts(const char *path, char **out, int max) {
    size_t size;
    char *d = ref_read_all(path, &size);
    if (!d) return -1;
    int n = 0;
    size_t i = 0;
    while (i < size && n < max) {
        size_t j = i;
        while (j < size && d[j] != '\n') j++;
        char *s = malloc(j - i + 1);
        size_t k = 0;
        for (size_t x = i; x < j; x++) {
            if (d[x] == '\\' && x + 1 < j) {
                char c = d[++x];
                s[k++] = c == 'n' ? '\n' : c == 't' ? '\t' : c;
            } else {
                s[k++] = d[x];
            }
        }
        s[k] = 0;
        out[n++] = s;
        i = j + 1;
    }
    free(d);
    return n;
}

#endif
