/* Network building blocks composed from the layer library:
 *  - lk_cba: Conv2d -> BatchNorm -> optional SiLU (torchvision's Conv2dNormActivation),
 *  - lk_se: squeeze-and-excitation (GAP -> fc1 -> SiLU -> fc2 -> sigmoid -> scale),
 *  - lk_block: MBConv or FusedMBConv with residual and stochastic depth.
 * Buffers come from an arena bound in two passes (measure, then assign);
 * primitives are planned once per (batch, height, width, modes).
 *
 * Every unit carries its execution mode (lk_mode), chosen by the planner from the
 * fine-tuning policy; nothing is derived from a global train flag.
 */
#ifndef LK_BLOCKS_H
#define LK_BLOCKS_H

#include <stdint.h>

#include "lk_arena.h"
#include "lk_layers.h"

/* How a unit runs in a plan.
 *  EVAL:   inference. BatchNorm folded into the convolution (running statistics),
 *          SiLU fused as its post-op; no backward. Frozen units that need not pass a
 *          gradient on (the frozen prefix) run like this in training too.
 *  FROZEN: Keras' frozen layer inside the gradient path: runs as at inference
 *          (folded BN, no stochastic depth), passes the input gradient back, computes
 *          no parameter gradient and changes no state.
 *  TRAIN:  batch-statistics BN (running statistics updated), every gradient. */
typedef enum lk_mode { LK_MODE_EVAL = 0, LK_MODE_FROZEN = 1, LK_MODE_TRAIN = 2 } lk_mode;

/* The mode of a unit in a plan: it trains when the plan trains and its parameters do;
 * a frozen one passes the gradient on (FROZEN) only when something before it needs it
 * (`grad_in`), else it runs as at inference (EVAL). */
static inline lk_mode lk_unit_mode(int train, int trainable, int grad_in) {
    if (!train) return LK_MODE_EVAL;
    if (trainable) return LK_MODE_TRAIN;
    return grad_in ? LK_MODE_FROZEN : LK_MODE_EVAL;
}

/* Plan-wide sizes and BatchNorm constants. */
typedef struct lk_plan_opts {
    int n;
    float bn_eps, bn_momentum;
    lk_scratch *scratch; /* the plan's shared workspace (layers reserve in it), or NULL */
} lk_plan_opts;

/* Parameter versions a forward runs at: folded weights are cached by them. `all`
 * moves with every change; `frozen` only with changes that may touch frozen units
 * (loads, direct writes, policy changes), so a frozen prefix folds once. */
typedef struct lk_versions {
    uint64_t all, frozen;
} lk_versions;

/* The version a unit's folded weights depend on. */
static inline uint64_t lk_unit_version(const lk_versions *v, int trainable) {
    return trainable ? v->all : v->frozen;
}

/* Shared gradient scratch of one block backward (each >= the largest activation),
 * owned by the model's plan. The units need none of their own: each consumes its dy,
 * turning it into its BN/activation gradient in place. */
typedef struct lk_grad_scratch {
    float *t1, *t2;
} lk_grad_scratch;

/* ------------------------------------------------------------------ cba.c */
/* Parameters of one conv + BN unit (pointers into the model's arenas). */
typedef struct lk_cba_params {
    float *w, *dw;             /* [OC, IC/G, KH, KW] */
    float *gamma, *dgamma;     /* [OC] */
    float *beta, *dbeta;       /* [OC] */
    float *rmean, *rvar;       /* [OC] running statistics */
} lk_cba_params;

