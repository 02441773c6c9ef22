/* Batch normalization (2-D and 1-D): forward and backward (2-D on oneDNN, 1-D in plain C).
 *
 * Activations are NHWC ([N, C] for BatchNorm1d, h = w = 1); gamma and beta are
 * separate [C] arrays (oneDNN v3 DNNL_ARG_SCALE / DNNL_ARG_SHIFT).
 *  - TRAIN: batch statistics (oneDNN gives the biased variance); the running
 *    statistics are then updated in plain C exactly as PyTorch does, with the
 *    unbiased variance var * M / (M - 1), M = N*H*W.
 *  - EVAL / FROZEN: the running statistics are inputs (dnnl_use_global_stats);
 *    FROZEN's backward treats them as constants, which oneDNN supports directly.
 * When only dgamma/dbeta are wanted (first trainable layer after a frozen
 * prefix), a plain C reduction computes them without writing a dx.
 *
 * BN followed by SiLU (cfg.silu, TRAIN) runs fused in plain C: forward = one
 * statistics pass and one pass writing silu(bn(x)); backward = one pass for the
 * SiLU gradient (bn(x) recomputed from x and the statistics) and both BN
 * reductions, one affine pass for dx. The BN output is never stored (a whole
 * activation less per unit, in the manner of in-place activated BatchNorm).
 */
#include <math.h>
#include <string.h>

#include "lk_cpu.h"
#include "lk_dwconv.h"
#include "lk_layers.h"
#include "lk_silu_simd.h"

/* Plain-C reductions over the N*H*W rows of NHWC.
 *
 * Determinism: the rows are cut into `nchunk` fixed chunks, a number that
 * depends only on the sizes (never on the threads), and each chunk's sums are
 * accumulated in double over its rows in ascending order; the chunks are then
 * added in ascending order. Tasks are (chunk, channel block) pairs handed out
 * by an `omp for`, so any team size works (also 1, e.g. inside another parallel
 * region) and the result is the same bits for every thread count. */
enum { BN_CHUNK_ROWS = 256, /* fewest rows per chunk worth a task */
       BN_MAX_CHUNKS = 64,  /* at most this many chunks (partials [64, 2, C]) */
       BN_CB = 64,          /* channels per task (4 cache lines of a row) */
       BN_RUN = 16,         /* rows summed in float before double (statistics) */
       BN_TILE = 2048,      /* floats per tile of the fused forward pass */
       BN_PAR_MIN = 1 << 15, /* below this many elements one thread is faster */
       BN_ROWS_MIN_CHUNKS = 4, /* statistics by whole rows from this many chunks (fewer:
                                  by channel blocks too, for the threads' sake) */
       BN_ROWS_MAX_C = 4096 /* ... and up to this many channels (a run's float sums) */ };

static int bn_nchunk(int64_t rows) {
    int64_t n = rows / BN_CHUNK_ROWS;
    return n > BN_MAX_CHUNKS ? BN_MAX_CHUNKS : n < 1 ? 1 : (int)n;
}

/* Chunks of the fused SiLU backward, whose tasks are whole chunks of rows: enough
 * of them to share rows * C over the threads (>= 2^15 elements each), at most
 * 16384 / C (partials of at most 256 KiB) and 64, at least 1. */
static int bn_nchunk_rows_x_c(int64_t rows, int c) {
    int64_t n = rows * c / BN_PAR_MIN, cap = 16384 / c;
    if (n > cap) n = cap;
    if (n > rows) n = rows;
    return n > BN_MAX_CHUNKS ? BN_MAX_CHUNKS : n < 1 ? 1 : (int)n;
}

static lk_status bn_check(const lk_bn_cfg *c) {
    LK_REQUIRE(c->n > 0 && c->c > 0 && c->h > 0 && c->w > 0,
               "batchnorm: sizes must be positive (n=%d c=%d h=%d w=%d)", c->n, c->c, c->h, c->w);
    LK_REQUIRE(c->mode == LK_BN_TRAIN || c->mode == LK_BN_EVAL || c->mode == LK_BN_FROZEN,
               "batchnorm: mode must be LK_BN_TRAIN, LK_BN_EVAL or LK_BN_FROZEN, got %d",
               (int)c->mode);
    LK_REQUIRE(isfinite(c->eps) && c->eps > 0.0f, "batchnorm: eps must be > 0, got %g",
               (double)c->eps);
    LK_REQUIRE(c->momentum >= 0.0f && c->momentum <= 1.0f,
               "batchnorm: momentum must be in [0, 1], got %g", (double)c->momentum);
    /* PyTorch refuses this too: the unbiased variance of one value is undefined. */
    LK_REQUIRE(c->mode != LK_BN_TRAIN || (int64_t)c->n * c->h * c->w > 1,
               "batchnorm: expected more than 1 value per channel when training, got "
               "n*h*w = %lld (n=%d h=%d w=%d)",
               (long long)c->n * c->h * c->w, c->n, c->h, c->w);
    LK_REQUIRE(!c->silu || (c->mode == LK_BN_TRAIN && (int64_t)c->h * c->w > 1),
               "batchnorm: the fused SiLU needs TRAIN mode and an [N, H, W, C] input with "
               "h*w > 1 (mode=%d h=%d w=%d)", (int)c->mode, c->h, c->w);
    return LK_OK;
}

/* Activation descriptor: [N, C] ("nc") for BatchNorm1d, NHWC otherwise. */
static lk_status bn_act_md(dnnl_memory_desc_t *md, const lk_bn_cfg *c) {
    if (c->h == 1 && c->w == 1) return lk_md2(md, c->n, c->c, dnnl_nc);
    return lk_md4(md, c->n, c->c, c->h, c->w, dnnl_nhwc);
}

