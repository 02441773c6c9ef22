/* Conv2d -> BatchNorm -> optional SiLU, forward and backward, in three modes:
 *   EVAL   one convolution with BN folded in and SiLU fused as a post-op;
 *   FROZEN the same folded convolution, SiLU kept apart so that its backward has
 *          the pre-activation; backward-data only (the weights are constants);
 *   TRAIN  convolution, batch-statistics BN, SiLU, and every gradient. BN and SiLU run
 *          fused (lk_bn_silu_*): only the conv output z and the unit output are
 *          stored (the output not even that when the block shares it, shared_out);
 *          the backward recomputes the BN output from z.
 */
#include <math.h>
#include <string.h>

#include "lk_blocks.h"
#include "lk_dwconv.h"

/* The one-image forward of a gate_in unit (its own primitive; the batch one stays for
 * the backward) and the buffer of one image's gated weights. */
static lk_status cba_plan_gated(lk_cba *u, const lk_conv2d_cfg *cc) {
    lk_conv2d_cfg one = *cc;
    one.n = 1;
    one.train = one.need_dx = one.in_rows = one.gated_in = 0;
    one.no_dw = 0;
    LK_TRY(lk_conv2d_init(&u->conv1, &one));
    const size_t nl = lk_conv2d_fwd_weights_floats(&u->conv1), nw = (size_t)u->oc * u->ic;
    u->nlaid = nl;
    u->wl_version = 0;
    u->wl = lk_alloc(nl * sizeof(float));
    u->wg = lk_alloc((nl > nw ? nl : nw) * sizeof(float));
    u->icmap = lk_alloc(nl * sizeof(int32_t));
    if (!u->wl || !u->wg || !u->icmap)
        return LK_FAIL(LK_ERR_NOMEM, "gated weights [%zu] of a conv-BN unit", nl);
    /* Where each input channel lands in the layout: lay out w[o][i] = i (exact in
     * float); padding reads channel 0 and stays 0 (its weight is 0). */
    for (size_t k = 0; k < nw; k++) u->wg[k] = (float)(k % (size_t)u->ic);
    LK_TRY(lk_conv2d_fwd_weights(&u->conv1, u->wl, u->wg));
    for (size_t k = 0; k < nl; k++) u->icmap[k] = (int32_t)u->wl[k];
    return LK_OK;
}

lk_status lk_cba_plan(lk_cba *u, const lk_plan_opts *o, lk_mode mode, int ih, int iw) {
    int pad = (u->k - 1) / 2;
    u->mode = mode;
    u->n = o->n;
    u->ih = ih;
    u->iw = iw;
    u->eps = o->bn_eps;
    u->folded_version = 0;
    u->shared_out = 0; /* the block decides (lk_block_plan) */
    if (mode == LK_MODE_EVAL) u->need_dx = 0;
    LK_REQUIRE(!u->gate_in || (mode != LK_MODE_FROZEN && u->k == 1 && u->stride == 1 &&
                               u->groups == 1),
               "conv-BN unit: a gated input needs an EVAL or TRAIN 1x1 unit");
    LK_REQUIRE(!u->res_in || mode == LK_MODE_EVAL,
               "conv-BN unit: the fused residual is for EVAL units only");
    lk_conv2d_cfg cc = {.n = o->n, .ic = u->ic, .ih = ih, .iw = iw, .oc = u->oc, .kh = u->k,
                        .kw = u->k, .sh = u->stride, .sw = u->stride, .pt = pad, .pl = pad,
                        .pb = pad, .pr = pad, .groups = u->groups, .scratch = o->scratch};
    if (mode != LK_MODE_TRAIN) {
        cc.bias = 1; /* the folded BN shift */
        if (mode == LK_MODE_EVAL) {
            cc.post_silu = u->has_act; /* one pass instead of three */
            cc.post_add = u->res_in;
        } else {
            cc.train = 1;
            cc.need_dx = u->need_dx;
            cc.no_dw = 1;
        }
        LK_TRY(lk_conv2d_init(&u->conv, &cc));
        u->oh = u->conv.oh;
        u->ow = u->conv.ow;
        if (u->gate_in) LK_TRY(cba_plan_gated(u, &cc));
        size_t wn = (size_t)u->oc * (size_t)(u->ic / u->groups) * (size_t)u->k * (size_t)u->k;
        u->wf = lk_alloc(wn * sizeof(float));
        u->bf = lk_alloc((size_t)u->oc * sizeof(float));
        if (!u->wf || !u->bf) return LK_FAIL(LK_ERR_NOMEM, "folded weights of a conv-BN unit");
        if (mode == LK_MODE_FROZEN && u->has_act)
            LK_TRY(lk_act_init(&u->act, LK_ACT_SILU, (int64_t)o->n * u->oh * u->ow * u->oc, 1));
        return LK_OK;
    }
    cc.train = 1;
    cc.need_dx = u->need_dx;
    cc.in_rows = u->in_rows;
    cc.gated_in = u->gate_in;
    LK_TRY(lk_conv2d_init(&u->conv, &cc));
    u->oh = u->conv.oh;
    u->ow = u->conv.ow;
    if (u->gate_in) LK_TRY(cba_plan_gated(u, &cc));
    /* The fused SiLU needs h*w > 1 (always true here: a 1x1 output would be a
     * BatchNorm1d; fall back to BN + SiLU apart then). */
    const int fuse = u->has_act && u->oh * u->ow > 1;
    lk_bn_cfg bc = {.n = o->n, .c = u->oc, .h = u->oh, .w = u->ow, .eps = o->bn_eps,
                    .momentum = o->bn_momentum, .mode = LK_BN_TRAIN, .need_dx = 1, .silu = fuse};
    LK_TRY(lk_bn_init(&u->bn, &bc));
    if (u->has_act && !fuse)
        LK_TRY(lk_act_init(&u->act, LK_ACT_SILU, (int64_t)o->n * u->oh * u->ow * u->oc, 1));
    return LK_OK;
}

