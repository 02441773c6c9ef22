/* Layer benchmark: plan each layer once at EfficientNet-B3 shapes, then time
 * forward and backward execution only (median, or with --min the fastest, of
 * --reps runs after warm-up; the minimum is steadier on a busy machine).
 * Driven by benchmarks/bench_layers.py, which times the same ops in PyTorch.
 *
 *   bench_layers [--reps N] [--warmup N] [--batch N] [--threads N] [--min] [--only NAME]
 *
 * Prints one line per op: `RESULT <op> <plan_ms> <fwd_ms> <bwd_ms>`, and before
 * an op's first execution `BENCH_OP <op>` (so ONEDNN_VERBOSE lines can be
 * attributed to ops). A standalone program, so it may exit on errors.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"

#include "lk_dwconv.h"
#include "lk_layers.h"
#include "lk_optim.h"

static int g_reps = 10, g_warmup = 2, g_batch = 16, g_min;
static const char *g_only;

#define CK(call)                                                                         \
    do {                                                                                 \
        lk_status s_ = (call);                                                           \
        if (s_ != LK_OK) {                                                               \
            fprintf(stderr, "bench_layers: %s -> %s: %s\n", #call, lk_status_str(s_),    \
                    lk_last_error());                                                    \
            exit(1);                                                                     \
        }                                                                                \
    } while (0)

/* Median (or minimum) of `g_reps` timed runs of `stmt` after `g_warmup` untimed ones. */
#define TIME_REPS(out, stmt)                                      \
    do {                                                            \
        double t_[256];                                             \
        int n_ = g_reps < 256 ? g_reps : 256;                       \
        for (int r_ = 0; r_ < g_warmup; r_++) { stmt; }             \
        for (int r_ = 0; r_ < n_; r_++) {                           \
            double a_ = now_ms();                                   \
            stmt;                                                   \
            t_[r_] = now_ms() - a_;                                 \
        }                                                           \
        qsort(t_, (size_t)n_, sizeof t_[0], cmp_d);                 \
        (out) = g_min ? t_[0] : n_ % 2 ? t_[n_ / 2] : 0.5 * (t_[n_ / 2 - 1] + t_[n_ / 2]); \
    } while (0)

static float *rnd(size_t n, float lo, float hi) {
    float *p = lk_alloc(n * sizeof *p);
    if (!p) {
        fprintf(stderr, "bench_layers: out of memory (%zu floats)\n", n);
        exit(1);
    }
    uint64_t s = 0x243F6A8885A308D3ull ^ n;
    for (size_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        p[i] = lo + (hi - lo) * (float)((s >> 40) * (1.0 / 16777216.0));
    }
    return p;
}

static int wanted(const char *op) {
    if (g_only && strcmp(g_only, op) != 0) return 0;
    printf("BENCH_OP %s\n", op);
    fflush(stdout);
    return 1;
}

static void report(const char *op, double plan, double fwd, double bwd) {
    printf("RESULT %s %.4f %.4f %.4f\n", op, plan, fwd, bwd);
    fflush(stdout);
}

/* Convolution with symmetric padding (k-1)/2, no bias (BN follows), as in B3. */
static void bench_conv(const char *op, int ic, int hw, int oc, int k, int s, int groups,
                       int need_dx) {
    if (!wanted(op)) return;
    int p = (k - 1) / 2;
    lk_conv2d_cfg c = {.n = g_batch, .ic = ic, .ih = hw, .iw = hw, .oc = oc, .kh = k, .kw = k,
                       .sh = s, .sw = s, .pt = p, .pl = p, .pb = p, .pr = p, .groups = groups,
                       .train = 1, .need_dx = need_dx};
    lk_conv2d L;
    double t0 = now_ms();
    CK(lk_conv2d_init(&L, &c));
    double plan = now_ms() - t0;
    size_t nx = (size_t)g_batch * hw * hw * ic, ny = (size_t)g_batch * L.oh * L.ow * oc;
    size_t nw = (size_t)oc * (ic / groups) * k * k;
    float *x = rnd(nx, -1, 1), *w = rnd(nw, -0.1f, 0.1f), *y = rnd(ny, 0, 0), *dy = rnd(ny, -1, 1);
    float *dx = need_dx ? rnd(nx, 0, 0) : NULL, *dw = rnd(nw, 0, 0);
    double fwd, bwd;
    /* Weight version 0: reorder every call, as in training where weights change. */
    TIME_REPS(fwd, CK(lk_conv2d_forward(&L, y, x, w, NULL, 0)));
    TIME_REPS(bwd, CK(lk_conv2d_backward(&L, dx, dw, NULL, dy, x, w)));
    report(op, plan, fwd, bwd);
    lk_conv2d_free(&L);
    lk_free(x), lk_free(w), lk_free(y), lk_free(dy), lk_free(dx), lk_free(dw);
}

/* Depthwise weight gradient alone (need_dx=0), oneDNN's primitive vs
 * lk_dwconv_bwd_weights on the same data: RESULT lines `<op>_onednn` and
 * `<op>_ours` (fwd column 0), and a `DWBW` line with the speedup and the
 * largest relative difference. */
static void bench_dw_bwd_w(const char *op, int ch, int hw, int k, int s) {
    if (!wanted(op)) return;
    int p = (k - 1) / 2;
    lk_conv2d_cfg c = {.n = g_batch, .ic = ch, .ih = hw, .iw = hw, .oc = ch, .kh = k, .kw = k,
                       .sh = s, .sw = s, .pt = p, .pl = p, .pb = p, .pr = p, .groups = ch,
                       .train = 1};
    lk_conv2d L[2];
    const lk_dw_bwd_w_policy pol[2] = {LK_DW_BWD_W_ONEDNN, LK_DW_BWD_W_CUSTOM};
    double plan[2], bwd[2];
    for (int v = 0; v < 2; v++) {
        lk_dwconv_set_policy(pol[v]);
        double t0 = now_ms();
        CK(lk_conv2d_init(&L[v], &c));
        plan[v] = now_ms() - t0;
    }
    lk_dwconv_set_policy(LK_DW_BWD_W_AUTO);
    size_t nx = (size_t)g_batch * hw * hw * ch, ny = (size_t)g_batch * L[0].oh * L[0].ow * ch;
    size_t nw = (size_t)ch * k * k;
    float *x = rnd(nx, -1, 1), *w = rnd(nw, -0.1f, 0.1f), *dy = rnd(ny, -1, 1);
    float *dw[2] = {rnd(nw, 0, 0), rnd(nw, 0, 0)};
    for (int v = 0; v < 2; v++)
        TIME_REPS(bwd[v], CK(lk_conv2d_backward(&L[v], NULL, dw[v], NULL, dy, x, w)));
    double worst = 0;
    for (size_t i = 0; i < nw; i++) {
        double d = dw[0][i] - dw[1][i], m = dw[0][i] < 0 ? -dw[0][i] : dw[0][i];
        d = (d < 0 ? -d : d) / (m + 1.0);
        if (d > worst) worst = d;
    }
    char name[128];
    snprintf(name, sizeof name, "%s_onednn", op);
    report(name, plan[0], 0, bwd[0]);
    snprintf(name, sizeof name, "%s_ours", op);
    report(name, plan[1], 0, bwd[1]);
    printf("DWBW %s speedup %.2fx max rel diff %.2e\n", op, bwd[0] / bwd[1], worst);
    for (int v = 0; v < 2; v++) lk_conv2d_free(&L[v]), lk_free(dw[v]);
    lk_free(x), lk_free(w), lk_free(dy);
}

