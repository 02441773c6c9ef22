/* Dropout and stochastic depth (torchvision "row" mode), plain C + OpenMP.
 *
 * Random bits come from a counter-based generator: element i of stream `seed`
 * is splitmix64's output for state mix(seed) + (i + 1) * golden. Every element
 * is computed independently, so the mask depends only on (seed, i) and never
 * on the number of threads or on how the loop is split.
 *
 * An element is kept when its top 32 random bits are >= p * 2^32, i.e. with
 * probability 1 - p (to 2^-32); p == 0 keeps all and p == 1 drops all.
 * Kept values are scaled by the float32 reciprocal 1 / (1 - p), as PyTorch
 * multiplies by a mask that holds 1 / (1 - p); p == 1 gives zeros with no
 * division by zero. Dropped elements are multiplied by 0 (not overwritten),
 * exactly as PyTorch's `input * noise`.
 *
 * The loops run in chunks of LK_CHUNK elements; each chunk is one call of a
 * kernel compiled for the instruction set in force (lk_cpu.h): the 64-bit
 * multiplies of the generator vectorise only with AVX2 or AVX-512.
 */
#include <math.h>
#include <string.h>

#include "lk_cpu.h"
#include "lk_layers.h"

#define LK_GOLDEN 0x9E3779B97F4A7C15ULL
/* Separate streams for the two layers, so that a shared seed does not make
 * stochastic depth's sample flags equal to dropout's first elements. */
#define LK_STREAM_DROPOUT 0x0ULL
#define LK_STREAM_STOCHDEPTH 0xD1B54A32D192ED03ULL
/* Below this many elements the OpenMP fork costs more than the loop. */
#define LK_PAR_MIN 32768
/* Elements per kernel call (64 KiB of floats). */
#define LK_CHUNK 16384

static inline uint64_t lk_mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* Threshold on the top 32 bits: keep iff bits >= thr (thr = 2^32 drops all). */
static uint64_t lk_keep_threshold(float p) {
    return (uint64_t)((double)p * 4294967296.0);
}

static inline uint8_t lk_keep(uint64_t key, int64_t i, uint64_t thr) {
    uint64_t bits = lk_mix64(key + (uint64_t)(i + 1) * LK_GOLDEN) >> 32;
    return bits >= thr;
}

static float lk_keep_scale(float p) { return p < 1.0f ? 1.0f / (1.0f - p) : 0.0f; }

static lk_status lk_check_p(const char *who, float p) {
    LK_REQUIRE(isfinite(p) && p >= 0.0f && p <= 1.0f, "%s: p must be in [0, 1], got %g", who,
               (double)p);
    return LK_OK;
}

/* y, mask [i0, i1) of dropout with generator key `key` and threshold `thr`. */
LK_ALWAYS_INLINE void drop_fwd_body(float *restrict y, uint8_t *restrict mask,
                                    const float *restrict x, int64_t i0, int64_t i1,
                                    uint64_t key, uint64_t thr, float scale) {
    for (int64_t i = i0; i < i1; i++) {
        uint8_t k = lk_keep(key, i, thr);
        mask[i] = k;
        y[i] = x[i] * (k ? scale : 0.0f);
    }
}
LK_KERNEL_CLONES(drop_fwd,
                 (float *restrict y, uint8_t *restrict mask, const float *restrict x, int64_t i0,
                  int64_t i1, uint64_t key, uint64_t thr, float scale),
                 (y, mask, x, i0, i1, key, thr, scale))

/* dx [i0, i1) = dy * mask * scale (dx may alias dy). */
LK_ALWAYS_INLINE void drop_bwd_body(float *dx, const float *dy, const uint8_t *mask, int64_t i0,
                                    int64_t i1, float scale) {
    for (int64_t i = i0; i < i1; i++) dx[i] = dy[i] * (mask[i] ? scale : 0.0f);
}
LK_KERNEL_CLONES(drop_bwd,
                 (float *dx, const float *dy, const uint8_t *mask, int64_t i0, int64_t i1,
                  float scale),
                 (dx, dy, mask, i0, i1, scale))

lk_status lk_dropout_forward(float *y, uint8_t *mask, const float *x, int64_t count, float p,
                             uint64_t seed) {
    LK_TRY(lk_check_p("dropout", p));
    LK_REQUIRE(count >= 0, "dropout: count must be >= 0, got %lld", (long long)count);
    if (count == 0) return LK_OK;
    LK_REQUIRE(y && mask && x, "dropout forward: NULL argument");
    const uint64_t key = lk_mix64(seed ^ LK_STREAM_DROPOUT), thr = lk_keep_threshold(p);
    const float scale = lk_keep_scale(p);
    void (*fn)(float *restrict, uint8_t *restrict, const float *restrict, int64_t, int64_t,
               uint64_t, uint64_t, float) = LK_KERNEL_PICK(drop_fwd);
    const int64_t nchunk = (count + LK_CHUNK - 1) / LK_CHUNK;
#pragma omp parallel for schedule(static) if (count >= LK_PAR_MIN)
    for (int64_t b = 0; b < nchunk; b++)
        fn(y, mask, x, b * LK_CHUNK, b + 1 < nchunk ? (b + 1) * LK_CHUNK : count, key, thr, scale);
    return LK_OK;
}

