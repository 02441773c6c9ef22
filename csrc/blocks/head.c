/* Classifier heads (see lk_head.h for the exact formulas), forward and backward.
 *
 * The shared channel-attention MLP runs once on the GAP and GMP rows stacked as a
 * [2N, C] batch, so its weight gradient sums both branches by construction. Every
 * gradient reaching F (attention pool, its scores, channel attention, both pools) is
 * accumulated into one [N, S, C] buffer; the small buffers are named by what they hold.
 */
#include <string.h>

#include "lk_head.h"

static const char *const lk_head_names[] = {"linear", "multi_attention", "channel_attention",
                                            "spatial_attention"};

const char *lk_head_kind_name(lk_head_kind kind) {
    return (unsigned)kind < 4 ? lk_head_names[kind] : "?";
}

int lk_head_kind_from_name(const char *name) {
    for (int i = 0; i < 4; i++)
        if (name && strcmp(name, lk_head_names[i]) == 0) return i;
    return -1;
}

static int has_channel(const lk_head *hd) {
    return hd->kind == LK_HEAD_MULTI_ATTENTION || hd->kind == LK_HEAD_CHANNEL_ATTENTION;
}
static int has_spatial1(const lk_head *hd) {
    return hd->kind == LK_HEAD_MULTI_ATTENTION || hd->kind == LK_HEAD_SPATIAL_ATTENTION;
}
static int has_spatial2(const lk_head *hd) { return hd->kind == LK_HEAD_MULTI_ATTENTION; }
static int has_attn_pool(const lk_head *hd) { return hd->kind == LK_HEAD_MULTI_ATTENTION; }

/* A module's parameter gradients are written: it trains and this is not an eval-semantics
 * (explanation) plan. */
static int trains(const lk_head *hd, lk_head_module mod) {
    return hd->trainable[mod] && !hd->eval_grad;
}

static const int lk_sp_ch[LK_SPATIAL_CONVS + 1] = {2, 64, 32, 16, 1};

void lk_head_setup(lk_head *hd, lk_head_kind kind, int c, int k, float dropout) {
    memset(hd, 0, sizeof *hd);
    hd->kind = kind;
    hd->c = c;
    hd->c8 = c / 8 > 0 ? c / 8 : 1;
    hd->k = k;
    hd->dropout = dropout;
    for (int i = 0; i < LK_HM_COUNT; i++) hd->trainable[i] = 1;
}

int lk_head_any_trainable(const lk_head *hd) {
    if (hd->kind == LK_HEAD_LINEAR) return hd->trainable[LK_HM_CLASSIFIER];
    for (int i = LK_HM_CHANNEL; i < LK_HM_COUNT; i++) {
        if (i == LK_HM_CHANNEL && !has_channel(hd)) continue;
        if (i == LK_HM_SPATIAL1 && !has_spatial1(hd)) continue;
        if (i == LK_HM_SPATIAL2 && !has_spatial2(hd)) continue;
        if (i == LK_HM_ATTN_POOL && !has_attn_pool(hd)) continue;
        if (hd->trainable[i]) return 1;
    }
    return 0;
}

/* ---------------------------------------------------------- spatial attention */

static lk_status spatial_plan(lk_spatial_att *s, int n, int h, int w, int bwd, int train_w) {
    for (int i = 0; i < LK_SPATIAL_CONVS; i++) {
        lk_conv2d_cfg cc = {.n = n, .ic = lk_sp_ch[i], .ih = h, .iw = w, .oc = lk_sp_ch[i + 1],
                            .kh = 3, .kw = 3, .sh = 1, .sw = 1, .pt = 1, .pl = 1, .pb = 1,
                            .pr = 1, .groups = 1, .train = bwd, .need_dx = 1,
                            .no_dw = bwd && !train_w};
        LK_TRY(lk_conv2d_init(&s->conv[i], &cc));
        lk_act_kind ak = i + 1 < LK_SPATIAL_CONVS ? LK_ACT_RELU6 : LK_ACT_SIGMOID;
        LK_TRY(lk_act_init(&s->act[i], ak, (int64_t)n * h * w * lk_sp_ch[i + 1], bwd));
    }
    return LK_OK;
}

