/* Hand-written depthwise convolution kernels for NHWC activations (dwconv.c), used by
 * conv2d.c where oneDNN v3.2 is slow: its AVX2 depthwise backward-weights JIT (jit_dw)
 * rejects kernels wider than 3, so 5x5 layers get the generic grouped-convolution JIT
 * instead, and its NHWC depthwise forward (brdgmm_dw) is bound by neither memory nor
 * arithmetic on AVX2 (lk_dwconv_fwd says how far). The forward's row kernels also
 * serve the fused expansion + depthwise (expand_dw.c).
 */
#ifndef LK_DWCONV_H
#define LK_DWCONV_H

#include <stddef.h>
#include <stdint.h>

#include "lk_status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* An input made row by row from another tensor: rows(y, x, npix, ctx) writes y [npix, C]
 * from x [npix, C] (one image row at a time, on the calling thread, the same bits every
 * call). Used to recompute a BatchNorm+SiLU output on the fly instead of keeping it. */
typedef struct lk_dw_input {
    void (*rows)(float *y, const float *x, int64_t npix, const void *ctx);
    const void *ctx;
} lk_dw_input;

/* ------------------------------------------------------------------ forward */
/* One output row y [OW, C] of a depthwise KxK convolution, stride s, left padding p, from
 * its K input rows rows[i] (each [IW, C]; a row of zeros stands for the padding), the
 * tap-major weights w [K * K, C] and the bias b [C]. LK_DW_ROW_SILU applies SiLU (the
 * inference form, lk_silu_simd.h) and adds the row's outputs to sum [C] in pixel order
 * (sum may be NULL); LK_DW_ROW_PLAIN stores the sums as they are and ignores sum. */
typedef void (*lk_dw_row_fn)(float *y, float *sum, const float *const *rows, const float *w,
                             const float *b, int ow, int iw, int c, int s, int p);
typedef enum lk_dw_row_act { LK_DW_ROW_PLAIN = 0, LK_DW_ROW_SILU } lk_dw_row_act;

/* The vector row kernel for K on the kernel path in force; NULL where there is none
 * (plain C, or K other than 3 and 5): then lk_dw_row_c, which applies no activation. */
lk_dw_row_fn lk_dw_row_pick(int k, lk_dw_row_act act);
void lk_dw_row_c(float *y, const float *const *rows, const float *w, const float *b, int ow,
                 int iw, int c, int k, int s, int p);
/* One output row by `rowk` (from lk_dw_row_pick(k, act)) or, where it is NULL, by
 * lk_dw_row_c followed by the SiLU and the sums as passes (act LK_DW_ROW_SILU). With
 * LK_DW_ROW_SILU, sum [C] (may be NULL) is overwritten with this row's channel sums. */
void lk_dw_row_run(lk_dw_row_fn rowk, float *y, float *sum, const float *const *rows,
                   const float *w, const float *b, int ow, int iw, int c, int k, int s, int p,
                   lk_dw_row_act act);
/* wt [K * K, C] = w [C, 1, K, K] tap-major, the row kernels' vector direction (the
 * kernel turned by 180 degrees when `rotate`). */
void lk_dw_taps(float *wt, const float *w, int c, int k, int rotate);
/* pool [N, C] = the sum over output rows (in order) of part [N, nrow, C], over npix. */
void lk_dw_pool_finish(float *pool, const float *part, int n, int nrow, int c, int64_t npix);

/* The geometry both row-making depthwise paths share (lk_dwconv_fwd, the fused expansion
 * + depthwise of expand_dw.c): odd K <= 15, stride 1 or 2 and positive sizes checked
 * (messages start with `who`), padding (K - 1) / 2, the output size, and the row bands
 * per image for `team` threads: 1 when every thread gets an image, else about two per
 * thread of at least 8 output rows (a band remakes its halo rows), or 2 rows where
 * `cheap_halo` (the halo rows are only copied). */
typedef struct lk_dw_geom {
    int pad, oh, ow, nband;
} lk_dw_geom;
lk_status lk_dw_geometry(lk_dw_geom *g, const char *who, int n, int c, int ih, int iw, int k,
                         int stride, int team, int cheap_halo);

/* y [N, OH, OW, C] = the depthwise convolution of x [N, IH, IW, C] with w [C, 1, K, K]
 * (PyTorch's layout), odd K, stride 1 or 2, padding (K - 1) / 2 on every side, no bias:
 * the training forward, and at stride 1 with the kernel rotated by 180 degrees its
 * input gradient. Each output is the sum over the taps in row-major order (of the
 * rotated kernel when rotated), the same for every thread count. */
typedef struct lk_dwconv_fwd_cfg {
    int n, c, ih, iw, k, stride;
    int in_rows; /* plan a ring of input rows for an `in` transform */
    int eval;    /* plan lk_dwconv_forward_eval (bias, SiLU, the pool's sums) */
} lk_dwconv_fwd_cfg;

