/* Depthwise convolution backward-weights (and bias) for NHWC activations.
 *
 * oneDNN v3.2 runs depthwise 5x5 weight gradients through its generic grouped
 * JIT (jit_dw takes only 3-wide kernels on AVX2), the slowest primitive of a
 * training step. Here channels are contiguous, so the kernel vectorises over
 * channels: the N*OH output rows are cut into chunks, and for each row of a chunk,
 * each block of up to 64 channels and each kernel row it sums
 * dy[n, oy, ox, c] * x[n, iy, ix, c] over ox in registers (one AVX2 accumulator
 * per tap and 8 channels; AVX-512: 16 channels), then adds that row sum to the
 * chunk's partial dw. The chunks' partials are added at the end. A chunk reads
 * its slab of x and dy from memory once. The instruction set is chosen at run
 * time (lk_cpu.h).
 *
 * Determinism: the chunks depend only on the shape, each chunk sums its rows in
 * order and the partials are added in chunk order; which code path (32, 16, 8 or
 * scalar channels) serves a channel depends only on C and the instruction set,
 * and the vector paths all add the same fused products per lane. So results are
 * identical for every thread count (and the same bits with AVX2 or AVX-512; plain
 * C rounds each product).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lk_cpu.h"
#include "lk_dwconv.h"

#ifdef LK_X86
#include <immintrin.h>
#define LK_DW_X86 1
#define LK_DW_TARGET LK_TARGET_AVX2
#define LK_DW_TARGET512 LK_TARGET_AVX512
#define LK_DW_INLINE __attribute__((always_inline)) inline
#endif

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