/* Dense weight gradient alone (need_dx=0): oneDNN's backward-weights primitive vs
 * the sgemm path of conv2d.c, with the same layer's forward as the yardstick. The
 * three run interleaved, round by round (fairer on a shared machine), after
 * --warmup rounds. RESULT lines `<op>_onednn` and `<op>_gemm` (bwd column; fwd is the
 * layer's forward), and a `CONVBW` line with the median and fastest times in ms, the
 * fastest as GFLOP/s, and the speedup of the medians. */
static void bench_dense_bwd_w(const char *op, int ic, int hw, int oc, int k, int s) {
    if (!wanted(op)) return;
    int p = (k - 1) / 2;
    lk_conv2d_cfg c = {.n = g_batch, .ic = ic, .ih = hw, .iw = hw, .oc = oc, .kh = k, .kw = k,
                       .sh = s, .sw = s, .pt = p, .pl = p, .pb = p, .pr = p, .groups = 1,
                       .train = 1};
    lk_conv2d L[2];
    const lk_conv_bwd_w_policy pol[2] = {LK_CONV_BWD_W_ONEDNN, LK_CONV_BWD_W_GEMM};
    double plan[2];
    /* The direct paths only (bench_wino times Winograd's). */
    const lk_conv_wino_policy wino = lk_conv2d_get_wino_policy();
    lk_conv2d_set_wino_policy(LK_CONV_WINO_NEVER);
    for (int v = 0; v < 2; v++) {
        lk_conv2d_set_bwd_w_policy(pol[v]);
        double t0 = now_ms();
        CK(lk_conv2d_init(&L[v], &c));
        plan[v] = now_ms() - t0;
    }
    lk_conv2d_set_bwd_w_policy(LK_CONV_BWD_W_AUTO);
    lk_conv2d_set_wino_policy(wino);
    size_t nx = (size_t)g_batch * hw * hw * ic, ny = (size_t)g_batch * L[0].oh * L[0].ow * oc;
    size_t nw = (size_t)oc * ic * k * k;
    float *x = rnd(nx, -1, 1), *w = rnd(nw, -0.1f, 0.1f), *dy = rnd(ny, -1, 1), *y = rnd(ny, 0, 0);
    float *dw[2] = {rnd(nw, 0, 0), rnd(nw, 0, 0)};
    enum { MAXR = 256 };
    double t[3][MAXR];
    int n = g_reps < MAXR ? g_reps : MAXR;
    for (int r = -g_warmup; r < n; r++) {
        double a = now_ms();
        CK(lk_conv2d_forward(&L[0], y, x, w, NULL, 0));
        double b = now_ms();
        CK(lk_conv2d_backward(&L[0], NULL, dw[0], NULL, dy, x, w));
        double d = now_ms();
        CK(lk_conv2d_backward(&L[1], NULL, dw[1], NULL, dy, x, w));
        double e = now_ms();
        if (r < 0) continue;
        t[0][r] = b - a, t[1][r] = d - b, t[2][r] = e - d;
    }
    double med[3], best[3];
    for (int v = 0; v < 3; v++) {
        qsort(t[v], (size_t)n, sizeof t[v][0], cmp_d);
        best[v] = t[v][0];
        med[v] = n % 2 ? t[v][n / 2] : 0.5 * (t[v][n / 2 - 1] + t[v][n / 2]);
    }
    double worst = 0;
    for (size_t i = 0; i < nw; i++) {
        double dd = dw[0][i] - dw[1][i], m = dw[0][i] < 0 ? -dw[0][i] : dw[0][i];
        dd = (dd < 0 ? -dd : dd) / (m + 1.0);
        if (dd > worst) worst = dd;
    }
    const double mflop = 2.0 * (double)ny * ic * k * k * 1e-6;
    char name[128];
    snprintf(name, sizeof name, "%s_onednn", op);
    report(name, plan[0], med[0], med[1]);
    snprintf(name, sizeof name, "%s_gemm", op);
    report(name, plan[1], med[0], med[2]);
    printf("CONVBW %-28s fwd %7.2f/%7.2f ms (%5.1f GF/s)  onednn %7.2f/%7.2f (%5.1f)  "
           "gemm %7.2f/%7.2f (%5.1f)  speedup %.2fx  max rel diff %.1e\n",
           op, med[0], best[0], mflop / best[0], med[1], best[1], mflop / best[1], med[2],
           best[2], mflop / best[2], med[1] / med[2], worst);
    for (int v = 0; v < 2; v++) lk_conv2d_free(&L[v]), lk_free(dw[v]);
    lk_free(x), lk_free(w), lk_free(dy), lk_free(y);
}

/* Training-mode BN and/or SiLU on [N, HW, HW, C]; with_bn == 2: BN with the SiLU
 * fused in (lk_bn_silu_forward/backward). */
static void bench_bn_silu(const char *op, int ch, int hw, int with_bn, int with_silu) {
    if (!wanted(op)) return;
    size_t nx = (size_t)g_batch * hw * hw * ch;
    lk_bn B;
    lk_act A;
    memset(&B, 0, sizeof B);
    memset(&A, 0, sizeof A);
    lk_bn_cfg bc = {.n = g_batch, .c = ch, .h = hw, .w = hw, .eps = 1e-5f, .momentum = 0.1f,
                    .mode = LK_BN_TRAIN, .need_dx = 1, .silu = with_bn == 2};
    double t0 = now_ms();
    if (with_bn) CK(lk_bn_init(&B, &bc));
    if (with_silu && with_bn != 2) CK(lk_act_init(&A, LK_ACT_SILU, (int64_t)nx, 1));
    double plan = now_ms() - t0;
    float *x = rnd(nx, -2, 2), *t = rnd(nx, 0, 0), *y = rnd(nx, 0, 0), *dy = rnd(nx, -1, 1);
    float *dt = rnd(nx, 0, 0), *dx = rnd(nx, 0, 0);
    float *g = rnd(ch, 0.5f, 1.5f), *b = rnd(ch, -0.5f, 0.5f), *mean = rnd(ch, 0, 0);
    float *var = rnd(ch, 0, 0), *rm = rnd(ch, 0, 0), *rv = rnd(ch, 1, 1), *dg = rnd(ch, 0, 0);
    float *db = rnd(ch, 0, 0);
    /* BN writes t, SiLU reads t (the pre-activation, needed by its backward). */
    const float *act_in = with_bn ? t : x;
    double fwd, bwd;
    if (with_bn == 2) {
        TIME_REPS(fwd, CK(lk_bn_silu_forward(&B, y, mean, var, x, g, b, rm, rv)));
        TIME_REPS(bwd, CK(lk_bn_silu_backward(&B, dx, dg, db, dy, x, mean, var, g, b)));
    } else {
    TIME_REPS(fwd, {
        if (with_bn) CK(lk_bn_forward(&B, with_silu ? t : y, mean, var, x, g, b, rm, rv));
        if (with_silu) CK(lk_act_forward(&A, y, act_in));
    });
    TIME_REPS(bwd, {
        if (with_silu) CK(lk_act_backward(&A, with_bn ? dt : dx, dy, act_in, NULL));
        if (with_bn) CK(lk_bn_backward(&B, dx, dg, db, with_silu ? dt : dy, x, mean, var, g));
    });
    }
    report(op, plan, fwd, bwd);
    lk_bn_free(&B);
    lk_act_free(&A);
    float *bufs[] = {x, t, y, dy, dt, dx, g, b, mean, var, rm, rv, dg, db};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) lk_free(bufs[i]);
}

