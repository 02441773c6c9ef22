/* MBConv and FusedMBConv blocks (torchvision's layout): a short chain of
 * conv-BN-act units, an optional squeeze-and-excitation after the depthwise
 * unit, and a residual with stochastic depth when stride 1 and in == out.
 * The two kinds differ only in which units exist, so they share this code. */
#include <string.h>

#include "lk_blocks.h"
#include "lk_cpu.h"
#include "lk_threads.h"

static lk_se_fold_policy g_se_fold = LK_SE_FOLD_AUTO;
void lk_block_set_se_fold_policy(lk_se_fold_policy p) { g_se_fold = p; }
lk_se_fold_policy lk_block_get_se_fold_policy(void) { return g_se_fold; }

/* Measured (csrc/tests/bench_layers.c, sefold_*, batch 16, 2 threads, inference): the
 * fold saves the gate multiply, 1.3-4 ms per block at 38x38 to 150x150, ties at 19x19,
 * and loses 1.5 ms at 10x10 (1392 -> 232), where the per-image weight reorders cost
 * more than the small activation's pass; both ISAs alike. */
static int se_fold_wanted(int h, int w, int oc) {
    switch (g_se_fold) {
    case LK_SE_FOLD_NEVER: return 0;
    case LK_SE_FOLD_ALWAYS: return 1;
    default: return (int64_t)h * w >= 2 * (int64_t)oc;
    }
}

static lk_expdw_policy g_expdw = LK_EXPDW_AUTO;
void lk_block_set_expdw_policy(lk_expdw_policy p) { g_expdw = p; }
lk_expdw_policy lk_block_get_expdw_policy(void) { return g_expdw; }

static lk_resfuse_policy g_resfuse = LK_RESFUSE_AUTO;
void lk_block_set_resfuse_policy(lk_resfuse_policy p) { g_resfuse = p; }
lk_resfuse_policy lk_block_get_resfuse_policy(void) { return g_resfuse; }

/* Input maps of 38x38 and more: faster on both ISAs at every such B3 and V2-S shape.
 * With the AVX-512 kernels also at 19x19 and 24x24 (bench_layers expdw_*, 2 threads:
 * B3 96->576 k3 at 19x19 2.98 -> 2.40 ms at batch 16, V2-S 160->960 at 24x24 5.3 -> 4.6
 * ms at batch 8), not at 12x12 and 10x10 (5.4 -> 6.7, 3.3 -> 3.8 ms), and only with an
 * image per thread: cut into bands of rows, these small maps recompute too large a
 * share as halo (batch 1: B3 15.3 -> 16.8 ms, V2-S 35.5 -> 44.5 ms). The AVX2 kernels
 * lose from 24x24 down (V2-S 160->960 8.6 -> 9.3 ms). */
static int expdw_pays(const lk_block *b) {
    const int hw = b->ih * b->iw;
    return hw >= 38 * 38 || (hw >= 19 * 19 && lk_kernel_isa() == LK_ISA_AVX512 &&
                             b->n >= lk_get_num_threads());
}

/* Whether a planned block runs its expansion and depthwise units fused (lk_expdw):
 * an MBConv with an expansion, wholly at inference (an eval plan, or a frozen block of
 * a training plan that passes no gradient). AUTO: expdw_pays. */
static int expdw_wanted(const lk_block *b) {
    if (b->cfg.kind != LK_BLOCK_MBCONV || b->first != 0 || b->mode != LK_MODE_EVAL) return 0;
    if (!b->u[0].has_act || !b->u[1].has_act || b->u[1].k > 15) return 0;
    switch (g_expdw) {
    case LK_EXPDW_NEVER: return 0;
    case LK_EXPDW_ALWAYS: return 1;
    default: return expdw_pays(b);
    }
}

static void unit_set(lk_cba *u, int ic, int oc, int k, int stride, int groups, int act) {
    u->ic = ic;
    u->oc = oc;
    u->k = k;
    u->stride = stride;
    u->groups = groups;
    u->has_act = act;
    u->trainable = 1;
}

void lk_block_setup(lk_block *b, const lk_block_cfg *c) {
    memset(b, 0, sizeof *b);
    b->cfg = *c;
    if (c->kind == LK_BLOCK_MBCONV) {
        unit_set(&b->u[0], c->in, c->expanded, 1, 1, 1, 1);
        unit_set(&b->u[1], c->expanded, c->expanded, c->kernel, c->stride, c->expanded, 1);
        unit_set(&b->u[2], c->expanded, c->out, 1, 1, 1, 0);
        b->first = c->has_expand ? 0 : 1;
        b->nu = 3;
        b->se_after = 1;
        b->se.c = c->expanded;
        b->se.sq = c->squeeze;
        b->se.trainable = 1;
    } else if (c->has_expand) {
        unit_set(&b->u[0], c->in, c->expanded, c->kernel, c->stride, 1, 1);
        unit_set(&b->u[1], c->expanded, c->out, 1, 1, 1, 0);
        b->nu = 2;
        b->se_after = -1;
    } else {
        unit_set(&b->u[0], c->in, c->out, c->kernel, c->stride, 1, 1);
        b->nu = 1;
        b->se_after = -1;
    }
}

