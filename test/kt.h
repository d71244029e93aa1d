/*
 * kt.h - kiln's minimal test harness. Each test/test_*.c is one program:
 *
 *     static void test_something(void) { KT_CHECK(1 + 1 == 2); ... }
 *     int main(void) { KT_RUN(test_something); return kt_finish(); }
 *
 * A test case passes if no KT_CHECK in it failed. kt_finish() prints
 * "kt: N passed, N failed" (read by test/run.sh) and returns the exit code.
 * KT_SKIP(reason) marks the case skipped (e.g. ../shared missing).
 * KILN_TEST_SKIP="case,case" skips cases by name (test/vulkan.sh uses it to
 * leave the slowest cases out on lavapipe).
 */
#ifndef KILN_KT_H
#define KILN_KT_H

#include <stdio.h>

extern int kt_case_failed;
extern int kt_case_skipped;

void kt_run(const char *name, void (*fn)(void));
int kt_finish(void);
void kt_fail(const char *file, int line, const char *fmt, ...);
/* Path of a file in ../shared (KILN_SHARED overrides the folder), or NULL
 * if it does not exist. Returned string is static per call site use. */
const char *kt_shared(const char *rel);

/* 1 when the model tests run on the CPU backend ($KILN_BACKEND unset,
 * empty or "cpu"): some checks are about that backend's own choices
 * (zero-copy mapped weights, one pool allocation per ubatch). */
int kt_on_cpu(void);
/* kiln_model_load with the backend taken from $KILN_BACKEND when the
 * params (NULL: defaults) name none, so every model test runs unchanged on
 * any backend (KILN_BACKEND=cuda make check ...). */
struct kiln_model_params;
struct kiln_model;
int kt_model_load(const char *path, const struct kiln_model_params *params, struct kiln_model **out);

#define KT_RUN(fn) kt_run(#fn, fn)
#define KT_CHECK(cond)                                                  \
    do {                                                                \
        if (!(cond)) kt_fail(__FILE__, __LINE__, "check failed: %s", #cond); \
    } while (0)
#define KT_CHECKF(cond, ...)                                            \
    do {                                                                \
        if (!(cond)) kt_fail(__FILE__, __LINE__, __VA_ARGS__);          \
    } while (0)
#define KT_CHECK_OK(expr)                                               \
    do {                                                                \
        int kt_st_ = (expr);                                            \
        if (kt_st_ != 0)                                                \
            kt_fail(__FILE__, __LINE__, "%s -> %d (%s)", #expr, kt_st_, kiln_last_error()); \
    } while (0)
#define KT_SKIP(reason)                                                 \
    do {                                                                \
        kt_case_skipped = 1;                                            \
        printf("  skip: %s\n", reason);                                 \
        return;                                                         \
    } while (0)

#endif
