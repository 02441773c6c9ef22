/* C-level test of every layer in csrc/layers/lk_layers.h, meant to run under
 * AddressSanitizer + UndefinedBehaviorSanitizer + LeakSanitizer
 * (csrc/tests/run_sanitized.sh builds and runs it).
 *
 * The optimizer step (csrc/model/lk_optim.h) is tested here too, against a double
 * reference of torch.optim's formulas.
 *
 * Each layer's forward values and gradients are compared with naive loops in
 * double precision written here; bad arguments must fail with a status and a
 * non-empty lk_last_error(); `_free` must accept zeroed structs and structs
 * left by a failed `_init`. Layer functions are referenced weakly so that a
 * layer whose .c file is not built yet is reported as MISSING (a failure), not
 * skipped. Usage: test_layers [substring]  (runs only tests whose name matches).
 */
#define _POSIX_C_SOURCE 200809L /* fork, alarm, waitpid */
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "lk_cpu.h"
#include "lk_dwconv.h"
#include "lk_layers.h"
#include "lk_optim.h"

/* Weak references: a missing layer file leaves these NULL instead of breaking the link. */
#pragma weak lk_silu_forward_fast_serial
#pragma weak lk_conv2d_init
#pragma weak lk_conv2d_forward
#pragma weak lk_conv2d_backward
#pragma weak lk_conv2d_free
#pragma weak lk_conv2d_set_bwd_w_policy
#pragma weak lk_bn_silu_forward
#pragma weak lk_bn_silu_backward
#pragma weak lk_bn_silu_backward_gated
#pragma weak lk_bn_init
#pragma weak lk_bn_forward
#pragma weak lk_bn_backward
#pragma weak lk_bn_free
#pragma weak lk_act_init
#pragma weak lk_act_forward
#pragma weak lk_act_backward
#pragma weak lk_act_free
#pragma weak lk_gpool_init
#pragma weak lk_gpool_forward
#pragma weak lk_gpool_backward
#pragma weak lk_gpool_free
#pragma weak lk_linear_init
#pragma weak lk_linear_forward
#pragma weak lk_linear_backward
#pragma weak lk_linear_free
#pragma weak lk_chmul_init
#pragma weak lk_chmul_forward
#pragma weak lk_chmul_backward
#pragma weak lk_chmul_free
#pragma weak lk_add_forward
#pragma weak lk_add_inplace
#pragma weak lk_dropout_forward
#pragma weak lk_dropout_backward
#pragma weak lk_stochdepth_forward
#pragma weak lk_stochdepth_backward
#pragma weak lk_xent_forward
#pragma weak lk_xent_backward
#pragma weak lk_chanstat_forward
#pragma weak lk_chanstat_backward
#pragma weak lk_spatial_mul_forward
#pragma weak lk_spatial_mul_backward
#pragma weak lk_weighted_sum_forward
#pragma weak lk_weighted_sum_backward
#pragma weak lk_softmax_init
#pragma weak lk_softmax_forward
#pragma weak lk_softmax_backward
#pragma weak lk_softmax_free
#pragma weak lk_dwconv_bwd_weights
#pragma weak lk_dwconv_fwd_init
#pragma weak lk_dwconv_forward
#pragma weak lk_dwconv_fwd_free
#pragma weak lk_dwconv_forward_eval
#pragma weak lk_dwconv_set_fwd_layout
#pragma weak lk_stem_init
#pragma weak lk_stem_forward
#pragma weak lk_stem_free
#pragma weak lk_stem_supported
#pragma weak lk_conv2d_set_stem_policy
#pragma weak lk_expdw_init
#pragma weak lk_expdw_forward
#pragma weak lk_expdw_free
#pragma weak lk_wino_init
#pragma weak lk_wino_set_weights
#pragma weak lk_wino_forward
#pragma weak lk_wino_free
#pragma weak lk_conv2d_set_wino_policy
#pragma weak lk_dwconv_bwd_bias
#pragma weak lk_dwconv_set_policy
#pragma weak lk_optim_group_defaults
#pragma weak lk_optim_step
#pragma weak lk_optim_grad_norm
#pragma weak lk_optim_clip_grad_norm

#ifndef RTOL
#define RTOL 1e-4 /* fp32 result vs double reference, relative (see close_to) */
#endif

/* ------------------------------------------------------------ test harness */
static char g_msg[1024];
static int g_missing;

static int failf(int line, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int failf(int line, const char *fmt, ...) {
    int k = snprintf(g_msg, sizeof g_msg, "line %d: ", line);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_msg + k, sizeof g_msg - (size_t)k, fmt, ap);
    va_end(ap);
    return 0;
}

#define EXPECT(cond, ...) \
    do { if (!(cond)) return failf(__LINE__, __VA_ARGS__); } while (0)
