// KILN_EXAMPLE_STATIC
/*
 * kiln-info - prints what a GGUF file holds: architecture, hyperparameters,
 * tokenizer, metadata and a table of tensors (like gguf-dump).
 *
 *     kiln-info FILE
 *
 * Exit status: 0 on success, 1 if the file cannot be read or is malformed
 * ("kiln-info: FILE: <reason>" on stderr), 2 on bad usage.
 *
 * It uses kiln's internal GGUF reader, so it links the static library (the
 * marker on the first line tells the Makefile).
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "gguf.h"
#include "internal.h"
#include "quant.h"

#define MAX_ARRAY_SHOWN 8
#define MAX_STRING_SHOWN 80

/* A string value, quoted, escaped and cut at MAX_STRING_SHOWN bytes. */
static void print_str(const char *s, uint64_t len) {
    putchar('"');
    uint64_t n = len < MAX_STRING_SHOWN ? len : MAX_STRING_SHOWN;
    for (uint64_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') printf("\\%c", c);
        else if (c == '\n') fputs("\\n", stdout);
        else if (c == '\t') fputs("\\t", stdout);
        else if (c < 0x20 || c == 0x7f) printf("\\x%02x", c);
        else putchar(c);
    }
    putchar('"');
    if (len > n) printf("...(%" PRIu64 " bytes)", len);
}

static void print_value(const kiln_gguf *g, const kiln_gguf_value *v, int depth) {
    if (v->type == KILN_GGUF_ARRAY) {
        printf("[%s x %" PRIu64 "]", kiln_gguf_type_name(v->elem_type), v->n);
        if (v->n == 0) return;
        if (depth >= 2) { fputs(" [...]", stdout); return; }
        fputs(" [", stdout);
        uint64_t shown = v->n < MAX_ARRAY_SHOWN ? v->n : MAX_ARRAY_SHOWN;
        for (uint64_t i = 0; i < shown; i++) {
            kiln_gguf_value e;
            if (kiln_gguf_value_elem(g, v, i, &e) != KILN_OK) break;
            if (i) fputs(", ", stdout);
            print_value(g, &e, depth + 1);
        }
        if (shown < v->n) fputs(", ...", stdout);
        putchar(']');
        return;
    }
    if (v->type == KILN_GGUF_STRING) {
        const char *s;
        uint64_t len;
        if (kiln_gguf_value_str(v, &s, &len) == KILN_OK) print_str(s, len);
        return;
    }
    if (v->type == KILN_GGUF_BOOL) {
        fputs(v->p[0] ? "true" : "false", stdout);
        return;
    }
    if (v->type == KILN_GGUF_FLOAT32 || v->type == KILN_GGUF_FLOAT64) {
        double d;
        if (kiln_gguf_value_f64(v, &d) == KILN_OK) printf("%.9g", d);
        return;
    }
    int64_t i;
    double d;
    if (kiln_gguf_value_i64(v, &i) == KILN_OK) printf("%" PRId64, i);
    else if (kiln_gguf_value_f64(v, &d) == KILN_OK) printf("%.0f", d); /* u64 > INT64_MAX */
}

static void print_key(const kiln_gguf *g, int64_t idx, bool *printed) {
    kiln_gguf_value v;
    if (kiln_gguf_key_value(g, idx, &v) != KILN_OK) return;
    printf("  %-40s %-4s = ", kiln_gguf_key_name(g, idx), kiln_gguf_type_name(v.type));
    print_value(g, &v, 0);
    putchar('\n');
    if (printed) printed[idx] = true;
}

static void print_named(const kiln_gguf *g, const char *key, bool *printed) {
    int64_t idx = kiln_gguf_find_key(g, key);
    if (idx >= 0) print_key(g, idx, printed);
    else printf("  %-40s (absent)\n", key);
}

