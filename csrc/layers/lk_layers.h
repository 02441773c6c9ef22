/* The layer library: one struct per layer kind, planned once for fixed sizes.
 *
 * Conventions (see csrc/core/lk_dnnl.h):
 *  - activations are NHWC float32; vectors are [N, C]; parameters keep
 *    PyTorch's layout (conv [OC, IC/G, KH, KW], linear [OUT, IN]);
 *  - argument order follows llm.c: outputs, then saved state, then inputs and
 *    parameters; backward mirrors forward;
 *  - backward functions OVERWRITE their gradient outputs (no accumulation);
 *    a NULL gradient output skips that gradient;
 *  - `_init` fills a zeroed struct; on failure the caller still calls `_free`,
 *    which accepts partially built and zeroed structs;
 *  - every buffer a call needs is planned at `_init` (no allocation in forward or
 *    backward), so a layer object serves one thread at a time.
 * Each layer's forward and backward live in one file: csrc/layers/<layer>.c.
 */
#ifndef LK_LAYERS_H
#define LK_LAYERS_H

#include <stdint.h>

#include "lk_arena.h"
#include "lk_dnnl.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------ conv2d_stem.c */
/* A dense KxK convolution with few input channels (the stem), forward only, NHWC:
 * y [N, OH, OW, OC] = conv(x [N, IH, IW, IC], w [OC, IC, K, K]) + b, SiLU when `silu`. */
typedef struct lk_stem_cfg {
    int n, ic, ih, iw, oc, k, s; /* square kernel and stride */
    int pt, pl, pb, pr;          /* padding */
    int silu;                    /* apply SiLU (inference form) to the output */
} lk_stem_cfg;

typedef struct lk_stem {
    lk_stem_cfg cfg;
    int oh, ow;
    int iwp;            /* columns of a padded input row: (OW - 1) S + K */
    int team;           /* threads the row buffers were made for */
    float *rows;        /* [team, K, IWP, IC] the input rows with zero padding columns */
    float *zero;        /* [IWP, IC] zeros: the padding rows */
    float *wp;          /* [K, K, IC, OC] the weights, each tap's output channels together */
    uint64_t w_version; /* the version wp was laid out at (0: none) */
    const float *w_src; /* and from which array */
} lk_stem;

/* Whether lk_stem has a kernel for this convolution on the path in force (AVX2; IC <= 4,
 * OC a multiple of 8 from 16 to 48, K <= 7, stride 1 or 2, no groups). */
int lk_stem_supported(int ic, int oc, int kh, int kw, int sh, int sw, int groups);
lk_status lk_stem_init(lk_stem *L, const lk_stem_cfg *cfg);
/* b [OC] may be NULL; w is laid out again unless `version` (0: unknown) and w are those
 * of the last call. */
lk_status lk_stem_forward(lk_stem *L, float *y, const float *x, const float *w, const float *b,
                          uint64_t version);
void lk_stem_free(lk_stem *L);

/* ------------------------------------------------------- conv2d_winograd.c */
/* The forward of a dense 3x3 convolution, stride 1, padding 1, NHWC, by Winograd's
 * F(4x4, 3x3) (conv2d_winograd.c): a quarter of the direct sum's multiplications. */
typedef struct lk_wino_cfg {
    int n, h, w, ic, oc; /* x [N, H, W, IC] -> y [N, H, W, OC]; OC a multiple of 8 */
    int silu;            /* apply SiLU to the output (after the bias) */
    int grad_w;          /* also plan the weight gradient (lk_wino_backward_w) */
    lk_scratch *scratch; /* where the workspace lives (shared by a plan), NULL: its own */
} lk_wino_cfg;

typedef struct lk_wino {
    lk_wino_cfg cfg;
    int64_t tiles;  /* 4x4 output tiles: N * ceil(H / 4) * ceil(W / 4) */
    int t;          /* tiles per block (a multiple of 24: every path's micro-tile) */
    int team;       /* threads the workspaces were made for */
    size_t vs, ms, qs; /* floats from one of the 36 planes of V (M, Q) to the next */
    size_t per;     /* workspace floats per thread */
    float *u;       /* [36, IC, OC] transformed weights (lk_wino_set_weights) */
    float *ws;      /* [team] V [36, vs] (input transforms), then M [36, ms] (products):
                       its own, or cfg.scratch->base at each call */
    float *zero;    /* [max(IC, OC) + 16] zeros: the padding */
} lk_wino;