lk_status lk_bn_init(lk_bn *L, const lk_bn_cfg *cfg) {
    memset(L, 0, sizeof *L);
    L->cfg = *cfg;
    const lk_bn_cfg *c = &L->cfg;
    LK_TRY(bn_check(c));

    dnnl_engine_t eng = NULL;
    LK_TRY(lk_engine(&eng));
    lk_status st = LK_OK;
    dnnl_memory_desc_t x_md = NULL, c_md = NULL;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t pd = NULL, hint = NULL;
    const unsigned ss = dnnl_use_scale | dnnl_use_shift;
    const unsigned flags = c->mode == LK_BN_TRAIN ? ss : ss | dnnl_use_global_stats;

    LK_TRY_GOTO(bn_act_md(&x_md, c));    /* [N, H, W, C] or [N, C] */
    LK_TRY_GOTO(lk_md1(&c_md, c->c));    /* [C]: mean, var, gamma, beta and their gradients */
    LK_TRY_GOTO(lk_attr(&attr));

    /* [6, C]: batch mean/var when the caller passes none, or discarded gradients
     * (rows 0-1); per-channel coefficients of the plain-C passes (rows 2-5). */
    L->scaleshift_tmp = lk_alloc(6 * (size_t)c->c * sizeof(float));
    if (!L->scaleshift_tmp) { st = LK_FAIL(LK_ERR_NOMEM, "batchnorm: [6, C] scratch"); goto done; }
    if ((int64_t)c->h * c->w > 1 && c->mode != LK_BN_EVAL) {
        /* Planned here so that no step allocates. */
        const int64_t rows = (int64_t)c->n * c->h * c->w;
        L->nchunk = bn_nchunk(rows);
        L->nchunk_fused = c->silu ? bn_nchunk_rows_x_c(rows, c->c) : 0;
        const int np = L->nchunk > L->nchunk_fused ? L->nchunk : L->nchunk_fused;
        L->part = lk_alloc(sizeof(double) * 2 * (size_t)c->c * (size_t)np);
        if (!L->part) {
            st = LK_FAIL(LK_ERR_NOMEM, "batchnorm: [%d, 2, %d] partial sums", L->nchunk, c->c);
            goto done;
        }
    }
    if (c->silu) goto done; /* plain C only */

    /* EVAL and FROZEN forwards are the same inference with the running stats. */
    LK_DNNL_GOTO(dnnl_batch_normalization_forward_primitive_desc_create(
        &pd, eng, c->mode == LK_BN_TRAIN ? dnnl_forward_training : dnnl_forward_inference, x_md,
        x_md, c->eps, flags, attr));
    LK_TRY_GOTO(lk_prim_init(&L->fwd, &pd));
    pd = NULL;
    LK_TRY_GOTO(lk_mem(&L->m_x, x_md));
    LK_TRY_GOTO(lk_mem(&L->m_y, x_md));
    LK_TRY_GOTO(lk_mem(&L->m_mean, c_md));
    LK_TRY_GOTO(lk_mem(&L->m_var, c_md));
    LK_TRY_GOTO(lk_mem(&L->m_scale, c_md));
    LK_TRY_GOTO(lk_mem(&L->m_shift, c_md));

    if (c->mode != LK_BN_EVAL && c->need_dx) {
        /* The backward wants a training forward as its hint; FROZEN's forward
         * is an inference one, so make a throwaway training descriptor. */
        const_dnnl_primitive_desc_t h = L->fwd.pd;
        if (c->mode == LK_BN_FROZEN) {
            LK_DNNL_GOTO(dnnl_batch_normalization_forward_primitive_desc_create(
                &hint, eng, dnnl_forward_training, x_md, x_md, c->eps, flags, attr));
            h = hint;
        }
        LK_DNNL_GOTO(dnnl_batch_normalization_backward_primitive_desc_create(
            &pd, eng, dnnl_backward, x_md, x_md, x_md, c->eps, flags, h, attr));
        LK_TRY_GOTO(lk_prim_init(&L->bwd, &pd));
        pd = NULL;
        LK_TRY_GOTO(lk_mem(&L->m_dx, x_md));
        LK_TRY_GOTO(lk_mem(&L->m_dy, x_md));
        LK_TRY_GOTO(lk_mem(&L->m_dscale, c_md));
        LK_TRY_GOTO(lk_mem(&L->m_dshift, c_md));
    }
done:
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (hint) dnnl_primitive_desc_destroy(hint);
    if (attr) dnnl_primitive_attr_destroy(attr);
    if (x_md) dnnl_memory_desc_destroy(x_md);
    if (c_md) dnnl_memory_desc_destroy(c_md);
    return st;
}

/* PyTorch's running-statistics update (float32 state, double arithmetic). */
static void bn_update_running(float *running_mean, float *running_var, const float *mean,
                              const float *var, int c, double momentum, int64_t m) {
    const double unbias = (double)m / (double)(m - 1);
    for (int i = 0; i < c; i++) {
        running_mean[i] = (float)((1.0 - momentum) * running_mean[i] + momentum * mean[i]);
        running_var[i] = (float)((1.0 - momentum) * running_var[i] + momentum * var[i] * unbias);
    }
}

/* BatchNorm1d ([N, C], h = w = 1) in plain C, per channel in double: oneDNN's forward
 * applies the folded form x * s + (beta - mean * s), which loses the low bits of
 * x - mean when |mean| >> std (measured 2e-3 relative at mean / std = 1e4), and a
 * head's BatchNorm1d over a small batch of pooled features lives in that regime. */
static void bn1d_forward(const lk_bn_cfg *c, float *y, float *mean, float *var, const float *x,
                         const float *gamma, const float *beta, const float *rmean,
                         const float *rvar) {
    const int n = c->n, ch = c->c;
#pragma omp parallel for schedule(static) if ((int64_t)n * ch > 32768)
    for (int j = 0; j < ch; j++) {
        double mu, v;
        if (c->mode == LK_BN_TRAIN) {
            double s = 0.0, q = 0.0;
            for (int i = 0; i < n; i++) s += x[(int64_t)i * ch + j];
            mu = s / n;
            for (int i = 0; i < n; i++) {
                double d = x[(int64_t)i * ch + j] - mu;
                q += d * d;
            }
            v = q / n; /* biased, like oneDNN and torch's normalisation */
            mean[j] = (float)mu;
            var[j] = (float)v;
        } else {
            mu = rmean[j];
            v = rvar[j];
        }
        const double scale = gamma[j] / sqrt(v + c->eps);
        for (int i = 0; i < n; i++) {
            const int64_t o = (int64_t)i * ch + j;
            y[o] = (float)((x[o] - mu) * scale + beta[j]);
        }
    }
}

