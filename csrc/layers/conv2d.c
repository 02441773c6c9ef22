/* conv2d: forward, backward-data and backward-weights on oneDNN.
 *
 * Activations are NHWC; the user's weights stay in PyTorch's OIHW (GOIHW for
 * grouped/depthwise) and are reordered into whatever blocked layout oneDNN
 * picks for each direction (format_tag_any), and the weight gradient is
 * reordered back. Eval callers pass a weight version so an unchanged weight
 * tensor is reordered only once.
 */
#include <string.h>

#include "lk_dwconv.h"
#include "lk_layers.h"

static lk_status conv_weights_md(dnnl_memory_desc_t *md, const lk_conv2d_cfg *c,
                                 dnnl_format_tag_t tag) {
    if (c->groups == 1) return lk_md4(md, c->oc, c->ic, c->kh, c->kw, tag);
    const int64_t dims[5] = {c->groups, c->oc / c->groups, c->ic / c->groups, c->kh, c->kw};
    return lk_md(md, 5, dims, tag == dnnl_format_tag_any ? tag : dnnl_goihw);
}

static lk_status conv_check(const lk_conv2d_cfg *c, int *oh, int *ow) {
    LK_REQUIRE(c->n > 0 && c->ic > 0 && c->ih > 0 && c->iw > 0 && c->oc > 0,
               "conv2d: sizes must be positive (n=%d ic=%d ih=%d iw=%d oc=%d)", c->n, c->ic,
               c->ih, c->iw, c->oc);
    LK_REQUIRE(c->kh > 0 && c->kw > 0 && c->sh > 0 && c->sw > 0,
               "conv2d: kernel %dx%d and stride %dx%d must be positive", c->kh, c->kw, c->sh,
               c->sw);
    LK_REQUIRE(c->pt >= 0 && c->pl >= 0 && c->pb >= 0 && c->pr >= 0,
               "conv2d: padding must be >= 0");
    LK_REQUIRE(c->groups >= 1 && c->ic % c->groups == 0 && c->oc % c->groups == 0,
               "conv2d: groups=%d must divide in_channels=%d and out_channels=%d", c->groups,
               c->ic, c->oc);
    LK_REQUIRE(!(c->post_silu && c->train),
               "conv2d: the fused SiLU post-op is for inference only (train=1 given)");
    *oh = (c->ih + c->pt + c->pb - c->kh) / c->sh + 1;
    *ow = (c->iw + c->pl + c->pr - c->kw) / c->sw + 1;
    LK_REQUIRE(c->ih + c->pt + c->pb >= c->kh && c->iw + c->pl + c->pr >= c->kw,
               "conv2d: kernel %dx%d larger than padded input %dx%d", c->kh, c->kw,
               c->ih + c->pt + c->pb, c->iw + c->pl + c->pr);
    return LK_OK;
}

/* Depthwise weight gradient: our NHWC kernel or oneDNN's? oneDNN's jit_dw
 * takes only 3-wide kernels and mostly wins there (ours 0.4-1.8x its speed
 * on the B3 3x3 shapes); wider ones fall to its generic grouped JIT, which
 * ours beats 2-10x on every B3 5x5 shape (bench_layers dwbw_*, batch 16,
 * 1-2 threads, AVX2 and AVX-512 oneDNN). */
static int conv_dw_custom(const lk_conv2d_cfg *c) {
    if (!(c->train && c->groups == c->ic && c->ic == c->oc)) return 0;
    switch (lk_dwconv_get_policy()) {
    case LK_DW_BWD_W_ONEDNN: return 0;
    case LK_DW_BWD_W_CUSTOM: return 1;
    default: return c->kw > 3 && lk_dwconv_bwd_weights_vectorised(c->kw);
    }
}