static void bench_gpool(const char *op, lk_pool_kind kind, int ch, int hw) {
    if (!wanted(op)) return;
    lk_gpool L;
    double t0 = now_ms();
    CK(lk_gpool_init(&L, kind, g_batch, ch, hw, hw, 1));
    double plan = now_ms() - t0;
    size_t nx = (size_t)g_batch * hw * hw * ch, ny = (size_t)g_batch * ch;
    float *x = rnd(nx, -1, 1), *y = rnd(ny, 0, 0), *dy = rnd(ny, -1, 1), *dx = rnd(nx, 0, 0);
    double fwd, bwd;
    TIME_REPS(fwd, CK(lk_gpool_forward(&L, y, x)));
    TIME_REPS(bwd, CK(lk_gpool_backward(&L, dx, dy)));
    report(op, plan, fwd, bwd);
    lk_gpool_free(&L);
    lk_free(x), lk_free(y), lk_free(dy), lk_free(dx);
}

static void bench_linear(const char *op, int in, int out) {
    if (!wanted(op)) return;
    lk_linear L;
    double t0 = now_ms();
    CK(lk_linear_init(&L, &(lk_linear_cfg){.n = g_batch, .in = in, .out = out, .bias = 1,
                                           .train = 1, .need_dx = 1}));
    double plan = now_ms() - t0;
    float *x = rnd((size_t)g_batch * in, -1, 1), *w = rnd((size_t)out * in, -0.1f, 0.1f);
    float *b = rnd(out, 0, 0), *y = rnd((size_t)g_batch * out, 0, 0);
    float *dy = rnd((size_t)g_batch * out, -1, 1), *dx = rnd((size_t)g_batch * in, 0, 0);
    float *dw = rnd((size_t)out * in, 0, 0), *db = rnd(out, 0, 0);
    double fwd, bwd;
    TIME_REPS(fwd, CK(lk_linear_forward(&L, y, x, w, b)));
    TIME_REPS(bwd, CK(lk_linear_backward(&L, dx, dw, db, dy, x, w)));
    report(op, plan, fwd, bwd);
    lk_linear_free(&L);
    float *bufs[] = {x, w, b, y, dy, dx, dw, db};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) lk_free(bufs[i]);
}

/* SE gate: y = x * s[N, C] broadcast over H, W. */
static void bench_chmul(const char *op, int ch, int hw) {
    if (!wanted(op)) return;
    lk_chmul L;
    double t0 = now_ms();
    CK(lk_chmul_init(&L, g_batch, ch, hw, hw));
    double plan = now_ms() - t0;
    size_t nx = (size_t)g_batch * hw * hw * ch, ns = (size_t)g_batch * ch;
    float *x = rnd(nx, -1, 1), *s = rnd(ns, 0, 1), *y = rnd(nx, 0, 0), *dy = rnd(nx, -1, 1);
    float *dx = rnd(nx, 0, 0), *ds = rnd(ns, 0, 0);
    double fwd, bwd;
    TIME_REPS(fwd, CK(lk_chmul_forward(&L, y, x, s)));
    TIME_REPS(bwd, CK(lk_chmul_backward(&L, dx, ds, dy, x, s)));
    report(op, plan, fwd, bwd);
    lk_chmul_free(&L);
    lk_free(x), lk_free(s), lk_free(y), lk_free(dy), lk_free(dx), lk_free(ds);
}

/* A squeeze-and-excitation gate into the 1x1 projection that follows it (inference,
 * folded bias): fwd = the gate multiply over the whole batch, then one batch-N
 * convolution; bwd column = per image, the weights scaled by that image's gate
 * (w * gate[n] per input channel), then a batch-1 convolution that reorders them. */
static void bench_se_fold(const char *op, int ic, int hw, int oc) {
    if (!wanted(op)) return;
    lk_chmul M;
    lk_conv2d L, L1;
    lk_conv2d_cfg c = {.n = g_batch, .ic = ic, .ih = hw, .iw = hw, .oc = oc, .kh = 1, .kw = 1,
                       .sh = 1, .sw = 1, .groups = 1, .bias = 1};
    double t0 = now_ms();
    CK(lk_chmul_init(&M, g_batch, ic, hw, hw));
    CK(lk_conv2d_init(&L, &c));
    c.n = 1;
    CK(lk_conv2d_init(&L1, &c));
    double plan = now_ms() - t0;
    size_t nx = (size_t)g_batch * hw * hw * ic, ny = (size_t)g_batch * hw * hw * oc;
    size_t nw = (size_t)oc * ic;
    float *x = rnd(nx, -1, 1), *g = rnd((size_t)g_batch * ic, 0, 1), *t = rnd(nx, 0, 0);
    float *w = rnd(nw, -0.1f, 0.1f), *b = rnd((size_t)oc, -0.1f, 0.1f), *y = rnd(ny, 0, 0);
    float *ws = rnd(nw, 0, 0);
    double two, fold;
    TIME_REPS(two, {
        CK(lk_chmul_forward(&M, t, x, g));
        CK(lk_conv2d_forward(&L, y, t, w, b, 1));
    });
    TIME_REPS(fold, {
        for (int n = 0; n < g_batch; n++) {
            const float *gn = g + (size_t)n * ic;
            for (int o = 0; o < oc; o++)
                for (int i = 0; i < ic; i++) ws[(size_t)o * ic + i] = w[(size_t)o * ic + i] * gn[i];
            CK(lk_conv2d_forward(&L1, y + (size_t)n * hw * hw * oc, x + (size_t)n * hw * hw * ic,
                                 ws, b, 0));
        }
    });
    report(op, plan, two, fold);
    if (getenv("LK_SEFOLD_PARTS")) {
        double mul, conv, conv1;
        TIME_REPS(mul, CK(lk_chmul_forward(&M, t, x, g)));
        TIME_REPS(conv, CK(lk_conv2d_forward(&L, y, t, w, b, 1)));
        TIME_REPS(conv1, {
            for (int n = 0; n < g_batch; n++)
                CK(lk_conv2d_forward(&L1, y + (size_t)n * hw * hw * oc, x + (size_t)n * hw * hw * ic,
                                     w, b, 1));
        });
        printf("PARTS %s mul %.3f conv %.3f conv_per_image %.3f\n", op, mul, conv, conv1);
        /* Training: the weight gradient from the gated tensor made whole (multiply,
         * then one sgemm) against the gated rows made in cache (gated_in). */
        lk_conv2d T, G;
        lk_conv2d_cfg tc = {.n = g_batch, .ic = ic, .ih = hw, .iw = hw, .oc = oc, .kh = 1, .kw = 1,
                            .sh = 1, .sw = 1, .groups = 1, .train = 1};
        CK(lk_conv2d_init(&T, &tc));
        tc.gated_in = 1;
        CK(lk_conv2d_init(&G, &tc));
        float *dy = rnd(ny, -1, 1);
        double whole, rows;
        TIME_REPS(whole, {
            CK(lk_chmul_forward(&M, t, x, g));
            CK(lk_conv2d_backward(&T, NULL, ws, NULL, dy, t, w));
        });
        TIME_REPS(rows, CK(lk_conv2d_backward_w_gated(&G, ws, dy, x, g)));
        printf("PARTS %s dW: multiply+sgemm %.3f gated rows %.3f\n", op, whole, rows);
        lk_conv2d_free(&T);
        lk_conv2d_free(&G);
        lk_free(dy);
    }
    lk_chmul_free(&M);
    lk_conv2d_free(&L);
    lk_conv2d_free(&L1);
    lk_free(x), lk_free(g), lk_free(t), lk_free(w), lk_free(b), lk_free(y), lk_free(ws);
}