/* TRAIN: dx = gamma rstd (dy - mean(dy) - xhat mean(dy xhat)); FROZEN: dx = gamma rstd dy
 * (statistics are constants). dgamma = sum(dy xhat), dbeta = sum(dy); any may be NULL. */
static void bn1d_backward(const lk_bn_cfg *c, float *dx, float *dgamma, float *dbeta,
                          const float *dy, const float *x, const float *mean, const float *var,
                          const float *gamma) {
    const int n = c->n, ch = c->c;
#pragma omp parallel for schedule(static) if ((int64_t)n * ch > 32768)
    for (int j = 0; j < ch; j++) {
        const double mu = mean[j], rstd = 1.0 / sqrt((double)var[j] + c->eps);
        double sdy = 0.0, sdyx = 0.0;
        for (int i = 0; i < n; i++) {
            const int64_t o = (int64_t)i * ch + j;
            sdy += dy[o];
            sdyx += dy[o] * ((x[o] - mu) * rstd);
        }
        if (dgamma) dgamma[j] = (float)sdyx;
        if (dbeta) dbeta[j] = (float)sdy;
        if (!dx) continue;
        const double g = gamma[j] * rstd;
        for (int i = 0; i < n; i++) {
            const int64_t o = (int64_t)i * ch + j;
            if (c->mode == LK_BN_TRAIN)
                dx[o] = (float)(g * (dy[o] - sdy / n - (x[o] - mu) * rstd * sdyx / n));
            else
                dx[o] = (float)(g * dy[o]);
        }
    }
}

lk_status lk_bn_forward(lk_bn *L, float *y, float *mean, float *var, const float *x,
                        const float *gamma, const float *beta, float *running_mean,
                        float *running_var) {
    const lk_bn_cfg *c = &L->cfg;
    LK_REQUIRE(L->fwd.p || c->silu, "batchnorm: layer not initialised");
    LK_REQUIRE(!c->silu, "batchnorm forward: planned with the fused SiLU "
                         "(use lk_bn_silu_forward)");
    LK_REQUIRE(y && x && gamma && beta, "batchnorm forward: NULL argument (y, x, gamma, beta)");
    const float *use_mean, *use_var;
    if (c->mode == LK_BN_TRAIN) {
        /* Running stats are optional in training (track_running_stats=False). */
        LK_REQUIRE(!running_mean == !running_var,
                   "batchnorm forward: pass both running_mean and running_var, or neither");
        if (!mean) mean = L->scaleshift_tmp;
        if (!var) var = L->scaleshift_tmp + c->c;
        use_mean = mean;
        use_var = var;
    } else {
        LK_REQUIRE(running_mean && running_var,
                   "batchnorm forward: eval/frozen mode needs running_mean and running_var");
        use_mean = running_mean;
        use_var = running_var;
    }
    if (c->h == 1 && c->w == 1) {
        bn1d_forward(c, y, mean, var, x, gamma, beta, running_mean, running_var);
    } else {
        LK_TRY(lk_mem_set(L->m_x, x));
        LK_TRY(lk_mem_set(L->m_y, y));
        LK_TRY(lk_mem_set(L->m_mean, use_mean));
        LK_TRY(lk_mem_set(L->m_var, use_var));
        LK_TRY(lk_mem_set(L->m_scale, gamma));
        LK_TRY(lk_mem_set(L->m_shift, beta));
        const dnnl_exec_arg_t args[] = {{DNNL_ARG_SRC, L->m_x},        {DNNL_ARG_DST, L->m_y},
                                        {DNNL_ARG_MEAN, L->m_mean},    {DNNL_ARG_VARIANCE, L->m_var},
                                        {DNNL_ARG_SCALE, L->m_scale},  {DNNL_ARG_SHIFT, L->m_shift}};
        LK_TRY(lk_prim_exec(&L->fwd, 6, args));
    }
    if (c->mode == LK_BN_TRAIN && running_mean)
        bn_update_running(running_mean, running_var, mean, var, c->c, c->momentum,
                          (int64_t)c->n * c->h * c->w);
    /* EVAL/FROZEN: hand the statistics used back when asked, for symmetry. */
    if (c->mode != LK_BN_TRAIN) {
        if (mean && mean != running_mean) memcpy(mean, running_mean, sizeof(float) * (size_t)c->c);
        if (var && var != running_var) memcpy(var, running_var, sizeof(float) * (size_t)c->c);
    }
    return LK_OK;
}

/* dgamma [C] = sum(dy * (x - mean) * rstd), dbeta [C] = sum(dy) over N*H*W rows
 * of NHWC, without a dx (fixed chunks, see BN_CHUNK_ROWS). */
static lk_status bn_param_grads(lk_bn *L, float *dgamma, float *dbeta, const float *dy,
                                const float *x, const float *mean, const float *var, int c,
                                int64_t rows, float eps) {
    const int64_t nchunk = L->nchunk;
    /* part [nchunk, 2, C]: sum(dy * (x - mean)), sum(dy) over one chunk of rows */
    double *part = L->part;
    LK_REQUIRE(part && nchunk == bn_nchunk(rows), "batchnorm: reduction buffers not planned");
    const int nblk = (c + BN_CB - 1) / BN_CB;
    const int64_t ntask = nchunk * nblk;
#pragma omp parallel for schedule(static) if (ntask > 1 && rows * c >= BN_PAR_MIN)
    for (int64_t t = 0; t < ntask; t++) {
        const int64_t ch = t / nblk;
        const int j0 = (int)(t % nblk) * BN_CB, jn = c - j0 < BN_CB ? c - j0 : BN_CB;
        const int64_t r0 = rows * ch / nchunk, r1 = rows * (ch + 1) / nchunk;
        double sxy[BN_CB] = {0}, sy[BN_CB] = {0};
        const float *m = mean + j0;
        for (int64_t r = r0; r < r1; r++) {
            const float *xr = x + r * c + j0, *dyr = dy + r * c + j0;
            for (int j = 0; j < jn; j++) {
                sxy[j] += (double)dyr[j] * ((double)xr[j] - m[j]);
                sy[j] += dyr[j];
            }
        }
        double *dst = part + (size_t)ch * 2 * c + j0;
        for (int j = 0; j < jn; j++) {
            dst[j] = sxy[j];
            dst[c + j] = sy[j];
        }
    }
    for (int j = 0; j < c; j++) {
        double a = 0.0, b = 0.0;
        for (int64_t ch = 0; ch < nchunk; ch++) {
            a += part[(size_t)ch * 2 * c + j];
            b += part[(size_t)ch * 2 * c + c + j];
        }
        if (dgamma) dgamma[j] = (float)(a / sqrt((double)var[j] + eps));
        if (dbeta) dbeta[j] = (float)b;
    }
    return LK_OK;
}