/* A call that must succeed. */
#define OK(call)                                                                         \
    do {                                                                                 \
        lk_status s_ = (call);                                                           \
        if (s_ != LK_OK)                                                                 \
            return failf(__LINE__, "%s -> %s: %s", #call, lk_status_str(s_), lk_last_error()); \
    } while (0)
/* A call that must fail with `code` (or any error when code == LK_OK) and say why. */
#define BAD(call, code)                                                                  \
    do {                                                                                 \
        lk_clear_error();                                                                \
        lk_status s_ = (call);                                                           \
        if (s_ == LK_OK || ((code) != LK_OK && s_ != (code)))                            \
            return failf(__LINE__, "%s -> %s, expected %s", #call, lk_status_str(s_),    \
                         (code) == LK_OK ? "an error" : lk_status_str(code));            \
        if (!lk_last_error()[0])                                                         \
            return failf(__LINE__, "%s failed with an empty lk_last_error()", #call);    \
    } while (0)
#define ANY_ERR LK_OK
/* A layer whose functions are not linked: reported, counted as a failure. */
#define NEED(fn, file)                                                                   \
    do {                                                                                 \
        if (!(fn)) {                                                                     \
            g_missing = 1;                                                               \
            return failf(__LINE__, "MISSING: %s not linked (%s not built)", #fn, file);   \
        }                                                                                \
    } while (0)
#define CLOSE(what, got, ref, n) \
    do { if (!close_to(what, got, ref, n, RTOL, __LINE__)) return 0; } while (0)

/* Per-test allocations, released after each test (so early returns do not leak). */
static void *g_allocs[512];
static int g_nallocs;

static void *talloc(size_t bytes) {
    if (g_nallocs == (int)(sizeof g_allocs / sizeof g_allocs[0])) {
        fprintf(stderr, "test_layers: too many allocations in one test\n");
        exit(2);
    }
    void *p = calloc(1, bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "test_layers: out of memory\n");
        exit(2);
    }
    return g_allocs[g_nallocs++] = p;
}
static float *fbuf(size_t n) { return talloc(n * sizeof(float)); }
static double *dbuf(size_t n) { return talloc(n * sizeof(double)); }
static void tfree_all(void) {
    while (g_nallocs) free(g_allocs[--g_nallocs]);
}

/* Deterministic data: xorshift64*, uniform in [lo, hi). */
static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
static double urand(void) {
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return (double)((g_rng * 0x2545F4914F6CDD1Dull) >> 11) * (1.0 / 9007199254740992.0);
}
static float *frand(size_t n, double lo, double hi) {
    float *p = fbuf(n);
    for (size_t i = 0; i < n; i++) p[i] = (float)(lo + (hi - lo) * urand());
    return p;
}

/* Relative error against a double reference, scaled by the reference's largest
 * magnitude so that near-zero results of long sums are not over-penalised:
 * |got - ref| <= rtol * (|ref| + 0.05 * max|ref|). */
static int close_to(const char *what, const float *got, const double *ref, size_t n, double rtol,
                    int line) {
    double amax = 0;
    for (size_t i = 0; i < n; i++) amax = fmax(amax, fabs(ref[i]));
    for (size_t i = 0; i < n; i++) {
        double err = fabs((double)got[i] - ref[i]);
        if (!(err <= rtol * (fabs(ref[i]) + 0.05 * amax) + 1e-30))
            return failf(line, "%s[%zu] = %.9g, reference %.9g (max|ref| %.3g)", what, i,
                         (double)got[i], ref[i], amax);
    }
    return 1;
}

/* float -> double copy, for references that are plain copies/scales. */
static double *to_d(const float *p, size_t n) {
    double *d = dbuf(n);
    for (size_t i = 0; i < n; i++) d[i] = p[i];
    return d;
}

/* A reduction under test: fills out [nout] from inputs fixed in ctx. */
typedef lk_status (*reduce_fn)(void *ctx, float *out);

/* Runs fn at top level with 1 and with 2 threads, and from both threads of a
 * 2-thread parallel region with nesting disabled (omp_set_max_active_levels(1)):
 * there an inner `parallel` has ONE member while omp_get_max_threads() still
 * says 2, which breaks code that sizes per-thread partials by
 * omp_get_max_threads(). Every run must succeed and give the same bits; the
 * first run's result is left in `out` for the caller's reference check. */
static int same_bits_any_team(const char *what, reduce_fn fn, void *ctx, float *out,
                              size_t nout, int line) {
    float *r[4] = {out, fbuf(nout), fbuf(nout), fbuf(nout)};
    for (int i = 0; i < 4; i++)
        for (size_t j = 0; j < nout; j++) r[i][j] = 1e6f + (float)i; /* must be overwritten */
    lk_status st[4] = {LK_OK, LK_OK, LK_OK, LK_OK};
    const int threads0 = lk_get_num_threads();
    int team = 1;
    lk_set_num_threads(1);
    st[0] = fn(ctx, r[0]);
    lk_set_num_threads(2);
    st[1] = fn(ctx, r[1]);
#ifdef _OPENMP
    const int levels0 = omp_get_max_active_levels();
    omp_set_max_active_levels(1);
#pragma omp parallel num_threads(2)
    {
        const int t = omp_get_thread_num();
        if (t == 0) team = omp_get_num_threads();
        st[2 + t] = fn(ctx, r[2 + t]);
    }
    omp_set_max_active_levels(levels0);
#else
    st[2] = fn(ctx, r[2]);
#endif
    lk_set_num_threads(threads0);
    static const char *runs[] = {"1 thread", "2 threads", "nested, outer thread 0",
                                 "nested, outer thread 1"};
    for (int i = 0; i < 2 + team; i++) {
        if (st[i] != LK_OK)
            return failf(line, "%s (%s): %s: %s", what, runs[i], lk_status_str(st[i]),
                         lk_last_error());
        if (i && memcmp(r[i], r[0], nout * sizeof(float)) != 0) {
            size_t j = 0;
            while (j < nout && !memcmp(&r[i][j], &r[0][j], sizeof(float))) j++;
            return failf(line, "%s: %s gives [%zu] = %.9g, 1 thread %.9g (not the same bits)",
                         what, runs[i], j, (double)r[i][j], (double)r[0][j]);
        }
    }
    return 1;
}
/* A layer object serves one thread at a time (its memory objects, scratchpads and
 * planned partial sums are its own): a reduction under SAME_BITS keeps one layer per
 * outer thread and picks it with this. */
static int outer_thread(void) {
#ifdef _OPENMP
    return omp_in_parallel() ? omp_get_thread_num() & 1 : 0;
#else
    return 0;
#endif
}
#define SAME_BITS(what, fn, ctx, out, nout) \
    do { if (!same_bits_any_team(what, fn, ctx, out, nout, __LINE__)) return 0; } while (0)

/* ------------------------------------------------------------------ conv2d */
static void ref_conv_fwd(double *y, const float *x, const float *w, const float *b,
                         const lk_conv2d_cfg *c, int oh, int ow) {
    int icg = c->ic / c->groups, ocg = c->oc / c->groups;
    for (int n = 0; n < c->n; n++)
        for (int oy = 0; oy < oh; oy++)
            for (int ox = 0; ox < ow; ox++)
                for (int o = 0; o < c->oc; o++) {
                    int g = o / ocg;
                    double s = b ? b[o] : 0.0;
                    for (int ky = 0; ky < c->kh; ky++) {
                        int iy = oy * c->sh - c->pt + ky;
                        if (iy < 0 || iy >= c->ih) continue;
                        for (int kx = 0; kx < c->kw; kx++) {
                            int ix = ox * c->sw - c->pl + kx;
                            if (ix < 0 || ix >= c->iw) continue;
                            const float *xp = x + ((size_t)(n * c->ih + iy) * c->iw + ix) * c->ic;
                            for (int ci = 0; ci < icg; ci++)
                                s += (double)xp[g * icg + ci] *
                                     w[((size_t)(o * icg + ci) * c->kh + ky) * c->kw + kx];
                        }
                    }
                    y[((size_t)(n * oh + oy) * ow + ox) * c->oc + o] = s;
                }
}

static void ref_conv_bwd(double *dx, double *dw, double *db, const float *dy, const float *x,
                         const float *w, const lk_conv2d_cfg *c, int oh, int ow) {
    int icg = c->ic / c->groups, ocg = c->oc / c->groups;
    for (int n = 0; n < c->n; n++)
        for (int oy = 0; oy < oh; oy++)
            for (int ox = 0; ox < ow; ox++)
                for (int o = 0; o < c->oc; o++) {
                    int g = o / ocg;
                    double d = dy[((size_t)(n * oh + oy) * ow + ox) * c->oc + o];
                    db[o] += d;
                    for (int ky = 0; ky < c->kh; ky++) {
                        int iy = oy * c->sh - c->pt + ky;
                        if (iy < 0 || iy >= c->ih) continue;
                        for (int kx = 0; kx < c->kw; kx++) {
                            int ix = ox * c->sw - c->pl + kx;
                            if (ix < 0 || ix >= c->iw) continue;
                            size_t xi = ((size_t)(n * c->ih + iy) * c->iw + ix) * c->ic;
                            for (int ci = 0; ci < icg; ci++) {
                                size_t wi = ((size_t)(o * icg + ci) * c->kh + ky) * c->kw + kx;
                                dx[xi + g * icg + ci] += d * w[wi];
                                dw[wi] += d * x[xi + g * icg + ci];
                            }
                        }
                    }
                }
}

/* One configuration: forward (train and eval plans), full backward, and the
 * partial-gradient paths (dx only; dw/db only on a need_dx=0 plan). */
static int conv_case_body(lk_conv2d *L, lk_conv2d *E, lk_conv2d *W, lk_conv2d_cfg c) {
    c.train = 1;
    c.need_dx = 1;
    OK(lk_conv2d_init(L, &c));
    int oh = L->oh, ow = L->ow;
    EXPECT(oh == (c.ih + c.pt + c.pb - c.kh) / c.sh + 1 && ow == (c.iw + c.pl + c.pr - c.kw) / c.sw + 1,
           "output size %dx%d", oh, ow);
    size_t nx = (size_t)c.n * c.ih * c.iw * c.ic, ny = (size_t)c.n * oh * ow * c.oc;
    size_t nw = (size_t)c.oc * (c.ic / c.groups) * c.kh * c.kw;
    float *x = frand(nx, -1, 1), *w = frand(nw, -1, 1), *b = c.bias ? frand(c.oc, -1, 1) : NULL;
    float *dy = frand(ny, -1, 1), *y = fbuf(ny), *dx = fbuf(nx), *dw = fbuf(nw), *db = fbuf(c.oc);
    double *ry = dbuf(ny), *rdx = dbuf(nx), *rdw = dbuf(nw), *rdb = dbuf(c.oc);
    ref_conv_fwd(ry, x, w, b, &c, oh, ow);
    ref_conv_bwd(rdx, rdw, rdb, dy, x, w, &c, oh, ow);

    OK(lk_conv2d_forward(L, y, x, w, b, 0));
    CLOSE("conv y", y, ry, ny);
    /* Backward overwrites: poison the outputs first. */
    for (size_t i = 0; i < nx; i++) dx[i] = 1e6f;
    for (size_t i = 0; i < nw; i++) dw[i] = 1e6f;
    OK(lk_conv2d_backward(L, dx, dw, c.bias ? db : NULL, dy, x, w));
    CLOSE("conv dx", dx, rdx, nx);
    CLOSE("conv dw", dw, rdw, nw);
    if (c.bias) CLOSE("conv db", db, rdb, (size_t)c.oc);
    /* dx alone (weights passed again, no forward in between). */
    memset(dx, 0, nx * sizeof *dx);
    OK(lk_conv2d_backward(L, dx, NULL, NULL, dy, x, w));
    CLOSE("conv dx (dx only)", dx, rdx, nx);

    /* Eval plan with the weight cache: same version reuses the reordered
     * weights, a new version picks up changed weights. */
    lk_conv2d_cfg ce = c;
    ce.train = 0;
    ce.need_dx = 0;
    OK(lk_conv2d_init(E, &ce));
    OK(lk_conv2d_forward(E, y, x, w, b, 7));
    CLOSE("conv y (eval)", y, ry, ny);
    OK(lk_conv2d_forward(E, y, x, w, b, 7));
    CLOSE("conv y (eval, cached weights)", y, ry, ny);
    for (size_t i = 0; i < nw; i++) w[i] = -w[i];
    for (int o = 0; o < c.oc && b; o++) b[o] = -b[o];
    for (size_t i = 0; i < ny; i++) ry[i] = -ry[i];
    OK(lk_conv2d_forward(E, y, x, w, b, 8));
    CLOSE("conv y (eval, new weight version)", y, ry, ny);
    BAD(lk_conv2d_backward(E, dx, dw, db, dy, x, w), ANY_ERR); /* forward-only plan */
    for (size_t i = 0; i < nw; i++) w[i] = -w[i];
    for (int o = 0; o < c.oc && b; o++) b[o] = -b[o];

    /* Weight gradient only, planned without the input gradient. */
    lk_conv2d_cfg cw = c;
    cw.need_dx = 0;
    OK(lk_conv2d_init(W, &cw));
    OK(lk_conv2d_forward(W, y, x, w, b, 0));
    memset(dw, 0, nw * sizeof *dw);
    OK(lk_conv2d_backward(W, NULL, dw, c.bias ? db : NULL, dy, x, w));
    CLOSE("conv dw (need_dx=0)", dw, rdw, nw);
    if (c.bias) CLOSE("conv db (need_dx=0)", db, rdb, (size_t)c.oc);
    BAD(lk_conv2d_backward(W, dx, dw, c.bias ? db : NULL, dy, x, w), ANY_ERR);
    return 1;
}

static int conv_case(lk_conv2d_cfg c) {
    lk_conv2d L = {0}, E = {0}, W = {0};
    int ok = conv_case_body(&L, &E, &W, c);
    lk_conv2d_free(&L);
    lk_conv2d_free(&E);
    lk_conv2d_free(&W);
    if (!ok) {
        char tmp[768];
        snprintf(tmp, sizeof tmp, "%.700s", g_msg);
        snprintf(g_msg, sizeof g_msg, "[n%d ic%d %dx%d oc%d k%dx%d s%d,%d p%d,%d,%d,%d g%d b%d] %s",
                 c.n, c.ic, c.ih, c.iw, c.oc, c.kh, c.kw, c.sh, c.sw, c.pt, c.pl, c.pb, c.pr,
                 c.groups, c.bias, tmp);
    }
    return ok;
}

static int test_conv2d(void) {
    NEED(lk_conv2d_init, "conv2d.c");
    NEED(lk_conv2d_forward, "conv2d.c");
    NEED(lk_conv2d_backward, "conv2d.c");
    NEED(lk_conv2d_free, "conv2d.c");
    const lk_conv2d_cfg cases[] = {
        /* dense 3x3, odd non-square input, bias */
        {.n = 2, .ic = 3, .ih = 7, .iw = 6, .oc = 5, .kh = 3, .kw = 3, .sh = 1, .sw = 1,
         .pt = 1, .pl = 1, .pb = 1, .pr = 1, .groups = 1, .bias = 1},
        /* stem-like 3x3 stride 2, batch 1, no bias */
        {.n = 1, .ic = 3, .ih = 9, .iw = 11, .oc = 8, .kh = 3, .kw = 3, .sh = 2, .sw = 2,
         .pt = 1, .pl = 1, .pb = 1, .pr = 1, .groups = 1},
        /* depthwise 5x5 stride 2 */
        {.n = 2, .ic = 8, .ih = 9, .iw = 11, .oc = 8, .kh = 5, .kw = 5, .sh = 2, .sw = 2,
         .pt = 2, .pl = 2, .pb = 2, .pr = 2, .groups = 8},
        /* depthwise 3x3 stride 1, bias */
        {.n = 1, .ic = 16, .ih = 6, .iw = 5, .oc = 16, .kh = 3, .kw = 3, .sh = 1, .sw = 1,
         .pt = 1, .pl = 1, .pb = 1, .pr = 1, .groups = 16, .bias = 1},
        /* grouped (3 groups of 2 -> 3 channels), non-square kernel and stride */
        {.n = 2, .ic = 6, .ih = 7, .iw = 8, .oc = 9, .kh = 3, .kw = 1, .sh = 2, .sw = 1,
         .pt = 1, .pl = 0, .pb = 1, .pr = 0, .groups = 3, .bias = 1},
        /* TF "same" asymmetric padding: 3x3 s2 on even input, extra pixel bottom/right */
        {.n = 2, .ic = 4, .ih = 8, .iw = 10, .oc = 6, .kh = 3, .kw = 3, .sh = 2, .sw = 2,
         .pt = 0, .pl = 0, .pb = 1, .pr = 1, .groups = 1},
        /* depthwise 5x5 s2 with asymmetric padding */
        {.n = 1, .ic = 4, .ih = 10, .iw = 7, .oc = 4, .kh = 5, .kw = 5, .sh = 2, .sw = 2,
         .pt = 1, .pl = 2, .pb = 2, .pr = 2, .groups = 4},
        /* 1x1 expand / project with bias (SE fc) */
        {.n = 3, .ic = 12, .ih = 5, .iw = 3, .oc = 20, .kh = 1, .kw = 1, .sh = 1, .sw = 1,
         .groups = 1, .bias = 1},
        {.n = 2, .ic = 20, .ih = 1, .iw = 1, .oc = 5, .kh = 1, .kw = 1, .sh = 1, .sw = 1,
         .groups = 1, .bias = 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        if (!conv_case(cases[i])) return 0;
    return 1;
}

/* The input transform of the on-demand rows test: any fixed elementwise map. */
static float dw_test_rows_fn(float v) { return 2.0f * v - 0.5f; }
static void dw_test_rows(float *y, const float *x, int64_t npix, const void *ctx) {
    const int c = *(const int *)ctx; /* channels */
    for (int64_t i = 0; i < npix * c; i++) y[i] = dw_test_rows_fn(x[i]);
}

/* Depthwise weight/bias gradient kernel alone (dwconv.c): odd channel
 * counts (16-, 8- and scalar-wide paths, more than one 64-channel item),
 * kernels with and without a vector path (3, 5, 7 vs 1, 4, 9) and wider than
 * one item's taps (33), strides 1-3, asymmetric padding, batch 1; and the
 * result must be bit-identical for 1, 2 and 3 threads. */
static int test_dwconv(void) {
    NEED(lk_dwconv_bwd_weights, "dwconv.c");
    NEED(lk_dwconv_bwd_bias, "dwconv.c");
    /* n, c, ih, iw, kh, kw, sh, sw, pt, pl, pb, pr */
    static const int cases[][12] = {
        {2, 13, 9, 11, 5, 5, 1, 1, 2, 2, 2, 2},  {1, 77, 10, 7, 5, 5, 2, 2, 1, 2, 2, 2},
        {3, 24, 15, 10, 5, 5, 2, 2, 2, 2, 2, 2}, {1, 8, 12, 12, 5, 5, 2, 2, 1, 1, 2, 2},
        {2, 40, 7, 9, 3, 3, 1, 1, 1, 1, 1, 1},   {1, 144, 6, 5, 3, 3, 2, 2, 0, 0, 1, 1},
        {1, 5, 4, 3, 5, 5, 1, 1, 2, 2, 2, 2},    {2, 19, 8, 8, 7, 7, 1, 1, 3, 3, 3, 3},
        {1, 16, 5, 6, 3, 5, 1, 2, 1, 2, 1, 2},   {2, 9, 6, 7, 1, 1, 1, 1, 0, 0, 0, 0},
        {1, 10, 9, 9, 4, 4, 3, 3, 1, 2, 2, 1},   {1, 17, 11, 10, 9, 9, 1, 1, 4, 4, 4, 4},
        {1, 3, 2, 40, 1, 33, 1, 1, 0, 16, 0, 16}, {1, 72, 3, 3, 5, 5, 1, 1, 2, 2, 2, 2},
    };
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        const int *a = cases[t];
        int n = a[0], c = a[1], ih = a[2], iw = a[3], kh = a[4], kw = a[5], sh = a[6], sw = a[7];
        int pt = a[8], pl = a[9], oh = (ih + pt + a[10] - kh) / sh + 1;
        int ow = (iw + pl + a[11] - kw) / sw + 1;
        size_t nx = (size_t)n * ih * iw * c, ny = (size_t)n * oh * ow * c, nw = (size_t)c * kh * kw;
        float *x = frand(nx, -1, 1), *dy = frand(ny, -1, 1), *dw = fbuf(nw), *dw2 = fbuf(nw);
        float *db = fbuf(c);
        double *rdw = dbuf(nw), *rdb = dbuf(c);
        for (int b = 0; b < n; b++)
            for (int oy = 0; oy < oh; oy++)
                for (int ox = 0; ox < ow; ox++)
                    for (int ch = 0; ch < c; ch++) {
                        double d = dy[((size_t)(b * oh + oy) * ow + ox) * c + ch];
                        rdb[ch] += d;
                        for (int i = 0; i < kh; i++)
                            for (int j = 0; j < kw; j++) {
                                int iy = oy * sh - pt + i, ix = ox * sw - pl + j;
                                if (iy < 0 || iy >= ih || ix < 0 || ix >= iw) continue;
                                rdw[((size_t)ch * kh + i) * kw + j] +=
                                    d * x[((size_t)(b * ih + iy) * iw + ix) * c + ch];
                            }
                    }
        int threads0 = lk_get_num_threads();
        for (int nt = 1; nt <= 3; nt++) {
            lk_set_num_threads(nt);
            for (size_t i = 0; i < nw; i++) dw[i] = 1e6f; /* must be overwritten */
            for (int i = 0; i < c; i++) db[i] = 1e6f;
            /* 2 threads: a caller's workspace; otherwise the kernel allocates its own. */
            float *ws = nt == 2 ? malloc(lk_dwconv_bwd_weights_ws(n, c, oh, kh, kw, 0) * sizeof(float))
                                : NULL;
            lk_status st = lk_dwconv_bwd_weights(dw, x, dy, n, c, ih, iw, oh, ow, kh, kw, sh, sw,
                                                 pt, pl, ws, NULL);
            free(ws);
            if (st == LK_OK) st = lk_dwconv_bwd_bias(db, dy, n, c, oh, ow);
            lk_set_num_threads(threads0);
            OK(st);
            EXPECT(nt == 1 || memcmp(dw, dw2, nw * sizeof *dw) == 0,
                   "dwconv case %zu: dw differs between 1 and %d threads", t, nt);
            if (nt == 1) memcpy(dw2, dw, nw * sizeof *dw);
            if (!close_to("dwconv dw", dw, rdw, nw, RTOL, __LINE__) ||
                !close_to("dwconv db", db, rdb, (size_t)c, RTOL, __LINE__)) {
                char tmp[768];
                snprintf(tmp, sizeof tmp, "%.700s", g_msg);
                snprintf(g_msg, sizeof g_msg, "[case %zu, %d threads] %s", t, nt, tmp);
                return 0;
            }
        }
        /* An input made row by row (lk_dw_input) gives the same bits as that input
         * made beforehand, with 2 threads and a ring in the workspace. */
        if (kh > 32 || kw > 32) continue; /* no transform for the wide fallback */
        float *xt = malloc(nx * sizeof(float)), *dwr = malloc(nw * sizeof(float));
        float *ws = malloc(lk_dwconv_bwd_weights_ws(n, c, oh, kh, kw, iw) * sizeof(float));
        for (size_t i = 0; i < nx; i++) xt[i] = dw_test_rows_fn(x[i]);
        const lk_dw_input in = {dw_test_rows, &c};
        lk_set_num_threads(2);
        lk_status st = lk_dwconv_bwd_weights(dw, xt, dy, n, c, ih, iw, oh, ow, kh, kw, sh, sw, pt,
                                             pl, NULL, NULL);
        if (st == LK_OK)
            st = lk_dwconv_bwd_weights(dwr, x, dy, n, c, ih, iw, oh, ow, kh, kw, sh, sw, pt, pl,
                                       ws, &in);
        lk_set_num_threads(threads0);
        int same = st == LK_OK && memcmp(dw, dwr, nw * sizeof *dw) == 0;
        free(xt), free(dwr), free(ws);
        OK(st);
        EXPECT(same, "dwconv case %zu: dw from rows made on demand differs", t);
    }
    float v = 0;
    BAD(lk_dwconv_bwd_weights(NULL, &v, &v, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, NULL, NULL), LK_ERR_ARG);
    BAD(lk_dwconv_bwd_weights(&v, &v, &v, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, NULL, NULL), LK_ERR_ARG);
    BAD(lk_dwconv_bwd_weights(&v, &v, &v, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 0, 0, NULL, NULL), LK_ERR_ARG);
    BAD(lk_dwconv_bwd_bias(&v, NULL, 1, 1, 1, 1), LK_ERR_ARG);
    return 1;
}

static double silu_d(double v);
/* The inference form of case t (lk_dwconv_forward_eval, on the kernel path in force):
 * y = silu(depthwise + b) and the per-image means of y, against the double reference
 * `ref` (the convolution without bias) plus b; the same bits for 1 and 3 threads. */
static int dwconv_eval_case(size_t t, const char *isa, int n, int c, int ih, int iw, int k,
                            int st, const float *x, const float *w, const double *ref) {
    const int p = (k - 1) / 2, oh = (ih + 2 * p - k) / st + 1, ow = (iw + 2 * p - k) / st + 1;
    const size_t ny = (size_t)n * oh * ow * c, np = (size_t)n * c;
    float *b = frand((size_t)c, -0.5, 0.5), *y = fbuf(ny), *y1 = fbuf(ny);
    float *pool = fbuf(np), *pool1 = fbuf(np);
    double *refy = dbuf(ny), *refp = dbuf(np);
    for (size_t i = 0; i < ny; i++) {
        const int ch = (int)(i % (size_t)c);
        refy[i] = silu_d(ref[i] + b[ch]);
        refp[i / ((size_t)oh * ow * c) * c + ch] += refy[i] / ((double)oh * ow);
    }
    const int threads0 = lk_get_num_threads();
    lk_status s1 = LK_OK;
    for (int nt = 1; nt <= 3 && s1 == LK_OK; nt += 2) {
        lk_set_num_threads(nt);
        lk_dwconv_fwd L;
        const lk_dwconv_fwd_cfg cfg = {.n = n, .c = c, .ih = ih, .iw = iw, .k = k, .stride = st,
                                       .eval = 1};
        s1 = lk_dwconv_fwd_init(&L, &cfg);
        if (s1 == LK_OK) {
            memset(y, 0xff, ny * sizeof(float)); /* NaN: must be overwritten */
            memset(pool, 0xff, np * sizeof(float));
            s1 = lk_dwconv_forward_eval(&L, y, pool, x, w, b, 0);
        }
        lk_dwconv_fwd_free(&L);
        if (nt == 1) {
            memcpy(y1, y, ny * sizeof(float));
            memcpy(pool1, pool, np * sizeof(float));
        }
        EXPECT(s1 != LK_OK || (memcmp(y, y1, ny * sizeof(float)) == 0 &&
                               memcmp(pool, pool1, np * sizeof(float)) == 0),
               "dwconv eval case %zu (%s): 1 and %d threads differ", t, isa, nt);
    }
    lk_set_num_threads(threads0);
    OK(s1);
    /* The NHWC ring where AUTO blocks it (dwconv.c): the same bits. */
    lk_dwconv_set_fwd_layout(LK_DWF_LAYOUT_NHWC);
    lk_dwconv_fwd L;
    const lk_dwconv_fwd_cfg cfg = {.n = n, .c = c, .ih = ih, .iw = iw, .k = k, .stride = st,
                                   .eval = 1};
    s1 = lk_dwconv_fwd_init(&L, &cfg);
    if (s1 == LK_OK) s1 = lk_dwconv_forward_eval(&L, y, pool, x, w, b, 0);
    lk_dwconv_fwd_free(&L);
    lk_dwconv_set_fwd_layout(LK_DWF_LAYOUT_AUTO);
    OK(s1);
    EXPECT(memcmp(y, y1, ny * sizeof(float)) == 0 && memcmp(pool, pool1, np * sizeof(float)) == 0,
           "dwconv eval case %zu (%s): the NHWC and the blocked ring differ", t, isa);
    if (!close_to(isa, y, refy, ny, RTOL, __LINE__) ||
        !close_to(isa, pool, refp, np, RTOL, __LINE__))
        return failf(__LINE__, "dwconv eval case %zu on the %s path", t, isa);
    return 1;
}

/* The depthwise forward (dwconv.c) against a double reference on every kernel path:
 * kernels 1, 3, 5 and 7 (3 and 5 have vector kernels), both strides, the kernel rotated
 * (stride 1: the input gradient), maps narrower than the kernel, channels off the 8 and
 * 16 blocks (the masked tail) and above 64, batches below the thread count (bands), and
 * the input made row by row by a transform (lk_dw_input) into the ring: then the same
 * bits as the transformed input given whole; and the same bits for 1 and 3 threads. */
static int test_dwconv_fwd(void) {
    NEED(lk_dwconv_fwd_init, "dwconv.c");
    /* n, c, ih, iw, k, stride */
    static const int cases[][6] = {
        {2, 13, 9, 11, 5, 1}, {1, 77, 10, 7, 5, 2}, {3, 24, 15, 10, 3, 2}, {1, 8, 12, 12, 3, 1},
        {1, 5, 4, 3, 5, 1},   {2, 19, 8, 8, 7, 1},  {2, 9, 6, 7, 1, 1},    {1, 72, 3, 3, 5, 1},
        {1, 40, 20, 38, 3, 1}, {2, 144, 7, 19, 5, 2}, {1, 16, 2, 2, 3, 2},
    };
    static const char *isas[] = {"c", "avx2", "avx512"};
    const int threads0 = lk_get_num_threads();
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        const int *a = cases[t];
        const int n = a[0], c = a[1], ih = a[2], iw = a[3], k = a[4], st = a[5], p = (k - 1) / 2;
        const int oh = (ih + 2 * p - k) / st + 1, ow = (iw + 2 * p - k) / st + 1;
        const size_t nx = (size_t)n * ih * iw * c, ny = (size_t)n * oh * ow * c;
        float *x = frand(nx, -1, 1), *w = frand((size_t)c * k * k, -0.5, 0.5), *xt = fbuf(nx);
        float *y = fbuf(ny), *y1 = fbuf(ny), *yr = fbuf(ny);
        for (size_t i = 0; i < nx; i++) xt[i] = dw_test_rows_fn(x[i]);
        const lk_dw_input in = {dw_test_rows, &c};
        for (int rot = 0; rot <= (st == 1); rot++) {
            double *ref = dbuf(ny);
            for (int b = 0; b < n; b++)
                for (int oy = 0; oy < oh; oy++)
                    for (int ox = 0; ox < ow; ox++)
                        for (int ch = 0; ch < c; ch++) {
                            double v = 0;
                            for (int i = 0; i < k; i++)
                                for (int j = 0; j < k; j++) {
                                    int yy = oy * st - p + i, xx = ox * st - p + j;
                                    if (yy < 0 || yy >= ih || xx < 0 || xx >= iw) continue;
                                    const int tap = rot ? k * k - 1 - (i * k + j) : i * k + j;
                                    v += (double)xt[((size_t)(b * ih + yy) * iw + xx) * c + ch] *
                                         w[(size_t)ch * k * k + tap];
                                }
                            ref[((size_t)(b * oh + oy) * ow + ox) * c + ch] = v;
                        }
            for (int q = 0; q < 3; q++) {
                if (lk_kernel_isa_set(isas[q]) != LK_OK) { /* not on this CPU */
                    lk_clear_error();
                    continue;
                }
                lk_dwconv_fwd L;
                const lk_dwconv_fwd_cfg cfg = {.n = n, .c = c, .ih = ih, .iw = iw, .k = k,
                                               .stride = st, .in_rows = 1};
                lk_status s1 = LK_OK;
                for (int nt = 1; nt <= 3 && s1 == LK_OK; nt += 2) {
                    lk_set_num_threads(nt);
                    s1 = lk_dwconv_fwd_init(&L, &cfg);
                    if (s1 == LK_OK) {
                        memset(y, 0xff, ny * sizeof(float)); /* NaN: must be overwritten */
                        s1 = lk_dwconv_forward(&L, y, xt, w, rot, NULL);
                        if (s1 == LK_OK) s1 = lk_dwconv_forward(&L, yr, x, w, rot, &in);
                        EXPECT(L.oh == oh && L.ow == ow, "case %zu: output %dx%d, expected %dx%d",
                               t, L.oh, L.ow, oh, ow);
                    }
                    lk_dwconv_fwd_free(&L);
                    if (nt == 1) memcpy(y1, y, ny * sizeof(float));
                    EXPECT(s1 != LK_OK || memcmp(y, y1, ny * sizeof(float)) == 0,
                           "dwconv forward case %zu (%s): 1 and %d threads differ", t, isas[q],
                           nt);
                    EXPECT(s1 != LK_OK || memcmp(y, yr, ny * sizeof(float)) == 0,
                           "dwconv forward case %zu (%s, %d threads): rows made on demand "
                           "differ from the input given whole", t, isas[q], nt);
                }
                lk_set_num_threads(threads0);
                OK(s1);
                /* The NHWC ring where AUTO blocks it (dwconv.c): the same bits. */
                lk_dwconv_set_fwd_layout(LK_DWF_LAYOUT_NHWC);
                s1 = lk_dwconv_fwd_init(&L, &cfg);
                if (s1 == LK_OK) s1 = lk_dwconv_forward(&L, yr, x, w, rot, &in);
                lk_dwconv_fwd_free(&L);
                lk_dwconv_set_fwd_layout(LK_DWF_LAYOUT_AUTO);
                OK(s1);
                EXPECT(memcmp(y, yr, ny * sizeof(float)) == 0,
                       "dwconv forward case %zu (%s): the NHWC and the blocked ring differ", t,
                       isas[q]);
                if (!close_to(isas[q], y, ref, ny, RTOL, __LINE__)) {
                    lk_kernel_isa_set("auto");
                    return failf(__LINE__, "dwconv forward case %zu (rotated %d) on the %s path",
                                 t, rot, isas[q]);
                }
                if (!rot && !dwconv_eval_case(t, isas[q], n, c, ih, iw, k, st, xt, w, ref)) {
                    lk_kernel_isa_set("auto");
                    return 0;
                }
                lk_kernel_isa_set("auto");
            }
        }
    }
    lk_dwconv_fwd bad;
    lk_dwconv_fwd_cfg c0 = {.n = 1, .c = 4, .ih = 8, .iw = 8, .k = 4, .stride = 1};
    BAD(lk_dwconv_fwd_init(&bad, &c0), LK_ERR_ARG);
    c0.k = 3;
    c0.stride = 3;
    BAD(lk_dwconv_fwd_init(&bad, &c0), LK_ERR_ARG);
    c0.stride = 2;
    OK(lk_dwconv_fwd_init(&bad, &c0));
    float v[64 * 4] = {0};
    BAD(lk_dwconv_forward(&bad, v, v, v, 1, NULL), LK_ERR_ARG);  /* rotated at stride 2 */
    const lk_dw_input in = {dw_test_rows, &c0.c};
    BAD(lk_dwconv_forward(&bad, v, v, v, 0, &in), LK_ERR_ARG); /* not planned with in_rows */
    BAD(lk_dwconv_forward(&bad, NULL, v, v, 0, NULL), LK_ERR_ARG);
    BAD(lk_dwconv_forward_eval(&bad, v, v, v, v, v, 0), LK_ERR_ARG); /* not planned with eval */
    lk_dwconv_fwd_free(&bad);
    return 1;
}

/* The stem kernel (conv2d_stem.c) against a double reference, where this CPU has it
 * (AVX2): output channels in 2-6 vectors (groups of 4, 3 and 2 pixels), 1-4 input
 * channels, kernels 3 and 5, strides 1 and 2, symmetric and TF-style asymmetric
 * padding, rows narrower than a pixel group, with and without bias and SiLU; the same
 * bits for 1 and 3 threads; and conv2d plans it for an inference layer and not when
 * the policy says never (then the primitive's result agrees to float rounding). */
static int test_stem(void) {
    NEED(lk_stem_init, "conv2d_stem.c");
    /* n, ic, ih, iw, oc, k, s, pt, pl, pb, pr, bias, silu */
    static const int cases[][13] = {
        {2, 3, 17, 13, 40, 3, 2, 1, 1, 1, 1, 1, 1}, {1, 3, 9, 7, 24, 3, 2, 0, 0, 1, 1, 0, 0},
        {3, 1, 6, 5, 16, 3, 1, 1, 1, 1, 1, 1, 1},   {1, 4, 4, 3, 32, 5, 1, 2, 2, 2, 2, 0, 1},
        {2, 2, 11, 10, 48, 3, 2, 1, 1, 1, 1, 1, 0}, {1, 3, 3, 3, 40, 3, 2, 1, 1, 1, 1, 1, 1},
    };
    if (!lk_stem_supported(3, 40, 3, 3, 2, 2, 1)) return 1; /* no kernel on this CPU */
    const int threads0 = lk_get_num_threads();
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        const int *a = cases[t];
        const int n = a[0], ic = a[1], ih = a[2], iw = a[3], oc = a[4], k = a[5], st = a[6];
        const int pt = a[7], pl = a[8], pb = a[9], pr = a[10], hb = a[11], silu = a[12];
        const int oh = (ih + pt + pb - k) / st + 1, ow = (iw + pl + pr - k) / st + 1;
        const size_t nx = (size_t)n * ih * iw * ic, ny = (size_t)n * oh * ow * oc;
        float *x = frand(nx, -1, 1), *w = frand((size_t)oc * ic * k * k, -0.5, 0.5);
        float *b = hb ? frand((size_t)oc, -0.5, 0.5) : NULL, *y = fbuf(ny), *y1 = fbuf(ny);
        double *ref = dbuf(ny);
        for (int q = 0; q < n; q++)
            for (int oy = 0; oy < oh; oy++)
                for (int ox = 0; ox < ow; ox++)
                    for (int o = 0; o < oc; o++) {
                        double v = b ? b[o] : 0.0;
                        for (int i = 0; i < k; i++)
                            for (int j = 0; j < k; j++) {
                                const int yy = oy * st - pt + i, xx = ox * st - pl + j;
                                if (yy < 0 || yy >= ih || xx < 0 || xx >= iw) continue;
                                for (int c = 0; c < ic; c++)
                                    v += (double)x[(((size_t)q * ih + yy) * iw + xx) * ic + c] *
                                         w[(((size_t)o * ic + c) * k + i) * k + j];
                            }
                        ref[(((size_t)q * oh + oy) * ow + ox) * oc + o] = silu ? silu_d(v) : v;
                    }
        lk_status s1 = LK_OK;
        for (int nt = 1; nt <= 3 && s1 == LK_OK; nt += 2) {
            lk_set_num_threads(nt);
            lk_stem L;
            const lk_stem_cfg cfg = {.n = n, .ic = ic, .ih = ih, .iw = iw, .oc = oc, .k = k,
                                     .s = st, .pt = pt, .pl = pl, .pb = pb, .pr = pr,
                                     .silu = silu};
            s1 = lk_stem_init(&L, &cfg);
            if (s1 == LK_OK) {
                EXPECT(L.oh == oh && L.ow == ow, "stem case %zu: output %dx%d, expected %dx%d",
                       t, L.oh, L.ow, oh, ow);
                memset(y, 0xff, ny * sizeof(float)); /* NaN: must be overwritten */
                s1 = lk_stem_forward(&L, y, x, w, b, 0);
            }
            lk_stem_free(&L);
            if (nt == 1) memcpy(y1, y, ny * sizeof(float));
            EXPECT(s1 != LK_OK || memcmp(y, y1, ny * sizeof(float)) == 0,
                   "stem case %zu: 1 and %d threads differ", t, nt);
        }
        lk_set_num_threads(threads0);
        OK(s1);
        if (!close_to("stem", y, ref, ny, RTOL, __LINE__))
            return failf(__LINE__, "stem case %zu", t);
        /* The laid-out weights: kept at the same version, made again at a new one. */
        {
            lk_stem L;
            const lk_stem_cfg cfg = {.n = n, .ic = ic, .ih = ih, .iw = iw, .oc = oc, .k = k,
                                     .s = st, .pt = pt, .pl = pl, .pb = pb, .pr = pr,
                                     .silu = silu};
            float *w2 = fbuf((size_t)oc * ic * k * k), *y2 = fbuf(ny);
            memcpy(w2, w, (size_t)oc * ic * k * k * sizeof(float));
            s1 = lk_stem_init(&L, &cfg);
            if (s1 == LK_OK) s1 = lk_stem_forward(&L, y2, x, w2, b, 7);
            for (size_t i = 0; i < (size_t)oc * ic * k * k; i++) w2[i] = -w2[i];
            int kept = 0, made = 0;
            if (s1 == LK_OK) s1 = lk_stem_forward(&L, y2, x, w2, b, 7); /* same version */
            if (s1 == LK_OK) kept = memcmp(y2, y1, ny * sizeof(float)) == 0;
            if (s1 == LK_OK) s1 = lk_stem_forward(&L, y2, x, w2, b, 8); /* new version */
            if (s1 == LK_OK) made = memcmp(y2, y1, ny * sizeof(float)) != 0;
            lk_stem_free(&L);
            OK(s1);
            EXPECT(kept && made, "stem case %zu: weights kept at one version %d, made again "
                   "at the next %d", t, kept, made);
        }
        /* Through conv2d: an inference layer plans it; with the policy off, the primitive. */
        for (int on = 1; on >= 0; on--) {
            lk_conv2d_set_stem_policy(on ? LK_CONV_STEM_AUTO : LK_CONV_STEM_NEVER);
            lk_conv2d L;
            const lk_conv2d_cfg cc = {.n = n, .ic = ic, .ih = ih, .iw = iw, .oc = oc, .kh = k,
                                      .kw = k, .sh = st, .sw = st, .pt = pt, .pl = pl, .pb = pb,
                                      .pr = pr, .groups = 1, .bias = hb, .post_silu = silu};
            s1 = lk_conv2d_init(&L, &cc);
            const int planned = s1 == LK_OK ? L.stem : -1;
            if (s1 == LK_OK) s1 = lk_conv2d_forward(&L, y, x, w, b, 0);
            lk_conv2d_free(&L);
            lk_conv2d_set_stem_policy(LK_CONV_STEM_AUTO);
            OK(s1);
            EXPECT(planned == on, "stem case %zu: conv2d planned the stem kernel %d, policy %d",
                   t, planned, on);
            if (on) EXPECT(memcmp(y, y1, ny * sizeof(float)) == 0,
                           "stem case %zu: conv2d's forward differs from lk_stem's", t);
            if (!close_to(on ? "conv2d stem" : "conv2d primitive", y, ref, ny, RTOL, __LINE__))
                return failf(__LINE__, "stem case %zu through conv2d (policy %d)", t, on);
        }
    }
    lk_stem bad;
    const lk_stem_cfg c0 = {.n = 1, .ic = 5, .ih = 8, .iw = 8, .oc = 40, .k = 3, .s = 2};
    BAD(lk_stem_init(&bad, &c0), LK_ERR_ARG); /* 5 input channels: no kernel */
    const lk_stem_cfg c1 = {.n = 1, .ic = 3, .ih = 2, .iw = 2, .oc = 40, .k = 5, .s = 1};
    BAD(lk_stem_init(&bad, &c1), LK_ERR_ARG); /* empty output */
    return 1;
}

/* Depthwise conv2d layers with the weight gradient forced to each path (the
 * default picks by kernel width), with and without bias. */
static double silu_d(double v) { return v / (1.0 + exp(-v)); }

/* The fused MBConv expansion + depthwise (inference) against a double reference of the
 * two layers, output and pool, on every kernel path: both strides, kernels 1, 3, 5 and
 * 7, maps narrower than one expansion call's rows (several rows per call) and wider,
 * batches below the thread count (bands of output rows, halo rows recomputed) and
 * above, channels off the 64 block and off the expansion kernels' 3-vector blocks and
 * vectors, row counts off their micro-tiles (B3's 150-wide rows: 150 = 18 x 8 + 6). */
static int test_expdw(void) {
    NEED(lk_expdw_init, "expand_dw.c");
    /* n, ic, ih, iw, ec, k, stride */
    static const int cases[][7] = {
        {2, 5, 9, 11, 70, 3, 1},  {1, 3, 17, 13, 24, 5, 2}, {3, 4, 6, 80, 16, 3, 2},
        {1, 6, 33, 9, 130, 5, 1}, {2, 2, 4, 4, 8, 7, 1},    {1, 7, 20, 20, 64, 3, 1},
        {1, 3, 5, 3, 9, 1, 2},    {4, 8, 12, 7, 136, 5, 2}, {1, 24, 5, 150, 144, 3, 2},
        {2, 33, 6, 26, 200, 5, 1},
    };
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        const int *a = cases[t];
        const int n = a[0], ic = a[1], ih = a[2], iw = a[3], ec = a[4], k = a[5], st = a[6];
        const int p = (k - 1) / 2, oh = (ih + 2 * p - k) / st + 1, ow = (iw + 2 * p - k) / st + 1;
        float *x = frand((size_t)n * ih * iw * ic, -1, 1), *w1 = frand((size_t)ec * ic, -1, 1);
        float *b1 = frand(ec, -1, 1), *wd = frand((size_t)ec * k * k, -0.5, 0.5);
        float *bd = frand(ec, -1, 1), *y = fbuf((size_t)n * oh * ow * ec);
        float *pool = fbuf((size_t)n * ec);
        double *e = dbuf((size_t)n * ih * iw * ec), *ry = dbuf((size_t)n * oh * ow * ec);
        double *rp = dbuf((size_t)n * ec);
        for (size_t q = 0; q < (size_t)n * ih * iw; q++)
            for (int c = 0; c < ec; c++) {
                double v = b1[c];
                for (int i = 0; i < ic; i++) v += (double)x[q * ic + i] * w1[(size_t)c * ic + i];
                e[q * ec + c] = silu_d(v);
            }
        for (int b = 0; b < n; b++)
            for (int oy = 0; oy < oh; oy++)
                for (int ox = 0; ox < ow; ox++)
                    for (int c = 0; c < ec; c++) {
                        double v = bd[c];
                        for (int i = 0; i < k; i++)
                            for (int j = 0; j < k; j++) {
                                int yy = oy * st - p + i, xx = ox * st - p + j;
                                if (yy < 0 || yy >= ih || xx < 0 || xx >= iw) continue;
                                v += e[((size_t)(b * ih + yy) * iw + xx) * ec + c] *
                                     wd[((size_t)c * k + i) * k + j];
                            }
                        v = silu_d(v);
                        ry[((size_t)(b * oh + oy) * ow + ox) * ec + c] = v;
                        rp[(size_t)b * ec + c] += v / (oh * ow);
                    }
        static const char *isas[] = {"c", "avx2", "avx512"};
        for (int q = 0; q < 3; q++) { /* each kernel path: sgemm or the register kernels */
            if (lk_kernel_isa_set(isas[q]) != LK_OK) { /* not on this CPU */
                lk_clear_error();
                continue;
            }
            lk_expdw L;
            lk_expdw_cfg cfg = {.n = n, .ic = ic, .ih = ih, .iw = iw, .ec = ec, .k = k,
                                .stride = st};
            lk_status s1 = lk_expdw_init(&L, &cfg);
            if (s1 == LK_OK) {
                EXPECT(L.oh == oh && L.ow == ow, "case %zu: output %dx%d, expected %dx%d", t,
                       L.oh, L.ow, oh, ow);
                memset(y, 0, sizeof(float) * (size_t)n * oh * ow * ec);
                s1 = lk_expdw_forward(&L, y, pool, x, w1, b1, wd, bd, 0);
                lk_expdw_free(&L);
            }
            lk_kernel_isa_set("auto");
            OK(s1);
            if (!close_to(isas[q], y, ry, (size_t)n * oh * ow * ec, RTOL, __LINE__) ||
                !close_to(isas[q], pool, rp, (size_t)n * ec, RTOL, __LINE__))
                return failf(__LINE__, "expdw case %zu on the %s path", t, isas[q]);
        }
    }
    lk_expdw bad;
    lk_expdw_cfg c0 = {.n = 1, .ic = 4, .ih = 8, .iw = 8, .ec = 8, .k = 4, .stride = 1};
    BAD(lk_expdw_init(&bad, &c0), LK_ERR_ARG);
    c0.k = 3;
    c0.stride = 3;
    BAD(lk_expdw_init(&bad, &c0), LK_ERR_ARG);
    c0.stride = 1;
    c0.ec = 0;
    BAD(lk_expdw_init(&bad, &c0), LK_ERR_ARG);
    return 1;
}

