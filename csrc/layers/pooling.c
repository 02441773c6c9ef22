/* Global average and max pooling over H, W on oneDNN pooling.
 *
 * A pooling primitive whose kernel is the whole H x W plane: src [N, H, W, C]
 * (nhwc), dst [N, C, 1, 1] in nhwc, which is the same memory as [N, C]. Average
 * uses avg_exclude_padding (there is no padding, so it is the plain mean). Max
 * training needs the argmax workspace of the forward for its backward; it is
 * allocated once at init and overwritten by every training forward.
 * Max semantics match torch's adaptive_max_pool2d for finite inputs, ties
 * included (the first position in (h, w) order wins); unlike torch, oneDNN's
 * max skips NaN instead of propagating it (the Python API refuses NaN input).
 */
#include <string.h>

#include "lk_layers.h"

lk_status lk_gpool_init(lk_gpool *L, lk_pool_kind kind, int n, int c, int h, int w, int train) {
    memset(L, 0, sizeof *L);
    *L = (lk_gpool){.kind = kind, .n = n, .c = c, .h = h, .w = w, .train = train};
    LK_REQUIRE(kind == LK_POOL_AVG || kind == LK_POOL_MAX, "global pooling: unknown kind %d",
               (int)kind);
    LK_REQUIRE(n > 0 && c > 0 && h > 0 && w > 0,
               "global pooling: sizes must be positive (n=%d c=%d h=%d w=%d)", n, c, h, w);

    dnnl_engine_t eng = NULL;
    LK_TRY(lk_engine(&eng));
    lk_status st = LK_OK;
    dnnl_memory_desc_t x_md = NULL, y_md = NULL;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t pd = NULL;
    const dnnl_alg_kind_t alg =
        kind == LK_POOL_MAX ? dnnl_pooling_max : dnnl_pooling_avg_exclude_padding;
    const dnnl_dims_t strides = {1, 1}, kernel = {h, w}, dil = {0, 0}, pad = {0, 0};

    LK_TRY_GOTO(lk_md4(&x_md, n, c, h, w, dnnl_nhwc)); /* [N, H, W, C] */
    LK_TRY_GOTO(lk_md4(&y_md, n, c, 1, 1, dnnl_nhwc)); /* [N, C] */
    LK_TRY_GOTO(lk_attr(&attr));
    LK_DNNL_GOTO(dnnl_pooling_forward_primitive_desc_create(
        &pd, eng, train ? dnnl_forward_training : dnnl_forward_inference, alg, x_md, y_md,
        strides, kernel, dil, pad, pad, attr));
    LK_TRY_GOTO(lk_prim_init(&L->fwd, &pd));
    pd = NULL;
    LK_TRY_GOTO(lk_mem(&L->m_x, x_md));
    LK_TRY_GOTO(lk_mem(&L->m_y, y_md));
    if (train) {
        const_dnnl_memory_desc_t ws_md = lk_prim_md(&L->fwd, dnnl_query_workspace_md, 0);
        size_t ws_size = ws_md ? dnnl_memory_desc_get_size(ws_md) : 0;
        if (ws_size > 0) {
            /* Zeroed so that a backward before any forward reads defined memory. */
            L->ws = lk_alloc(ws_size);
            if (!L->ws) { st = LK_FAIL(LK_ERR_NOMEM, "global pooling: workspace of %zu bytes", ws_size); goto done; }
            memset(L->ws, 0, ws_size);
            LK_TRY_GOTO(lk_mem(&L->m_ws, ws_md));
            LK_TRY_GOTO(lk_mem_set(L->m_ws, L->ws));
        }
        LK_DNNL_GOTO(dnnl_pooling_backward_primitive_desc_create(&pd, eng, alg, x_md, y_md, strides, kernel,
                                                       dil, pad, pad, L->fwd.pd, attr));
        LK_TRY_GOTO(lk_prim_init(&L->bwd, &pd));
        pd = NULL;
        LK_TRY_GOTO(lk_mem(&L->m_dx, x_md));
        LK_TRY_GOTO(lk_mem(&L->m_dy, y_md));
    }
done:
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (attr) dnnl_primitive_attr_destroy(attr);
    if (x_md) dnnl_memory_desc_destroy(x_md);
    if (y_md) dnnl_memory_desc_destroy(y_md);
    return st;
}

lk_status lk_gpool_forward(lk_gpool *L, float *y, const float *x) {
    LK_REQUIRE(L->fwd.p, "global pooling: layer not initialised");
    LK_REQUIRE(y && x, "global pooling forward: NULL argument");
    LK_TRY(lk_mem_set(L->m_x, x));
    LK_TRY(lk_mem_set(L->m_y, y));
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, L->m_x}, {DNNL_ARG_DST, L->m_y}};
    int nargs = 2;
    if (L->m_ws) args[nargs++] = (dnnl_exec_arg_t){DNNL_ARG_WORKSPACE, L->m_ws};
    return lk_prim_exec(&L->fwd, nargs, args);
}

lk_status lk_gpool_backward(lk_gpool *L, float *dx, const float *dy) {
    LK_REQUIRE(L->bwd.p, "global pooling backward: layer was planned without backward (train=0)");
    LK_REQUIRE(dx && dy, "global pooling backward: NULL argument");
    LK_TRY(lk_mem_set(L->m_dy, dy));
    LK_TRY(lk_mem_set(L->m_dx, dx));
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_DIFF_DST, L->m_dy}, {DNNL_ARG_DIFF_SRC, L->m_dx}};
    int nargs = 2;
    if (L->m_ws) args[nargs++] = (dnnl_exec_arg_t){DNNL_ARG_WORKSPACE, L->m_ws};
    return lk_prim_exec(&L->bwd, nargs, args);
}

void lk_gpool_free(lk_gpool *L) {
    lk_prim_free(&L->fwd);
    lk_prim_free(&L->bwd);
    lk_free(L->ws);
    dnnl_memory_t *mems[] = {&L->m_x, &L->m_y, &L->m_dx, &L->m_dy, &L->m_ws};
    for (size_t i = 0; i < sizeof mems / sizeof mems[0]; i++) lk_mem_free(mems[i]);
    memset(L, 0, sizeof *L);
}