lk_status lk_bn_backward(lk_bn *L, float *dx, float *dgamma, float *dbeta, const float *dy,
                         const float *x, const float *mean, const float *var, const float *gamma) {
    const lk_bn_cfg *c = &L->cfg;
    LK_REQUIRE(L->fwd.p || c->silu, "batchnorm: layer not initialised");
    LK_REQUIRE(!c->silu, "batchnorm backward: planned with the fused SiLU "
                         "(use lk_bn_silu_backward)");
    LK_REQUIRE(c->mode != LK_BN_EVAL, "batchnorm backward: the layer is in eval mode "
                                      "(use LK_BN_FROZEN for gradients with running statistics)");
    LK_REQUIRE(dy && x && mean && var, "batchnorm backward: NULL argument (dy, x, mean, var)");
    if (c->h == 1 && c->w == 1) {
        LK_REQUIRE(!dx || gamma, "batchnorm backward: gamma is required for dx");
        bn1d_backward(c, dx, dgamma, dbeta, dy, x, mean, var, gamma);
        return LK_OK;
    }
    if (!dx) {
        if (!dgamma && !dbeta) return LK_OK;
        return bn_param_grads(L, dgamma, dbeta, dy, x, mean, var, c->c,
                              (int64_t)c->n * c->h * c->w, c->eps);
    }
    LK_REQUIRE(L->bwd.p, "batchnorm backward: planned without the input gradient (need_dx=0)");
    LK_REQUIRE(gamma, "batchnorm backward: gamma is required for dx");
    LK_TRY(lk_mem_set(L->m_x, x));
    LK_TRY(lk_mem_set(L->m_dy, dy));
    LK_TRY(lk_mem_set(L->m_dx, dx));
    LK_TRY(lk_mem_set(L->m_mean, mean));
    LK_TRY(lk_mem_set(L->m_var, var));
    LK_TRY(lk_mem_set(L->m_scale, gamma));
    LK_TRY(lk_mem_set(L->m_dscale, dgamma ? dgamma : L->scaleshift_tmp));
    LK_TRY(lk_mem_set(L->m_dshift, dbeta ? dbeta : L->scaleshift_tmp + c->c));
    const dnnl_exec_arg_t args[] = {
        {DNNL_ARG_SRC, L->m_x},           {DNNL_ARG_DIFF_DST, L->m_dy},
        {DNNL_ARG_MEAN, L->m_mean},       {DNNL_ARG_VARIANCE, L->m_var},
        {DNNL_ARG_SCALE, L->m_scale},     {DNNL_ARG_DIFF_SRC, L->m_dx},
        {DNNL_ARG_DIFF_SCALE, L->m_dscale}, {DNNL_ARG_DIFF_SHIFT, L->m_dshift}};
    return lk_prim_exec(&L->bwd, 8, args);
}

/* ------------------------------------------------------------ fused BN + SiLU */

/* Both fused passes sum per (chunk, channel block) task into part [nchunk, 2, C], then
 * add the chunks in order (the determinism rule of bn_param_grads). */
static void bn_sum_chunks(const lk_bn *L, int64_t nchunk, double *s0, double *s1, int j) {
    const int c = L->cfg.c;
    double a = 0.0, b = 0.0;
    for (int64_t ch = 0; ch < nchunk; ch++) {
        a += L->part[(size_t)ch * 2 * c + j];
        b += L->part[(size_t)ch * 2 * c + c + j];
    }
    *s0 = a;
    *s1 = b;
}

/* The fused passes' loops, compiled for each kernel path (lk_cpu.h): the callers split
 * the work, these run one task or tile on the calling thread. */

/* Statistics of rows r0 .. r1 - 1, channels j0 .. j0 + jn - 1 (dst, x offset by j0): dst[j]
 * = sum of d and dst[C + j] = sum of d^2, d = x - x[row 0] (the shift keeps E[d^2] - E[d]^2
 * free of cancellation when |mean| >> std). Runs of BN_RUN rows are summed in float into
 * f [2, jn], which vectorises 8 or 16 wide, and the runs in double: a fixed order on every
 * path, and per channel the same whatever span of channels a task takes. Whole rows (j0 =
 * 0, jn = C) are read contiguously: 64-channel pieces at a stride of C ran at 12-15 GB/s
 * against 24 for the apply pass. */
LK_ALWAYS_INLINE void bn_stats_body(double *dst, float *f, const float *x, int ch, int jn,
                                    int64_t r0, int64_t r1) {
    double *sd = dst, *sq = dst + ch;
    float *fd = f, *fq = f + jn;
    for (int j = 0; j < jn; j++) sd[j] = sq[j] = 0.0;
    for (int64_t q = r0; q < r1; q += BN_RUN) {
        const int64_t q1 = q + BN_RUN < r1 ? q + BN_RUN : r1;
        for (int j = 0; j < jn; j++) fd[j] = fq[j] = 0.0f;
        for (int64_t r = q; r < q1; r++) {
            const float *xr = x + r * ch;
            for (int j = 0; j < jn; j++) {
                const float d = xr[j] - x[j];
                fd[j] += d;
                fq[j] += d * d;
            }
        }
        for (int j = 0; j < jn; j++) {
            sd[j] += fd[j];
            sq[j] += fq[j];
        }
    }
}
LK_KERNEL_CLONES(bn_stats, (double *dst, float *f, const float *x, int ch, int jn, int64_t r0,
                            int64_t r1), (dst, f, x, ch, jn, r0, r1))

/* a [nr, jn] = (x - mean) * scale + beta for nr rows of x (row stride C). Row pointers:
 * the j loop vectorises (the indexed form did not). */
