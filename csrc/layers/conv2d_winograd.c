/* Winograd F(4x4, 3x3): the forward of a dense 3x3 convolution with stride 1 and
 * padding 1 (NHWC), its input gradient (the same forward with the kernels transposed
 * and rotated) and its weight gradient (the formula transposed, lk_wino_backward_w),
 * for the layers where oneDNN's direct kernel is bound by the
 * arithmetic (EfficientNetV2-S's FusedMBConv stages: 48->192 at 96x96 and 64->256 at
 * 48x48 for a 384 input run at 90 % of this machine's fp32 peak under brgconv).
 *
 * Math (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR
 * 2016; interpolation points 0, +-1, +-2 and infinity): a 4x4 output tile is
 *   Y = A^T [ sum over ic of (G g G^T) . (B^T d B) ] A
 * for the 6x6 input tile d around it and each 3x3 kernel g ('.' elementwise). Over
 * the 36 positions of the 6x6 domain the sums are 36 matrix products
 *   M_a [tiles, OC] = V_a [tiles, IC] x U_a [IC, OC],
 * 36 multiplications per 16 outputs and input channel against 144 for the direct
 * sum: 4x less arithmetic, paid for by the transforms' memory traffic.
 *
 * Per thread, a block of T tiles: the input transforms into V [36, T, IC], then
 * per chunk of WG_NC output channels the 36 products into M [36, T, NC] (a register-
 * blocked micro-kernel; the chunk of U streams through) and the output transforms
 * plus bias straight into y, so that M stays in the core's L2; then the SiLU over the
 * block's rows while they are in cache. U is made once per weight version (conv2d.c
 * caches it like its reordered weights).
 *
 * Numerics: the transforms multiply by up to 5 (B) and 8 (A) and add six terms, so
 * the result carries more rounding than the direct sum: 3-6e-6 of the largest output
 * at IC 48-64 against about 1e-7 (csrc/tests/test_layers.c bounds it against a
 * double reference). Results do not depend on the thread count.
 *
 * Measured (batch 8, 2 threads, bias, against oneDNN's brgconv with the same bias):
 * AVX-512 48->192 at 96x96 29.8 -> 12.3 ms, 64->256 at 48x48 12.8 -> 4.6 ms; AVX2
 * 51.3 -> 19.1 and 22.3 -> 7.8 ms (the products run near the peak, the transforms
 * take a third). conv2d.c applies the rule of where it pays (more shapes there).
 */
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "lk_cpu.h"
#include "lk_layers.h"
#include "lk_threads.h"

enum { WG_T = 48,   /* tiles per block (half that when the layer has few tiles for its
                       threads), a multiple of every path's micro-tile (8, 6, 4) */
       WG_NC = 96,  /* output channels per chunk of products (48, 64, 128 measured slower) */
       WG_PAD = 16  /* floats between planes beyond their size: planes a multiple of 4 KiB
                       apart alias in the L1 cache (measured 10-20 % slower) */ };

/* r[0..5] = B^T d[0..5], one column (or row) of the input transform. */
#define WG_BT(r, d)                                                    \
    do {                                                               \
        (r)[0] = 4 * (d)[0] - 5 * (d)[2] + (d)[4];                     \
        (r)[1] = (d)[3] + (d)[4] - 4 * ((d)[1] + (d)[2]);              \
        (r)[2] = 4 * ((d)[1] - (d)[2]) + (d)[4] - (d)[3];              \
        (r)[3] = 2 * ((d)[3] - (d)[1]) + (d)[4] - (d)[2];              \
        (r)[4] = 2 * ((d)[1] - (d)[3]) + (d)[4] - (d)[2];              \
        (r)[5] = 4 * (d)[1] - 5 * (d)[3] + (d)[5];                     \
    } while (0)

/* r[0..3] = A^T m[0..5], one column (or row) of the output transform. */
#define WG_AT(r, m)                                                    \
    do {                                                               \
        (r)[0] = (m)[0] + ((m)[1] + (m)[2]) + ((m)[3] + (m)[4]);       \
        (r)[1] = ((m)[1] - (m)[2]) + 2 * ((m)[3] - (m)[4]);            \
        (r)[2] = ((m)[1] + (m)[2]) + 4 * ((m)[3] + (m)[4]);            \
        (r)[3] = ((m)[1] - (m)[2]) + 8 * ((m)[3] - (m)[4]) + (m)[5];   \
    } while (0)

/* r[0..5] = A g[0..3], one column (or row) of the output-gradient transform of the weight
 * gradient (A is the output transform's transpose). */
