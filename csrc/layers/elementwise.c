/* Broadcast channel multiply (oneDNN binary forward, plain-C backward) and
 * elementwise add (plain C).
 *
 * chmul backward is hand-written because oneDNN has no backward for binary ops:
 * one pass over dy and x gives both dx = dy * s and ds = sum_HW dy * x. Work
 * is split over (image, channel block, position chunk) so that batch-1 calls
 * with few channels still use every thread; partial channel sums are kept in
 * double (a 150 x 150 plane sums 22,500 products; runs of 16 go in float, which
 * vectorises for the kernel path in force) and reduced in a fixed
 * order. The number of chunks depends only on the sizes (never on the
 * threads), so results are the same bits for every thread count.
 *
 * add is plain C rather than oneDNN binary: it has no plan (the API is a bare
 * function), must allow y to alias either input, and is a memory-bound
 * streaming loop that the compiler vectorises.
 */
#include <string.h>

#include "lk_cpu.h"
#include "lk_layers.h"

enum { CHMUL_CB = 64,              /* channels per block (4 cache lines per row) */
       CHMUL_MIN_CHUNK = 256,      /* fewest positions per chunk worth a task */
       CHMUL_TASKS = 64,           /* tasks wanted (4 per thread up to 16 threads) */
       CHMUL_RUN = 16 };           /* positions summed in float before double */

/* Position chunks of the ds reduction: a function of the sizes only (it fixes the
 * summation order of ds). Task grid: n x channel blocks x chunks. */
static int64_t chmul_nchunk(int n, int c, int64_t hw) {
    const int nblk = (c + CHMUL_CB - 1) / CHMUL_CB;
    int64_t nchunk = 1;
    if ((int64_t)n * nblk < CHMUL_TASKS) {
        nchunk = (CHMUL_TASKS + (int64_t)n * nblk - 1) / ((int64_t)n * nblk);
        int64_t most = hw / CHMUL_MIN_CHUNK;
        if (nchunk > most) nchunk = most;
        if (nchunk < 1) nchunk = 1;
    }
    return nchunk;
}

lk_status lk_chmul_init(lk_chmul *L, int n, int c, int h, int w) {
    memset(L, 0, sizeof *L);
    *L = (lk_chmul){.n = n, .c = c, .h = h, .w = w};
    LK_REQUIRE(n > 0 && c > 0 && h > 0 && w > 0,
               "channel multiply: sizes must be positive (n=%d c=%d h=%d w=%d)", n, c, h, w);
    /* Planned here so that no backward allocates. */
    L->nchunk = chmul_nchunk(n, c, (int64_t)h * w);
    L->part = lk_alloc(sizeof(double) * (size_t)n * (size_t)L->nchunk * (size_t)c);
    if (!L->part)
        return LK_FAIL(LK_ERR_NOMEM, "channel multiply: [%d, %lld, %d] partial sums", n,
                       (long long)L->nchunk, c);

    dnnl_engine_t eng = NULL;
    LK_TRY(lk_engine(&eng));
    lk_status st = LK_OK;
    dnnl_memory_desc_t x_md = NULL, s_md = NULL;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t pd = NULL;

    LK_TRY_GOTO(lk_md4(&x_md, n, c, h, w, dnnl_nhwc)); /* x, y [N, H, W, C] */
    LK_TRY_GOTO(lk_md4(&s_md, n, c, 1, 1, dnnl_nhwc)); /* s [N, C], broadcast over H, W */
    LK_TRY_GOTO(lk_attr(&attr));
    LK_DNNL_GOTO(dnnl_binary_primitive_desc_create(&pd, eng, dnnl_binary_mul, x_md, s_md, x_md, attr));
    LK_TRY_GOTO(lk_prim_init(&L->fwd, &pd));
    pd = NULL;
    LK_TRY_GOTO(lk_mem(&L->m_x, x_md));
    LK_TRY_GOTO(lk_mem(&L->m_s, s_md));
    LK_TRY_GOTO(lk_mem(&L->m_y, x_md));
done:
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (attr) dnnl_primitive_attr_destroy(attr);
    if (x_md) dnnl_memory_desc_destroy(x_md);
    if (s_md) dnnl_memory_desc_destroy(s_md);
    return st;
}