LK_ALWAYS_INLINE void bn_affine_body(float *a, const float *x, const float *m, const float *sc,
                                     const float *be, int nr, int jn, int ch) {
    for (int r = 0; r < nr; r++) {
        const float *xr = x + (int64_t)r * ch;
        float *ar = a + (int64_t)r * jn;
        for (int j = 0; j < jn; j++) ar[j] = (xr[j] - m[j]) * sc[j] + be[j];
    }
}
LK_KERNEL_CLONES(bn_affine, (float *a, const float *x, const float *m, const float *sc,
                             const float *be, int nr, int jn, int ch),
                 (a, x, m, sc, be, nr, jn, ch))

/* sgd[j] += sum over the nr rows of g * (x - mean), sg[j] += sum of g (g [nr, jn], x
 * with row stride C): the tile's rows in float (at most BN_TILE / C terms, in order),
 * then into the chunk's double sums, a fixed order either way; one wide row goes
 * straight to double. f [2, jn] is float scratch. */
LK_ALWAYS_INLINE void bn_accum_body(double *sgd, double *sg, float *f, const float *g,
                                    const float *x, const float *m, int nr, int jn, int ch) {
    if (nr == 1) {
        for (int j = 0; j < jn; j++) {
            sgd[j] += (double)g[j] * ((double)x[j] - m[j]);
            sg[j] += g[j];
        }
        return;
    }
    float *f1 = f, *f0 = f + jn;
    for (int j = 0; j < jn; j++) f1[j] = f0[j] = 0.0f;
    for (int r = 0; r < nr; r++) {
        const float *xr = x + (int64_t)r * ch, *gr = g + (int64_t)r * jn;
        for (int j = 0; j < jn; j++) {
            f1[j] += gr[j] * (xr[j] - m[j]);
            f0[j] += gr[j];
        }
    }
    for (int j = 0; j < jn; j++) {
        sgd[j] += f1[j];
        sg[j] += f0[j];
    }
}
LK_KERNEL_CLONES(bn_accum, (double *sgd, double *sg, float *f, const float *g, const float *x,
                            const float *m, int nr, int jn, int ch),
                 (sgd, sg, f, g, x, m, nr, jn, ch))

/* dx = scale * ((g - mg) - (x - mean) * k) for rows r0 .. r1 - 1, in place over g. */
LK_ALWAYS_INLINE void bn_dx_body(float *dx, const float *x, const float *mean, const float *scale,
                                 const float *mg, const float *k, int64_t r0, int64_t r1, int ch) {
    for (int64_t r = r0; r < r1; r++) {
        const float *xr = x + r * ch;
        float *dxr = dx + r * ch;
        for (int j = 0; j < ch; j++)
            dxr[j] = scale[j] * ((dxr[j] - mg[j]) - (xr[j] - mean[j]) * k[j]);
    }
}
LK_KERNEL_CLONES(bn_dx, (float *dx, const float *x, const float *mean, const float *scale,
                         const float *mg, const float *k, int64_t r0, int64_t r1, int ch),
                 (dx, x, mean, scale, mg, k, r0, r1, ch))

/* d [nr, jn] = dy * gate->scale[n] + gate->shift[n] for rows r0 .. r0 + nr - 1 of dy (row
 * stride C), channels j0 .. j0 + jn - 1, n = row / hw: the gradient a squeeze-and-
 * excitation hands back, made inside pass 1 instead of written out. Two roundings
 * (a product, then a sum: C11 contracts no FMA), as the SE's own multiply and add. */
LK_ALWAYS_INLINE void bn_gate_body(float *d, const float *dy, const float *gs, const float *ga,
                                   int64_t r0, int nr, int j0, int jn, int ch, int64_t hw) {
    int64_t n = r0 / hw, next = (n + 1) * hw; /* one division per tile, not per row */
    for (int r = 0; r < nr; r++) {
        const int64_t row = r0 + r;
        if (row == next) {
            n++;
            next += hw;
        }
        const float *dyr = dy + row * ch + j0, *s = gs + n * ch + j0, *a = ga + n * ch + j0;
        float *dr = d + (int64_t)r * jn;
        for (int j = 0; j < jn; j++) dr[j] = dyr[j] * s[j] + a[j];
    }
}
LK_KERNEL_CLONES(bn_gate, (float *d, const float *dy, const float *gs, const float *ga,
                           int64_t r0, int nr, int j0, int jn, int ch, int64_t hw),
                 (d, dy, gs, ga, r0, nr, j0, jn, ch, hw))

#ifdef LK_SILU_X86
/* AVX2: the affine step and the SiLU (and in the backward the gate, the SiLU gradient and
 * the float tile sums) in registers, one pass over whole rows instead of the tile
 * written by one kernel and read back by the next. The same operations in the same
 * order as the tile kernels (x - mean, * scale, + beta, each rounded; the exact SiLU of
 * activation.c), so the same bits. Whole blocks of 8 channels load and store plainly,
 * the last partial one masked (AVX2's masked moves are slow on AMD). */
#define BN_LD(p) (FULL ? _mm256_loadu_ps(p) : _mm256_maskload_ps((p), k))
#define BN_ST(p, v) (FULL ? _mm256_storeu_ps((p), (v)) : _mm256_maskstore_ps((p), k, (v)))

/* y [C] = silu((x - mean) * scale + beta) for channels j .. j + 7 (FULL) or the tail. */
LK_AVX2 static inline __attribute__((always_inline)) void
bn_silu_blk_avx2(float *yr, const float *xr, const float *m, const float *sc, const float *be,
                 int j, __m256i k, const int FULL) {
    const __m256 a = _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(BN_LD(xr + j), BN_LD(m + j)),
                                                 BN_LD(sc + j)),
                                   BN_LD(be + j));
    BN_ST(yr + j, _mm256_mul_ps(a, silu_sigmoid8(a)));
}

/* y [nr, C] = silu((x - mean) * scale + beta), nr whole rows. */
LK_AVX2 static void bn_silu_rows_avx2(float *y, const float *x, const float *m, const float *sc,
                                      const float *be, int64_t nr, int ch) {
    const int full = ch / 8 * 8;
    const __m256i k = lk_lanes8(ch - full);
    for (int64_t r = 0; r < nr; r++) {
        const float *xr = x + r * ch;
        float *yr = y + r * ch;
        for (int j = 0; j < full; j += 8) bn_silu_blk_avx2(yr, xr, m, sc, be, j, k, 1);
        if (full < ch) bn_silu_blk_avx2(yr, xr, m, sc, be, full, k, 0);
    }
}