static void spatial_bind(lk_spatial_att *s, lk_arena *a, size_t npos) {
    for (int i = 0; i < LK_SPATIAL_CONVS; i++) {
        s->z[i] = lk_arena_take(a, npos * (size_t)lk_sp_ch[i + 1]);
        s->a[i] = lk_arena_take(a, npos * (size_t)lk_sp_ch[i + 1]);
    }
}

/* map = s->a[3] [N, H, W] from cs [N, H, W, 2]. */
static lk_status spatial_forward(lk_spatial_att *s, const float *cs, uint64_t version) {
    const float *x = cs;
    for (int i = 0; i < LK_SPATIAL_CONVS; i++) {
        LK_TRY(lk_conv2d_forward(&s->conv[i], s->z[i], x, s->w[i], NULL, version));
        LK_TRY(lk_act_forward(&s->act[i], s->a[i], s->z[i]));
        x = s->a[i];
    }
    return LK_OK;
}

/* dcs [N, H, W, 2] from dmap [N, H, W]; g0/g1 are [N, H, W, 64] ping-pong scratch.
 * dmap is consumed (overwritten). Weight gradients when `train_w`. */
static lk_status spatial_backward(lk_spatial_att *s, float *dcs, float *dmap, const float *cs,
                                  float *g0, float *g1, int train_w) {
    float *dy = dmap;
    for (int i = LK_SPATIAL_CONVS - 1; i >= 0; i--) {
        const float *act_x = i + 1 < LK_SPATIAL_CONVS ? s->z[i] : NULL; /* ReLU6 uses x */
        LK_TRY(lk_act_backward(&s->act[i], dy, dy, act_x, s->a[i]));
        float *dx = i == 0 ? dcs : (dy == g0 ? g1 : g0);
        const float *x = i == 0 ? cs : s->a[i - 1];
        LK_TRY(lk_conv2d_backward(&s->conv[i], dx, train_w ? s->dw[i] : NULL, NULL, dy, x,
                                  s->w[i]));
        dy = dx;
    }
    return LK_OK;
}

static void spatial_free(lk_spatial_att *s) {
    for (int i = 0; i < LK_SPATIAL_CONVS; i++) {
        lk_conv2d_free(&s->conv[i]);
        lk_act_free(&s->act[i]);
    }
}

/* ------------------------------------------------------------------- planning */