#define WG_A(r, g)                                                     \
    do {                                                               \
        (r)[0] = (g)[0];                                               \
        (r)[1] = ((g)[0] + (g)[2]) + ((g)[1] + (g)[3]);                \
        (r)[2] = ((g)[0] + (g)[2]) - ((g)[1] + (g)[3]);                \
        (r)[3] = ((g)[0] + 4 * (g)[2]) + 2 * ((g)[1] + 4 * (g)[3]);    \
        (r)[4] = ((g)[0] + 4 * (g)[2]) - 2 * ((g)[1] + 4 * (g)[3]);    \
        (r)[5] = (g)[3];                                               \
    } while (0)

/* r[0..5] = G g[0..2], one column (or row) of the weight transform (in double). */
#define WG_G(r, g)                                                     \
    do {                                                               \
        (r)[0] = (g)[0] / 4;                                           \
        (r)[1] = -((g)[0] + (g)[1] + (g)[2]) / 6;                      \
        (r)[2] = -((g)[0] - (g)[1] + (g)[2]) / 6;                      \
        (r)[3] = (g)[0] / 24 + (g)[1] / 12 + (g)[2] / 6;               \
        (r)[4] = (g)[0] / 24 - (g)[1] / 12 + (g)[2] / 6;               \
        (r)[5] = (g)[2];                                               \
    } while (0)

/* r[0..2] = G^T m[0..5], one column (or row) of the weight gradient's way back. */
#define WG_GT(r, m)                                                                  \
    do {                                                                             \
        (r)[0] = (m)[0] / 4 - (m)[1] / 6 - (m)[2] / 6 + (m)[3] / 24 + (m)[4] / 24;   \
        (r)[1] = -(m)[1] / 6 + (m)[2] / 6 + (m)[3] / 12 - (m)[4] / 12;               \
        (r)[2] = -(m)[1] / 6 - (m)[2] / 6 + (m)[3] / 6 + (m)[4] / 6 + (m)[5];        \
    } while (0)

/* Plain C (SSE2 vectors of 4). */
#define WK_SFX c
#define WK_TGT
#define WK_LN 4
#define WK_MR 4
#include "conv2d_winograd_kern.h"
#undef WK_SFX
#undef WK_TGT
#undef WK_LN
#undef WK_MR

#ifdef LK_X86
/* AVX2 + FMA: 6 x 2 vectors of 8 accumulators (12 of the 16 registers). */
#define WK_SFX avx2
#define WK_TGT LK_TARGET_AVX2
#define WK_LN 8
#define WK_MR 6
#include "conv2d_winograd_kern.h"
#undef WK_SFX
#undef WK_TGT
#undef WK_LN
#undef WK_MR

/* AVX-512: 8 x 2 vectors of 16 accumulators (16 of the 32 registers). */
#define WK_SFX avx512
#define WK_TGT LK_TARGET_AVX512
#define WK_LN 16
#define WK_MR 8
#include "conv2d_winograd_kern.h"
#undef WK_SFX
#undef WK_TGT
#undef WK_LN
#undef WK_MR
#endif

typedef void (*wg_block_fn)(const lk_wino *, float *, const float *, const float *,
                            const float *, float *, int64_t, int64_t);
typedef void (*wg_block_w_fn)(const lk_wino *, float *, const float *, const float *, float *,
                              int64_t, int64_t);

static wg_block_fn wg_block_pick(void) {
#ifdef LK_X86
    switch (lk_kernel_isa()) {
    case LK_ISA_AVX512: return wk_block_avx512;
    case LK_ISA_AVX2: return wk_block_avx2;
    default: break;
    }
#endif
    return wk_block_c;
}

static wg_block_w_fn wg_block_w_pick(void) {
#ifdef LK_X86
    switch (lk_kernel_isa()) {
    case LK_ISA_AVX512: return wk_block_w_avx512;
    case LK_ISA_AVX2: return wk_block_w_avx2;
    default: break;
    }
#endif
    return wk_block_w_c;
}

int lk_wino_supported(int kh, int kw, int sh, int sw, int pt, int pl, int pb, int pr, int groups,
                      int oc) {
    return kh == 3 && kw == 3 && sh == 1 && sw == 1 && pt == 1 && pl == 1 && pb == 1 && pr == 1 &&
           groups == 1 && oc % 8 == 0;
}

