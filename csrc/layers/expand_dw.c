/* An MBConv expansion fused with the depthwise convolution that reads it, for
 * inference (both BatchNorms folded into weights and biases):
 *
 *   e = silu(x W1^T + b1)                 x [N, IH, IW, IC] -> e [N, IH, IW, EC]
 *   y = silu(depthwise_k,s(e, wd) + bd)   e -> y [N, OH, OW, EC]
 *
 * The expanded tensor e is the largest activation of the block (EC = 4-6 x IC), and
 * unfused it is written by the 1x1 convolution and read back by the depthwise one,
 * which is then bound by memory on the large maps of the first stages. Here e never
 * reaches memory: each task (an image, or a band of its output rows when there are
 * fewer images than threads) computes e a few rows at a time into a ring that stays
 * in cache and makes each output row from the ring as soon as its KH input rows are
 * there. The output is written once, and its per-image channel sums, which a
 * squeeze-and-excitation's average pool wants, are taken while the row is in cache.
 * On x86 the expansion is a register-blocked kernel with the bias and SiLU applied
 * before its one store (edw_expand*), and the depthwise rows (dwconv.c's row kernels,
 * lk_dw_row_pick) apply their SiLU and channel sums in registers (AVX2, and 3x3 on
 * AVX-512) or from L1 right after each channel block; the portable path runs dnnl_sgemm and
 * separate bias, SiLU and sum passes.
 *
 * Numerics: the same sums as the unfused path in another order (the expansion's
 * products in k order, sgemm on the portable path; the taps in row-major order) and
 * the SiLU with a refined reciprocal (lk_silu_simd.h), so the results agree with the
 * unfused path to float rounding (2-4e-7 of the largest output at B3's shapes), not bit
 * for bit; they do not depend on the thread count or the bands.
 *
 * Measured (csrc/tests/bench_layers.c expdw_*, batch 16, 2 threads, minimum of 10 runs,
 * three alternations): against the primitives (1x1 and depthwise with SiLU post-ops,
 * and the pool), AVX-512 24->144 at 150x150 24.2 -> 16.6 ms, 32->192 at 75x75 14.8 ->
 * 10.1 ms, 48->288 at 38x38 6.1 -> 5.0 ms; AVX2 39.7 -> 30.4, 18.2 -> 16.8, 8.9 -> 8.8 ms.
 * With sgemm it was level or slower from 24x24 down, where the expanded tensor already
 * stays in the caches; the AVX-512 register kernels win at 24x24 and 19x19 too, not at
 * 12x12 (block.c applies the rule). The register kernels against sgemm plus passes:
 * AVX-512 32->192 k3 at 75x75 11.0-13.2 -> 9.7-10.0 ms, k5 stride 2 7.2-9.0 -> 6.8-7.7,
 * 48->288 k3 stride 2 at 38x38 2.8 -> 2.5; AVX2 24->144 30.3 -> 28.2, 32->192 17.0 -> 15.7.
 */
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "lk_cpu.h"
#include "lk_dwconv.h"
#include "lk_layers.h"
#include "lk_silu_simd.h"
#include "lk_threads.h"

enum { EDW_MIN_M = 150,       /* fewest pixels per sgemm call (64 and 300 measured within 5 %) */
       EDW_XR512 = 8,         /* rows of the AVX-512 expansion micro-tile (x 3 vectors) */
       EDW_XR256 = 4          /* rows of the AVX2 one (x 3 vectors: 12 of 16 registers) */ };

#ifdef LK_X86
#include <immintrin.h>

/* The expansion e [m, EC] = silu(x [m, IC] w1t [IC, EC] + b1) into the ring, on x86:
 * register-blocked products (the AVX-512 micro-tile 8 rows x 3 vectors, AVX2 4 x 3),
 * then the bias and SiLU applied to the accumulators before the one store. sgemm
 * repacked the weights on every call and was then followed by two passes over the
 * chunk (bias, SiLU); at B3's K = 24-48 it reached 150-175 GFLOP/s on AVX-512. Rows
 * that do not fill a micro-tile go through a zero-padded copy. Each output is the
 * sum over k in order, then + b1: the unfused path's sums in another order. */

