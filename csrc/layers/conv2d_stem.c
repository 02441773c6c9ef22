/* A dense convolution with few input channels (the networks' stem: 3 -> 40 for B3,
 * 3 -> 24 for V2-S, 3x3 stride 2), the inference forward, on AVX2.
 *
 * oneDNN v3.2 runs B3's stem at 300x300 through its generic jit:avx2 kernel, 17 ms of a
 * 620 ms batch-16 inference (about 45 GFLOP/s), 8 ms of them its SiLU post-op. Here the
 * output channels fill the vectors: per output pixel the KxK IC
 * window is a row of K IC-wide pixels in each of K input rows, each input value is
 * broadcast and multiplied by its tap's OC weights (NV vectors, in registers as FMA
 * operands), P pixels at a time (NV P accumulators). The K input rows of an output row
 * are first copied into a per-thread buffer with the padding columns zero, so that no
 * tap is clipped. Bias and SiLU (the inference form, lk_silu_simd.h) are applied
 * before the one store.
 *
 * Measured in one process alternating call by call with the primitive (bias and SiLU,
 * 2 threads, Zen 3): B3 at batch 16 0.77-0.80x the time (12.6-13.1 against 16.4 ms),
 * batch 1 0.61x; V2-S's 3 -> 24 at 384x384, batch 8 0.91x, batch 1 0.83x.
 *
 * Numerics: each output is the sum over the taps in (kernel row, column, input channel)
 * order from the bias, the same for every thread count; the primitive's SiLU post-op
 * differs from ours by float rounding (without it the sums matched it bit for bit).
 */
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "lk_cpu.h"
#include "lk_layers.h"
#include "lk_silu_simd.h"
#include "lk_threads.h"

enum { STEM_MAX_IC = 4, STEM_MAX_K = 7 };

int lk_stem_supported(int ic, int oc, int kh, int kw, int sh, int sw, int groups) {
#ifdef LK_SILU_X86
    return lk_kernel_isa() == LK_ISA_AVX2 && groups == 1 && ic >= 1 && ic <= STEM_MAX_IC &&
           kh == kw && kh <= STEM_MAX_K && sh == sw && sh >= 1 && sh <= 2 && oc % 8 == 0 &&
           oc >= 16 && oc <= 48;
#else
    (void)ic, (void)oc, (void)kh, (void)kw, (void)sh, (void)sw, (void)groups;
    return 0;
#endif
}

#ifdef LK_SILU_X86
/* P output pixels from padded input rows rows[i] (each [IWP, IC], already at the first
 * pixel's window), OC = 8 NV: acc [P][NV] from the bias, every tap's IC values in
 * order, then SiLU when `silu`; y [P, OC] (pixel stride OC). */