typedef struct lk_cba {
    lk_cba_params p;
    int ic, oc, k, stride, groups, has_act; /* structure, fixed at creation */
    int trainable;                          /* policy: this unit's parameters train */
    lk_mode mode;                           /* of the current plan */
    int need_dx;                            /* (TRAIN/FROZEN) pass the input gradient on */
    int n, ih, iw, oh, ow;
    lk_conv2d conv;
    lk_bn bn;                  /* TRAIN only (with the SiLU fused in when there is one) */
    lk_act act;                /* FROZEN with an activation (TRAIN: only if not fused) */
    float *z;          /* [N, OH, OW, OC] conv output (TRAIN: BN input; FROZEN: SiLU input) */
    float *a;          /* [N, OH, OW, OC] BN output (TRAIN without a fused SiLU; else NULL) */
    float *out;        /* [N, OH, OW, OC] unit output */
    int shared_out;    /* TRAIN, fused SiLU: out lives in the block's shared buffer and
                          is recomputed from z for the next unit's weight gradient */
    int in_rows;       /* set by the block before planning: the input is the previous
                          unit's shared output, which the forward and the weight gradient
                          may make on demand (lk_cba_forward_from, lk_cba_backward_from) */
    int gate_in;       /* set by the block before planning (EVAL or TRAIN 1x1 units): the
                          input arrives as x and a gate [N, IC] to scale it by per image
                          and channel (a squeeze-and-excitation folded into this unit):
                          each image runs with its weights times its gate, and a training
                          weight gradient makes the gated rows in cache */
    int res_in;        /* set by the block before planning (EVAL only): the unit's forward
                          adds the block's residual as it writes (lk_cba_forward_add) */
    lk_conv2d conv1;   /* gate_in: the same convolution on one image */
    size_t nlaid;      /* gate_in: floats of conv1's weights in its own layout */
    float *wl;         /* gate_in: [nlaid] the weights (EVAL: folded) in conv1's layout */
    float *wg;         /* gate_in: [nlaid] one image's gated weights, in that layout */
    int32_t *icmap;    /* gate_in: [nlaid] the input channel of each laid weight */
    uint64_t wl_version; /* EVAL: version of the folded weights in wl (0: none) */
    float *mean, *var; /* [OC] batch statistics (TRAIN) */
    /* EVAL / FROZEN: BN folded into the convolution, refreshed when the version moves. */
    float *wf;         /* [OC, IC/G, K, K] w * gamma / sqrt(running_var + eps) */
    float *bf;         /* [OC] beta - running_mean * gamma / sqrt(running_var + eps) */
    uint64_t folded_version;
    float eps;
} lk_cba;

lk_status lk_cba_plan(lk_cba *u, const lk_plan_opts *o, lk_mode mode, int ih, int iw);
void lk_cba_bind(lk_cba *u, lk_arena *a);
lk_status lk_cba_forward(lk_cba *u, const float *x, uint64_t version);
/* A res_in unit's forward: out = unit(x) + add, add [N, OH, OW, OC] the residual. */
lk_status lk_cba_forward_add(lk_cba *u, const float *x, const float *add, uint64_t version);
/* EVAL / FROZEN: wf and bf from the parameters, unless already folded at `version`
 * (0: always refold). */
void lk_cba_refold(lk_cba *u, uint64_t version);
/* gate_in units: lk_cba_forward of x * gate[image] (gate [N, IC]), never formed. */
lk_status lk_cba_forward_gated(lk_cba *u, const float *x, const float *gate, const float *add,
                               uint64_t version);
/* out again from z and the batch statistics (shared_out units): the forward's bits. */
lk_status lk_cba_recompute_out(lk_cba *u);
/* A shared_out unit's forward up to its BatchNorm statistics: out is left unwritten for
 * the next unit to make row by row (lk_cba_forward_from). */
lk_status lk_cba_forward_stats(lk_cba *u, const float *x);
/* Whether u (TRAIN, planned with in_rows) can take its forward's input as src's fused
 * BN+SiLU output made on demand inside its depthwise convolution, and that forward
 * (src ran lk_cba_forward_stats): the input is never written. */
int lk_cba_forward_takes_rows(const lk_cba *u, const lk_cba *src);
lk_status lk_cba_forward_from(lk_cba *u, lk_cba *src);
/* Whether an EVAL unit's forward also gives the channel means of its output per image
 * (a depthwise unit on our kernel, lk_conv2d_forward_pools): lk_cba_forward_pool. */
int lk_cba_forward_pools(const lk_cba *u);
lk_status lk_cba_forward_pool(lk_cba *u, const float *x, float *pool, uint64_t version);
/* dx (NULL when need_dx == 0) from dy; TRAIN writes the parameter gradients. dy is
 * consumed: the activation and BN gradients overwrite it in place (no scratch). */