typedef struct lk_dwconv_fwd {
    lk_dwconv_fwd_cfg cfg;
    int oh, ow, pad;
    int team;         /* threads the rings were made for */
    int nband;        /* row bands per image (images < threads) */
    size_t ring;      /* floats of one thread's ring: K rows [IW + 2 pad, C], or blocked
                         [NB, IW + 2 pad, 8] */
    float *ws;        /* [team, ring]: the input rows (copied, or made by `in`) with zero
                         padding columns, so that every output pixel takes all K x K taps
                         (clipped taps ran one FMA chain per pixel, 4-7x a pixel of the
                         four-chain interior, and dominated small maps) */
    float *wt;        /* [K * K, C] the weights tap-major, or (blocked) [NB, K * K, 8] with
                         NB = C / 8 rounded up: per call, or (eval) per version */
    uint64_t wt_version; /* eval: the version wt was made at (0: none) */
    const float *wt_src; /* and from which array */
    float *zero;      /* [(IW + 2 pad) * C] zeros: the padding rows and the (absent) bias */
    float *part;      /* eval: [N, OH, C] each output row's channel sums */
    int blocked;      /* the ring blocked by 8 channels (lk_dwf_layout, dwconv.c) */
    int64_t bs;       /* blocked: floats of one channel block of a ring row, (IW + 2 pad) 8 */
    float *rowtmp;    /* blocked with in_rows: [team, IW * C] a row made by `in` */
} lk_dwconv_fwd;

/* The ring's layout that lk_dwconv_fwd_init plans: AUTO blocks it by 8 channels where
 * that is faster (AVX2, 5x5: dwconv.c), NHWC keeps [IW + 2 pad, C] rows everywhere (for
 * tests and benchmarks). Read at planning only (not thread-safe). */
typedef enum lk_dwf_layout { LK_DWF_LAYOUT_AUTO = 0, LK_DWF_LAYOUT_NHWC } lk_dwf_layout;
void lk_dwconv_set_fwd_layout(lk_dwf_layout l);
lk_dwf_layout lk_dwconv_get_fwd_layout(void);

lk_status lk_dwconv_fwd_init(lk_dwconv_fwd *L, const lk_dwconv_fwd_cfg *cfg);
/* Whether lk_dwconv_fwd has a vector kernel for K on the path in force (otherwise it
 * runs lk_dw_row_c: correct, not faster than oneDNN). */
int lk_dwconv_fwd_vectorised(int k);
/* `rotate`: use w turned by 180 degrees (stride 1 only). `in` (planned with in_rows):
 * x is what in->rows turns into the input, row by row, into a ring that stays in
 * cache, so the input itself never reaches memory; NULL: x is the input. */
lk_status lk_dwconv_forward(lk_dwconv_fwd *L, float *y, const float *x, const float *w, int rotate,
                            const lk_dw_input *in);
/* The inference form (planned with eval): y = silu(depthwise(x, w) + b), b [C] the folded
 * BatchNorm's shift, the SiLU with the refined reciprocal (lk_silu_simd.h), applied in
 * registers as each row is made; pool [N, C] (may be NULL) = the mean of y over each
 * image's pixels, the squeeze-and-excitation's average pool, summed while y's rows are
 * in cache (each row in pixel order, then the rows in order: thread-count independent).
 * The weights' tap-major copy is kept while `version` (0: unknown) and w stay the same. */
lk_status lk_dwconv_forward_eval(lk_dwconv_fwd *L, float *y, float *pool, const float *x,
                                 const float *w, const float *b, uint64_t version);
void lk_dwconv_fwd_free(lk_dwconv_fwd *L);

/* ---------------------------------------------------------- weight gradient */
/* dw [C, 1, KH, KW] (PyTorch layout, overwritten) =
 *   sum over n, oy, ox of dy [N, OH, OW, C] * x [N, IH, IW, C] at
 *   (oy*sh - pt + i, ox*sw - pl + j), zero outside the input.
 * Each output element is summed in a fixed order that depends only on the
 * shapes, so the result is the same for every thread count.
 * `in` NULL: x is the input; otherwise x is what in->rows turns into the input. */
lk_status lk_dwconv_bwd_weights(float *dw, const float *x, const float *dy, int n, int c, int ih,
                                int iw, int oh, int ow, int kh, int kw, int sh, int sw, int pt,
                                int pl, float *ws, const lk_dw_input *in);

/* Floats of the workspace `ws` that lk_dwconv_bwd_weights needs for these sizes (the
 * row chunks' partial sums, and with `rows_iw` > 0 a ring of KH input rows of that
 * width per chunk for an `in` transform); ws = NULL makes it allocate one per call. */
size_t lk_dwconv_bwd_weights_ws(int n, int c, int oh, int kh, int kw, int rows_iw);

/* Whether kernels `kw` wide run the AVX2/FMA path on this CPU (otherwise a
 * portable C loop, correct but not faster than oneDNN). */
int lk_dwconv_bwd_weights_vectorised(int kw);

/* db [C] (overwritten) = sum over n, oy, ox of dy [N, OH, OW, C]; thread-count
 * independent like the weight gradient. */
lk_status lk_dwconv_bwd_bias(float *db, const float *dy, int n, int c, int oh, int ow);

/* Which weight-gradient kernel conv2d plans for depthwise layers. AUTO picks
 * per shape (see conv2d.c); the others force one, for tests and benchmarks.
 * Read by lk_conv2d_init only, so set it before planning (not thread-safe). */
typedef enum lk_dw_bwd_w_policy {
    LK_DW_BWD_W_AUTO = 0,
    LK_DW_BWD_W_ONEDNN,
    LK_DW_BWD_W_CUSTOM
} lk_dw_bwd_w_policy;
void lk_dwconv_set_policy(lk_dw_bwd_w_policy p);
lk_dw_bwd_w_policy lk_dwconv_get_policy(void);

#ifdef __cplusplus
}
#endif

#endif /* LK_DWCONV_H */
