/* Network building blocks composed from the layer library:
 *  - lk_cba: Conv2d -> BatchNorm -> optional SiLU (torchvision's Conv2dNormActivation),
 *  - lk_se: squeeze-and-excitation (GAP -> fc1 -> SiLU -> fc2 -> sigmoid -> scale),
 *  - lk_block: MBConv or FusedMBConv with residual and stochastic depth.
 * Buffers come from an arena bound in two passes (measure, then assign);
 * primitives are planned once per (batch, height, width, mode).
 */
#ifndef LK_BLOCKS_H
#define LK_BLOCKS_H

#include <stdint.h>

#include "lk_arch.h"
#include "lk_layers.h"

/* Bump allocator over one float allocation; with base == NULL it only measures. */
typedef struct lk_arena {
    float *base;
    size_t used;  /* floats */
    size_t max_act; /* largest activation seen (floats), for shared gradient scratch */
} lk_arena;

/* Take `count` floats (64-byte aligned); NULL while measuring. */
float *lk_arena_take(lk_arena *a, size_t count);
void lk_arena_note(lk_arena *a, size_t count);

/* Shared gradient scratch of the backward pass (each >= the largest activation). */
typedef struct lk_grad_scratch {
    float *s1, *s2; /* used inside one cba backward */
    float *t1, *t2; /* used inside one block backward */
} lk_grad_scratch;

/* Plan-wide options. */
typedef struct lk_plan_opts {
    int n;
    int train;        /* batch statistics, dropout, stochastic depth, backward planned */
    float bn_eps, bn_momentum;
} lk_plan_opts;

/* Parameters of one conv + BN unit (pointers into the model's arenas). */
typedef struct lk_cba_params {
    float *w, *dw;             /* [OC, IC/G, KH, KW] */
    float *gamma, *dgamma;     /* [OC] */
    float *beta, *dbeta;       /* [OC] */
    float *rmean, *rvar;       /* [OC] running statistics */
} lk_cba_params;

typedef struct lk_cba {
    lk_cba_params p;
    int ic, oc, k, stride, groups, has_act, need_dx;
    int n, ih, iw, oh, ow;
    lk_conv2d conv;
    lk_bn bn;
    lk_act act;
    float *z;          /* [N, OH, OW, OC] conv output (BN input) */
    float *a;          /* [N, OH, OW, OC] BN output (SiLU input) */
    float *out;        /* [N, OH, OW, OC] unit output (== a without activation) */
    float *mean, *var; /* [OC] batch statistics (train) */
    /* Inference: BN folded into the convolution, SiLU fused as its post-op. */
    float *wf;         /* [OC, IC/G, K, K] w * gamma / sqrt(running_var + eps) */
    float *bf;         /* [OC] beta - running_mean * gamma / sqrt(running_var + eps) */
    float eps;
} lk_cba;

lk_status lk_cba_plan(lk_cba *u, const lk_plan_opts *o, int ih, int iw);
void lk_cba_bind(lk_cba *u, lk_arena *a, const lk_plan_opts *o);
lk_status lk_cba_forward(lk_cba *u, const float *x);
/* dx (may be NULL when need_dx == 0) from dy; writes parameter gradients. */
lk_status lk_cba_backward(lk_cba *u, float *dx, const float *dy, const float *x,
                          const lk_grad_scratch *g);
void lk_cba_free(lk_cba *u);

typedef struct lk_se_params {
    float *w1, *dw1, *b1, *db1; /* fc1 [SQ, C, 1, 1], [SQ] */
    float *w2, *dw2, *b2, *db2; /* fc2 [C, SQ, 1, 1], [C] */
} lk_se_params;

typedef struct lk_se {
    lk_se_params p;
    int c, sq, n, h, w;
    lk_gpool pool;
    lk_conv2d fc1, fc2;
    lk_act act1, act2;
    lk_chmul mul;
    float *pooled;      /* [N, C] */
    float *z1, *a1;     /* [N, SQ] fc1 output, after SiLU */
    float *z2, *gate;   /* [N, C] fc2 output, after sigmoid */
    float *out;         /* [N, H, W, C] */
    float *dsmall;      /* [4, N, max(C, SQ)] gradient scratch of the small vectors */
} lk_se;

lk_status lk_se_plan(lk_se *s, const lk_plan_opts *o, int h, int w);
void lk_se_bind(lk_se *s, lk_arena *a, const lk_plan_opts *o);
lk_status lk_se_forward(lk_se *s, const float *x);
lk_status lk_se_backward(lk_se *s, float *dx, const float *dy, const float *x,
                         const lk_grad_scratch *g);
void lk_se_free(lk_se *s);

/* MBConv: [expand cba] -> depthwise cba -> SE -> project cba (no act).
 * FusedMBConv: fused kxk cba -> [project cba], or a single kxk cba. */
typedef struct lk_block {
    lk_block_cfg cfg;
    int n, ih, iw, oh, ow, train;
    lk_cba u[3];   /* MBConv: expand, dw, project; Fused: fused, project */
    int nu;        /* units in use */
    int se_after;  /* SE runs after unit u[se_after] (MBConv), -1 for none */
    int first;     /* index of the first unit actually present */
    lk_se se;
    float *out;    /* [N, OH, OW, OUT] block output */
    uint8_t *keep; /* [N] stochastic-depth flags (train, residual) */
    float *sd;     /* [N, OH, OW, OUT] branch after stochastic depth (train) */
    uint64_t seed;
} lk_block;

lk_status lk_block_plan(lk_block *b, const lk_block_cfg *cfg, const lk_plan_opts *o, int ih,
                        int iw, int need_dx);
void lk_block_bind(lk_block *b, lk_arena *a, const lk_plan_opts *o);
lk_status lk_block_forward(lk_block *b, const float *x, uint64_t seed);
/* dx [N, IH, IW, IN] from dy [N, OH, OW, OUT]; dx must not alias dy. */
lk_status lk_block_backward(lk_block *b, float *dx, const float *dy, const float *x,
                            const lk_grad_scratch *g);
void lk_block_free(lk_block *b);

#endif