#define STEM_PIX(NV, P)                                                                        \
    LK_TARGET_AVX2 static inline __attribute__((always_inline)) void stem_pix_##NV##_##P(      \
        float *y, const float *const *rows, const float *wp, const __m256 *bias, int k,       \
        int kic, int step, int silu) {                                                         \
        __m256 a[P][NV];                                                                       \
        _Pragma("GCC unroll 4") for (int p = 0; p < (P); p++)                                  \
            _Pragma("GCC unroll 6") for (int q = 0; q < (NV); q++) a[p][q] = bias[q];          \
        for (int i = 0; i < k; i++) {                                                          \
            const float *r = rows[i];                                                          \
            const float *wi = wp + (int64_t)i * kic * 8 * (NV);                                \
            for (int t = 0; t < kic; t++) {                                                    \
                __m256 w[NV];                                                                  \
                _Pragma("GCC unroll 6") for (int q = 0; q < (NV); q++)                         \
                    w[q] = _mm256_loadu_ps(wi + (t * (NV) + q) * 8);                           \
                _Pragma("GCC unroll 4") for (int p = 0; p < (P); p++) {                        \
                    const __m256 v = _mm256_broadcast_ss(r + p * step + t);                    \
                    _Pragma("GCC unroll 6") for (int q = 0; q < (NV); q++)                     \
                        a[p][q] = _mm256_fmadd_ps(v, w[q], a[p][q]);                           \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
        _Pragma("GCC unroll 4") for (int p = 0; p < (P); p++)                                  \
            _Pragma("GCC unroll 6") for (int q = 0; q < (NV); q++)                             \
                _mm256_storeu_ps(y + (p * (NV) + q) * 8, silu ? silu_fast8(a[p][q]) : a[p][q]); \
    }

/* One output row y [OW, OC]: groups of P pixels, the last overlapping the one before,
 * rows shorter than P one pixel at a time. */
#define STEM_ROW(NV, P)                                                                        \
    STEM_PIX(NV, P)                                                                            \
    STEM_PIX(NV, 1)                                                                            \
    LK_TARGET_AVX2 static void stem_row_##NV(float *y, const float *const *rows,               \
                                             const float *wp, const float *b, int ow, int ic,  \
                                             int k, int s, int silu) {                         \
        __m256 bias[NV];                                                                       \
        for (int q = 0; q < (NV); q++)                                                         \
            bias[q] = b ? _mm256_loadu_ps(b + 8 * q) : _mm256_setzero_ps();                    \
        const int kic = k * ic, step = s * ic;                                                 \
        const float *r[STEM_MAX_K];                                                            \
        if (ow < (P)) {                                                                        \
            for (int ox = 0; ox < ow; ox++) {                                                  \
                for (int i = 0; i < k; i++) r[i] = rows[i] + (int64_t)ox * step;               \
                stem_pix_##NV##_1(y + (int64_t)ox * 8 * (NV), r, wp, bias, k, kic, step, silu); \
            }                                                                                  \
            return;                                                                            \
        }                                                                                      \
        for (int ox = 0; ox < ow; ox += (P)) {                                                 \
            const int at = ox + (P) <= ow ? ox : ow - (P);                                     \
            for (int i = 0; i < k; i++) r[i] = rows[i] + (int64_t)at * step;                   \
            stem_pix_##NV##_##P(y + (int64_t)at * 8 * (NV), r, wp, bias, k, kic, step, silu);  \
        }                                                                                      \
    }
STEM_ROW(2, 4)
STEM_ROW(3, 4)
STEM_ROW(4, 3)
STEM_ROW(5, 2)
STEM_ROW(6, 2)
#undef STEM_ROW
#undef STEM_PIX

typedef void (*stem_row_fn)(float *, const float *const *, const float *, const float *, int,
                            int, int, int, int);

static stem_row_fn stem_row_pick(int oc) {
    switch (oc / 8) {
    case 2: return stem_row_2;
    case 3: return stem_row_3;
    case 4: return stem_row_4;
    case 5: return stem_row_5;
    case 6: return stem_row_6;
    default: return NULL;
    }
}
#endif

lk_status lk_stem_init(lk_stem *L, const lk_stem_cfg *cfg) {
    memset(L, 0, sizeof *L);
    L->cfg = *cfg;
    const lk_stem_cfg *c = &L->cfg;
    LK_REQUIRE(c->n > 0 && c->ih > 0 && c->iw > 0 && c->pt >= 0 && c->pl >= 0 &&
                   c->pb >= 0 && c->pr >= 0,
               "conv2d stem: sizes must be positive and paddings >= 0 (n=%d ih=%d iw=%d)",
               c->n, c->ih, c->iw);
    LK_REQUIRE(lk_stem_supported(c->ic, c->oc, c->k, c->k, c->s, c->s, 1),
               "conv2d stem: no kernel for ic=%d oc=%d k=%d s=%d on this path", c->ic, c->oc,
               c->k, c->s);
    L->oh = (c->ih + c->pt + c->pb - c->k) / c->s + 1;
    L->ow = (c->iw + c->pl + c->pr - c->k) / c->s + 1;
    LK_REQUIRE(L->oh > 0 && L->ow > 0, "conv2d stem: empty output (%dx%d)", L->oh, L->ow);
    /* A padded row holds every column a row of outputs reads: (OW - 1) S + K. */
    L->iwp = (L->ow - 1) * c->s + c->k;
    L->team = lk_get_num_threads();
    const size_t row = (size_t)L->iwp * c->ic;
    L->rows = lk_alloc(sizeof(float) * (size_t)c->k * row * (size_t)L->team);
    L->zero = lk_alloc(sizeof(float) * row);
    L->wp = lk_alloc(sizeof(float) * (size_t)c->k * c->k * c->ic * c->oc);
    if (!L->rows || !L->zero || !L->wp) {
        lk_stem_free(L);
        return LK_FAIL(LK_ERR_NOMEM, "conv2d stem: rows and weights");
    }
    /* The padding columns of the row buffers are never written after this. */
    memset(L->rows, 0, sizeof(float) * (size_t)c->k * row * (size_t)L->team);
    memset(L->zero, 0, sizeof(float) * row);
    return LK_OK;
}

lk_status lk_stem_forward(lk_stem *L, float *y, const float *x, const float *w, const float *b,
                          uint64_t version) {
    LK_REQUIRE(L->wp, "conv2d stem: layer not initialised");
    LK_REQUIRE(y && x && w, "conv2d stem forward: NULL argument");
    const lk_stem_cfg *c = &L->cfg;
    const int k = c->k, ic = c->ic, oc = c->oc;
    /* wp [K, K, IC, OC]: each tap's output channels contiguous, laid out again unless
     * these are the weights of the last call at the same version (0: unknown). */
    if (version == 0 || version != L->w_version || w != L->w_src) {
        for (int o = 0; o < oc; o++)
            for (int q = 0; q < ic; q++)
                for (int t = 0; t < k * k; t++)
                    L->wp[((size_t)t * ic + q) * oc + o] = w[((size_t)o * ic + q) * k * k + t];
        L->w_version = version;
        L->w_src = w;
    }
#ifdef LK_SILU_X86
    const stem_row_fn rowk = stem_row_pick(oc);
    LK_REQUIRE(rowk, "conv2d stem: no kernel for %d output channels", oc);
    const int64_t nrow = (int64_t)c->n * L->oh;
    const size_t row = (size_t)L->iwp * ic;
    int team = L->team;
    if (lk_get_num_threads() < team) team = lk_get_num_threads();
#pragma omp parallel num_threads(team) if (team > 1 && nrow > 1)
    {
        int t = 0;
#ifdef _OPENMP
        t = omp_get_thread_num();
#endif
        float *buf = L->rows + (size_t)t * k * row; /* [K, IWP, IC] */
#pragma omp for schedule(static)
        for (int64_t r = 0; r < nrow; r++) {
            const int n = (int)(r / L->oh), oy = (int)(r % L->oh);
            const float *rows[STEM_MAX_K];
            for (int i = 0; i < k; i++) {
                const int iy = oy * c->s - c->pt + i;
                if (iy < 0 || iy >= c->ih) {
                    rows[i] = L->zero;
                    continue;
                }
                /* Columns [pl, pl + IW) of the padded row, those beyond IWP dropped. */
                float *dst = buf + (size_t)i * row;
                const int ncol = c->iw < L->iwp - c->pl ? c->iw : L->iwp - c->pl;
                if (ncol > 0)
                    memcpy(dst + (size_t)c->pl * ic,
                           x + (((int64_t)n * c->ih + iy) * c->iw) * ic,
                           sizeof(float) * (size_t)ncol * ic);
                rows[i] = dst;
            }
            rowk(y + r * L->ow * oc, rows, L->wp, b, L->ow, ic, k, c->s, c->silu);
        }
    }
    return LK_OK;
#else
    (void)b;
    return LK_FAIL(LK_ERR_ARG, "conv2d stem: no kernel on this path");
#endif
}

void lk_stem_free(lk_stem *L) {
    lk_free(L->rows);
    lk_free(L->zero);
    lk_free(L->wp);
    memset(L, 0, sizeof *L);
}