/* One micro-tile: rows [EDW_XR512] of e (row stride lde) for NV vectors of channels,
 * the last one masked by ml. */
#define EDW_MK512(NV)                                                                        \
    LK_TARGET_AVX512 static void edw_mk512_##NV(float *e, int64_t lde, const float *x,      \
                                                int ldx, const float *w, int ldw,            \
                                                const float *b, int k, __mmask16 ml) {       \
        __m512 acc[EDW_XR512][NV];                                                           \
        for (int r = 0; r < EDW_XR512; r++)                                                  \
            for (int q = 0; q < NV; q++) acc[r][q] = _mm512_setzero_ps();                    \
        for (int p = 0; p < k; p++) {                                                        \
            __m512 wv[NV];                                                                   \
            for (int q = 0; q < NV - 1; q++) wv[q] = _mm512_loadu_ps(w + (int64_t)p * ldw + 16 * q); \
            wv[NV - 1] = _mm512_maskz_loadu_ps(ml, w + (int64_t)p * ldw + 16 * (NV - 1));    \
            for (int r = 0; r < EDW_XR512; r++) {                                            \
                const __m512 a = _mm512_set1_ps(x[(int64_t)r * ldx + p]);                     \
                for (int q = 0; q < NV; q++) acc[r][q] = _mm512_fmadd_ps(a, wv[q], acc[r][q]); \
            }                                                                                \
        }                                                                                    \
        /* Unrolled, or the accumulators live in memory (GCC spills them every k). */      \
        _Pragma("GCC unroll 3") for (int q = 0; q < NV; q++) {                               \
            const __m512 bv = _mm512_maskz_loadu_ps(q == NV - 1 ? ml : (__mmask16)0xFFFF,    \
                                                    b + 16 * q);                             \
            _Pragma("GCC unroll 8") for (int r = 0; r < EDW_XR512; r++) {                     \
                const __m512 o = silu_fast16(_mm512_add_ps(acc[r][q], bv));                  \
                float *eo = e + (int64_t)r * lde + 16 * q;                                   \
                if (q < NV - 1 || ml == (__mmask16)0xFFFF) _mm512_storeu_ps(eo, o);          \
                else _mm512_mask_storeu_ps(eo, ml, o);                                       \
            }                                                                                \
        }                                                                                    \
    }
EDW_MK512(1)
EDW_MK512(2)
EDW_MK512(3)

#define EDW_MK256(NV)                                                                        \
    LK_TARGET_AVX2 static void edw_mk256_##NV(float *e, int64_t lde, const float *x,        \
                                              int ldx, const float *w, int ldw,              \
                                              const float *b, int k, __m256i ml) {           \
        __m256 acc[EDW_XR256][NV];                                                           \
        for (int r = 0; r < EDW_XR256; r++)                                                  \
            for (int q = 0; q < NV; q++) acc[r][q] = _mm256_setzero_ps();                    \
        for (int p = 0; p < k; p++) {                                                        \
            __m256 wv[NV];                                                                   \
            for (int q = 0; q < NV - 1; q++) wv[q] = _mm256_loadu_ps(w + (int64_t)p * ldw + 8 * q); \
            wv[NV - 1] = _mm256_maskload_ps(w + (int64_t)p * ldw + 8 * (NV - 1), ml);        \
            for (int r = 0; r < EDW_XR256; r++) {                                            \
                const __m256 a = _mm256_broadcast_ss(x + (int64_t)r * ldx + p);              \
                for (int q = 0; q < NV; q++) acc[r][q] = _mm256_fmadd_ps(a, wv[q], acc[r][q]); \
            }                                                                                \
        }                                                                                    \
        const int full = _mm256_movemask_ps(_mm256_castsi256_ps(ml)) == 0xFF;                \
        /* Unrolled, or the accumulators live in memory (GCC spills them every k). */      \
        _Pragma("GCC unroll 3") for (int q = 0; q < NV; q++) {                               \
            const __m256 bv = q < NV - 1 ? _mm256_loadu_ps(b + 8 * q)                       \
                                         : _mm256_maskload_ps(b + 8 * q, ml);                \
            _Pragma("GCC unroll 8") for (int r = 0; r < EDW_XR256; r++) {                     \
                const __m256 o = silu_fast8(_mm256_add_ps(acc[r][q], bv));                   \
                float *eo = e + (int64_t)r * lde + 8 * q;                                    \
                if (q < NV - 1 || full) _mm256_storeu_ps(eo, o);                             \
                else _mm256_maskstore_ps(eo, ml, o);                                         \
            }                                                                                \
        }                                                                                    \
    }