/* Whether a convolution of this shape can run through lk_wino. */
int lk_wino_supported(int kh, int kw, int sh, int sw, int pt, int pl, int pb, int pr, int groups,
                      int oc);
lk_status lk_wino_init(lk_wino *L, const lk_wino_cfg *cfg);
/* Transform the weights w [OC, IC, 3, 3]; kept until the next call. */
void lk_wino_set_weights(lk_wino *L, const float *w);
/* The same for the input gradient of a convolution whose weights are w [IC, OC, 3, 3]
 * (this layer's channels swapped): each kernel transposed and turned by 180 degrees,
 * so that lk_wino_forward(dy) is that convolution's dx. */
void lk_wino_set_weights_rotated(lk_wino *L, const float *w);
/* y = conv(x, w) + b (b [OC] or NULL), then SiLU if configured, then + add [N, H, W, OC]
 * (a residual, or NULL; it may not alias y). */
lk_status lk_wino_forward(lk_wino *L, float *y, const float *x, const float *b,
                          const float *add);
/* dw [OC, IC, 3, 3] of y = conv(x, w) from dy [N, H, W, OC] (planned with grad_w). */
lk_status lk_wino_backward_w(lk_wino *L, float *dw, const float *x, const float *dy);
void lk_wino_free(lk_wino *L);

/* ---------------------------------------------------------------- conv2d.c */
typedef struct lk_conv2d_cfg {
    int n, ic, ih, iw;      /* input [N, IH, IW, IC] */
    int oc, kh, kw;         /* weights [OC, IC/groups, KH, KW] */
    int sh, sw;             /* strides */
    int pt, pl, pb, pr;     /* padding top, left, bottom, right */
    int groups;             /* 1 .. IC; IC == OC == groups is depthwise */
    int bias;               /* has a bias [OC] */
    int train;              /* plan backward primitives */
    int need_dx;            /* (train) compute the input gradient */
    int no_dw;              /* (train) no weight gradient: a frozen layer passing dx on */
    int post_silu;          /* (inference) apply SiLU to the output as a fused post-op */
    int post_add;           /* (inference) add a tensor of the output's shape last (a
                               residual; lk_conv2d_forward_add) as a fused post-op */
    int in_rows;            /* (train) plan for lk_conv2d_backward_w_rows (input made on demand) */
    int gated_in;           /* (train, plain 1x1) plan for lk_conv2d_backward_w_gated */
    lk_scratch *scratch;    /* a plan's shared workspace for the Winograd paths, or NULL */
} lk_conv2d_cfg;

typedef struct lk_conv2d {
    lk_conv2d_cfg cfg;
    int oh, ow;
    lk_prim fwd, bwd_d, bwd_w;
    lk_prim w_to_fwd, w_to_bwd_d, dw_to_user; /* weight reorders (may be unused) */
    int need_w_fwd, need_w_bwd_d, need_dw_user;
    float *w_fwd, *w_bwd_d, *dw_int;          /* internal weight layouts */
    dnnl_memory_t m_x, m_y, m_w_user, m_w_fwd, m_b, m_dx, m_dy, m_w_bwd_d, m_dw_int, m_dw_user, m_db;
    dnnl_memory_t m_add;    /* post_add: the addend, as the binary post-op's source */
    const float *w_cached;  /* eval: weights already reordered for this pointer */
    uint64_t w_cached_version;
    int dw_custom;          /* depthwise weight gradient by lk_dwconv_bwd_weights (no bwd_w) */
    float *dw_ws;           /* its workspace (lk_dwconv_bwd_weights_ws floats) */
    int dw_gemm;            /* dense weight gradient on dnnl_sgemm (no bwd_w), see conv2d.c */
    int gemm_threads;       /* team size the workspace was planned for */
    int64_t gemm_rows;      /* output positions per im2col chunk (0: plain 1x1, no im2col) */
    float *gemm_ws;         /* [gemm_threads, gemm_rows * KK + OC * KK], KK = KH*KW*IC:
                               each thread's im2col chunk, then its partial dW [OC, KH, KW, IC] */
    int dx_flipped;         /* depthwise stride 1: dx by the forward (no bwd_d) */
    int dwf;                /* depthwise: the forward (train: and a flipped dx; eval: with
                               the bias and SiLU) by dwfwd */
    struct lk_dwconv_fwd *dwfwd; /* our depthwise forward (lk_dwconv.h), when dwf */
    float *w_flip;          /* [OC, 1, KH, KW] the kernel rotated by 180 degrees */
    float *w_flip_fwd;      /* w_flip in the forward's layout (when it differs) */
    float *zero_bias;       /* [OC] zeros, when the forward primitive takes a bias */
    dnnl_memory_t m_w_flip; /* w_flip_fwd (or w_flip) as the forward's weights */
    int wino;               /* the forward runs through lk_wino (the primitive stays for
                               the backward's hint and for lk_conv2d_forward_laid; w_fwd
                               is not allocated) */
    lk_wino wg;
    int stem;               /* the forward runs through lk_stem (the primitive stays for
                               the backward and as the plan's reference) */
    lk_stem st;
    const float *wg_w;      /* weights wg holds transformed, at version wg_version */
    uint64_t wg_version;
    int wino_dx;            /* (train) the input gradient by lk_wino too (no bwd_d) */
    int wino_dw;            /* (train) the weight gradient by lk_wino_backward_w */
    lk_wino wg_dx;          /* dx = conv(dy) with the kernels transposed and rotated */
} lk_conv2d;

