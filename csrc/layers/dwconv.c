/* Hand-written depthwise convolution kernels for NHWC activations: the forward (and,
 * by a kernel rotated 180 degrees, the stride-1 input gradient) and the weight
 * gradient. Channels are contiguous in NHWC, so every kernel vectorises over channels.
 *
 * Forward. oneDNN v3.2's NHWC depthwise forward (brdgmm_dw) runs far below both memory
 * and arithmetic on AVX2: B3's 192-channel 3x3 layer at 75x75, 16 images, took 15-18 ms
 * there, 8 GB/s and 20 GFLOP/s. Here each task (an image, or a band of its rows when
 * there are fewer images than threads) makes one output row at a time from its K input
 * rows: per block of 8 (AVX2) or 16 (AVX-512) channels the KxK weights are loaded once,
 * and a group of output pixels runs as independent FMA chains (four; eight for AVX2's
 * 5x5, whose input vectors each feed several pixels of the group). The K input rows go
 * through a per-thread ring with zero padding columns, so that no output pixel has
 * clipped taps (those ran one FMA chain per pixel and took most of the time on maps of
 * 19x19 and below); the rows are copied there, or made by a transform instead of read
 * (lk_dw_input: the BatchNorm+SiLU of the expansion before it), so that input is never
 * written at all. On AVX2 the 5x5 layers keep that ring blocked by 8 channels and sweep
 * each block across the row (dwb_row256, faster there; lk_dwf_layout). At inference
 * (lk_dwconv_forward_eval) the folded bias and SiLU are applied in registers and each
 * output row's channel sums are taken for the SE's pool, which then needs no pass of its
 * own. The NHWC row kernels also serve the fused expansion + depthwise at inference
 * (expand_dw.c).
 *
 * Weight gradient. oneDNN v3.2 runs depthwise 5x5 weight gradients through its generic
 * grouped JIT (jit_dw takes only 3-wide kernels on AVX2), the slowest primitive of a
 * training step. Here the N*OH output rows are cut into chunks, and for each row of a
 * chunk, each block of up to 64 channels and each kernel row it sums
 * dy[n, oy, ox, c] * x[n, iy, ix, c] over ox in registers (one AVX2 accumulator
 * per tap and 8 channels; AVX-512: 16 channels), then adds that row sum to the
 * chunk's partial dw. The chunks' partials are added at the end. A chunk reads
 * its slab of x and dy from memory once.
 *
 * The instruction set is chosen at run time (lk_cpu.h). Determinism: the forward sums
 * each output's taps in one order on every path. The weight gradient's chunks depend
 * only on the shape, each chunk sums its rows in order and the partials are added in
 * chunk order; which code path (32, 16, 8 or scalar channels) serves a channel depends
 * only on C and the instruction set, and the vector paths all add the same fused
 * products per lane. So results are identical for every thread count (and the weight
 * gradient the same bits with AVX2 or AVX-512; plain C rounds each product).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "lk_cpu.h"
#include "lk_dnnl.h"
#include "lk_dwconv.h"
#include "lk_layers.h"
#include "lk_silu_simd.h"
#include "lk_threads.h"

#ifdef LK_X86
#include <immintrin.h>
#define LK_DW_X86 1
#define LK_DW_TARGET LK_TARGET_AVX2
#define LK_DW_TARGET512 LK_TARGET_AVX512
#define LK_DW_INLINE __attribute__((always_inline)) inline
#endif

/* ================================================================== forward */

enum { DWF_CB = 64,              /* channels per accumulator block of the portable row */
       DWF_BAND_MIN_ROWS = 8,    /* fewest output rows of a band (images < threads) where a
                                    band's halo rows are made twice (a transform, an
                                    expansion) */
       DWF_BAND_MIN_ROWS_COPY = 2 }; /* the same where they are only copied (padded) */

/* One output pixel's channels c0 .. c0 + cn - 1 on the portable path (the compiler
 * keeps the block's accumulators in registers). */
LK_ALWAYS_INLINE void dwf_pixel(float *y, const float *const *rows, const float *w,
                                const float *b, int x0, int iw, int c, int cn, int k) {
    float acc[DWF_CB];
    for (int q = 0; q < cn; q++) acc[q] = b[q];
    const int j0 = x0 < 0 ? -x0 : 0, j1 = x0 + k > iw ? iw - x0 : k;
    for (int i = 0; i < k; i++) {
        const float *wi = w + (int64_t)i * k * c;
        for (int j = j0; j < j1; j++) {
            const float *e = rows[i] + (int64_t)(x0 + j) * c, *wt = wi + (int64_t)j * c;
            for (int q = 0; q < cn; q++) acc[q] += wt[q] * e[q];
        }
    }
    for (int q = 0; q < cn; q++) y[q] = acc[q];
}

void lk_dw_row_c(float *y, const float *const *rows, const float *w, const float *b, int ow,
                 int iw, int c, int k, int s, int p) {
    const float *rc[16];
    for (int c0 = 0; c0 < c; c0 += DWF_CB) {
        const int cn = c - c0 < DWF_CB ? c - c0 : DWF_CB;
        for (int i = 0; i < k; i++) rc[i] = rows[i] + c0;
        for (int ox = 0; ox < ow; ox++) {
            float *yo = y + (int64_t)ox * c + c0;
            if (cn == DWF_CB)
                dwf_pixel(yo, rc, w + c0, b + c0, ox * s - p, iw, c, DWF_CB, k);
            else
                dwf_pixel(yo, rc, w + c0, b + c0, ox * s - p, iw, c, cn, k);
        }
    }
}

/* The output columns whose taps all lie inside the map: [*xa, *xb). */
static inline void dwf_interior(int *xa, int *xb, int ow, int iw, int k, int s, int p) {
    int a = (p + s - 1) / s, b = iw - k + p >= 0 ? (iw - k + p) / s + 1 : 0;
    if (b > ow) b = ow;
    if (a > b) a = b;
    *xa = a;
    *xb = b;
}

#ifdef LK_DW_X86
/* The row kernels, per path and activation ACT: 0 none, 1 SiLU and the sums in
 * registers, 2 SiLU and the sums in a pass from L1 right after each channel block (the
 * 5x5 weights and the SiLU's constants do not fit the registers together).
 *
 * AVX-512: 16 channels at a time (the last block masked), the block's KxK weights in
 * registers, four output pixels per step in the interior (four independent FMA chains:
 * one chain would wait on the FMA latency), single pixels with clipped taps at the
 * edges. */
LK_DW_TARGET512 static inline __m512 dwf_px512(float *yo, const float *const *rows,
                                               const float *w, __m512 bv, __mmask16 m, int x0,
                                               int iw, int c, int k, int fuse) {
    const int j0 = x0 < 0 ? -x0 : 0, j1 = x0 + k > iw ? iw - x0 : k;
    __m512 a = bv;
    for (int i = 0; i < k; i++)
        for (int j = j0; j < j1; j++)
            a = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w + (int64_t)(i * k + j) * c),
                                _mm512_maskz_loadu_ps(m, rows[i] + (int64_t)(x0 + j) * c), a);
    if (!fuse) { /* no SiLU, or the row's SiLU pass follows */
        _mm512_mask_storeu_ps(yo, m, a);
        return _mm512_setzero_ps();
    }
    a = silu_fast16(a);
    _mm512_mask_storeu_ps(yo, m, a);
    return a;
}