lk_status lk_chmul_forward(lk_chmul *L, float *y, const float *x, const float *s) {
    LK_REQUIRE(L->fwd.p, "channel multiply: layer not initialised");
    LK_REQUIRE(y && x && s, "channel multiply forward: NULL argument");
    LK_TRY(lk_mem_set(L->m_x, x));
    LK_TRY(lk_mem_set(L->m_s, s));
    LK_TRY(lk_mem_set(L->m_y, y));
    const dnnl_exec_arg_t args[] = {{DNNL_ARG_SRC_0, L->m_x}, {DNNL_ARG_SRC_1, L->m_s},
                                    {DNNL_ARG_DST, L->m_y}};
    return lk_prim_exec(&L->fwd, 3, args);
}

/* dx only: a flat loop (dx may alias dy). */
static void chmul_dx(float *dx, const float *dy, const float *s, int n, int64_t hw, int c) {
#pragma omp parallel for collapse(2) if ((int64_t)n * hw * c > (1 << 15))
    for (int i = 0; i < n; i++)
        for (int64_t p = 0; p < hw; p++) {
            const float *si = s + (int64_t)i * c;
            const int64_t o = ((int64_t)i * hw + p) * c;
            for (int k = 0; k < c; k++) dx[o + k] = dy[o + k] * si[k];
        }
}

/* One task of the ds reduction, for the kernel path in force (lk_cpu.h): dst[k] = sum
 * over np positions (row stride c) of dy * x, channels k < kn; dx = dy * s alongside when
 * dx is given (it may alias dy: each position is read before it is written). Products
 * are summed in float over runs of CHMUL_RUN positions, which vectorise over the
 * channels, and the runs in double: a fixed order for every path and thread count. */
LK_ALWAYS_INLINE void chmul_task_body(double *dst, float *dx, const float *dy, const float *x,
                                      const float *s, int64_t c, int64_t np, int kn) {
    double acc[CHMUL_CB];
    float run[CHMUL_CB];
    for (int k = 0; k < kn; k++) acc[k] = 0.0;
    for (int64_t q = 0; q < np; q += CHMUL_RUN) {
        const int64_t q1 = q + CHMUL_RUN < np ? q + CHMUL_RUN : np;
        for (int k = 0; k < kn; k++) run[k] = 0.0f;
        for (int64_t p = q; p < q1; p++) {
            const float *dyp = dy + p * c, *xp = x + p * c;
            for (int k = 0; k < kn; k++) run[k] += dyp[k] * xp[k];
            if (dx) {
                float *dxp = dx + p * c;
                for (int k = 0; k < kn; k++) dxp[k] = dyp[k] * s[k];
            }
        }
        for (int k = 0; k < kn; k++) acc[k] += run[k];
    }
    for (int k = 0; k < kn; k++) dst[k] = acc[k];
}
LK_KERNEL_CLONES(chmul_task, (double *dst, float *dx, const float *dy, const float *x,
                              const float *s, int64_t c, int64_t np, int kn),
                 (dst, dx, dy, x, s, c, np, kn))