/* The backward's first pass for channels j .. j + 7 (FULL) or the tail of one row. */
LK_AVX2 static inline __attribute__((always_inline)) void
bn_silu_bwd_blk_avx2(float *gr, float *f1, float *f0, const float *dyr, const float *gs,
                     const float *ga, const float *xr, const float *m, const float *sc,
                     const float *be, int j, __m256i k, const int FULL) {
    const __m256 dm = _mm256_sub_ps(BN_LD(xr + j), BN_LD(m + j));
    const __m256 a = _mm256_add_ps(_mm256_mul_ps(dm, BN_LD(sc + j)), BN_LD(be + j));
    __m256 d = BN_LD(dyr + j);
    if (gs) d = _mm256_add_ps(_mm256_mul_ps(d, BN_LD(gs + j)), BN_LD(ga + j));
    const __m256 gv = silu_grad8(d, a);
    if (gr) BN_ST(gr + j, gv);
    BN_ST(f1 + j, _mm256_add_ps(BN_LD(f1 + j), _mm256_mul_ps(gv, dm)));
    BN_ST(f0 + j, _mm256_add_ps(BN_LD(f0 + j), gv));
}

/* The backward's first pass over nr whole rows r0 .. (x, dy, g [nr, C]): g = d * silu'(a),
 * a = (x - mean) * scale + beta, d = dy or dy * gate->scale[n] + gate->shift[n], g
 * stored unless g is NULL, and sgd [C] += sum of g * (x - mean), sg [C] += sum of g: the
 * rows summed in float in f [2, C] (in row order), then into the doubles. */
LK_AVX2 static void bn_silu_bwd_rows_avx2(float *g, double *sgd, double *sg, float *f,
                                          const float *dy, const lk_bn_gate *gate, int64_t r0,
                                          int64_t hw, const float *x, const float *m,
                                          const float *sc, const float *be, int nr, int ch) {
    const int full = ch / 8 * 8;
    const __m256i k = lk_lanes8(ch - full);
    float *f1 = f, *f0 = f + ch;
    memset(f, 0, sizeof(float) * 2 * (size_t)ch);
    int64_t n = r0 / hw, next = (n + 1) * hw;
    for (int r = 0; r < nr; r++) {
        if (r0 + r == next) {
            n++;
            next += hw;
        }
        const float *xr = x + (int64_t)r * ch, *dyr = dy + (int64_t)r * ch;
        const float *gs = gate ? gate->scale + n * ch : NULL, *ga = gate ? gate->shift + n * ch : NULL;
        float *gr = g ? g + (int64_t)r * ch : NULL;
        for (int j = 0; j < full; j += 8)
            bn_silu_bwd_blk_avx2(gr, f1, f0, dyr, gs, ga, xr, m, sc, be, j, k, 1);
        if (full < ch) bn_silu_bwd_blk_avx2(gr, f1, f0, dyr, gs, ga, xr, m, sc, be, full, k, 0);
    }
    for (int j = 0; j < ch; j++) {
        sgd[j] += f1[j];
        sg[j] += f0[j];
    }
}
#undef BN_LD
#undef BN_ST
#endif

/* scale [C] = gamma / sqrt(var + eps) in the layer's scratch (after mean and var), the
 * one factor the fused passes apply. */
static float *bn_silu_scale(lk_bn *L, const float *gamma, const float *var) {
    const int ch = L->cfg.c;
    float *scale = L->scaleshift_tmp + 2 * (size_t)ch;
    for (int j = 0; j < ch; j++) scale[j] = (float)(gamma[j] / sqrt((double)var[j] + L->cfg.eps));
    return scale;
}

/* y [rows, C] = silu((x - mean) * scale + beta) on the calling thread, in tiles of
 * whole rows that stay in cache (affine, then SiLU over the tile). */
static void bn_silu_tiles(const lk_bn *L, float *y, const float *x, int64_t rows,
                          const float *mean, const float *scale, const float *beta) {
    const int ch = L->cfg.c;
#ifdef LK_SILU_X86
    if (lk_kernel_isa() == LK_ISA_AVX2) {
        bn_silu_rows_avx2(y, x, mean, scale, beta, rows, ch);
        return;
    }
#endif
    void (*affine)(float *, const float *, const float *, const float *, const float *, int, int,
                   int) = LK_KERNEL_PICK(bn_affine);
    const int64_t tr = ch >= BN_TILE ? 1 : BN_TILE / ch;
    for (int64_t r0 = 0; r0 < rows; r0 += tr) {
        const int64_t nr = rows - r0 < tr ? rows - r0 : tr;
        float *yt = y + r0 * ch;
        affine(yt, x + r0 * ch, mean, scale, beta, (int)nr, ch, ch);
        lk_silu_forward_serial(yt, yt, nr * ch);
    }
}

/* The forward's second pass, and its recompute: bn_silu_tiles one tile per task. */
static void bn_silu_apply(lk_bn *L, float *y, const float *x, const float *mean,
                          const float *var, const float *gamma, const float *beta) {
    const lk_bn_cfg *c = &L->cfg;
    const int ch = c->c;
    const int64_t rows = (int64_t)c->n * c->h * c->w;
    const float *scale = bn_silu_scale(L, gamma, var);
    const int64_t tr = ch >= BN_TILE ? 1 : BN_TILE / ch, ntile = (rows + tr - 1) / tr;
#pragma omp parallel for schedule(static) if (ntile > 1 && rows * ch >= BN_PAR_MIN)
    for (int64_t t = 0; t < ntile; t++) {
        const int64_t r0 = t * tr, nr = rows - r0 < tr ? rows - r0 : tr;
        bn_silu_tiles(L, y + r0 * ch, x + r0 * ch, nr, mean, scale, beta);
    }
}

/* The rows of lk_bn_silu_rows_input: the same per-element arithmetic as
 * bn_silu_apply, hence the same bits. */
static void bn_silu_rows(float *y, const float *x, int64_t npix, const void *ctx) {
    const lk_bn *L = ctx;
    bn_silu_tiles(L, y, x, npix, L->rows_mean, L->scaleshift_tmp + 2 * (size_t)L->cfg.c,
                  L->rows_beta);
}

