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
 */
#include <math.h>
#include <string.h>

#include "lk_layers.h"

#define LK_GOLDEN 0x9E3779B97F4A7C15ULL
/* Separate streams for the two layers, so that a shared seed does not make
 * stochastic depth's sample flags equal to dropout's first elements. */
#define LK_STREAM_DROPOUT 0x0ULL
#define LK_STREAM_STOCHDEPTH 0xD1B54A32D192ED03ULL
/* Below this many elements the OpenMP fork costs more than the loop. */
#define LK_PAR_MIN 32768

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

lk_status lk_dropout_forward(float *y, uint8_t *mask, const float *x, int64_t count, float p,
                             uint64_t seed) {
    LK_TRY(lk_check_p("dropout", p));
    LK_REQUIRE(count >= 0, "dropout: count must be >= 0, got %lld", (long long)count);
    if (count == 0) return LK_OK;
    LK_REQUIRE(y && mask && x, "dropout forward: NULL argument");
    const uint64_t key = lk_mix64(seed ^ LK_STREAM_DROPOUT), thr = lk_keep_threshold(p);
    const float scale = lk_keep_scale(p);
#pragma omp parallel for schedule(static) if (count >= LK_PAR_MIN)
    for (int64_t i = 0; i < count; i++) {
        uint8_t k = lk_keep(key, i, thr);
        mask[i] = k;
        y[i] = x[i] * (k ? scale : 0.0f);
    }
    return LK_OK;
}

lk_status lk_dropout_backward(float *dx, const float *dy, const uint8_t *mask, int64_t count,
                              float p) {
    LK_TRY(lk_check_p("dropout", p));
    LK_REQUIRE(count >= 0, "dropout: count must be >= 0, got %lld", (long long)count);
    if (count == 0) return LK_OK;
    LK_REQUIRE(dx && dy && mask, "dropout backward: NULL argument");
    const float scale = lk_keep_scale(p);
#pragma omp parallel for schedule(static) if (count >= LK_PAR_MIN)
    for (int64_t i = 0; i < count; i++) dx[i] = dy[i] * (mask[i] ? scale : 0.0f);
    return LK_OK;
}

/* y [N, per_sample] = x * keep[n] * scale; the flags are drawn serially (N is
 * the batch), the scaling is parallel over all elements. */
static void lk_rows_scale(float *y, const float *x, const uint8_t *keep, int n,
                          int64_t per_sample, float scale) {
    const int64_t total = (int64_t)n * per_sample;
#pragma omp parallel for collapse(2) schedule(static) if (total >= LK_PAR_MIN)
    for (int s = 0; s < n; s++)
        for (int64_t j = 0; j < per_sample; j++) {
            const int64_t i = (int64_t)s * per_sample + j;
            y[i] = x[i] * (keep[s] ? scale : 0.0f);
        }
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