lk_status lk_cba_backward(lk_cba *u, float *dx, float *dy, const float *x);
/* Whether u's backward can take its dy through a gate (lk_bn_gate: TRAIN with the fused
 * BN+SiLU), and lk_cba_backward of dy * gate->scale + gate->shift (NULL gate: dy). */
int lk_cba_takes_gate(const lk_cba *u);
lk_status lk_cba_backward_gated(lk_cba *u, float *dx, float *dy, const lk_bn_gate *gate,
                                const float *x);
/* gate_in units in TRAIN: lk_cba_backward with the input x * gate[image]. */
lk_status lk_cba_backward_in_gated(lk_cba *u, float *dx, float *dy, const float *x,
                                   const float *gate);
/* Whether u (TRAIN, planned with in_rows) can take its input as src's fused BN+SiLU
 * output made on demand inside its depthwise weight gradient, and that backward:
 * src's output need not be recomputed (lk_cba_recompute_out) first. */
int lk_cba_takes_rows(const lk_cba *u, const lk_cba *src);
lk_status lk_cba_backward_from(lk_cba *u, float *dx, float *dy, const lk_bn_gate *gate,
                               lk_cba *src);
void lk_cba_free(lk_cba *u);

/* ------------------------------------------------------------------- se.c */
typedef struct lk_se_params {
    float *w1, *dw1, *b1, *db1; /* fc1 [SQ, C, 1, 1], [SQ] */
    float *w2, *dw2, *b2, *db2; /* fc2 [C, SQ, 1, 1], [C] */
} lk_se_params;