static void human_size(uint64_t bytes, char *buf, size_t cap) {
    if (bytes >= (1ull << 30)) snprintf(buf, cap, "%.2f GiB", bytes / (double)(1ull << 30));
    else if (bytes >= (1ull << 20)) snprintf(buf, cap, "%.2f MiB", bytes / (double)(1ull << 20));
    else if (bytes >= 1024) snprintf(buf, cap, "%.2f KiB", bytes / 1024.0);
    else snprintf(buf, cap, "%" PRIu64 " B", bytes);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: kiln-info FILE\n  prints the metadata and tensors of a GGUF file\n");
        return 2;
    }
    const char *path = argv[1];
    kiln_gguf *g = NULL;
    if (kiln_gguf_open(path, &g) != KILN_OK) {
        fprintf(stderr, "kiln-info: %s: %s\n", path, kiln_last_error());
        return 1;
    }
    int64_t n_keys = kiln_gguf_n_keys(g);
    bool *printed = kiln_calloc((size_t)n_keys + 1, sizeof *printed);
    if (!printed) {
        fprintf(stderr, "kiln-info: %s: out of memory\n", path);
        kiln_gguf_close(g);
        return 1;
    }
    size_t file_size;
    kiln_gguf_base(g, &file_size);
    printf("%s: GGUF v%u, %zu bytes, %" PRId64 " keys, %" PRId64 " tensors, alignment %u, "
           "data at %" PRIu64 "\n",
           path, kiln_gguf_version(g), file_size, n_keys, kiln_gguf_n_tensors(g),
           kiln_gguf_alignment(g), kiln_gguf_data_offset(g));

    printf("\nmodel:\n");
    print_named(g, "general.architecture", printed);
    print_named(g, "general.name", printed);

    const char *arch;
    uint64_t arch_len;
    if (kiln_gguf_get_str(g, "general.architecture", &arch, &arch_len) == KILN_OK &&
        arch_len < 200) {
        char prefix[256];
        snprintf(prefix, sizeof prefix, "%.*s.", (int)arch_len, arch);
        size_t plen = strlen(prefix);
        printf("\nhyperparameters (%s*):\n", prefix);
        for (int64_t i = 0; i < n_keys; i++)
            if (strncmp(kiln_gguf_key_name(g, i), prefix, plen) == 0) print_key(g, i, printed);
    }

    printf("\ntokenizer:\n");
    print_named(g, "tokenizer.ggml.model", printed);
    print_named(g, "tokenizer.ggml.pre", printed);
    int32_t et;
    uint64_t n_tokens;
    if (kiln_gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n_tokens) == KILN_OK)
        printf("  %-40s %" PRIu64 "\n", "tokens", n_tokens);
    else
        printf("  %-40s (absent)\n", "tokens");

    printf("\nother metadata:\n");
    for (int64_t i = 0; i < n_keys; i++)
        if (!printed[i]) print_key(g, i, NULL);
    kiln_free(printed);

    int64_t n_tensors = kiln_gguf_n_tensors(g);
    uint64_t total = 0, by_type_n[KILN_TYPE_COUNT] = {0}, by_type_bytes[KILN_TYPE_COUNT] = {0};
    for (int64_t i = 0; i < n_tensors; i++) {
        const kiln_gguf_tensor *t = kiln_gguf_tensor_at(g, i);
        total += t->size;
        by_type_n[t->type]++; /* the reader only accepts known types */
        by_type_bytes[t->type] += t->size;
    }
    char hs[32];
    human_size(total, hs, sizeof hs);
    printf("\ntensors: %" PRId64 ", %" PRIu64 " bytes (%s)\n", n_tensors, total, hs);
    for (int t = 0; t < KILN_TYPE_COUNT; t++) {
        if (!by_type_n[t]) continue;
        human_size(by_type_bytes[t], hs, sizeof hs);
        printf("  %-8s %6" PRIu64 " tensors  %s\n", kiln_type_name(t), by_type_n[t], hs);
    }
    if (n_tensors > 0)
        printf("\n  %5s  %-40s %-8s %-26s %12s\n", "#", "name", "type", "dims", "bytes");
    for (int64_t i = 0; i < n_tensors; i++) {
        const kiln_gguf_tensor *t = kiln_gguf_tensor_at(g, i);
        char dims[96];
        size_t n = 0;
        for (uint32_t d = 0; d < t->n_dims && n < sizeof dims; d++)
            n += (size_t)snprintf(dims + n, sizeof dims - n, "%s%" PRId64, d ? " x " : "", t->ne[d]);
        printf("  %5" PRId64 "  %-40s %-8s %-26s %12" PRIu64 "\n", i, t->name,
               kiln_type_name(t->type), dims, t->size);
    }
    kiln_gguf_close(g);
    return 0;
}