/* Which weight-gradient path conv2d plans for dense (groups == 1) layers. AUTO picks
 * per shape (see conv2d.c); the others force one, for tests and benchmarks. Read by
 * lk_conv2d_init only, so set it before planning (not thread-safe). */
typedef enum lk_conv_bwd_w_policy {
    LK_CONV_BWD_W_AUTO = 0,
    LK_CONV_BWD_W_ONEDNN,
    LK_CONV_BWD_W_GEMM
} lk_conv_bwd_w_policy;
void lk_conv2d_set_bwd_w_policy(lk_conv_bwd_w_policy p);
lk_conv_bwd_w_policy lk_conv2d_get_bwd_w_policy(void);

/* How conv2d plans a depthwise stride-1 input gradient: AUTO runs it as a forward
 * convolution with the kernel rotated by 180 degrees (conv2d.c says why), ONEDNN keeps
 * oneDNN's backward-data primitive. For tests and benchmarks; read by lk_conv2d_init. */
typedef enum lk_conv_dx_policy { LK_CONV_DX_AUTO = 0, LK_CONV_DX_ONEDNN } lk_conv_dx_policy;
void lk_conv2d_set_dx_policy(lk_conv_dx_policy p);
lk_conv_dx_policy lk_conv2d_get_dx_policy(void);

/* Which forward conv2d plans for depthwise layers: in training (and for their stride-1
 * input gradient, a forward with the kernel rotated; no bias, no post-op) and at
 * inference (bias and SiLU post-op). AUTO picks per shape and kernel path (conv2d.c
 * says where ours was measured faster), ONEDNN keeps the primitive, OURS takes
 * lk_dwconv_fwd wherever it applies (odd K, stride 1 or 2, centred padding). For tests
 * and benchmarks; read by lk_conv2d_init. */
typedef enum lk_conv_dwf_policy {
    LK_CONV_DWF_AUTO = 0,
    LK_CONV_DWF_ONEDNN,
    LK_CONV_DWF_OURS
} lk_conv_dwf_policy;
void lk_conv2d_set_dwf_policy(lk_conv_dwf_policy p);
lk_conv_dwf_policy lk_conv2d_get_dwf_policy(void);

/* How conv2d plans the 3x3 stride-1 layers lk_wino supports (forward, and in training
 * both gradients): AUTO uses Winograd where it was measured faster (conv2d.c), NEVER
 * keeps the direct paths, ALWAYS takes Winograd wherever it is supported. For tests and benchmarks;
 * read by lk_conv2d_init. */
typedef enum lk_conv_wino_policy {
    LK_CONV_WINO_AUTO = 0,
    LK_CONV_WINO_NEVER,
    LK_CONV_WINO_ALWAYS
} lk_conv_wino_policy;
/* Whether conv2d plans our stem kernel (lk_stem) where it has one (AUTO) or never.
 * Read by lk_conv2d_init only (not thread-safe). */
typedef enum lk_conv_stem_policy { LK_CONV_STEM_AUTO = 0, LK_CONV_STEM_NEVER } lk_conv_stem_policy;
void lk_conv2d_set_stem_policy(lk_conv_stem_policy p);
lk_conv_stem_policy lk_conv2d_get_stem_policy(void);
void lk_conv2d_set_wino_policy(lk_conv_wino_policy p);
lk_conv_wino_policy lk_conv2d_get_wino_policy(void);