/* One test_wino case on the kernel path in force: lk_wino, then conv2d. */
static int wino_case(size_t t, const char *isa, int n, int h, int w, int ic, int oc, int hb,
                     int silu, const float *x, const float *wt, const float *b,
                     const double *ry) {
    const size_t ny = (size_t)n * h * w * oc;
    float *y = fbuf(ny), *y2 = fbuf(ny), *zero = fbuf((size_t)oc * ic * 9);
    lk_wino L;
    const lk_wino_cfg cfg = {.n = n, .h = h, .w = w, .ic = ic, .oc = oc, .silu = silu};
    OK(lk_wino_init(&L, &cfg));
    lk_wino_set_weights(&L, wt);
    lk_status s1 = lk_wino_forward(&L, y, x, b, NULL);
    /* With a residual (here the output itself): y + y after the SiLU. */
    float *twice = fbuf(ny);
    double *r2 = dbuf(ny);
    for (size_t i = 0; i < ny; i++) r2[i] = 2.0 * ry[i];
    if (s1 == LK_OK) s1 = lk_wino_forward(&L, twice, x, b, y);
    lk_wino_free(&L);
    OK(s1);
    if (!close_to(isa, y, ry, ny, 1e-3, __LINE__)) return 0;
    if (!close_to(isa, twice, r2, ny, 1e-3, __LINE__)) return 0;
    /* Through conv2d: the same result, and a new weight version is transformed anew
     * (the same version keeps the cached transform, by contract). */
    lk_conv2d_set_wino_policy(LK_CONV_WINO_ALWAYS);
    lk_conv2d C;
    const lk_conv2d_cfg cc = {.n = n, .ic = ic, .ih = h, .iw = w, .oc = oc, .kh = 3, .kw = 3,
                              .sh = 1, .sw = 1, .pt = 1, .pl = 1, .pb = 1, .pr = 1,
                              .groups = 1, .bias = hb, .post_silu = silu};
    lk_status s2 = lk_conv2d_init(&C, &cc);
    lk_conv2d_set_wino_policy(LK_CONV_WINO_AUTO);
    const int used = C.wino;
    if (s2 == LK_OK) s2 = lk_conv2d_forward(&C, y2, x, zero, b, 7);
    if (s2 == LK_OK) s2 = lk_conv2d_forward(&C, y2, x, wt, b, 8);
    lk_conv2d_free(&C);
    OK(s2);
    EXPECT(used, "case %zu: conv2d did not plan the Winograd forward", t);
    if (!close_to(isa, y2, ry, ny, 1e-3, __LINE__)) return 0;
    if (silu || ic % 8) return 1;
    /* A training plan's input gradient: dx = conv(dy, each kernel transposed and turned
     * by 180 degrees), against its double reference (dy: the forward's output as data). */
    const size_t nx = (size_t)n * h * w * ic;
    float *dx = fbuf(nx);
    double *rdx = dbuf(nx);
    for (int q = 0; q < n; q++)
        for (int yy = 0; yy < h; yy++)
            for (int xx = 0; xx < w; xx++)
                for (int c = 0; c < ic; c++) {
                    double v = 0;
                    for (int i = 0; i < 3; i++)
                        for (int j = 0; j < 3; j++) {
                            const int oy = yy - i + 1, ox = xx - j + 1;
                            if (oy < 0 || oy >= h || ox < 0 || ox >= w) continue;
                            const float *d = y2 + (((size_t)q * h + oy) * w + ox) * oc;
                            for (int o = 0; o < oc; o++)
                                v += (double)d[o] * wt[(((size_t)o * ic + c) * 3 + i) * 3 + j];
                        }
                    rdx[(((size_t)q * h + yy) * w + xx) * ic + c] = v;
                }
    /* ... and its weight gradient dw[o][i][kh][kw] = sum of dy[o] x[i] at the tap. */
    const size_t nw = (size_t)oc * ic * 9;
    float *dw = fbuf(nw), *db = fbuf((size_t)oc);
    double *rdw = dbuf(nw);
    for (int o = 0; o < oc; o++)
        for (int c = 0; c < ic; c++)
            for (int i = 0; i < 3; i++)
                for (int j = 0; j < 3; j++) {
                    double v = 0;
                    for (int q = 0; q < n; q++)
                        for (int oy = 0; oy < h; oy++)
                            for (int ox = 0; ox < w; ox++) {
                                const int yy = oy + i - 1, xx = ox + j - 1;
                                if (yy < 0 || yy >= h || xx < 0 || xx >= w) continue;
                                v += (double)y2[(((size_t)q * h + oy) * w + ox) * oc + o] *
                                     x[(((size_t)q * h + yy) * w + xx) * ic + c];
                            }
                    rdw[(((size_t)o * ic + c) * 3 + i) * 3 + j] = v;
                }
    lk_conv2d_cfg ct = cc;
    ct.train = ct.need_dx = 1;
    lk_conv2d_set_wino_policy(LK_CONV_WINO_ALWAYS);
    s2 = lk_conv2d_init(&C, &ct);
    lk_conv2d_set_wino_policy(LK_CONV_WINO_AUTO);
    const int used_dx = C.wino_dx, used_dw = C.wino_dw;
    if (s2 == LK_OK) s2 = lk_conv2d_backward(&C, dx, dw, hb ? db : NULL, y2, x, wt);
    lk_conv2d_free(&C);
    OK(s2);
    EXPECT(used_dx && used_dw, "case %zu: conv2d did not plan the Winograd gradients", t);
    if (!close_to(isa, dx, rdx, nx, 1e-3, __LINE__)) return 0;
    return close_to(isa, dw, rdw, nw, 1e-3, __LINE__);
}

/* Winograd F(4x4, 3x3) against a double reference of the direct sum: maps that are and
 * are not multiples of the 4x4 tile, tile counts off the 24- and 48-tile blocks and off
 * every micro-tile, input channels off every vector width (the half-vector and scalar
 * tails), output channels off the 96-channel chunk and off 16 (a half vector), bias or
 * none, SiLU or none; then through conv2d (policy ALWAYS), whose cached transform must
 * follow a new weight version, and a training plan's input and weight gradients; on
 * every kernel path this CPU has. Its rounding is larger than the direct sum's
 * (conv2d_winograd.c): bounded at 1e-3 instead of 1e-4. */
static int test_wino(void) {
    NEED(lk_wino_init, "conv2d_winograd.c");
    NEED(lk_conv2d_set_wino_policy, "conv2d.c");
    /* n, h, w, ic, oc, bias, silu */
    static const int cases[][7] = {
        {1, 4, 4, 16, 16, 1, 0},   {2, 9, 7, 5, 32, 1, 1},    {3, 13, 18, 20, 112, 0, 0},
        {1, 1, 1, 3, 16, 1, 1},    {2, 30, 26, 48, 192, 1, 1}, {1, 8, 40, 33, 64, 0, 1},
        {2, 11, 14, 32, 48, 0, 0},  {2, 19, 21, 24, 24, 1, 1},  {1, 12, 10, 24, 40, 0, 0},
        {2, 64, 62, 16, 16, 1, 0}, /* 512 tiles: blocks of 48 up to 2 threads (else 24) */
        {1, 6, 7, 8, 64, 0, 0},    /* OC far above IC: dy rows of padding in the gradient */
    };
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        const int *a = cases[t];
        const int n = a[0], h = a[1], w = a[2], ic = a[3], oc = a[4], hb = a[5], silu = a[6];
        const size_t ny = (size_t)n * h * w * oc;
        float *x = frand((size_t)n * h * w * ic, -1, 1), *wt = frand((size_t)oc * ic * 9, -0.3, 0.3);
        float *b = hb ? frand(oc, -1, 1) : NULL;
        double *ry = dbuf(ny);
        for (int q = 0; q < n; q++)
            for (int oy = 0; oy < h; oy++)
                for (int ox = 0; ox < w; ox++)
                    for (int o = 0; o < oc; o++) {
                        double v = b ? b[o] : 0;
                        for (int i = 0; i < 3; i++)
                            for (int j = 0; j < 3; j++) {
                                const int yy = oy + i - 1, xx = ox + j - 1;
                                if (yy < 0 || yy >= h || xx < 0 || xx >= w) continue;
                                const float *xp = x + (((size_t)q * h + yy) * w + xx) * ic;
                                for (int c = 0; c < ic; c++)
                                    v += (double)xp[c] * wt[(((size_t)o * ic + c) * 3 + i) * 3 + j];
                            }
                        ry[(((size_t)q * h + oy) * w + ox) * oc + o] = silu ? silu_d(v) : v;
                    }
        static const char *isas[] = {"c", "avx2", "avx512"};
        for (int k = 0; k < 3; k++) {
            if (lk_kernel_isa_set(isas[k]) != LK_OK) { /* not on this CPU */
                lk_clear_error();
                continue;
            }
            int ok = wino_case(t, isas[k], n, h, w, ic, oc, hb, silu, x, wt, b, ry);
            lk_kernel_isa_set("auto");
            if (!ok) return 0;
        }
    }
    lk_wino bad;
    lk_wino_cfg c0 = {.n = 1, .h = 4, .w = 4, .ic = 4, .oc = 20};
    BAD(lk_wino_init(&bad, &c0), LK_ERR_ARG);
    c0.oc = 16;
    c0.h = 0;
    BAD(lk_wino_init(&bad, &c0), LK_ERR_ARG);
    return 1;
}

static int test_conv2d_dw_paths(void) {
    NEED(lk_conv2d_init, "conv2d.c");
    NEED(lk_dwconv_set_policy, "dwconv_bwd_w.c");
    const lk_conv2d_cfg cases[] = {
        {.n = 2, .ic = 13, .ih = 9, .iw = 11, .oc = 13, .kh = 5, .kw = 5, .sh = 1, .sw = 1,
         .pt = 2, .pl = 2, .pb = 2, .pr = 2, .groups = 13},
        {.n = 1, .ic = 24, .ih = 10, .iw = 7, .oc = 24, .kh = 5, .kw = 5, .sh = 2, .sw = 2,
         .pt = 1, .pl = 2, .pb = 2, .pr = 2, .groups = 24, .bias = 1},
        {.n = 2, .ic = 20, .ih = 7, .iw = 6, .oc = 20, .kh = 3, .kw = 3, .sh = 1, .sw = 1,
         .pt = 1, .pl = 1, .pb = 1, .pr = 1, .groups = 20, .bias = 1},
        {.n = 1, .ic = 8, .ih = 8, .iw = 10, .oc = 8, .kh = 3, .kw = 3, .sh = 2, .sw = 2,
         .pt = 0, .pl = 0, .pb = 1, .pr = 1, .groups = 8},
    };
    const lk_dw_bwd_w_policy pols[] = {LK_DW_BWD_W_CUSTOM, LK_DW_BWD_W_ONEDNN};
    for (size_t p = 0; p < 2; p++)
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            lk_dwconv_set_policy(pols[p]);
            int ok = conv_case(cases[i]);
            lk_dwconv_set_policy(LK_DW_BWD_W_AUTO);
            if (!ok) return 0;
        }
    return 1;
}

/* Dense layers with the weight gradient forced to the sgemm path and to oneDNN's
 * primitive (the default picks by shape): plain 1x1 (in place), 1x1 strided and
 * kxk with symmetric and asymmetric padding (im2col), with 1, 2 and 3 threads (one
 * partial sum per thread); the large strided 1x1 needs two im2col chunks on one
 * thread. */
static int test_conv2d_gemm_paths(void) {
    NEED(lk_conv2d_init, "conv2d.c");
    NEED(lk_conv2d_set_bwd_w_policy, "conv2d.c");
    const lk_conv2d_cfg cases[] = {
        {.n = 2, .ic = 5, .ih = 9, .iw = 7, .oc = 6, .kh = 1, .kw = 1, .sh = 1, .sw = 1,
         .groups = 1, .bias = 1},
        {.n = 1, .ic = 16, .ih = 9, .iw = 10, .oc = 7, .kh = 1, .kw = 1, .sh = 2, .sw = 2,
         .groups = 1},
        {.n = 2, .ic = 3, .ih = 11, .iw = 9, .oc = 5, .kh = 3, .kw = 3, .sh = 1, .sw = 1,
         .pt = 1, .pl = 1, .pb = 1, .pr = 1, .groups = 1, .bias = 1},
        {.n = 3, .ic = 17, .ih = 40, .iw = 37, .oc = 4, .kh = 3, .kw = 3, .sh = 2, .sw = 2,
         .pt = 0, .pl = 1, .pb = 1, .pr = 1, .groups = 1},
        {.n = 1, .ic = 4, .ih = 8, .iw = 9, .oc = 3, .kh = 5, .kw = 3, .sh = 1, .sw = 2,
         .pt = 2, .pl = 1, .pb = 2, .pr = 1, .groups = 1, .bias = 1},
        {.n = 2, .ic = 16, .ih = 256, .iw = 130, .oc = 3, .kh = 1, .kw = 1, .sh = 2, .sw = 2,
         .groups = 1},
    };
    const lk_conv_bwd_w_policy pols[] = {LK_CONV_BWD_W_GEMM, LK_CONV_BWD_W_ONEDNN};
    const int threads0 = lk_get_num_threads();
    for (int nt = 1; nt <= 3; nt++)
        for (size_t p = 0; p < 2; p++)
            for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
                lk_set_num_threads(nt);
                lk_conv2d_set_bwd_w_policy(pols[p]);
                int ok = conv_case(cases[i]);
                lk_conv2d_set_bwd_w_policy(LK_CONV_BWD_W_AUTO);
                lk_set_num_threads(threads0);
                if (!ok) return 0;
                tfree_all(); /* 30 cases: stay under the per-test allocation table */
            }
    return 1;
}

static int conv_bad_body(lk_conv2d *L) {
    const lk_conv2d_cfg good = {.n = 1, .ic = 6, .ih = 5, .iw = 5, .oc = 6, .kh = 3, .kw = 3,
                                .sh = 1, .sw = 1, .pt = 1, .pl = 1, .pb = 1, .pr = 1,
                                .groups = 1, .train = 1, .need_dx = 1};
    lk_conv2d_cfg c = good;
    c.groups = 4; /* does not divide 6 */
    BAD(lk_conv2d_init(L, &c), LK_ERR_ARG);
    EXPECT(strstr(lk_last_error(), "groups") != NULL, "message should name groups: %s",
           lk_last_error());
    lk_conv2d_free(L); /* after a failed init */
    c = good; c.oc = 5; c.groups = 3; /* divides ic, not oc */
    BAD(lk_conv2d_init(L, &c), LK_ERR_ARG);
    lk_conv2d_free(L);
    c = good; c.kh = 9; /* larger than padded input */
    BAD(lk_conv2d_init(L, &c), LK_ERR_ARG);
    lk_conv2d_free(L);
    c = good; c.pl = -1;
    BAD(lk_conv2d_init(L, &c), LK_ERR_ARG);
    lk_conv2d_free(L);
    c = good; c.sh = 0;
    BAD(lk_conv2d_init(L, &c), LK_ERR_ARG);
    lk_conv2d_free(L);
    c = good; c.n = 0;
    BAD(lk_conv2d_init(L, &c), LK_ERR_ARG);
    lk_conv2d_free(L);

    /* Calls on a zeroed (never initialised) struct fail cleanly. */
    float *x = frand(150, -1, 1), *w = frand(6 * 6 * 9, -1, 1), *y = fbuf(150);
    BAD(lk_conv2d_forward(L, y, x, w, NULL, 0), ANY_ERR);
    BAD(lk_conv2d_backward(L, x, w, NULL, y, x, w), ANY_ERR);

    /* NULL arguments on a valid plan. */
    c = good;
    OK(lk_conv2d_init(L, &c));
    BAD(lk_conv2d_forward(L, NULL, x, w, NULL, 0), LK_ERR_ARG);
    BAD(lk_conv2d_forward(L, y, NULL, w, NULL, 0), LK_ERR_ARG);
    BAD(lk_conv2d_forward(L, y, x, NULL, NULL, 0), LK_ERR_ARG);
    BAD(lk_conv2d_backward(L, x, w, NULL, NULL, x, w), LK_ERR_ARG);  /* dy NULL */
    BAD(lk_conv2d_backward(L, NULL, w, NULL, y, NULL, w), LK_ERR_ARG); /* x NULL for dw */
    lk_conv2d_free(L);
    c = good; c.bias = 1;
    OK(lk_conv2d_init(L, &c));
    BAD(lk_conv2d_forward(L, y, x, w, NULL, 0), LK_ERR_ARG); /* bias layer without b */
    lk_conv2d_free(L);

    /* Forward-only plan: backward is refused. */
    c = good; c.train = 0;
    OK(lk_conv2d_init(L, &c));
    BAD(lk_conv2d_backward(L, x, w, NULL, y, x, w), ANY_ERR);
    lk_conv2d_free(L);
    return 1;
}

