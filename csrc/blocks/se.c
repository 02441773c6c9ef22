/* Squeeze-and-excitation: out = x * sigmoid(fc2(silu(fc1(GAP(x))))). The two
 * 1x1 convolutions act on [N, 1, 1, C] tensors. It has no BatchNorm, so its
 * forward is the same in every mode; FROZEN computes no parameter gradients. */
#include <string.h>

#include "lk_blocks.h"

lk_status lk_se_plan(lk_se *s, const lk_plan_opts *o, lk_mode mode, int h, int w) {
    const int bwd = mode != LK_MODE_EVAL;
    s->mode = mode;
    s->n = o->n;
    s->h = h;
    s->w = w;
    /* Its backward is a broadcast add into dx (lk_se_backward), not the pool's own. */
    LK_TRY(lk_gpool_init(&s->pool, LK_POOL_AVG, o->n, s->c, h, w, 0));
    lk_conv2d_cfg c1 = {.n = o->n, .ic = s->c, .ih = 1, .iw = 1, .oc = s->sq, .kh = 1, .kw = 1,
                        .sh = 1, .sw = 1, .groups = 1, .bias = 1, .train = bwd,
                        .need_dx = 1, .no_dw = mode == LK_MODE_FROZEN};
    LK_TRY(lk_conv2d_init(&s->fc1, &c1));
    lk_conv2d_cfg c2 = c1;
    c2.ic = s->sq;
    c2.oc = s->c;
    LK_TRY(lk_conv2d_init(&s->fc2, &c2));
    LK_TRY(lk_act_init(&s->act1, LK_ACT_SILU, (int64_t)o->n * s->sq, bwd));
    LK_TRY(lk_act_init(&s->act2, LK_ACT_SIGMOID, (int64_t)o->n * s->c, bwd));
    LK_TRY(lk_chmul_init(&s->mul, o->n, s->c, h, w));
    return LK_OK;
}

void lk_se_bind(lk_se *s, lk_arena *a) {
    size_t nc = (size_t)s->n * s->c, nq = (size_t)s->n * s->sq;
    s->pooled = lk_arena_take(a, nc);
    s->z1 = lk_arena_take(a, nq);
    s->a1 = lk_arena_take(a, nq);
    s->z2 = lk_arena_take(a, nc);
    s->gate = lk_arena_take(a, nc);
    /* out is set by the block: in EVAL its input itself (the gate is applied in place,
     * nothing reads the ungated values again), with a backward the model's shared
     * buffer (lk_block_share): read once by the projection in forward and recomputed
     * for its weight gradient. */
    s->out = NULL;
    lk_arena_note(a, nc * s->h * s->w);
    s->dsmall = s->mode != LK_MODE_EVAL ? lk_arena_take(a, 4 * (nc > nq ? nc : nq)) : NULL;
}

lk_status lk_se_forward(lk_se *s, const float *x, uint64_t version) {
    LK_TRY(lk_gpool_forward(&s->pool, s->pooled, x));
    return lk_se_forward_pooled(s, version);
}

lk_status lk_se_forward_pooled(lk_se *s, uint64_t version) {
    LK_TRY(lk_conv2d_forward(&s->fc1, s->z1, s->pooled, s->p.w1, s->p.b1, version));
    LK_TRY(lk_act_forward(&s->act1, s->a1, s->z1));
    LK_TRY(lk_conv2d_forward(&s->fc2, s->z2, s->a1, s->p.w2, s->p.b2, version));
    return lk_act_forward(&s->act2, s->gate, s->z2);
}

lk_status lk_se_apply_gate(lk_se *s, const float *x) {
    return lk_chmul_forward(&s->mul, s->out, x, s->gate);
}

/* Everything of the backward but dx itself: the parameter gradients and d pooled
 * (returned, [N, C]); dx = dy * gate alongside when dx is given (it may alias dy). */
static lk_status se_backward_small(lk_se *s, float *dx, const float *dy, const float *x,
                                   float **dpool_out) {
    LK_REQUIRE(s->mode != LK_MODE_EVAL, "squeeze-excitation: no backward in EVAL mode");
    const int train = s->mode == LK_MODE_TRAIN;
    size_t big = (size_t)s->n * (s->c > s->sq ? s->c : s->sq);
    float *dgate = s->dsmall, *dz2 = s->dsmall + big, *da1 = s->dsmall + 2 * big,
          *dpool = s->dsmall + 3 * big;
    LK_TRY(lk_chmul_backward(&s->mul, dx, dgate, dy, x, s->gate));
    LK_TRY(lk_act_backward(&s->act2, dz2, dgate, s->z2, s->gate));
    LK_TRY(lk_conv2d_backward(&s->fc2, da1, train ? s->p.dw2 : NULL, train ? s->p.db2 : NULL, dz2,
                              s->a1, s->p.w2));
    LK_TRY(lk_act_backward(&s->act1, da1, da1, s->z1, s->a1));
    LK_TRY(lk_conv2d_backward(&s->fc1, dpool, train ? s->p.dw1 : NULL, train ? s->p.db1 : NULL,
                              da1, s->pooled, s->p.w1));
    *dpool_out = dpool;
    return LK_OK;
}

/* The average pool's backward spreads d pooled evenly over the positions. */
static float se_pool_scale(const lk_se *s) { return 1.0f / (float)((int64_t)s->h * s->w); }

/* dx [N, H, W, C] = dy * gate + GAP^T(d pooled): the pooled path is added into dx
 * directly, so no activation-sized scratch is needed (dx may alias dy). */
lk_status lk_se_backward(lk_se *s, float *dx, const float *dy, const float *x) {
    float *dpool = NULL;
    LK_TRY(se_backward_small(s, dx, dy, x, &dpool));
    return lk_add_channels(dx, dpool, s->n, (int64_t)s->h * s->w, s->c, se_pool_scale(s));
}

lk_status lk_se_backward_gate(lk_se *s, lk_bn_gate *gate, const float *dy, const float *x) {
    LK_REQUIRE(gate, "squeeze-excitation backward: gate is NULL");
    float *dpool = NULL;
    LK_TRY(se_backward_small(s, NULL, dy, x, &dpool));
    /* The same product lk_add_channels forms at every position, formed once. */
    const float scale = se_pool_scale(s);
    for (size_t i = 0; i < (size_t)s->n * s->c; i++) dpool[i] = scale * dpool[i];
    *gate = (lk_bn_gate){.scale = s->gate, .shift = dpool};
    return LK_OK;
}

void lk_se_free(lk_se *s) {
    lk_gpool_free(&s->pool);
    lk_conv2d_free(&s->fc1);
    lk_conv2d_free(&s->fc2);
    lk_act_free(&s->act1);
    lk_act_free(&s->act2);
    lk_chmul_free(&s->mul);
}