lk_status lk_conv2d_init(lk_conv2d *L, const lk_conv2d_cfg *cfg);
/* y [N, OH, OW, OC] = conv(x [N, IH, IW, IC], w, b [OC] or NULL). `w_version`
 * lets eval-mode callers skip the weight reorder when weights are unchanged
 * (pass 0 to always reorder). */
lk_status lk_conv2d_forward(lk_conv2d *L, float *y, const float *x, const float *w, const float *b,
                            uint64_t w_version);
/* The same, then y += add [N, OH, OW, OC] (after the SiLU, if any): planned with
 * post_add, where add must be given (and may not alias y). */
lk_status lk_conv2d_forward_add(lk_conv2d *L, float *y, const float *x, const float *w,
                                const float *b, uint64_t w_version, const float *add);
/* Floats of the weights in the forward primitive's own layout (blocked, maybe padded
 * with zeros), lk_conv2d_fwd_weights writes w [OC, IC/G, KH, KW] there, and
 * lk_conv2d_forward_laid runs the forward on weights already in it: for callers that
 * derive many weight sets from one (one reorder instead of one per set). */
size_t lk_conv2d_fwd_weights_floats(const lk_conv2d *L);
lk_status lk_conv2d_fwd_weights(lk_conv2d *L, float *dst, const float *w);
lk_status lk_conv2d_forward_laid(lk_conv2d *L, float *y, const float *x, const float *w_laid,
                                 const float *b, const float *add); /* add: as _forward_add */
/* dx [N, IH, IW, IC], dw [OC, IC/G, KH, KW], db [OC] from dy [N, OH, OW, OC]. */
lk_status lk_conv2d_backward(lk_conv2d *L, float *dx, float *dw, float *db, const float *dy,
                             const float *x, const float *w);
/* Whether the weight gradient can take its input as rows made on demand: planned with
 * cfg.in_rows and on our depthwise kernel (otherwise the caller makes x beforehand). */
int lk_conv2d_takes_rows(const lk_conv2d *L);
/* dw (and db) alone, with the input x turned row by row into the layer's input by `in`
 * (lk_dwconv.h): the input need not be kept. Requires lk_conv2d_takes_rows. */
/* dw [OC, IC] alone for a plain 1x1 layer planned with cfg.gated_in whose input is
 * x [N, H, W, IC] scaled per image and channel by gate [N, IC] (a squeeze-and-
 * excitation's output, never written out): the gated rows are made in chunks that
 * stay in cache, each thread's sgemm sums its chunks, the partials are added in thread
 * order. */
lk_status lk_conv2d_backward_w_gated(lk_conv2d *L, float *dw, const float *dy, const float *x,
                                     const float *gate);
struct lk_dw_input;
/* Whether the forward can take its input as rows made on demand: planned with
 * cfg.in_rows and on our depthwise forward (lk_conv2d_set_dwf_policy). */
int lk_conv2d_forward_takes_rows(const lk_conv2d *L);
/* y = the forward of the input that `in` makes from x row by row (lk_dwconv.h): the
 * input is never written. Requires lk_conv2d_forward_takes_rows. */
lk_status lk_conv2d_forward_rows(lk_conv2d *L, float *y, const float *x, const float *w,
                                 const struct lk_dw_input *in);
lk_status lk_conv2d_backward_w_rows(lk_conv2d *L, float *dw, float *db, const float *dy,
                                    const float *x, const struct lk_dw_input *in);
/* Whether the inference forward also gives each image's channel means of its output (a
 * depthwise layer with bias and SiLU on our kernel): lk_conv2d_forward_pool. */
int lk_conv2d_forward_pools(const lk_conv2d *L);
/* The forward, and pool [N, OC] = the mean of y over each image's pixels, summed while
 * y's rows are in cache (the pool a squeeze-and-excitation after it wants). Requires
 * lk_conv2d_forward_pools. w_version as for lk_conv2d_forward. */
lk_status lk_conv2d_forward_pool(lk_conv2d *L, float *y, float *pool, const float *x,
                                 const float *w, const float *b, uint64_t w_version);
void lk_conv2d_free(lk_conv2d *L);

/* ------------------------------------------------------------- expand_dw.c */
/* An MBConv expansion (1x1, bias, SiLU) fused with the depthwise convolution (KxK,
 * stride 1 or 2, centred padding, bias, SiLU) that reads it, for inference: the
 * expanded tensor lives only in a per-thread ring of rows in cache (expand_dw.c). */