lk_status lk_chmul_backward(lk_chmul *L, float *dx, float *ds, const float *dy, const float *x,
                            const float *s) {
    LK_REQUIRE(L->fwd.p, "channel multiply: layer not initialised");
    LK_REQUIRE(dy, "channel multiply backward: dy is NULL");
    LK_REQUIRE(!dx || s, "channel multiply backward: s is required for dx");
    LK_REQUIRE(!ds || x, "channel multiply backward: x is required for ds");
    const int n = L->n, c = L->c;
    const int64_t hw = (int64_t)L->h * L->w;
    if (!ds) {
        if (dx) chmul_dx(dx, dy, s, n, hw, c);
        return LK_OK;
    }
    const int nblk = (c + CHMUL_CB - 1) / CHMUL_CB;
    const int64_t nchunk = L->nchunk;
    double *part = L->part;
    const int64_t ntask = (int64_t)n * nblk * nchunk;

    /* part [N, nchunk, C]: sum of dy * x over one chunk of positions. */
    void (*task)(double *, float *, const float *, const float *, const float *, int64_t,
                 int64_t, int) = LK_KERNEL_PICK(chmul_task);
#pragma omp parallel for schedule(static) if (ntask > 1 && (int64_t)n * hw * c > (1 << 15))
    for (int64_t t = 0; t < ntask; t++) {
        const int i = (int)(t / ((int64_t)nblk * nchunk));
        const int b = (int)(t / nchunk % nblk);
        const int64_t ch = t % nchunk;
        const int k0 = b * CHMUL_CB, kn = c - k0 < CHMUL_CB ? c - k0 : CHMUL_CB;
        const int64_t p0 = hw * ch / nchunk, p1 = hw * (ch + 1) / nchunk;
        const int64_t o = ((int64_t)i * hw + p0) * c + k0;
        task(part + ((int64_t)i * nchunk + ch) * c + k0, dx ? dx + o : NULL, dy + o, x + o,
             s ? s + (int64_t)i * c + k0 : NULL, c, p1 - p0, kn);
    }
    for (int i = 0; i < n; i++)
        for (int k = 0; k < c; k++) {
            double sum = 0.0;
            for (int64_t ch = 0; ch < nchunk; ch++) sum += part[((int64_t)i * nchunk + ch) * c + k];
            ds[(int64_t)i * c + k] = (float)sum;
        }
    return LK_OK;
}

void lk_chmul_free(lk_chmul *L) {
    lk_prim_free(&L->fwd);
    lk_free(L->part);
    dnnl_memory_t *mems[] = {&L->m_x, &L->m_s, &L->m_y};
    for (size_t i = 0; i < sizeof mems / sizeof mems[0]; i++) lk_mem_free(mems[i]);
    memset(L, 0, sizeof *L);
}

/* Below this many floats an OpenMP fork costs more than the loop. */
#define ADD_PAR_MIN (1 << 15)

lk_status lk_add_forward(float *y, const float *a, const float *b, int64_t count) {
    LK_REQUIRE(y && a && b, "add: NULL argument");
    LK_REQUIRE(count >= 0, "add: count must be >= 0, got %lld", (long long)count);
#pragma omp parallel for simd schedule(static) if (count > ADD_PAR_MIN)
    for (int64_t i = 0; i < count; i++) y[i] = a[i] + b[i];
    return LK_OK;
}

lk_status lk_add_channels(float *y, const float *v, int n, int64_t hw, int c, float scale) {
    LK_REQUIRE(y && v, "add channels: NULL argument");
    LK_REQUIRE(n > 0 && hw > 0 && c > 0, "add channels: sizes must be positive (n=%d hw=%lld c=%d)",
               n, (long long)hw, c);
#pragma omp parallel for collapse(2) schedule(static) if ((int64_t)n * hw * c > ADD_PAR_MIN)
    for (int i = 0; i < n; i++)
        for (int64_t p = 0; p < hw; p++) {
            const float *vi = v + (int64_t)i * c;
            float *yp = y + ((int64_t)i * hw + p) * c;
            for (int k = 0; k < c; k++) yp[k] += scale * vi[k];
        }
    return LK_OK;
}

lk_status lk_add_inplace(float *y, const float *x, int64_t count) {
    LK_REQUIRE(y && x, "add: NULL argument");
    LK_REQUIRE(count >= 0, "add: count must be >= 0, got %lld", (long long)count);
#pragma omp parallel for simd schedule(static) if (count > ADD_PAR_MIN)
    for (int64_t i = 0; i < count; i++) y[i] += x[i];
    return LK_OK;
}