lk_status lk_dropout_backward(float *dx, const float *dy, const uint8_t *mask, int64_t count,
                              float p) {
    LK_TRY(lk_check_p("dropout", p));
    LK_REQUIRE(count >= 0, "dropout: count must be >= 0, got %lld", (long long)count);
    if (count == 0) return LK_OK;
    LK_REQUIRE(dx && dy && mask, "dropout backward: NULL argument");
    const float scale = lk_keep_scale(p);
    void (*fn)(float *, const float *, const uint8_t *, int64_t, int64_t, float) =
        LK_KERNEL_PICK(drop_bwd);
    const int64_t nchunk = (count + LK_CHUNK - 1) / LK_CHUNK;
#pragma omp parallel for schedule(static) if (count >= LK_PAR_MIN)
    for (int64_t b = 0; b < nchunk; b++)
        fn(dx, dy, mask, b * LK_CHUNK, b + 1 < nchunk ? (b + 1) * LK_CHUNK : count, scale);
    return LK_OK;
}

/* y [i0, i1) of the flattened [N, per_sample] = x * keep[row] * scale (y may alias x):
 * one plain loop per row piece, so that it vectorises. */
LK_ALWAYS_INLINE void rows_scale_body(float *y, const float *x, const uint8_t *keep,
                                      int64_t per_sample, float scale, int64_t i0, int64_t i1) {
    while (i0 < i1) {
        const int64_t row = i0 / per_sample;
        const int64_t end = (row + 1) * per_sample < i1 ? (row + 1) * per_sample : i1;
        const float f = keep[row] ? scale : 0.0f;
        for (int64_t i = i0; i < end; i++) y[i] = x[i] * f;
        i0 = end;
    }
}
LK_KERNEL_CLONES(rows_scale,
                 (float *y, const float *x, const uint8_t *keep, int64_t per_sample, float scale,
                  int64_t i0, int64_t i1),
                 (y, x, keep, per_sample, scale, i0, i1))

/* y [N, per_sample] = x * keep[n] * scale; the flags are drawn serially (N is
 * the batch), the scaling is parallel over all elements. */
static void lk_rows_scale(float *y, const float *x, const uint8_t *keep, int n,
                          int64_t per_sample, float scale) {
    const int64_t total = (int64_t)n * per_sample;
    void (*fn)(float *, const float *, const uint8_t *, int64_t, float, int64_t, int64_t) =
        LK_KERNEL_PICK(rows_scale);
    const int64_t nchunk = (total + LK_CHUNK - 1) / LK_CHUNK;
#pragma omp parallel for schedule(static) if (total >= LK_PAR_MIN)
    for (int64_t b = 0; b < nchunk; b++)
        fn(y, x, keep, per_sample, scale, b * LK_CHUNK,
           b + 1 < nchunk ? (b + 1) * LK_CHUNK : total);
}

lk_status lk_stochdepth_forward(float *y, uint8_t *keep, const float *x, int n,
                                int64_t per_sample, float p, uint64_t seed) {
    LK_TRY(lk_check_p("stochastic depth", p));
    LK_REQUIRE(n >= 0 && per_sample >= 0,
               "stochastic depth: sizes must be >= 0 (n=%d per_sample=%lld)", n,
               (long long)per_sample);
    if (n == 0) return LK_OK;
    LK_REQUIRE(keep, "stochastic depth forward: keep is NULL");
    const uint64_t key = lk_mix64(seed ^ LK_STREAM_STOCHDEPTH), thr = lk_keep_threshold(p);
    for (int i = 0; i < n; i++) keep[i] = lk_keep(key, i, thr);
    if (per_sample == 0) return LK_OK;
    LK_REQUIRE(y && x, "stochastic depth forward: NULL argument");
    lk_rows_scale(y, x, keep, n, per_sample, lk_keep_scale(p));
    return LK_OK;
}

lk_status lk_stochdepth_backward(float *dx, const float *dy, const uint8_t *keep, int n,
                                 int64_t per_sample, float p) {
    LK_TRY(lk_check_p("stochastic depth", p));
    LK_REQUIRE(n >= 0 && per_sample >= 0,
               "stochastic depth: sizes must be >= 0 (n=%d per_sample=%lld)", n,
               (long long)per_sample);
    if (n == 0 || per_sample == 0) return LK_OK;
    LK_REQUIRE(dx && dy && keep, "stochastic depth backward: NULL argument");
    lk_rows_scale(dx, dy, keep, n, per_sample, lk_keep_scale(p));
    return LK_OK;
}
