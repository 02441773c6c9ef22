/* Attention-weighted sum over positions (attention pooling), plain C + OpenMP.
 *
 * x is NHWC seen as [N, S, C] with S = H*W, so a position's channels are
 * contiguous. Forward p [N, C] = sum_s a[n, s] * x[n, s, :]: the tasks are
 * (image, 64-channel block) pairs; a task keeps its block's sums in double
 * (a product of two floats is exact in double, so only the additions round) and
 * walks s in ascending order. Each p element is summed by one task in that
 * order, whatever the number of threads or the block width.
 * Backward is row-parallel over the N*S positions: dx [s, :] = a[n, s] * dp[n, :]
 * and da [n, s] = dp[n, :] . x[n, s, :] (lk_dot_f64: double, fixed order).
 * Both run kernels compiled for the instruction set in force (lk_cpu.h).
 */
#include "lk_cpu.h"
#include "lk_dot.h"
#include "lk_layers.h"

enum { WS_CB = 64,              /* channels per forward task (4 cache lines per row) */
       WS_PAR_MIN = 1 << 15,    /* below this many multiply-adds one thread is faster */
       WS_CHUNK = 16384 };      /* about this many elements per backward kernel call */

static lk_status ws_sizes(const char *fn, int n, int64_t s, int c) {
    LK_REQUIRE(n > 0 && s > 0 && c > 0, "%s: sizes must be positive (n=%d s=%lld c=%d)", fn, n,
               (long long)s, c);
    LK_REQUIRE(s <= INT64_MAX / n / c, "%s: n=%d * s=%lld * c=%d overflows", fn, n, (long long)s,
               c);
    return LK_OK;
}

/* acc [kn] += sum over s of a[s] * x[s, :kn] (x rows `c` apart). The caller
 * passes kn == WS_CB for full blocks, so the inner loop has a constant trip
 * count after inlining. */
static inline __attribute__((always_inline)) void ws_block(double *restrict acc,
                                                           const float *restrict x,
                                                           const float *restrict a, int64_t s,
                                                           int c, int kn) {
    for (int64_t j = 0; j < s; j++) {
        const double w = a[j];
        const float *xr = x + j * c;
        for (int k = 0; k < kn; k++) acc[k] += w * (double)xr[k];
    }
}

/* One forward task: p[i, k0 .. k0 + kn) of image i. */
LK_ALWAYS_INLINE void ws_task_body(float *p, const float *x, const float *a, int i, int k0, int kn,
                                   int64_t s, int c) {
    const float *xi = x + (int64_t)i * s * c + k0; /* [S, C] at channel k0 */
    const float *ai = a + (int64_t)i * s;          /* [S] */
    double acc[WS_CB] = {0};
    if (kn == WS_CB)
        ws_block(acc, xi, ai, s, c, WS_CB);
    else
        ws_block(acc, xi, ai, s, c, kn);
    float *pi = p + (int64_t)i * c + k0;
    for (int k = 0; k < kn; k++) pi[k] = (float)acc[k];
}
LK_KERNEL_CLONES(ws_task,
                 (float *p, const float *x, const float *a, int i, int k0, int kn, int64_t s,
                  int c),
                 (p, x, a, i, k0, kn, s, c))

/* Backward rows [r0, r1) of the N*S positions. */
LK_ALWAYS_INLINE void ws_bwd_body(float *dx, float *da, const float *dp, const float *x,
                                  const float *a, int64_t r0, int64_t r1, int64_t s, int c,
                                  int accumulate_dx) {
    for (int64_t r = r0; r < r1; r++) {
        const float *dpi = dp + r / s * c; /* [C] of this row's image */
        if (da) da[r] = (float)lk_dot_f64(dpi, x + r * c, c);
        if (dx) {
            const float w = a[r];
            float *dxr = dx + r * c;
            if (accumulate_dx) {
#pragma omp simd
                for (int k = 0; k < c; k++) dxr[k] += w * dpi[k];
            } else {
#pragma omp simd
                for (int k = 0; k < c; k++) dxr[k] = w * dpi[k];
            }
        }
    }
}
LK_KERNEL_CLONES(ws_bwd,
                 (float *dx, float *da, const float *dp, const float *x, const float *a,
                  int64_t r0, int64_t r1, int64_t s, int c, int accumulate_dx),
                 (dx, da, dp, x, a, r0, r1, s, c, accumulate_dx))

lk_status lk_weighted_sum_forward(float *p, const float *x, const float *a, int n, int64_t s,
                                  int c) {
    LK_TRY(ws_sizes("weighted_sum forward", n, s, c));
    LK_REQUIRE(p && x && a, "weighted_sum forward: NULL argument (p, x, a)");
    const int nblk = (c + WS_CB - 1) / WS_CB;
    const int64_t ntask = (int64_t)n * nblk;
    void (*fn)(float *, const float *, const float *, int, int, int, int64_t, int) =
        LK_KERNEL_PICK(ws_task);
#pragma omp parallel for schedule(static) if (ntask > 1 && (int64_t)n * s * c >= WS_PAR_MIN)
    for (int64_t t = 0; t < ntask; t++) {
        const int i = (int)(t / nblk), k0 = (int)(t % nblk) * WS_CB;
        fn(p, x, a, i, k0, c - k0 < WS_CB ? c - k0 : WS_CB, s, c);
    }
    return LK_OK;
}

lk_status lk_weighted_sum_backward(float *dx, float *da, const float *dp, const float *x,
                                   const float *a, int n, int64_t s, int c, int accumulate_dx) {
    LK_TRY(ws_sizes("weighted_sum backward", n, s, c));
    if (!dx && !da) return LK_OK;
    LK_REQUIRE(dp, "weighted_sum backward: dp is NULL");
    LK_REQUIRE(!dx || a, "weighted_sum backward: a is required for dx");
    LK_REQUIRE(!da || x, "weighted_sum backward: x is required for da");
    const int64_t rows = (int64_t)n * s;
    const int64_t per = c >= WS_CHUNK ? 1 : WS_CHUNK / c; /* rows per kernel call */
    const int64_t nchunk = (rows + per - 1) / per;
    void (*fn)(float *, float *, const float *, const float *, const float *, int64_t, int64_t,
               int64_t, int, int) = LK_KERNEL_PICK(ws_bwd);
#pragma omp parallel for schedule(static) if (rows > 1 && rows * c >= WS_PAR_MIN)
    for (int64_t b = 0; b < nchunk; b++)
        fn(dx, da, dp, x, a, b * per, b + 1 < nchunk ? (b + 1) * per : rows, s, c,
           accumulate_dx);
    return LK_OK;
}