static int test_conv2d_bad(void) {
    NEED(lk_conv2d_init, "conv2d.c");
    NEED(lk_conv2d_forward, "conv2d.c");
    NEED(lk_conv2d_backward, "conv2d.c");
    NEED(lk_conv2d_free, "conv2d.c");
    lk_conv2d L;
    memset(&L, 0, sizeof L);
    lk_conv2d_free(&L); /* zeroed struct */
    lk_conv2d_free(&L); /* twice */
    int ok = conv_bad_body(&L);
    lk_conv2d_free(&L);
    /* init/free cycles */
    lk_conv2d_cfg c = {.n = 2, .ic = 8, .ih = 7, .iw = 7, .oc = 8, .kh = 5, .kw = 5, .sh = 2,
                       .sw = 2, .pt = 2, .pl = 2, .pb = 2, .pr = 2, .groups = 8, .train = 1,
                       .need_dx = 1};
    for (int i = 0; ok && i < 3; i++) {
        lk_status s = lk_conv2d_init(&L, &c);
        lk_conv2d_free(&L);
        if (s != LK_OK) ok = failf(__LINE__, "init/free cycle %d: %s", i, lk_last_error());
    }
    return ok;
}

/* --------------------------------------------------------------- batchnorm */
static int bn_case_body(lk_bn *L, lk_bn_cfg c) {
    OK(lk_bn_init(L, &c));
    int C = c.c;
    size_t M = (size_t)c.n * c.h * c.w, nx = M * C;
    float *x = frand(nx, -2, 3), *g = frand(C, 0.5, 1.5), *be = frand(C, -1, 1);
    float *rm = frand(C, -0.5, 0.5), *rv = frand(C, 0.5, 2.0);
    float *rm0 = fbuf(C), *rv0 = fbuf(C);
    memcpy(rm0, rm, C * sizeof *rm);
    memcpy(rv0, rv, C * sizeof *rv);
    float *y = fbuf(nx), *mean = fbuf(C), *var = fbuf(C), *dy = frand(nx, -1, 1);
    float *dx = fbuf(nx), *dg = fbuf(C), *db = fbuf(C);
    double *rmean = dbuf(C), *rvar = dbuf(C), *ry = dbuf(nx), *rdx = dbuf(nx), *rdg = dbuf(C),
           *rdb = dbuf(C), *rrm = dbuf(C), *rrv = dbuf(C);
    int train = c.mode == LK_BN_TRAIN;
    for (int ch = 0; ch < C; ch++) {
        double s = 0, q = 0;
        for (size_t i = 0; i < M; i++) s += x[i * C + ch];
        double mu = s / M;
        for (size_t i = 0; i < M; i++) q += (x[i * C + ch] - mu) * (x[i * C + ch] - mu);
        double v = q / M;
        rmean[ch] = mu;
        rvar[ch] = v;
        rrm[ch] = train ? (1 - c.momentum) * rm[ch] + c.momentum * mu : rm[ch];
        rrv[ch] = train ? (1 - c.momentum) * rv[ch] + c.momentum * v * M / (M - 1) : rv[ch];
        double um = train ? mu : rm[ch], uv = train ? v : rv[ch];
        double rstd = 1.0 / sqrt(uv + c.eps), sdy = 0, sdyx = 0;
        for (size_t i = 0; i < M; i++) {
            double xh = (x[i * C + ch] - um) * rstd;
            ry[i * C + ch] = g[ch] * xh + be[ch];
            sdy += dy[i * C + ch];
            sdyx += dy[i * C + ch] * xh;
        }
        rdb[ch] = sdy;
        rdg[ch] = sdyx;
        for (size_t i = 0; i < M; i++) {
            double xh = (x[i * C + ch] - um) * rstd, d = dy[i * C + ch];
            rdx[i * C + ch] = train ? g[ch] * rstd * (d - sdy / M - xh * sdyx / M) : g[ch] * rstd * d;
        }
    }
    if (train) {
        OK(lk_bn_forward(L, y, mean, var, x, g, be, rm, rv));
        CLOSE("bn mean", mean, rmean, (size_t)C);
        CLOSE("bn var", var, rvar, (size_t)C);
    } else {
        OK(lk_bn_forward(L, y, NULL, NULL, x, g, be, rm, rv));
    }
    CLOSE("bn y", y, ry, nx);
    CLOSE("bn running_mean", rm, rrm, (size_t)C);
    CLOSE("bn running_var", rv, rrv, (size_t)C);
    if (!train) {
        EXPECT(!memcmp(rm, rm0, C * sizeof *rm) && !memcmp(rv, rv0, C * sizeof *rv),
               "running statistics changed in mode %d", (int)c.mode);
    }
    if (c.mode == LK_BN_EVAL) {
        BAD(lk_bn_backward(L, dx, dg, db, dy, x, rm, rv, g), ANY_ERR);
        return 1;
    }
    const float *sm = train ? mean : rm, *sv = train ? var : rv;
    for (size_t i = 0; i < nx; i++) dx[i] = 1e6f;
    OK(lk_bn_backward(L, c.need_dx ? dx : NULL, dg, db, dy, x, sm, sv, g));
    if (c.need_dx) CLOSE("bn dx", dx, rdx, nx);
    CLOSE("bn dgamma", dg, rdg, (size_t)C);
    CLOSE("bn dbeta", db, rdb, (size_t)C);
    if (c.need_dx) { /* input gradient alone */
        memset(dx, 0, nx * sizeof *dx);
        OK(lk_bn_backward(L, dx, NULL, NULL, dy, x, sm, sv, g));
        CLOSE("bn dx (dx only)", dx, rdx, nx);
    }
    return 1;
}

static int bn_case(lk_bn_cfg c) {
    lk_bn L = {0};
    int ok = bn_case_body(&L, c);
    lk_bn_free(&L);
    if (!ok) {
        char tmp[768];
        snprintf(tmp, sizeof tmp, "%.700s", g_msg);
        snprintf(g_msg, sizeof g_msg, "[n%d c%d %dx%d mode %d need_dx %d] %s", c.n, c.c, c.h,
                 c.w, (int)c.mode, c.need_dx, tmp);
    }
    return ok;
}

static int test_batchnorm(void) {
    NEED(lk_bn_init, "batchnorm.c");
    NEED(lk_bn_forward, "batchnorm.c");
    NEED(lk_bn_backward, "batchnorm.c");
    NEED(lk_bn_free, "batchnorm.c");
    const lk_bn_mode modes[] = {LK_BN_TRAIN, LK_BN_EVAL, LK_BN_FROZEN};
    for (int m = 0; m < 3; m++) {
        /* 4-D, odd non-square; batch 1; 1-D (BatchNorm1d) */
        lk_bn_cfg c4 = {.n = 2, .c = 5, .h = 3, .w = 7, .eps = 1e-5f, .momentum = 0.1f,
                        .mode = modes[m], .need_dx = 1};
        lk_bn_cfg c1b = {.n = 1, .c = 16, .h = 5, .w = 4, .eps = 1e-3f, .momentum = 0.01f,
                         .mode = modes[m], .need_dx = 1};
        lk_bn_cfg c1d = {.n = 6, .c = 7, .h = 1, .w = 1, .eps = 1e-5f, .momentum = 0.1f,
                         .mode = modes[m], .need_dx = 1};
        if (!bn_case(c4) || !bn_case(c1b) || !bn_case(c1d)) return 0;
        if (modes[m] != LK_BN_EVAL) {
            c4.need_dx = 0; /* parameter gradients only (first trainable layer) */
            if (!bn_case(c4)) return 0;
        }
    }
    return 1;
}

/* Parameter gradients alone (dx == NULL: the plain-C reduction of batchnorm.c)
 * must not depend on the team: the same bits with 1 and 2 threads and with a
 * one-member team nested in a parallel region, and match a double reference. */
typedef struct {
    lk_bn *L; /* [2]: one per outer thread */
    const float *dy, *x, *mean, *var;
    int c;
} bn_pg_ctx;

static lk_status bn_pg_run(void *ctx, float *out) { /* out = [dgamma | dbeta] */
    const bn_pg_ctx *k = ctx;
    return lk_bn_backward(&k->L[outer_thread()], NULL, out, out + k->c, k->dy, k->x, k->mean,
                          k->var, NULL);
}

static int bn_pg_case(lk_bn *L, lk_bn_cfg c) { /* L [2] */
    OK(lk_bn_init(&L[0], &c));
    OK(lk_bn_init(&L[1], &c));
    const int C = c.c;
    const size_t M = (size_t)c.n * c.h * c.w, nx = M * C;
    float *x = frand(nx, -2, 3), *dy = frand(nx, -1, 1), *mean = frand(C, -0.5, 1.5);
    float *var = frand(C, 0.5, 2), *out = fbuf(2 * (size_t)C);
    double *ref = dbuf(2 * (size_t)C);
    for (int ch = 0; ch < C; ch++) {
        double sxy = 0, sy = 0;
        for (size_t i = 0; i < M; i++) {
            sxy += (double)dy[i * C + ch] * ((double)x[i * C + ch] - mean[ch]);
            sy += dy[i * C + ch];
        }
        ref[ch] = sxy / sqrt((double)var[ch] + c.eps);
        ref[C + ch] = sy;
    }
    bn_pg_ctx k = {L, dy, x, mean, var, C};
    SAME_BITS("bn dgamma|dbeta", bn_pg_run, &k, out, 2 * (size_t)C);
    CLOSE("bn dgamma|dbeta (any team)", out, ref, 2 * (size_t)C);
    /* Huge terms that cancel (first and last row) make the float result depend
     * on the summation order: the same bits now mean the same order. */
    for (int ch = 0; ch < C; ch++) {
        dy[ch] = 0x1p40f;
        dy[(M - 1) * C + ch] = -0x1p40f;
        x[(M - 1) * C + ch] = x[ch];
    }
    SAME_BITS("bn dgamma|dbeta (order-sensitive data)", bn_pg_run, &k, out, 2 * (size_t)C);
    return 1;
}

static int test_batchnorm_team(void) {
    NEED(lk_bn_init, "batchnorm.c");
    NEED(lk_bn_backward, "batchnorm.c");
    NEED(lk_bn_free, "batchnorm.c");
    /* several row chunks and a partial channel block; one chunk, many blocks (1-D);
     * few rows (below the parallel threshold) */
    const lk_bn_cfg cases[] = {
        {.n = 2, .c = 70, .h = 30, .w = 29, .eps = 1e-5f, .momentum = 0.1f, .mode = LK_BN_TRAIN},
        {.n = 40, .c = 1536, .h = 1, .w = 1, .eps = 1e-5f, .momentum = 0.1f,
         .mode = LK_BN_TRAIN},
        {.n = 3, .c = 5, .h = 7, .w = 2, .eps = 1e-3f, .momentum = 0.1f, .mode = LK_BN_FROZEN},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        lk_bn L[2];
        memset(L, 0, sizeof L);
        int ok = bn_pg_case(L, cases[i]);
        lk_bn_free(&L[0]);
        lk_bn_free(&L[1]);
        if (!ok) return 0;
    }
    return 1;
}

/* Fused BN + SiLU (cfg.silu): forward (y, batch statistics, running statistics) and
 * backward (dx, dgamma, dbeta) against a double reference of BN then SiLU, with the
 * same bits for any team. Channel counts below, across and above one 64-channel block
 * and above one 2048-float tile (the segmented pass), rows over several chunks and
 * not a multiple of the 64-row tile, a mean far from zero. */
typedef struct {
    lk_bn *L; /* [2]: one per outer thread */
    const float *x, *dy, *gamma, *beta, *rm0, *rv0;
    float *rm, *rv;
    int c;
    size_t nx;
} bn_silu_ctx;

static lk_status bn_silu_run(void *ctx, float *out) { /* [y | dx | mean | var | dg | db | rm | rv] */
    const bn_silu_ctx *k = ctx;
    const size_t C = (size_t)k->c;
    float *y = out, *dx = out + k->nx, *mean = dx + k->nx, *var = mean + C, *dg = var + C;
    float *db = dg + C, *rm = db + C, *rv = rm + C;
    memcpy(rm, k->rm0, C * sizeof *rm);
    memcpy(rv, k->rv0, C * sizeof *rv);
    lk_bn *L = &k->L[outer_thread()];
    lk_status st = lk_bn_silu_forward(L, y, mean, var, k->x, k->gamma, k->beta, rm, rv);
    if (st != LK_OK) return st;
    return lk_bn_silu_backward(L, dx, dg, db, k->dy, k->x, mean, var, k->gamma, k->beta);
}

static int bn_silu_case(lk_bn *L, lk_bn_cfg c, double offset) { /* L [2] */
    c.mode = LK_BN_TRAIN;
    c.silu = 1;
    c.need_dx = 1;
    OK(lk_bn_init(&L[0], &c));
    OK(lk_bn_init(&L[1], &c));
    const int C = c.c;
    const size_t M = (size_t)c.n * c.h * c.w, nx = M * C, nout = 2 * nx + 6 * (size_t)C;
    float *x = frand(nx, -2, 3), *dy = frand(nx, -1, 1), *gamma = frand(C, 0.5, 1.5);
    float *beta = frand(C, -1, 1), *rm0 = frand(C, -0.5, 0.5), *rv0 = frand(C, 0.5, 2);
    for (size_t i = 0; i < nx; i++) x[i] += (float)offset;
    float *out = fbuf(nout);
    double *ref = dbuf(nout);
    double *ry = ref, *rdx = ref + nx, *rmean = rdx + nx, *rvar = rmean + C, *rdg = rvar + C;
    double *rdb = rdg + C, *rrm = rdb + C, *rrv = rrm + C;
    for (int ch = 0; ch < C; ch++) {
        double s = 0, q = 0, sg = 0, sgx = 0;
        for (size_t i = 0; i < M; i++) s += x[i * C + ch];
        const double mu = s / (double)M;
        for (size_t i = 0; i < M; i++) q += (x[i * C + ch] - mu) * (x[i * C + ch] - mu);
        const double v = q / (double)M, rstd = 1.0 / sqrt(v + c.eps);
        for (size_t i = 0; i < M; i++) {
            const double xh = (x[i * C + ch] - mu) * rstd, a = xh * gamma[ch] + beta[ch];
            const double sa = 1.0 / (1.0 + exp(-a)), g = dy[i * C + ch] * sa * (1.0 + a * (1.0 - sa));
            ry[i * C + ch] = a * sa;
            rdx[i * C + ch] = g; /* g for now */
            sg += g;
            sgx += g * xh;
        }
        for (size_t i = 0; i < M; i++) {
            const double xh = (x[i * C + ch] - mu) * rstd;
            rdx[i * C + ch] = gamma[ch] * rstd * (rdx[i * C + ch] - sg / M - xh * sgx / M);
        }
        rmean[ch] = mu;
        rvar[ch] = v;
        rdg[ch] = sgx;
        rdb[ch] = sg;
        rrm[ch] = (1.0 - c.momentum) * rm0[ch] + c.momentum * mu;
        rrv[ch] = (1.0 - c.momentum) * rv0[ch] + c.momentum * v * (double)M / (double)(M - 1);
    }
    bn_silu_ctx k = {L, x, dy, gamma, beta, rm0, rv0, NULL, NULL, C, nx};
    SAME_BITS("bn+silu outputs", bn_silu_run, &k, out, nout);
    CLOSE("bn+silu y", out, ry, nx);
    CLOSE("bn+silu dx", out + nx, rdx, nx);
    CLOSE("bn+silu mean", out + 2 * nx, rmean, (size_t)C);
    CLOSE("bn+silu var", out + 2 * nx + C, rvar, (size_t)C);
    CLOSE("bn+silu dgamma", out + 2 * nx + 2 * C, rdg, (size_t)C);
    CLOSE("bn+silu dbeta", out + 2 * nx + 3 * C, rdb, (size_t)C);
    CLOSE("bn+silu running_mean", out + 2 * nx + 4 * C, rrm, (size_t)C);
    CLOSE("bn+silu running_var", out + 2 * nx + 5 * C, rrv, (size_t)C);
    /* dgamma/dbeta alone; the unfused entry points refuse a fused plan. */
    float *dg = fbuf(C), *db = fbuf(C);
    OK(lk_bn_silu_backward(L, NULL, dg, db, dy, x, out + 2 * nx, out + 2 * nx + C, gamma, beta));
    EXPECT(!memcmp(dg, out + 2 * nx + 2 * C, C * sizeof *dg) &&
           !memcmp(db, out + 2 * nx + 3 * C, C * sizeof *db), "dgamma/dbeta without dx differ");
    /* A gated dy (a squeeze-and-excitation's input gradient, lk_bn_gate) gives the bits
     * of the same map applied beforehand, with dx over dy in place as the block runs it. */
    const size_t NC = (size_t)c.n * C, HW = (size_t)c.h * c.w;
    float *gs = frand(NC, 0, 1), *ga = frand(NC, -0.01, 0.01), *dyg = fbuf(nx), *dxg = fbuf(nx);
    float *dgg = fbuf(C), *dbg = fbuf(C);
    for (size_t i = 0; i < nx; i++) {
        const size_t img = i / C / HW, ch = i % C;
        const float prod = dy[i] * gs[img * C + ch];
        dyg[i] = prod + ga[img * C + ch];
    }
    const float *mean = out + 2 * nx, *var = mean + C;
    OK(lk_bn_silu_backward(L, dyg, dg, db, dyg, x, mean, var, gamma, beta));
    memcpy(dxg, dy, nx * sizeof *dxg);
    const lk_bn_gate gate = {.scale = gs, .shift = ga};
    OK(lk_bn_silu_backward_gated(L, dxg, dgg, dbg, dxg, &gate, x, mean, var, gamma, beta));
    EXPECT(!memcmp(dxg, dyg, nx * sizeof *dxg) && !memcmp(dgg, dg, C * sizeof *dg) &&
           !memcmp(dbg, db, C * sizeof *db), "gated dy: dx/dgamma/dbeta differ from the map applied first");
    const lk_bn_gate half = {.scale = gs, .shift = NULL};
    BAD(lk_bn_silu_backward_gated(L, dxg, dgg, dbg, dxg, &half, x, mean, var, gamma, beta),
        LK_ERR_ARG);
    BAD(lk_bn_forward(L, out, NULL, NULL, x, gamma, beta, NULL, NULL), LK_ERR_ARG);
    BAD(lk_bn_backward(L, out, dg, db, dy, x, rm0, rv0, gamma), LK_ERR_ARG);
    BAD(lk_bn_silu_forward(L, out, NULL, NULL, x, gamma, NULL, NULL, NULL), LK_ERR_ARG);
    return 1;
}

static int test_bn_silu(void) {
    NEED(lk_bn_silu_forward, "batchnorm.c");
    NEED(lk_bn_silu_backward, "batchnorm.c");
    NEED(lk_bn_silu_backward_gated, "batchnorm.c");
    const lk_bn_cfg cases[] = {
        {.n = 2, .c = 5, .h = 3, .w = 7, .eps = 1e-5f, .momentum = 0.1f},
        /* the next three are large enough to run in parallel (>= 2^15 elements) */
        {.n = 4, .c = 24, .h = 23, .w = 25, .eps = 1e-3f, .momentum = 0.1f},  /* 8 chunks */
        {.n = 2, .c = 130, .h = 15, .w = 12, .eps = 1e-5f, .momentum = 0.01f}, /* 3 blocks */
        {.n = 2, .c = 2100, .h = 3, .w = 3, .eps = 1e-3f, .momentum = 0.1f}, /* > 1 tile */
        /* statistics by whole rows (>= 4 chunks), channels off the vector width */
        {.n = 3, .c = 77, .h = 19, .w = 19, .eps = 1e-5f, .momentum = 0.1f},
    };
    const double offsets[] = {0.0, 0.0, 30.0, 0.0, 30.0};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        lk_bn L[2];
        memset(L, 0, sizeof L);
        int ok = bn_silu_case(L, cases[i], offsets[i]);
        lk_bn_free(&L[0]);
        lk_bn_free(&L[1]);
        if (!ok) {
            char tmp[768];
            snprintf(tmp, sizeof tmp, "%.700s", g_msg);
            snprintf(g_msg, sizeof g_msg, "[bn+silu case %zu] %s", i, tmp);
            return 0;
        }
        tfree_all();
    }
    /* Refused configurations: EVAL/FROZEN modes and a 1x1 (BatchNorm1d) input. */
    lk_bn L = {0};
    lk_bn_cfg bad = {.n = 2, .c = 4, .h = 3, .w = 3, .eps = 1e-5f, .momentum = 0.1f,
                     .mode = LK_BN_FROZEN, .silu = 1};
    BAD(lk_bn_init(&L, &bad), LK_ERR_ARG);
    lk_bn_free(&L);
    bad.mode = LK_BN_TRAIN;
    bad.h = bad.w = 1;
    BAD(lk_bn_init(&L, &bad), LK_ERR_ARG);
    lk_bn_free(&L);
    return 1;
}