void lk_cba_bind(lk_cba *u, lk_arena *a) {
    size_t count = (size_t)u->n * u->oh * u->ow * u->oc;
    lk_arena_note(a, count);
    lk_arena_note(a, (size_t)u->n * u->ih * u->iw * u->ic);
    u->mean = u->var = NULL;
    switch (u->mode) {
    case LK_MODE_EVAL: /* nothing kept for a backward */
        u->z = u->a = u->out = lk_arena_take(a, count);
        break;
    case LK_MODE_FROZEN: /* z: folded conv output, the SiLU input its backward needs */
        u->z = u->a = lk_arena_take(a, count);
        u->out = u->has_act ? lk_arena_take(a, count) : u->z;
        break;
    case LK_MODE_TRAIN: /* a: BN output, kept only when SiLU is not fused into the BN */
        u->z = lk_arena_take(a, count);
        u->a = u->bn.cfg.silu ? NULL : lk_arena_take(a, count);
        u->out = u->shared_out ? NULL /* lk_block_share */
                 : u->has_act  ? lk_arena_take(a, count)
                               : u->a;
        u->mean = lk_arena_take(a, (size_t)u->oc);
        u->var = lk_arena_take(a, (size_t)u->oc);
        break;
    }
}

/* wf = w * s, bf = beta - mean * s with s = gamma / sqrt(var + eps), per output channel. */
static void cba_fold(lk_cba *u) {
    size_t per = (size_t)(u->ic / u->groups) * (size_t)u->k * (size_t)u->k;
#pragma omp parallel for schedule(static) if ((size_t)u->oc * per > 65536)
    for (int c = 0; c < u->oc; c++) {
        float s = u->p.gamma[c] / sqrtf(u->p.rvar[c] + u->eps);
        u->bf[c] = u->p.beta[c] - u->p.rmean[c] * s;
        const float *w = u->p.w + (size_t)c * per;
        float *wf = u->wf + (size_t)c * per;
        for (size_t i = 0; i < per; i++) wf[i] = w[i] * s;
    }
}

/* Fold (and let the conv reorder) only when parameters changed: version 0 means
 * "unknown", so it always refolds. */
void lk_cba_refold(lk_cba *u, uint64_t version) {
    if (version == 0 || u->folded_version != version) cba_fold(u);
    u->folded_version = version;
}

/* What follows the convolution (z written): BN and the activation. */
static lk_status cba_after_conv(lk_cba *u) {
    if (u->mode != LK_MODE_TRAIN) {
        if (u->mode == LK_MODE_FROZEN && u->has_act) LK_TRY(lk_act_forward(&u->act, u->out, u->z));
        return LK_OK;
    }
    if (u->bn.cfg.silu)
        return lk_bn_silu_forward(&u->bn, u->out, u->mean, u->var, u->z, u->p.gamma, u->p.beta,
                                  u->p.rmean, u->p.rvar);
    LK_TRY(lk_bn_forward(&u->bn, u->a, u->mean, u->var, u->z, u->p.gamma, u->p.beta, u->p.rmean,
                         u->p.rvar));
    if (u->has_act) LK_TRY(lk_act_forward(&u->act, u->out, u->a));
    return LK_OK;
}

/* The forward, with the residual `add` (res_in units; NULL otherwise). */
static lk_status cba_forward(lk_cba *u, const float *x, const float *add, uint64_t version) {
    if (u->mode != LK_MODE_TRAIN) {
        lk_cba_refold(u, version);
        LK_TRY(lk_conv2d_forward_add(&u->conv, u->z, x, u->wf, u->bf, version, add));
    } else {
        LK_TRY(lk_conv2d_forward(&u->conv, u->z, x, u->p.w, NULL, 0));
    }
    return cba_after_conv(u);
}