/* Inference of an MBConv's expansion and depthwise units with the SE's average pool:
 * the 1x1 convolution (bias, SiLU post-op) writing the expanded tensor, the depthwise
 * one reading it (as conv2d plans it; LK_EXPDW_AGAINST_ONEDNN=1: oneDNN's primitive),
 * and the pool, against the fused expand+depthwise (lk_expdw). */
static void bench_expdw(const char *op, int ic, int hw, int ec, int k, int s) {
    if (!wanted(op)) return;
    lk_conv2d E, D;
    lk_gpool P;
    lk_expdw F;
    const int pad = (k - 1) / 2;
    lk_conv2d_cfg ce = {.n = g_batch, .ic = ic, .ih = hw, .iw = hw, .oc = ec, .kh = 1, .kw = 1,
                        .sh = 1, .sw = 1, .groups = 1, .bias = 1, .post_silu = 1};
    lk_conv2d_cfg cd = {.n = g_batch, .ic = ec, .ih = hw, .iw = hw, .oc = ec, .kh = k, .kw = k,
                        .sh = s, .sw = s, .pt = pad, .pl = pad, .pb = pad, .pr = pad,
                        .groups = ec, .bias = 1, .post_silu = 1};
    const lk_conv_dwf_policy before = lk_conv2d_get_dwf_policy();
    if (getenv("LK_EXPDW_AGAINST_ONEDNN")) /* else D as the model plans it */
        lk_conv2d_set_dwf_policy(LK_CONV_DWF_ONEDNN);
    double t0 = now_ms();
    CK(lk_conv2d_init(&E, &ce));
    CK(lk_conv2d_init(&D, &cd));
    lk_conv2d_set_dwf_policy(before);
    CK(lk_gpool_init(&P, LK_POOL_AVG, g_batch, ec, D.oh, D.ow, 0));
    lk_expdw_cfg cf = {.n = g_batch, .ic = ic, .ih = hw, .iw = hw, .ec = ec, .k = k, .stride = s};
    CK(lk_expdw_init(&F, &cf));
    double plan = now_ms() - t0;
    size_t nx = (size_t)g_batch * hw * hw * ic, ne = (size_t)g_batch * hw * hw * ec;
    size_t ny = (size_t)g_batch * D.oh * D.ow * ec;
    float *x = rnd(nx, -1, 1), *e = rnd(ne, 0, 0), *y = rnd(ny, 0, 0), *y2 = rnd(ny, 0, 0);
    float *w1 = rnd((size_t)ec * ic, -0.2f, 0.2f), *b1 = rnd((size_t)ec, -0.1f, 0.1f);
    float *wd = rnd((size_t)ec * k * k, -0.2f, 0.2f), *bd = rnd((size_t)ec, -0.1f, 0.1f);
    float *pool = rnd((size_t)g_batch * ec, 0, 0), *pool2 = rnd((size_t)g_batch * ec, 0, 0);
    double two = 0, fused;
    if (!getenv("LK_EXPDW_ONLY")) { /* LK_EXPDW_ONLY: profile the fused path alone */
        TIME_REPS(two, {
            CK(lk_conv2d_forward(&E, e, x, w1, b1, 1));
            CK(lk_conv2d_forward(&D, y, e, wd, bd, 1));
            CK(lk_gpool_forward(&P, pool, y));
        });
    }
    TIME_REPS(fused, CK(lk_expdw_forward(&F, y2, pool2, x, w1, b1, wd, bd, 1)));
    double err = 0, ref = 0;
    for (size_t i = 0; i < ny; i++) {
        double d = fabs((double)y[i] - y2[i]);
        if (d > err) err = d;
        if (fabs(y[i]) > ref) ref = fabs(y[i]);
    }
    report(op, plan, two, fused);
    printf("CHECK %s max |fused - unfused| / max |unfused| = %.2e\n", op, err / ref);
    lk_conv2d_free(&E);
    lk_conv2d_free(&D);
    lk_gpool_free(&P);
    lk_expdw_free(&F);
    lk_free(x), lk_free(e), lk_free(y), lk_free(y2), lk_free(w1), lk_free(b1), lk_free(wd);
    lk_free(bd), lk_free(pool), lk_free(pool2);
}

/* A depthwise training forward (no bias): oneDNN's primitive against lk_dwconv_forward
 * from memory, RESULT <op> plan onednn ours, and ours with the input made row by row
 * by a BatchNorm+SiLU transform (RESULT <op>_rows plan separate fused: the transform as
 * a pass, then ours from memory, against the two in one). */