lk_status lk_head_plan(lk_head *hd, int n, int h, int w, int train, int grad_in) {
    const int c = hd->c, c8 = hd->c8, t = LK_HEAD_HIDDEN;
    const int64_t npos = (int64_t)n * h * w;
    if (hd->eval_grad) { /* a backward to F only, every module as at inference */
        train = 1;
        grad_in = 1;
    }
    hd->n = n;
    hd->h = h;
    hd->w = w;
    hd->bwd = train && (grad_in || lk_head_any_trainable(hd));
    hd->need_dfeat = train && grad_in;
    const int bwd = hd->bwd;
    if (hd->kind == LK_HEAD_LINEAR) {
        hd->need_dz = hd->need_dfeat;
        LK_TRY(lk_gpool_init(&hd->gap, LK_POOL_AVG, n, c, h, w, hd->need_dfeat));
        return lk_linear_init(&hd->cls, &(lk_linear_cfg){.n = n, .in = c, .out = hd->k, .bias = 1,
                                                    .train = bwd, .need_dx = hd->need_dfeat});
    }
    const int *tr = hd->trainable;
    hd->need_dz = hd->need_dfeat || (has_channel(hd) && tr[LK_HM_CHANNEL]) ||
                  (has_spatial1(hd) && tr[LK_HM_SPATIAL1]) ||
                  (has_spatial2(hd) && tr[LK_HM_SPATIAL2]) ||
                  (has_attn_pool(hd) && tr[LK_HM_ATTN_POOL]);
    const int att_bwd = bwd && hd->need_dz;
    if (has_channel(hd)) {
        LK_TRY(lk_gpool_init(&hd->gmp, LK_POOL_MAX, n, c, h, w, att_bwd));
        LK_TRY(lk_linear_init(&hd->fc1, &(lk_linear_cfg){.n = 2 * n, .in = c, .out = c8, .bias = 1,
                                                         .train = att_bwd, .need_dx = 1}));
        LK_TRY(lk_linear_init(&hd->fc2, &(lk_linear_cfg){.n = 2 * n, .in = c8, .out = c, .bias = 1,
                                                         .train = att_bwd, .need_dx = 1}));
        LK_TRY(lk_act_init(&hd->relu1, LK_ACT_RELU, 2 * (int64_t)n * c8, att_bwd));
        LK_TRY(lk_act_init(&hd->relu2, LK_ACT_RELU, 2 * (int64_t)n * c, att_bwd));
        LK_TRY(lk_act_init(&hd->gate, LK_ACT_SIGMOID, (int64_t)n * c, att_bwd));
        LK_TRY(lk_chmul_init(&hd->chmul, n, c, h, w));
    }
    LK_TRY(lk_gpool_init(&hd->gap, LK_POOL_AVG, n, c, h, w, att_bwd));
    if (has_spatial1(hd))
        LK_TRY(spatial_plan(&hd->sp[0], n, h, w, att_bwd, trains(hd, LK_HM_SPATIAL1)));
    if (has_spatial2(hd)) {
        LK_TRY(spatial_plan(&hd->sp[1], n, h, w, att_bwd, trains(hd, LK_HM_SPATIAL2)));
        LK_TRY(lk_gpool_init(&hd->gap_map, LK_POOL_AVG, n, 1, h, w, att_bwd));
    }
    if (has_attn_pool(hd)) {
        LK_REQUIRE(npos <= 0x7fffffff, "head: %lld positions are too many", (long long)npos);
        LK_TRY(lk_linear_init(&hd->attn, &(lk_linear_cfg){.n = (int)npos, .in = c, .out = 1,
                                                          .train = att_bwd, .need_dx = 1}));
        LK_TRY(lk_softmax_init(&hd->softmax, n, h * w, att_bwd));
    }
    lk_bn_mode bm = !bwd ? LK_BN_EVAL : trains(hd, LK_HM_BN) ? LK_BN_TRAIN : LK_BN_FROZEN;
    lk_bn_cfg bc = {.n = n, .c = c, .h = 1, .w = 1, .eps = LK_HEAD_BN_EPS,
                    .momentum = LK_HEAD_BN_MOMENTUM,
                    .mode = bm, .need_dx = hd->need_dz};
    if (bm == LK_BN_FROZEN && !hd->need_dz) bc.mode = LK_BN_EVAL; /* nothing passes through */
    LK_TRY(lk_bn_init(&hd->bn, &bc));
    LK_TRY(lk_linear_init(&hd->fc, &(lk_linear_cfg){.n = n, .in = c, .out = t, .bias = 1,
                                                    .train = bwd,
                                                    .need_dx = hd->need_dz || tr[LK_HM_BN]}));
    LK_TRY(lk_act_init(&hd->relu_fc, LK_ACT_RELU, (int64_t)n * t, bwd));
    return lk_linear_init(&hd->out, &(lk_linear_cfg){.n = n, .in = t, .out = hd->k, .bias = 1,
                                                     .train = bwd, .need_dx = 1});
}

