/* SiLU, sigmoid, ReLU and ReLU6 on oneDNN eltwise.
 *
 * Elementwise ops do not care about layout, so every activation is planned on a
 * flat 1-D descriptor of `count` floats. Backward takes whichever forward
 * tensor oneDNN's algorithm needs: SiLU (swish, alpha 1), ReLU and ReLU6
 * (clip_v2 [0, 6]) differentiate at the pre-activation x, sigmoid
 * (logistic_use_dst_for_bwd) at the output y, so y need not be recomputed.
 *
 * Boundary convention (matches PyTorch, checked by the tests at exactly 0 and
 * 6): ReLU'(0) = 0; ReLU6' is 1 only on the open interval (0, 6), like torch's
 * hardtanh backward. That is why ReLU6 is clip_v2 (open interval) and not
 * clip, whose backward passes the gradient at x == beta.
 */
#include <string.h>

#include "lk_layers.h"

typedef struct act_alg {
    dnnl_alg_kind_t alg;
    float alpha, beta;
    int use_dst; /* backward reads y instead of x */
} act_alg;

static lk_status act_alg_of(lk_act_kind kind, act_alg *a) {
    switch (kind) {
    case LK_ACT_SILU: *a = (act_alg){dnnl_eltwise_swish, 1.f, 0.f, 0}; return LK_OK;
    case LK_ACT_SIGMOID: *a = (act_alg){dnnl_eltwise_logistic_use_dst_for_bwd, 0.f, 0.f, 1}; return LK_OK;
    case LK_ACT_RELU: *a = (act_alg){dnnl_eltwise_relu, 0.f, 0.f, 0}; return LK_OK;
    case LK_ACT_RELU6: *a = (act_alg){dnnl_eltwise_clip_v2, 0.f, 6.f, 0}; return LK_OK;
    }
    return LK_FAIL(LK_ERR_ARG, "activation: unknown kind %d", (int)kind);
}

lk_status lk_act_init(lk_act *L, lk_act_kind kind, int64_t count, int train) {
    memset(L, 0, sizeof *L);
    L->kind = kind;
    L->count = count;
    L->train = train;
    act_alg a = {0};
    LK_TRY(act_alg_of(kind, &a));
    LK_REQUIRE(count > 0, "activation: count must be positive, got %lld", (long long)count);

    dnnl_engine_t eng;
    LK_TRY(lk_engine(&eng));
    lk_status st = LK_OK;
    dnnl_memory_desc_t md = NULL;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t pd = NULL;

#define TRY(e) do { st = (e); if (st != LK_OK) goto done; } while (0)
#define DN(e) do { dnnl_status_t s_ = (e); if (s_ != dnnl_success) { \
        st = lk_fail(LK_ERR_DNNL, __FILE__, __LINE__, "oneDNN call %s failed: %s", #e, \
                     lk_dnnl_status_str(s_)); goto done; } } while (0)

    TRY(lk_md1(&md, count)); /* [count]: x, y, dx, dy all share it */
    TRY(lk_attr(&attr));
    DN(dnnl_eltwise_forward_primitive_desc_create(
        &pd, eng, train ? dnnl_forward_training : dnnl_forward_inference, a.alg, md, md, a.alpha,
        a.beta, attr));
    TRY(lk_prim_init(&L->fwd, pd));
    pd = NULL;
    TRY(lk_mem(&L->m_x, md));
    TRY(lk_mem(&L->m_y, md));
    if (train) {
        DN(dnnl_eltwise_backward_primitive_desc_create(&pd, eng, a.alg, md, md, md, a.alpha,
                                                       a.beta, L->fwd.pd, attr));
        TRY(lk_prim_init(&L->bwd, pd));
        pd = NULL;
        TRY(lk_mem(&L->m_dx, md));
        TRY(lk_mem(&L->m_dy, md));
    }
#undef TRY
#undef DN
done:
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (attr) dnnl_primitive_attr_destroy(attr);
    if (md) dnnl_memory_desc_destroy(md);
    return st;
}

lk_status lk_act_forward(lk_act *L, float *y, const float *x) {
    LK_REQUIRE(L->fwd.p, "activation: layer not initialised");
    LK_REQUIRE(y && x, "activation forward: NULL argument");
    LK_TRY(lk_mem_set(L->m_x, x));
    LK_TRY(lk_mem_set(L->m_y, y));
    const dnnl_exec_arg_t args[] = {{DNNL_ARG_SRC, L->m_x}, {DNNL_ARG_DST, L->m_y}};
    return lk_prim_exec(&L->fwd, 2, args);
}

lk_status lk_act_backward(lk_act *L, float *dx, const float *dy, const float *x, const float *y) {
    LK_REQUIRE(L->bwd.p, "activation backward: layer was planned without backward (train=0)");
    act_alg a = {0};
    LK_TRY(act_alg_of(L->kind, &a));
    const float *data = a.use_dst ? y : x;
    LK_REQUIRE(dx && dy, "activation backward: dx and dy are required");
    LK_REQUIRE(data, "activation backward: %s is required for this activation",
               a.use_dst ? "y" : "x");
    dnnl_memory_t m_data = a.use_dst ? L->m_y : L->m_x;
    LK_TRY(lk_mem_set(m_data, data));
    LK_TRY(lk_mem_set(L->m_dy, dy));
    LK_TRY(lk_mem_set(L->m_dx, dx));
    const dnnl_exec_arg_t args[] = {{a.use_dst ? DNNL_ARG_DST : DNNL_ARG_SRC, m_data},
                                    {DNNL_ARG_DIFF_DST, L->m_dy},
                                    {DNNL_ARG_DIFF_SRC, L->m_dx}};
    return lk_prim_exec(&L->bwd, 3, args);
}

void lk_act_free(lk_act *L) {
    lk_prim_free(&L->fwd);
    lk_prim_free(&L->bwd);
    dnnl_memory_t *mems[] = {&L->m_x, &L->m_y, &L->m_dx, &L->m_dy};
    for (size_t i = 0; i < sizeof mems / sizeof mems[0]; i++) lk_mem_free(mems[i]);
    memset(L, 0, sizeof *L);
}