int lk_block_trainable(const lk_block *b) {
    for (int i = b->first; i < b->nu; i++)
        if (b->u[i].trainable) return 1;
    return b->se_after >= 0 && b->se.trainable;
}

static int block_has_sd(const lk_block *b) {
    return b->mode == LK_MODE_TRAIN && b->cfg.residual && b->cfg.sd_prob > 0.f;
}

/* Whether the SE's gate is folded into the projection (u[se_after + 1].gate_in). */
static int se_folded(const lk_block *b) {
    return b->se_after >= 0 && b->u[b->se_after + 1].gate_in;
}

/* Whether the last unit adds the residual as it writes (u[nu - 1].res_in): b->out is
 * then that unit's output. */
static int residual_fused(const lk_block *b) { return b->u[b->nu - 1].res_in; }

/* Input of unit i: the block input, the previous unit's output or the SE output (with
 * the gate folded in, the SE's input: the unit takes the gate beside it). */
static const float *unit_input(const lk_block *b, int i, const float *x) {
    if (i == b->first) return x;
    return b->se_after == i - 1 && !se_folded(b) ? b->se.out : b->u[i - 1].out;
}

lk_status lk_block_plan(lk_block *b, const lk_plan_opts *o, int train, int grad_in, int ih,
                        int iw) {
    b->n = o->n;
    b->ih = ih;
    b->iw = iw;
    b->need_dx = train && grad_in;
    b->mode = lk_unit_mode(train, lk_block_trainable(b), grad_in);
    int h = ih, w = iw;
    int grad = grad_in; /* a gradient is wanted at the current point of the chain */
    for (int i = b->first; i < b->nu; i++) {
        lk_cba *u = &b->u[i];
        u->need_dx = train && grad;
        u->in_rows = i == 1 && b->u[0].shared_out;
        const lk_mode m = lk_unit_mode(train, u->trainable, grad);
        /* The projection after an SE takes the gate instead of the gated tensor. */
        u->gate_in = i == b->se_after + 1 && b->se_after >= 0 && m != LK_MODE_FROZEN &&
                     se_fold_wanted(h, w, u->oc);
        /* At inference the residual is added as the last unit writes (no stochastic
         * depth there): b->out is that unit's output. */
        u->res_in = i == b->nu - 1 && b->cfg.residual && b->mode == LK_MODE_EVAL &&
                    m == LK_MODE_EVAL && g_resfuse == LK_RESFUSE_AUTO;
        LK_TRY(lk_cba_plan(u, o, m, h, w));
        /* An expansion read only by the next unit (lk_block_shared). */
        u->shared_out = i == 0 && b->nu > 1 && u->mode == LK_MODE_TRAIN && u->bn.cfg.silu;
        grad = grad || u->trainable;
        h = u->oh;
        w = u->ow;
        if (i == b->se_after) {
            LK_TRY(lk_se_plan(&b->se, o, lk_unit_mode(train, b->se.trainable, grad), h, w));
            grad = grad || b->se.trainable;
        }
    }
    b->oh = h;
    b->ow = w;
    lk_expdw_free(&b->xdw);
    b->fused_xdw = expdw_wanted(b);
    if (b->fused_xdw) {
        const lk_expdw_cfg xc = {.n = o->n, .ic = b->cfg.in, .ih = ih, .iw = iw,
                                 .ec = b->cfg.expanded, .k = b->u[1].k, .stride = b->u[1].stride};
        LK_TRY(lk_expdw_init(&b->xdw, &xc));
    }
    return LK_OK;
}

void lk_block_bind(lk_block *b, lk_arena *a) {
    for (int i = b->first; i < b->nu; i++) {
        lk_cba_bind(&b->u[i], a);
        if (i == b->se_after) {
            lk_se_bind(&b->se, a);
            if (b->se.mode == LK_MODE_EVAL) b->se.out = b->u[i].out; /* gated in place */
        }
    }
    size_t count = (size_t)b->n * b->oh * b->ow * b->cfg.out;
    b->sd = NULL;
    b->keep = NULL;
    if (b->cfg.residual && !residual_fused(b)) {
        b->out = lk_arena_take(a, count);
        if (block_has_sd(b)) {
            b->sd = lk_arena_take(a, count);
            b->keep = (uint8_t *)lk_arena_take(a, (size_t)b->n / 4 + 1);
        }
    } else {
        b->out = b->u[b->nu - 1].out;
    }
}