static void bench_dwfwd(const char *op, int c, int hw, int k, int s) {
    if (!wanted(op)) return;
    const int pad = (k - 1) / 2;
    lk_conv2d D;
    lk_dwconv_fwd F;
    lk_bn B;
    lk_conv2d_cfg cd = {.n = g_batch, .ic = c, .ih = hw, .iw = hw, .oc = c, .kh = k, .kw = k,
                        .sh = s, .sw = s, .pt = pad, .pl = pad, .pb = pad, .pr = pad,
                        .groups = c, .train = 1, .need_dx = 1};
    lk_dwconv_fwd_cfg cf = {.n = g_batch, .c = c, .ih = hw, .iw = hw, .k = k, .stride = s,
                            .in_rows = 1};
    lk_bn_cfg bc = {.n = g_batch, .c = c, .h = hw, .w = hw, .eps = 1e-5f, .momentum = 0.1f,
                    .mode = LK_BN_TRAIN, .need_dx = 1, .silu = 1};
    double t0 = now_ms();
    CK(lk_conv2d_init(&D, &cd));
    double plan = now_ms() - t0;
    CK(lk_dwconv_fwd_init(&F, &cf));
    CK(lk_bn_init(&B, &bc));
    size_t nx = (size_t)g_batch * hw * hw * c, ny = (size_t)g_batch * D.oh * D.ow * c;
    float *x = rnd(nx, -1, 1), *a = rnd(nx, 0, 0), *y = rnd(ny, 0, 0), *y2 = rnd(ny, 0, 0);
    float *w = rnd((size_t)c * k * k, -0.2f, 0.2f);
    float *gamma = rnd((size_t)c, 0.5f, 1.5f), *beta = rnd((size_t)c, -0.5f, 0.5f);
    float *mean = rnd((size_t)c, 0, 0), *var = rnd((size_t)c, 0, 0);
    double dn, ours, sep, rows;
    TIME_REPS(dn, CK(lk_conv2d_forward(&D, y, x, w, NULL, 0)));
    TIME_REPS(ours, CK(lk_dwconv_forward(&F, y2, x, w, 0, NULL)));
    double err = 0, ref = 0;
    for (size_t i = 0; i < ny; i++) {
        double d = fabs((double)y[i] - y2[i]);
        if (d > err) err = d;
        if (fabs(y[i]) > ref) ref = fabs(y[i]);
    }
    report(op, plan, dn, ours);
    printf("CHECK %s max |ours - onednn| / max |onednn| = %.2e\n", op, err / ref);
    CK(lk_bn_silu_forward(&B, a, mean, var, x, gamma, beta, NULL, NULL));
    lk_dw_input in;
    TIME_REPS(sep, {
        CK(lk_bn_silu_recompute(&B, a, x, mean, var, gamma, beta));
        CK(lk_dwconv_forward(&F, y, a, w, 0, NULL));
    });
    TIME_REPS(rows, {
        CK(lk_bn_silu_rows_input(&B, &in, mean, var, gamma, beta));
        CK(lk_dwconv_forward(&F, y2, x, w, 0, &in));
    });
    char name[128];
    snprintf(name, sizeof name, "%s_rows", op);
    report(name, 0, sep, rows);
    err = 0;
    for (size_t i = 0; i < ny; i++) {
        double d = fabs((double)y[i] - y2[i]);
        if (d > err) err = d;
    }
    printf("CHECK %s max |rows - separate| = %.2e (same bits expected)\n", name, err);
    lk_conv2d_free(&D);
    lk_dwconv_fwd_free(&F);
    lk_bn_free(&B);
    lk_free(x), lk_free(a), lk_free(y), lk_free(y2), lk_free(w), lk_free(gamma), lk_free(beta);
    lk_free(mean), lk_free(var);
}

/* A depthwise unit at inference (BN folded: bias, SiLU) with the SE's average pool after
 * it: oneDNN's primitive (bias, SiLU post-op) and the pool against lk_dwconv_forward_eval
 * (RESULT <op> plan onednn ours), then the same behind the block's 1x1 expansion
 * (oneDNN, bias and SiLU post-op) that writes its input (RESULT <op>_blk), the caches as
 * a block leaves them. */
static void bench_dwinf(const char *op, int ic, int hw, int c, int k, int s) {
    if (!wanted(op)) return;
    const int pad = (k - 1) / 2;
    lk_conv2d E, D;
    lk_gpool P;
    lk_dwconv_fwd F;
    lk_conv2d_cfg ce = {.n = g_batch, .ic = ic, .ih = hw, .iw = hw, .oc = c, .kh = 1, .kw = 1,
                        .sh = 1, .sw = 1, .groups = 1, .bias = 1, .post_silu = 1};
    lk_conv2d_cfg cd = {.n = g_batch, .ic = c, .ih = hw, .iw = hw, .oc = c, .kh = k, .kw = k,
                        .sh = s, .sw = s, .pt = pad, .pl = pad, .pb = pad, .pr = pad,
                        .groups = c, .bias = 1, .post_silu = 1};
    lk_dwconv_fwd_cfg cf = {.n = g_batch, .c = c, .ih = hw, .iw = hw, .k = k, .stride = s,
                            .eval = 1};
    const lk_conv_dwf_policy before = lk_conv2d_get_dwf_policy();
    lk_conv2d_set_dwf_policy(LK_CONV_DWF_ONEDNN); /* D: oneDNN's primitive */
    double t0 = now_ms();
    CK(lk_conv2d_init(&D, &cd));
    double plan = now_ms() - t0;
    lk_conv2d_set_dwf_policy(before);
    CK(lk_conv2d_init(&E, &ce));
    CK(lk_gpool_init(&P, LK_POOL_AVG, g_batch, c, D.oh, D.ow, 0));
    CK(lk_dwconv_fwd_init(&F, &cf));
    size_t nx = (size_t)g_batch * hw * hw * ic, ne = (size_t)g_batch * hw * hw * c;
    size_t ny = (size_t)g_batch * D.oh * D.ow * c;
    float *x = rnd(nx, -1, 1), *e = rnd(ne, -1, 1), *y = rnd(ny, 0, 0), *y2 = rnd(ny, 0, 0);
    float *w1 = rnd((size_t)c * ic, -0.2f, 0.2f), *b1 = rnd((size_t)c, -0.1f, 0.1f);
    float *wd = rnd((size_t)c * k * k, -0.2f, 0.2f), *bd = rnd((size_t)c, -0.1f, 0.1f);
    float *pool = rnd((size_t)g_batch * c, 0, 0), *pool2 = rnd((size_t)g_batch * c, 0, 0);
    double dn, ours, dnb, oursb;
    TIME_REPS(dn, {
        CK(lk_conv2d_forward(&D, y, e, wd, bd, 1));
        CK(lk_gpool_forward(&P, pool, y));
    });
    TIME_REPS(ours, CK(lk_dwconv_forward_eval(&F, y2, pool2, e, wd, bd, 1)));
    double err = 0, ref = 0, perr = 0, pref = 0;
    for (size_t i = 0; i < ny; i++) {
        double d = fabs((double)y[i] - y2[i]);
        if (d > err) err = d;
        if (fabs(y[i]) > ref) ref = fabs(y[i]);
    }
    for (size_t i = 0; i < (size_t)g_batch * c; i++) {
        double d = fabs((double)pool[i] - pool2[i]);
        if (d > perr) perr = d;
        if (fabs(pool[i]) > pref) pref = fabs(pool[i]);
    }
    report(op, plan, dn, ours);
    printf("CHECK %s max |ours - onednn| / max |onednn|: output %.2e pool %.2e\n", op,
           err / ref, perr / pref);
    TIME_REPS(dnb, {
        CK(lk_conv2d_forward(&E, e, x, w1, b1, 1));
        CK(lk_conv2d_forward(&D, y, e, wd, bd, 1));
        CK(lk_gpool_forward(&P, pool, y));
    });
    TIME_REPS(oursb, {
        CK(lk_conv2d_forward(&E, e, x, w1, b1, 1));
        CK(lk_dwconv_forward_eval(&F, y2, pool2, e, wd, bd, 1));
    });
    char name[128];
    snprintf(name, sizeof name, "%s_blk", op);
    report(name, 0, dnb, oursb);
    lk_conv2d_free(&E);
    lk_conv2d_free(&D);
    lk_gpool_free(&P);
    lk_dwconv_fwd_free(&F);
    lk_free(x), lk_free(e), lk_free(y), lk_free(y2), lk_free(w1), lk_free(b1), lk_free(wd);
    lk_free(bd), lk_free(pool), lk_free(pool2);
}

