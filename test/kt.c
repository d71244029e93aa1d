/* kt.c - the test harness (see kt.h). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kt.h"
#include "kiln.h"

int kt_case_failed;
int kt_case_skipped;
static int n_passed, n_failed, n_skipped;

void kt_fail(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("  FAIL %s:%d: ", file, line);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    kt_case_failed = 1;
}

/* KILN_TEST_SKIP="case,case,...": cases to skip by name (slow backends). */
static int skip_listed(const char *name) {
    const char *list = getenv("KILN_TEST_SKIP");
    size_t n = strlen(name);
    for (const char *p = list; p && (p = strstr(p, name)) != NULL; p += n)
        if ((p == list || p[-1] == ',') && (p[n] == ',' || p[n] == '\0')) return 1;
    return 0;
}

void kt_run(const char *name, void (*fn)(void)) {
    kt_case_failed = 0;
    kt_case_skipped = 0;
    if (skip_listed(name)) kt_case_skipped = 1;
    else fn();
    if (kt_case_failed) {
        n_failed++;
        printf("FAIL %s\n", name);
    } else if (kt_case_skipped) {
        n_skipped++;
        printf("SKIP %s\n", name);
    } else {
        n_passed++;
        printf("ok   %s\n", name);
    }
    fflush(stdout);
}

int kt_finish(void) {
    /* the leak guard (kiln_memory_leak_count): a handle freed with memory
     * still tagged to it fails the program, whatever its cases said */
    uint64_t leaks = kiln_memory_leak_count();
    if (leaks) {
        printf("FAIL leak guard: %llu allocations were still tagged to a freed handle (see the log above)\n",
               (unsigned long long)leaks);
        n_failed++;
    }
    printf("kt: %d passed, %d failed, %d skipped\n", n_passed, n_failed, n_skipped);
    fflush(stdout); /* LeakSanitizer exits without flushing stdio */
    return n_failed ? 1 : 0;
}

int kt_model_load(const char *path, const kiln_model_params *params, kiln_model **out) {
    kiln_model_params p;
    kiln_model_params_init(&p);
    if (params) memcpy(&p, params, params->struct_size < sizeof p ? params->struct_size : sizeof p);
    if (!p.backend) p.backend = getenv("KILN_BACKEND");
    return kiln_model_load(path, &p, out);
}

const char *kt_shared(const char *rel) {
    static char paths[16][1024];
    static int next;
    const char *dir = getenv("KILN_SHARED");
    if (!dir || !*dir) dir = "../shared";
    char *p = paths[next++ % 16];
    snprintf(p, 1024, "%s/%s", dir, rel);
    return access(p, R_OK) == 0 ? p : NULL;
}

int kt_on_cpu(void) {
    const char *b = getenv("KILN_BACKEND");
    return !b || !*b || strcmp(b, "cpu") == 0;
}
