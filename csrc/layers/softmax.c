/* Softmax over the last axis of [rows, cols] on oneDNN (dnnl_softmax_accurate,
 * axis 1): the attention pool's softmax over the H*W positions of each image.
 * The backward uses the forward output: dx = y * (dy - sum(dy * y)).
 */
#include <string.h>

#include "lk_layers.h"

lk_status lk_softmax_init(lk_softmax *L, int rows, int cols, int train) {
    memset(L, 0, sizeof *L);
    LK_REQUIRE(rows > 0 && cols > 0, "softmax: rows=%d and cols=%d must be positive", rows, cols);
    L->rows = rows;
    L->cols = cols;
    L->train = train;

    dnnl_engine_t eng = NULL;
    LK_TRY(lk_engine(&eng));
    lk_status st = LK_OK;
    dnnl_memory_desc_t md = NULL;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t pd = NULL;

    LK_TRY_GOTO(lk_md2(&md, rows, cols, dnnl_ab)); /* x, y, dx, dy: [rows, cols] */
    LK_TRY_GOTO(lk_attr(&attr));
    LK_DNNL_GOTO(dnnl_softmax_forward_primitive_desc_create(
        &pd, eng, train ? dnnl_forward_training : dnnl_forward_inference, dnnl_softmax_accurate,
        md, md, 1, attr));
    LK_TRY_GOTO(lk_prim_init(&L->fwd, &pd));
    pd = NULL;
    LK_TRY_GOTO(lk_mem(&L->m_x, md));
    LK_TRY_GOTO(lk_mem(&L->m_y, md));
    if (train) {
        LK_DNNL_GOTO(dnnl_softmax_backward_primitive_desc_create(&pd, eng, dnnl_softmax_accurate, md, md,
                                                       md, 1, L->fwd.pd, attr));
        LK_TRY_GOTO(lk_prim_init(&L->bwd, &pd));
        pd = NULL;
        LK_TRY_GOTO(lk_mem(&L->m_dx, md));
        LK_TRY_GOTO(lk_mem(&L->m_dy, md));
    }
done:
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (attr) dnnl_primitive_attr_destroy(attr);
    if (md) dnnl_memory_desc_destroy(md);
    return st;
}

lk_status lk_softmax_forward(lk_softmax *L, float *y, const float *x) {
    LK_REQUIRE(L->fwd.p, "softmax: layer not initialised");
    LK_REQUIRE(y && x, "softmax forward: NULL argument");
    LK_TRY(lk_mem_set(L->m_x, x));
    LK_TRY(lk_mem_set(L->m_y, y));
    const dnnl_exec_arg_t args[] = {{DNNL_ARG_SRC, L->m_x}, {DNNL_ARG_DST, L->m_y}};
    return lk_prim_exec(&L->fwd, 2, args);
}

lk_status lk_softmax_backward(lk_softmax *L, float *dx, const float *dy, const float *y) {
    LK_REQUIRE(L->bwd.p, "softmax backward: layer was planned without backward (train=0)");
    LK_REQUIRE(dx && dy && y, "softmax backward: NULL argument");
    LK_TRY(lk_mem_set(L->m_y, y));
    LK_TRY(lk_mem_set(L->m_dy, dy));
    LK_TRY(lk_mem_set(L->m_dx, dx));
    const dnnl_exec_arg_t args[] = {{DNNL_ARG_DST, L->m_y}, {DNNL_ARG_DIFF_DST, L->m_dy},
                                    {DNNL_ARG_DIFF_SRC, L->m_dx}};
    return lk_prim_exec(&L->bwd, 3, args);
}

void lk_softmax_free(lk_softmax *L) {
    lk_prim_free(&L->fwd);
    lk_prim_free(&L->bwd);
    dnnl_memory_t *mems[] = {&L->m_x, &L->m_y, &L->m_dx, &L->m_dy};
    for (size_t i = 0; i < sizeof mems / sizeof mems[0]; i++) lk_mem_free(mems[i]);
    memset(L, 0, sizeof *L);
}