#define DWF_ROW512(NAME, K, ACT)                                                               \
    LK_DW_TARGET512 static void NAME(float *y, float *sum, const float *const *rows,           \
                                     const float *w, const float *b, int ow, int iw, int c,    \
                                     int s, int p) {                                           \
        int xa, xb;                                                                            \
        dwf_interior(&xa, &xb, ow, iw, K, s, p);                                               \
        if ((ACT) == 0) sum = NULL;                                                            \
        for (int c0 = 0; c0 < c; c0 += 16) {                                                   \
            const __mmask16 m = c - c0 >= 16 ? (__mmask16)0xFFFF                               \
                                             : (__mmask16)((1u << (c - c0)) - 1);              \
            const float *rc[K];                                                                \
            for (int i = 0; i < K; i++) rc[i] = rows[i] + c0;                                  \
            __m512 wv[K * K];                                                                  \
            for (int t = 0; t < K * K; t++)                                                    \
                wv[t] = _mm512_maskz_loadu_ps(m, w + (int64_t)t * c + c0);                     \
            const __m512 bv = _mm512_maskz_loadu_ps(m, b + c0);                                \
            __m512 sv = sum ? _mm512_maskz_loadu_ps(m, sum + c0) : _mm512_setzero_ps();        \
            const int64_t sc = (int64_t)s * c;                                                 \
            int ox = 0;                                                                        \
            for (; ox < xa; ox++)                                                              \
                sv = _mm512_add_ps(sv, dwf_px512(y + (int64_t)ox * c + c0, rc, w + c0, bv, m,  \
                                                ox * s - p, iw, c, K, (ACT) == 1));            \
            for (; ox + 4 <= xb; ox += 4) {                                                    \
                __m512 a0 = bv, a1 = bv, a2 = bv, a3 = bv;                                     \
                const int64_t x0 = (int64_t)ox * s - p;                                        \
                for (int i = 0; i < K; i++)                                                    \
                    for (int j = 0; j < K; j++) {                                              \
                        const float *e = rc[i] + (x0 + j) * c;                                 \
                        const __m512 wt = wv[i * K + j];                                       \
                        a0 = _mm512_fmadd_ps(wt, _mm512_maskz_loadu_ps(m, e), a0);             \
                        a1 = _mm512_fmadd_ps(wt, _mm512_maskz_loadu_ps(m, e + sc), a1);        \
                        a2 = _mm512_fmadd_ps(wt, _mm512_maskz_loadu_ps(m, e + 2 * sc), a2);    \
                        a3 = _mm512_fmadd_ps(wt, _mm512_maskz_loadu_ps(m, e + 3 * sc), a3);    \
                    }                                                                          \
                float *yo = y + (int64_t)ox * c + c0;                                          \
                if ((ACT) == 1) { /* SiLU, and the sums in pixel order */                      \
                    a0 = silu_fast16(a0);                                                      \
                    a1 = silu_fast16(a1);                                                      \
                    a2 = silu_fast16(a2);                                                      \
                    a3 = silu_fast16(a3);                                                      \
                    sv = _mm512_add_ps(_mm512_add_ps(sv, a0), a1);                             \
                    sv = _mm512_add_ps(_mm512_add_ps(sv, a2), a3);                             \
                }                                                                              \
                _mm512_mask_storeu_ps(yo, m, a0);                                              \
                _mm512_mask_storeu_ps(yo + c, m, a1);                                          \
                _mm512_mask_storeu_ps(yo + 2 * c, m, a2);                                      \
                _mm512_mask_storeu_ps(yo + 3 * c, m, a3);                                      \
            }                                                                                  \
            for (; ox < ow; ox++)                                                              \
                sv = _mm512_add_ps(sv, dwf_px512(y + (int64_t)ox * c + c0, rc, w + c0, bv, m,  \
                                                ox * s - p, iw, c, K, (ACT) == 1));            \
            for (int q = 0; (ACT) == 2 && q < ow; q++) { /* from L1, in pixel order */         \
                float *yo = y + (int64_t)q * c + c0;                                           \
                const __m512 v = silu_fast16(_mm512_maskz_loadu_ps(m, yo));                   \
                _mm512_mask_storeu_ps(yo, m, v);                                               \
                sv = _mm512_add_ps(sv, v);                                                     \
            }                                                                                  \
            if (sum) _mm512_mask_storeu_ps(sum + c0, m, sv);                                   \
        }                                                                                      \
    }
DWF_ROW512(dwf_row512_k3, 3, 0)
DWF_ROW512(dwf_row512_k5, 5, 0)
DWF_ROW512(dwf_row512_k3_silu, 3, 1)
DWF_ROW512(dwf_row512_k5_silu, 5, 2)

/* AVX2: 8 lanes, and pixel-major: a group of four or eight output pixels at a time
 * across every channel block. (Channel-major, each block of 8 across the whole row, read
 * the cache lines that blocks c0 and c0 + 8 share twice from L2 once K input rows outgrew
 * L1, from about 200 channels: 576 channels 3x3 at 19x19 took 2.3 ms against 1.6 ms
 * pixel-major, and the inference form 3.9 against 2.4-3.0, batch 16, 2 threads.) A kernel
 * row's weights are loaded per group from L1 and each input vector once per group
 * (against a load per tap and quads only, interleaved in one process, batch 16, 2
 * threads: 5x5 at 19x19 and 10x10 0.86-0.94x the time, 5x5 at batch 1 0.81-0.86x, 3x3
 * 0.95-1.04x), the SiLU is applied in registers, and the sums are kept in memory in
 * pixel order. Whole blocks of 8 load and store plainly, the last partial one masked:
 * AVX2's masked moves are slow on AMD (with them on every block the kernel ran 2x
 * slower; the masked store alone cost more than the block's FMAs). */
#define DWF_LD(p) (FULL ? _mm256_loadu_ps(p) : _mm256_maskload_ps((p), m))
#define DWF_ST(p, v) (FULL ? _mm256_storeu_ps((p), (v)) : _mm256_maskstore_ps((p), m, (v)))

/* One output pixel of one block with clipped taps (one FMA chain). */
LK_DW_TARGET static inline __m256 dwf_px256(float *yo, const float *const *rows, const float *w,
                                            __m256 bv, __m256i m, int x0, int iw, int c,
                                            const int k, const int fuse, const int FULL) {
    const int j0 = x0 < 0 ? -x0 : 0, j1 = x0 + k > iw ? iw - x0 : k;
    __m256 a = bv;
    for (int i = 0; i < k; i++)
        for (int j = j0; j < j1; j++)
            a = _mm256_fmadd_ps(DWF_LD(w + (int64_t)(i * k + j) * c),
                                DWF_LD(rows[i] + (int64_t)(x0 + j) * c), a);
    if (fuse) a = silu_fast8(a);
    DWF_ST(yo, a);
    return fuse ? a : _mm256_setzero_ps();
}

/* P interior output pixels (x0: the first one's leftmost input column) of the block at
 * c0, stride S: P independent FMA chains, each its taps in row-major order from the
 * bias. Each input vector of a kernel row is loaded once and feeds every pixel whose
 * window holds it (the row's K weights stay in registers), so a row of taps costs
 * (P - 1) S + K input loads instead of P K. With ACT, SiLU, and the pixels from `skip` on
 * added to sum in pixel order (the others were made before: a row's last group
 * overlaps the one before it). */
LK_DW_TARGET static inline __attribute__((always_inline)) void
dwf_group256(float *yo, float *sum, const float *const *rows, const float *w, const float *b,
             int64_t x0, int64_t c, int c0, int skip, const int K, const int S, const int P,
             const int ACT, const int FULL) {
    const __m256i m = lk_lanes8(c - c0);
    __m256 a[8];
    a[0] = DWF_LD(b + c0);
    _Pragma("GCC unroll 8") for (int q = 1; q < P; q++) a[q] = a[0];
    for (int i = 0; i < K; i++) {
        const float *r = rows[i] + x0 * c + c0;
        __m256 wt[5];
        _Pragma("GCC unroll 5") for (int j = 0; j < K; j++)
            wt[j] = DWF_LD(w + (int64_t)(i * K + j) * c + c0);
        /* Input column e feeds pixel q through tap e - q S. */
        _Pragma("GCC unroll 24") for (int e = 0; e < (P - 1) * S + K; e++) {
            const __m256 v = DWF_LD(r + (int64_t)e * c);
            _Pragma("GCC unroll 8") for (int q = 0; q < P; q++) {
                const int j = e - q * S;
                if (j >= 0 && j < K) a[q] = _mm256_fmadd_ps(wt[j], v, a[q]);
            }
        }
    }
    float *o = yo + c0;
    if (ACT) {
        _Pragma("GCC unroll 8") for (int q = 0; q < P; q++) a[q] = silu_fast8(a[q]);
        if (sum) { /* the pixels not counted before (skip: made again), in order */
            __m256 sv = DWF_LD(sum + c0);
            _Pragma("GCC unroll 8") for (int q = 0; q < P; q++) if (q >= skip) sv =
                _mm256_add_ps(sv, a[q]);
            DWF_ST(sum + c0, sv);
        }
    }
    _Pragma("GCC unroll 8") for (int q = 0; q < P; q++) DWF_ST(o + q * c, a[q]);
}