/* In a training plan a block keeps neither its SE output nor (when its first unit
 * trains with the fused BN+SiLU and another unit follows) its expansion's output: each
 * is read once by the next unit in forward, so every block shares one buffer for both,
 * and the backward recomputes each (one multiply; one BN+SiLU pass from z) just before
 * the unit whose weight gradient needs it. The two are never live at once. At batch 16
 * B3@300 keeps about 1.2 GiB less (SE outputs 549 MiB, expansions 690 MiB). Where our
 * depthwise kernel computes that weight gradient, it makes the expansion's output row
 * by row from z itself (lk_cba_backward_from): the same bits, one write and one read of
 * the expanded tensor fewer; where our depthwise forward runs, its forward does the same
 * (lk_cba_forward_from), and the expansion's output is then written by neither. Where
 * the SE gate is folded into the projection
 * (se_fold_wanted), the SE output never exists at all: the projection's forward scales
 * each image's weights and its weight gradient gates the rows in cache. */
static size_t se_shared(const lk_block *b) {
    if (b->se_after < 0 || b->se.mode == LK_MODE_EVAL || se_folded(b)) return 0;
    return (size_t)b->n * b->se.h * b->se.w * b->se.c;
}

/* The expansion (u[0]) shares the buffer: shared_out is only ever set on it. */
static size_t expansion_shared(const lk_block *b) {
    const lk_cba *u = &b->u[0];
    return b->first == 0 && u->shared_out ? (size_t)b->n * u->oh * u->ow * u->oc : 0;
}

/* Whether the depthwise unit makes the shared expansion output row by row in its forward
 * as well (lk_cba_forward_from): the expansion then never writes it. */
static int expansion_rows_fwd(const lk_block *b) {
    return expansion_shared(b) && lk_cba_forward_takes_rows(&b->u[1], &b->u[0]);
}

size_t lk_block_shared(const lk_block *b) {
    size_t s = se_shared(b), e = expansion_shared(b);
    return s > e ? s : e;
}

void lk_block_share(lk_block *b, float *buf) {
    if (se_shared(b)) b->se.out = buf;
    if (expansion_shared(b)) b->u[0].out = buf;
}

/* Whether the unit before the SE gives the SE's pool as it writes (both at inference). */
static int pooled_by_unit(const lk_block *b) {
    return b->se_after >= 0 && b->se.mode == LK_MODE_EVAL &&
           lk_cba_forward_pools(&b->u[b->se_after]);
}

lk_status lk_block_forward(lk_block *b, const float *x, uint64_t seed, const lk_versions *v) {
    const float *h = x;
    int i0 = b->first;
    if (b->fused_xdw) { /* expansion and depthwise as one; the SE's pool comes with it */
        lk_cba *e = &b->u[0], *d = &b->u[1];
        const uint64_t ev = lk_unit_version(v, e->trainable), dv = lk_unit_version(v, d->trainable);
        lk_cba_refold(e, ev);
        lk_cba_refold(d, dv);
        /* Both layouts at one version: `all` moves with every change, `frozen` too. */
        const uint64_t both = lk_unit_version(v, e->trainable || d->trainable);
        LK_TRY(lk_expdw_forward(&b->xdw, d->out, b->se_after == 1 ? b->se.pooled : NULL, x,
                                e->wf, e->bf, d->wf, d->bf, both));
        i0 = 1;
    }
    for (int i = i0; i < b->nu; i++) {
        lk_cba *u = &b->u[i];
        const uint64_t ver = lk_unit_version(v, u->trainable);
        const int done = b->fused_xdw && i == 1; /* u->out made by lk_expdw_forward */
        const float *res = u->res_in ? x : NULL; /* the residual, added as u writes */
        const int rows = expansion_rows_fwd(b) && i <= 1; /* u[0]'s output never written */
        /* The SE's pool taken as the depthwise unit writes (lk_cba_forward_pool). */
        const int pooled = done || (i == b->se_after && pooled_by_unit(b));
        if (pooled && !done)
            LK_TRY(lk_cba_forward_pool(u, h, b->se.pooled, ver));
        else if (rows && i == 0)
            LK_TRY(lk_cba_forward_stats(u, h));
        else if (rows)
            LK_TRY(lk_cba_forward_from(u, &b->u[0]));
        else if (!done && u->gate_in)
            LK_TRY(lk_cba_forward_gated(u, h, b->se.gate, res, ver));
        else if (!done && res)
            LK_TRY(lk_cba_forward_add(u, h, res, ver));
        else if (!done)
            LK_TRY(lk_cba_forward(u, h, ver));
        h = u->out;
        if (i == b->se_after) {
            const uint64_t sv = lk_unit_version(v, b->se.trainable);
            if (pooled)
                LK_TRY(lk_se_forward_pooled(&b->se, sv));
            else
                LK_TRY(lk_se_forward(&b->se, h, sv));
            if (!se_folded(b)) {
                LK_TRY(lk_se_apply_gate(&b->se, h));
                h = b->se.out;
            }
        }
    }
    /* b->out aliases the last unit's output, which holds the sum where it was fused. */
    if (!b->cfg.residual || residual_fused(b)) return LK_OK;
    int64_t per = (int64_t)b->oh * b->ow * b->cfg.out;
    if (block_has_sd(b)) {
        LK_TRY(lk_stochdepth_forward(b->sd, b->keep, h, b->n, per, b->cfg.sd_prob, seed));
        h = b->sd;
    }
    return lk_add_forward(b->out, h, x, per * b->n);
}

