/* linear: y = x w^T + b on oneDNN inner product (forward, backward data,
 * backward weights).
 *
 * x [N, IN] and y [N, OUT] are plain row-major (`ab`); the weights keep
 * PyTorch's [OUT, IN] (`oi`, i.e. `ab`) and are given to oneDNN in that layout
 * explicitly: the GEMM-based inner product handles plain weights without a
 * reorder, and the heads using this layer are small (<= 1536 x 512).
 */
#include <string.h>

#include "lk_layers.h"

lk_status lk_linear_init(lk_linear *L, const lk_linear_cfg *cfg) {
    memset(L, 0, sizeof *L);
    const int n = cfg->n, in = cfg->in, out = cfg->out, train = !!cfg->train,
              need_dx = !!cfg->need_dx;
    *L = (lk_linear){.n = n, .in = in, .out = out, .bias = !!cfg->bias, .train = train,
                     .need_dx = need_dx};
    LK_REQUIRE(n > 0 && in > 0 && out > 0,
               "linear: sizes must be positive (n=%d in=%d out=%d)", n, in, out);

    dnnl_engine_t eng = NULL;
    LK_TRY(lk_engine(&eng));
    lk_status st = LK_OK;
    dnnl_memory_desc_t x_md = NULL, y_md = NULL, w_md = NULL, b_md = NULL;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t pd = NULL;

    LK_TRY_GOTO(lk_md2(&x_md, n, in, dnnl_ab));   /* [N, IN] */
    LK_TRY_GOTO(lk_md2(&y_md, n, out, dnnl_ab));  /* [N, OUT] */
    LK_TRY_GOTO(lk_md2(&w_md, out, in, dnnl_ab)); /* [OUT, IN] (torch layout) */
    if (L->bias) LK_TRY_GOTO(lk_md1(&b_md, out)); /* [OUT] */
    LK_TRY_GOTO(lk_attr(&attr));
    LK_DNNL_GOTO(dnnl_inner_product_forward_primitive_desc_create(
        &pd, eng, train ? dnnl_forward_training : dnnl_forward_inference, x_md, w_md, b_md, y_md,
        attr));
    LK_TRY_GOTO(lk_prim_init(&L->fwd, &pd));
    pd = NULL;
    LK_TRY_GOTO(lk_mem(&L->m_x, x_md));
    LK_TRY_GOTO(lk_mem(&L->m_y, y_md));
    LK_TRY_GOTO(lk_mem(&L->m_w, w_md));
    if (L->bias) LK_TRY_GOTO(lk_mem(&L->m_b, b_md));
    if (train) {
        if (need_dx) {
            LK_DNNL_GOTO(dnnl_inner_product_backward_data_primitive_desc_create(&pd, eng, x_md, w_md, y_md,
                                                                     L->fwd.pd, attr));
            LK_TRY_GOTO(lk_prim_init(&L->bwd_d, &pd));
            pd = NULL;
            LK_TRY_GOTO(lk_mem(&L->m_dx, x_md));
        }
        LK_DNNL_GOTO(dnnl_inner_product_backward_weights_primitive_desc_create(&pd, eng, x_md, w_md, b_md,
                                                                    y_md, L->fwd.pd, attr));
        LK_TRY_GOTO(lk_prim_init(&L->bwd_w, &pd));
        pd = NULL;
        LK_TRY_GOTO(lk_mem(&L->m_dy, y_md));
        LK_TRY_GOTO(lk_mem(&L->m_dw, w_md));
        if (L->bias) {
            LK_TRY_GOTO(lk_mem(&L->m_db, b_md));
            L->db_tmp = lk_alloc(sizeof(float) * (size_t)out);
            if (!L->db_tmp) {
                st = LK_FAIL(LK_ERR_NOMEM, "linear: [%d] bias-gradient scratch", out);
                goto done;
            }
        }
    }
done:
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (attr) dnnl_primitive_attr_destroy(attr);
    if (x_md) dnnl_memory_desc_destroy(x_md);
    if (y_md) dnnl_memory_desc_destroy(y_md);
    if (w_md) dnnl_memory_desc_destroy(w_md);
    if (b_md) dnnl_memory_desc_destroy(b_md);
    return st;
}

