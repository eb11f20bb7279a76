/* check.h: the few assertions the pure-C tests share. A failed check prints where and why
 * and the test carries on, so one run lists every broken case; main ends with
 * `return check_summary("test_x");`, which is nonzero if anything failed. */
#ifndef MP_TESTS_CHECK_H
#define MP_TESTS_CHECK_H

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>

static int check_passed, check_failed;

#if defined(__GNUC__)
__attribute__((format(printf, 4, 5)))
#endif
static int check_report(int ok, const char *file, int line, const char *fmt, ...) {
    if (ok) { check_passed++; return 1; }
    check_failed++;
    va_list args;
    va_start(args, fmt);
    printf("%s:%d: FAILED: ", file, line);
    vprintf(fmt, args);
    printf("\n");
    va_end(args);
    return 0;
}

// CHECK(cond, "printf format", ...): counts one check; the message says which case broke.
#define CHECK(cond, ...) check_report((cond) ? 1 : 0, __FILE__, __LINE__, __VA_ARGS__)

// One check over n floats: equal values (infinities included) and NaN against NaN match,
// anything else must lie within `tol`. Prints the first mismatches and the max abs diff.
static int check_close(const float *actual, const float *expected, int64_t n, float tol, const char *label) {
    int64_t bad = 0;
    double max_diff = 0.0;
    for (int64_t i = 0; i < n; i++) {
        float a = actual[i], e = expected[i];
        double diff = (a == e || (isnan(a) && isnan(e))) ? 0.0 : isnan(a - e) ? INFINITY : fabs((double)a - e);
        if (diff > max_diff) max_diff = diff;
        if (diff <= tol) continue;
        if (bad++ < 5) printf("  %s[%lld]: got %.9g, expected %.9g\n", label, (long long)i, a, e);
    }
    if (bad == 0) { check_passed++; return 1; }
    check_failed++;
    printf("FAILED: %s: %lld of %lld values off by more than %g (max abs diff %g)\n", label, (long long)bad,
           (long long)n, tol, max_diff);
    return 0;
}

static int check_summary(const char *test_name) {
    printf("%s: %d passed, %d failed\n", test_name, check_passed, check_failed);
    return check_failed ? 1 : 0;
}

#endif
