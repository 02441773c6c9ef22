/* Spatial multiply: a one-channel map broadcast over channels (the spatial
 * attention gate, [N, 1, H, W] in NCHW terms), plain C + OpenMP over positions.
 *
 * In NHWC a position's C values are contiguous, so forward and dx are one
 * scalar times a row, and dmap is one dot product per row (lk_dot_f64: double,
 * fixed order). Every output element is written by one thread, so the results
 * do not depend on the thread count. The rows are handed out in chunks, each one
 * call of a kernel compiled for the instruction set in force (lk_cpu.h).
 */
#include "lk_cpu.h"
#include "lk_dot.h"
#include "lk_layers.h"

/* Below this many elements the OpenMP fork costs more than the loop. */
#define SPATIAL_MUL_PAR_MIN 32768
/* About this many elements per kernel call. */
#define SPATIAL_MUL_CHUNK 16384

/* y [p0, p1) rows = x * map (y may be x: each element read before written). */
LK_ALWAYS_INLINE void spmul_fwd_body(float *y, const float *x, const float *map, int64_t p0,
                                     int64_t p1, int c) {
    for (int64_t p = p0; p < p1; p++) {
        const float m = map[p];
        const float *xp = x + p * c; /* [C] */
        float *yp = y + p * c;       /* [C] */
#pragma omp simd
        for (int k = 0; k < c; k++) yp[k] = xp[k] * m;
    }
}
LK_KERNEL_CLONES(spmul_fwd,
                 (float *y, const float *x, const float *map, int64_t p0, int64_t p1, int c),
                 (y, x, map, p0, p1, c))

/* Rows [p0, p1) of the backward: dmap first, since dx may alias dy. */
LK_ALWAYS_INLINE void spmul_bwd_body(float *dx, float *dmap, const float *dy, const float *x,
                                     const float *map, int64_t p0, int64_t p1, int c) {
    for (int64_t p = p0; p < p1; p++) {
        const float *dyp = dy + p * c; /* [C] */
        if (dmap) dmap[p] = (float)lk_dot_f64(dyp, x + p * c, c);
        if (dx) {
            const float m = map[p];
            float *dxp = dx + p * c;
#pragma omp simd
            for (int k = 0; k < c; k++) dxp[k] = dyp[k] * m;
        }
    }
}
LK_KERNEL_CLONES(spmul_bwd,
                 (float *dx, float *dmap, const float *dy, const float *x, const float *map,
                  int64_t p0, int64_t p1, int c),
                 (dx, dmap, dy, x, map, p0, p1, c))

static lk_status spatial_mul_sizes(const char *fn, int64_t npos, int c) {
    LK_REQUIRE(npos >= 0 && c > 0, "%s: npos=%lld must be >= 0 and c=%d positive", fn,
               (long long)npos, c);
    LK_REQUIRE(npos <= INT64_MAX / c, "%s: npos=%lld times c=%d overflows", fn, (long long)npos,
               c);
    return LK_OK;
}

lk_status lk_spatial_mul_forward(float *y, const float *x, const float *map, int64_t npos, int c) {
    LK_TRY(spatial_mul_sizes("spatial_mul forward", npos, c));
    if (npos == 0) return LK_OK;
    LK_REQUIRE(y && x && map, "spatial_mul forward: NULL argument (y, x, map)");
    const int64_t per = c >= SPATIAL_MUL_CHUNK ? 1 : SPATIAL_MUL_CHUNK / c; /* rows per call */
    const int64_t nchunk = (npos + per - 1) / per;
    void (*fn)(float *, const float *, const float *, int64_t, int64_t, int) =
        LK_KERNEL_PICK(spmul_fwd);
#pragma omp parallel for schedule(static) if (npos * c >= SPATIAL_MUL_PAR_MIN)
    for (int64_t b = 0; b < nchunk; b++)
        fn(y, x, map, b * per, b + 1 < nchunk ? (b + 1) * per : npos, c);
    return LK_OK;
}

lk_status lk_spatial_mul_backward(float *dx, float *dmap, const float *dy, const float *x,
                                  const float *map, int64_t npos, int c) {
    LK_TRY(spatial_mul_sizes("spatial_mul backward", npos, c));
    if (npos == 0 || (!dx && !dmap)) return LK_OK;
    LK_REQUIRE(dy, "spatial_mul backward: dy is NULL");
    LK_REQUIRE(!dx || map, "spatial_mul backward: map is required for dx");
    LK_REQUIRE(!dmap || x, "spatial_mul backward: x is required for dmap");
    const int64_t per = c >= SPATIAL_MUL_CHUNK ? 1 : SPATIAL_MUL_CHUNK / c;
    const int64_t nchunk = (npos + per - 1) / per;
    void (*fn)(float *, float *, const float *, const float *, const float *, int64_t, int64_t,
               int) = LK_KERNEL_PICK(spmul_bwd);
#pragma omp parallel for schedule(static) if (npos * c >= SPATIAL_MUL_PAR_MIN)
    for (int64_t b = 0; b < nchunk; b++)
        fn(dx, dmap, dy, x, map, b * per, b + 1 < nchunk ? (b + 1) * per : npos, c);
    return LK_OK;
}