lk_status lk_bn_silu_rows_input(lk_bn *L, lk_dw_input *in, const float *mean, const float *var,
                                const float *gamma, const float *beta) {
    LK_REQUIRE(L->cfg.silu && L->part, "batchnorm: not planned with the fused SiLU (cfg.silu)");
    LK_REQUIRE(in && mean && var && gamma && beta,
               "batchnorm+SiLU rows: NULL argument (in, mean, var, gamma, beta)");
    bn_silu_scale(L, gamma, var);
    L->rows_mean = mean;
    L->rows_beta = beta;
    *in = (lk_dw_input){bn_silu_rows, L};
    return LK_OK;
}

lk_status lk_bn_silu_recompute(lk_bn *L, float *y, const float *x, const float *mean,
                               const float *var, const float *gamma, const float *beta) {
    LK_REQUIRE(L->cfg.silu && L->part, "batchnorm: not planned with the fused SiLU (cfg.silu)");
    LK_REQUIRE(y && x && mean && var && gamma && beta,
               "batchnorm+SiLU recompute: NULL argument (y, x, mean, var, gamma, beta)");
    bn_silu_apply(L, y, x, mean, var, gamma, beta);
    return LK_OK;
}

/* The forward's first pass: mean and var of x, and the running statistics updated. */
static void bn_silu_stats(lk_bn *L, float *mean, float *var, const float *x, float *running_mean,
                          float *running_var) {
    const lk_bn_cfg *c = &L->cfg;
    const int ch = c->c, nblk = (ch + BN_CB - 1) / BN_CB;
    const int64_t rows = (int64_t)c->n * c->h * c->w, nchunk = L->nchunk, ntask = nchunk * nblk;
    void (*stats)(double *, float *, const float *, int, int, int64_t, int64_t) =
        LK_KERNEL_PICK(bn_stats);
    if (nchunk >= BN_ROWS_MIN_CHUNKS && ch <= BN_ROWS_MAX_C) {
        /* Statistics per chunk of whole rows: enough chunks to share among the threads. */
#pragma omp parallel for schedule(static) if (rows * ch >= BN_PAR_MIN)
        for (int64_t k = 0; k < nchunk; k++) {
            float f[2 * BN_ROWS_MAX_C]; /* [2, C] the float sums of a run */
            stats(L->part + (size_t)k * 2 * ch, f, x, ch, ch, rows * k / nchunk,
                  rows * (k + 1) / nchunk);
        }
    } else {
        /* Statistics per (chunk, channel block) task. */
#pragma omp parallel for schedule(static) if (ntask > 1 && rows * ch >= BN_PAR_MIN)
        for (int64_t t = 0; t < ntask; t++) {
            const int64_t k = t / nblk;
            const int j0 = (int)(t % nblk) * BN_CB, jn = ch - j0 < BN_CB ? ch - j0 : BN_CB;
            float f[2 * BN_CB]; /* [2, jn] the float sums of a run */
            stats(L->part + (size_t)k * 2 * ch + j0, f, x + j0, ch, jn, rows * k / nchunk,
                  rows * (k + 1) / nchunk);
        }
    }
    for (int j = 0; j < ch; j++) {
        double sd, sq;
        bn_sum_chunks(L, L->nchunk, &sd, &sq, j);
        const double md = sd / (double)rows, v = sq / (double)rows - md * md;
        mean[j] = (float)((double)x[j] + md);
        var[j] = (float)(v > 0.0 ? v : 0.0); /* biased, like oneDNN and torch's normalisation */
    }
    if (running_mean)
        bn_update_running(running_mean, running_var, mean, var, ch, c->momentum, rows);
}

lk_status lk_bn_silu_forward(lk_bn *L, float *y, float *mean, float *var, const float *x,
                             const float *gamma, const float *beta, float *running_mean,
                             float *running_var) {
    const lk_bn_cfg *c = &L->cfg;
    LK_REQUIRE(c->silu && L->part, "batchnorm: not planned with the fused SiLU (cfg.silu)");
    LK_REQUIRE(y && x && gamma && beta, "batchnorm+SiLU forward: NULL argument (y, x, gamma, beta)");
    LK_REQUIRE(!running_mean == !running_var,
               "batchnorm forward: pass both running_mean and running_var, or neither");
    if (!mean) mean = L->scaleshift_tmp;
    if (!var) var = L->scaleshift_tmp + c->c;
    bn_silu_stats(L, mean, var, x, running_mean, running_var);
    bn_silu_apply(L, y, x, mean, var, gamma, beta);
    return LK_OK;
}

lk_status lk_bn_silu_forward_stats(lk_bn *L, float *mean, float *var, const float *x,
                                   float *running_mean, float *running_var) {
    LK_REQUIRE(L->cfg.silu && L->part, "batchnorm: not planned with the fused SiLU (cfg.silu)");
    LK_REQUIRE(mean && var && x, "batchnorm+SiLU statistics: NULL argument (mean, var, x)");
    LK_REQUIRE(!running_mean == !running_var,
               "batchnorm forward: pass both running_mean and running_var, or neither");
    bn_silu_stats(L, mean, var, x, running_mean, running_var);
    return LK_OK;
}

lk_status lk_bn_silu_backward(lk_bn *L, float *dx, float *dgamma, float *dbeta, const float *dy,
                              const float *x, const float *mean, const float *var,
                              const float *gamma, const float *beta) {
    return lk_bn_silu_backward_gated(L, dx, dgamma, dbeta, dy, NULL, x, mean, var, gamma, beta);
}