void lk_head_bind(lk_head *hd, lk_arena *a) {
    const size_t n = (size_t)hd->n, c = (size_t)hd->c, c8 = (size_t)hd->c8,
                 s = (size_t)hd->h * hd->w, t = LK_HEAD_HIDDEN, ns = n * s;
    const int bwd = hd->bwd, att_bwd = hd->bwd && hd->need_dz;
    lk_head_buffers *b = &hd->b;
    memset(b, 0, sizeof *b);
    lk_arena_note(a, ns * c);
    if (hd->kind == LK_HEAD_LINEAR) {
        b->z = lk_arena_take(a, n * c);
        if (bwd) {
            b->drop = lk_arena_take(a, n * c);
            b->mask = (uint8_t *)lk_arena_take(a, n * c / 4 + 1);
            b->ddrop = lk_arena_take(a, n * c);
        }
        return;
    }
    if (has_channel(hd)) {
        b->pool2 = lk_arena_take(a, 2 * n * c);
        b->z1 = lk_arena_take(a, 2 * n * c8);
        b->h1 = lk_arena_take(a, 2 * n * c8);
        b->z2 = lk_arena_take(a, 2 * n * c);
        b->h2 = lk_arena_take(a, 2 * n * c);
        b->apre = lk_arena_take(a, n * c);
        b->att = lk_arena_take(a, n * c);
        b->fc_in = lk_arena_take(a, ns * c);
    }
    if (has_spatial1(hd)) {
        b->cs = lk_arena_take(a, ns * 2);
        b->argmax = (int32_t *)lk_arena_take(a, ns);
        spatial_bind(&hd->sp[0], a, ns);
        b->fs = lk_arena_take(a, ns * c);
    }
    if (has_spatial2(hd)) {
        spatial_bind(&hd->sp[1], a, ns);
        b->g2 = lk_arena_take(a, n);
    }
    b->g1 = lk_arena_take(a, n * c);
    if (has_attn_pool(hd)) {
        b->scores = lk_arena_take(a, ns);
        b->attw = lk_arena_take(a, ns);
        b->pooled_att = lk_arena_take(a, n * c);
    }
    b->z = lk_arena_take(a, n * c);
    b->zb = lk_arena_take(a, n * c);
    b->bn_mean = lk_arena_take(a, c);
    b->bn_var = lk_arena_take(a, c);
    b->y1 = lk_arena_take(a, n * t);
    b->r1 = lk_arena_take(a, n * t);
    if (bwd) {
        b->drop = lk_arena_take(a, n * t);
        b->mask = (uint8_t *)lk_arena_take(a, n * t / 4 + 1);
        b->ddrop = lk_arena_take(a, n * t);
        b->dy1 = lk_arena_take(a, n * t);
        b->dzb = lk_arena_take(a, n * c);
        b->dz = lk_arena_take(a, n * c);
    }
    if (att_bwd) {
        b->dg1 = lk_arena_take(a, n * c);
        b->tmp = lk_arena_take(a, ns * c);
        b->dx_sp = lk_arena_take(a, ns * c);
        if (has_spatial1(hd)) {
            b->dfs = lk_arena_take(a, ns * c);
            b->dmap = lk_arena_take(a, ns);
            b->dcs = lk_arena_take(a, ns * 2);
            b->dcs2 = lk_arena_take(a, ns * 2);
            b->dsp0 = lk_arena_take(a, ns * 64);
            b->dsp1 = lk_arena_take(a, ns * 64);
        }
        if (has_spatial2(hd)) b->dg2 = lk_arena_take(a, n);
        if (has_attn_pool(hd)) {
            b->dattw = lk_arena_take(a, ns);
            b->dscores = lk_arena_take(a, ns);
        }
        if (has_channel(hd)) {
            b->datt = lk_arena_take(a, n * c);
            b->dh2 = lk_arena_take(a, 2 * n * c);
            b->dpool2 = lk_arena_take(a, 2 * n * c);
            b->dh1 = lk_arena_take(a, 2 * n * c8);
        }
    }
}

/* -------------------------------------------------------------------- forward */