EDW_MK256(1)
EDW_MK256(2)
EDW_MK256(3)

LK_TARGET_AVX512 static inline __mmask16 edw_mask16(int rem) {
    return (__mmask16)((1u << rem) - 1);
}

/* e [m, EC] (row stride EC) = silu(x [m, IC] w1t + b1) on the calling thread, in
 * column blocks of 3 vectors (the weight panel stays in L1) and micro-tiles of XR
 * rows; tmp [XR, IC + EC] takes the rows past the last whole micro-tile. */
#define EDW_EXPAND(ISA, TGT, LANES, XR, MASKT, MASKF)                                        \
    TGT static void edw_expand##ISA(float *e, const float *x, const float *w1t,              \
                                    const float *b1, int64_t m, int ic, int ec, float *tmp) { \
        const int64_t mf = m / (XR) * (XR);                                                  \
        float *xt = tmp, *et = tmp + (size_t)(XR) * ic; /* [XR, IC], [XR, EC] */             \
        if (mf < m) {                                                                        \
            memset(xt, 0, sizeof(float) * (size_t)(XR) * ic);                                \
            memcpy(xt, x + mf * ic, sizeof(float) * (size_t)(m - mf) * ic);                  \
        }                                                                                    \
        for (int c0 = 0; c0 < ec; c0 += 3 * (LANES)) {                                       \
            const int cn = ec - c0 < 3 * (LANES) ? ec - c0 : 3 * (LANES);                    \
            const int nv = (cn + (LANES) - 1) / (LANES);                                     \
            const MASKT ml = MASKF(cn - (nv - 1) * (LANES)); /* the last vector's lanes */   \
            const float *w = w1t + c0, *b = b1 + c0;                                         \
            for (int64_t r0 = 0; r0 < m; r0 += (XR)) {                                       \
                float *eo = r0 == mf ? et + c0 : e + r0 * ec + c0;                           \
                const float *xs = r0 == mf ? xt : x + r0 * ic;                               \
                if (nv == 3) edw_mk##ISA##_3(eo, ec, xs, ic, w, ec, b, ic, ml);              \
                else if (nv == 2) edw_mk##ISA##_2(eo, ec, xs, ic, w, ec, b, ic, ml);         \
                else edw_mk##ISA##_1(eo, ec, xs, ic, w, ec, b, ic, ml);                      \
            }                                                                                \
        }                                                                                    \
        if (mf < m) memcpy(e + mf * ec, et, sizeof(float) * (size_t)(m - mf) * ec);          \
    }
EDW_EXPAND(512, LK_TARGET_AVX512, 16, EDW_XR512, __mmask16, edw_mask16)
EDW_EXPAND(256, LK_TARGET_AVX2, 8, EDW_XR256, __m256i, lk_lanes8)
#endif

typedef void (*edw_expand_fn)(float *, const float *, const float *, const float *, int64_t,
                              int, int, float *);

/* The expansion kernel on the path in force (NULL: sgemm and passes, the portable one). */
static edw_expand_fn edw_expand_pick(void) {
#ifdef LK_X86
    const lk_kernel_isa_t isa = lk_kernel_isa();
    if (isa == LK_ISA_AVX512) return edw_expand512;
    if (isa == LK_ISA_AVX2) return edw_expand256;
#endif
    return NULL;
}

/* e [m, C] += b [C] (the expansion's folded BN shift), row by row. */
LK_ALWAYS_INLINE void edw_bias_body(float *e, const float *b, int64_t m, int c) {
    for (int64_t r = 0; r < m; r++) {
        float *er = e + r * c;
        for (int q = 0; q < c; q++) er[q] += b[q];
    }
}
LK_KERNEL_CLONES(edw_bias, (float *e, const float *b, int64_t m, int c), (e, b, m, c))