/* Create every primitive, reorder and memory object; descriptors are freed at `done`. */
lk_status lk_conv2d_init(lk_conv2d *L, const lk_conv2d_cfg *cfg) {
    memset(L, 0, sizeof *L);
    L->cfg = *cfg;
    const lk_conv2d_cfg *c = &L->cfg;
    LK_TRY(conv_check(c, &L->oh, &L->ow));

    dnnl_engine_t eng = NULL;
    LK_TRY(lk_engine(&eng));
    lk_status st = LK_OK;
    dnnl_memory_desc_t x_md = NULL, y_md = NULL, w_any = NULL, w_user = NULL, b_md = NULL;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t pd = NULL;
    const dnnl_dims_t strides = {c->sh, c->sw}, dil = {0, 0};
    const dnnl_dims_t pad_l = {c->pt, c->pl}, pad_r = {c->pb, c->pr};

    LK_TRY_GOTO(lk_md4(&x_md, c->n, c->ic, c->ih, c->iw, dnnl_nhwc));       /* [N, IH, IW, IC] */
    LK_TRY_GOTO(lk_md4(&y_md, c->n, c->oc, L->oh, L->ow, dnnl_nhwc));       /* [N, OH, OW, OC] */
    LK_TRY_GOTO(conv_weights_md(&w_any, c, dnnl_format_tag_any));
    LK_TRY_GOTO(conv_weights_md(&w_user, c, dnnl_oihw));                     /* [OC, IC/G, KH, KW] */
    if (c->bias) LK_TRY_GOTO(lk_md1(&b_md, c->oc));                          /* [OC] */
    LK_TRY_GOTO(lk_attr(&attr));
    if (c->post_silu) {
        /* Inference only (checked in conv_check): training needs the pre-activation. */
        dnnl_post_ops_t po = NULL;
        LK_DNNL_GOTO(dnnl_post_ops_create(&po));
        dnnl_status_t ps = dnnl_post_ops_append_eltwise(po, dnnl_eltwise_swish, 1.0f, 0.0f);
        if (ps == dnnl_success) ps = dnnl_primitive_attr_set_post_ops(attr, po);
        dnnl_post_ops_destroy(po);
        if (ps != dnnl_success) {
            st = LK_FAIL(LK_ERR_DNNL, "oneDNN call dnnl_post_ops_append_eltwise / "
                         "dnnl_primitive_attr_set_post_ops (SiLU) failed: %s",
                         lk_dnnl_status_str(ps));
            goto done;
        }
    }

    LK_DNNL_GOTO(dnnl_convolution_forward_primitive_desc_create(
        &pd, eng, c->train ? dnnl_forward_training : dnnl_forward_inference,
        dnnl_convolution_direct, x_md, w_any, b_md, y_md, strides, dil, pad_l, pad_r, attr));
    LK_TRY_GOTO(lk_prim_init(&L->fwd, &pd));
    pd = NULL;
    const_dnnl_memory_desc_t w_fwd_md = lk_prim_md(&L->fwd, dnnl_query_weights_md, 0);
    LK_TRY_GOTO(lk_reorder_init(&L->w_to_fwd, &L->need_w_fwd, w_user, w_fwd_md));
    L->w_to_fwd.weights = 1;
    if (L->need_w_fwd) {
        L->w_fwd = lk_alloc(dnnl_memory_desc_get_size(w_fwd_md));
        if (!L->w_fwd) { st = LK_FAIL(LK_ERR_NOMEM, "conv2d: weight buffer"); goto done; }
    }
    LK_TRY_GOTO(lk_mem(&L->m_x, x_md));
    LK_TRY_GOTO(lk_mem(&L->m_y, y_md));
    LK_TRY_GOTO(lk_mem(&L->m_w_user, w_user));
    LK_TRY_GOTO(lk_mem(&L->m_w_fwd, w_fwd_md));
    if (c->bias) LK_TRY_GOTO(lk_mem(&L->m_b, b_md));

    if (c->train) {
        if (c->need_dx) {
            LK_DNNL_GOTO(dnnl_convolution_backward_data_primitive_desc_create(
                &pd, eng, dnnl_convolution_direct, x_md, w_any, y_md, strides, dil, pad_l, pad_r,
                L->fwd.pd, attr));
            LK_TRY_GOTO(lk_prim_init(&L->bwd_d, &pd));
            pd = NULL;
            const_dnnl_memory_desc_t w_bd_md = lk_prim_md(&L->bwd_d, dnnl_query_weights_md, 0);
            LK_TRY_GOTO(lk_reorder_init(&L->w_to_bwd_d, &L->need_w_bwd_d, w_user, w_bd_md));
            L->w_to_bwd_d.weights = 1;
            if (L->need_w_bwd_d) {
                L->w_bwd_d = lk_alloc(dnnl_memory_desc_get_size(w_bd_md));
                if (!L->w_bwd_d) { st = LK_FAIL(LK_ERR_NOMEM, "conv2d: weight buffer"); goto done; }
            }
            LK_TRY_GOTO(lk_mem(&L->m_w_bwd_d, w_bd_md));
            LK_TRY_GOTO(lk_mem(&L->m_dx, x_md));
        }
        LK_TRY_GOTO(lk_mem(&L->m_dy, y_md));
        L->dw_custom = !c->no_dw && conv_dw_custom(c);
        if (!L->dw_custom && !c->no_dw) {
            LK_DNNL_GOTO(dnnl_convolution_backward_weights_primitive_desc_create(
                &pd, eng, dnnl_convolution_direct, x_md, w_any, b_md, y_md, strides, dil, pad_l,
                pad_r, L->fwd.pd, attr));
            LK_TRY_GOTO(lk_prim_init(&L->bwd_w, &pd));
            pd = NULL;
            const_dnnl_memory_desc_t dw_md = lk_prim_md(&L->bwd_w, dnnl_query_diff_weights_md, 0);
            LK_TRY_GOTO(lk_reorder_init(&L->dw_to_user, &L->need_dw_user, dw_md, w_user));
            L->dw_to_user.weights = 1;
            if (L->need_dw_user) {
                L->dw_int = lk_alloc(dnnl_memory_desc_get_size(dw_md));
                if (!L->dw_int) { st = LK_FAIL(LK_ERR_NOMEM, "conv2d: weight-gradient buffer"); goto done; }
            }
            LK_TRY_GOTO(lk_mem(&L->m_dw_int, dw_md));
            LK_TRY_GOTO(lk_mem(&L->m_dw_user, w_user));
            if (c->bias) LK_TRY_GOTO(lk_mem(&L->m_db, b_md));
        }
    }
done:
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (attr) dnnl_primitive_attr_destroy(attr);
    if (x_md) dnnl_memory_desc_destroy(x_md);
    if (y_md) dnnl_memory_desc_destroy(y_md);
    if (w_any) dnnl_memory_desc_destroy(w_any);
    if (w_user) dnnl_memory_desc_destroy(w_user);
    if (b_md) dnnl_memory_desc_destroy(b_md);
    return st;
}