lk_status lk_head_forward(lk_head *hd, float *logits, const float *f, uint64_t seed,
                          const lk_versions *v) {
    const int n = hd->n, c = hd->c;
    const int64_t s = (int64_t)hd->h * hd->w, nc = (int64_t)n * c, ns = (int64_t)n * s;
    lk_head_buffers *b = &hd->b;
    if (hd->kind == LK_HEAD_LINEAR) {
        LK_TRY(lk_gpool_forward(&hd->gap, b->z, f));
        const float *feat = b->z;
        if (hd->bwd && !hd->eval_grad) {
            LK_TRY(lk_dropout_forward(b->drop, b->mask, b->z, nc, hd->dropout, seed));
            feat = b->drop;
        }
        return lk_linear_forward(&hd->cls, logits, feat, hd->p.cls_w, hd->p.cls_b);
    }
    const float *x = f; /* input of the spatial attention: Fc or F */
    if (has_channel(hd)) {
        LK_TRY(lk_gpool_forward(&hd->gap, b->pool2, f));
        LK_TRY(lk_gpool_forward(&hd->gmp, b->pool2 + nc, f));
        LK_TRY(lk_linear_forward(&hd->fc1, b->z1, b->pool2, hd->p.w1, hd->p.b1));
        LK_TRY(lk_act_forward(&hd->relu1, b->h1, b->z1));
        LK_TRY(lk_linear_forward(&hd->fc2, b->z2, b->h1, hd->p.w2, hd->p.b2));
        LK_TRY(lk_act_forward(&hd->relu2, b->h2, b->z2));
        LK_TRY(lk_add_forward(b->apre, b->h2, b->h2 + nc, nc));
        LK_TRY(lk_act_forward(&hd->gate, b->att, b->apre));
        LK_TRY(lk_chmul_forward(&hd->chmul, b->fc_in, f, b->att));
        x = b->fc_in;
    }
    if (has_spatial1(hd)) {
        LK_TRY(lk_chanstat_forward(b->cs, b->argmax, x, ns, c));
        const uint64_t ver1 = lk_unit_version(v, hd->trainable[LK_HM_SPATIAL1]);
        LK_TRY(spatial_forward(&hd->sp[0], b->cs, ver1));
        LK_TRY(lk_spatial_mul_forward(b->fs, x, hd->sp[0].a[3], ns, c));
        LK_TRY(lk_gpool_forward(&hd->gap, b->g1, b->fs));
    } else {
        LK_TRY(lk_gpool_forward(&hd->gap, b->g1, x));
    }
    if (has_spatial2(hd)) {
        const uint64_t ver2 = lk_unit_version(v, hd->trainable[LK_HM_SPATIAL2]);
        LK_TRY(spatial_forward(&hd->sp[1], b->cs, ver2));
        LK_TRY(lk_gpool_forward(&hd->gap_map, b->g2, hd->sp[1].a[3]));
    }
    if (has_attn_pool(hd)) {
        LK_TRY(lk_linear_forward(&hd->attn, b->scores, f, hd->p.ap, NULL));
        LK_TRY(lk_softmax_forward(&hd->softmax, b->attw, b->scores));
        LK_TRY(lk_weighted_sum_forward(b->pooled_att, f, b->attw, n, s, c));
    }
    /* z = (g1 + g2) / 2 + p (each term when the head has it) */
    for (int i = 0; i < n; i++)
        for (int j = 0; j < c; j++) {
            const int64_t o = (int64_t)i * c + j;
            float v = b->g2 ? 0.5f * (b->g1[o] + b->g2[i]) : b->g1[o];
            b->z[o] = b->pooled_att ? v + b->pooled_att[o] : v;
        }
    LK_TRY(lk_bn_forward(&hd->bn, b->zb, b->bn_mean, b->bn_var, b->z, hd->p.bn_g, hd->p.bn_b,
                         hd->p.bn_rm, hd->p.bn_rv));
    LK_TRY(lk_linear_forward(&hd->fc, b->y1, b->zb, hd->p.fc_w, hd->p.fc_b));
    LK_TRY(lk_act_forward(&hd->relu_fc, b->r1, b->y1));
    const float *feat = b->r1;
    if (hd->bwd && !hd->eval_grad) {
        LK_TRY(lk_dropout_forward(b->drop, b->mask, b->r1, (int64_t)n * LK_HEAD_HIDDEN,
                                  hd->dropout, seed));
        feat = b->drop;
    }
    return lk_linear_forward(&hd->out, logits, feat, hd->p.out_w, hd->p.out_b);
}

/* ------------------------------------------------------------------- backward */

/* dst = src (first contribution) or dst += src. */
static lk_status accumulate(float *dst, const float *src, int64_t count, int *started) {
    if (*started) return lk_add_inplace(dst, src, count);
    memcpy(dst, src, sizeof(float) * (size_t)count);
    *started = 1;
    return LK_OK;
}

/* The weight-gradient pointer of a module, or NULL when it is frozen. */
#define LK_IF_TRAIN(hd, mod, ptr) (trains(hd, mod) ? (ptr) : NULL)

