/* A float dot product summed in double in a fixed order, shared by the plain-C
 * layers whose gradients are per-row dot products (spatial_mul.c, weighted_sum.c).
 * Internal to csrc/layers (not part of the layer API in lk_layers.h).
 */
#ifndef LK_DOT_H
#define LK_DOT_H

#include <stdint.h>

/* sum_i a[i] * b[i] in double. Eight partial sums (lane j takes i = j mod 8),
 * combined pairwise at the end: the order depends only on n, never on threads,
 * alignment or the optimisation level, and the lanes vectorise (two AVX2
 * vectors of doubles). A product of two floats is exact in double, so only the
 * additions round and a compiler that fuses them into FMAs gives the same bits. */
static inline double lk_dot_f64(const float *a, const float *b, int64_t n) {
    double s[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) s[j] += (double)a[i + j] * (double)b[i + j];
    for (int j = 0; i + j < n; j++) s[j] += (double)a[i + j] * (double)b[i + j];
    return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

#endif
