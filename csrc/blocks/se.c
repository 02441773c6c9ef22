/* Squeeze-and-excitation: out = x * sigmoid(fc2(silu(fc1(GAP(x))))). The two
 * 1x1 convolutions act on [N, 1, 1, C] tensors. It has no BatchNorm, so its
 * forward is the same in every mode; FROZEN computes no parameter gradients.
 *
 * TRAIN and FROZEN run oneDNN primitives (pooling, two 1x1 convolutions, two
 * eltwise, a broadcast multiply) whose saved outputs the backward reads. EVAL runs
 * the same formula as plain C in ONE parallel region instead of six primitives: at
 * batch 1 oneDNN's global pooling runs on one thread and the four vector ops are
 * too small to split, so six fork/joins bought nothing (bench: profile of B3 and
 * V2-S at batch 1, ONEDNN_VERBOSE=profile_exec with 1 and 2 threads). The pooling
 * is split over (image, 64-channel block, position chunk), the chunk count a
 * function of the sizes only, and summed in double in a fixed order; each fc output
 * is one thread's dot product. Results therefore do not depend on the thread count.
 */
#include <math.h>
#include <string.h>

#include "lk_blocks.h"
#include "lk_cpu.h"

enum { SE_CB = 64,          /* channels per pooling task (4 cache lines per position) */
       SE_TASKS = 64,       /* pooling tasks wanted (4 per thread up to 16 threads) */
       SE_MIN_CHUNK = 64,   /* fewest positions per pooling task */
       SE_SUB = 256,        /* positions summed in float before adding into double */
       SE_ROWS = 32,        /* rows (positions) per scaling task, at least */
       SE_FC_ROWS = 8,      /* fc1 outputs per task */
       SE_FC2_COLS = 128 }; /* fc2 outputs per task */

/* Below this many elements of x the whole SE runs on the calling thread. */
#define SE_PAR_MIN 16384

/* acc[0, kn) += sum over positions [p0, p1) of x[p * c + k] (x: one image, first channel
 * of the block), in float over at most SE_SUB positions at a time. */
LK_ALWAYS_INLINE void se_pool_body(double *acc, const float *x, int64_t p0, int64_t p1, int c,
                                   int kn) {
    float f[SE_CB];
    for (int64_t q = p0; q < p1; q += SE_SUB) {
        const int64_t qe = q + SE_SUB < p1 ? q + SE_SUB : p1;
        for (int k = 0; k < SE_CB; k++) f[k] = 0.f;
        if (kn == SE_CB) { /* constant width: f stays in vector registers */
            for (int64_t p = q; p < qe; p++) {
                const float *xp = x + p * c;
                for (int k = 0; k < SE_CB; k++) f[k] += xp[k];
            }
        } else {
            for (int64_t p = q; p < qe; p++) {
                const float *xp = x + p * c;
#pragma omp simd
                for (int k = 0; k < kn; k++) f[k] += xp[k];
            }
        }
        for (int k = 0; k < kn; k++) acc[k] += f[k];
    }
}
LK_KERNEL_CLONES(se_pool,
                 (double *acc, const float *x, int64_t p0, int64_t p1, int c, int kn),
                 (acc, x, p0, p1, c, kn))

/* y rows [r0, r1) = x rows * g (one image's gate [C]). */
LK_ALWAYS_INLINE void se_scale_body(float *y, const float *x, const float *g, int64_t r0,
                                    int64_t r1, int c) {
    for (int64_t r = r0; r < r1; r++) {
        const float *xr = x + r * c;
        float *yr = y + r * c;
#pragma omp simd
        for (int k = 0; k < c; k++) yr[k] = xr[k] * g[k];
    }
}
LK_KERNEL_CLONES(se_scale,
                 (float *y, const float *x, const float *g, int64_t r0, int64_t r1, int c),
                 (y, x, g, r0, r1, c))

/* fc1: z[j] = b[j] + w[j, :] . v for rows [j0, j1) of w [*, len], four rows at a time
 * so that four sums are in flight (float, in the lanes of the instruction set in force). */
LK_ALWAYS_INLINE void se_fc1_body(float *z, const float *w, const float *b, const float *v,
                                  int64_t j0, int64_t j1, int len) {
    int64_t j = j0;
    for (; j + 4 <= j1; j += 4) {
        const float *w0 = w + j * len, *w1 = w0 + len, *w2 = w1 + len, *w3 = w2 + len;
        float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
        for (int k = 0; k < len; k++) {
            a0 += w0[k] * v[k];
            a1 += w1[k] * v[k];
            a2 += w2[k] * v[k];
            a3 += w3[k] * v[k];
        }
        z[j] = b[j] + a0;
        z[j + 1] = b[j + 1] + a1;
        z[j + 2] = b[j + 2] + a2;
        z[j + 3] = b[j + 3] + a3;
    }
    for (; j < j1; j++) {
        const float *wr = w + j * len;
        float a = 0.f;
#pragma omp simd reduction(+ : a)
        for (int k = 0; k < len; k++) a += wr[k] * v[k];
        z[j] = b[j] + a;
    }
}
LK_KERNEL_CLONES(se_fc1,
                 (float *z, const float *w, const float *b, const float *v, int64_t j0,
                  int64_t j1, int len),
                 (z, w, b, v, j0, j1, len))