typedef struct lk_expdw_cfg {
    int n, ic, ih, iw; /* input [N, IH, IW, IC] */
    int ec;            /* expanded channels (the depthwise layer's groups) */
    int k, stride;     /* depthwise kernel (odd, <= 15) and stride (1 or 2) */
} lk_expdw_cfg;

typedef struct lk_expdw {
    lk_expdw_cfg cfg;
    int oh, ow, pad;
    int g;            /* expanded rows per sgemm call */
    int nslot;        /* ring slots of g rows each */
    int team;         /* threads the rings were made for */
    int nband;        /* tasks per image (bands of output rows) */
    size_t ws_floats; /* one ring: [nslot * g, IW, EC] */
    float *ws;        /* [team] rings */
    float *wt;        /* [K * K, EC] depthwise weights, tap-major */
    float *w1t;       /* [IC, EC] expansion weights, transposed (the x86 kernels) */
    uint64_t w_version; /* the version wt and w1t were made at (0: none) */
    const float *w1_src, *wd_src; /* and from which arrays */
    float *part;      /* [N, OH, EC] per-row channel sums of the output */
    float *zrow;      /* [IW, EC] zeros: the rows of the padding */
} lk_expdw;

lk_status lk_expdw_init(lk_expdw *L, const lk_expdw_cfg *cfg);
/* y [N, OH, OW, EC] = silu(dw(silu(x w1^T + b1), wd) + bd) with w1 [EC, IC] (a 1x1
 * weight), b1 [EC], wd [EC, 1, K, K], bd [EC]; pool [N, EC] (or NULL) receives the mean
 * of y over its positions. The weights' layouts are kept while `version` (0: unknown,
 * always made again) and the arrays stay the same. */
lk_status lk_expdw_forward(lk_expdw *L, float *y, float *pool, const float *x, const float *w1,
                           const float *b1, const float *wd, const float *bd, uint64_t version);
void lk_expdw_free(lk_expdw *L);

/* ------------------------------------------------------------- batchnorm.c */
typedef enum lk_bn_mode {
    LK_BN_TRAIN = 0,  /* batch statistics, running stats updated, backward through stats */
    LK_BN_EVAL = 1,   /* running statistics, no backward */
    LK_BN_FROZEN = 2  /* running statistics, backward with them as constants */
} lk_bn_mode;

typedef struct lk_bn_cfg {
    int n, c, h, w;   /* x [N, H, W, C]; BatchNorm1d is h = w = 1 */
    float eps, momentum;
    lk_bn_mode mode;
    int need_dx;      /* (train/frozen) compute the input gradient */
    int silu;         /* (TRAIN, h*w > 1) SiLU fused after the normalisation: use
                         lk_bn_silu_forward/backward (plain C, no oneDNN primitives) */
} lk_bn_cfg;

typedef struct lk_bn {
    lk_bn_cfg cfg;
    lk_prim fwd, bwd;
    float *scaleshift_tmp; /* [2, C] scratch for gradients if needed */
    int nchunk;            /* row chunks of the plain-C reductions (fixed by the sizes) */
    int nchunk_fused;      /* row chunks of the fused SiLU backward (cfg.silu) */
    double *part;          /* [max(nchunk, nchunk_fused), 2, C] per-chunk partial sums
                              (h*w > 1, not EVAL) */
    dnnl_memory_t m_x, m_y, m_mean, m_var, m_scale, m_shift, m_dx, m_dy, m_dscale, m_dshift;
    const float *rows_mean, *rows_beta; /* [C] each, for lk_bn_silu_rows_input's rows */
} lk_bn;

lk_status lk_bn_init(lk_bn *L, const lk_bn_cfg *cfg);
/* y = gamma * (x - mean) / sqrt(var + eps) + beta. TRAIN: mean/var [C] receive
 * the batch statistics (biased variance) and running_mean/var are updated as
 * PyTorch does (momentum, unbiased variance). EVAL/FROZEN: mean/var may be NULL;
 * the running statistics are used and left unchanged. */
lk_status lk_bn_forward(lk_bn *L, float *y, float *mean, float *var, const float *x,
                        const float *gamma, const float *beta, float *running_mean,
                        float *running_var);
