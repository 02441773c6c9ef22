/* MBConv and FusedMBConv blocks (torchvision's layout): a short chain of
 * conv-BN-act units, an optional squeeze-and-excitation after the depthwise
 * unit, and a residual with stochastic depth when stride 1 and in == out.
 * The two kinds differ only in which units exist, so they share this code. */
#include <string.h>

#include "lk_blocks.h"

static int block_has_sd(const lk_block *b) { return b->train && b->cfg.residual && b->cfg.sd_prob > 0.f; }

/* Input of unit i: the block input, the previous unit's output or the SE output. */
static const float *unit_input(const lk_block *b, int i, const float *x) {
    if (i == b->first) return x;
    return b->se_after == i - 1 ? b->se.out : b->u[i - 1].out;
}

lk_status lk_block_plan(lk_block *b, const lk_block_cfg *cfg, const lk_plan_opts *o, int ih,
                        int iw, int need_dx) {
    b->cfg = *cfg;
    b->n = o->n;
    b->ih = ih;
    b->iw = iw;
    b->train = o->train;
    int h = ih, w = iw;
    for (int i = b->first; i < b->nu; i++) {
        b->u[i].need_dx = i == b->first ? need_dx : 1;
        LK_TRY(lk_cba_plan(&b->u[i], o, h, w));
        h = b->u[i].oh;
        w = b->u[i].ow;
        if (i == b->se_after) LK_TRY(lk_se_plan(&b->se, o, h, w));
    }
    b->oh = h;
    b->ow = w;
    return LK_OK;
}

void lk_block_bind(lk_block *b, lk_arena *a, const lk_plan_opts *o) {
    for (int i = b->first; i < b->nu; i++) {
        lk_cba_bind(&b->u[i], a, o);
        if (i == b->se_after) lk_se_bind(&b->se, a, o);
    }
    size_t count = (size_t)b->n * b->oh * b->ow * b->cfg.out;
    if (b->cfg.residual) {
        b->out = lk_arena_take(a, count);
        b->sd = block_has_sd(b) ? lk_arena_take(a, count) : NULL;
        b->keep = block_has_sd(b) ? (uint8_t *)lk_arena_take(a, (size_t)b->n / 4 + 1) : NULL;
    } else {
        b->out = b->u[b->nu - 1].out;
    }
}

lk_status lk_block_forward(lk_block *b, const float *x, uint64_t seed) {
    const float *h = x;
    for (int i = b->first; i < b->nu; i++) {
        LK_TRY(lk_cba_forward(&b->u[i], h));
        h = b->u[i].out;
        if (i == b->se_after) {
            LK_TRY(lk_se_forward(&b->se, h));
            h = b->se.out;
        }
    }
    if (!b->cfg.residual) return LK_OK; /* b->out aliases the last unit's output */
    int64_t per = (int64_t)b->oh * b->ow * b->cfg.out;
    if (block_has_sd(b)) {
        LK_TRY(lk_stochdepth_forward(b->sd, b->keep, h, b->n, per, b->cfg.sd_prob, seed));
        h = b->sd;
    }
    return lk_add_forward(b->out, h, x, per * b->n);
}

lk_status lk_block_backward(lk_block *b, float *dx, const float *dy, const float *x,
                            const lk_grad_scratch *g) {
    LK_REQUIRE(dx != dy, "block backward: dx must not alias dy");
    int64_t per = (int64_t)b->oh * b->ow * b->cfg.out;
    const float *cur = dy;
    if (block_has_sd(b)) {
        LK_TRY(lk_stochdepth_backward(g->t1, dy, b->keep, b->n, per, b->cfg.sd_prob));
        cur = g->t1;
    }
    for (int i = b->nu - 1; i >= b->first; i--) {
        if (i == b->se_after) {
            float *o = cur == g->t1 ? g->t2 : g->t1;
            LK_TRY(lk_se_backward(&b->se, o, cur, b->u[i].out, g));
            cur = o;
        }
        float *o = i == b->first ? dx : (cur == g->t1 ? g->t2 : g->t1);
        LK_TRY(lk_cba_backward(&b->u[i], o, cur, unit_input(b, i, x), g));
        cur = o;
    }
    if (b->cfg.residual && b->u[b->first].need_dx)
        LK_TRY(lk_add_inplace(dx, dy, per * b->n));
    return LK_OK;
}

void lk_block_free(lk_block *b) {
    for (int i = 0; i < 3; i++) lk_cba_free(&b->u[i]);
    lk_se_free(&b->se);
}