/* fc2 on the transposed weights wt [SQ, C]: z[k0, k1) = b + sum_j v[j] wt[j, k0:k1]. */
LK_ALWAYS_INLINE void se_fc2_body(float *z, const float *wt, const float *b, const float *v,
                                  int64_t k0, int64_t k1, int sq, int c) {
    for (int64_t k = k0; k < k1; k++) z[k] = b[k];
    for (int j = 0; j < sq; j++) {
        const float vj = v[j], *wr = wt + (int64_t)j * c;
#pragma omp simd
        for (int64_t k = k0; k < k1; k++) z[k] += vj * wr[k];
    }
}
LK_KERNEL_CLONES(se_fc2,
                 (float *z, const float *wt, const float *b, const float *v, int64_t k0,
                  int64_t k1, int sq, int c),
                 (z, wt, b, v, k0, k1, sq, c))

static int se_nchunk(int n, int c, int64_t hw) {
    const int nblk = (c + SE_CB - 1) / SE_CB;
    if ((int64_t)n * nblk >= SE_TASKS) return 1;
    int64_t k = (SE_TASKS + (int64_t)n * nblk - 1) / ((int64_t)n * nblk), most = hw / SE_MIN_CHUNK;
    if (k > most) k = most;
    return k < 1 ? 1 : (int)k;
}

static void se_eval_forward(lk_se *s, const float *x) {
    const int n = s->n, c = s->c, sq = s->sq, nchunk = s->nchunk;
    const int64_t hw = (int64_t)s->h * s->w, nblk = (c + SE_CB - 1) / SE_CB;
    const int64_t npool = (int64_t)n * nblk * nchunk;
    const int64_t rows = (int64_t)n * hw, per = rows < SE_ROWS ? rows : SE_ROWS;
    const int64_t nscale = (rows + per - 1) / per; /* scaling tasks, none across images */
    const lk_se_params *p = &s->p;
    const int64_t nq1 = (sq + SE_FC_ROWS - 1) / SE_FC_ROWS;
    const int64_t nq2 = (c + SE_FC2_COLS - 1) / SE_FC2_COLS;
    void (*pool)(double *, const float *, int64_t, int64_t, int, int) = LK_KERNEL_PICK(se_pool);
    void (*fc1)(float *, const float *, const float *, const float *, int64_t, int64_t, int) =
        LK_KERNEL_PICK(se_fc1);
    void (*fc2)(float *, const float *, const float *, const float *, int64_t, int64_t, int,
                int) = LK_KERNEL_PICK(se_fc2);
    void (*scale)(float *, const float *, const float *, int64_t, int64_t, int) =
        LK_KERNEL_PICK(se_scale);
#pragma omp parallel if (rows * c >= SE_PAR_MIN)
    {
        /* part [N, nchunk, C]: sums over one chunk of positions. */
#pragma omp for schedule(static)
        for (int64_t t = 0; t < npool; t++) {
            const int i = (int)(t / (nblk * nchunk)), b = (int)(t / nchunk % nblk);
            const int64_t ch = t % nchunk, p0 = hw * ch / nchunk, p1 = hw * (ch + 1) / nchunk;
            const int k0 = b * SE_CB, kn = c - k0 < SE_CB ? c - k0 : SE_CB;
            double *acc = s->part + ((int64_t)i * nchunk + ch) * c + k0;
            for (int k = 0; k < kn; k++) acc[k] = 0.0;
            pool(acc, x + (int64_t)i * hw * c + k0, p0, p1, c, kn);
        }
#pragma omp for schedule(static)
        for (int64_t t = 0; t < (int64_t)n * c; t++) {
            const int64_t i = t / c, k = t % c;
            double sum = 0.0;
            for (int ch = 0; ch < nchunk; ch++) sum += s->part[(i * nchunk + ch) * c + k];
            s->pooled[t] = (float)(sum / (double)hw);
        }
        /* fc1 [SQ, C] + SiLU on PyTorch's rows, then fc2 + sigmoid on the transposed
         * copy [SQ, C] (se_forward keeps it current), SE_FC_ROWS outputs per task. */
#pragma omp for schedule(static)
        for (int64_t t = 0; t < (int64_t)n * nq1; t++) {
            const int64_t i = t / nq1, j0 = t % nq1 * SE_FC_ROWS;
            const int64_t j1 = j0 + SE_FC_ROWS < sq ? j0 + SE_FC_ROWS : sq;
            float *z = s->z1 + i * sq, *a = s->a1 + i * sq;
            fc1(z, p->w1, p->b1, s->pooled + i * c, j0, j1, c);
            for (int64_t j = j0; j < j1; j++) a[j] = z[j] / (1.f + expf(-z[j]));
        }
#pragma omp for schedule(static)
        for (int64_t t = 0; t < (int64_t)n * nq2; t++) {
            const int64_t i = t / nq2, k0 = t % nq2 * SE_FC2_COLS;
            const int64_t k1 = k0 + SE_FC2_COLS < c ? k0 + SE_FC2_COLS : c;
            float *z = s->z2 + i * c, *g = s->gate + i * c;
            fc2(z, s->w2t, p->b2, s->a1 + i * sq, k0, k1, sq, c);
            for (int64_t k = k0; k < k1; k++) g[k] = 1.f / (1.f + expf(-z[k]));
        }
#pragma omp for schedule(static)
        for (int64_t t = 0; t < nscale; t++) {
            const int64_t r0 = t * per, r1 = r0 + per < rows ? r0 + per : rows;
            const int64_t i = r0 / hw, e = (i + 1) * hw; /* rows of image i: [i * hw, e) */
            const int64_t m = r1 < e ? r1 : e;
            scale(s->out, x, s->gate + i * c, r0, m, c);
            if (m < r1) scale(s->out, x, s->gate + (i + 1) * c, m, r1, c);
        }
    }
}

