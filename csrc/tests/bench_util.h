/* Timing helpers shared by the benchmark harnesses (bench_layers.c, bench_dw_layout.c).
 * Include after defining _POSIX_C_SOURCE (clock_gettime). */
#ifndef LK_BENCH_UTIL_H
#define LK_BENCH_UTIL_H

#include <time.h>

/* Monotonic clock in milliseconds. */
static inline double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}

/* qsort comparator for doubles (medians and minima of timed runs). */
static inline int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

#endif
