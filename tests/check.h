/* check.h: the few macros the C unit tests share.
 *
 * Each test is its own executable (one process per test, as libuv does), run by
 * ctest. CHECK failures print the expression and location and count; main()
 * returns the failure count so ctest reports the test as failed. */
#ifndef EXO_CHECK_H
#define EXO_CHECK_H

#include <math.h>
#include <stdio.h>

static int check_failures;

#define CHECK(cond)                                                               \
    do {                                                                          \
        if (!(cond)) {                                                            \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            check_failures++;                                                     \
        }                                                                         \
    } while (0)

#define CHECK_MSG(cond, ...)                                                      \
    do {                                                                          \
        if (!(cond)) {                                                            \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                         \
            fputc('\n', stderr);                                                  \
            check_failures++;                                                     \
        }                                                                         \
    } while (0)

/* |a - b| <= tol * max(1, |b|) */
#define CHECK_NEAR(a, b, tol)                                                     \
    do {                                                                          \
        double check_a_ = (a), check_b_ = (b);                                    \
        double check_s_ = fabs(check_b_) > 1.0 ? fabs(check_b_) : 1.0;            \
        if (!(fabs(check_a_ - check_b_) <= (tol) * check_s_)) {                   \
            fprintf(stderr, "%s:%d: CHECK_NEAR failed: %s = %g, %s = %g\n",       \
                    __FILE__, __LINE__, #a, check_a_, #b, check_b_);              \
            check_failures++;                                                     \
        }                                                                         \
    } while (0)

#define CHECK_DONE()                                                              \
    do {                                                                          \
        if (check_failures) fprintf(stderr, "%d check(s) failed\n", check_failures); \
        return check_failures ? 1 : 0;                                            \
    } while (0)

#endif
