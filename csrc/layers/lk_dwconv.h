/* Hand-written depthwise convolution kernels for NHWC activations, used by
 * conv2d.c where oneDNN v3.2 falls back to a slow path: its AVX2 depthwise
 * backward-weights JIT (jit_dw) rejects kernels wider than 3, so 5x5 layers
 * get the generic grouped-convolution JIT instead.
 */
#ifndef LK_DWCONV_H
#define LK_DWCONV_H

#include <stddef.h>
#include <stdint.h>

#include "lk_status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* dw [C, 1, KH, KW] (PyTorch layout, overwritten) =
 *   sum over n, oy, ox of dy [N, OH, OW, C] * x [N, IH, IW, C] at
 *   (oy*sh - pt + i, ox*sw - pl + j), zero outside the input.
 * Each output element is summed in a fixed order that depends only on the
 * shapes, so the result is the same for every thread count. */
/* The weight gradient's input made row by row from another tensor: rows(y, x, npix, ctx)
 * writes y [npix, C] from x [npix, C] (one image row at a time, on the calling thread,
 * the same bits every call). Used to recompute a BatchNorm+SiLU output on the fly
 * instead of keeping it. */
typedef struct lk_dw_input {
    void (*rows)(float *y, const float *x, int64_t npix, const void *ctx);
    const void *ctx;
} lk_dw_input;

/* `in` NULL: x is the input; otherwise x is what in->rows turns into the input. */
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