/* TRAIN: mean/var are the saved batch statistics; FROZEN: pass the running ones. */
lk_status lk_bn_backward(lk_bn *L, float *dx, float *dgamma, float *dbeta, const float *dy,
                         const float *x, const float *mean, const float *var, const float *gamma);
/* cfg.silu: y = silu(gamma * (x - mean) / sqrt(var + eps) + beta) with the batch
 * statistics, as lk_bn_forward then SiLU, but the normalised tensor is never
 * stored (its backward recomputes it from x and the statistics). Statistics and
 * running-statistics update as lk_bn_forward in TRAIN mode. */
lk_status lk_bn_silu_forward(lk_bn *L, float *y, float *mean, float *var, const float *x,
                             const float *gamma, const float *beta, float *running_mean,
                             float *running_var);
/* lk_bn_silu_forward without y: the statistics (and the running ones) alone, for a
 * consumer that makes y row by row from x (lk_bn_silu_rows_input). */
lk_status lk_bn_silu_forward_stats(lk_bn *L, float *mean, float *var, const float *x,
                                   float *running_mean, float *running_var);
/* y again from x and the statistics lk_bn_silu_forward returned: the same bits (for
 * plans that recompute an activation instead of keeping it). */
lk_status lk_bn_silu_recompute(lk_bn *L, float *y, const float *x, const float *mean,
                               const float *var, const float *gamma, const float *beta);
/* The output of lk_bn_silu_forward made on demand, row by row (for a depthwise forward
 * or weight gradient that reads it, lk_dwconv.h): fills `in`, valid while mean, var and beta
 * live and until the next call on L; the same bits as lk_bn_silu_recompute. */
lk_status lk_bn_silu_rows_input(lk_bn *L, struct lk_dw_input *in, const float *mean,
                                const float *var, const float *gamma, const float *beta);
/* Gradient of lk_bn_silu_forward: dx [N, H, W, C] (NULL to skip), dgamma, dbeta [C]
 * from dy, recomputing the SiLU input from x, mean, var, gamma and beta. Pass 1 reads
 * dy and x for the SiLU gradient and both reductions and parks the SiLU gradient in
 * dx; pass 2 turns it into dx in place (dx may alias dy, not x). The reductions are
 * summed in double in fixed chunks: results do not depend on the thread count. */
lk_status lk_bn_silu_backward(lk_bn *L, float *dx, float *dgamma, float *dbeta, const float *dy,
                              const float *x, const float *mean, const float *var,
                              const float *gamma, const float *beta);
/* A per-(image, channel) affine map of dy, applied as pass 1 reads it: the gradient
 * that differentiates is dy * scale[n, c] + shift[n, c]. A squeeze-and-excitation's
 * input gradient has this form (gate and pooled path), so the block hands it over
 * instead of writing it out (lk_se_backward_gate). */
typedef struct lk_bn_gate {
    const float *scale; /* [N, C] */
    const float *shift; /* [N, C] */
} lk_bn_gate;
/* lk_bn_silu_backward of dy gated by `gate` (NULL: dy as it is). dx may alias dy: each
 * tile of dy is gated before its gradient is written. */
lk_status lk_bn_silu_backward_gated(lk_bn *L, float *dx, float *dgamma, float *dbeta,
                                    const float *dy, const lk_bn_gate *gate, const float *x,
                                    const float *mean, const float *var, const float *gamma,
                                    const float *beta);
void lk_bn_free(lk_bn *L);

/* ------------------------------------------------------------ activation.c */
typedef enum lk_act_kind { LK_ACT_SILU, LK_ACT_SIGMOID, LK_ACT_RELU, LK_ACT_RELU6 } lk_act_kind;

typedef struct lk_act {
    lk_act_kind kind;
    int64_t count;
    int train;
    lk_prim fwd, bwd;
    dnnl_memory_t m_x, m_y, m_dx, m_dy;
} lk_act;

lk_status lk_act_init(lk_act *L, lk_act_kind kind, int64_t count, int train);
/* y = act(x); in place (y == x) is allowed. */
lk_status lk_act_forward(lk_act *L, float *y, const float *x);
/* dx = dy * act'(.); SiLU and ReLU/ReLU6 use x, sigmoid uses y (the other may
 * be NULL). dx == dy is allowed. */
lk_status lk_act_backward(lk_act *L, float *dx, const float *dy, const float *x, const float *y);
void lk_act_free(lk_act *L);
/* SiLU kernels on the calling thread only (no parallel region), for fused layers that
 * split the work themselves: y = silu(x), dx = dy * silu'(x) over n floats (in place
 * allowed). The same arithmetic as lk_act's SiLU. */