/* A dense 3x3 stride-1 convolution by oneDNN's direct kernel against Winograd
 * (conv2d_winograd.c): the inference forward (bias, SiLU post-op) as RESULT <op> plan
 * direct winograd, a training plan's input gradient as RESULT <op>_dx and its weight
 * gradient (direct: the path conv2d picks without Winograd) as RESULT <op>_dw. */
static void bench_wino(const char *op, int ic, int hw, int oc) {
    if (!wanted(op)) return;
    lk_conv2d_cfg ci = {.n = g_batch, .ic = ic, .ih = hw, .iw = hw, .oc = oc, .kh = 3, .kw = 3,
                        .sh = 1, .sw = 1, .pt = 1, .pl = 1, .pb = 1, .pr = 1, .groups = 1,
                        .bias = 1, .post_silu = 1};
    lk_conv2d_cfg ct = ci;
    ct.bias = ct.post_silu = 0;
    ct.train = ct.need_dx = 1;
    lk_conv2d D, W, Dt, Wt;
    const lk_conv_wino_policy before = lk_conv2d_get_wino_policy();
    double t0 = now_ms();
    lk_conv2d_set_wino_policy(LK_CONV_WINO_NEVER);
    CK(lk_conv2d_init(&D, &ci));
    CK(lk_conv2d_init(&Dt, &ct));
    lk_conv2d_set_wino_policy(LK_CONV_WINO_ALWAYS);
    CK(lk_conv2d_init(&W, &ci));
    CK(lk_conv2d_init(&Wt, &ct));
    lk_conv2d_set_wino_policy(before);
    double plan = now_ms() - t0;
    size_t nx = (size_t)g_batch * hw * hw * ic, ny = (size_t)g_batch * hw * hw * oc;
    float *x = rnd(nx, -1, 1), *w = rnd((size_t)oc * ic * 9, -0.1f, 0.1f);
    float *b = rnd((size_t)oc, -0.1f, 0.1f), *y = rnd(ny, 0, 0), *y2 = rnd(ny, 0, 0);
    float *dy = rnd(ny, -1, 1), *dx = rnd(nx, 0, 0), *dx2 = rnd(nx, 0, 0);
    float *dw = rnd((size_t)oc * ic * 9, 0, 0), *dw2 = rnd((size_t)oc * ic * 9, 0, 0);
    double fd, fw, bd, bw, gd, gw;
    TIME_REPS(fd, CK(lk_conv2d_forward(&D, y, x, w, b, 1)));
    TIME_REPS(fw, CK(lk_conv2d_forward(&W, y2, x, w, b, 1)));
    TIME_REPS(bd, CK(lk_conv2d_backward(&Dt, dx, NULL, NULL, dy, x, w)));
    TIME_REPS(bw, CK(lk_conv2d_backward(&Wt, dx2, NULL, NULL, dy, x, w)));
    TIME_REPS(gd, CK(lk_conv2d_backward(&Dt, NULL, dw, NULL, dy, x, w)));
    TIME_REPS(gw, CK(lk_conv2d_backward(&Wt, NULL, dw2, NULL, dy, x, w)));
    double ey = 0, ry = 0, ex = 0, rx = 0, ew = 0, rw = 0;
    for (size_t i = 0; i < (size_t)oc * ic * 9; i++)
        ew = fmax(ew, fabs((double)dw[i] - dw2[i])), rw = fmax(rw, fabs(dw[i]));
    for (size_t i = 0; i < ny; i++) ey = fmax(ey, fabs((double)y[i] - y2[i])), ry = fmax(ry, fabs(y[i]));
    for (size_t i = 0; i < nx; i++) ex = fmax(ex, fabs((double)dx[i] - dx2[i])), rx = fmax(rx, fabs(dx[i]));
    report(op, plan, fd, fw);
    char dxop[128];
    snprintf(dxop, sizeof dxop, "%s_dx", op);
    report(dxop, plan, bd, Wt.wino_dx ? bw : NAN);
    snprintf(dxop, sizeof dxop, "%s_dw", op);
    report(dxop, plan, gd, Wt.wino_dw ? gw : NAN);
    printf("CHECK %s max |winograd - direct| / max |direct|: y %.2e, dx %.2e, dw %.2e\n", op,
           ey / ry, ex / rx, ew / rw);
    lk_conv2d_free(&D), lk_conv2d_free(&W), lk_conv2d_free(&Dt), lk_conv2d_free(&Wt);
    lk_free(x), lk_free(w), lk_free(b), lk_free(y), lk_free(y2), lk_free(dy), lk_free(dx);
    lk_free(dx2), lk_free(dw), lk_free(dw2);
}

/* Plain-C streaming loops: residual add (forward; backward = the in-place add of
 * gradient accumulation), stochastic depth, dropout, the spatial-attention gate,
 * attention pooling and the depthwise bias gradient. */
static void bench_plain(const char *op, int ch, int hw) {
    if (!wanted(op)) return;
    size_t nx = (size_t)g_batch * hw * hw * ch;
    int64_t npos = (int64_t)g_batch * hw * hw;
    float *a = rnd(nx, -1, 1), *b = rnd(nx, -1, 1), *y = rnd(nx, 0, 0);
    float *m = rnd((size_t)npos, 0, 1), *dm = rnd((size_t)npos, 0, 0);
    float *p = rnd((size_t)g_batch * ch, 0, 0);
    uint8_t *mask = lk_alloc(nx);
    double fwd = 0, bwd = 0;
    if (!strncmp(op, "add", 3)) {
        TIME_REPS(fwd, CK(lk_add_forward(y, a, b, (int64_t)nx)));
        TIME_REPS(bwd, CK(lk_add_inplace(y, a, (int64_t)nx)));
    } else if (!strncmp(op, "sdepth", 6)) {
        TIME_REPS(fwd, CK(lk_stochdepth_forward(y, mask, a, g_batch, (int64_t)nx / g_batch, 0.2f, 7)));
        TIME_REPS(bwd, CK(lk_stochdepth_backward(y, b, mask, g_batch, (int64_t)nx / g_batch, 0.2f)));
    } else if (!strncmp(op, "dropout", 7)) {
        TIME_REPS(fwd, CK(lk_dropout_forward(y, mask, a, (int64_t)nx, 0.3f, 7)));
        TIME_REPS(bwd, CK(lk_dropout_backward(y, b, mask, (int64_t)nx, 0.3f)));
    } else if (!strncmp(op, "spmul", 5)) {
        TIME_REPS(fwd, CK(lk_spatial_mul_forward(y, a, m, npos, ch)));
        TIME_REPS(bwd, CK(lk_spatial_mul_backward(y, dm, b, a, m, npos, ch)));
    } else if (!strncmp(op, "wsum", 4)) {
        TIME_REPS(fwd, CK(lk_weighted_sum_forward(p, a, m, g_batch, (int64_t)hw * hw, ch)));
        TIME_REPS(bwd, CK(lk_weighted_sum_backward(y, dm, p, a, m, g_batch, (int64_t)hw * hw, ch, 0)));
    } else if (!strncmp(op, "dwbias", 6)) {
        TIME_REPS(bwd, CK(lk_dwconv_bwd_bias(p, a, g_batch, ch, hw, hw)));
    }
    report(op, 0, fwd, bwd);
    float *bufs[] = {a, b, y, m, dm, p};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) lk_free(bufs[i]);
    lk_free(mask);
}