static int bn_bad_body(lk_bn *L) {
    const lk_bn_cfg good = {.n = 2, .c = 3, .h = 2, .w = 2, .eps = 1e-5f, .momentum = 0.1f,
                            .mode = LK_BN_TRAIN, .need_dx = 1};
    lk_bn_cfg c = good;
    c.c = 0;
    BAD(lk_bn_init(L, &c), LK_ERR_ARG);
    lk_bn_free(L);
    c = good; c.mode = (lk_bn_mode)7;
    BAD(lk_bn_init(L, &c), LK_ERR_ARG);
    lk_bn_free(L);
    c = good; c.eps = -1.0f;
    BAD(lk_bn_init(L, &c), LK_ERR_ARG);
    lk_bn_free(L);
    float *x = frand(24, -1, 1), *y = fbuf(24), *p = frand(3, 0.5, 1), *m = fbuf(3), *v = fbuf(3);
    float *rm = fbuf(3), *rv = frand(3, 1, 2);
    BAD(lk_bn_forward(L, y, m, v, x, p, p, rm, rv), ANY_ERR); /* zeroed struct */
    OK(lk_bn_init(L, &good));
    BAD(lk_bn_forward(L, NULL, m, v, x, p, p, rm, rv), LK_ERR_ARG);
    BAD(lk_bn_forward(L, y, m, v, NULL, p, p, rm, rv), LK_ERR_ARG);
    OK(lk_bn_forward(L, y, NULL, NULL, x, p, p, NULL, NULL)); /* stats not kept: allowed */
    OK(lk_bn_forward(L, y, m, v, x, p, p, rm, rv));
    BAD(lk_bn_backward(L, x, m, v, NULL, x, m, v, p), LK_ERR_ARG); /* dy NULL */
    BAD(lk_bn_backward(L, x, m, v, y, x, NULL, NULL, p), LK_ERR_ARG); /* saved stats NULL */
    lk_bn_free(L);
    c = good; c.mode = LK_BN_EVAL;
    OK(lk_bn_init(L, &c));
    BAD(lk_bn_backward(L, x, m, v, y, x, rm, rv, p), ANY_ERR); /* eval plan has no backward */
    lk_bn_free(L);
    return 1;
}

static int test_batchnorm_bad(void) {
    NEED(lk_bn_init, "batchnorm.c");
    NEED(lk_bn_forward, "batchnorm.c");
    NEED(lk_bn_backward, "batchnorm.c");
    NEED(lk_bn_free, "batchnorm.c");
    lk_bn L;
    memset(&L, 0, sizeof L);
    lk_bn_free(&L);
    int ok = bn_bad_body(&L);
    lk_bn_free(&L);
    lk_bn_cfg c = {.n = 2, .c = 5, .h = 3, .w = 3, .eps = 1e-5f, .momentum = 0.1f,
                   .mode = LK_BN_TRAIN, .need_dx = 1};
    for (int i = 0; ok && i < 3; i++) {
        lk_status s = lk_bn_init(&L, &c);
        lk_bn_free(&L);
        if (s != LK_OK) ok = failf(__LINE__, "init/free cycle %d: %s", i, lk_last_error());
    }
    return ok;
}

/* -------------------------------------------------------------- activation */
static double sigm(double v) { return 1.0 / (1.0 + exp(-v)); }

static int act_case_body(lk_act *L, lk_act_kind kind, int64_t n) {
    static const char *names[] = {"silu", "sigmoid", "relu", "relu6"};
    OK(lk_act_init(L, kind, n, 1));
    float *x = frand((size_t)n, -8, 8), *dy = frand((size_t)n, -1, 1), *y = fbuf((size_t)n);
    float *dx = fbuf((size_t)n);
    double *ry = dbuf((size_t)n), *rdx = dbuf((size_t)n);
    for (int64_t i = 0; i < n; i++) {
        double v = x[i], d = 0;
        switch (kind) {
        case LK_ACT_SILU: ry[i] = v * sigm(v); d = sigm(v) * (1 + v * (1 - sigm(v))); break;
        case LK_ACT_SIGMOID: ry[i] = sigm(v); d = sigm(v) * (1 - sigm(v)); break;
        case LK_ACT_RELU: ry[i] = v > 0 ? v : 0; d = v > 0; break;
        case LK_ACT_RELU6: ry[i] = v < 0 ? 0 : v > 6 ? 6 : v; d = v > 0 && v < 6; break;
        }
        rdx[i] = d * dy[i];
    }
    char what[64];
    snprintf(what, sizeof what, "%s y", names[kind]);
    OK(lk_act_forward(L, y, x));
    CLOSE(what, y, ry, (size_t)n);
    /* Backward gets only the tensor it is documented to use; the other is NULL. */
    const float *bx = kind == LK_ACT_SIGMOID ? NULL : x, *by = kind == LK_ACT_SIGMOID ? y : NULL;
    snprintf(what, sizeof what, "%s dx", names[kind]);
    OK(lk_act_backward(L, dx, dy, bx, by));
    CLOSE(what, dx, rdx, (size_t)n);
    /* In place: dx == dy, then y == x (x is clobbered last). */
    float *g = fbuf((size_t)n);
    memcpy(g, dy, (size_t)n * sizeof *g);
    OK(lk_act_backward(L, g, g, bx, by));
    snprintf(what, sizeof what, "%s dx (in place)", names[kind]);
    CLOSE(what, g, rdx, (size_t)n);
    OK(lk_act_forward(L, x, x));
    snprintf(what, sizeof what, "%s y (in place)", names[kind]);
    CLOSE(what, x, ry, (size_t)n);
    return 1;
}

static int test_activation(void) {
    NEED(lk_act_init, "activation.c");
    NEED(lk_act_forward, "activation.c");
    NEED(lk_act_backward, "activation.c");
    NEED(lk_act_free, "activation.c");
    const lk_act_kind kinds[] = {LK_ACT_SILU, LK_ACT_SIGMOID, LK_ACT_RELU, LK_ACT_RELU6};
    const int64_t counts[] = {1, 1001, 2 * 5 * 7 * 3};
    for (int k = 0; k < 4; k++)
        for (int j = 0; j < 3; j++) {
            lk_act L = {0};
            int ok = act_case_body(&L, kinds[k], counts[j]);
            lk_act_free(&L);
            if (!ok) return 0;
        }
    return 1;
}

/* The inference SiLU (lk_silu_forward_fast_serial: the register kernels' silu_fast8 and
 * silu_fast16, or the exact portable one) on every kernel path this CPU has: within
 * 5e-7 relative of double over [-110, 110] wherever the result exceeds 1e-30, and
 * torch's special values: silu(nan) = nan, silu(inf) = inf, silu(-inf) = nan, large
 * negative inputs give -0, +-0 keep their sign (large positive ones x to 2^-22, not
 * exactly: the reciprocal estimate). */
static int test_silu_fast(void) {
    NEED(lk_silu_forward_fast_serial, "activation.c");
    enum { N = 200003 };
    float *x = fbuf(N + 8), *y = fbuf(N + 8);
    for (int i = 0; i < N; i++) x[i] = -110.0f + 220.0f * (float)i / (float)(N - 1);
    const float sp[8] = {NAN, INFINITY, -INFINITY, 0.0f, -0.0f, -1000.0f, 200.0f, -200.0f};
    static const char *isas[] = {"c", "avx2", "avx512"};
    for (int q = 0; q < 3; q++) {
        if (lk_kernel_isa_set(isas[q]) != LK_OK) { /* not on this CPU */
            lk_clear_error();
            continue;
        }
        lk_silu_forward_fast_serial(y, x, N);
        double worst = 0;
        float at = 0;
        for (int i = 0; i < N; i++) {
            const double r = (double)x[i] / (1.0 + exp(-(double)x[i]));
            if (fabs(r) < 1e-30) continue; /* exp(-x) leaves the normal range near here */
            const double e = fabs(y[i] - r) / fabs(r);
            if (!(e <= worst)) worst = e, at = x[i];
        }
        float o[8];
        lk_silu_forward_fast_serial(o, sp, 8);
        lk_kernel_isa_set("auto");
        EXPECT(worst < 5e-7, "%s: relative error %.3g at x = %g", isas[q], worst, at);
        EXPECT(isnan(o[0]) && o[1] == INFINITY && isnan(o[2]),
               "%s: silu(nan, inf, -inf) = %g %g %g", isas[q], o[0], o[1], o[2]);
        EXPECT(o[3] == 0 && !signbit(o[3]) && o[4] == 0 && signbit(o[4]),
               "%s: silu(+-0) = %g %g", isas[q], o[3], o[4]);
        EXPECT(o[5] == 0 && signbit(o[5]) && o[7] == 0 && signbit(o[7]) &&
                   fabsf(o[6] - 200.0f) <= 200.0f * 5e-7f,
               "%s: silu(-1000, 200, -200) = %g %g %g", isas[q], o[5], o[6], o[7]);
    }
    return 1;
}

static int act_bad_body(lk_act *L) {
    BAD(lk_act_init(L, LK_ACT_SILU, -5, 1), LK_ERR_ARG);
    lk_act_free(L);
    BAD(lk_act_init(L, (lk_act_kind)42, 10, 1), LK_ERR_ARG);
    lk_act_free(L);
    float *x = frand(10, -1, 1), *y = fbuf(10);
    BAD(lk_act_forward(L, y, x), ANY_ERR); /* zeroed struct */
    OK(lk_act_init(L, LK_ACT_SILU, 10, 0));
    BAD(lk_act_forward(L, NULL, x), LK_ERR_ARG);
    BAD(lk_act_forward(L, y, NULL), LK_ERR_ARG);
    OK(lk_act_forward(L, y, x));
    BAD(lk_act_backward(L, y, x, x, y), ANY_ERR); /* forward-only plan */
    lk_act_free(L);
    OK(lk_act_init(L, LK_ACT_SILU, 10, 1));
    BAD(lk_act_backward(L, y, x, NULL, y), LK_ERR_ARG); /* SiLU needs x */
    BAD(lk_act_backward(L, y, NULL, x, NULL), LK_ERR_ARG);
    lk_act_free(L);
    OK(lk_act_init(L, LK_ACT_SIGMOID, 10, 1));
    BAD(lk_act_backward(L, y, x, x, NULL), LK_ERR_ARG); /* sigmoid needs y */
    lk_act_free(L);
    return 1;
}

static int test_activation_bad(void) {
    NEED(lk_act_init, "activation.c");
    NEED(lk_act_forward, "activation.c");
    NEED(lk_act_backward, "activation.c");
    NEED(lk_act_free, "activation.c");
    lk_act L;
    memset(&L, 0, sizeof L);
    lk_act_free(&L);
    int ok = act_bad_body(&L);
    lk_act_free(&L);
    for (int i = 0; ok && i < 3; i++) {
        lk_status s = lk_act_init(&L, LK_ACT_RELU6, 100, 1);
        lk_act_free(&L);
        if (s != LK_OK) ok = failf(__LINE__, "init/free cycle %d: %s", i, lk_last_error());
    }
    return ok;
}

/* ----------------------------------------------------------------- pooling */
static int gpool_case_body(lk_gpool *L, lk_pool_kind kind, int n, int c, int h, int w) {
    OK(lk_gpool_init(L, kind, n, c, h, w, 1));
    size_t hw = (size_t)h * w, nx = (size_t)n * hw * c, ny = (size_t)n * c;
    float *x = frand(nx, -3, 3), *y = fbuf(ny), *dy = frand(ny, -1, 1), *dx = fbuf(nx);
    double *ry = dbuf(ny), *rdx = dbuf(nx);
    for (int b = 0; b < n; b++)
        for (int ch = 0; ch < c; ch++) {
            double s = 0, mx = -INFINITY;
            size_t arg = 0;
            for (size_t p = 0; p < hw; p++) {
                size_t i = ((size_t)b * hw + p) * c + ch;
                s += x[i];
                if (x[i] > mx) { mx = x[i]; arg = i; }
            }
            ry[(size_t)b * c + ch] = kind == LK_POOL_AVG ? s / hw : mx;
            for (size_t p = 0; p < hw; p++) {
                size_t i = ((size_t)b * hw + p) * c + ch;
                rdx[i] = kind == LK_POOL_AVG ? dy[(size_t)b * c + ch] / hw
                                             : (i == arg ? dy[(size_t)b * c + ch] : 0.0);
            }
        }
    OK(lk_gpool_forward(L, y, x));
    CLOSE(kind == LK_POOL_AVG ? "avgpool y" : "maxpool y", y, ry, ny);
    for (size_t i = 0; i < nx; i++) dx[i] = 1e6f;
    OK(lk_gpool_backward(L, dx, dy));
    CLOSE(kind == LK_POOL_AVG ? "avgpool dx" : "maxpool dx", dx, rdx, nx);
    return 1;
}

static int test_pooling(void) {
    NEED(lk_gpool_init, "pooling.c");
    NEED(lk_gpool_forward, "pooling.c");
    NEED(lk_gpool_backward, "pooling.c");
    NEED(lk_gpool_free, "pooling.c");
    const int shapes[][4] = {{2, 5, 3, 7}, {1, 16, 4, 4}, {3, 1, 1, 5}, {2, 9, 1, 1}};
    for (int k = 0; k < 2; k++)
        for (int s = 0; s < 4; s++) {
            lk_gpool L = {0};
            int ok = gpool_case_body(&L, k ? LK_POOL_MAX : LK_POOL_AVG, shapes[s][0],
                                     shapes[s][1], shapes[s][2], shapes[s][3]);
            lk_gpool_free(&L);
            if (!ok) return 0;
        }
    return 1;
}

static int gpool_bad_body(lk_gpool *L) {
    BAD(lk_gpool_init(L, LK_POOL_AVG, 2, 0, 3, 3, 1), LK_ERR_ARG);
    lk_gpool_free(L);
    BAD(lk_gpool_init(L, (lk_pool_kind)9, 2, 3, 3, 3, 1), LK_ERR_ARG);
    lk_gpool_free(L);
    float *x = frand(54, -1, 1), *y = fbuf(6);
    BAD(lk_gpool_forward(L, y, x), ANY_ERR); /* zeroed struct */
    OK(lk_gpool_init(L, LK_POOL_MAX, 2, 3, 3, 3, 0));
    BAD(lk_gpool_forward(L, NULL, x), LK_ERR_ARG);
    BAD(lk_gpool_forward(L, y, NULL), LK_ERR_ARG);
    OK(lk_gpool_forward(L, y, x));
    BAD(lk_gpool_backward(L, x, y), ANY_ERR); /* forward-only plan */
    lk_gpool_free(L);
    OK(lk_gpool_init(L, LK_POOL_AVG, 2, 3, 3, 3, 1));
    BAD(lk_gpool_backward(L, NULL, y), LK_ERR_ARG);
    lk_gpool_free(L);
    return 1;
}

static int test_pooling_bad(void) {
    NEED(lk_gpool_init, "pooling.c");
    NEED(lk_gpool_forward, "pooling.c");
    NEED(lk_gpool_backward, "pooling.c");
    NEED(lk_gpool_free, "pooling.c");
    lk_gpool L;
    memset(&L, 0, sizeof L);
    lk_gpool_free(&L);
    int ok = gpool_bad_body(&L);
    lk_gpool_free(&L);
    for (int i = 0; ok && i < 3; i++) {
        lk_status s = lk_gpool_init(&L, i % 2 ? LK_POOL_MAX : LK_POOL_AVG, 2, 8, 5, 5, 1);
        lk_gpool_free(&L);
        if (s != LK_OK) ok = failf(__LINE__, "init/free cycle %d: %s", i, lk_last_error());
    }
    return ok;
}

/* ------------------------------------------------------------------ linear */
static int linear_case_body(lk_linear *L, int n, int in, int out, int bias, int need_dx) {
    OK(lk_linear_init(L, &(lk_linear_cfg){
            .n = n, .in = in, .out = out, .bias = bias, .train = 1, .need_dx = need_dx}));
    float *x = frand((size_t)n * in, -1, 1), *w = frand((size_t)out * in, -1, 1);
    float *b = bias ? frand(out, -1, 1) : NULL, *y = fbuf((size_t)n * out);
    float *dy = frand((size_t)n * out, -1, 1), *dx = fbuf((size_t)n * in);
    float *dw = fbuf((size_t)out * in), *db = fbuf(out);
    double *ry = dbuf((size_t)n * out), *rdx = dbuf((size_t)n * in), *rdw = dbuf((size_t)out * in),
           *rdb = dbuf(out);
    for (int i = 0; i < n; i++)
        for (int o = 0; o < out; o++) {
            double s = b ? b[o] : 0, d = dy[(size_t)i * out + o];
            for (int k = 0; k < in; k++) {
                s += (double)x[(size_t)i * in + k] * w[(size_t)o * in + k];
                rdx[(size_t)i * in + k] += d * w[(size_t)o * in + k];
                rdw[(size_t)o * in + k] += d * x[(size_t)i * in + k];
            }
            ry[(size_t)i * out + o] = s;
            rdb[o] += d;
        }
    OK(lk_linear_forward(L, y, x, w, b));
    CLOSE("linear y", y, ry, (size_t)n * out);
    OK(lk_linear_backward(L, need_dx ? dx : NULL, dw, bias ? db : NULL, dy, x, w));
    if (need_dx) CLOSE("linear dx", dx, rdx, (size_t)n * in);
    CLOSE("linear dw", dw, rdw, (size_t)out * in);
    if (bias) CLOSE("linear db", db, rdb, (size_t)out);
    return 1;
}

static int test_linear(void) {
    NEED(lk_linear_init, "linear.c");
    NEED(lk_linear_forward, "linear.c");
    NEED(lk_linear_backward, "linear.c");
    NEED(lk_linear_free, "linear.c");
    const int cases[][5] = {{3, 7, 4, 1, 1}, {1, 15, 2, 1, 1}, {5, 9, 11, 0, 1}, {4, 6, 3, 1, 0}};
    for (int i = 0; i < 4; i++) {
        lk_linear L = {0};
        int ok = linear_case_body(&L, cases[i][0], cases[i][1], cases[i][2], cases[i][3],
                                  cases[i][4]);
        lk_linear_free(&L);
        if (!ok) return 0;
    }
    return 1;
}

static int linear_bad_body(lk_linear *L) {
    BAD(lk_linear_init(L, &(lk_linear_cfg){
            .n = 2, .in = 0, .out = 3, .bias = 1, .train = 1, .need_dx = 1}), LK_ERR_ARG);
    lk_linear_free(L);
    BAD(lk_linear_init(L, &(lk_linear_cfg){
            .n = -1, .in = 4, .out = 3, .bias = 1, .train = 1, .need_dx = 1}), LK_ERR_ARG);
    lk_linear_free(L);
    float *x = frand(8, -1, 1), *w = frand(12, -1, 1), *b = frand(3, -1, 1), *y = fbuf(6);
    BAD(lk_linear_forward(L, y, x, w, b), ANY_ERR); /* zeroed struct */
    OK(lk_linear_init(L, &(lk_linear_cfg){
            .n = 2, .in = 4, .out = 3, .bias = 1, .train = 0, .need_dx = 0}));
    BAD(lk_linear_forward(L, NULL, x, w, b), LK_ERR_ARG);
    BAD(lk_linear_forward(L, y, x, NULL, b), LK_ERR_ARG);
    BAD(lk_linear_forward(L, y, x, w, NULL), LK_ERR_ARG); /* bias layer without b */
    OK(lk_linear_forward(L, y, x, w, b));
    BAD(lk_linear_backward(L, x, w, b, y, x, w), ANY_ERR); /* forward-only plan */
    lk_linear_free(L);
    OK(lk_linear_init(L, &(lk_linear_cfg){
            .n = 2, .in = 4, .out = 3, .bias = 1, .train = 1, .need_dx = 0}));
    BAD(lk_linear_backward(L, x, w, b, y, x, w), ANY_ERR); /* dx without need_dx */
    BAD(lk_linear_backward(L, NULL, w, b, NULL, x, w), LK_ERR_ARG);
    lk_linear_free(L);
    return 1;
}

static int test_linear_bad(void) {
    NEED(lk_linear_init, "linear.c");
    NEED(lk_linear_forward, "linear.c");
    NEED(lk_linear_backward, "linear.c");
    NEED(lk_linear_free, "linear.c");
    lk_linear L;
    memset(&L, 0, sizeof L);
    lk_linear_free(&L);
    int ok = linear_bad_body(&L);
    lk_linear_free(&L);
    for (int i = 0; ok && i < 3; i++) {
        lk_status s = lk_linear_init(&L, &(lk_linear_cfg){
            .n = 4, .in = 16, .out = 2, .bias = 1, .train = 1, .need_dx = 1});
        lk_linear_free(&L);
        if (s != LK_OK) ok = failf(__LINE__, "init/free cycle %d: %s", i, lk_last_error());
    }
    return ok;
}

/* ------------------------------------------------------ chmul / add (elementwise.c) */
static int chmul_case_body(lk_chmul *L, int n, int c, int h, int w) {
    OK(lk_chmul_init(L, n, c, h, w));
    size_t hw = (size_t)h * w, nx = (size_t)n * hw * c, ns = (size_t)n * c;
    float *x = frand(nx, -2, 2), *s = frand(ns, 0, 1), *y = fbuf(nx), *dy = frand(nx, -1, 1);
    float *dx = fbuf(nx), *ds = fbuf(ns);
    double *ry = dbuf(nx), *rdx = dbuf(nx), *rds = dbuf(ns);
    for (int b = 0; b < n; b++)
        for (size_t p = 0; p < hw; p++)
            for (int ch = 0; ch < c; ch++) {
                size_t i = ((size_t)b * hw + p) * c + ch, j = (size_t)b * c + ch;
                ry[i] = (double)x[i] * s[j];
                rdx[i] = (double)dy[i] * s[j];
                rds[j] += (double)dy[i] * x[i];
            }
    OK(lk_chmul_forward(L, y, x, s));
    CLOSE("chmul y", y, ry, nx);
    for (size_t i = 0; i < ns; i++) ds[i] = 1e6f;
    OK(lk_chmul_backward(L, dx, ds, dy, x, s));
    CLOSE("chmul dx", dx, rdx, nx);
    CLOSE("chmul ds", ds, rds, ns);
    memset(dx, 0, nx * sizeof *dx);
    OK(lk_chmul_backward(L, dx, NULL, dy, x, s));
    CLOSE("chmul dx (dx only)", dx, rdx, nx);
    memset(ds, 0, ns * sizeof *ds);
    OK(lk_chmul_backward(L, NULL, ds, dy, x, s));
    CLOSE("chmul ds (ds only)", ds, rds, ns);
    return 1;
}

static int test_chmul(void) {
    NEED(lk_chmul_init, "elementwise.c");
    NEED(lk_chmul_forward, "elementwise.c");
    NEED(lk_chmul_backward, "elementwise.c");
    NEED(lk_chmul_free, "elementwise.c");
    const int shapes[][4] = {{2, 5, 3, 7}, {1, 24, 4, 4}, {3, 7, 1, 1}};
    for (int i = 0; i < 3; i++) {
        lk_chmul L = {0};
        int ok = chmul_case_body(&L, shapes[i][0], shapes[i][1], shapes[i][2], shapes[i][3]);
        lk_chmul_free(&L);
        if (!ok) return 0;
    }
    return 1;
}

/* ds of the channel multiply (summed over position chunks) must not depend on
 * the team either: batch 1 with one channel block is split into chunks. */
