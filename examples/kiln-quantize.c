/*
 * kiln-quantize - converts a GGUF model's weights to another type
 * (a thin front end of kiln_model_quantize).
 *
 *   kiln-quantize [options] IN.gguf OUT.gguf TYPE
 *
 * TYPE: q4_0 q4_1 q5_0 q5_1 q8_0 q4_k q5_k q6_k q4_k_m q5_k_m f16 bf16 f32
 * (case-insensitive; q4_k_s / q5_k_s are accepted for q4_k / q5_k).
 * Options: -t N threads (default: all cores), --pure (no per-tensor mix),
 * --allow-requantize (accept quantized input), -q (no progress lines).
 * Exit status: 0 success, 1 the conversion failed (no output file is left),
 * 2 bad usage.
 *
 * Uses include/kiln.h only.
 */
#define _POSIX_C_SOURCE 200809L /* strcasecmp */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "kiln.h"

static const struct {
    const char *name;
    int32_t ftype;
} ftypes[] = {
    {"q4_0", KILN_FTYPE_Q4_0},   {"q4_1", KILN_FTYPE_Q4_1},   {"q5_0", KILN_FTYPE_Q5_0},
    {"q5_1", KILN_FTYPE_Q5_1},   {"q8_0", KILN_FTYPE_Q8_0},   {"q4_k", KILN_FTYPE_Q4_K},
    {"q5_k", KILN_FTYPE_Q5_K},   {"q6_k", KILN_FTYPE_Q6_K},   {"q4_k_m", KILN_FTYPE_Q4_K_M},
    {"q5_k_m", KILN_FTYPE_Q5_K_M}, {"f16", KILN_FTYPE_F16},   {"bf16", KILN_FTYPE_BF16},
    {"f32", KILN_FTYPE_F32},     {"q4_k_s", KILN_FTYPE_Q4_K}, {"q5_k_s", KILN_FTYPE_Q5_K},
};

/* GGUF tensor type ids, for the progress lines only. */
static const char *type_name(int32_t t) {
    static const char *names[] = {"f32", "f16", "q4_0", "q4_1", "?", "?", "q5_0", "q5_1", "q8_0",
                                  "q8_1", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "q8_K"};
    if (t >= 0 && t < (int32_t)(sizeof names / sizeof names[0])) return names[t];
    return t == 30 ? "bf16" : "?";
}

static void usage(FILE *f) {
    fprintf(f,
        "usage: kiln-quantize [options] IN.gguf OUT.gguf TYPE\n"
        "  TYPE              q4_0 q4_1 q5_0 q5_1 q8_0 q4_k q5_k q6_k q4_k_m q5_k_m f16 bf16 f32\n"
        "  -t N              threads (default: all cores)\n"
        "  --pure            every weight matrix in TYPE (no Q6_K output or mix)\n"
        "  --allow-requantize  accept already quantized input tensors\n"
        "  -q                no progress lines\n");
}

static int32_t progress(uint64_t i, uint64_t n, const char *name, int32_t type, void *user) {
    (void)user;
    fprintf(stderr, "[%4llu/%4llu] %-40s %s\n", (unsigned long long)i + 1, (unsigned long long)n, name,
            type_name(type));
    return 0;
}

int main(int argc, char **argv) {
    kiln_quantize_params qp;
    kiln_quantize_params_init(&qp);
    qp.progress = progress;
    const char *pos[3];
    int n_pos = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "-t") == 0 && i + 1 < argc) {
            char *end;
            long v = strtol(argv[++i], &end, 10);
            if (*end || v < 0 || v > 1024) {
                fprintf(stderr, "kiln-quantize: bad thread count '%s'\n", argv[i]);
                return 2;
            }
            qp.n_threads = (int32_t)v;
        } else if (strcmp(a, "--pure") == 0) {
            qp.flags |= KILN_QUANTIZE_PURE;
        } else if (strcmp(a, "--allow-requantize") == 0) {
            qp.flags |= KILN_QUANTIZE_ALLOW_REQUANTIZE;
        } else if (strcmp(a, "-q") == 0) {
            qp.progress = NULL;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "kiln-quantize: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        } else if (n_pos < 3) {
            pos[n_pos++] = a;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (n_pos != 3) {
        usage(stderr);
        return 2;
    }
    int found = 0;
    for (size_t i = 0; i < sizeof ftypes / sizeof ftypes[0]; i++)
        if (strcasecmp(pos[2], ftypes[i].name) == 0) {
            qp.ftype = ftypes[i].ftype;
            found = 1;
        }
    if (!found) {
        fprintf(stderr, "kiln-quantize: unknown type '%s'\n", pos[2]);
        usage(stderr);
        return 2;
    }
    kiln_status st = kiln_model_quantize(pos[0], pos[1], &qp);
    if (st != KILN_OK) {
        fprintf(stderr, "kiln-quantize: %s: %s\n", kiln_status_str(st), kiln_last_error());
        return 1;
    }
    if (qp.progress) fprintf(stderr, "kiln-quantize: wrote %s\n", pos[1]);
    return 0;
}