/* Groups of P pixels starting at output column `at` across every channel block. */
#define DWF_GROUP_ALL(K, S, P, ACT)                                                            \
    do {                                                                                       \
        for (int c0 = 0; c0 < cf; c0 += 8)                                                     \
            dwf_group256(yo, sum, rows, w, b, x0, c, c0, skip, K, S, P, ACT, 1);               \
        if (cf < c) dwf_group256(yo, sum, rows, w, b, x0, c, cf, skip, K, S, P, ACT, 0);       \
    } while (0)

/* One output pixel with clipped taps across every channel block. */
LK_DW_TARGET static inline __attribute__((always_inline)) void
dwf_px_all256(float *y, float *sum, const float *const *rows, const float *w, const float *b,
              int ox, int iw, int c, int s, int p, const int K, const int ACT) {
    const float *rc[7];
    for (int c0 = 0; c0 < c; c0 += 8) {
        const int full = c - c0 >= 8;
        const __m256i m = lk_lanes8(c - c0);
        for (int i = 0; i < K; i++) rc[i] = rows[i] + c0;
        float *yo = y + (int64_t)ox * c + c0;
        __m256 a;
        if (full)
            a = dwf_px256(yo, rc, w + c0, _mm256_loadu_ps(b + c0), m, ox * s - p, iw, c, K,
                          ACT, 1);
        else
            a = dwf_px256(yo, rc, w + c0, _mm256_maskload_ps(b + c0, m), m, ox * s - p, iw, c,
                          K, ACT, 0);
        if (ACT && sum && full)
            _mm256_storeu_ps(sum + c0, _mm256_add_ps(_mm256_loadu_ps(sum + c0), a));
        else if (ACT && sum)
            _mm256_maskstore_ps(sum + c0, m, _mm256_add_ps(_mm256_maskload_ps(sum + c0, m), a));
    }
}

#define DWF_ROW256(NAME, K, ACT)                                                               \
    LK_DW_TARGET static void NAME(float *y, float *sum, const float *const *rows,              \
                                  const float *w, const float *b, int ow, int iw, int c,       \
                                  int s, int p) {                                              \
        int xa, xb;                                                                            \
        dwf_interior(&xa, &xb, ow, iw, K, s, p);                                               \
        if ((ACT) == 0) sum = NULL;                                                            \
        const int cf = c & ~7;                                                                 \
        if (xb - xa < 4) xa = xb = ow; /* too short for a quad: every pixel clipped */         \
        for (int ox = 0; ox < xa; ox++)                                                        \
            dwf_px_all256(y, sum, rows, w, b, ox, iw, c, s, p, K, ACT);                        \
        int ox = xa;                                                                           \
        /* 5x5: eight pixels while they last (eight chains cover the FMA latency, and each     \
         * input vector feeds up to five of them), then fours, the last overlapping the one    \
         * before. 3x3 with SiLU ran 2-13 % slower in eights (the eight SiLUs spill), in fours \
         * level with the per-tap loads, so 3x3 stays in fours. */                             \
        for (; (K) > 3 && xb - ox >= 8; ox += 8) {                                             \
            const int skip = 0, at = ox;                                                       \
            float *yo = y + (int64_t)at * c;                                                   \
            const int64_t x0 = (int64_t)at * s - p;                                            \
            if (s == 1) DWF_GROUP_ALL(K, 1, 8, ACT);                                           \
            else DWF_GROUP_ALL(K, 2, 8, ACT);                                                  \
        }                                                                                      \
        for (; ox < xb; ox += 4) {                                                             \
            const int at = ox + 4 <= xb ? ox : xb - 4, skip = ox - at;                         \
            float *yo = y + (int64_t)at * c;                                                   \
            const int64_t x0 = (int64_t)at * s - p;                                            \
            if (s == 1) DWF_GROUP_ALL(K, 1, 4, ACT);                                           \
            else DWF_GROUP_ALL(K, 2, 4, ACT);                                                  \
        }                                                                                      \
        for (ox = xb; ox < ow; ox++)                                                           \
            dwf_px_all256(y, sum, rows, w, b, ox, iw, c, s, p, K, ACT);                        \
    }
DWF_ROW256(dwf_row256_k3, 3, 0)
DWF_ROW256(dwf_row256_k5, 5, 0)
DWF_ROW256(dwf_row256_k3_silu, 3, 1)
DWF_ROW256(dwf_row256_k5_silu, 5, 1)
#undef DWF_LD
#undef DWF_ST
#endif

#ifdef LK_DW_X86
/* AVX2 5x5 with the input rows blocked by 8 channels: row r of the ring is
 * [NB][IW + 2p][8] (NB = C / 8 rounded up; zero padding columns and spare lanes), the
 * weights [NB][25][8]. A block's input vectors then lie at fixed offsets from one
 * pointer per kernel row, and the block sweeps the whole output row with its five rows
 * (5 (IW + 2p) 32 bytes) and weights in L1. In the NHWC ring every input column of a
 * group needs its own offset (a multiple of C): GCC ran out of registers and reloaded
 * the offsets from the stack, and a group's data lay spread over five rows of IW C
 * floats. The output stays NHWC; each output is the same chain in the same order as the
 * NHWC kernels (the taps row-major from the bias) and the sums take the same pixel
 * order, so the results are the same bits. Measured against the NHWC ring in one
 * process, alternating call by call (batch 16, 2 threads, Zen 3): inference 816 at 19x19
 * 0.91x the time, 1392 at 10x10 0.74x, stride 2 0.85-0.87x, batch 1 0.75x; training
 * 0.73-0.99x. 3x3 stays NHWC: blocked it took 1.06-1.40x the time (fewer taps to pay for
 * the copy into blocks and the half-line output stores of a channel-major sweep). */

/* P output pixels of the block whose rows start at rb[i] (already at the group's first
 * input column), stride S: P FMA chains; each input vector of a kernel row is loaded
 * once and feeds every pixel whose window holds it. With ACT, SiLU, and the pixels from
 * `skip` on added to *sv in pixel order. Stores masked by m unless FULL. */
LK_DW_TARGET static inline __attribute__((always_inline)) void
dwb_group256(float *o, int64_t c, __m256 *sv, const float *const *rb, const float *wk,
             __m256 bias, int skip, __m256i m, const int K, const int S, const int P,
             const int ACT, const int FULL) {
    __m256 a[8];
    _Pragma("GCC unroll 8") for (int q = 0; q < P; q++) a[q] = bias;
    for (int i = 0; i < K; i++) {
        const float *r = rb[i];
        __m256 wt[5];
        _Pragma("GCC unroll 5") for (int j = 0; j < K; j++)
            wt[j] = _mm256_loadu_ps(wk + (i * K + j) * 8);
        _Pragma("GCC unroll 24") for (int e = 0; e < (P - 1) * S + K; e++) {
            const __m256 v = _mm256_loadu_ps(r + e * 8);
            _Pragma("GCC unroll 8") for (int q = 0; q < P; q++) {
                const int j = e - q * S;
                if (j >= 0 && j < K) a[q] = _mm256_fmadd_ps(wt[j], v, a[q]);
            }
        }
    }
    if (ACT) {
        _Pragma("GCC unroll 8") for (int q = 0; q < P; q++) {
            a[q] = silu_fast8(a[q]);
            if (q >= skip) *sv = _mm256_add_ps(*sv, a[q]);
        }
    }
    _Pragma("GCC unroll 8") for (int q = 0; q < P; q++) {
        if (FULL)
            _mm256_storeu_ps(o + q * c, a[q]);
        else
            _mm256_maskstore_ps(o + q * c, m, a[q]);
    }
}

/* Groups of P pixels from output column `at` of one block (its rows rb0, weights wk). */
#define DWB_GROUP(K, S, P, ACT)                                                                \
    do {                                                                                       \
        const float *rg[5];                                                                    \
        for (int i = 0; i < (K); i++) rg[i] = rb0[i] + (int64_t)at * (S) * 8;                  \
        if (full)                                                                              \
            dwb_group256(yb + (int64_t)at * c, c, &sv, rg, wk, bias, skip, m, K, S, P, ACT, 1); \
        else                                                                                   \
            dwb_group256(yb + (int64_t)at * c, c, &sv, rg, wk, bias, skip, m, K, S, P, ACT, 0); \
    } while (0)