typedef struct {
    lk_chmul *L; /* [2]: one per outer thread */
    const float *dy, *x, *s;
    size_t nx;
} chmul_ctx;

static lk_status chmul_run(void *ctx, float *out) { /* out = [dx | ds] */
    const chmul_ctx *k = ctx;
    return lk_chmul_backward(&k->L[outer_thread()], out, out + k->nx, k->dy, k->x, k->s);
}

static int chmul_team_body(lk_chmul *L, int n, int c, int h, int w) { /* L [2] */
    OK(lk_chmul_init(&L[0], n, c, h, w));
    OK(lk_chmul_init(&L[1], n, c, h, w));
    const size_t hw = (size_t)h * w, nx = (size_t)n * hw * c, ns = (size_t)n * c;
    float *x = frand(nx, -2, 2), *s = frand(ns, 0, 1), *dy = frand(nx, -1, 1);
    float *out = fbuf(nx + ns);
    double *ref = dbuf(nx + ns);
    for (int b = 0; b < n; b++)
        for (size_t p = 0; p < hw; p++)
            for (int ch = 0; ch < c; ch++) {
                size_t i = ((size_t)b * hw + p) * c + ch, j = (size_t)b * c + ch;
                ref[i] = (double)dy[i] * s[j];
                ref[nx + j] += (double)dy[i] * x[i];
            }
    chmul_ctx k = {L, dy, x, s, nx};
    SAME_BITS("chmul dx|ds", chmul_run, &k, out, nx + ns);
    CLOSE("chmul dx (any team)", out, ref, nx);
    CLOSE("chmul ds (any team)", out + nx, ref + nx, ns);
    /* order-sensitive data, as for batchnorm: cancelling huge first/last positions */
    for (int b = 0; b < n; b++)
        for (int ch = 0; ch < c; ch++) {
            dy[(size_t)b * hw * c + ch] = 0x1p40f;
            dy[((size_t)b * hw + hw - 1) * c + ch] = -0x1p40f;
            x[((size_t)b * hw + hw - 1) * c + ch] = x[(size_t)b * hw * c + ch];
        }
    SAME_BITS("chmul dx|ds (order-sensitive data)", chmul_run, &k, out, nx + ns);
    return 1;
}

static int test_chmul_team(void) {
    NEED(lk_chmul_init, "elementwise.c");
    NEED(lk_chmul_backward, "elementwise.c");
    NEED(lk_chmul_free, "elementwise.c");
    const int shapes[][4] = {{1, 24, 64, 64}, {2, 70, 33, 17}};
    for (int i = 0; i < 2; i++) {
        lk_chmul L[2] = {{0}, {0}};
        int ok = chmul_team_body(L, shapes[i][0], shapes[i][1], shapes[i][2], shapes[i][3]);
        lk_chmul_free(&L[0]);
        lk_chmul_free(&L[1]);
        if (!ok) return 0;
    }
    return 1;
}

static int test_add(void) {
    NEED(lk_add_forward, "elementwise.c");
    NEED(lk_add_inplace, "elementwise.c");
    const int64_t n = 1001;
    float *a = frand(n, -1, 1), *b = frand(n, -1, 1), *y = fbuf(n);
    double *r = dbuf(n);
    for (int64_t i = 0; i < n; i++) r[i] = (double)a[i] + b[i];
    OK(lk_add_forward(y, a, b, n));
    CLOSE("add y", y, r, (size_t)n);
    float *a2 = fbuf(n);
    memcpy(a2, a, n * sizeof *a);
    OK(lk_add_forward(a2, a2, b, n)); /* y aliases a */
    CLOSE("add y (aliased)", a2, r, (size_t)n);
    memcpy(a2, a, n * sizeof *a);
    OK(lk_add_inplace(a2, b, n));
    CLOSE("add_inplace", a2, r, (size_t)n);
    OK(lk_add_forward(y, a, b, 0)); /* empty is fine */
    BAD(lk_add_forward(NULL, a, b, n), LK_ERR_ARG);
    BAD(lk_add_forward(y, a, NULL, n), LK_ERR_ARG);
    BAD(lk_add_forward(y, a, b, -1), LK_ERR_ARG);
    BAD(lk_add_inplace(NULL, a, n), LK_ERR_ARG);
    BAD(lk_add_inplace(y, a, -3), LK_ERR_ARG);
    return 1;
}

static int chmul_bad_body(lk_chmul *L) {
    BAD(lk_chmul_init(L, 0, 3, 2, 2), LK_ERR_ARG);
    lk_chmul_free(L);
    float *x = frand(24, -1, 1), *s = frand(6, -1, 1), *y = fbuf(24);
    BAD(lk_chmul_forward(L, y, x, s), ANY_ERR); /* zeroed struct */
    OK(lk_chmul_init(L, 2, 3, 2, 2));
    BAD(lk_chmul_forward(L, NULL, x, s), LK_ERR_ARG);
    BAD(lk_chmul_forward(L, y, x, NULL), LK_ERR_ARG);
    BAD(lk_chmul_backward(L, y, NULL, NULL, x, s), LK_ERR_ARG); /* dy NULL */
    lk_chmul_free(L);
    return 1;
}

static int test_chmul_bad(void) {
    NEED(lk_chmul_init, "elementwise.c");
    NEED(lk_chmul_forward, "elementwise.c");
    NEED(lk_chmul_backward, "elementwise.c");
    NEED(lk_chmul_free, "elementwise.c");
    lk_chmul L;
    memset(&L, 0, sizeof L);
    lk_chmul_free(&L);
    int ok = chmul_bad_body(&L);
    lk_chmul_free(&L);
    for (int i = 0; ok && i < 3; i++) {
        lk_status s = lk_chmul_init(&L, 2, 16, 3, 3);
        lk_chmul_free(&L);
        if (s != LK_OK) ok = failf(__LINE__, "init/free cycle %d: %s", i, lk_last_error());
    }
    return ok;
}

/* ------------------------------------------------------------------ dropout */
static int test_dropout(void) {
    NEED(lk_dropout_forward, "dropout.c");
    NEED(lk_dropout_backward, "dropout.c");
    const int64_t n = 20001;
    const float p = 0.3f;
    float *x = frand(n, -1, 1), *y = fbuf(n), *dy = frand(n, -1, 1), *dx = fbuf(n);
    uint8_t *mask = talloc(n), *mask2 = talloc(n), *mask3 = talloc(n);
    double *ry = dbuf(n), *rdx = dbuf(n);
    OK(lk_dropout_forward(y, mask, x, n, p, 1234));
    int64_t kept = 0;
    for (int64_t i = 0; i < n; i++) {
        EXPECT(mask[i] <= 1, "mask[%lld] = %d, expected 0 or 1", (long long)i, mask[i]);
        kept += mask[i];
        ry[i] = mask[i] ? x[i] / (1.0 - p) : 0.0;
        rdx[i] = mask[i] ? dy[i] / (1.0 - p) : 0.0;
    }
    /* Keep rate 1 - p within 5 standard deviations. */
    double rate = (double)kept / n, sd = sqrt(p * (1 - p) / n);
    EXPECT(fabs(rate - (1 - p)) < 5 * sd, "keep rate %.4f, expected %.2f", rate, 1 - p);
    CLOSE("dropout y", y, ry, (size_t)n);
    OK(lk_dropout_backward(dx, dy, mask, n, p));
    CLOSE("dropout dx", dx, rdx, (size_t)n);
    /* The mask depends only on (seed, i): same with one thread, different seed differs. */
    int threads = lk_get_num_threads();
    lk_set_num_threads(1);
    lk_status st = lk_dropout_forward(y, mask2, x, n, p, 1234);
    lk_set_num_threads(threads);
    OK(st);
    EXPECT(!memcmp(mask, mask2, (size_t)n), "mask changed with the thread count");
    OK(lk_dropout_forward(y, mask3, x, n, p, 1235));
    EXPECT(memcmp(mask, mask3, (size_t)n) != 0, "seeds 1234 and 1235 gave the same mask");
    /* A prefix of the tensor gets the same mask (counter-based). */
    OK(lk_dropout_forward(y, mask2, x, 777, p, 1234));
    EXPECT(!memcmp(mask, mask2, 777), "mask depends on the count, not only on (seed, i)");
    /* p = 0 is the identity. */
    OK(lk_dropout_forward(y, mask2, x, n, 0.0f, 9));
    EXPECT(!memcmp(x, y, (size_t)n * sizeof *x), "p=0 should copy x");
    BAD(lk_dropout_forward(y, mask, x, n, -0.1f, 1), LK_ERR_ARG);
    BAD(lk_dropout_forward(y, mask, x, n, 1.5f, 1), LK_ERR_ARG);
    BAD(lk_dropout_forward(y, mask, x, n, NAN, 1), LK_ERR_ARG);
    BAD(lk_dropout_forward(NULL, mask, x, n, p, 1), LK_ERR_ARG);
    BAD(lk_dropout_forward(y, NULL, x, n, p, 1), LK_ERR_ARG);
    BAD(lk_dropout_forward(y, mask, x, -1, p, 1), LK_ERR_ARG);
    BAD(lk_dropout_backward(dx, dy, NULL, n, p), LK_ERR_ARG);
    BAD(lk_dropout_backward(dx, dy, mask, n, -1.0f), LK_ERR_ARG);
    return 1;
}

static int test_stochdepth(void) {
    NEED(lk_stochdepth_forward, "dropout.c");
    NEED(lk_stochdepth_backward, "dropout.c");
    const int n = 64;
    const int64_t per = 3 * 5 * 7;
    const float p = 0.5f;
    size_t tot = (size_t)n * per;
    float *x = frand(tot, -1, 1), *y = fbuf(tot), *dy = frand(tot, -1, 1), *dx = fbuf(tot);
    uint8_t *keep = talloc(n), *keep2 = talloc(n);
    double *ry = dbuf(tot), *rdx = dbuf(tot);
    OK(lk_stochdepth_forward(y, keep, x, n, per, p, 42));
    int kept = 0;
    for (int b = 0; b < n; b++) {
        EXPECT(keep[b] <= 1, "keep[%d] = %d", b, keep[b]);
        kept += keep[b];
        for (int64_t i = 0; i < per; i++) {
            size_t k = (size_t)b * per + i;
            ry[k] = keep[b] ? x[k] / (1.0 - p) : 0.0;
            rdx[k] = keep[b] ? dy[k] / (1.0 - p) : 0.0;
        }
    }
    EXPECT(kept > 0 && kept < n, "stochastic depth kept %d of %d samples at p=0.5", kept, n);
    CLOSE("stochdepth y", y, ry, tot);
    OK(lk_stochdepth_backward(dx, dy, keep, n, per, p));
    CLOSE("stochdepth dx", dx, rdx, tot);
    OK(lk_stochdepth_forward(y, keep2, x, n, per, p, 42));
    EXPECT(!memcmp(keep, keep2, (size_t)n), "same seed gave different keep flags");
    OK(lk_stochdepth_forward(y, keep2, x, n, per, 0.0f, 42));
    EXPECT(!memcmp(x, y, tot * sizeof *x), "p=0 should copy x");
    BAD(lk_stochdepth_forward(y, keep, x, n, per, 1.2f, 42), LK_ERR_ARG);
    BAD(lk_stochdepth_forward(y, keep, x, -1, per, p, 42), LK_ERR_ARG);
    BAD(lk_stochdepth_forward(y, NULL, x, n, per, p, 42), LK_ERR_ARG);
    BAD(lk_stochdepth_backward(NULL, dy, keep, n, per, p), LK_ERR_ARG);
    return 1;
}

/* ------------------------------------------------------------------- xent */
/* torch.nn.functional.cross_entropy(mean, weight, label_smoothing) in double:
 * [(1-e) sum_i w[y_i] (-logp[i,y_i]) + (e/K) sum_i sum_k w[k] (-logp[i,k])] / sum_i w[y_i]
 * (the denominator is N without weights). */
static double ref_xent(const double *z, const int32_t *lab, const float *cw, int n, int k,
                       double eps, double *prob) {
    double num = 0, den = 0;
    for (int i = 0; i < n; i++) {
        const double *zi = z + (size_t)i * k;
        double mx = zi[0], s = 0;
        for (int j = 1; j < k; j++) mx = fmax(mx, zi[j]);
        for (int j = 0; j < k; j++) s += exp(zi[j] - mx);
        double lse = mx + log(s), wy = cw ? cw[lab[i]] : 1.0, smooth = 0;
        for (int j = 0; j < k; j++) {
            double lp = zi[j] - lse;
            if (prob) prob[(size_t)i * k + j] = exp(lp);
            smooth += (cw ? cw[j] : 1.0) * -lp;
        }
        num += (1 - eps) * wy * -(zi[lab[i]] - lse) + eps / k * smooth;
        den += wy;
    }
    return num / den;
}

static int xent_case(int n, int k, int weighted, float eps) {
    float *z = frand((size_t)n * k, -3, 3), *cw = weighted ? frand(k, 0.2, 2) : NULL;
    int32_t *lab = talloc((size_t)n * sizeof *lab);
    for (int i = 0; i < n; i++) lab[i] = (int32_t)(urand() * k);
    float loss = -1, *prob = fbuf((size_t)n * k), *dz = fbuf((size_t)n * k);
    double *zd = to_d(z, (size_t)n * k), *rprob = dbuf((size_t)n * k), *rdz = dbuf((size_t)n * k);
    double rloss = ref_xent(zd, lab, cw, n, k, eps, rprob);
    /* Gradient reference by central differences of the double-precision loss
     * (no hand-derived formula to get wrong); dloss = 0.7 scales it. */
    const double dloss = 0.7, h = 1e-6;
    for (size_t i = 0; i < (size_t)n * k; i++) {
        double z0 = zd[i];
        zd[i] = z0 + h;
        double lp = ref_xent(zd, lab, cw, n, k, eps, NULL);
        zd[i] = z0 - h;
        double lm = ref_xent(zd, lab, cw, n, k, eps, NULL);
        zd[i] = z0;
        rdz[i] = dloss * (lp - lm) / (2 * h);
    }
    OK(lk_xent_forward(&loss, prob, z, lab, cw, n, k, eps));
    CLOSE("xent loss", &loss, &rloss, 1);
    CLOSE("xent prob", prob, rprob, (size_t)n * k);
    OK(lk_xent_backward(dz, prob, lab, cw, n, k, eps, (float)dloss));
    /* FD truncation/rounding error in double is ~1e-9: RTOL still applies. */
    CLOSE("xent dlogits", dz, rdz, (size_t)n * k);
    return 1;
}

static int test_xent(void) {
    NEED(lk_xent_forward, "loss.c");
    NEED(lk_xent_backward, "loss.c");
    if (!xent_case(5, 2, 0, 0.0f) || !xent_case(7, 5, 1, 0.0f) || !xent_case(6, 3, 0, 0.1f) ||
        !xent_case(9, 4, 1, 0.2f) || !xent_case(1, 2, 1, 0.1f))
        return 0;
    float z[6] = {0.1f, 0.2f, 0.3f, -1, 2, 0.5f}, prob[6], loss, dz[6], cw[3] = {1, 1, 1};
    int32_t lab[2] = {0, 3}, good[2] = {0, 2}, neg[2] = {-1, 0};
    BAD(lk_xent_forward(&loss, prob, z, lab, NULL, 2, 3, 0), LK_ERR_ARG); /* label >= K */
    BAD(lk_xent_forward(&loss, prob, z, neg, NULL, 2, 3, 0), LK_ERR_ARG); /* label < 0 */
    BAD(lk_xent_backward(dz, prob, lab, NULL, 2, 3, 0, 1), LK_ERR_ARG);
    BAD(lk_xent_forward(&loss, prob, z, good, NULL, 0, 3, 0), LK_ERR_ARG);
    BAD(lk_xent_forward(&loss, prob, z, good, NULL, 2, 0, 0), LK_ERR_ARG);
    BAD(lk_xent_forward(&loss, prob, z, good, cw, 2, 3, -0.1f), LK_ERR_ARG);
    BAD(lk_xent_forward(&loss, prob, z, good, cw, 2, 3, 1.5f), LK_ERR_ARG);
    BAD(lk_xent_forward(NULL, prob, z, good, NULL, 2, 3, 0), LK_ERR_ARG);
    BAD(lk_xent_forward(&loss, prob, NULL, good, NULL, 2, 3, 0), LK_ERR_ARG);
    BAD(lk_xent_forward(&loss, prob, z, NULL, NULL, 2, 3, 0), LK_ERR_ARG);
    z[4] = NAN; /* non-finite logits must not produce a silent NaN loss */
    lk_clear_error();
    lk_status s = lk_xent_forward(&loss, prob, z, good, NULL, 2, 3, 0);
    EXPECT(s != LK_OK || isnan(loss), "NaN logit gave status OK and finite loss %g", (double)loss);
    return 1;
}

/* ---------------------------------------------------------------- chanstat */
static int chanstat_case(int64_t npos, int c) {
    float *x = frand((size_t)npos * c, -2, 2), *y = fbuf((size_t)npos * 2);
    float *dy = frand((size_t)npos * 2, -1, 1), *dx = fbuf((size_t)npos * c);
    int32_t *am = talloc((size_t)npos * sizeof *am);
    double *ry = dbuf((size_t)npos * 2), *rdx = dbuf((size_t)npos * c);
    for (int64_t p = 0; p < npos; p++) {
        const float *xp = x + p * c;
        double s = 0;
        int a = 0;
        for (int ch = 0; ch < c; ch++) {
            s += xp[ch];
            if (xp[ch] > xp[a]) a = ch;
        }
        ry[p * 2] = s / c;
        ry[p * 2 + 1] = xp[a];
        for (int ch = 0; ch < c; ch++)
            rdx[p * c + ch] = dy[p * 2] / c + (ch == a ? dy[p * 2 + 1] : 0.0);
    }
    OK(lk_chanstat_forward(y, am, x, npos, c));
    CLOSE("chanstat y", y, ry, (size_t)npos * 2);
    for (int64_t p = 0; p < npos; p++) {
        EXPECT(am[p] >= 0 && am[p] < c && x[p * c + am[p]] == (float)ry[p * 2 + 1],
               "argmax[%lld] = %d", (long long)p, am[p]);
    }
    for (size_t i = 0; i < (size_t)npos * c; i++) dx[i] = 1e6f;
    OK(lk_chanstat_backward(dx, dy, am, npos, c));
    CLOSE("chanstat dx", dx, rdx, (size_t)npos * c);
    return 1;
}

static int test_chanstat(void) {
    NEED(lk_chanstat_forward, "chanstat.c");
    NEED(lk_chanstat_backward, "chanstat.c");
    if (!chanstat_case(2 * 3 * 7, 5) || !chanstat_case(1, 1) || !chanstat_case(4 * 4, 96))
        return 0;
    float x[8] = {0}, y[4];
    int32_t am[2];
    BAD(lk_chanstat_forward(y, am, x, 2, 0), LK_ERR_ARG);
    BAD(lk_chanstat_forward(y, am, x, -1, 4), LK_ERR_ARG);
    BAD(lk_chanstat_forward(NULL, am, x, 2, 4), LK_ERR_ARG);
    BAD(lk_chanstat_forward(y, NULL, x, 2, 4), LK_ERR_ARG);
    BAD(lk_chanstat_backward(x, y, NULL, 2, 4), LK_ERR_ARG);
    return 1;
}

/* ------------------------------------------------------------- spatial_mul */
typedef struct {
    const float *dy, *x, *map;
    int64_t npos;
    int c;
} smul_ctx;

static lk_status smul_run(void *ctx, float *out) { /* out = [y | dx | dmap] */
    const smul_ctx *k = ctx;
    const size_t nx = (size_t)k->npos * k->c;
    lk_status st = lk_spatial_mul_forward(out, k->x, k->map, k->npos, k->c);
    if (st != LK_OK) return st;
    return lk_spatial_mul_backward(out + nx, out + 2 * nx, k->dy, k->x, k->map, k->npos, k->c);
}

static int spatial_mul_case(int64_t npos, int c) {
    const size_t nx = (size_t)npos * c, np = (size_t)npos;
    float *x = frand(nx, -2, 2), *map = frand(np, 0, 1), *dy = frand(nx, -1, 1);
    float *out = fbuf(2 * nx + np), *y = out, *dx = out + nx, *dmap = out + 2 * nx;
    float *buf = fbuf(nx), *dm2 = fbuf(np);
    double *ry = dbuf(nx), *rdx = dbuf(nx), *rdm = dbuf(np);
    for (size_t p = 0; p < np; p++)
        for (int k = 0; k < c; k++) {
            size_t i = p * c + k;
            ry[i] = (double)x[i] * map[p];
            rdx[i] = (double)dy[i] * map[p];
            rdm[p] += (double)dy[i] * x[i];
        }
    smul_ctx k = {dy, x, map, npos, c};
    SAME_BITS("spatial_mul y|dx|dmap", smul_run, &k, out, 2 * nx + np);
    CLOSE("spatial_mul y", y, ry, nx);
    CLOSE("spatial_mul dx", dx, rdx, nx);
    CLOSE("spatial_mul dmap", dmap, rdm, np);
    /* in place: y == x forward, dx == dy backward (with and without dmap) */
    memcpy(buf, x, nx * sizeof *x);
    OK(lk_spatial_mul_forward(buf, buf, map, npos, c));
    EXPECT(!memcmp(buf, y, nx * sizeof *y), "spatial_mul forward in place differs");
    memcpy(buf, dy, nx * sizeof *dy);
    OK(lk_spatial_mul_backward(buf, dm2, buf, x, map, npos, c));
    EXPECT(!memcmp(buf, dx, nx * sizeof *dx) && !memcmp(dm2, dmap, np * sizeof *dmap),
           "spatial_mul backward with dx == dy differs");
    memcpy(buf, dy, nx * sizeof *dy);
    OK(lk_spatial_mul_backward(buf, NULL, buf, NULL, map, npos, c)); /* dx only: x unused */
    EXPECT(!memcmp(buf, dx, nx * sizeof *dx), "spatial_mul dx alone differs");
    memset(dm2, 0, np * sizeof *dm2);
    OK(lk_spatial_mul_backward(NULL, dm2, dy, x, NULL, npos, c)); /* dmap only: map unused */
    EXPECT(!memcmp(dm2, dmap, np * sizeof *dmap), "spatial_mul dmap alone differs");
    return 1;
}