lk_status lk_expdw_init(lk_expdw *L, const lk_expdw_cfg *cfg) {
    memset(L, 0, sizeof *L);
    L->cfg = *cfg;
    const lk_expdw_cfg *c = &L->cfg;
    LK_REQUIRE(c->ic > 0, "expand+depthwise: in_channels must be positive (ic=%d)", c->ic);
    L->team = lk_get_num_threads();
    lk_dw_geom geo; /* output size and row bands, as the depthwise forward's */
    LK_TRY(lk_dw_geometry(&geo, "expand+depthwise", c->n, c->ec, c->ih, c->iw, c->k, c->stride,
                          L->team, 0));
    L->pad = geo.pad, L->oh = geo.oh, L->ow = geo.ow, L->nband = geo.nband;
    /* Rows per sgemm: enough pixels for the call to pay; the ring holds every chunk an
     * output row can span (KH rows, chunk-aligned) plus the one being written. */
    L->g = c->iw >= EDW_MIN_M ? 1 : (EDW_MIN_M + c->iw - 1) / c->iw;
    if (L->g > c->ih) L->g = c->ih;
    L->nslot = (c->k - 1 + L->g - 1) / L->g + 2;
    /* Per thread: the ring, then the expansion kernels' tail rows [8, IC + EC]. */
    const size_t ring = (size_t)L->nslot * L->g * c->iw * c->ec;
    L->ws_floats = ring + (size_t)EDW_XR512 * (c->ic + c->ec);
    L->ws = lk_alloc(sizeof(float) * L->ws_floats * (size_t)L->team);
    L->wt = lk_alloc(sizeof(float) * (size_t)c->k * c->k * c->ec);
    L->w1t = lk_alloc(sizeof(float) * (size_t)c->ic * c->ec);
    L->part = lk_alloc(sizeof(float) * (size_t)c->n * L->oh * c->ec);
    L->zrow = lk_alloc(sizeof(float) * (size_t)c->iw * c->ec);
    if (!L->ws || !L->wt || !L->w1t || !L->part || !L->zrow) {
        lk_expdw_free(L);
        return LK_FAIL(LK_ERR_NOMEM, "expand+depthwise: rings [%d, %zu] and weights", L->team,
                       L->ws_floats);
    }
    memset(L->zrow, 0, sizeof(float) * (size_t)c->iw * c->ec);
    return LK_OK;
}

/* A ring slot's row r (r0: the task's first expanded row). */
static float *edw_ring_row(const lk_expdw *L, float *ring, int r, int r0) {
    const int64_t row = (int64_t)((r - r0) / L->g % L->nslot) * L->g + (r - r0) % L->g;
    return ring + row * L->cfg.iw * L->cfg.ec;
}