/* One AdamW step (with gradient-norm clipping) over `n` parameters in one segment. */
static void bench_adamw(const char *op, int64_t n) {
    if (!wanted(op)) return;
    float *w = rnd((size_t)n, -1, 1), *g = rnd((size_t)n, -1e-3f, 1e-3f);
    float *m1 = rnd((size_t)n, 0, 0), *m2 = rnd((size_t)n, 0, 0);
    lk_optim_segment seg = {.param_offset = 0, .count = n, .state_offset = 0};
    lk_optim_group grp;
    lk_optim_group_defaults(&grp, LK_OPTIM_ADAMW);
    lk_optim opt = {.kind = LK_OPTIM_ADAMW, .num_params = n, .num_state = n, .segments = &seg,
                    .num_segments = 1, .groups = &grp, .num_groups = 1, .max_grad_norm = 1e9};
    lk_optim_report rep;
    double step;
    TIME_REPS(step, CK(lk_optim_step(&opt, w, g, m1, m2, &rep)));
    report(op, 0, step, 0);
    lk_free(w), lk_free(g), lk_free(m1), lk_free(m2);
}

int main(int argc, char **argv) {
    int threads = 0;
    for (int i = 1; i < argc; i++) {
        if (i + 1 < argc && !strcmp(argv[i], "--reps")) g_reps = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--warmup")) g_warmup = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--batch")) g_batch = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--threads")) threads = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--only")) g_only = argv[++i];
        else if (!strcmp(argv[i], "--min")) g_min = 1;
        else {
            fprintf(stderr, "usage: %s [--reps N] [--warmup N] [--batch N] [--threads N] "
                            "[--min] [--only OP]\n", argv[0]);
            return 2;
        }
    }
    if (g_reps < 1 || g_warmup < 0 || g_batch < 1) {
        fprintf(stderr, "bench_layers: --reps and --batch must be >= 1, --warmup >= 0\n");
        return 2;
    }
    if (threads > 0) lk_set_num_threads(threads);
    lk_build_info bi;
    lk_get_build_info(&bi);
    printf("INFO onednn %d.%d.%d runtime=%s isa=%s threads=%d batch=%d\n", bi.dnnl_major,
           bi.dnnl_minor, bi.dnnl_patch, bi.cpu_runtime, bi.isa, lk_get_num_threads(), g_batch);
    /* EfficientNet-B3 at 300x300 (names shared with benchmarks/bench_layers.py). */
    bench_conv("stem_conv3x3_s2_3-40_300", 3, 300, 40, 3, 2, 1, 0);
    bench_conv("dw3x3_s1_144_75", 144, 75, 144, 3, 1, 144, 1);
    bench_conv("dw5x5_s2_144_75", 144, 75, 144, 5, 2, 144, 1);
    bench_conv("pw1x1_expand_24-144_75", 24, 75, 144, 1, 1, 1, 1);
    bench_conv("pw1x1_project_816-136_19", 816, 19, 136, 1, 1, 1, 1);
    /* Depthwise weight gradient at the B3 shapes (expanded channels per stage). */
    bench_dw_bwd_w("dwbw_k5_s2_192_75", 192, 75, 5, 2);
    bench_dw_bwd_w("dwbw_k5_s1_288_38", 288, 38, 5, 1);
    bench_dw_bwd_w("dwbw_k5_s1_576_19", 576, 19, 5, 1);
    bench_dw_bwd_w("dwbw_k5_s1_816_19", 816, 19, 5, 1);
    bench_dw_bwd_w("dwbw_k5_s2_816_19", 816, 19, 5, 2);
    bench_dw_bwd_w("dwbw_k5_s1_1392_10", 1392, 10, 5, 1);
    bench_dw_bwd_w("dwbw_k3_s1_40_150", 40, 150, 3, 1);
    bench_dw_bwd_w("dwbw_k3_s1_24_150", 24, 150, 3, 1);
    bench_dw_bwd_w("dwbw_k3_s2_144_150", 144, 150, 3, 2);
    bench_dw_bwd_w("dwbw_k3_s1_192_75", 192, 75, 3, 1);
    bench_dw_bwd_w("dwbw_k3_s2_288_38", 288, 38, 3, 2);
    bench_dw_bwd_w("dwbw_k3_s1_576_19", 576, 19, 3, 1);
    bench_dw_bwd_w("dwbw_k3_s1_1392_10", 1392, 10, 3, 1);
    bench_dw_bwd_w("dwbw_k3_s1_2304_10", 2304, 10, 3, 1);
    /* Dense weight gradients: B3 at 300 and V2-S at 384 (full convolutions). */
    bench_dense_bwd_w("convbw_b3_stem_3-40_300", 3, 300, 40, 3, 2);
    bench_dense_bwd_w("convbw_b3_1x1_40-24_150", 40, 150, 24, 1, 1);
    bench_dense_bwd_w("convbw_b3_1x1_24-144_150", 24, 150, 144, 1, 1);
    bench_dense_bwd_w("convbw_b3_1x1_144-32_75", 144, 75, 32, 1, 1);
    bench_dense_bwd_w("convbw_b3_1x1_48-288_38", 48, 38, 288, 1, 1);
    bench_dense_bwd_w("convbw_b3_1x1_576-136_19", 576, 19, 136, 1, 1);
    bench_dense_bwd_w("convbw_b3_1x1_2304-384_10", 2304, 10, 384, 1, 1);
    bench_dense_bwd_w("convbw_b3_head_3x3_64-32_10", 64, 10, 32, 3, 1);
    bench_dense_bwd_w("convbw_b3_se_816-34_1", 816, 1, 34, 1, 1);
    bench_dense_bwd_w("convbw_v2s_stem_3-24_384", 3, 384, 24, 3, 2);
    bench_dense_bwd_w("convbw_v2s_3x3_24-24_192", 24, 192, 24, 3, 1);
    bench_dense_bwd_w("convbw_v2s_3x3s2_24-96_192", 24, 192, 96, 3, 2);
    bench_dense_bwd_w("convbw_v2s_3x3_48-192_96", 48, 96, 192, 3, 1);
    bench_dense_bwd_w("convbw_v2s_3x3s2_48-192_96", 48, 96, 192, 3, 2);
    bench_dense_bwd_w("convbw_v2s_3x3_64-256_48", 64, 48, 256, 3, 1);
    bench_dense_bwd_w("convbw_v2s_1x1_192-48_96", 192, 96, 48, 1, 1);
    bench_dense_bwd_w("convbw_v2s_1x1_256-64_48", 256, 48, 64, 1, 1);
    bench_dense_bwd_w("convbw_v2s_1x1_160-960_24", 160, 24, 960, 1, 1);
    bench_dense_bwd_w("convbw_v2s_1x1_1536-256_12", 1536, 12, 256, 1, 1);
    bench_bn_silu("bn_train_144_75", 144, 75, 1, 0);
    bench_bn_silu("silu_144_75", 144, 75, 0, 1);
    bench_bn_silu("bn+silu_144_75", 144, 75, 1, 1);
    bench_bn_silu("bn+silu_fused_144_75", 144, 75, 2, 1);
    bench_bn_silu("bn+silu_24_192", 24, 192, 1, 1);
    bench_bn_silu("bn+silu_fused_24_192", 24, 192, 2, 1);
    bench_bn_silu("bn+silu_1536_12", 1536, 12, 1, 1);
    bench_bn_silu("bn+silu_fused_1536_12", 1536, 12, 2, 1);
    bench_bn_silu("silu_1536_10", 1536, 10, 0, 1);
    bench_chmul("se_chmul_144_75", 144, 75);
    bench_dwfwd("dwfwd_k3_s2_144_150", 144, 150, 3, 2);
    bench_dwfwd("dwfwd_k3_s1_192_75", 192, 75, 3, 1);
    bench_dwfwd("dwfwd_k5_s2_192_75", 192, 75, 5, 2);
    bench_dwfwd("dwfwd_k5_s1_288_38", 288, 38, 5, 1);
    bench_dwfwd("dwfwd_k3_s1_576_19", 576, 19, 3, 1);
    bench_dwfwd("dwfwd_k5_s1_816_19", 816, 19, 5, 1);
    bench_dwfwd("dwfwd_k5_s1_1392_10", 1392, 10, 5, 1);
    bench_dwfwd("dwfwd_k3_s1_2304_10", 2304, 10, 3, 1);
    bench_dwfwd("dwfwd_k3_s1_40_150", 40, 150, 3, 1);
    bench_dwfwd("dwfwd_k3_s1_24_192", 24, 192, 3, 1);
    bench_dwfwd("dwfwd_k3_s1_960_24", 960, 24, 3, 1);
    bench_dwfwd("dwfwd_k3_s1_1536_12", 1536, 12, 3, 1);
    bench_dwinf("dwinf_40_150_40_k3s1", 40, 150, 40, 3, 1);
    bench_dwinf("dwinf_24_150_24_k3s1", 24, 150, 24, 3, 1);
    bench_dwinf("dwinf_96_19_576_k3s1", 96, 19, 576, 3, 1);
    bench_dwinf("dwinf_136_19_816_k5s1", 136, 19, 816, 5, 1);
    bench_dwinf("dwinf_136_19_816_k5s2", 136, 19, 816, 5, 2);
    bench_dwinf("dwinf_96_19_576_k5s1", 96, 19, 576, 5, 1);
    bench_dwinf("dwinf_232_10_1392_k5s1", 232, 10, 1392, 5, 1);
    bench_dwinf("dwinf_384_10_2304_k3s1", 384, 10, 2304, 3, 1);
    bench_dwinf("dwinf_48_38_288_k5s1", 48, 38, 288, 5, 1);
    bench_dwinf("dwinf_128_24_768_k3s1", 128, 24, 768, 3, 1);
    bench_dwinf("dwinf_160_24_960_k3s1", 160, 24, 960, 3, 1);
    bench_dwinf("dwinf_160_24_960_k3s2", 160, 24, 960, 3, 2);
    bench_dwinf("dwinf_256_12_1536_k3s1", 256, 12, 1536, 3, 1);
    bench_expdw("expdw_24_150_144_k3s2", 24, 150, 144, 3, 2);
    bench_expdw("expdw_32_75_192_k3s1", 32, 75, 192, 3, 1);
    bench_expdw("expdw_32_75_192_k5s2", 32, 75, 192, 5, 2);
    bench_expdw("expdw_48_38_288_k5s1", 48, 38, 288, 5, 1);
    bench_expdw("expdw_48_38_288_k3s2", 48, 38, 288, 3, 2);
    bench_expdw("expdw_96_19_576_k3s1", 96, 19, 576, 3, 1);
    bench_expdw("expdw_136_19_816_k5s1", 136, 19, 816, 5, 1);
    bench_expdw("expdw_232_10_1392_k5s1", 232, 10, 1392, 5, 1);
    bench_expdw("expdw_64_48_256_k3s2", 64, 48, 256, 3, 2);
    bench_expdw("expdw_128_24_512_k3s1", 128, 24, 512, 3, 1);
    bench_expdw("expdw_160_24_960_k3s1", 160, 24, 960, 3, 1);
    bench_expdw("expdw_256_12_1536_k3s1", 256, 12, 1536, 3, 1);
    /* Winograd against the direct kernel: V2-S's FusedMBConv layers at 384 and 300, the
     * same on smaller maps (where the rule stops), the attention head's widest layer. */
    bench_wino("wino_24_192_24", 24, 192, 24);
    bench_wino("wino_48_96_192", 48, 96, 192);
    bench_wino("wino_64_48_256", 64, 48, 256);
    bench_wino("wino_48_75_192", 48, 75, 192);
    bench_wino("wino_64_38_256", 64, 38, 256);
    bench_wino("wino_48_24_192", 48, 24, 192);
    bench_wino("wino_64_12_256", 64, 12, 256);
    bench_wino("wino_32_16_64", 32, 16, 64);
    bench_wino("wino_16_48_64", 16, 48, 64);
    bench_wino("wino_64_10_32", 64, 10, 32);
    bench_wino("wino_32_10_16", 32, 10, 16);
    bench_wino("wino_2_10_64", 2, 10, 64);
    bench_wino("wino_48_32_192", 48, 32, 192);
    bench_se_fold("sefold_40_150_24", 40, 150, 24);
    bench_se_fold("sefold_192_75_32", 192, 75, 32);
    bench_se_fold("sefold_288_38_48", 288, 38, 48);
    bench_se_fold("sefold_576_19_96", 576, 19, 96);
    bench_se_fold("sefold_816_19_136", 816, 19, 136);
    bench_se_fold("sefold_1392_10_232", 1392, 10, 232);
    bench_se_fold("sefold_768_24_128", 768, 24, 128);
    bench_se_fold("sefold_960_24_160", 960, 24, 160);
    bench_gpool("gap_1536_10", LK_POOL_AVG, 1536, 10);
    bench_linear("linear_1536-2", 1536, 2);
    bench_plain("add_144_75", 144, 75);
    bench_plain("sdepth_144_75", 144, 75);
    bench_plain("dropout_144_75", 144, 75);
    bench_plain("spmul_1536_10", 1536, 10);
    bench_plain("wsum_1536_10", 1536, 10);
    bench_plain("dwbias_144_75", 144, 75);
    bench_adamw("adamw_12M", 12233232);
    lk_shutdown();
    return 0;
}