/* Reorder user weights into a primitive's layout (or use them directly). */
static lk_status conv_weights_to(lk_prim *reorder, int needed, dnnl_memory_t m_user,
                                 dnnl_memory_t m_int, float *buf, const float *w) {
    if (!needed) return lk_mem_set(m_int, w);
    LK_TRY(lk_mem_set(m_user, w));
    LK_TRY(lk_mem_set(m_int, buf));
    const dnnl_exec_arg_t args[] = {{DNNL_ARG_FROM, m_user}, {DNNL_ARG_TO, m_int}};
    return lk_prim_exec(reorder, 2, args);
}

lk_status lk_conv2d_forward(lk_conv2d *L, float *y, const float *x, const float *w, const float *b,
                            uint64_t w_version) {
    LK_REQUIRE(L->fwd.p, "conv2d: layer not initialised");
    LK_REQUIRE(y && x && w && (b || !L->cfg.bias), "conv2d forward: NULL argument");
    int fresh = w_version != 0 && L->w_cached == w && L->w_cached_version == w_version;
    if (!fresh || !L->need_w_fwd) {
        LK_TRY(conv_weights_to(&L->w_to_fwd, L->need_w_fwd, L->m_w_user, L->m_w_fwd, L->w_fwd, w));
        L->w_cached = w;
        L->w_cached_version = w_version;
    }
    LK_TRY(lk_mem_set(L->m_x, x));
    LK_TRY(lk_mem_set(L->m_y, y));
    dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, L->m_x}, {DNNL_ARG_WEIGHTS, L->m_w_fwd},
                               {DNNL_ARG_DST, L->m_y}};
    int n = 3;
    if (L->cfg.bias) {
        LK_TRY(lk_mem_set(L->m_b, b));
        args[n++] = (dnnl_exec_arg_t){DNNL_ARG_BIAS, L->m_b};
    }
    return lk_prim_exec(&L->fwd, n, args);
}