void lk_silu_forward_serial(float *y, const float *x, int64_t n);
/* The same SiLU for inference with the division replaced by a refined reciprocal
 * estimate: within a few float ulps of lk_silu_forward_serial, not its bits. */
void lk_silu_forward_fast_serial(float *y, const float *x, int64_t n);
void lk_silu_backward_serial(float *dx, const float *dy, const float *x, int64_t n);

/* --------------------------------------------------------------- pooling.c */
typedef enum lk_pool_kind { LK_POOL_AVG, LK_POOL_MAX } lk_pool_kind;

typedef struct lk_gpool {
    lk_pool_kind kind;
    int n, c, h, w;
    int train;
    lk_prim fwd, bwd;
    void *ws;  /* max-pool workspace from the last forward */
    dnnl_memory_t m_x, m_y, m_dx, m_dy, m_ws;
} lk_gpool;

/* Global pooling over H, W. */
lk_status lk_gpool_init(lk_gpool *L, lk_pool_kind kind, int n, int c, int h, int w, int train);
/* y [N, C] from x [N, H, W, C]. */
lk_status lk_gpool_forward(lk_gpool *L, float *y, const float *x);
/* dx [N, H, W, C] from dy [N, C] (max: uses the workspace of the last forward). */
lk_status lk_gpool_backward(lk_gpool *L, float *dx, const float *dy);
void lk_gpool_free(lk_gpool *L);

/* ---------------------------------------------------------------- linear.c */
typedef struct lk_linear_cfg {
    int n, in, out;   /* x [N, IN], y [N, OUT], w [OUT, IN] */
    int bias;         /* has a bias [OUT] */
    int train;        /* plan backward primitives */
    int need_dx;      /* (train) compute the input gradient */
} lk_linear_cfg;

typedef struct lk_linear {
    int n, in, out, bias, train, need_dx;
    lk_prim fwd, bwd_d, bwd_w;
    float *db_tmp;    /* [OUT] bias gradient when the caller skips db */
    dnnl_memory_t m_x, m_y, m_w, m_b, m_dx, m_dy, m_dw, m_db;
} lk_linear;

lk_status lk_linear_init(lk_linear *L, const lk_linear_cfg *cfg);
/* y [N, OUT] = x [N, IN] w^T [IN, OUT] + b [OUT]. */
lk_status lk_linear_forward(lk_linear *L, float *y, const float *x, const float *w, const float *b);
lk_status lk_linear_backward(lk_linear *L, float *dx, float *dw, float *db, const float *dy,
                             const float *x, const float *w);
void lk_linear_free(lk_linear *L);

/* ------------------------------------------------------------ elementwise.c */
/* Broadcast channel multiply (SE gate, channel attention):
 * y [N, H, W, C] = x [N, H, W, C] * s [N, C]. */
typedef struct lk_chmul {
    int n, c, h, w;
    int64_t nchunk;   /* position chunks of the ds reduction (fixed by the sizes) */
    double *part;     /* [N, nchunk, C] their partial sums, planned at init */
    lk_prim fwd;
    dnnl_memory_t m_x, m_s, m_y;
} lk_chmul;

lk_status lk_chmul_init(lk_chmul *L, int n, int c, int h, int w);
lk_status lk_chmul_forward(lk_chmul *L, float *y, const float *x, const float *s);
/* dx = dy * s, ds [N, C] = sum over H, W of dy * x (either may be NULL). */
lk_status lk_chmul_backward(lk_chmul *L, float *dx, float *ds, const float *dy, const float *x,
                            const float *s);
void lk_chmul_free(lk_chmul *L);

/* y = a + b over `count` floats (y may alias a or b). */
lk_status lk_add_forward(float *y, const float *a, const float *b, int64_t count);
/* y += x (gradient accumulation, e.g. through a residual). */
lk_status lk_add_inplace(float *y, const float *x, int64_t count);
/* y [N, HW, C] += scale * v [N, C], broadcast over the HW positions of each image. */
lk_status lk_add_channels(float *y, const float *v, int n, int64_t hw, int c, float scale);

/* ---------------------------------------------------------------- dropout.c */
/* Dropout: y = x * mask / (1 - p), mask[i] ~ Bernoulli(1 - p) from a
 * counter-based generator: the mask depends only on (seed, i), not on threads. */