lk_status lk_wino_init(lk_wino *L, const lk_wino_cfg *cfg) {
    memset(L, 0, sizeof *L);
    L->cfg = *cfg;
    const lk_wino_cfg *c = &L->cfg;
    LK_REQUIRE(c->n > 0 && c->h > 0 && c->w > 0 && c->ic > 0 && c->oc > 0,
               "winograd conv: sizes must be positive (n=%d h=%d w=%d ic=%d oc=%d)", c->n, c->h,
               c->w, c->ic, c->oc);
    LK_REQUIRE(c->oc % 8 == 0, "winograd conv: output channels must be a multiple of 8 (%d)",
               c->oc);
    L->tiles = (int64_t)c->n * ((c->h + 3) / 4) * ((c->w + 3) / 4);
    L->team = lk_get_num_threads();
    /* Blocks of WG_T / 2 where WG_T would leave fewer than 4 per thread (V2-S's 48x48
     * layer at batch 1: 144 tiles, 3 blocks for 2 threads). */
    L->t = L->tiles >= (int64_t)WG_T * 4 * L->team ? WG_T : WG_T / 2;
    L->vs = (size_t)L->t * c->ic + WG_PAD;
    L->ms = (size_t)L->t * WG_NC + WG_PAD;
    L->qs = (size_t)L->t * c->oc + WG_PAD;
    const size_t nu = (size_t)36 * c->ic * c->oc;
    /* Per thread: V then M (forward); V, Q and the partial sums P (weight gradient). */
    size_t per = 36 * (L->vs + L->ms);
    if (c->grad_w && 36 * (L->vs + L->qs) + nu > per) per = 36 * (L->vs + L->qs) + nu;
    L->per = per;
    if (c->scratch)
        lk_scratch_reserve(c->scratch, per * (size_t)L->team);
    else
        L->ws = lk_alloc(sizeof(float) * per * (size_t)L->team);
    L->u = lk_alloc(sizeof(float) * nu);
    /* Zeros for the padding: input rows (IC) and, in the weight gradient, dy rows (OC). */
    const size_t nz = (size_t)(c->ic > c->oc ? c->ic : c->oc) + 16;
    L->zero = lk_alloc(sizeof(float) * nz);
    if ((!c->scratch && !L->ws) || !L->u || !L->zero) {
        lk_wino_free(L);
        return LK_FAIL(LK_ERR_NOMEM, "winograd conv: workspaces [%d, %zu] and weights [%zu]",
                       L->team, per, nu);
    }
    memset(L->zero, 0, sizeof(float) * nz);
    memset(L->u, 0, sizeof(float) * nu); /* defined even before the first weights */
    return LK_OK;
}

/* U_a [IC, OC] = (G g G^T)_a for every kernel g, in double: g = w[oc, ic] [3, 3], or
 * (rotated) w[ic, oc] turned by 180 degrees. */
static void wg_set(lk_wino *L, const float *w, int rotated) {
    const int ic = L->cfg.ic, oc = L->cfg.oc;
    const size_t plane = (size_t)ic * oc;
    /* Per input channel, 16 output channels at a time through a local block, so that
     * each plane receives whole cache lines (written one value at a time, the 36 planes,
     * a multiple of 4 KiB apart, evicted each other from L1: 3x slower). */
#pragma omp parallel for schedule(static) if (plane >= 4096)
    for (int i = 0; i < ic; i++)
        for (int o0 = 0; o0 < oc; o0 += 16) {
            const int nb = oc - o0 < 16 ? oc - o0 : 16;
            float blk[36][16];
            for (int o = o0; o < o0 + nb; o++) {
                float g[9];
                if (rotated)
                    for (int k = 0; k < 9; k++) g[k] = w[((size_t)i * oc + o) * 9 + 8 - k];
                else
                    memcpy(g, w + ((size_t)o * ic + i) * 9, sizeof g);
                double t[6][3]; /* G g */
                for (int q = 0; q < 3; q++) {
                    const double col[3] = {g[q], g[3 + q], g[6 + q]};
                    double r[6];
                    WG_G(r, col);
                    for (int a = 0; a < 6; a++) t[a][q] = r[a];
                }
                for (int a = 0; a < 6; a++) { /* (G g) G^T, row a */
                    double r[6];
                    WG_G(r, t[a]);
                    for (int b = 0; b < 6; b++) blk[6 * a + b][o - o0] = (float)r[b];
                }
            }
            for (int a = 0; a < 36; a++)
                memcpy(L->u + a * plane + (size_t)i * oc + o0, blk[a], sizeof(float) * (size_t)nb);
        }
}

void lk_wino_set_weights(lk_wino *L, const float *w) { wg_set(L, w, 0); }

void lk_wino_set_weights_rotated(lk_wino *L, const float *w) { wg_set(L, w, 1); }