lk_status lk_conv2d_backward(lk_conv2d *L, float *dx, float *dw, float *db, const float *dy,
                             const float *x, const float *w) {
    LK_REQUIRE(L->cfg.train, "conv2d backward: layer was planned without backward (train=0)");
    LK_REQUIRE(dy, "conv2d backward: dy is NULL");
    if (dx) {
        LK_REQUIRE(L->bwd_d.p, "conv2d backward: planned without the input gradient (need_dx=0)");
        LK_REQUIRE(w, "conv2d backward: w is NULL");
        /* The forward's reordered copy is reusable when both layouts agree and
         * it was made from this very tensor in the preceding forward. */
        int reuse = L->need_w_fwd && L->w_cached == w &&
                    dnnl_memory_desc_equal(lk_prim_md(&L->bwd_d, dnnl_query_weights_md, 0),
                                           lk_prim_md(&L->fwd, dnnl_query_weights_md, 0));
        if (reuse)
            LK_TRY(lk_mem_set(L->m_w_bwd_d, L->w_fwd));
        else
            LK_TRY(conv_weights_to(&L->w_to_bwd_d, L->need_w_bwd_d, L->m_w_user, L->m_w_bwd_d,
                                   L->w_bwd_d, w));
        LK_TRY(lk_mem_set(L->m_dy, dy));
        LK_TRY(lk_mem_set(L->m_dx, dx));
        const dnnl_exec_arg_t args[] = {{DNNL_ARG_DIFF_DST, L->m_dy},
                                        {DNNL_ARG_WEIGHTS, L->m_w_bwd_d},
                                        {DNNL_ARG_DIFF_SRC, L->m_dx}};
        LK_TRY(lk_prim_exec(&L->bwd_d, 3, args));
    }
    if (dw || db) {
        LK_REQUIRE(L->bwd_w.p || L->dw_custom,
                   "conv2d backward: planned without the weight gradient (no_dw=1)");
        LK_REQUIRE(x && dw, "conv2d backward: x and dw are required for the weight gradient");
        LK_REQUIRE(db || !L->cfg.bias, "conv2d backward: db is required (layer has a bias)");
        if (L->dw_custom) {
            const lk_conv2d_cfg *c = &L->cfg;
            LK_TRY(lk_dwconv_bwd_weights(dw, x, dy, c->n, c->ic, c->ih, c->iw, L->oh, L->ow, c->kh,
                                         c->kw, c->sh, c->sw, c->pt, c->pl));
            if (c->bias) LK_TRY(lk_dwconv_bwd_bias(db, dy, c->n, c->oc, L->oh, L->ow));
            return LK_OK;
        }
        LK_TRY(lk_mem_set(L->m_x, x));
        LK_TRY(lk_mem_set(L->m_dy, dy));
        LK_TRY(lk_mem_set(L->m_dw_int, L->need_dw_user ? (void *)L->dw_int : (void *)dw));
        dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, L->m_x}, {DNNL_ARG_DIFF_DST, L->m_dy},
                                   {DNNL_ARG_DIFF_WEIGHTS, L->m_dw_int}};
        int n = 3;
        if (L->cfg.bias) {
            LK_TRY(lk_mem_set(L->m_db, db));
            args[n++] = (dnnl_exec_arg_t){DNNL_ARG_DIFF_BIAS, L->m_db};
        }
        LK_TRY(lk_prim_exec(&L->bwd_w, n, args));
        if (L->need_dw_user) {
            LK_TRY(lk_mem_set(L->m_dw_user, dw));
            const dnnl_exec_arg_t r[] = {{DNNL_ARG_FROM, L->m_dw_int}, {DNNL_ARG_TO, L->m_dw_user}};
            LK_TRY(lk_prim_exec(&L->dw_to_user, 2, r));
        }
    }
    return LK_OK;
}

void lk_conv2d_free(lk_conv2d *L) {
    lk_prim_free(&L->fwd);
    lk_prim_free(&L->bwd_d);
    lk_prim_free(&L->bwd_w);
    lk_prim_free(&L->w_to_fwd);
    lk_prim_free(&L->w_to_bwd_d);
    lk_prim_free(&L->dw_to_user);
    lk_free(L->w_fwd);
    lk_free(L->w_bwd_d);
    lk_free(L->dw_int);
    dnnl_memory_t *mems[] = {&L->m_x, &L->m_y, &L->m_w_user, &L->m_w_fwd, &L->m_b, &L->m_dx,
                             &L->m_dy, &L->m_w_bwd_d, &L->m_dw_int, &L->m_dw_user, &L->m_db};
    for (size_t i = 0; i < sizeof mems / sizeof mems[0]; i++) lk_mem_free(mems[i]);
    memset(L, 0, sizeof *L);
}