lk_status lk_cba_forward(lk_cba *u, const float *x, uint64_t version) {
    return cba_forward(u, x, NULL, version);
}

int lk_cba_forward_pools(const lk_cba *u) {
    return u->mode == LK_MODE_EVAL && u->has_act && lk_conv2d_forward_pools(&u->conv);
}

lk_status lk_cba_forward_pool(lk_cba *u, const float *x, float *pool, uint64_t version) {
    LK_REQUIRE(lk_cba_forward_pools(u), "conv-BN unit: its forward gives no pool");
    lk_cba_refold(u, version);
    return lk_conv2d_forward_pool(&u->conv, u->out, pool, x, u->wf, u->bf, version);
}

lk_status lk_cba_forward_add(lk_cba *u, const float *x, const float *add, uint64_t version) {
    LK_REQUIRE(u->res_in && add, "conv-BN unit: not planned for a residual (res_in), or none given");
    return cba_forward(u, x, add, version);
}

/* conv(x * gate[n]) = conv with the weights' input channels scaled by gate[n], image by
 * image: the gated input (an activation-sized pass, written and read back) never
 * exists; one image's weights, [OC, IC], are far smaller on the maps this is planned
 * for (the block's rule). */
lk_status lk_cba_forward_gated(lk_cba *u, const float *x, const float *gate, const float *add,
                               uint64_t version) {
    LK_REQUIRE(u->gate_in && u->wg, "conv-BN unit: not planned for a gated input (gate_in)");
    LK_REQUIRE(x && gate, "conv-BN unit (gated): NULL argument");
    LK_REQUIRE(!add == !u->res_in, "conv-BN unit (gated): the residual %s",
               add ? "was given, but the unit was not planned for it (res_in)" : "is missing");
    const float *b = NULL;
    if (u->mode != LK_MODE_TRAIN) {
        lk_cba_refold(u, version);
        b = u->bf;
        /* The folded weights, laid out once per parameter version. */
        if (version == 0 || u->wl_version != version) {
            LK_TRY(lk_conv2d_fwd_weights(&u->conv1, u->wl, u->wf));
            u->wl_version = version;
        }
    } else {
        LK_TRY(lk_conv2d_fwd_weights(&u->conv1, u->wl, u->p.w));
    }
    const int oc = u->oc, ic = u->ic;
    const int64_t hw = (int64_t)u->ih * u->iw, nl = (int64_t)u->nlaid;
    const float *wl = u->wl;
    const int32_t *map = u->icmap;
    float *wg = u->wg;
    for (int n = 0; n < u->n; n++) {
        const float *g = gate + (int64_t)n * ic;
        /* The same products as w * g before the layout: a reorder only moves them. */
#pragma omp parallel for simd schedule(static) if (nl > 65536)
        for (int64_t k = 0; k < nl; k++) wg[k] = wl[k] * g[map[k]];
        LK_TRY(lk_conv2d_forward_laid(&u->conv1, u->z + n * hw * oc, x + n * hw * ic, wg, b,
                                      add ? add + n * hw * oc : NULL));
    }
    return cba_after_conv(u);
}

lk_status lk_cba_forward_stats(lk_cba *u, const float *x) {
    LK_REQUIRE(u->mode == LK_MODE_TRAIN && u->shared_out && u->bn.cfg.silu,
               "conv-BN unit: only a TRAIN unit with a shared, fused BN+SiLU output may leave "
               "it unwritten");
    LK_TRY(lk_conv2d_forward(&u->conv, u->z, x, u->p.w, NULL, 0));
    return lk_bn_silu_forward_stats(&u->bn, u->mean, u->var, u->z, u->p.rmean, u->p.rvar);
}

int lk_cba_forward_takes_rows(const lk_cba *u, const lk_cba *src) {
    return u->mode == LK_MODE_TRAIN && lk_conv2d_forward_takes_rows(&u->conv) &&
           src->mode == LK_MODE_TRAIN && src->shared_out && src->bn.cfg.silu;
}

lk_status lk_cba_forward_from(lk_cba *u, lk_cba *src) {
    LK_REQUIRE(lk_cba_forward_takes_rows(u, src),
               "conv-BN unit: cannot take its forward's input as rows of the previous unit");
    lk_dw_input in;
    LK_TRY(lk_bn_silu_rows_input(&src->bn, &in, src->mean, src->var, src->p.gamma, src->p.beta));
    LK_TRY(lk_conv2d_forward_rows(&u->conv, u->z, src->z, u->p.w, &in));
    return cba_after_conv(u);
}

lk_status lk_cba_recompute_out(lk_cba *u) {
    LK_REQUIRE(u->shared_out && u->bn.cfg.silu, "conv-BN unit: its output is kept, not recomputed");
    return lk_bn_silu_recompute(&u->bn, u->out, u->z, u->mean, u->var, u->p.gamma, u->p.beta);
}