/* Every pixel group of one block across the output row at stride S: eights while they
 * last, then fours, the last group overlapping the one before it; rows shorter than four
 * pixels one pixel at a time. */
#define DWB_SWEEP(K, S, ACT)                                                                   \
    do {                                                                                       \
        int ox = 0;                                                                            \
        if (ow < 4) {                                                                          \
            for (; ox < ow; ox++) {                                                            \
                const int at = ox, skip = 0;                                                   \
                DWB_GROUP(K, S, 1, ACT);                                                       \
            }                                                                                  \
        }                                                                                      \
        for (; ow - ox >= 8; ox += 8) {                                                        \
            const int at = ox, skip = 0;                                                       \
            DWB_GROUP(K, S, 8, ACT);                                                           \
        }                                                                                      \
        for (; ox < ow; ox += 4) {                                                             \
            const int at = ox + 4 <= ow ? ox : ow - 4, skip = ox - at;                         \
            DWB_GROUP(K, S, 4, ACT);                                                           \
        }                                                                                      \
    } while (0)

/* One output row y [OW, C] from the K blocked rows rows[i] ([NB][IWP][8], IWP = bs / 8
 * columns with the padding, so no tap is clipped), the blocked weights wb and bias b
 * [C]; with ACT, SiLU and sum [C] = the row's channel sums (pixel order). */
#define DWB_ROW256(NAME, K, ACT)                                                               \
    LK_DW_TARGET static void NAME(float *y, float *sum, const float *const *rows,              \
                                  const float *wb, const float *b, int ow, int c, int s,       \
                                  int64_t bs) {                                                \
        const int nb = (c + 7) / 8;                                                            \
        for (int blk = 0; blk < nb; blk++) {                                                   \
            const int c0 = blk * 8, full = c - c0 >= 8;                                        \
            const __m256i m = lk_lanes8(c - c0);                                               \
            const __m256 bias = full ? _mm256_loadu_ps(b + c0) : _mm256_maskload_ps(b + c0, m); \
            const float *rb0[5];                                                               \
            for (int i = 0; i < (K); i++) rb0[i] = rows[i] + (int64_t)blk * bs;                \
            const float *wk = wb + (int64_t)blk * (K) * (K) * 8;                               \
            float *yb = y + c0;                                                                \
            __m256 sv = _mm256_setzero_ps();                                                   \
            if (s == 1) DWB_SWEEP(K, 1, ACT);                                                  \
            else DWB_SWEEP(K, 2, ACT);                                                         \
            if ((ACT) && sum) {                                                                \
                if (full) _mm256_storeu_ps(sum + c0, sv);                                      \
                else _mm256_maskstore_ps(sum + c0, m, sv);                                     \
            }                                                                                  \
        }                                                                                      \
    }
DWB_ROW256(dwb_row256_k5, 5, 0)
DWB_ROW256(dwb_row256_k5_silu, 5, 1)
#undef DWB_ROW256
#undef DWB_SWEEP
#undef DWB_GROUP

/* rows [iw, C] NHWC into a blocked ring row dst [NB][IWP][8] from column p on (the
 * padding columns and the tail block's spare lanes stay zero). */
LK_DW_TARGET static void dwb_fill256(float *dst, const float *src, int iw, int c, int p,
                                     int64_t bs) {
    const int full = c / 8, nb = (c + 7) / 8;
    const __m256i m = lk_lanes8(c - full * 8);
    for (int px = 0; px < iw; px++) {
        const float *sp = src + (int64_t)px * c;
        float *dp = dst + (int64_t)(p + px) * 8;
        for (int blk = 0; blk < full; blk++)
            _mm256_storeu_ps(dp + blk * bs, _mm256_loadu_ps(sp + blk * 8));
        if (full < nb) _mm256_storeu_ps(dp + full * bs, _mm256_maskload_ps(sp + full * 8, m));
    }
}
#endif

typedef void (*dwb_row_fn)(float *y, float *sum, const float *const *rows, const float *wb,
                           const float *b, int ow, int c, int s, int64_t bs);

static lk_dwf_layout g_layout = LK_DWF_LAYOUT_AUTO;
void lk_dwconv_set_fwd_layout(lk_dwf_layout l) { g_layout = l; }
lk_dwf_layout lk_dwconv_get_fwd_layout(void) { return g_layout; }

/* The blocked row kernel for K where the layout policy allows it, or NULL (another path,
 * or K other than 5). */
static dwb_row_fn dwb_row_pick(int k, lk_dw_row_act act) {
#ifdef LK_DW_X86
    if (g_layout == LK_DWF_LAYOUT_AUTO && lk_kernel_isa() == LK_ISA_AVX2 && k == 5)
        return act == LK_DW_ROW_SILU ? dwb_row256_k5_silu : dwb_row256_k5;
#endif
    (void)k;
    (void)act;
    return NULL;
}

lk_dw_row_fn lk_dw_row_pick(int k, lk_dw_row_act act) {
#ifdef LK_DW_X86
    const int silu = act == LK_DW_ROW_SILU;
    const lk_kernel_isa_t isa = lk_kernel_isa();
    if (isa == LK_ISA_AVX512 && k == 3) return silu ? dwf_row512_k3_silu : dwf_row512_k3;
    if (isa == LK_ISA_AVX512 && k == 5) return silu ? dwf_row512_k5_silu : dwf_row512_k5;
    if (isa == LK_ISA_AVX2 && k == 3) return silu ? dwf_row256_k3_silu : dwf_row256_k3;
    if (isa == LK_ISA_AVX2 && k == 5) return silu ? dwf_row256_k5_silu : dwf_row256_k5;
#endif
    (void)k;
    (void)act;
    return NULL;
}

int lk_dwconv_fwd_vectorised(int k) { return lk_dw_row_pick(k, LK_DW_ROW_PLAIN) != NULL; }

/* sum [C] += y [m, C] over its rows, in row order (the portable path's pool sums). */
LK_ALWAYS_INLINE void dwf_sum_body(float *sum, const float *y, int64_t m, int c) {
    for (int64_t r = 0; r < m; r++) {
        const float *yr = y + r * c;
        for (int q = 0; q < c; q++) sum[q] += yr[q];
    }
}
LK_KERNEL_CLONES(dwf_sum, (float *sum, const float *y, int64_t m, int c), (sum, y, m, c))

void lk_dw_row_run(lk_dw_row_fn rowk, float *y, float *sum, const float *const *rows,
                   const float *w, const float *b, int ow, int iw, int c, int k, int s, int p,
                   lk_dw_row_act act) {
    if (sum && act == LK_DW_ROW_SILU) memset(sum, 0, sizeof(float) * (size_t)c);
    if (rowk) { /* the activation and the sums applied in registers or from L1 */
        rowk(y, sum, rows, w, b, ow, iw, c, s, p);
        return;
    }
    lk_dw_row_c(y, rows, w, b, ow, iw, c, k, s, p);
    if (act != LK_DW_ROW_SILU) return;
    lk_silu_forward_fast_serial(y, y, (int64_t)ow * c);
    if (sum) LK_KERNEL_PICK(dwf_sum)(sum, y, ow, c);
}

void lk_dw_taps(float *wt, const float *w, int c, int k, int rotate) {
    const int kk = k * k;
    for (int q = 0; q < c; q++)
        for (int t = 0; t < kk; t++)
            wt[(size_t)t * c + q] = w[(size_t)q * kk + (rotate ? kk - 1 - t : t)];
}

void lk_dw_pool_finish(float *pool, const float *part, int n, int nrow, int c, int64_t npix) {
    const float inv = 1.0f / (float)npix;
    for (int i = 0; i < n; i++)
        for (int q = 0; q < c; q++) {
            float s = 0.0f;
            for (int r = 0; r < nrow; r++) s += part[((size_t)i * nrow + r) * c + q];
            pool[(size_t)i * c + q] = s * inv;
        }
}