/* Output rows oy0 .. oy1-1 of image n; `sum` [OH, EC] receives each row's channel sums. */
static dnnl_status_t edw_task(const lk_expdw *L, float *y, float *sum, const float *x,
                              const float *w1, const float *b1, const float *bd, float *ring,
                              int n, int oy0, int oy1) {
    const lk_expdw_cfg *c = &L->cfg;
    const lk_dw_row_fn rowk = lk_dw_row_pick(c->k, LK_DW_ROW_SILU);
    const edw_expand_fn expand = edw_expand_pick();
    float *tmp = ring + (size_t)L->nslot * L->g * c->iw * c->ec; /* [8, IC + EC] */
    void (*biasf)(float *, const float *, int64_t, int) = LK_KERNEL_PICK(edw_bias);
    const int k = c->k, s = c->stride, p = L->pad;
    const int r0 = oy0 * s - p > 0 ? oy0 * s - p : 0;
    int next = r0; /* the next expanded row to make */
    for (int oy = oy0; oy < oy1; oy++) {
        const int lo = oy * s - p, hi = lo + k < c->ih ? lo + k : c->ih;
        while (next < hi) {
            const int g = c->ih - next < L->g ? c->ih - next : L->g;
            float *e = edw_ring_row(L, ring, next, r0); /* [g * IW, EC], contiguous */
            const int64_t m = (int64_t)g * c->iw;
            const float *xs = x + (((int64_t)n * c->ih + next) * c->iw) * c->ic;
            if (expand) {
                expand(e, xs, L->w1t, b1, m, c->ic, c->ec, tmp);
            } else { /* inside the region sgemm runs on this thread alone */
                dnnl_status_t st = dnnl_sgemm('N', 'T', m, c->ec, c->ic, 1.0f, xs, c->ic, w1,
                                              c->ic, 0.0f, e, c->ec);
                if (st != dnnl_success) return st;
                biasf(e, b1, m, c->ec);
                lk_silu_forward_fast_serial(e, e, m * c->ec);
            }
            next += g;
        }
        const float *rows[16];
        for (int i = 0; i < k; i++) {
            const int r = lo + i;
            rows[i] = r < 0 || r >= c->ih ? L->zrow : edw_ring_row(L, ring, r, r0);
        }
        float *yr = y + (((int64_t)n * L->oh + oy) * L->ow) * c->ec;
        float *srow = sum ? sum + (int64_t)oy * c->ec : NULL; /* this row's sums */
        lk_dw_row_run(rowk, yr, srow, rows, L->wt, bd, L->ow, c->iw, c->ec, k, s, p,
                      LK_DW_ROW_SILU);
    }
    return dnnl_success;
}

lk_status lk_expdw_forward(lk_expdw *L, float *y, float *pool, const float *x, const float *w1,
                           const float *b1, const float *wd, const float *bd, uint64_t version) {
    LK_REQUIRE(L->ws, "expand+depthwise: layer not initialised");
    LK_REQUIRE(y && x && w1 && b1 && wd && bd, "expand+depthwise forward: NULL argument");
    const lk_expdw_cfg *c = &L->cfg;
    const int ec = c->ec, nb = L->nband;
    if (version == 0 || version != L->w_version || w1 != L->w1_src || wd != L->wd_src) {
        lk_dw_taps(L->wt, wd, ec, c->k, 0);
        /* w1 [EC, IC] -> w1t [IC, EC], the x86 expansion kernels' vector direction. */
        for (int ch = 0; ch < ec; ch++)
            for (int i = 0; i < c->ic; i++)
                L->w1t[(size_t)i * ec + ch] = w1[(size_t)ch * c->ic + i];
        L->w_version = version;
        L->w1_src = w1;
        L->wd_src = wd;
    }
    int team = L->team;
#ifdef _OPENMP
    if (omp_get_max_threads() < team) team = omp_get_max_threads();
#endif
    const int64_t ntask = (int64_t)c->n * nb;
    dnnl_status_t bad = dnnl_success;
#pragma omp parallel num_threads(team) if (team > 1 && ntask > 1)
    {
        int t = 0;
#ifdef _OPENMP
        t = omp_get_thread_num();
#endif
        float *ring = L->ws + (size_t)t * L->ws_floats;
#pragma omp for schedule(static)
        for (int64_t task = 0; task < ntask; task++) {
            const int n = (int)(task / nb), b = (int)(task % nb);
            const int oy0 = (int)((int64_t)L->oh * b / nb);
            const int oy1 = (int)((int64_t)L->oh * (b + 1) / nb);
            float *sums = pool ? L->part + (int64_t)n * L->oh * ec : NULL; /* [OH, EC] */
            dnnl_status_t st = edw_task(L, y, sums, x, w1, b1, bd, ring, n, oy0, oy1);
            if (st != dnnl_success) {
#pragma omp critical(lk_expdw_status)
                bad = st;
            }
        }
    }
    LK_DNNL_NAMED(bad, "dnnl_sgemm (expand+depthwise)");
    if (pool) lk_dw_pool_finish(pool, L->part, c->n, L->oh, ec, (int64_t)L->oh * L->ow);
    return LK_OK;
}

void lk_expdw_free(lk_expdw *L) {
    lk_free(L->ws);
    lk_free(L->wt);
    lk_free(L->w1t);
    lk_free(L->part);
    lk_free(L->zrow);
    memset(L, 0, sizeof *L);
}