/* Every step before the convolution's backward works in place over dy (SiLU and the
 * fused BN+SiLU elementwise, oneDNN's BN backward allows diff_src == diff_dst), so a
 * unit needs no activation-sized scratch of its own. */
static lk_status cba_backward(lk_cba *u, float *dx, float *dy, const lk_bn_gate *gate,
                              const float *x, const float *xgate, lk_cba *src) {
    LK_REQUIRE(!gate || lk_cba_takes_gate(u),
               "conv-BN unit: only a training unit with the fused BN+SiLU takes a gated dy");
    LK_REQUIRE(u->mode != LK_MODE_EVAL, "conv-BN unit: no backward in EVAL mode");
    if (u->mode == LK_MODE_FROZEN) {
        if (!u->need_dx) return LK_OK;
        if (u->has_act) LK_TRY(lk_act_backward(&u->act, dy, dy, u->z, u->out));
        return lk_conv2d_backward(&u->conv, dx, NULL, NULL, dy, x, u->wf);
    }
    if (u->bn.cfg.silu) {
        LK_TRY(lk_bn_silu_backward_gated(&u->bn, dy, u->p.dgamma, u->p.dbeta, dy, gate, u->z,
                                         u->mean, u->var, u->p.gamma, u->p.beta));
    } else {
        if (u->has_act) LK_TRY(lk_act_backward(&u->act, dy, dy, u->a, u->out));
        LK_TRY(lk_bn_backward(&u->bn, dy, u->p.dgamma, u->p.dbeta, dy, u->z, u->mean, u->var,
                              u->p.gamma));
    }
    if (xgate) {
        if (u->need_dx) LK_TRY(lk_conv2d_backward(&u->conv, dx, NULL, NULL, dy, NULL, u->p.w));
        return lk_conv2d_backward_w_gated(&u->conv, u->p.dw, dy, x, xgate);
    }
    if (!src)
        return lk_conv2d_backward(&u->conv, u->need_dx ? dx : NULL, u->p.dw, NULL, dy, x, u->p.w);
    /* The input is src's fused BN+SiLU output, made row by row from its z inside the
     * depthwise weight gradient instead of recomputed whole (lk_cba_backward_from). */
    if (u->need_dx) LK_TRY(lk_conv2d_backward(&u->conv, dx, NULL, NULL, dy, NULL, u->p.w));
    lk_dw_input in;
    LK_TRY(lk_bn_silu_rows_input(&src->bn, &in, src->mean, src->var, src->p.gamma, src->p.beta));
    return lk_conv2d_backward_w_rows(&u->conv, u->p.dw, NULL, dy, src->z, &in);
}

lk_status lk_cba_backward(lk_cba *u, float *dx, float *dy, const float *x) {
    return cba_backward(u, dx, dy, NULL, x, NULL, NULL);
}

lk_status lk_cba_backward_in_gated(lk_cba *u, float *dx, float *dy, const float *x,
                                   const float *gate) {
    LK_REQUIRE(u->gate_in && u->mode == LK_MODE_TRAIN && x && gate,
               "conv-BN unit: a gated input's backward needs a TRAIN gate_in unit, x and gate");
    return cba_backward(u, dx, dy, NULL, x, gate, NULL);
}

int lk_cba_takes_gate(const lk_cba *u) { return u->mode == LK_MODE_TRAIN && u->bn.cfg.silu; }

lk_status lk_cba_backward_gated(lk_cba *u, float *dx, float *dy, const lk_bn_gate *gate,
                                const float *x) {
    return cba_backward(u, dx, dy, gate, x, NULL, NULL);
}

int lk_cba_takes_rows(const lk_cba *u, const lk_cba *src) {
    return u->mode == LK_MODE_TRAIN && lk_conv2d_takes_rows(&u->conv) && src->shared_out &&
           src->bn.cfg.silu;
}

lk_status lk_cba_backward_from(lk_cba *u, float *dx, float *dy, const lk_bn_gate *gate,
                               lk_cba *src) {
    LK_REQUIRE(lk_cba_takes_rows(u, src),
               "conv-BN unit: cannot take its input as rows of the previous unit");
    return cba_backward(u, dx, dy, gate, NULL, NULL, src);
}

void lk_cba_free(lk_cba *u) {
    lk_free(u->wf);
    lk_free(u->bf);
    lk_free(u->wg);
    lk_free(u->wl);
    lk_free(u->icmap);
    u->wf = u->bf = u->wg = u->wl = NULL;
    u->icmap = NULL;
    lk_conv2d_free(&u->conv);
    lk_conv2d_free(&u->conv1);
    lk_bn_free(&u->bn);
    lk_act_free(&u->act);
}
