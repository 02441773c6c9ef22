/* Conv2d -> BatchNorm -> optional SiLU, forward and backward. */
#include <math.h>
#include <string.h>

#include "lk_blocks.h"

float *lk_arena_take(lk_arena *a, size_t count) {
    size_t off = a->used;
    a->used += (count + 15) & ~(size_t)15; /* keep every buffer 64-byte aligned */
    return a->base ? a->base + off : NULL;
}

void lk_arena_note(lk_arena *a, size_t count) {
    if (count > a->max_act) a->max_act = count;
}

lk_status lk_cba_plan(lk_cba *u, const lk_plan_opts *o, int ih, int iw) {
    int pad = (u->k - 1) / 2;
    u->n = o->n;
    u->ih = ih;
    u->iw = iw;
    lk_conv2d_cfg cc = {.n = o->n, .ic = u->ic, .ih = ih, .iw = iw, .oc = u->oc, .kh = u->k,
                        .kw = u->k, .sh = u->stride, .sw = u->stride, .pt = pad, .pl = pad,
                        .pb = pad, .pr = pad, .groups = u->groups, .bias = 0, .train = o->train,
                        .need_dx = u->need_dx};
    if (!o->train) {
        /* Inference: one primitive per unit (BN folded, SiLU as a post-op) instead of
         * three passes over the activation. */
        cc.bias = 1;
        cc.post_silu = u->has_act;
        LK_TRY(lk_conv2d_init(&u->conv, &cc));
        u->oh = u->conv.oh;
        u->ow = u->conv.ow;
        u->eps = o->bn_eps;
        size_t wn = (size_t)u->oc * (size_t)(u->ic / u->groups) * (size_t)u->k * (size_t)u->k;
        u->wf = lk_alloc(wn * sizeof(float));
        u->bf = lk_alloc((size_t)u->oc * sizeof(float));
        if (!u->wf || !u->bf) return LK_FAIL(LK_ERR_NOMEM, "folded weights of a conv-BN unit");
        return LK_OK;
    }
    LK_TRY(lk_conv2d_init(&u->conv, &cc));
    u->oh = u->conv.oh;
    u->ow = u->conv.ow;
    lk_bn_cfg bc = {.n = o->n, .c = u->oc, .h = u->oh, .w = u->ow, .eps = o->bn_eps,
                    .momentum = o->bn_momentum, .mode = o->train ? LK_BN_TRAIN : LK_BN_EVAL,
                    .need_dx = 1};
    LK_TRY(lk_bn_init(&u->bn, &bc));
    if (u->has_act)
        LK_TRY(lk_act_init(&u->act, LK_ACT_SILU, (int64_t)o->n * u->oh * u->ow * u->oc, o->train));
    return LK_OK;
}

void lk_cba_bind(lk_cba *u, lk_arena *a, const lk_plan_opts *o) {
    size_t count = (size_t)u->n * u->oh * u->ow * u->oc;
    lk_arena_note(a, count);
    lk_arena_note(a, (size_t)u->n * u->ih * u->iw * u->ic);
    if (!o->train) {
        /* Inference keeps nothing for a backward: BN and SiLU run in place. */
        u->z = u->a = u->out = lk_arena_take(a, count);
    } else {
        u->z = lk_arena_take(a, count);
        u->a = lk_arena_take(a, count);
        u->out = u->has_act ? lk_arena_take(a, count) : u->a;
    }
    u->mean = o->train ? lk_arena_take(a, (size_t)u->oc) : NULL;
    u->var = o->train ? lk_arena_take(a, (size_t)u->oc) : NULL;
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

lk_status lk_cba_forward(lk_cba *u, const float *x) {
    if (u->wf) {
        cba_fold(u); /* parameters may have changed since the last call */
        return lk_conv2d_forward(&u->conv, u->out, x, u->wf, u->bf, 0);
    }
    LK_TRY(lk_conv2d_forward(&u->conv, u->z, x, u->p.w, NULL, 0));
    LK_TRY(lk_bn_forward(&u->bn, u->a, u->mean, u->var, u->z, u->p.gamma, u->p.beta, u->p.rmean,
                         u->p.rvar));
    if (u->has_act) LK_TRY(lk_act_forward(&u->act, u->out, u->a));
    return LK_OK;
}

lk_status lk_cba_backward(lk_cba *u, float *dx, const float *dy, const float *x,
                          const lk_grad_scratch *g) {
    const float *da = dy;
    if (u->has_act) {
        LK_TRY(lk_act_backward(&u->act, g->s1, dy, u->a, u->out));
        da = g->s1;
    }
    LK_TRY(lk_bn_backward(&u->bn, g->s2, u->p.dgamma, u->p.dbeta, da, u->z, u->mean, u->var,
                          u->p.gamma));
    return lk_conv2d_backward(&u->conv, u->need_dx ? dx : NULL, u->p.dw, NULL, g->s2, x, u->p.w);
}

void lk_cba_free(lk_cba *u) {
    lk_free(u->wf);
    lk_free(u->bf);
    u->wf = u->bf = NULL;
    lk_conv2d_free(&u->conv);
    lk_bn_free(&u->bn);
    lk_act_free(&u->act);
}