lk_status lk_linear_forward(lk_linear *L, float *y, const float *x, const float *w, const float *b) {
    LK_REQUIRE(L->fwd.p, "linear: layer not initialised");
    LK_REQUIRE(y && x && w && (b || !L->bias), "linear forward: NULL argument");
    LK_TRY(lk_mem_set(L->m_x, x));
    LK_TRY(lk_mem_set(L->m_y, y));
    LK_TRY(lk_mem_set(L->m_w, w));
    dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, L->m_x}, {DNNL_ARG_WEIGHTS, L->m_w},
                               {DNNL_ARG_DST, L->m_y}};
    int nargs = 3;
    if (L->bias) {
        LK_TRY(lk_mem_set(L->m_b, b));
        args[nargs++] = (dnnl_exec_arg_t){DNNL_ARG_BIAS, L->m_b};
    }
    return lk_prim_exec(&L->fwd, nargs, args);
}

/* db [OUT] = sum over N of dy [N, OUT], for callers that want db without dw. */
static void linear_bias_grad(float *db, const float *dy, int n, int out) {
    for (int o = 0; o < out; o++) db[o] = 0.f;
    for (int i = 0; i < n; i++)
        for (int o = 0; o < out; o++) db[o] += dy[(int64_t)i * out + o];
}

lk_status lk_linear_backward(lk_linear *L, float *dx, float *dw, float *db, const float *dy,
                             const float *x, const float *w) {
    LK_REQUIRE(L->bwd_w.p, "linear backward: layer was planned without backward (train=0)");
    LK_REQUIRE(dy, "linear backward: dy is NULL");
    LK_REQUIRE(!db || L->bias, "linear backward: db given but the layer has no bias");
    if (dx) {
        LK_REQUIRE(L->bwd_d.p, "linear backward: planned without the input gradient (need_dx=0)");
        LK_REQUIRE(w, "linear backward: w is NULL");
        LK_TRY(lk_mem_set(L->m_dy, dy));
        LK_TRY(lk_mem_set(L->m_w, w));
        LK_TRY(lk_mem_set(L->m_dx, dx));
        const dnnl_exec_arg_t args[] = {{DNNL_ARG_DIFF_DST, L->m_dy}, {DNNL_ARG_WEIGHTS, L->m_w},
                                        {DNNL_ARG_DIFF_SRC, L->m_dx}};
        LK_TRY(lk_prim_exec(&L->bwd_d, 3, args));
    }
    if (dw) {
        LK_REQUIRE(x, "linear backward: x is required for the weight gradient");
        LK_TRY(lk_mem_set(L->m_x, x));
        LK_TRY(lk_mem_set(L->m_dy, dy));
        LK_TRY(lk_mem_set(L->m_dw, dw));
        dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, L->m_x}, {DNNL_ARG_DIFF_DST, L->m_dy},
                                   {DNNL_ARG_DIFF_WEIGHTS, L->m_dw}};
        int nargs = 3;
        if (L->bias) {
            /* The primitive always produces the bias gradient: when the caller
             * skips db it goes to the layer's scratch. */
            LK_TRY(lk_mem_set(L->m_db, db ? db : L->db_tmp));
            args[nargs++] = (dnnl_exec_arg_t){DNNL_ARG_DIFF_BIAS, L->m_db};
        }
        return lk_prim_exec(&L->bwd_w, nargs, args);
    }
    if (db) linear_bias_grad(db, dy, L->n, L->out);
    return LK_OK;
}

void lk_linear_free(lk_linear *L) {
    lk_prim_free(&L->fwd);
    lk_prim_free(&L->bwd_d);
    lk_prim_free(&L->bwd_w);
    lk_free(L->db_tmp);
    dnnl_memory_t *mems[] = {&L->m_x, &L->m_y, &L->m_w, &L->m_b,
                             &L->m_dx, &L->m_dy, &L->m_dw, &L->m_db};
    for (size_t i = 0; i < sizeof mems / sizeof mems[0]; i++) lk_mem_free(mems[i]);
    memset(L, 0, sizeof *L);
}