/* Walks the units backwards and stops below the last one that needs a gradient. */
lk_status lk_block_backward(lk_block *b, float *dx, float *dy, const float *x,
                            const lk_grad_scratch *g) {
    LK_REQUIRE(b->mode != LK_MODE_EVAL, "block backward: the block has no backward (EVAL)");
    LK_REQUIRE(dx != dy, "block backward: dx must not alias dy");
    LK_REQUIRE(dx || !b->need_dx, "block backward: dx is required");
    int64_t per = (int64_t)b->oh * b->ow * b->cfg.out;
    /* The units consume their dy; the residual needs dy again at the end. */
    float *cur = dy;
    if (block_has_sd(b)) {
        LK_TRY(lk_stochdepth_backward(g->t1, dy, b->keep, b->n, per, b->cfg.sd_prob));
        cur = g->t1;
    } else if (b->cfg.residual && b->need_dx) {
        memcpy(g->t1, dy, sizeof(float) * (size_t)(per * b->n));
        cur = g->t1;
    }
    if (se_shared(b) && b->u[b->se_after + 1].mode == LK_MODE_TRAIN)
        LK_TRY(lk_se_apply_gate(&b->se, b->u[b->se_after].out)); /* recompute se.out */
    for (int i = b->nu - 1; i >= b->first; i--) {
        lk_cba *u = &b->u[i];
        /* The SE's input gradient is dy * gate + (d pooled) / HW: where the unit before
         * it runs the fused BN+SiLU, that map is applied as its backward reads dy,
         * instead of being written out and read back. */
        lk_bn_gate gate, *gp = NULL;
        if (i == b->se_after) {
            if (b->se.mode == LK_MODE_EVAL) break;
            if (lk_cba_takes_gate(u)) {
                LK_TRY(lk_se_backward_gate(&b->se, &gate, cur, u->out));
                gp = &gate;
            } else {
                LK_TRY(lk_se_backward(&b->se, cur, cur, u->out)); /* in place */
            }
        }
        if (u->mode == LK_MODE_EVAL) break;
        float *o = i == b->first ? dx : (cur == g->t1 ? g->t2 : g->t1);
        /* u's input, for its weight gradient, when the expansion's output is shared:
         * made row by row inside it where our depthwise kernel runs, else recomputed
         * whole first. */
        const int shared_in = i == 1 && expansion_shared(b) && u->mode == LK_MODE_TRAIN;
        const int rows = shared_in && lk_cba_takes_rows(u, &b->u[0]);
        if (shared_in && !rows) LK_TRY(lk_cba_recompute_out(&b->u[0]));
        if (rows)
            LK_TRY(lk_cba_backward_from(u, u->need_dx ? o : NULL, cur, gp, &b->u[0]));
        else if (u->gate_in)
            LK_TRY(lk_cba_backward_in_gated(u, u->need_dx ? o : NULL, cur, unit_input(b, i, x),
                                            b->se.gate));
        else
            LK_TRY(lk_cba_backward_gated(u, u->need_dx ? o : NULL, cur, gp, unit_input(b, i, x)));
        if (!u->need_dx) break;
        cur = o;
    }
    if (b->cfg.residual && b->need_dx) LK_TRY(lk_add_inplace(dx, dy, per * b->n));
    return LK_OK;
}

void lk_block_free(lk_block *b) {
    lk_expdw_free(&b->xdw);
    for (int i = 0; i < 3; i++) lk_cba_free(&b->u[i]);
    lk_se_free(&b->se);
}