lk_status lk_dw_geometry(lk_dw_geom *g, const char *who, int n, int c, int ih, int iw, int k,
                         int stride, int team, int cheap_halo) {
    LK_REQUIRE(n > 0 && c > 0 && ih > 0 && iw > 0,
               "%s: sizes must be positive (n=%d c=%d ih=%d iw=%d)", who, n, c, ih, iw);
    LK_REQUIRE(k >= 1 && k <= 15 && k % 2 == 1 && (stride == 1 || stride == 2),
               "%s: kernel must be odd and at most 15, stride 1 or 2 (k=%d s=%d)", who, k,
               stride);
    g->pad = (k - 1) / 2;
    g->oh = (ih + 2 * g->pad - k) / stride + 1;
    g->ow = (iw + 2 * g->pad - k) / stride + 1;
    g->nband = 1;
    if (n < team) {
        int nb = (2 * team + n - 1) / n,
            most = g->oh / (cheap_halo ? DWF_BAND_MIN_ROWS_COPY : DWF_BAND_MIN_ROWS);
        g->nband = nb < most ? nb : most < 1 ? 1 : most;
    }
    return LK_OK;
}

lk_status lk_dwconv_fwd_init(lk_dwconv_fwd *L, const lk_dwconv_fwd_cfg *cfg) {
    memset(L, 0, sizeof *L);
    L->cfg = *cfg;
    const lk_dwconv_fwd_cfg *c = &L->cfg;
    L->team = lk_get_num_threads();
    /* A band's halo rows are made again by the transform, or else only copied. */
    lk_dw_geom g;
    LK_TRY(lk_dw_geometry(&g, "dwconv forward", c->n, c->c, c->ih, c->iw, c->k, c->stride,
                          L->team, !c->in_rows));
    L->pad = g.pad, L->oh = g.oh, L->ow = g.ow, L->nband = g.nband;
    L->blocked = dwb_row_pick(c->k, LK_DW_ROW_PLAIN) != NULL;
    const int nb = (c->c + 7) / 8;
    L->bs = (int64_t)(c->iw + 2 * L->pad) * 8;
    /* One ring row: [IW + 2 pad, C], or blocked [NB, IW + 2 pad, 8]. */
    const size_t row =
        L->blocked ? (size_t)nb * (size_t)L->bs : (size_t)(c->iw + 2 * L->pad) * c->c;
    L->ring = (size_t)c->k * row;
    L->ws = lk_alloc(sizeof(float) * L->ring * (size_t)L->team);
    const size_t wch = L->blocked ? (size_t)nb * 8 : (size_t)c->c; /* channels of wt */
    L->wt = lk_alloc(sizeof(float) * (size_t)c->k * c->k * wch);
    L->zero = lk_alloc(sizeof(float) * row);
    L->part = c->eval ? lk_alloc(sizeof(float) * (size_t)c->n * L->oh * c->c) : NULL;
    L->rowtmp = L->blocked && c->in_rows
                    ? lk_alloc(sizeof(float) * (size_t)c->iw * c->c * (size_t)L->team)
                    : NULL;
    if (!L->ws || !L->wt || !L->zero || (c->eval && !L->part) ||
        (L->blocked && c->in_rows && !L->rowtmp)) {
        lk_dwconv_fwd_free(L);
        return LK_FAIL(LK_ERR_NOMEM, "dwconv forward: rings [%d, %zu] and weights", L->team,
                       L->ring);
    }
    /* The padding columns of the ring are never written after this. */
    memset(L->ws, 0, sizeof(float) * L->ring * (size_t)L->team);
    memset(L->zero, 0, sizeof(float) * row);
    return LK_OK;
}

/* Output rows oy0 .. oy1 - 1 of image n; `ring` takes the input rows, copied or made by
 * `in` (row r in slot r % K: an output row's K rows are consecutive): [K, IW + 2p, C] for
 * `rowk`, or with `rowb` blocked [K][NB, IW + 2p, 8], a row made by `in` going through
 * tmp [IW, C] first. With `act` (eval), b is the bias and `sum` [OH, C] receives each
 * row's channel sums (per row, so that the pool does not depend on how rows fall into
 * bands). */
static void dwf_task(const lk_dwconv_fwd *L, float *y, float *sum, const float *x,
                     const float *b, const lk_dw_input *in, float *ring, float *tmp,
                     lk_dw_row_fn rowk, dwb_row_fn rowb, lk_dw_row_act act, int n, int oy0,
                     int oy1) {
    const lk_dwconv_fwd_cfg *c = &L->cfg;
    const int k = c->k, s = c->stride, p = L->pad;
    const int64_t row = (int64_t)c->iw * c->c;
    const int64_t slot = rowb ? (int64_t)((c->c + 7) / 8) * L->bs : row + 2 * (int64_t)p * c->c;
    const float *xn = x + (int64_t)n * c->ih * row;
    int next = oy0 * s - p > 0 ? oy0 * s - p : 0; /* the next row to make in the ring */
    for (int oy = oy0; oy < oy1; oy++) {
        const int lo = oy * s - p, hi = lo + k < c->ih ? lo + k : c->ih;
        for (; next < hi; next++) {
            float *dst = ring + (next % k) * slot;
            const float *src = xn + next * row;
            if (!rowb) { /* straight into the slot, after its left padding */
                if (in)
                    in->rows(dst + (int64_t)p * c->c, src, c->iw, in->ctx);
                else
                    memcpy(dst + (int64_t)p * c->c, src, sizeof(float) * (size_t)row);
                continue;
            }
            if (in) {
                in->rows(tmp, src, c->iw, in->ctx);
                src = tmp;
            }
#ifdef LK_DW_X86
            dwb_fill256(dst, src, c->iw, c->c, p, L->bs);
#endif
        }
        const float *rows[16];
        for (int i = 0; i < k; i++) {
            const int r = lo + i;
            rows[i] = r < 0 || r >= c->ih ? L->zero : ring + (r % k) * slot;
        }
        float *yr = y + ((int64_t)n * L->oh + oy) * L->ow * c->c;
        float *srow = sum ? sum + (int64_t)oy * c->c : NULL; /* this row's sums */
        /* Every pixel inside the padded rows: no clipped taps. */
        if (rowb)
            rowb(yr, srow, rows, L->wt, b, L->ow, c->c, s, L->bs);
        else
            lk_dw_row_run(rowk, yr, srow, rows, L->wt, b, L->ow, c->iw + 2 * p, c->c, k, s, 0,
                          act);
    }
}

/* wb [NB, K * K, 8] = w [C, 1, K, K] blocked by 8 channels, tap-major inside a block
 * (turned by 180 degrees when `rotate`), the tail block's spare lanes zero. */
static void dwb_taps(float *wb, const float *w, int c, int k, int rotate) {
    const int kk = k * k, nb = (c + 7) / 8;
    memset(wb, 0, sizeof(float) * (size_t)nb * kk * 8);
    for (int q = 0; q < c; q++)
        for (int t = 0; t < kk; t++)
            wb[((size_t)(q / 8) * kk + t) * 8 + q % 8] =
                w[(size_t)q * kk + (rotate ? kk - 1 - t : t)];
}

/* The weights tap-major (lk_dw_taps), then every task on the team. */
static void dwf_run(lk_dwconv_fwd *L, float *y, const float *x, const float *w, int rotate,
                    const float *b, const lk_dw_input *in, lk_dw_row_act act, uint64_t version) {
    const lk_dwconv_fwd_cfg *c = &L->cfg;
    const int ch = c->c, nb = L->nband;
    /* Laid out again unless these are the weights of the last call at the same version
     * (0: unknown, always). */
    if (version == 0 || version != L->wt_version || w != L->wt_src || rotate) {
        if (L->blocked)
            dwb_taps(L->wt, w, ch, c->k, rotate);
        else
            lk_dw_taps(L->wt, w, ch, c->k, rotate);
        L->wt_version = rotate ? 0 : version;
        L->wt_src = w;
    }
    const lk_dw_row_fn rowk = lk_dw_row_pick(c->k, act);
    const dwb_row_fn rowb = L->blocked ? dwb_row_pick(c->k, act) : NULL;
    int team = L->team;
#ifdef _OPENMP
    if (omp_get_max_threads() < team) team = omp_get_max_threads();
#endif
    const int64_t ntask = (int64_t)c->n * nb;
#pragma omp parallel num_threads(team) if (team > 1 && ntask > 1)
    {
        int t = 0;
#ifdef _OPENMP
        t = omp_get_thread_num();
#endif
        float *ring = L->ws + (size_t)t * L->ring;
        float *tmp = L->rowtmp ? L->rowtmp + (size_t)t * c->iw * ch : NULL;
#pragma omp for schedule(static)
        for (int64_t task = 0; task < ntask; task++) {
            const int n = (int)(task / nb), band = (int)(task % nb);
            float *sums = act ? L->part + (int64_t)n * L->oh * ch : NULL; /* [OH, C] */
            const int oy0 = (int)((int64_t)L->oh * band / nb);
            const int oy1 = (int)((int64_t)L->oh * (band + 1) / nb);
            dwf_task(L, y, sums, x, b, in, ring, tmp, rowk, rowb, act, n, oy0, oy1);
        }
    }
}