typedef struct lk_se {
    lk_se_params p;
    int c, sq;
    int trainable;
    lk_mode mode;
    int n, h, w;
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

lk_status lk_se_plan(lk_se *s, const lk_plan_opts *o, lk_mode mode, int h, int w);
void lk_se_bind(lk_se *s, lk_arena *a);
/* The gate [N, C] from x; `version`: of the SE's weights (their reorder is cached by
 * it; 0 = always reorder). The block then applies it (lk_se_apply_gate) or folds it
 * into the projection that follows (lk_cba_forward_gated). */
lk_status lk_se_forward(lk_se *s, const float *x, uint64_t version);
/* lk_se_forward with the average pool already in s->pooled (a fused producer took it). */
lk_status lk_se_forward_pooled(lk_se *s, uint64_t version);
/* dx [N, H, W, C] (always: the SE sits inside a block's gradient path) from dy; dx
 * may alias dy. */
lk_status lk_se_backward(lk_se *s, float *dx, const float *dy, const float *x);
/* The same backward with dx left unwritten: `gate` receives the map that turns dy into
 * dx (dx = dy * gate->scale + gate->shift per image and channel, lk_bn_gate), for a
 * fused BN+SiLU backward to apply as it reads dy (lk_cba_backward with a gate). It
 * reads dy and x once, for the gate's gradient; valid until the next call on s. */
lk_status lk_se_backward_gate(lk_se *s, lk_bn_gate *gate, const float *dy, const float *x);
/* out = x * gate, the forward's last step; a training plan's backward calls it again to
 * recompute out (the same primitive: the same bits). */
lk_status lk_se_apply_gate(lk_se *s, const float *x);
void lk_se_free(lk_se *s);

/* ---------------------------------------------------------------- block.c */
typedef enum lk_block_kind { LK_BLOCK_MBCONV = 0, LK_BLOCK_FUSED = 1 } lk_block_kind;

/* One block after width/depth scaling: everything a builder needs. */
typedef struct lk_block_cfg {
    lk_block_kind kind;
    int stage, index;           /* features.<stage+1>.<index> */
    int in, out, expanded, squeeze, kernel, stride;
    int has_expand;             /* expanded != in */
    int has_se;                 /* MBConv only */
    int residual;               /* stride 1 and in == out */
    float sd_prob;              /* stochastic-depth drop probability */
} lk_block_cfg;

/* MBConv: [expand cba] -> depthwise cba -> SE -> project cba (no act).
 * FusedMBConv: fused kxk cba -> [project cba], or a single kxk cba.
 * The block's mode is TRAIN when any of its units trains (then stochastic depth
 * applies), FROZEN when it only passes gradients, EVAL otherwise. */
typedef struct lk_block {
    lk_block_cfg cfg;
    lk_mode mode;
    int need_dx;   /* the block input's gradient is wanted */
    int n, ih, iw, oh, ow;
    lk_cba u[3];   /* MBConv: expand, dw, project; Fused: fused, project */
    int nu;        /* units in use */
    int se_after;  /* SE runs after unit u[se_after] (MBConv), -1 for none */
    int first;     /* index of the first unit actually present */
    lk_se se;
    int fused_xdw; /* EVAL expansion and depthwise units run as one (lk_expdw): the
                      expanded tensor is never stored, the SE's pool comes with it */
    lk_expdw xdw;
    float *out;    /* [N, OH, OW, OUT] block output */
    uint8_t *keep; /* [N] stochastic-depth flags (TRAIN, residual) */
    float *sd;     /* [N, OH, OW, OUT] branch after stochastic depth (TRAIN) */
} lk_block;

/* Whether a block folds its squeeze-and-excitation gate into the projection that
 * follows (lk_cba gate_in). AUTO: where the output map has at least 2 * OC positions
 * (one image's gated weights, OC x IC, are then small against the gated activation,
 * H x W x IC, that the fold never forms); NEVER / ALWAYS for tests and benchmarks. Read
 * when a block is planned. */
typedef enum lk_se_fold_policy {
    LK_SE_FOLD_AUTO = 0,
    LK_SE_FOLD_NEVER,
    LK_SE_FOLD_ALWAYS
} lk_se_fold_policy;
void lk_block_set_se_fold_policy(lk_se_fold_policy p);
lk_se_fold_policy lk_block_get_se_fold_policy(void);

/* Whether an MBConv block whose expansion and depthwise units both run at inference
 * (EVAL) runs them fused (lk_expdw). AUTO: where that was measured faster (block.c);
 * NEVER / ALWAYS for tests and benchmarks. Read when a block is planned. */
typedef enum lk_expdw_policy { LK_EXPDW_AUTO = 0, LK_EXPDW_NEVER, LK_EXPDW_ALWAYS } lk_expdw_policy;
void lk_block_set_expdw_policy(lk_expdw_policy p);
lk_expdw_policy lk_block_get_expdw_policy(void);

/* Whether a residual block at inference (EVAL) adds its input inside the last unit's
 * convolution (a post-op: the unit output is never read back) instead of in a pass of
 * its own. AUTO fuses wherever possible; NEVER for tests and benchmarks. Read when a
 * block is planned. */
typedef enum lk_resfuse_policy { LK_RESFUSE_AUTO = 0, LK_RESFUSE_NEVER } lk_resfuse_policy;
void lk_block_set_resfuse_policy(lk_resfuse_policy p);
lk_resfuse_policy lk_block_get_resfuse_policy(void);

/* Structure of a block (which units exist) from its config; zeroes the block. */
void lk_block_setup(lk_block *b, const lk_block_cfg *cfg);
/* Plan with each unit's mode taken from its `trainable` flag: `train` asks for a
 * training plan, `grad_in` says whether a gradient must reach the block input. */
lk_status lk_block_plan(lk_block *b, const lk_plan_opts *o, int train, int grad_in, int ih,
                        int iw);
void lk_block_bind(lk_block *b, lk_arena *a);
/* Floats this block keeps in a buffer shared with the other blocks (0: none): the
 * expansion's output and the SE output of a training plan, recomputed in backward
 * where a weight gradient needs them. lk_block_share hands the buffer over after
 * binding. */
size_t lk_block_shared(const lk_block *b);
void lk_block_share(lk_block *b, float *buf);
lk_status lk_block_forward(lk_block *b, const float *x, uint64_t seed, const lk_versions *v);
/* dx [N, IH, IW, IN] (NULL when !need_dx) from dy [N, OH, OW, OUT]; dx must not alias
 * dy. dy is scratch to the block: it may be overwritten. */
lk_status lk_block_backward(lk_block *b, float *dx, float *dy, const float *x,
                            const lk_grad_scratch *g);
void lk_block_free(lk_block *b);
/* Whether any unit of the block trains. */
int lk_block_trainable(const lk_block *b);

#endif