lk_status lk_se_plan(lk_se *s, const lk_plan_opts *o, lk_mode mode, int h, int w) {
    const int bwd = mode != LK_MODE_EVAL;
    s->mode = mode;
    s->n = o->n;
    s->h = h;
    s->w = w;
    if (mode == LK_MODE_EVAL) {
        s->nchunk = se_nchunk(o->n, s->c, (int64_t)h * w);
        s->w2t_version = 0;
        s->w2t = lk_alloc(sizeof(float) * (size_t)s->c * (size_t)s->sq);
        if (!s->w2t) return LK_FAIL(LK_ERR_NOMEM, "squeeze-excitation: transposed fc2 weights");
        return LK_OK;
    }
    LK_TRY(lk_gpool_init(&s->pool, LK_POOL_AVG, o->n, s->c, h, w, bwd));
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
    /* EVAL scales its input in place (the block points out at it): one buffer fewer in
     * cache, 20 % faster at batch 1 (V2-S's SE shapes, 1 thread). */
    s->out = s->mode != LK_MODE_EVAL ? lk_arena_take(a, nc * s->h * s->w) : NULL;
    lk_arena_note(a, nc * s->h * s->w);
    s->dsmall = s->mode != LK_MODE_EVAL ? lk_arena_take(a, 4 * (nc > nq ? nc : nq)) : NULL;
    s->part = s->mode == LK_MODE_EVAL ? (double *)lk_arena_take(a, 2 * nc * (size_t)s->nchunk)
                                      : NULL;
}

lk_status lk_se_forward(lk_se *s, const float *x, uint64_t version) {
    if (s->mode == LK_MODE_EVAL) {
        LK_REQUIRE(x && s->out == x && s->w2t,
                   "squeeze-excitation: EVAL scales in place (out must be the input)");
        if (version == 0 || s->w2t_version != version) { /* fc2's weights, transposed */
            for (int k = 0; k < s->c; k++)
                for (int j = 0; j < s->sq; j++)
                    s->w2t[(size_t)j * s->c + k] = s->p.w2[(size_t)k * s->sq + j];
            s->w2t_version = version;
        }
        se_eval_forward(s, x);
        return LK_OK;
    }
    LK_TRY(lk_gpool_forward(&s->pool, s->pooled, x));
    LK_TRY(lk_conv2d_forward(&s->fc1, s->z1, s->pooled, s->p.w1, s->p.b1, version));
    LK_TRY(lk_act_forward(&s->act1, s->a1, s->z1));
    LK_TRY(lk_conv2d_forward(&s->fc2, s->z2, s->a1, s->p.w2, s->p.b2, version));
    LK_TRY(lk_act_forward(&s->act2, s->gate, s->z2));
    return lk_chmul_forward(&s->mul, s->out, x, s->gate);
}

/* dx [N, H, W, C] = dy * gate + GAP^T(d pooled); uses g->s1 for the pooled path. */
lk_status lk_se_backward(lk_se *s, float *dx, const float *dy, const float *x,
                         const lk_grad_scratch *g) {
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
    LK_TRY(lk_gpool_backward(&s->pool, g->s1, dpool));
    return lk_add_inplace(dx, g->s1, (int64_t)s->n * s->h * s->w * s->c);
}

void lk_se_free(lk_se *s) {
    lk_free(s->w2t);
    s->w2t = NULL;
    lk_gpool_free(&s->pool);
    lk_conv2d_free(&s->fc1);
    lk_conv2d_free(&s->fc2);
    lk_act_free(&s->act1);
    lk_act_free(&s->act2);
    lk_chmul_free(&s->mul);
}