lk_status lk_dwconv_forward(lk_dwconv_fwd *L, float *y, const float *x, const float *w, int rotate,
                            const lk_dw_input *in) {
    LK_REQUIRE(L->wt, "dwconv forward: layer not initialised");
    LK_REQUIRE(y && x && w, "dwconv forward: NULL argument");
    const lk_dwconv_fwd_cfg *c = &L->cfg;
    LK_REQUIRE(!rotate || c->stride == 1, "dwconv forward: a rotated kernel needs stride 1");
    LK_REQUIRE(!in || (in->rows && c->in_rows),
               "dwconv forward: an input transform needs its rows() and a plan with in_rows");
    dwf_run(L, y, x, w, rotate, L->zero, in, LK_DW_ROW_PLAIN, 0);
    return LK_OK;
}

lk_status lk_dwconv_forward_eval(lk_dwconv_fwd *L, float *y, float *pool, const float *x,
                                 const float *w, const float *b, uint64_t version) {
    LK_REQUIRE(L->wt && L->part, "dwconv forward (eval): layer not planned with eval");
    LK_REQUIRE(y && x && w && b, "dwconv forward (eval): NULL argument");
    dwf_run(L, y, x, w, 0, b, NULL, LK_DW_ROW_SILU, version);
    if (pool)
        lk_dw_pool_finish(pool, L->part, L->cfg.n, L->oh, L->cfg.c, (int64_t)L->oh * L->ow);
    return LK_OK;
}

void lk_dwconv_fwd_free(lk_dwconv_fwd *L) {
    lk_free(L->ws);
    lk_free(L->part);
    lk_free(L->wt);
    lk_free(L->zero);
    lk_free(L->rowtmp);
    memset(L, 0, sizeof *L);
}

/* ========================================================== weight gradient */

enum {
    DW_VB = 16,       /* channels per vector block: two AVX2 vectors, one cache line */
    DW_GW = 64,       /* channels per work item */
    DW_MAX_TAPS = 32, /* widest and tallest kernel of the row kernels (wider: dw_wide) */
    DW_PAR_MIN = 1 << 15 /* below this many multiply-adds one thread is faster */
};

typedef struct dw_shape {
    int n, c, ih, iw, oh, ow, kh, kw, sh, sw, pt, pl;
    int lo, hi; /* output columns [lo, hi) see the whole kernel row inside the input */
} dw_shape;

static lk_dw_bwd_w_policy g_policy = LK_DW_BWD_W_AUTO;
void lk_dwconv_set_policy(lk_dw_bwd_w_policy p) { g_policy = p; }
lk_dw_bwd_w_policy lk_dwconv_get_policy(void) { return g_policy; }

/* Row sum of `w` (<= DW_VB) channels, portable C. acc [KW][DW_GW] (tap stride
 * DW_GW), xr [IW, C] and dyr [OW, C] already offset to the first channel. */
static void dw_row_c(float *restrict acc, const float *restrict xr, const float *restrict dyr,
                     const dw_shape *s, int w) {
    float r[DW_MAX_TAPS * DW_VB]; /* [KW][DW_VB] */
    const int C = s->c, kw = s->kw;
    memset(r, 0, sizeof(float) * (size_t)kw * DW_VB);
    for (int ox = 0; ox < s->ow; ox++) {
        const float *d = dyr + (ptrdiff_t)ox * C;
        for (int j = 0; j < kw; j++) {
            int ix = ox * s->sw - s->pl + j;
            if (ix < 0 || ix >= s->iw) continue;
            const float *xp = xr + (ptrdiff_t)ix * C;
            for (int k = 0; k < w; k++) r[j * DW_VB + k] += d[k] * xp[k];
        }
    }
    for (int j = 0; j < kw; j++)
        for (int k = 0; k < w; k++) acc[j * DW_GW + k] += r[j * DW_VB + k];
}

#ifdef LK_DW_X86
/* Row sum of 8*NV channels with KW taps held in 2*KW <= 14 registers. Columns
 * whose taps all lie inside the input skip the bounds test. */
static LK_DW_TARGET LK_DW_INLINE void dw_row_avx2(float *restrict acc, const float *restrict xr,
                                                   const float *restrict dyr, const dw_shape *s,
                                                   const int KW, const int NV) {
    const int C = s->c, sw = s->sw, pl = s->pl, iw = s->iw, ow = s->ow;
    __m256 a[7][2], d[2];
    for (int j = 0; j < KW; j++)
        for (int v = 0; v < NV; v++) a[j][v] = _mm256_setzero_ps();
    int lo = s->lo < ow ? s->lo : ow, hi = s->hi < ow ? s->hi : ow, ox = 0;
    if (hi < lo) hi = lo;
#define DW_EDGE_STEP                                                                   \
    do {                                                                               \
        for (int v = 0; v < NV; v++) d[v] = _mm256_loadu_ps(dyr + (ptrdiff_t)ox * C + 8 * v); \
        for (int j = 0; j < KW; j++) {                                                 \
            int ix = ox * sw - pl + j;                                                 \
            if (ix < 0 || ix >= iw) continue;                                          \
            const float *xp = xr + (ptrdiff_t)ix * C;                                  \
            for (int v = 0; v < NV; v++)                                               \
                a[j][v] = _mm256_fmadd_ps(d[v], _mm256_loadu_ps(xp + 8 * v), a[j][v]); \
        }                                                                              \
    } while (0)
    for (; ox < lo; ox++) DW_EDGE_STEP;
    for (; ox < hi; ox++) {
        const float *xp = xr + (ptrdiff_t)(ox * sw - pl) * C;
        for (int v = 0; v < NV; v++) d[v] = _mm256_loadu_ps(dyr + (ptrdiff_t)ox * C + 8 * v);
        for (int j = 0; j < KW; j++)
            for (int v = 0; v < NV; v++)
                a[j][v] = _mm256_fmadd_ps(d[v], _mm256_loadu_ps(xp + (ptrdiff_t)j * C + 8 * v),
                                          a[j][v]);
    }
    for (; ox < ow; ox++) DW_EDGE_STEP;
#undef DW_EDGE_STEP
    for (int j = 0; j < KW; j++)
        for (int v = 0; v < NV; v++) {
            float *p = acc + j * DW_GW + 8 * v;
            _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), a[j][v]));
        }
}

#define DW_ROW(K, V)                                                                          \
    static LK_DW_TARGET void dw_row_k##K##_v##V(float *restrict acc, const float *restrict xr, \
                                                const float *restrict dyr, const dw_shape *s) { \
        dw_row_avx2(acc, xr, dyr, s, K, V);                                                   \
    }
DW_ROW(3, 1)
DW_ROW(3, 2)
DW_ROW(5, 1)
DW_ROW(5, 2)
DW_ROW(7, 1)
DW_ROW(7, 2)
#undef DW_ROW

/* The AVX2 row sum with 16 channels per register: 16*NV channels, KW*NV <= 14
 * accumulators. */