lk_status lk_bn_silu_backward_gated(lk_bn *L, float *dx, float *dgamma, float *dbeta,
                                    const float *dy, const lk_bn_gate *gate, const float *x,
                                    const float *mean, const float *var, const float *gamma,
                                    const float *beta) {
    const lk_bn_cfg *c = &L->cfg;
    LK_REQUIRE(c->silu && L->part, "batchnorm: not planned with the fused SiLU (cfg.silu)");
    LK_REQUIRE(dy && x && mean && var && gamma && beta,
               "batchnorm+SiLU backward: NULL argument (dy, x, mean, var, gamma, beta)");
    LK_REQUIRE(!gate || (gate->scale && gate->shift),
               "batchnorm+SiLU backward: the gate needs both scale and shift");
    const int ch = c->c;
    const int64_t rows = (int64_t)c->n * c->h * c->w, hw = (int64_t)c->h * c->w;
    void (*gatef)(float *, const float *, const float *, const float *, int64_t, int, int, int,
                  int, int64_t) = LK_KERNEL_PICK(bn_gate);
    float *scale = bn_silu_scale(L, gamma, var); /* [C] gamma * rstd */
    void (*affine)(float *, const float *, const float *, const float *, const float *, int, int,
                   int) = LK_KERNEL_PICK(bn_affine);
    void (*accum)(double *, double *, float *, const float *, const float *, const float *, int,
                  int, int) = LK_KERNEL_PICK(bn_accum);
    /* Pass 1: g = dy * silu'(a), a = (x - mean) * scale + beta recomputed, and per
     * chunk sum(g * (x - mean)) and sum(g) in double, accumulated straight into the
     * chunk's partials. Tiles are contiguous: whole rows (C <= BN_TILE) or one row cut
     * into BN_TILE-channel segments, so the SiLU kernel reads dy in place and writes
     * g straight into dx, where pass 2 picks it up (recomputing g there instead, or
     * gathering 64-channel blocks, measured 1.5-2.5x slower). */
    const int64_t nfc = L->nchunk_fused;
    const int64_t tr = ch >= BN_TILE ? 1 : BN_TILE / ch;
#ifdef LK_SILU_X86
    const int fused_avx2 = lk_kernel_isa() == LK_ISA_AVX2; /* bn_silu_bwd_rows_avx2 */
#endif
    const int seg = ch < BN_TILE ? ch : BN_TILE;
#pragma omp parallel for schedule(static) if (nfc > 1 && rows * ch >= BN_PAR_MIN)
    for (int64_t k = 0; k < nfc; k++) {
        const int64_t r0 = rows * k / nfc, r1 = rows * (k + 1) / nfc;
        double *sgd = L->part + (size_t)k * 2 * ch, *sg = sgd + ch; /* [C] each */
        for (int j = 0; j < ch; j++) sgd[j] = sg[j] = 0.0;
        /* [nr, jn]: the SiLU input, g when dx is NULL, the gated dy */
        float at[BN_TILE], gt[BN_TILE], dt[BN_TILE];
        for (int64_t rb = r0; rb < r1; rb += tr) {
            const int nr = (int)(r1 - rb < tr ? r1 - rb : tr);
#ifdef LK_SILU_X86
            if (fused_avx2 && nr > 1) { /* whole rows (seg == C), at */
                bn_silu_bwd_rows_avx2(dx ? dx + rb * ch : NULL, sgd, sg, at, dy + rb * ch,
                                      gate, rb, hw, x + rb * ch, mean, scale, beta, nr, ch);
                continue;
            }
#endif
            for (int j0 = 0; j0 < ch; j0 += seg) {
                const int jn = ch - j0 < seg ? ch - j0 : seg;
                const int64_t off = rb * ch + j0; /* nr == 1 or jn == C: contiguous */
                affine(at, x + off, mean + j0, scale + j0, beta + j0, nr, jn, ch);
                float *g = dx ? dx + off : gt;
                const float *d = dy + off;
                if (gate) {
                    gatef(dt, dy, gate->scale, gate->shift, rb, nr, j0, jn, ch, hw);
                    d = dt;
                }
                lk_silu_backward_serial(g, d, at, (int64_t)nr * jn);
                /* at is consumed: its first 2 * jn floats (nr > 1: 2 * jn <= BN_TILE)
                 * hold the float tile sums. */
                accum(sgd + j0, sg + j0, at, g, x + off, mean + j0, nr, jn, ch);
            }
        }
    }
    /* dx = scale * (g - mean(g) - xhat * mean(g * xhat)), xhat = (x - mean) * rstd:
     * dx = scale * ((g - mg) - (x - mean) * k), mg = mean(g), k = rstd^2 mean(g (x - mean)),
     * in this order: g - mg is exact when g is close to its mean (an ill-conditioned BN
     * with few values per channel), where the expanded form scale * g - scale * mg
     * rounds both large terms. Against a float64 reference this path's y, dx, dgamma and
     * dbeta were as accurate as oneDNN's BN + SiLU at 16-18 rows and 2-50x more so with
     * a mean far from 0 or thousands of rows (its statistics are summed in double). */
    float *k = scale + ch, *mg = scale + 2 * (size_t)ch; /* [C] each */
    for (int j = 0; j < ch; j++) {
        double sgd, sg;
        bn_sum_chunks(L, nfc, &sgd, &sg, j);
        const double rstd = 1.0 / sqrt((double)var[j] + c->eps);
        if (dgamma) dgamma[j] = (float)(sgd * rstd);
        if (dbeta) dbeta[j] = (float)sg;
        k[j] = (float)(rstd * rstd * sgd / (double)rows);
        mg[j] = (float)(sg / (double)rows);
    }
    if (!dx) return LK_OK;
    /* Pass 2, in place over g, in blocks of rows. */
    void (*dxf)(float *, const float *, const float *, const float *, const float *,
                const float *, int64_t, int64_t, int) = LK_KERNEL_PICK(bn_dx);
    const int64_t rb = ch >= BN_TILE ? 1 : BN_TILE / ch, nrb = (rows + rb - 1) / rb;
#pragma omp parallel for schedule(static) if (nrb > 1 && rows * ch >= BN_PAR_MIN)
    for (int64_t t = 0; t < nrb; t++)
        dxf(dx, x, mean, scale, mg, k, t * rb, (t + 1) * rb < rows ? (t + 1) * rb : rows, ch);
    return LK_OK;
}

void lk_bn_free(lk_bn *L) {
    lk_prim_free(&L->fwd);
    lk_prim_free(&L->bwd);
    lk_free(L->scaleshift_tmp);
    lk_free(L->part);
    dnnl_memory_t *mems[] = {&L->m_x,     &L->m_y,  &L->m_mean, &L->m_var,    &L->m_scale,
                             &L->m_shift, &L->m_dx, &L->m_dy,   &L->m_dscale, &L->m_dshift};
    for (size_t i = 0; i < sizeof mems / sizeof mems[0]; i++) lk_mem_free(mems[i]);
    memset(L, 0, sizeof *L);
}