lk_status lk_dropout_forward(float *y, uint8_t *mask, const float *x, int64_t count, float p,
                             uint64_t seed);
lk_status lk_dropout_backward(float *dx, const float *dy, const uint8_t *mask, int64_t count,
                              float p);
/* Stochastic depth, torchvision "row" mode: one keep flag per sample,
 * y[n] = x[n] * keep[n] / (1 - p) for x [N, per_sample]. */
lk_status lk_stochdepth_forward(float *y, uint8_t *keep, const float *x, int n,
                                int64_t per_sample, float p, uint64_t seed);
lk_status lk_stochdepth_backward(float *dx, const float *dy, const uint8_t *keep, int n,
                                 int64_t per_sample, float p);

/* ------------------------------------------------------------------- loss.c */
/* Softmax cross-entropy, mean reduction, exactly as torch.nn.functional.cross_entropy
 * with `weight` (class weights [K] or NULL) and `label_smoothing`. prob [N, K]
 * is saved for the backward. */
lk_status lk_xent_forward(float *loss, float *prob, const float *logits, const int32_t *labels,
                          const float *class_weight, int n, int k, float smoothing);
/* dlogits [N, K] = dloss * d(loss)/d(logits). */
lk_status lk_xent_backward(float *dlogits, const float *prob, const int32_t *labels,
                           const float *class_weight, int n, int k, float smoothing, float dloss);

/* -------------------------------------------------------------- chanstat.c */
/* Spatial-attention input: y [N, H, W, 2] with y[..., 0] = mean over C and
 * y[..., 1] = max over C of x [N, H, W, C]; argmax [N, H, W] saved for backward. */
lk_status lk_chanstat_forward(float *y, int32_t *argmax, const float *x, int64_t npos, int c);
/* dx [N, H, W, C] from dy [N, H, W, 2]. */
lk_status lk_chanstat_backward(float *dx, const float *dy, const int32_t *argmax, int64_t npos,
                               int c);

/* ----------------------------------------------------------- spatial_mul.c */
/* Spatial-attention gate: a one-channel map ([N, 1, H, W] in NCHW terms)
 * broadcast over channels. x, y [npos, C] are NHWC rows (npos = N*H*W) and
 * map [npos]. y = x * map; y may alias x. */
lk_status lk_spatial_mul_forward(float *y, const float *x, const float *map, int64_t npos, int c);
/* dx [npos, C] = dy * map (NULL to skip; may alias dy) and dmap [npos] =
 * sum over C of dy * x (NULL to skip), summed in double in a fixed order:
 * results do not depend on the thread count. */
lk_status lk_spatial_mul_backward(float *dx, float *dmap, const float *dy, const float *x,
                                  const float *map, int64_t npos, int c);

/* ---------------------------------------------------------- weighted_sum.c */
/* Attention pooling: p [N, C] = sum over s of a[n, s] * x[n, s, :], with
 * x [N, S, C] (NHWC, S = H*W) and a [N, S] (e.g. a softmax over positions).
 * Summed in double in a fixed order: results do not depend on the thread count. */
lk_status lk_weighted_sum_forward(float *p, const float *x, const float *a, int n, int64_t s,
                                  int c);
/* dx [N, S, C] = a[n, s] * dp[n, :] (overwritten, or added into dx when
 * `accumulate_dx` is set) and da [N, S] = dp[n, :] . x[n, s, :] (double, fixed
 * order); either output may be NULL to skip it. */
lk_status lk_weighted_sum_backward(float *dx, float *da, const float *dp, const float *x,
                                   const float *a, int n, int64_t s, int c, int accumulate_dx);

/* --------------------------------------------------------------- softmax.c */
/* Softmax over the last axis of [rows, cols] (attention pooling over H*W). */
typedef struct lk_softmax {
    int rows, cols, train;
    lk_prim fwd, bwd;
    dnnl_memory_t m_x, m_y, m_dx, m_dy;
} lk_softmax;

lk_status lk_softmax_init(lk_softmax *L, int rows, int cols, int train);
lk_status lk_softmax_forward(lk_softmax *L, float *y, const float *x);
/* dx from dy and the forward output y. */
lk_status lk_softmax_backward(lk_softmax *L, float *dx, const float *dy, const float *y);
void lk_softmax_free(lk_softmax *L);

#ifdef __cplusplus
}
#endif
#endif