lk_status lk_head_backward(lk_head *hd, float *dfeat, const float *dlogits, const float *f) {
    LK_REQUIRE(hd->bwd, "head backward: planned without a backward");
    LK_REQUIRE(dfeat || !hd->need_dfeat, "head backward: dfeat is required");
    const int n = hd->n, c = hd->c, t = LK_HEAD_HIDDEN;
    const int64_t s = (int64_t)hd->h * hd->w, nc = (int64_t)n * c, ns = (int64_t)n * s,
                  nsc = nc * s;
    lk_head_buffers *b = &hd->b;
    const lk_head_params *p = &hd->p;
    const int need_df = hd->need_dfeat;
    if (hd->kind == LK_HEAD_LINEAR) {
        LK_TRY(lk_linear_backward(&hd->cls, need_df ? b->ddrop : NULL,
                                  LK_IF_TRAIN(hd, LK_HM_CLASSIFIER, p->cls_dw),
                                  LK_IF_TRAIN(hd, LK_HM_CLASSIFIER, p->cls_db), dlogits, b->drop,
                                  p->cls_w));
        if (!need_df) return LK_OK;
        if (!hd->eval_grad) /* eval semantics: dropout is the identity */
            LK_TRY(lk_dropout_backward(b->ddrop, b->ddrop, b->mask, nc, hd->dropout));
        return lk_gpool_backward(&hd->gap, dfeat, b->ddrop);
    }
    /* MLP tail: out -> dropout -> ReLU -> fc -> BatchNorm1d. */
    LK_TRY(lk_linear_backward(&hd->out, b->ddrop, LK_IF_TRAIN(hd, LK_HM_OUT, p->out_dw),
                              LK_IF_TRAIN(hd, LK_HM_OUT, p->out_db), dlogits, b->drop, p->out_w));
    if (hd->eval_grad) /* dropout is the identity */
        memcpy(b->dy1, b->ddrop, sizeof(float) * (size_t)n * t);
    else
        LK_TRY(lk_dropout_backward(b->dy1, b->ddrop, b->mask, (int64_t)n * t, hd->dropout));
    LK_TRY(lk_act_backward(&hd->relu_fc, b->dy1, b->dy1, b->y1, b->r1));
    const int train_bn = trains(hd, LK_HM_BN);
    const int need_dzb = hd->need_dz || train_bn;
    LK_TRY(lk_linear_backward(&hd->fc, need_dzb ? b->dzb : NULL, LK_IF_TRAIN(hd, LK_HM_FC, p->fc_dw),
                              LK_IF_TRAIN(hd, LK_HM_FC, p->fc_db), b->dy1, b->zb, p->fc_w));
    if (!need_dzb) return LK_OK;
    LK_TRY(lk_bn_backward(&hd->bn, hd->need_dz ? b->dz : NULL, train_bn ? p->bn_dg : NULL,
                          train_bn ? p->bn_db : NULL, b->dzb, b->z,
                          train_bn ? b->bn_mean : p->bn_rm, train_bn ? b->bn_var : p->bn_rv,
                          p->bn_g));
    if (!hd->need_dz) return LK_OK;

    /* Attention part: dz reaches p, g1 and g2. */
    int started = 0; /* dfeat holds a first contribution */
    if (has_attn_pool(hd)) { /* p = sum_s softmax(F . w)_s F_s */
        LK_TRY(lk_weighted_sum_backward(need_df ? dfeat : NULL, b->dattw, b->dz, f, b->attw, n, s,
                                        c, 0));
        started = need_df;
        LK_TRY(lk_softmax_backward(&hd->softmax, b->dscores, b->dattw, b->attw));
        LK_TRY(lk_linear_backward(&hd->attn, need_df ? b->tmp : NULL,
                                  LK_IF_TRAIN(hd, LK_HM_ATTN_POOL, p->dap), NULL, b->dscores, f,
                                  p->ap));
        if (need_df) LK_TRY(accumulate(dfeat, b->tmp, nsc, &started));
    }
    /* g = (g1 + g2) / 2: dg1 = dz / 2 and dg2[i] = sum_c dz / 2; without S2, g = g1. */
    const float *dg1 = b->dz;
    if (has_spatial2(hd)) {
        for (int64_t i = 0; i < nc; i++) b->dg1[i] = 0.5f * b->dz[i];
        dg1 = b->dg1;
        for (int i = 0; i < n; i++) {
            double acc = 0.0;
            for (int j = 0; j < c; j++) acc += b->dz[(int64_t)i * c + j];
            b->dg2[i] = (float)(0.5 * acc);
        }
    }
    const float *x = has_channel(hd) ? b->fc_in : f; /* the spatial input X */
    if (has_spatial1(hd)) {
        /* g1 = GAP(S1(cs) * X), cs = chanstat(X) */
        LK_TRY(lk_gpool_backward(&hd->gap, b->dfs, dg1));
        LK_TRY(lk_spatial_mul_backward(b->dx_sp, b->dmap, b->dfs, x, hd->sp[0].a[3], ns, c));
        LK_TRY(spatial_backward(&hd->sp[0], b->dcs, b->dmap, b->cs, b->dsp0, b->dsp1,
                                trains(hd, LK_HM_SPATIAL1)));
        if (has_spatial2(hd)) { /* g2 = GAP(S2(cs)) */
            LK_TRY(lk_gpool_backward(&hd->gap_map, b->dmap, b->dg2));
            LK_TRY(spatial_backward(&hd->sp[1], b->dcs2, b->dmap, b->cs, b->dsp0, b->dsp1,
                                    trains(hd, LK_HM_SPATIAL2)));
            LK_TRY(lk_add_inplace(b->dcs, b->dcs2, 2 * ns));
        }
        LK_TRY(lk_chanstat_backward(b->dfs, b->dcs, b->argmax, ns, c));
        LK_TRY(lk_add_inplace(b->dx_sp, b->dfs, nsc));
    } else {
        LK_TRY(lk_gpool_backward(&hd->gap, b->dx_sp, dg1));
    }
    if (!has_channel(hd)) {
        if (need_df) LK_TRY(accumulate(dfeat, b->dx_sp, nsc, &started));
        return LK_OK;
    }
    /* Fc = att * F: d att = sum_s dX * F, dF += dX * att. */
    LK_TRY(lk_chmul_backward(&hd->chmul, need_df ? b->tmp : NULL, b->datt, b->dx_sp, f, b->att));
    if (need_df) LK_TRY(accumulate(dfeat, b->tmp, nsc, &started));
    LK_TRY(lk_act_backward(&hd->gate, b->datt, b->datt, NULL, b->att));
    memcpy(b->dh2, b->datt, sizeof(float) * (size_t)nc); /* apre = h2[:N] + h2[N:] */
    memcpy(b->dh2 + nc, b->datt, sizeof(float) * (size_t)nc);
    LK_TRY(lk_act_backward(&hd->relu2, b->dh2, b->dh2, b->z2, b->h2));
    LK_TRY(lk_linear_backward(&hd->fc2, b->dh1, LK_IF_TRAIN(hd, LK_HM_CHANNEL, p->dw2),
                              LK_IF_TRAIN(hd, LK_HM_CHANNEL, p->db2), b->dh2, b->h1, p->w2));
    LK_TRY(lk_act_backward(&hd->relu1, b->dh1, b->dh1, b->z1, b->h1));
    LK_TRY(lk_linear_backward(&hd->fc1, need_df ? b->dpool2 : NULL,
                              LK_IF_TRAIN(hd, LK_HM_CHANNEL, p->dw1),
                              LK_IF_TRAIN(hd, LK_HM_CHANNEL, p->db1), b->dh1, b->pool2, p->w1));
    if (!need_df) return LK_OK;
    LK_TRY(lk_gpool_backward(&hd->gap, b->tmp, b->dpool2));
    LK_TRY(accumulate(dfeat, b->tmp, nsc, &started));
    LK_TRY(lk_gpool_backward(&hd->gmp, b->tmp, b->dpool2 + nc));
    return accumulate(dfeat, b->tmp, nsc, &started);
}

void lk_head_free(lk_head *hd) {
    lk_gpool_free(&hd->gap);
    lk_gpool_free(&hd->gmp);
    lk_gpool_free(&hd->gap_map);
    lk_linear_free(&hd->fc1);
    lk_linear_free(&hd->fc2);
    lk_linear_free(&hd->attn);
    lk_linear_free(&hd->fc);
    lk_linear_free(&hd->out);
    lk_linear_free(&hd->cls);
    lk_act_free(&hd->relu1);
    lk_act_free(&hd->relu2);
    lk_act_free(&hd->gate);
    lk_act_free(&hd->relu_fc);
    lk_chmul_free(&hd->chmul);
    lk_softmax_free(&hd->softmax);
    lk_bn_free(&hd->bn);
    for (int i = 0; i < 2; i++) spatial_free(&hd->sp[i]);
}