static LK_DW_TARGET512 LK_DW_INLINE void dw_row_avx512(float *restrict acc,
                                                        const float *restrict xr,
                                                        const float *restrict dyr,
                                                        const dw_shape *s, const int KW,
                                                        const int NV) {
    const int C = s->c, sw = s->sw, pl = s->pl, iw = s->iw, ow = s->ow;
    __m512 a[7][2], d[2];
    for (int j = 0; j < KW; j++)
        for (int v = 0; v < NV; v++) a[j][v] = _mm512_setzero_ps();
    int lo = s->lo < ow ? s->lo : ow, hi = s->hi < ow ? s->hi : ow, ox = 0;
    if (hi < lo) hi = lo;
#define DW_EDGE_STEP                                                                   \
    do {                                                                               \
        for (int v = 0; v < NV; v++) d[v] = _mm512_loadu_ps(dyr + (ptrdiff_t)ox * C + 16 * v); \
        for (int j = 0; j < KW; j++) {                                                 \
            int ix = ox * sw - pl + j;                                                 \
            if (ix < 0 || ix >= iw) continue;                                          \
            const float *xp = xr + (ptrdiff_t)ix * C;                                  \
            for (int v = 0; v < NV; v++)                                               \
                a[j][v] = _mm512_fmadd_ps(d[v], _mm512_loadu_ps(xp + 16 * v), a[j][v]); \
        }                                                                              \
    } while (0)
    for (; ox < lo; ox++) DW_EDGE_STEP;
    for (; ox < hi; ox++) {
        const float *xp = xr + (ptrdiff_t)(ox * sw - pl) * C;
        for (int v = 0; v < NV; v++) d[v] = _mm512_loadu_ps(dyr + (ptrdiff_t)ox * C + 16 * v);
        for (int j = 0; j < KW; j++)
            for (int v = 0; v < NV; v++)
                a[j][v] = _mm512_fmadd_ps(d[v], _mm512_loadu_ps(xp + (ptrdiff_t)j * C + 16 * v),
                                          a[j][v]);
    }
    for (; ox < ow; ox++) DW_EDGE_STEP;
#undef DW_EDGE_STEP
    for (int j = 0; j < KW; j++)
        for (int v = 0; v < NV; v++) {
            float *p = acc + j * DW_GW + 16 * v;
            _mm512_storeu_ps(p, _mm512_add_ps(_mm512_loadu_ps(p), a[j][v]));
        }
}

#define DW_ROW512(K, V)                                                                  \
    static LK_DW_TARGET512 void dw_row512_k##K##_v##V(float *restrict acc,              \
                                                       const float *restrict xr,        \
                                                       const float *restrict dyr,       \
                                                       const dw_shape *s) {             \
        dw_row_avx512(acc, xr, dyr, s, K, V);                                            \
    }
DW_ROW512(3, 1)
DW_ROW512(3, 2)
DW_ROW512(5, 1)
DW_ROW512(5, 2)
DW_ROW512(7, 1)
DW_ROW512(7, 2)
#undef DW_ROW512
#endif /* LK_DW_X86 */

int lk_dwconv_bwd_weights_vectorised(int kw) {
#ifdef LK_DW_X86
    return lk_kernel_isa() >= LK_ISA_AVX2 && (kw == 3 || kw == 5 || kw == 7);
#else
    (void)kw;
    return 0;
#endif
}

typedef void (*dw_row_fn)(float *restrict, const float *restrict, const float *restrict,
                          const dw_shape *);
/* Row kernels for 32, 16 and 8 channels (NULL: not available). */
typedef struct dw_rows {
    dw_row_fn r32, r16, r8;
} dw_rows;

/* Row sums of one output row for channels [c0, c1) (c1 - c0 <= DW_GW) into the block's
 * accumulator acc [KH][KW][DW_GW]: every kernel row i whose input row xrow[i] exists. */
static void dw_block_row(float *restrict acc, const float *const *xrow,
                         const float *restrict dyr, const dw_shape *s, const dw_rows *rows,
                         int c0, int c1) {
    const int kw = s->kw;
    for (int i = 0; i < s->kh; i++) {
        const float *xr = xrow[i]; /* [IW, C], NULL where the input row is padding */
        if (!xr) continue;
        float *ar = acc + (ptrdiff_t)i * kw * DW_GW;
        for (int cc = c0; cc < c1;) {
            int w = c1 - cc;
            if (w >= 32 && rows->r32) {
                rows->r32(ar + (cc - c0), xr + cc, dyr + cc, s);
                w = 32;
            } else if (w >= 16 && rows->r16) {
                rows->r16(ar + (cc - c0), xr + cc, dyr + cc, s);
                w = 16;
            } else if (w >= 8 && rows->r8) {
                rows->r8(ar + (cc - c0), xr + cc, dyr + cc, s);
                w = 8;
            } else {
                if (w > DW_VB) w = DW_VB;
                dw_row_c(ar + (cc - c0), xr + cc, dyr + cc, s, w);
            }
            cc += w;
        }
    }
}

/* One chunk: output rows [r0, r1) of the N*OH, every channel, into its partial
 * part [nblk][KH][KW][DW_GW]. A chunk streams its slab of x and dy once, all
 * channels of a pixel together; the kernel rows re-read x from cache. With `in`, the
 * input rows are made from x into ring [KH][IW, C] as first needed: kernel row i of
 * output row oy reads input row iy, kept in slot iy % KH (the KH rows one output row
 * reads are consecutive, so never share a slot, and a row is made once per chunk). */
static void dw_chunk(float *restrict part, float *restrict ring, const float *restrict x,
                     const float *restrict dy, const dw_shape *s, const dw_rows *rows,
                     const lk_dw_input *in, int64_t r0, int64_t r1) {
    const int C = s->c, nblk = (C + DW_GW - 1) / DW_GW;
    const size_t per_blk = (size_t)s->kh * s->kw * DW_GW, row = (size_t)s->iw * C;
    int64_t tag[DW_MAX_TAPS]; /* the input row (b * IH + iy) held in each ring slot */
    for (int i = 0; i < s->kh; i++) tag[i] = -1;
    memset(part, 0, sizeof(float) * per_blk * (size_t)nblk);
    for (int64_t r = r0; r < r1; r++) {
        const int b = (int)(r / s->oh), oy = (int)(r % s->oh);
        const float *dyr = dy + r * s->ow * C; /* [OW, C] */
        const float *xrow[DW_MAX_TAPS] = {0};
        for (int i = 0; i < s->kh; i++) {
            const int iy = oy * s->sh - s->pt + i;
            if (iy < 0 || iy >= s->ih) continue;
            const int64_t g = (int64_t)b * s->ih + iy;
            if (!in) {
                xrow[i] = x + g * (int64_t)row;
                continue;
            }
            float *slot = ring + (size_t)(iy % s->kh) * row;
            if (tag[iy % s->kh] != g) {
                in->rows(slot, x + g * (int64_t)row, s->iw, in->ctx);
                tag[iy % s->kh] = g;
            }
            xrow[i] = slot;
        }
        for (int blk = 0; blk < nblk; blk++) {
            const int c0 = blk * DW_GW, c1 = c0 + DW_GW < C ? c0 + DW_GW : C;
            dw_block_row(part + per_blk * (size_t)blk, xrow, dyr, s, rows, c0, c1);
        }
    }
}

/* Kernels wider than DW_MAX_TAPS (never in EfficientNet): one tap at a time. */
static void dw_wide(float *restrict dw, const float *restrict x, const float *restrict dy,
                    const dw_shape *s) {
    const int C = s->c;
#pragma omp parallel for schedule(static)
    for (int ch = 0; ch < C; ch++)
        for (int i = 0; i < s->kh; i++)
            for (int j = 0; j < s->kw; j++) {
                float sum = 0.0f;
                for (int b = 0; b < s->n; b++)
                    for (int oy = 0; oy < s->oh; oy++) {
                        int iy = oy * s->sh - s->pt + i;
                        if (iy < 0 || iy >= s->ih) continue;
                        float r = 0.0f;
                        for (int ox = 0; ox < s->ow; ox++) {
                            int ix = ox * s->sw - s->pl + j;
                            if (ix < 0 || ix >= s->iw) continue;
                            r += dy[(((ptrdiff_t)b * s->oh + oy) * s->ow + ox) * C + ch] *
                                 x[(((ptrdiff_t)b * s->ih + iy) * s->iw + ix) * C + ch];
                        }
                        sum += r;
                    }
                dw[((ptrdiff_t)ch * s->kh + i) * s->kw + j] = sum;
            }
}