static int test_spatial_mul(void) {
    NEED(lk_spatial_mul_forward, "spatial_mul.c");
    NEED(lk_spatial_mul_backward, "spatial_mul.c");
    /* odd sizes; one position and channel; one channel; above the parallel threshold */
    const int64_t cases[][2] = {{2 * 3 * 7, 5}, {1, 1}, {3 * 4 * 6, 1}, {4 * 4, 96},
                                {2 * 12 * 11, 161}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        if (!spatial_mul_case(cases[i][0], (int)cases[i][1])) return 0;
    float v[8] = {0}, m[2] = {1, 1};
    OK(lk_spatial_mul_forward(NULL, NULL, NULL, 0, 4));        /* nothing to do */
    OK(lk_spatial_mul_backward(NULL, NULL, NULL, NULL, NULL, 2, 4)); /* no output asked */
    BAD(lk_spatial_mul_forward(v, v, m, 2, 0), LK_ERR_ARG);
    EXPECT(strstr(lk_last_error(), "spatial_mul") && strstr(lk_last_error(), "c=0"),
           "message should name the function and c: %s", lk_last_error());
    BAD(lk_spatial_mul_forward(v, v, m, -1, 4), LK_ERR_ARG);
    BAD(lk_spatial_mul_forward(v, v, m, INT64_MAX / 2, 4), LK_ERR_ARG); /* npos * c overflows */
    BAD(lk_spatial_mul_forward(NULL, v, m, 2, 4), LK_ERR_ARG);
    BAD(lk_spatial_mul_forward(v, NULL, m, 2, 4), LK_ERR_ARG);
    BAD(lk_spatial_mul_forward(v, v, NULL, 2, 4), LK_ERR_ARG);
    BAD(lk_spatial_mul_backward(v, m, NULL, v, m, 2, 4), LK_ERR_ARG);  /* dy */
    BAD(lk_spatial_mul_backward(v, NULL, v, v, NULL, 2, 4), LK_ERR_ARG); /* map for dx */
    BAD(lk_spatial_mul_backward(NULL, m, v, NULL, m, 2, 4), LK_ERR_ARG); /* x for dmap */
    BAD(lk_spatial_mul_backward(v, m, v, v, m, 2, -3), LK_ERR_ARG);
    return 1;
}

/* ------------------------------------------------------------ weighted_sum */
typedef struct {
    const float *x, *a, *dp, *dx0;
    int n, c;
    int64_t s;
} wsum_ctx;

static lk_status wsum_run(void *ctx, float *out) { /* out = [p | dx | dx0 + dx | da] */
    const wsum_ctx *k = ctx;
    const size_t np = (size_t)k->n * k->c, nx = (size_t)k->n * k->s * k->c;
    float *p = out, *dx = out + np, *dxa = dx + nx, *da = dxa + nx;
    lk_status st = lk_weighted_sum_forward(p, k->x, k->a, k->n, k->s, k->c);
    if (st == LK_OK) st = lk_weighted_sum_backward(dx, da, k->dp, k->x, k->a, k->n, k->s, k->c, 0);
    memcpy(dxa, k->dx0, nx * sizeof *dxa);
    if (st == LK_OK)
        st = lk_weighted_sum_backward(dxa, NULL, k->dp, NULL, k->a, k->n, k->s, k->c, 1);
    return st;
}

static int weighted_sum_case(int n, int64_t s, int c) {
    const size_t np = (size_t)n * c, nx = (size_t)n * s * c, na = (size_t)n * s;
    float *x = frand(nx, -2, 2), *a = frand(na, 0, 1), *dp = frand(np, -1, 1);
    float *dx0 = frand(nx, -1, 1), *out = fbuf(np + 2 * nx + na), *da2 = fbuf(na);
    float *p = out, *dx = p + np, *dxa = dx + nx, *da = dxa + nx;
    double *rp = dbuf(np), *rdx = dbuf(nx), *rdxa = dbuf(nx), *rda = dbuf(na);
    for (int i = 0; i < n; i++)
        for (int64_t j = 0; j < s; j++)
            for (int k = 0; k < c; k++) {
                size_t xi = ((size_t)i * s + j) * c + k, ai = (size_t)i * s + j;
                size_t pi = (size_t)i * c + k;
                rp[pi] += (double)a[ai] * x[xi];
                rdx[xi] = (double)a[ai] * dp[pi];
                rdxa[xi] = (double)dx0[xi] + (double)a[ai] * dp[pi];
                rda[ai] += (double)dp[pi] * x[xi];
            }
    wsum_ctx k = {x, a, dp, dx0, n, c, s};
    SAME_BITS("weighted_sum p|dx|dx+=|da", wsum_run, &k, out, np + 2 * nx + na);
    CLOSE("weighted_sum p", p, rp, np);
    CLOSE("weighted_sum dx", dx, rdx, nx);
    CLOSE("weighted_sum dx (accumulated)", dxa, rdxa, nx);
    CLOSE("weighted_sum da", da, rda, na);
    if (s > 1) { /* order-sensitive data: cancelling huge first/last terms */
        for (int i = 0; i < n; i++) {
            a[(size_t)i * s] = a[(size_t)i * s + s - 1] = 1.0f;
            for (int k2 = 0; k2 < c; k2++) {
                x[(size_t)i * s * c + k2] = 0x1p40f;
                x[((size_t)i * s + s - 1) * c + k2] = -0x1p40f;
            }
            if (c > 1) {
                dp[(size_t)i * c] = 0x1p40f;
                dp[(size_t)i * c + c - 1] = -0x1p40f;
            }
        }
        SAME_BITS("weighted_sum (order-sensitive data)", wsum_run, &k, out, np + 2 * nx + na);
    }
    memset(da2, 0, na * sizeof *da2);
    OK(lk_weighted_sum_backward(NULL, da2, dp, x, NULL, n, s, c, 0)); /* da only: a unused */
    EXPECT(!memcmp(da2, da, na * sizeof *da), "weighted_sum da alone differs");
    return 1;
}

static int test_weighted_sum(void) {
    NEED(lk_weighted_sum_forward, "weighted_sum.c");
    NEED(lk_weighted_sum_backward, "weighted_sum.c");
    /* (n, s, c): one of each; one channel; odd sizes with a partial channel block;
     * B3 head (10 x 10 positions, 1536 channels) and V2-S-like 12 x 12 x 1280 */
    const int64_t cases[][3] = {{1, 1, 1}, {3, 24, 1}, {2, 7 * 3, 5}, {3, 5 * 13, 130},
                                {4, 100, 1536}, {2, 144, 1280}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        if (!weighted_sum_case((int)cases[i][0], cases[i][1], (int)cases[i][2])) return 0;
    float v[24] = {0}, w[6] = {0};
    OK(lk_weighted_sum_backward(NULL, NULL, NULL, NULL, NULL, 2, 3, 4, 0)); /* no output asked */
    BAD(lk_weighted_sum_forward(v, v, w, 0, 3, 4), LK_ERR_ARG);
    EXPECT(strstr(lk_last_error(), "weighted_sum forward") && strstr(lk_last_error(), "n=0"),
           "message should name the function and n: %s", lk_last_error());
    BAD(lk_weighted_sum_forward(v, v, w, 2, 0, 4), LK_ERR_ARG);
    BAD(lk_weighted_sum_forward(v, v, w, 2, -3, 4), LK_ERR_ARG);
    BAD(lk_weighted_sum_forward(v, v, w, 2, 3, 0), LK_ERR_ARG);
    BAD(lk_weighted_sum_forward(v, v, w, 1 << 20, INT64_MAX / 1024, 1 << 20), LK_ERR_ARG);
    EXPECT(strstr(lk_last_error(), "overflows"), "expected an overflow message: %s",
           lk_last_error());
    BAD(lk_weighted_sum_forward(NULL, v, w, 2, 3, 4), LK_ERR_ARG);
    BAD(lk_weighted_sum_forward(v, NULL, w, 2, 3, 4), LK_ERR_ARG);
    BAD(lk_weighted_sum_forward(v, v, NULL, 2, 3, 4), LK_ERR_ARG);
    BAD(lk_weighted_sum_backward(v, w, NULL, v, w, 2, 3, 4, 0), LK_ERR_ARG);   /* dp */
    BAD(lk_weighted_sum_backward(v, NULL, v, v, NULL, 2, 3, 4, 0), LK_ERR_ARG); /* a for dx */
    BAD(lk_weighted_sum_backward(NULL, w, v, NULL, w, 2, 3, 4, 0), LK_ERR_ARG); /* x for da */
    BAD(lk_weighted_sum_backward(v, w, v, v, w, 2, 3, -1, 0), LK_ERR_ARG);
    EXPECT(strstr(lk_last_error(), "weighted_sum backward"), "message should name the function: %s",
           lk_last_error());
    return 1;
}

/* ----------------------------------------------------------------- softmax */
static int softmax_case_body(lk_softmax *L, int rows, int cols) {
    OK(lk_softmax_init(L, rows, cols, 1));
    size_t n = (size_t)rows * cols;
    float *x = frand(n, -4, 4), *y = fbuf(n), *dy = frand(n, -1, 1), *dx = fbuf(n);
    double *ry = dbuf(n), *rdx = dbuf(n);
    for (int r = 0; r < rows; r++) {
        double mx = -INFINITY, s = 0, dot = 0;
        for (int j = 0; j < cols; j++) mx = fmax(mx, x[(size_t)r * cols + j]);
        for (int j = 0; j < cols; j++) s += exp(x[(size_t)r * cols + j] - mx);
        for (int j = 0; j < cols; j++) {
            ry[(size_t)r * cols + j] = exp(x[(size_t)r * cols + j] - mx) / s;
            dot += ry[(size_t)r * cols + j] * dy[(size_t)r * cols + j];
        }
        for (int j = 0; j < cols; j++)
            rdx[(size_t)r * cols + j] = ry[(size_t)r * cols + j] * (dy[(size_t)r * cols + j] - dot);
    }
    OK(lk_softmax_forward(L, y, x));
    CLOSE("softmax y", y, ry, n);
    OK(lk_softmax_backward(L, dx, dy, y));
    CLOSE("softmax dx", dx, rdx, n);
    return 1;
}

static int test_softmax(void) {
    NEED(lk_softmax_init, "softmax.c");
    NEED(lk_softmax_forward, "softmax.c");
    NEED(lk_softmax_backward, "softmax.c");
    NEED(lk_softmax_free, "softmax.c");
    const int cases[][2] = {{3, 17}, {1, 100}, {2, 1}, {5, 7 * 9}};
    for (int i = 0; i < 4; i++) {
        lk_softmax L = {0};
        int ok = softmax_case_body(&L, cases[i][0], cases[i][1]);
        lk_softmax_free(&L);
        if (!ok) return 0;
    }
    return 1;
}

static int softmax_bad_body(lk_softmax *L) {
    BAD(lk_softmax_init(L, 0, 5, 1), LK_ERR_ARG);
    lk_softmax_free(L);
    BAD(lk_softmax_init(L, 3, -2, 1), LK_ERR_ARG);
    lk_softmax_free(L);
    float *x = frand(15, -1, 1), *y = fbuf(15);
    BAD(lk_softmax_forward(L, y, x), ANY_ERR); /* zeroed struct */
    OK(lk_softmax_init(L, 3, 5, 0));
    BAD(lk_softmax_forward(L, NULL, x), LK_ERR_ARG);
    BAD(lk_softmax_forward(L, y, NULL), LK_ERR_ARG);
    OK(lk_softmax_forward(L, y, x));
    BAD(lk_softmax_backward(L, x, y, y), ANY_ERR); /* forward-only plan */
    lk_softmax_free(L);
    OK(lk_softmax_init(L, 3, 5, 1));
    BAD(lk_softmax_backward(L, x, NULL, y), LK_ERR_ARG);
    lk_softmax_free(L);
    return 1;
}

static int test_softmax_bad(void) {
    NEED(lk_softmax_init, "softmax.c");
    NEED(lk_softmax_forward, "softmax.c");
    NEED(lk_softmax_backward, "softmax.c");
    NEED(lk_softmax_free, "softmax.c");
    lk_softmax L;
    memset(&L, 0, sizeof L);
    lk_softmax_free(&L);
    int ok = softmax_bad_body(&L);
    lk_softmax_free(&L);
    for (int i = 0; ok && i < 3; i++) {
        lk_status s = lk_softmax_init(&L, 4, 100, 1);
        lk_softmax_free(&L);
        if (s != LK_OK) ok = failf(__LINE__, "init/free cycle %d: %s", i, lk_last_error());
    }
    return ok;
}

/* ------------------------------------------------------------------- optim */
/* Arena used by the optimizer tests: three segments with gaps between them (the
 * gaps hold sentinels, NaN in the gradient arena, which must never be read or
 * written), segment 1 excluded from weight decay, segments 1 and 2 in group 1. */
#define OPT_N 1000
#define OPT_NSTATE 817
static const lk_optim_segment opt_segs[3] = {
    {.param_offset = 10, .count = 300, .state_offset = 0, .group = 0},
    {.param_offset = 320, .count = 17, .state_offset = 300, .group = 1, .no_decay = 1},
    {.param_offset = 400, .count = 500, .state_offset = 317, .group = 1},
};

static int opt_in_segment(int64_t j) {
    for (int s = 0; s < 3; s++)
        if (j >= opt_segs[s].param_offset && j < opt_segs[s].param_offset + opt_segs[s].count)
            return 1;
    return 0;
}

/* torch.optim's update in double (no float rounding), on the same segments; grads are
 * scaled by the clip coefficient of clip_grad_norm_ when max_norm >= 0. */
static void ref_optim_step(lk_optim_kind kind, double *p, double *s1, double *s2,
                           const float *grads, const lk_optim_group *groups, double max_norm) {
    double coef = 1.0;
    if (max_norm >= 0) {
        double sum = 0;
        for (int s = 0; s < 3; s++)
            for (int64_t i = 0; i < opt_segs[s].count; i++) {
                double g = grads[opt_segs[s].param_offset + i];
                sum += g * g;
            }
        coef = fmin(max_norm / (sqrt(sum) + 1e-6), 1.0);
    }
    for (int s = 0; s < 3; s++) {
        const lk_optim_segment *sg = &opt_segs[s];
        const lk_optim_group *G = &groups[sg->group];
        const double wd = sg->no_decay ? 0.0 : G->weight_decay;
        for (int64_t i = 0; i < sg->count; i++) {
            double *x = &p[sg->param_offset + i], *a = &s1[sg->state_offset + i];
            double *b = &s2[sg->state_offset + i];
            double g = grads[sg->param_offset + i] * coef;
            if (kind == LK_OPTIM_SGD) {
                g += wd * *x;
                if (G->momentum != 0) {
                    *a = G->step == 0 ? g : *a * G->momentum + (1 - G->dampening) * g;
                    g = G->nesterov ? g + G->momentum * *a : *a;
                }
                *x -= G->lr * g;
            } else {
                double t = (double)(G->step + 1);
                if (kind == LK_OPTIM_ADAMW) *x *= 1 - G->lr * wd;
                else g += wd * *x;
                *a = G->beta1 * *a + (1 - G->beta1) * g;
                *b = G->beta2 * *b + (1 - G->beta2) * g * g;
                double mhat = *a / (1 - pow(G->beta1, t)), vhat = *b / (1 - pow(G->beta2, t));
                *x -= G->lr * mhat / (sqrt(vhat) + G->eps);
            }
        }
    }
}

/* Five steps of one configuration (new gradients each step, group 0's lr changed
 * between steps as a scheduler would) against the double reference. */
static int optim_case(const char *what, lk_optim_kind kind, lk_optim_group g0, lk_optim_group g1,
                      double max_norm) {
    lk_optim_group groups[2] = {g0, g1}, rgroups[2] = {g0, g1};
    float *p = frand(OPT_N, -1, 1), *grads = fbuf(OPT_N);
    float *s1 = fbuf(OPT_NSTATE), *s2 = fbuf(OPT_NSTATE), *g_before = fbuf(OPT_N);
    double *rp = to_d(p, OPT_N), *rs1 = dbuf(OPT_NSTATE), *rs2 = dbuf(OPT_NSTATE);
    for (int64_t j = 0; j < OPT_N; j++)
        if (!opt_in_segment(j)) p[j] = rp[j] = 12345.0f;
    lk_optim opt = {.kind = kind, .num_params = OPT_N, .num_state = OPT_NSTATE,
                    .segments = opt_segs, .num_segments = 3, .groups = groups, .num_groups = 2,
                    .max_grad_norm = max_norm};
    for (int step = 0; step < 5; step++) {
        for (int64_t j = 0; j < OPT_N; j++)
            grads[j] = opt_in_segment(j) ? (float)(4.0 * urand() - 2.0) : NAN;
        memcpy(g_before, grads, OPT_N * sizeof *grads);
        ref_optim_step(kind, rp, rs1, rs2, g_before, rgroups, max_norm);
        lk_optim_report rep;
        OK(lk_optim_step(&opt, p, grads, s1, s2, &rep));
        double sum = 0;
        for (int64_t j = 0; j < OPT_N; j++)
            if (opt_in_segment(j)) sum += (double)g_before[j] * g_before[j];
        EXPECT(fabs(rep.grad_norm - sqrt(sum)) <= 1e-12 * sqrt(sum), "%s: norm %.17g vs %.17g",
               what, rep.grad_norm, sqrt(sum));
        EXPECT(rep.bad_segment == -1 && rep.bad_element == -1, "%s: bad_segment %d", what,
               rep.bad_segment);
        double coef = max_norm >= 0 ? fmin(max_norm / (sqrt(sum) + 1e-6), 1.0) : 1.0;
        for (int64_t j = 0; j < OPT_N; j++) {
            if (!opt_in_segment(j)) {
                EXPECT(isnan(grads[j]) && p[j] == 12345.0f, "%s: gap element %lld touched", what,
                       (long long)j);
                continue;
            }
            double want = g_before[j] * coef;
            EXPECT(fabs(grads[j] - want) <= 1e-6 * fabs(want) + 1e-30,
                   "%s step %d: clipped grad[%lld] %.9g, expected %.9g", what, step, (long long)j,
                   (double)grads[j], want);
        }
        for (int s = 0; s < 3; s++) {
            const lk_optim_segment *sg = &opt_segs[s];
            if (!close_to(what, p + sg->param_offset, rp + sg->param_offset, (size_t)sg->count,
                          1e-5, __LINE__))
                return 0;
            int has_s1 = kind != LK_OPTIM_SGD || groups[sg->group].momentum != 0;
            if (has_s1 && !close_to("state1", s1 + sg->state_offset, rs1 + sg->state_offset,
                                    (size_t)sg->count, 1e-5, __LINE__))
                return 0;
            if (kind != LK_OPTIM_SGD &&
                !close_to("state2", s2 + sg->state_offset, rs2 + sg->state_offset,
                          (size_t)sg->count, 1e-5, __LINE__))
                return 0;
        }
        for (int i = 0; i < 2; i++) {
            if (kind != LK_OPTIM_SGD || rgroups[i].momentum != 0) rgroups[i].step++;
            EXPECT(groups[i].step == rgroups[i].step, "%s: group %d step %lld, expected %lld",
                   what, i, (long long)groups[i].step, (long long)rgroups[i].step);
        }
        groups[0].lr *= 0.7; /* a schedule between steps */
        rgroups[0].lr = groups[0].lr;
    }
    return 1;
}

static int test_optim_sgd(void) {
    NEED(lk_optim_step, "optim.c");
    NEED(lk_optim_group_defaults, "optim.c");
    lk_optim_group d;
    lk_optim_group_defaults(&d, LK_OPTIM_SGD);
    EXPECT(d.lr == 1e-3 && d.momentum == 0 && d.dampening == 0 && d.weight_decay == 0 &&
               !d.nesterov && d.step == 0,
           "SGD defaults");
    lk_optim_group a = d, b = d;
    a.lr = 0.1, a.weight_decay = 0.01;
    b.lr = 0.05;
    if (!optim_case("sgd plain", LK_OPTIM_SGD, a, b, -1)) return 0;
    a.momentum = 0.9, a.dampening = 0.1;
    b.momentum = 0.5, b.weight_decay = 0.02;
    if (!optim_case("sgd momentum+dampening", LK_OPTIM_SGD, a, b, -1)) return 0;
    if (!optim_case("sgd momentum, clipped", LK_OPTIM_SGD, a, b, 3.0)) return 0;
    a.dampening = 0, a.nesterov = 1;
    b.momentum = 0.8, b.nesterov = 1;
    if (!optim_case("sgd nesterov", LK_OPTIM_SGD, a, b, -1)) return 0;
    a.nesterov = 0, a.momentum = 0; /* group 0 without momentum, group 1 Nesterov */
    return optim_case("sgd mixed momentum", LK_OPTIM_SGD, a, b, -1);
}

static int test_optim_adam(void) {
    NEED(lk_optim_step, "optim.c");
    NEED(lk_optim_group_defaults, "optim.c");
    for (int k = 0; k < 2; k++) {
        lk_optim_kind kind = k ? LK_OPTIM_ADAMW : LK_OPTIM_ADAM;
        lk_optim_group d;
        lk_optim_group_defaults(&d, kind);
        EXPECT(d.lr == 1e-3 && d.beta1 == 0.9 && d.beta2 == 0.999 && d.eps == 1e-8 &&
                   d.weight_decay == (k ? 1e-2 : 0.0) && d.step == 0,
               "%s defaults", k ? "AdamW" : "Adam");
        lk_optim_group a = d, b = d;
        a.lr = 1e-2, a.weight_decay = 0.1;
        b.beta1 = 0.8, b.beta2 = 0.99, b.eps = 1e-6, b.weight_decay = 0.05;
        if (!optim_case(k ? "adamw" : "adam", kind, a, b, -1)) return 0;
        if (!optim_case(k ? "adamw clipped" : "adam clipped", kind, a, b, 1.0)) return 0;
        b.beta1 = 0.0, b.eps = 0.0; /* edge values torch accepts */
        if (!optim_case(k ? "adamw beta1=0" : "adam beta1=0", kind, a, b, 1e9)) return 0;
    }
    return 1;
}

/* A non-finite gradient: LK_ERR_NUMERIC naming the first one, nothing written. */
static int test_optim_nonfinite(void) {
    NEED(lk_optim_step, "optim.c");
    NEED(lk_optim_clip_grad_norm, "optim.c");
    NEED(lk_optim_grad_norm, "optim.c");
    lk_optim_group groups[2];
    lk_optim_group_defaults(&groups[0], LK_OPTIM_ADAMW);
    groups[1] = groups[0];
    groups[1].step = 3;
    lk_optim opt = {.kind = LK_OPTIM_ADAMW, .num_params = OPT_N, .num_state = OPT_NSTATE,
                    .segments = opt_segs, .num_segments = 3, .groups = groups, .num_groups = 2,
                    .max_grad_norm = 0.5};
    float *p = frand(OPT_N, -1, 1), *g = frand(OPT_N, -1, 1);
    float *s1 = frand(OPT_NSTATE, -1, 1), *s2 = frand(OPT_NSTATE, 0, 1);
    float *p0 = fbuf(OPT_N), *g0 = fbuf(OPT_N), *s10 = fbuf(OPT_NSTATE), *s20 = fbuf(OPT_NSTATE);
    const float bad[3] = {NAN, INFINITY, -INFINITY};
    for (int k = 0; k < 3; k++) {
        g[400 + 7] = bad[k]; /* segment 2, element 7 */
        g[400 + 90] = bad[(k + 1) % 3];
        if (k == 2) g[320 + 16] = NAN; /* an earlier segment: reported first */
        memcpy(p0, p, OPT_N * sizeof *p);
        memcpy(g0, g, OPT_N * sizeof *g);
        memcpy(s10, s1, OPT_NSTATE * sizeof *s1);
        memcpy(s20, s2, OPT_NSTATE * sizeof *s2);
        lk_optim_report rep;
        for (int clip_on = 0; clip_on < 2; clip_on++) {
            opt.max_grad_norm = clip_on ? 0.5 : -1;
            BAD(lk_optim_step(&opt, p, g, s1, s2, &rep), LK_ERR_NUMERIC);
            int want_seg = k == 2 ? 1 : 2, want_el = k == 2 ? 16 : 7;
            EXPECT(rep.bad_segment == want_seg && rep.bad_element == want_el,
                   "reported segment %d element %lld, expected %d / %d", rep.bad_segment,
                   (long long)rep.bad_element, want_seg, want_el);
            char want[64];
            snprintf(want, sizeof want, "segment %d", want_seg);
            EXPECT(strstr(lk_last_error(), want) && strstr(lk_last_error(), "not finite"),
                   "message does not name %s: %s", want, lk_last_error());
            EXPECT(!memcmp(p, p0, OPT_N * sizeof *p) && !memcmp(g, g0, OPT_N * sizeof *g) &&
                       !memcmp(s1, s10, OPT_NSTATE * sizeof *s1) &&
                       !memcmp(s2, s20, OPT_NSTATE * sizeof *s2),
                   "a refused step wrote to the arenas");
            EXPECT(groups[0].step == 0 && groups[1].step == 3, "a refused step advanced steps");
        }
        BAD(lk_optim_clip_grad_norm(g, OPT_N, opt_segs, 3, 0.5, &rep), LK_ERR_NUMERIC);
        EXPECT(!memcmp(g, g0, OPT_N * sizeof *g), "a refused clip wrote to the gradients");
        BAD(lk_optim_grad_norm(g, OPT_N, opt_segs, 3, &rep), LK_ERR_NUMERIC);
        EXPECT(rep.bad_segment == (k == 2 ? 1 : 2), "grad_norm reported segment %d",
               rep.bad_segment);
    }
    /* Huge finite gradients are not mistaken for overflow (squares summed in double). */
    for (int64_t j = 0; j < OPT_N; j++) g[j] = 3e38f;
    lk_optim_report rep;
    OK(lk_optim_grad_norm(g, OPT_N, opt_segs, 3, &rep));
    EXPECT(fabs(rep.grad_norm - (double)3e38f * sqrt(817.0)) <= 1e-12 * rep.grad_norm, "norm %g",
           rep.grad_norm);
    OK(lk_optim_clip_grad_norm(g, OPT_N, opt_segs, 3, 2.0, &rep));
    double sum = 0;
    for (int64_t j = 0; j < OPT_N; j++)
        if (opt_in_segment(j)) sum += (double)g[j] * g[j];
    EXPECT(fabs(sqrt(sum) - 2.0) < 1e-5, "clipped norm %g, expected 2", sqrt(sum));
    return 1;
}

/* The norm, the clipped gradients and a whole step are bitwise the same on 1 and 2
 * threads (sizes above the parallel threshold, segments of odd lengths). */
static int test_optim_threads(void) {
    NEED(lk_optim_step, "optim.c");
    NEED(lk_optim_clip_grad_norm, "optim.c");
    enum { NS = 4 };
    const int64_t counts[NS] = {70001, 3, 52347, 90113};
    lk_optim_segment segs[NS];
    int64_t off = 5, soff = 0;
    for (int s = 0; s < NS; s++) {
        segs[s] = (lk_optim_segment){.param_offset = off, .count = counts[s],
                                     .state_offset = soff, .group = s % 2, .no_decay = s == 1};
        off += counts[s] + 11;
        soff += counts[s];
    }
    const int64_t n = off;
    float *g = frand((size_t)n, -3, 3), *p = frand((size_t)n, -1, 1);
    float *gs[2], *ps[2], *ms[2], *vs[2];
    double norms[2][2];
    const int threads0 = lk_get_num_threads();
    for (int t = 0; t < 2; t++) {
        gs[t] = fbuf((size_t)n), ps[t] = fbuf((size_t)n);
        ms[t] = fbuf((size_t)soff), vs[t] = fbuf((size_t)soff);
        memcpy(gs[t], g, (size_t)n * sizeof *g);
        memcpy(ps[t], p, (size_t)n * sizeof *p);
        lk_set_num_threads(t + 1);
        int here = lk_omp_threads_here();
        lk_optim_report rep;
        lk_status st = lk_optim_clip_grad_norm(gs[t], n, segs, NS, 10.0, &rep);
        norms[t][0] = rep.grad_norm;
        lk_optim_group groups[2];
        lk_optim_group_defaults(&groups[0], LK_OPTIM_ADAMW);
        lk_optim_group_defaults(&groups[1], LK_OPTIM_ADAMW);
        groups[1].lr = 3e-3;
        lk_optim opt = {.kind = LK_OPTIM_ADAMW, .num_params = n, .num_state = soff,
                        .segments = segs, .num_segments = NS, .groups = groups, .num_groups = 2,
                        .max_grad_norm = 5.0};
        if (st == LK_OK) st = lk_optim_step(&opt, ps[t], gs[t], ms[t], vs[t], &rep);
        norms[t][1] = rep.grad_norm;
        lk_set_num_threads(threads0);
        OK(st);
        EXPECT(here == t + 1, "OpenMP runs %d threads, expected %d", here, t + 1);
    }
    EXPECT(!memcmp(norms[0], norms[1], sizeof norms[0]),
           "norms differ between 1 and 2 threads: %.17g %.17g / %.17g %.17g", norms[0][0],
           norms[1][0], norms[0][1], norms[1][1]);
    EXPECT(!memcmp(gs[0], gs[1], (size_t)n * sizeof *g), "clipped gradients differ");
    EXPECT(!memcmp(ps[0], ps[1], (size_t)n * sizeof *p), "parameters differ");
    EXPECT(!memcmp(ms[0], ms[1], (size_t)soff * sizeof *p) &&
               !memcmp(vs[0], vs[1], (size_t)soff * sizeof *p),
           "optimizer state differs");
    double sum = 0;
    for (int s = 0; s < NS; s++)
        for (int64_t i = 0; i < counts[s]; i++) {
            double v = g[segs[s].param_offset + i];
            sum += v * v;
        }
    EXPECT(fabs(norms[0][0] - sqrt(sum)) <= 1e-12 * sqrt(sum), "norm %.17g, reference %.17g",
           norms[0][0], sqrt(sum));
    return 1;
}

/* Bad arguments fail with LK_ERR_ARG and a message, writing nothing. */
static int test_optim_bad(void) {
    NEED(lk_optim_step, "optim.c");
    NEED(lk_optim_clip_grad_norm, "optim.c");
    NEED(lk_optim_grad_norm, "optim.c");
    lk_optim_group groups[2];
    lk_optim_group_defaults(&groups[0], LK_OPTIM_ADAM);
    groups[1] = groups[0];
    lk_optim_segment segs[3];
    memcpy(segs, opt_segs, sizeof segs);
    lk_optim good = {.kind = LK_OPTIM_ADAM, .num_params = OPT_N, .num_state = OPT_NSTATE,
                     .segments = segs, .num_segments = 3, .groups = groups, .num_groups = 2,
                     .max_grad_norm = -1};
    float *p = frand(OPT_N, -1, 1), *g = frand(OPT_N, -1, 1);
    float *s1 = fbuf(OPT_NSTATE), *s2 = fbuf(OPT_NSTATE);
    float *p0 = fbuf(OPT_N), *g0 = fbuf(OPT_N);
    memcpy(p0, p, OPT_N * sizeof *p);
    memcpy(g0, g, OPT_N * sizeof *g);
    lk_optim o;
    lk_optim_report rep;
    BAD(lk_optim_step(NULL, p, g, s1, s2, &rep), LK_ERR_ARG);
    o = good, o.kind = (lk_optim_kind)7;
    BAD(lk_optim_step(&o, p, g, s1, s2, &rep), LK_ERR_ARG);
    BAD(lk_optim_step(&good, NULL, g, s1, s2, &rep), LK_ERR_ARG);
    BAD(lk_optim_step(&good, p, NULL, s1, s2, &rep), LK_ERR_ARG);
    BAD(lk_optim_step(&good, p, g, s1, NULL, &rep), LK_ERR_ARG);
    o = good, o.num_params = 899; /* segment 2 ends at 900 */
    BAD(lk_optim_step(&o, p, g, s1, s2, &rep), LK_ERR_ARG);
    o = good, o.num_state = 816;
    BAD(lk_optim_step(&o, p, g, s1, s2, &rep), LK_ERR_ARG);
    o = good, o.num_groups = 1; /* segments name group 1 */
    BAD(lk_optim_step(&o, p, g, s1, s2, &rep), LK_ERR_ARG);
    o = good, o.max_grad_norm = NAN;
    BAD(lk_optim_step(&o, p, g, s1, s2, &rep), LK_ERR_ARG);
    segs[1].param_offset = 300; /* overlaps segment 0 */
    BAD(lk_optim_step(&good, p, g, s1, s2, &rep), LK_ERR_ARG);
    EXPECT(strstr(lk_last_error(), "segment 1"), "message: %s", lk_last_error());
    BAD(lk_optim_grad_norm(g, OPT_N, segs, 3, &rep), LK_ERR_ARG);
    segs[1] = opt_segs[1], segs[1].state_offset = 299; /* state overlaps segment 0's */
    BAD(lk_optim_step(&good, p, g, s1, s2, &rep), LK_ERR_ARG);
    segs[1] = opt_segs[1], segs[1].count = -1;
    BAD(lk_optim_step(&good, p, g, s1, s2, &rep), LK_ERR_ARG);
    segs[1] = opt_segs[1], segs[1].group = -1;
    BAD(lk_optim_step(&good, p, g, s1, s2, &rep), LK_ERR_ARG);
    segs[1] = opt_segs[1], segs[1].no_decay = 2;
    BAD(lk_optim_step(&good, p, g, s1, s2, &rep), LK_ERR_ARG);
    segs[1] = opt_segs[1];
    const struct {
        double *field;
        double value;
    } bad_values[] = {
        {&groups[1].lr, -1e-3}, {&groups[1].lr, NAN},          {&groups[1].lr, INFINITY},
        {&groups[1].weight_decay, -0.1}, {&groups[1].beta1, 1.0}, {&groups[1].beta1, -0.1},
        {&groups[1].beta2, 1.0},  {&groups[1].beta2, NAN},     {&groups[1].eps, -1e-8},
    };
    for (size_t i = 0; i < sizeof bad_values / sizeof bad_values[0]; i++) {
        double keep = *bad_values[i].field;
        *bad_values[i].field = bad_values[i].value;
        lk_clear_error();
        lk_status st = lk_optim_step(&good, p, g, s1, s2, &rep);
        *bad_values[i].field = keep;
        EXPECT(st == LK_ERR_ARG && strstr(lk_last_error(), "group 1"),
               "bad group value %zu: %s (%s)", i, lk_status_str(st), lk_last_error());
    }
    groups[1].step = -1;
    BAD(lk_optim_step(&good, p, g, s1, s2, &rep), LK_ERR_ARG);
    groups[1].step = 0;
    /* SGD: Nesterov needs momentum and no dampening; momentum needs its buffer. */
    lk_optim_group_defaults(&groups[0], LK_OPTIM_SGD);
    lk_optim_group_defaults(&groups[1], LK_OPTIM_SGD);
    o = good, o.kind = LK_OPTIM_SGD;
    OK(lk_optim_step(&o, p, g, NULL, NULL, &rep)); /* no momentum: no state needed */
    o.num_state = 0;                                /* nor state offsets checked */
    OK(lk_optim_step(&o, p, g, NULL, NULL, &rep));
    o.num_state = OPT_NSTATE;
    memcpy(p0, p, OPT_N * sizeof *p);
    groups[1].nesterov = 1;
    BAD(lk_optim_step(&o, p, g, s1, NULL, &rep), LK_ERR_ARG);
    groups[1].momentum = 0.9, groups[1].dampening = 0.1;
    BAD(lk_optim_step(&o, p, g, s1, NULL, &rep), LK_ERR_ARG);
    groups[1].dampening = 0;
    BAD(lk_optim_step(&o, p, g, NULL, NULL, &rep), LK_ERR_ARG);
    groups[1].momentum = -0.5, groups[1].nesterov = 0;
    BAD(lk_optim_step(&o, p, g, s1, NULL, &rep), LK_ERR_ARG);
    EXPECT(!memcmp(p, p0, OPT_N * sizeof *p) && !memcmp(g, g0, OPT_N * sizeof *g),
           "a refused call wrote to the arenas");
    BAD(lk_optim_clip_grad_norm(g, OPT_N, opt_segs, 3, -1.0, &rep), LK_ERR_ARG);
    BAD(lk_optim_clip_grad_norm(NULL, OPT_N, opt_segs, 3, 1.0, &rep), LK_ERR_ARG);
    BAD(lk_optim_grad_norm(g, OPT_N, NULL, 3, &rep), LK_ERR_ARG);
    BAD(lk_optim_grad_norm(g, OPT_N, opt_segs, -1, &rep), LK_ERR_ARG);
    /* Empty: no segments, NULL arenas. */
    o = good, o.num_params = 0, o.num_state = 0, o.num_segments = 0, o.segments = NULL;
    OK(lk_optim_step(&o, NULL, NULL, NULL, NULL, NULL));
    OK(lk_optim_grad_norm(NULL, 0, NULL, 0, &rep));
    EXPECT(rep.grad_norm == 0.0, "empty norm %g", rep.grad_norm);
    return 1;
}

/* ----------------------------------------------------------------- threads */
/* The thread count is clamped to what the runtime grants, and lk_thread_enter makes
 * the calling thread use it with dynamic teams off (csrc/core/lk_threads.h). */
static int test_threads_clamp(void) {
    const int t0 = lk_get_num_threads(), cap = lk_max_threads();
    EXPECT(t0 >= 1 && t0 <= cap, "thread count %d outside 1..%d", t0, cap);
#ifdef _OPENMP
    EXPECT(cap <= 4 * omp_get_num_procs() && cap <= omp_get_thread_limit(),
           "max threads %d above 4 x %d CPUs or the thread limit %d", cap, omp_get_num_procs(),
           omp_get_thread_limit());
#endif
    const int huge = lk_set_num_threads(1 << 30), zero = lk_set_num_threads(0);
    lk_set_num_threads(t0);
    EXPECT(huge == cap, "set_num_threads(2^30) gave %d, expected the cap %d", huge, cap);
    EXPECT(zero == 1, "set_num_threads(0) gave %d, expected 1", zero);
#ifdef _OPENMP
    omp_set_dynamic(1);
    omp_set_num_threads(cap);
    OK(lk_thread_enter());
    EXPECT(!omp_get_dynamic(), "lk_thread_enter left dynamic teams on");
    EXPECT(omp_get_max_threads() == t0, "lk_thread_enter: %d threads here, expected %d",
           omp_get_max_threads(), t0);
#endif
    return 1;
}

/* One BatchNorm training forward (oneDNN, whose barriers need the full team) and one
 * channel statistic (the core's own OpenMP loop) at 2 threads; [y | mean | var | stat]. */
enum { FK_N = 4, FK_C = 64, FK_HW = 16 * 16 };
#ifndef LK_FORK_ALARM
#define LK_FORK_ALARM 60 /* seconds before a hung child is killed */
#endif
static lk_status fork_work(float *out) {
    static const lk_bn_cfg cfg = {.n = FK_N, .c = FK_C, .h = 16, .w = 16, .eps = 1e-5f,
                                  .momentum = 0.1f, .mode = LK_BN_TRAIN};
    const size_t nx = (size_t)FK_N * FK_HW * FK_C;
    float *x = fbuf(nx), *g = fbuf(FK_C), *b = fbuf(FK_C);
    for (size_t i = 0; i < nx; i++) x[i] = (float)((i * 7919) % 1000) * 1e-3f;
    for (int j = 0; j < FK_C; j++) g[j] = 1.0f + 0.01f * j, b[j] = 0.1f;
    int32_t *am = talloc(sizeof(int32_t) * FK_N * FK_HW);
    lk_bn L = {0};
    lk_status st = lk_bn_init(&L, &cfg);
    if (st == LK_OK) st = lk_bn_forward(&L, out, out + nx, out + nx + FK_C, x, g, b, NULL, NULL);
    lk_bn_free(&L);
    if (st == LK_OK)
        st = lk_chanstat_forward(out + nx + 2 * FK_C, am, x, (int64_t)FK_N * FK_HW, FK_C);
    return st;
}
static const size_t FORK_OUT = (size_t)FK_N * FK_HW * FK_C + 2 * FK_C + 2 * FK_N * FK_HW;

/* A child forked after the parent ran OpenMP regions with 2 threads used to wait forever
 * for the parent's pool threads; it must give the parent's bits (alarm: a hang fails). */
static int test_threads_fork(void) {
    NEED(lk_bn_init, "batchnorm.c");
    NEED(lk_chanstat_forward, "chanstat.c");
    const int t0 = lk_get_num_threads();
    lk_set_num_threads(2);
    float *ref = fbuf(FORK_OUT), *again = fbuf(FORK_OUT);
    lk_status st = fork_work(ref);
    fflush(stdout);
    pid_t pid = st == LK_OK ? fork() : -1;
    if (pid == 0) {
        alarm(LK_FORK_ALARM);
        const int same = fork_work(again) == LK_OK && !memcmp(again, ref, FORK_OUT * sizeof(float));
        _exit(same ? 0 : 3);
    }
    int status = 0;
    if (pid > 0) waitpid(pid, &status, 0);
    if (st == LK_OK) st = fork_work(again); /* the parent rebuilds its pool */
    lk_set_num_threads(t0);
    OK(st);
    EXPECT(pid > 0, "fork failed");
    EXPECT(!(WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM),
           "the forked child hung in OpenMP (killed by alarm after %d s)", LK_FORK_ALARM);
    EXPECT(WIFEXITED(status) && WEXITSTATUS(status) == 0,
           "the forked child failed (status %d) or gave other bits than the parent", status);
    EXPECT(!memcmp(again, ref, FORK_OUT * sizeof(float)), "the parent's result changed after fork");
    return 1;
}

/* fork() from inside a parallel region: the pool cannot be released, so the child must
 * refuse at the entry with LK_ERR_STATE naming the remedy, and the core's own loops
 * (one-thread regions there) must still finish. */
static int test_threads_fork_in_region(void) {
    NEED(lk_chanstat_forward, "chanstat.c");
#ifdef _OPENMP
    int status = -1;
    pid_t pid = -1;
    fflush(stdout);
#pragma omp parallel num_threads(2)
    {
        if (omp_get_thread_num() == 0) {
            pid = fork();
            if (pid == 0) {
                alarm(LK_FORK_ALARM);
                lk_clear_error();
                const lk_status st = lk_thread_enter();
                const int refused = st == LK_ERR_STATE && strstr(lk_last_error(), "spawn");
                float y[2 * 64];
                int32_t am[64];
                float *x = calloc(64 * 512, sizeof(float));
                const int loop_ok =
                    x && lk_chanstat_forward(y, am, x, 64, 512) == LK_OK && y[0] == 0.0f;
                _exit(!refused ? 4 : !loop_ok ? 5 : lk_get_num_threads() != 1 ? 6 : 0);
            }
        }
    }
    if (pid > 0) waitpid(pid, &status, 0);
    EXPECT(pid > 0, "fork failed");
    EXPECT(!(WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM),
           "the child forked inside a parallel region hung (killed by alarm after %d s)",
           LK_FORK_ALARM);
    EXPECT(WIFEXITED(status) && WEXITSTATUS(status) == 0,
           "child status %d (exit 4: no LK_ERR_STATE naming 'spawn'; 5: a C loop failed; "
           "6: thread count not 1)", status);
#endif
    float *out = fbuf(FORK_OUT);
    OK(fork_work(out)); /* the parent is unaffected */
    return 1;
}

/* -------------------------------------------------------------------- main */
typedef struct {
    const char *name;
    int (*fn)(void);
} test_case;

/* Value tests first, the planned layers' bad-argument tests last: a layer that
 * crashes on a bad argument still lets every value test report. (The stateless
 * functions check their bad arguments inside their value tests.) */
static const test_case tests[] = {
    {"conv2d", test_conv2d},
    {"dwconv", test_dwconv},
    {"dwconv_fwd", test_dwconv_fwd},
    {"stem", test_stem},
    {"expdw", test_expdw},
    {"wino", test_wino},
    {"conv2d_dw_paths", test_conv2d_dw_paths},
    {"conv2d_gemm_paths", test_conv2d_gemm_paths},
    {"bn_silu", test_bn_silu},
    {"batchnorm", test_batchnorm},
    {"batchnorm_team", test_batchnorm_team},
    {"activation", test_activation},
    {"silu_fast", test_silu_fast},
    {"pooling", test_pooling},
    {"linear", test_linear},
    {"chmul", test_chmul},
    {"chmul_team", test_chmul_team},
    {"softmax", test_softmax},
    {"chanstat", test_chanstat},
    {"spatial_mul", test_spatial_mul},
    {"weighted_sum", test_weighted_sum},
    {"add", test_add},
    {"dropout", test_dropout},
    {"stochdepth", test_stochdepth},
    {"xent", test_xent},
    {"optim_sgd", test_optim_sgd},
    {"optim_adam", test_optim_adam},
    {"optim_nonfinite", test_optim_nonfinite},
    {"optim_threads", test_optim_threads},
    {"threads_clamp", test_threads_clamp},
    {"threads_fork", test_threads_fork},
    {"threads_fork_in_region", test_threads_fork_in_region},
    {"conv2d_bad", test_conv2d_bad},
    {"batchnorm_bad", test_batchnorm_bad},
    {"activation_bad", test_activation_bad},
    {"pooling_bad", test_pooling_bad},
    {"linear_bad", test_linear_bad},
    {"chmul_bad", test_chmul_bad},
    {"softmax_bad", test_softmax_bad},
    {"optim_bad", test_optim_bad},
};

int main(int argc, char **argv) {
    const char *filter = argc > 1 ? argv[1] : NULL;
    int passed = 0, failed = 0, missing = 0;
    for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++) {
        if (filter && !strstr(tests[i].name, filter)) continue;
        g_msg[0] = '\0';
        g_missing = 0;
        lk_clear_error();
        int ok = tests[i].fn();
        tfree_all();
        if (ok) {
            passed++;
            printf("PASS %s\n", tests[i].name);
        } else {
            failed++;
            missing += g_missing;
            printf("%s %s: %s\n", g_missing ? "MISSING" : "FAIL", tests[i].name, g_msg);
        }
        fflush(stdout);
    }
    lk_shutdown();
    if (missing) printf("%d of the failures are layers not built yet\n", missing);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