lk_status lk_wino_forward(lk_wino *L, float *y, const float *x, const float *b,
                          const float *add) {
    LK_REQUIRE(L->u, "winograd conv: layer not initialised");
    LK_REQUIRE(y && x, "winograd conv forward: NULL argument");
    float *const wsall = L->cfg.scratch ? L->cfg.scratch->base : L->ws;
    LK_REQUIRE(wsall, "winograd conv: the plan's shared workspace is not allocated");
    const wg_block_fn block = wg_block_pick();
    const int64_t nblk = (L->tiles + L->t - 1) / L->t;
    int team = L->team;
#ifdef _OPENMP
    if (omp_get_max_threads() < team) team = omp_get_max_threads();
#endif
    const size_t per = L->per;
#pragma omp parallel num_threads(team) if (team > 1 && nblk > 1)
    {
        int t = 0;
#ifdef _OPENMP
        t = omp_get_thread_num();
#endif
        float *ws = wsall + (size_t)t * per;
#pragma omp for schedule(static)
        for (int64_t k = 0; k < nblk; k++) {
            const int64_t t0 = k * L->t, t1 = t0 + L->t < L->tiles ? t0 + L->t : L->tiles;
            block(L, y, x, b, add, ws, t0, t1);
        }
    }
    return LK_OK;
}

/* dw [OC, IC, 3, 3] = sum over tiles of G^T [(A dY A^T) . (B^T d B)] G, the forward's
 * formula transposed (for one tile, sum_j dy_j y_j = sum_a (A dy)_a (G g)_a (B^T d)_a in
 * one dimension, so the gradient of g is G^T [(A dy) . (B^T d)]). Each thread sums its
 * blocks into its partial P [36, IC, OC] (P_a += V_a^T Q_a: the products have the
 * forward's size); the partials are added in thread order, then turned back in double. */
lk_status lk_wino_backward_w(lk_wino *L, float *dw, const float *x, const float *dy) {
    LK_REQUIRE(L->u, "winograd conv: layer not initialised");
    LK_REQUIRE(L->cfg.grad_w, "winograd conv: planned without the weight gradient (grad_w=0)");
    LK_REQUIRE(dw && x && dy, "winograd conv weight gradient: NULL argument");
    float *const wsall = L->cfg.scratch ? L->cfg.scratch->base : L->ws;
    LK_REQUIRE(wsall, "winograd conv: the plan's shared workspace is not allocated");
    const wg_block_w_fn block = wg_block_w_pick();
    const int64_t nblk = (L->tiles + L->t - 1) / L->t;
    const int ic = L->cfg.ic, oc = L->cfg.oc;
    const size_t nu = (size_t)36 * ic * oc, pofs = L->per - nu; /* P: a thread's last nu */
    int team = L->team;
#ifdef _OPENMP
    if (omp_get_max_threads() < team) team = omp_get_max_threads();
#endif
    if (nblk < team) team = (int)nblk;
    int got = 1; /* the team granted: the partials to add */
#pragma omp parallel num_threads(team) if (team > 1)
    {
        int t = 0;
#ifdef _OPENMP
        t = omp_get_thread_num();
#pragma omp single
        got = omp_get_num_threads();
#endif
        float *ws = wsall + (size_t)t * L->per;
        memset(ws + pofs, 0, sizeof(float) * nu);
#pragma omp for schedule(static)
        for (int64_t k = 0; k < nblk; k++) {
            const int64_t t0 = k * L->t, t1 = t0 + L->t < L->tiles ? t0 + L->t : L->tiles;
            block(L, ws + pofs, x, dy, ws, t0, t1);
        }
    }
    /* Partials added in thread order into thread 0's, then G^T P G per kernel. */
    float *p = wsall + pofs;
    for (int t = 1; t < got; t++) {
        const float *q = wsall + (size_t)t * L->per + pofs;
        for (size_t k = 0; k < nu; k++) p[k] += q[k];
    }
    const size_t plane = (size_t)ic * oc;
#pragma omp parallel for schedule(static) if (plane >= 4096)
    for (int o = 0; o < oc; o++)
        for (int i = 0; i < ic; i++) {
            double t[3][6]; /* G^T P, then (G^T P) G */
            for (int b = 0; b < 6; b++) {
                double m[6], r[3];
                for (int a = 0; a < 6; a++) m[a] = p[(size_t)(6 * a + b) * plane + (size_t)i * oc + o];
                WG_GT(r, m);
                for (int a = 0; a < 3; a++) t[a][b] = r[a];
            }
            float *g = dw + ((size_t)o * ic + i) * 9;
            for (int a = 0; a < 3; a++) {
                double r[3];
                WG_GT(r, t[a]);
                for (int b = 0; b < 3; b++) g[3 * a + b] = (float)r[b];
            }
        }
    return LK_OK;
}

void lk_wino_free(lk_wino *L) {
    lk_free(L->ws);
    lk_free(L->u);
    lk_free(L->zero);
    memset(L, 0, sizeof *L);
}