/* The N*OH output rows are cut into a number of chunks that depends on the shape
 * only (at most DW_CHUNKS, at least DW_CHUNK_ROWS rows each unless there are fewer),
 * so the result is the same for every thread count. Splitting by channel groups and
 * kernel rows instead (the previous scheme) re-read x and dy from memory once per
 * item: 2-3x the traffic of this memory-bound kernel. */
enum { DW_CHUNKS = 16, DW_CHUNK_ROWS = 4 };

static int64_t dw_nchunk(int n, int oh) {
    const int64_t rows = (int64_t)n * oh;
    int64_t k = rows / DW_CHUNK_ROWS;
    if (k > DW_CHUNKS) k = DW_CHUNKS;
    if (k < 2) k = rows < 2 ? rows : 2;
    return k;
}

/* Per chunk: the partials [nblk][KH][KW][DW_GW], then (rows_iw > 0) the ring. */
static size_t dw_chunk_floats(int c, int kh, int kw, int rows_iw) {
    return (size_t)((c + DW_GW - 1) / DW_GW) * (size_t)kh * (size_t)kw * DW_GW +
           (rows_iw > 0 ? (size_t)kh * (size_t)rows_iw * (size_t)c : 0);
}

size_t lk_dwconv_bwd_weights_ws(int n, int c, int oh, int kh, int kw, int rows_iw) {
    if (n <= 0 || c <= 0 || oh <= 0 || kh <= 0 || kw <= 0 || kw > DW_MAX_TAPS ||
        kh > DW_MAX_TAPS)
        return 0;
    return (size_t)dw_nchunk(n, oh) * dw_chunk_floats(c, kh, kw, rows_iw);
}

lk_status lk_dwconv_bwd_weights(float *dw, const float *x, const float *dy, int n, int c, int ih,
                                int iw, int oh, int ow, int kh, int kw, int sh, int sw, int pt,
                                int pl, float *ws, const lk_dw_input *in) {
    LK_REQUIRE(dw && x && dy, "dwconv bwd_w: NULL argument");
    LK_REQUIRE(n > 0 && c > 0 && ih > 0 && iw > 0 && oh > 0 && ow > 0,
               "dwconv bwd_w: sizes must be positive (n=%d c=%d ih=%d iw=%d oh=%d ow=%d)", n, c,
               ih, iw, oh, ow);
    LK_REQUIRE(kh > 0 && kw > 0 && sh > 0 && sw > 0 && pt >= 0 && pl >= 0,
               "dwconv bwd_w: kernel %dx%d, stride %dx%d, padding %d,%d out of range", kh, kw,
               sh, sw, pt, pl);
    dw_shape s = {.n = n, .c = c, .ih = ih, .iw = iw, .oh = oh, .ow = ow, .kh = kh, .kw = kw,
                  .sh = sh, .sw = sw, .pt = pt, .pl = pl};
    s.lo = (pl + sw - 1) / sw;
    s.hi = iw - kw + pl >= 0 ? (iw - kw + pl) / sw + 1 : 0;
    LK_REQUIRE(!in || in->rows, "dwconv bwd_w: an input transform needs its rows()");
    if (kw > DW_MAX_TAPS || kh > DW_MAX_TAPS) {
        LK_REQUIRE(!in, "dwconv bwd_w: no input transform for kernels larger than %dx%d",
                   DW_MAX_TAPS, DW_MAX_TAPS);
        dw_wide(dw, x, dy, &s);
        return LK_OK;
    }

    dw_rows rows = {0};
#ifdef LK_DW_X86
    if (lk_dwconv_bwd_weights_vectorised(kw) && lk_kernel_isa() == LK_ISA_AVX512) {
        if (kw == 3) rows = (dw_rows){dw_row512_k3_v2, dw_row512_k3_v1, dw_row_k3_v1};
        if (kw == 5) rows = (dw_rows){dw_row512_k5_v2, dw_row512_k5_v1, dw_row_k5_v1};
        if (kw == 7) rows = (dw_rows){dw_row512_k7_v2, dw_row512_k7_v1, dw_row_k7_v1};
    } else if (lk_dwconv_bwd_weights_vectorised(kw)) {
        if (kw == 3) rows = (dw_rows){NULL, dw_row_k3_v2, dw_row_k3_v1};
        if (kw == 5) rows = (dw_rows){NULL, dw_row_k5_v2, dw_row_k5_v1};
        if (kw == 7) rows = (dw_rows){NULL, dw_row_k7_v2, dw_row_k7_v1};
    }
#endif
    const size_t need = lk_dwconv_bwd_weights_ws(n, c, oh, kh, kw, in ? iw : 0);
    float *own = NULL;
    if (!ws) {
        ws = own = malloc(need * sizeof(float));
        if (!ws) return LK_FAIL(LK_ERR_NOMEM, "dwconv bwd_w: workspace of %zu floats", need);
    }
    const int64_t nrows = (int64_t)n * oh, nchunk = dw_nchunk(n, oh);
    const int nblk = (c + DW_GW - 1) / DW_GW;
    const size_t per_blk = (size_t)kh * kw * DW_GW, parts = per_blk * (size_t)nblk;
    const size_t per_chunk = dw_chunk_floats(c, kh, kw, in ? iw : 0);
    const double work = (double)n * oh * ow * c * kh * kw;
#pragma omp parallel if (work >= DW_PAR_MIN)
    {
#pragma omp for schedule(static)
        for (int64_t k = 0; k < nchunk; k++)
            dw_chunk(ws + per_chunk * (size_t)k, ws + per_chunk * (size_t)k + parts, x, dy, &s,
                     &rows, in, nrows * k / nchunk, nrows * (k + 1) / nchunk);
        /* dw [C, KH, KW]: the chunks' partials added in chunk order. */
#pragma omp for schedule(static)
        for (int ch = 0; ch < c; ch++) {
            const size_t off = per_blk * (size_t)(ch / DW_GW) + (size_t)(ch % DW_GW);
            for (int t = 0; t < kh * kw; t++) {
                float sum = 0.0f;
                for (int64_t k = 0; k < nchunk; k++)
                    sum += ws[per_chunk * (size_t)k + off + (size_t)t * DW_GW];
                dw[(ptrdiff_t)ch * kh * kw + t] = sum;
            }
        }
    }
    free(own);
    return LK_OK;
}

/* db[c0 .. c0 + w) = sum over rows of dy [rows, OW, C] (w <= DW_GW). */
LK_ALWAYS_INLINE void dw_bias_block_body(float *db, const float *dy, ptrdiff_t rows, int ow, int c,
                                         int c0, int w) {
    float acc[DW_GW] = {0}, r[DW_GW];
    for (ptrdiff_t y = 0; y < rows; y++) {
        const float *d = dy + y * ow * c + c0; /* [OW, C] */
        memset(r, 0, sizeof r);
        for (int ox = 0; ox < ow; ox++)
            for (int k = 0; k < w; k++) r[k] += d[(ptrdiff_t)ox * c + k];
        for (int k = 0; k < w; k++) acc[k] += r[k];
    }
    memcpy(db + c0, acc, sizeof(float) * (size_t)w);
}
LK_KERNEL_CLONES(dw_bias_block,
                 (float *db, const float *dy, ptrdiff_t rows, int ow, int c, int c0, int w),
                 (db, dy, rows, ow, c, c0, w))

lk_status lk_dwconv_bwd_bias(float *db, const float *dy, int n, int c, int oh, int ow) {
    LK_REQUIRE(db && dy, "dwconv bwd_b: NULL argument");
    LK_REQUIRE(n > 0 && c > 0 && oh > 0 && ow > 0, "dwconv bwd_b: sizes must be positive");
    const int nblk = (c + DW_GW - 1) / DW_GW;
    const ptrdiff_t rows = (ptrdiff_t)n * oh;
    void (*block)(float *, const float *, ptrdiff_t, int, int, int, int) =
        LK_KERNEL_PICK(dw_bias_block);
#pragma omp parallel for schedule(static) if ((double)rows * ow * c >= DW_PAR_MIN && nblk > 1)
    for (int blk = 0; blk < nblk; blk++) {
        int c0 = blk * DW_GW, w = c0 + DW_GW < c ? DW_GW : c - c0;
        block(db, dy, rows, ow, c, c0, w);
    }
    return LK_OK;
}
