/* conv2d: forward, backward-data and backward-weights on oneDNN.
 *
 * Activations are NHWC; the user's weights stay in PyTorch's OIHW (GOIHW for
 * grouped/depthwise) and are reordered into whatever blocked layout oneDNN
 * picks for each direction (format_tag_any), and the weight gradient is
 * reordered back. Eval callers pass a weight version so an unchanged weight
 * tensor is reordered only once.
 *
 * Dense weight gradients mostly run on oneDNN's sgemm straight from the NHWC
 * tensors instead of the backward-weights primitive (see conv_dw_gemm). Some
 * forwards leave the primitive for our kernels: dense 3x3 stride 1 by Winograd
 * (conv2d_winograd.c), depthwise (dwconv.c), and at inference the stem's few
 * input channels (conv2d_stem.c); the primitive is still planned for the
 * backward's hint.
 */
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "lk_cpu.h"
#include "lk_dwconv.h"
#include "lk_layers.h"

static lk_status conv_weights_md(dnnl_memory_desc_t *md, const lk_conv2d_cfg *c,
                                 dnnl_format_tag_t tag) {
    if (c->groups == 1) return lk_md4(md, c->oc, c->ic, c->kh, c->kw, tag);
    const int64_t dims[5] = {c->groups, c->oc / c->groups, c->ic / c->groups, c->kh, c->kw};
    return lk_md(md, 5, dims, tag == dnnl_format_tag_any ? tag : dnnl_goihw);
}

static int conv_plain_1x1(const lk_conv2d_cfg *c);

static lk_status conv_check(const lk_conv2d_cfg *c, int *oh, int *ow) {
    LK_REQUIRE(c->n > 0 && c->ic > 0 && c->ih > 0 && c->iw > 0 && c->oc > 0,
               "conv2d: sizes must be positive (n=%d ic=%d ih=%d iw=%d oc=%d)", c->n, c->ic,
               c->ih, c->iw, c->oc);
    LK_REQUIRE(c->kh > 0 && c->kw > 0 && c->sh > 0 && c->sw > 0,
               "conv2d: kernel %dx%d and stride %dx%d must be positive", c->kh, c->kw, c->sh,
               c->sw);
    LK_REQUIRE(c->pt >= 0 && c->pl >= 0 && c->pb >= 0 && c->pr >= 0,
               "conv2d: padding must be >= 0");
    LK_REQUIRE(c->groups >= 1 && c->ic % c->groups == 0 && c->oc % c->groups == 0,
               "conv2d: groups=%d must divide in_channels=%d and out_channels=%d", c->groups,
               c->ic, c->oc);
    LK_REQUIRE(!c->gated_in || (c->train && conv_plain_1x1(c) && c->groups == 1 && !c->bias),
               "conv2d: gated_in needs a training plain 1x1 convolution without bias");
    LK_REQUIRE(!(c->post_silu && c->train),
               "conv2d: the fused SiLU post-op is for inference only (train=1 given)");
    LK_REQUIRE(!(c->post_add && c->train),
               "conv2d: the fused residual add is for inference only (train=1 given)");
    *oh = (c->ih + c->pt + c->pb - c->kh) / c->sh + 1;
    *ow = (c->iw + c->pl + c->pr - c->kw) / c->sw + 1;
    LK_REQUIRE(c->ih + c->pt + c->pb >= c->kh && c->iw + c->pl + c->pr >= c->kw,
               "conv2d: kernel %dx%d larger than padded input %dx%d", c->kh, c->kw,
               c->ih + c->pt + c->pb, c->iw + c->pl + c->pr);
    return LK_OK;
}

/* Depthwise weight gradient: our NHWC kernel or oneDNN's? oneDNN's jit_dw takes
 * only 3-wide kernels; wider ones fall to its generic grouped JIT, which ours beats
 * 3-8x on every B3 5x5 shape. On 3x3 layers ours wins on large maps (1.1-1.9x at
 * 150x150 and 75x75, both ISAs) and on AVX2 down to 19x19 (2.2x), and loses on
 * AVX-512 at 19x19 and below and on AVX2 at 10x10 (0.7-0.8x). bench_layers dwbw_*,
 * batch 16, 2 threads. */
static int conv_dw_custom(const lk_conv2d_cfg *c, int oh, int ow) {
    if (!(c->train && c->groups == c->ic && c->ic == c->oc)) return 0;
    switch (lk_dwconv_get_policy()) {
    case LK_DW_BWD_W_ONEDNN: return 0;
    case LK_DW_BWD_W_CUSTOM: return 1;
    default:
        if (!lk_dwconv_bwd_weights_vectorised(c->kw)) return 0;
        if (c->kw > 3) return 1;
        return oh * ow >= 32 * 32 || (lk_kernel_isa() == LK_ISA_AVX2 && oh * ow >= 16 * 16);
    }
}

/* Depthwise input gradient at stride 1 with centred padding (odd K, pad (K-1)/2 on
 * every side): dx[c] = dy[c] correlated with w[c] rotated by 180 degrees under the
 * same padding, i.e. the forward convolution itself. oneDNN v3.2's backward-data
 * JIT ran 1.2-3.1x slower than its forward on every B3 depthwise shape (16 images,
 * 2 threads, AVX2 and AVX-512), so the forward primitive computes dx from the
 * rotated kernel; strided layers keep the backward-data primitive. */
static lk_conv_dx_policy g_dx_policy = LK_CONV_DX_AUTO;
void lk_conv2d_set_dx_policy(lk_conv_dx_policy p) { g_dx_policy = p; }
lk_conv_dx_policy lk_conv2d_get_dx_policy(void) { return g_dx_policy; }

static int conv_dx_flipped(const lk_conv2d_cfg *c) {
    return g_dx_policy == LK_CONV_DX_AUTO && c->train && c->need_dx && c->groups == c->ic &&
           c->ic == c->oc && c->sh == 1 && c->sw == 1 && c->kh % 2 == 1 && c->kw % 2 == 1 &&
           c->pt == c->kh / 2 && c->pb == c->kh / 2 && c->pl == c->kw / 2 &&
           c->pr == c->kw / 2 && !c->post_silu;
}

/* Depthwise forward on our kernel (lk_dwconv_fwd) or oneDNN's primitive (brdgmm_dw)?
 * bench_layers dwfwd_* and dwinf_*, batch 16, 2 threads, AVX2 (Zen 3), minimum of 7-9
 * runs, two runs each:
 *  - training, input from memory: ours won on the maps of 38x38 and more (B3 192
 *    channels 3x3 at 75x75 12.9-17.0 -> 8.9-11.6 ms, 5x5 stride 2 8.4-11.4 -> 4.9-6.8,
 *    144 channels stride 2 at 150x150 17.4-21.3 -> 16.6-17.5) and tied or lost below
 *    (1392 channels 5x5 at 10x10 2.1-2.8 -> 3.3-3.9 ms, 2304 at 10x10 1.9-2.0 -> 2.2-2.3);
 *  - training, input made by the BatchNorm+SiLU before it (lk_conv2d_forward_rows), which
 *    then is never written, against that pass plus the primitive: ours won or tied at
 *    every B3 and V2-S size (576 channels at 19x19 2.9 -> 2.5 ms, 1536 at 12x12 3.5-3.6
 *    -> 2.8-3.5, 2304 at 10x10 3.3 -> 3.2);
 *  - inference (bias and SiLU post-op, then the SE's pool, which ours sums as it writes):
 *    576 channels at 19x19 3.5-4.5 -> 2.4-3.5 ms, 960 at 24x24 11.8-12.4 -> 8.4-8.6,
 *    2304 at 10x10 4.7-4.9 -> 4.0-4.1, 816 5x5 stride 2 at 19x19 6.0 -> 2.9, and on B3's
 *    first stage 40 channels at 150x150 11.4-15.2 -> 10.1-12.5, 24 8.3-8.8 -> 5.7-7.2
 *    (in training at 40 channels ours lost: 5.1-8.3 -> 10.9-11.4); B3's whole
 *    forward at batch 16 went 838-857 -> 794-823 ms (three alternations).
 * The stride-1 input gradient is the same forward, from memory. AVX-512 was not measured
 * against brdgmm_dw, so AUTO keeps the primitive on it. */
static lk_conv_dwf_policy g_dwf_policy = LK_CONV_DWF_AUTO;
void lk_conv2d_set_dwf_policy(lk_conv_dwf_policy p) { g_dwf_policy = p; }
lk_conv_dwf_policy lk_conv2d_get_dwf_policy(void) { return g_dwf_policy; }

static int conv_dwf(const lk_conv2d_cfg *c) {
    const int dw = c->groups == c->ic && c->ic == c->oc && c->kh == c->kw && c->kh % 2 == 1 &&
                   c->kh <= 15 && c->sh == c->sw && (c->sh == 1 || c->sh == 2) &&
                   c->pt == c->kh / 2 && c->pb == c->kh / 2 && c->pl == c->kw / 2 &&
                   c->pr == c->kw / 2 && !c->post_add;
    const int train = c->train && !c->bias && !c->post_silu;
    const int eval = !c->train && c->bias && c->post_silu;
    if (!dw || !(train || eval)) return 0;
    switch (g_dwf_policy) {
    case LK_CONV_DWF_ONEDNN: return 0;
    case LK_CONV_DWF_OURS: return 1;
    default:
        if (lk_kernel_isa() != LK_ISA_AVX2 || !lk_dwconv_fwd_vectorised(c->kh)) return 0;
        return eval || (c->ic >= 64 && (c->in_rows || (c->ih >= 38 && c->iw >= 38)));
    }
}

/* Dense weight gradient as a GEMM on the NHWC tensors, dW [OC, KH*KW*IC] =
 * dY^T [OC, P] x col [P, KH*KW*IC] over the P = N*OH*OW output positions, where
 * col is x itself for a plain 1x1 convolution (no copy at all) and otherwise
 * im2col rows built chunk by chunk (a bounded buffer that stays in cache).
 *
 * Why: oneDNN v3.2's NHWC backward-weights JIT reached 36-70 GFLOP/s on the V2-S
 * 3x3 layers against 100-115 for the same layers' forward (one thread, AVX2,
 * batch 4); the GEMM ran at 66-110, a 1.3-2.3x faster weight gradient (48->192 at
 * 96x96: 123 -> 59 ms), and on AVX-512 1.2-1.6x. A blocked layout for the
 * primitive (format_tag_any, reorders counted) ranked between the two on 3x3 and
 * below both on 1x1. On 1x1 layers the GEMM won or tied on every B3 / V2-S shape
 * (up to 2x on 144->32 at 75x75) and on SE's 1x1-spatial fc layers (3-5x).
 * It lost on the stems (IC = 3: a 27-wide GEMM, 1.5-2x slower) and on the
 * attention head's 3x3 layers at 10x10 (tie on AVX2, 1.3x slower on AVX-512).
 * Hence the rule: plain 1x1 always; other dense kernels when IC >= 16 and the
 * output has at least 32x32 positions per image.
 *
 * Threads: a single parallel region in which each thread builds its own chunks
 * (rows split round-robin) and runs a single-threaded sgemm into its own partial
 * dW; the partials are then summed. One synchronisation per call: the version
 * with a shared chunk and sgemm's own threads synchronised twice per chunk and
 * ran 3-10x slower with two threads on a busy machine. The sum depends on the
 * team size (like oneDNN's own reductions), never on timing. A plain 1x1 layer needs
 * no im2col: there sgemm reads x and dy in place, once with its own threads, or, where
 * the positions outnumber the channels 64 to 1, once per thread over that thread's
 * share (batch 16, 2 threads, AVX-512: 144->32 at 75x75 2.8-3.1 -> 2.5-2.8 ms; at 10x10,
 * 2304->384, the split lost 5-15 %). A gated input (lk_conv2d_backward_w_gated) is
 * made row by row into the im2col chunks. */
enum { CONV_GEMM_CHUNK_BYTES = 1 << 20, /* im2col chunk per thread (1-4 MiB measured alike) */
       CONV_GEMM_MIN_IC = 16,            /* smaller K loses to oneDNN (stems) */
       CONV_GEMM_MIN_POS = 1024,         /* output positions per image (32x32) */
       CONV_GEMM_SPLIT = 64 };           /* plain 1x1: positions per channel (OC + IC)
                                            from which each thread runs its own share */

/* Forward by Winograd F(4x4, 3x3) (conv2d_winograd.c) for dense 3x3 stride-1 layers,
 * and in training plans the input gradient too: a convolution of dy with the kernels
 * transposed and rotated (when IC is a multiple of 8). Measured (bench_layers wino_*,
 * batch 8, 2 threads, AVX-512, inference forward with bias and SiLU): 48->192 at 96x96
 * 27.6 -> 11.5 ms, 64->256 at 48x48 12.1 -> 4.9 ms, 48->192 at 24x24 1.86 -> 0.80 ms,
 * 64->32 at 10x10 0.081 -> 0.061 ms; AVX2 alike (48->192 at 24x24 3.60 -> 1.50 ms). It
 * lost only with a handful of input channels (2->64 at 10x10: 0.016 -> 0.030 ms), hence
 * WINO_MIN_IC. Training transforms the weights at every call (they change every step):
 * the input gradient 64->256 at 48x48 11.9 -> 5.2 ms and 48->192 at 24x24 1.77 ->
 * 1.12 ms, but 64->256 at 12x12 0.66 -> 0.73 ms, hence WINO_TRAIN_MIN_HW. The weight
 * gradient too, the forward's formula transposed (lk_wino_backward_w): 48->192 at
 * 96x96 28.6 -> 12.7 ms, 48->192 at 24x24 1.66 -> 0.92 ms against the im2col GEMM. */
enum { WINO_MIN_IC = 16, WINO_TRAIN_MIN_HW = 24 };

static lk_conv_wino_policy g_wino_policy = LK_CONV_WINO_AUTO;
void lk_conv2d_set_wino_policy(lk_conv_wino_policy p) { g_wino_policy = p; }
lk_conv_wino_policy lk_conv2d_get_wino_policy(void) { return g_wino_policy; }

static int conv_wino(const lk_conv2d_cfg *c, int oh, int ow) {
    if (g_wino_policy == LK_CONV_WINO_NEVER ||
        !lk_wino_supported(c->kh, c->kw, c->sh, c->sw, c->pt, c->pl, c->pb, c->pr, c->groups,
                           c->oc))
        return 0;
    if (g_wino_policy == LK_CONV_WINO_ALWAYS) return 1;
    return c->ic >= WINO_MIN_IC &&
           (!c->train || (oh >= WINO_TRAIN_MIN_HW && ow >= WINO_TRAIN_MIN_HW));
}

/* Our stem kernel (conv2d_stem.c) for the inference forward of dense convolutions with
 * few input channels, where it has one. Training keeps the primitive: without the SiLU
 * post-op the two ran level (B3's stem at batch 16: 9.3-10.0 against 9.8 ms). */
static lk_conv_stem_policy g_stem_policy = LK_CONV_STEM_AUTO;
void lk_conv2d_set_stem_policy(lk_conv_stem_policy p) { g_stem_policy = p; }
lk_conv_stem_policy lk_conv2d_get_stem_policy(void) { return g_stem_policy; }

static int conv_stem(const lk_conv2d_cfg *c) {
    return g_stem_policy == LK_CONV_STEM_AUTO && !c->train && !c->post_add &&
           lk_stem_supported(c->ic, c->oc, c->kh, c->kw, c->sh, c->sw, c->groups);
}

static lk_conv_bwd_w_policy g_bwd_w_policy = LK_CONV_BWD_W_AUTO;
void lk_conv2d_set_bwd_w_policy(lk_conv_bwd_w_policy p) { g_bwd_w_policy = p; }
lk_conv_bwd_w_policy lk_conv2d_get_bwd_w_policy(void) { return g_bwd_w_policy; }

static int conv_plain_1x1(const lk_conv2d_cfg *c) {
    return c->kh == 1 && c->kw == 1 && c->sh == 1 && c->sw == 1 &&
           (c->pt | c->pl | c->pb | c->pr) == 0;
}

static int conv_dw_gemm(const lk_conv2d_cfg *c, int oh, int ow) {
    if (!c->train || c->no_dw || c->groups != 1) return 0;
    switch (g_bwd_w_policy) {
    case LK_CONV_BWD_W_ONEDNN: return 0;
    case LK_CONV_BWD_W_GEMM: return 1;
    default:
        return conv_plain_1x1(c) ||
               (c->ic >= CONV_GEMM_MIN_IC && (int64_t)oh * ow >= CONV_GEMM_MIN_POS);
    }
}

/* Size the per-thread workspace of the im2col path. */
static lk_status conv_gemm_plan(lk_conv2d *L) {
    const lk_conv2d_cfg *c = &L->cfg;
    const int64_t kk = (int64_t)c->kh * c->kw * c->ic, pos = (int64_t)c->n * L->oh * L->ow;
    int t = lk_get_num_threads();
    int64_t rows = CONV_GEMM_CHUNK_BYTES / (kk * (int64_t)sizeof(float));
    if (rows < 64) rows = 64;
    if (rows > (pos + t - 1) / t) rows = (pos + t - 1) / t; /* no more than a thread's share */
    if (conv_plain_1x1(c) && !c->gated_in) {
        /* sgemm reads x and dy in place; split over the threads (partials only) where
         * the positions outnumber the channels (CONV_GEMM_SPLIT). */
        if (pos < CONV_GEMM_SPLIT * (int64_t)(c->oc + c->ic)) return LK_OK;
        rows = 0;
    }
    L->gemm_threads = t;
    L->gemm_rows = rows;
    size_t per = (size_t)(rows * kk + (int64_t)c->oc * kk);
    L->gemm_ws = lk_alloc(sizeof(float) * per * (size_t)t);
    if (!L->gemm_ws)
        return LK_FAIL(LK_ERR_NOMEM, "conv2d: weight-gradient workspace [%d, %zu] floats", t, per);
    return LK_OK;
}

/* col [rows, KH, KW, IC] for output positions p0 .. p0 + rows - 1 (zero where the
 * window leaves the input). */
static void conv_im2col(float *col, const float *x, const lk_conv2d_cfg *c, int oh, int ow,
                        int64_t p0, int64_t rows) {
    const size_t row_bytes = sizeof(float) * (size_t)c->ic;
    for (int64_t r = 0; r < rows; r++) {
        const int64_t p = p0 + r, img = p / ((int64_t)oh * ow);
        const int rem = (int)(p % ((int64_t)oh * ow)), oy = rem / ow, ox = rem % ow;
        float *dst = col + r * (int64_t)c->kh * c->kw * c->ic;
        for (int i = 0; i < c->kh; i++) {
            const int iy = oy * c->sh - c->pt + i;
            for (int j = 0; j < c->kw; j++, dst += c->ic) {
                const int ix = ox * c->sw - c->pl + j;
                if (iy < 0 || iy >= c->ih || ix < 0 || ix >= c->iw)
                    memset(dst, 0, row_bytes);
                else
                    memcpy(dst, x + ((img * c->ih + iy) * c->iw + ix) * c->ic, row_bytes);
            }
        }
    }
}

/* col [rows, IC] = x * gate[image] for positions p0 .. p0 + rows - 1 of a plain 1x1
 * layer (x [N, H, W, IC], gate [N, IC]). */
static void conv_gated_rows(float *col, const float *x, const float *gate, const lk_conv2d_cfg *c,
                            int64_t hw, int64_t p0, int64_t rows) {
    int64_t img = p0 / hw, next = (img + 1) * hw;
    for (int64_t r = 0; r < rows; r++) {
        const int64_t p = p0 + r;
        if (p == next) {
            img++;
            next += hw;
        }
        const float *xp = x + p * c->ic, *g = gate + img * c->ic;
        float *dst = col + r * c->ic;
        for (int i = 0; i < c->ic; i++) dst[i] = xp[i] * g[i];
    }
}

/* dw [OC, IC, KH, KW] (overwritten) from x [N, IH, IW, IC] and dy [N, OH, OW, OC]; with
 * `gate` (plain 1x1, cfg.gated_in) the input is x * gate[image]. */
static lk_status conv_bwd_w_gemm(lk_conv2d *L, float *dw, const float *x, const float *dy,
                                 const float *gate) {
    const lk_conv2d_cfg *c = &L->cfg;
    const int64_t pos = (int64_t)c->n * L->oh * L->ow;
    LK_TRY(lk_thread_enter());
    const int in_place = conv_plain_1x1(c) && !gate; /* x is the GEMM's operand as it is */
    if (in_place && !L->gemm_ws) {
        /* dW [OC, IC] = dY^T [OC, P] x X [P, IC], both NHWC as they are. */
        LK_DNNL(dnnl_sgemm('T', 'N', c->oc, c->ic, pos, 1.0f, dy, c->oc, x, c->ic, 0.0f, dw,
                           c->ic));
        return LK_OK;
    }
    const int kt = c->kh * c->kw;
    const int64_t kk = (int64_t)kt * c->ic, rows = L->gemm_rows;
    const int64_t nchunk = in_place ? 0 : (pos + rows - 1) / rows;
    const size_t per = (size_t)(rows * kk + (int64_t)c->oc * kk);
    int team = L->gemm_threads;
#ifdef _OPENMP
    if (omp_get_max_threads() < team) team = omp_get_max_threads();
#endif
    dnnl_status_t bad = dnnl_success;
#pragma omp parallel num_threads(team)
    {
        int t = 0, nt = 1;
#ifdef _OPENMP
        t = omp_get_thread_num();
        nt = omp_get_num_threads();
#endif
        float *col = L->gemm_ws + (size_t)t * per;  /* [rows, KH, KW, IC] */
        float *part = col + rows * kk;               /* [OC, KH, KW, IC] */
        int first = 1;
        if (in_place) {
            /* dW [OC, IC] = dY^T [OC, P] x X [P, IC] over this thread's share of the
             * positions, both NHWC as they are. */
            const int64_t p0 = pos * t / nt, np = pos * (t + 1) / nt - p0;
            if (np > 0) {
                dnnl_status_t s = dnnl_sgemm('T', 'N', c->oc, c->ic, np, 1.0f, dy + p0 * c->oc,
                                             c->oc, x + p0 * c->ic, c->ic, 0.0f, part, c->ic);
                if (s != dnnl_success) {
#pragma omp critical(lk_conv_gemm_status)
                    bad = s;
                }
                first = 0;
            }
        }
        for (int64_t ch = t; ch < nchunk; ch += nt) {
            const int64_t p0 = ch * rows, np = pos - p0 < rows ? pos - p0 : rows;
            if (gate)
                conv_gated_rows(col, x, gate, c, (int64_t)L->oh * L->ow, p0, np);
            else
                conv_im2col(col, x, c, L->oh, L->ow, p0, np);
            /* Inside the region sgemm runs on this thread alone. */
            dnnl_status_t s = dnnl_sgemm('T', 'N', c->oc, kk, np, 1.0f, dy + p0 * c->oc, c->oc,
                                         col, kk, first ? 0.0f : 1.0f, part, kk);
            if (s != dnnl_success) {
#pragma omp critical(lk_conv_gemm_status)
                bad = s;
            }
            first = 0;
        }
        if (first) memset(part, 0, sizeof(float) * (size_t)c->oc * (size_t)kk);
#pragma omp barrier
        /* dw[o, i, tap] = sum over threads of part[o, tap, i], in thread order. */
#pragma omp for schedule(static)
        for (int o = 0; o < c->oc; o++)
            for (int tap = 0; tap < kt; tap++)
                for (int i = 0; i < c->ic; i++) {
                    const size_t off = (size_t)(o * kk + (int64_t)tap * c->ic + i);
                    float sum = L->gemm_ws[rows * kk + off];
                    for (int q = 1; q < nt; q++) sum += L->gemm_ws[(size_t)q * per + rows * kk + off];
                    dw[((int64_t)o * c->ic + i) * kt + tap] = sum;
                }
    }
    LK_DNNL_NAMED(bad, "dnnl_sgemm (conv2d weight gradient)");
    return LK_OK;
}

/* Create every primitive, reorder and memory object; descriptors are freed at `done`. */
lk_status lk_conv2d_init(lk_conv2d *L, const lk_conv2d_cfg *cfg) {
    memset(L, 0, sizeof *L);
    L->cfg = *cfg;
    const lk_conv2d_cfg *c = &L->cfg;
    LK_TRY(conv_check(c, &L->oh, &L->ow));

    dnnl_engine_t eng = NULL;
    LK_TRY(lk_engine(&eng));
    lk_status st = LK_OK;
    dnnl_memory_desc_t x_md = NULL, y_md = NULL, w_any = NULL, w_user = NULL, b_md = NULL;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t pd = NULL;
    const dnnl_dims_t strides = {c->sh, c->sw}, dil = {0, 0};
    const dnnl_dims_t pad_l = {c->pt, c->pl}, pad_r = {c->pb, c->pr};

    LK_TRY_GOTO(lk_md4(&x_md, c->n, c->ic, c->ih, c->iw, dnnl_nhwc));       /* [N, IH, IW, IC] */
    LK_TRY_GOTO(lk_md4(&y_md, c->n, c->oc, L->oh, L->ow, dnnl_nhwc));       /* [N, OH, OW, OC] */
    LK_TRY_GOTO(conv_weights_md(&w_any, c, dnnl_format_tag_any));
    LK_TRY_GOTO(conv_weights_md(&w_user, c, dnnl_oihw));                     /* [OC, IC/G, KH, KW] */
    if (c->bias) LK_TRY_GOTO(lk_md1(&b_md, c->oc));                          /* [OC] */
    LK_TRY_GOTO(lk_attr(&attr));
    if (c->post_silu || c->post_add) {
        /* Inference only (checked in conv_check): training needs the pre-activation. The
         * residual is a binary add of a whole tensor (no broadcast), after the SiLU: the
         * 1x1 kernels apply it as they store, so the conv output is never read back. */
        dnnl_post_ops_t po = NULL;
        LK_DNNL_GOTO(dnnl_post_ops_create(&po));
        dnnl_status_t ps = dnnl_success;
        if (c->post_silu) ps = dnnl_post_ops_append_eltwise(po, dnnl_eltwise_swish, 1.0f, 0.0f);
        if (ps == dnnl_success && c->post_add)
            ps = dnnl_post_ops_append_binary(po, dnnl_binary_add, y_md);
        if (ps == dnnl_success) ps = dnnl_primitive_attr_set_post_ops(attr, po);
        dnnl_post_ops_destroy(po);
        if (ps != dnnl_success) {
            st = LK_FAIL(LK_ERR_DNNL, "oneDNN call dnnl_post_ops_append_eltwise / _binary / "
                         "dnnl_primitive_attr_set_post_ops (SiLU, residual) failed: %s",
                         lk_dnnl_status_str(ps));
            goto done;
        }
        if (c->post_add) LK_TRY_GOTO(lk_mem(&L->m_add, y_md));
    }

    LK_DNNL_GOTO(dnnl_convolution_forward_primitive_desc_create(
        &pd, eng, c->train ? dnnl_forward_training : dnnl_forward_inference,
        dnnl_convolution_direct, x_md, w_any, b_md, y_md, strides, dil, pad_l, pad_r, attr));
    LK_TRY_GOTO(lk_prim_init(&L->fwd, &pd));
    pd = NULL;
    const_dnnl_memory_desc_t w_fwd_md = lk_prim_md(&L->fwd, dnnl_query_weights_md, 0);
    LK_TRY_GOTO(lk_reorder_init(&L->w_to_fwd, &L->need_w_fwd, w_user, w_fwd_md));
    L->w_to_fwd.weights = 1;
    /* A Winograd forward, or our depthwise one, never runs the primitive on reordered
     * weights (it stays for the backward's hint and lk_conv2d_forward_laid): no copy of
     * them to keep. */
    L->wino = conv_wino(c, L->oh, L->ow);
    L->dwf = !L->wino && conv_dwf(c);
    if (L->need_w_fwd && !L->wino && !L->dwf) {
        L->w_fwd = lk_alloc(dnnl_memory_desc_get_size(w_fwd_md));
        if (!L->w_fwd) { st = LK_FAIL(LK_ERR_NOMEM, "conv2d: weight buffer"); goto done; }
    }
    LK_TRY_GOTO(lk_mem(&L->m_x, x_md));
    LK_TRY_GOTO(lk_mem(&L->m_y, y_md));
    LK_TRY_GOTO(lk_mem(&L->m_w_user, w_user));
    LK_TRY_GOTO(lk_mem(&L->m_w_fwd, w_fwd_md));
    if (c->bias) LK_TRY_GOTO(lk_mem(&L->m_b, b_md));
    L->wino_dw = L->wino && c->train && !c->no_dw && !c->in_rows && !c->gated_in;
    if (L->wino) {
        const lk_wino_cfg wc = {.n = c->n, .h = c->ih, .w = c->iw, .ic = c->ic, .oc = c->oc,
                                .silu = c->post_silu, .grad_w = L->wino_dw,
                                .scratch = c->scratch};
        LK_TRY_GOTO(lk_wino_init(&L->wg, &wc));
    }

    L->stem = !L->wino && !L->dwf && conv_stem(c);
    if (L->stem) {
        const lk_stem_cfg sc = {.n = c->n, .ic = c->ic, .ih = c->ih, .iw = c->iw, .oc = c->oc,
                                .k = c->kh, .s = c->sh, .pt = c->pt, .pl = c->pl, .pb = c->pb,
                                .pr = c->pr, .silu = c->post_silu};
        LK_TRY_GOTO(lk_stem_init(&L->st, &sc));
    }
    if (L->dwf) {
        const lk_dwconv_fwd_cfg fc = {.n = c->n, .c = c->ic, .ih = c->ih, .iw = c->iw,
                                      .k = c->kh, .stride = c->sh, .in_rows = c->in_rows,
                                      .eval = !c->train};
        L->dwfwd = lk_alloc(sizeof *L->dwfwd);
        if (!L->dwfwd) { st = LK_FAIL(LK_ERR_NOMEM, "conv2d: depthwise forward"); goto done; }
        memset(L->dwfwd, 0, sizeof *L->dwfwd);
        LK_TRY_GOTO(lk_dwconv_fwd_init(L->dwfwd, &fc));
    }
    if (c->train) {
        L->dx_flipped = conv_dx_flipped(c);
        if (L->dx_flipped && !L->dwf) { /* the primitive on the rotated kernel */
            const size_t wn = (size_t)c->oc * c->kh * c->kw;
            L->w_flip = lk_alloc(wn * sizeof(float));
            L->w_flip_fwd = L->need_w_fwd ? lk_alloc(dnnl_memory_desc_get_size(w_fwd_md)) : NULL;
            L->zero_bias = c->bias ? lk_alloc((size_t)c->oc * sizeof(float)) : NULL;
            if (!L->w_flip || (L->need_w_fwd && !L->w_flip_fwd) || (c->bias && !L->zero_bias)) {
                st = LK_FAIL(LK_ERR_NOMEM, "conv2d: rotated-kernel buffers");
                goto done;
            }
            if (c->bias) memset(L->zero_bias, 0, (size_t)c->oc * sizeof(float));
            LK_TRY_GOTO(lk_mem(&L->m_w_flip, w_fwd_md));
            LK_TRY_GOTO(lk_mem(&L->m_dx, x_md));
        } else if (c->need_dx && L->wino && c->ic % 8 == 0) {
            /* dx = conv(dy, the kernels transposed and rotated): Winograd as well. */
            L->wino_dx = 1;
            const lk_wino_cfg wc = {.n = c->n, .h = L->oh, .w = L->ow, .ic = c->oc, .oc = c->ic,
                                    .scratch = c->scratch};
            LK_TRY_GOTO(lk_wino_init(&L->wg_dx, &wc));
        } else if (c->need_dx) {
            LK_DNNL_GOTO(dnnl_convolution_backward_data_primitive_desc_create(
                &pd, eng, dnnl_convolution_direct, x_md, w_any, y_md, strides, dil, pad_l, pad_r,
                L->fwd.pd, attr));
            LK_TRY_GOTO(lk_prim_init(&L->bwd_d, &pd));
            pd = NULL;
            const_dnnl_memory_desc_t w_bd_md = lk_prim_md(&L->bwd_d, dnnl_query_weights_md, 0);
            LK_TRY_GOTO(lk_reorder_init(&L->w_to_bwd_d, &L->need_w_bwd_d, w_user, w_bd_md));
            L->w_to_bwd_d.weights = 1;
            if (L->need_w_bwd_d) {
                L->w_bwd_d = lk_alloc(dnnl_memory_desc_get_size(w_bd_md));
                if (!L->w_bwd_d) { st = LK_FAIL(LK_ERR_NOMEM, "conv2d: weight buffer"); goto done; }
            }
            LK_TRY_GOTO(lk_mem(&L->m_w_bwd_d, w_bd_md));
            LK_TRY_GOTO(lk_mem(&L->m_dx, x_md));
        }
        LK_TRY_GOTO(lk_mem(&L->m_dy, y_md));
        L->dw_custom = !c->no_dw && conv_dw_custom(c, L->oh, L->ow);
        if (L->dw_custom) {
            size_t n = lk_dwconv_bwd_weights_ws(c->n, c->ic, L->oh, c->kh, c->kw,
                                                c->in_rows ? c->iw : 0);
            L->dw_ws = n ? lk_alloc(n * sizeof(float)) : NULL;
            if (n && !L->dw_ws) {
                st = LK_FAIL(LK_ERR_NOMEM, "conv2d: depthwise weight-gradient workspace");
                goto done;
            }
        }
        /* A gated input has no other weight-gradient path. */
        L->dw_gemm = !L->dw_custom && !L->wino_dw &&
                     (conv_dw_gemm(c, L->oh, L->ow) || (c->gated_in && !c->no_dw));
        if (L->dw_gemm) LK_TRY_GOTO(conv_gemm_plan(L));
        if (!L->dw_custom && !L->dw_gemm && !L->wino_dw && !c->no_dw) {
            LK_DNNL_GOTO(dnnl_convolution_backward_weights_primitive_desc_create(
                &pd, eng, dnnl_convolution_direct, x_md, w_any, b_md, y_md, strides, dil, pad_l,
                pad_r, L->fwd.pd, attr));
            LK_TRY_GOTO(lk_prim_init(&L->bwd_w, &pd));
            pd = NULL;
            const_dnnl_memory_desc_t dw_md = lk_prim_md(&L->bwd_w, dnnl_query_diff_weights_md, 0);
            LK_TRY_GOTO(lk_reorder_init(&L->dw_to_user, &L->need_dw_user, dw_md, w_user));
            L->dw_to_user.weights = 1;
            if (L->need_dw_user) {
                L->dw_int = lk_alloc(dnnl_memory_desc_get_size(dw_md));
                if (!L->dw_int) { st = LK_FAIL(LK_ERR_NOMEM, "conv2d: weight-gradient buffer"); goto done; }
            }
            LK_TRY_GOTO(lk_mem(&L->m_dw_int, dw_md));
            LK_TRY_GOTO(lk_mem(&L->m_dw_user, w_user));
            if (c->bias) LK_TRY_GOTO(lk_mem(&L->m_db, b_md));
        }
    }
done:
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (attr) dnnl_primitive_attr_destroy(attr);
    if (x_md) dnnl_memory_desc_destroy(x_md);
    if (y_md) dnnl_memory_desc_destroy(y_md);
    if (w_any) dnnl_memory_desc_destroy(w_any);
    if (w_user) dnnl_memory_desc_destroy(w_user);
    if (b_md) dnnl_memory_desc_destroy(b_md);
    return st;
}

/* Reorder user weights into a primitive's layout (or use them directly). */
static lk_status conv_weights_to(lk_prim *reorder, int needed, dnnl_memory_t m_user,
                                 dnnl_memory_t m_int, float *buf, const float *w) {
    if (!needed) return lk_mem_set(m_int, w);
    LK_TRY(lk_mem_set(m_user, w));
    LK_TRY(lk_mem_set(m_int, buf));
    const dnnl_exec_arg_t args[] = {{DNNL_ARG_FROM, m_user}, {DNNL_ARG_TO, m_int}};
    return lk_prim_exec(reorder, 2, args);
}

/* Whether add suits the plan: given exactly when planned with post_add, never y. */
static lk_status conv_add_check(const lk_conv2d *L, const float *y, const float *add) {
    LK_REQUIRE(!add == !L->cfg.post_add,
               add ? "conv2d forward: an addend given, but the layer was planned without post_add"
                   : "conv2d forward: the layer was planned with post_add: give the addend");
    LK_REQUIRE(add != y, "conv2d forward: the addend may not alias the output");
    return LK_OK;
}

/* The forward primitive on x, y, b and the addend (post_add), with its weights already
 * bound to m_w_fwd. */
static lk_status conv_fwd_exec(lk_conv2d *L, float *y, const float *x, const float *b,
                               const float *add) {
    LK_TRY(lk_mem_set(L->m_x, x));
    LK_TRY(lk_mem_set(L->m_y, y));
    dnnl_exec_arg_t args[5] = {{DNNL_ARG_SRC, L->m_x}, {DNNL_ARG_WEIGHTS, L->m_w_fwd},
                               {DNNL_ARG_DST, L->m_y}};
    int n = 3;
    if (L->cfg.bias) {
        LK_TRY(lk_mem_set(L->m_b, b));
        args[n++] = (dnnl_exec_arg_t){DNNL_ARG_BIAS, L->m_b};
    }
    if (add) { /* the binary post-op follows the SiLU's, if there is one */
        LK_TRY(lk_mem_set(L->m_add, add));
        const int idx = L->cfg.post_silu ? 1 : 0;
        args[n++] = (dnnl_exec_arg_t){DNNL_ARG_ATTR_MULTIPLE_POST_OP(idx) | DNNL_ARG_SRC_1,
                                      L->m_add};
    }
    return lk_prim_exec(&L->fwd, n, args);
}

lk_status lk_conv2d_forward(lk_conv2d *L, float *y, const float *x, const float *w, const float *b,
                            uint64_t w_version) {
    return lk_conv2d_forward_add(L, y, x, w, b, w_version, NULL);
}

lk_status lk_conv2d_forward_add(lk_conv2d *L, float *y, const float *x, const float *w,
                                const float *b, uint64_t w_version, const float *add) {
    LK_REQUIRE(L->fwd.p, "conv2d: layer not initialised");
    LK_REQUIRE(y && x && w && (b || !L->cfg.bias), "conv2d forward: NULL argument");
    LK_TRY(conv_add_check(L, y, add));
    if (L->wino) {
        if (w_version == 0 || L->wg_w != w || L->wg_version != w_version) {
            lk_wino_set_weights(&L->wg, w);
            L->wg_w = w;
            L->wg_version = w_version;
        }
        return lk_wino_forward(&L->wg, y, x, L->cfg.bias ? b : NULL, add);
    }
    if (L->stem) return lk_stem_forward(&L->st, y, x, w, L->cfg.bias ? b : NULL, w_version);
    if (L->dwf && !L->cfg.train)
        return lk_dwconv_forward_eval(L->dwfwd, y, NULL, x, w, b, w_version);
    if (L->dwf) return lk_dwconv_forward(L->dwfwd, y, x, w, 0, NULL);
    int fresh = w_version != 0 && L->w_cached == w && L->w_cached_version == w_version;
    if (!fresh || !L->need_w_fwd) {
        LK_TRY(conv_weights_to(&L->w_to_fwd, L->need_w_fwd, L->m_w_user, L->m_w_fwd, L->w_fwd, w));
        L->w_cached = w;
        L->w_cached_version = w_version;
    }
    return conv_fwd_exec(L, y, x, b, add);
}

size_t lk_conv2d_fwd_weights_floats(const lk_conv2d *L) {
    return dnnl_memory_desc_get_size(lk_prim_md(&L->fwd, dnnl_query_weights_md, 0)) /
           sizeof(float);
}

lk_status lk_conv2d_fwd_weights(lk_conv2d *L, float *dst, const float *w) {
    LK_REQUIRE(L->fwd.p, "conv2d: layer not initialised");
    LK_REQUIRE(dst && w, "conv2d weights to layout: NULL argument");
    const lk_conv2d_cfg *c = &L->cfg;
    if (!L->need_w_fwd) {
        memcpy(dst, w, sizeof(float) * (size_t)c->oc * (size_t)(c->ic / c->groups) *
                           (size_t)c->kh * (size_t)c->kw);
        return LK_OK;
    }
    L->w_cached = NULL; /* m_w_fwd is pointed at dst: the cached copy is no longer bound */
    return conv_weights_to(&L->w_to_fwd, 1, L->m_w_user, L->m_w_fwd, dst, w);
}

lk_status lk_conv2d_forward_laid(lk_conv2d *L, float *y, const float *x, const float *w_laid,
                                 const float *b, const float *add) {
    LK_REQUIRE(L->fwd.p, "conv2d: layer not initialised");
    LK_REQUIRE(y && x && w_laid && (b || !L->cfg.bias), "conv2d forward (laid): NULL argument");
    LK_TRY(conv_add_check(L, y, add));
    L->w_cached = NULL;
    LK_TRY(lk_mem_set(L->m_w_fwd, w_laid));
    return conv_fwd_exec(L, y, x, b, add);
}

/* dx = forward(dy) with the kernel rotated by 180 degrees (conv_dx_flipped); the
 * forward's bias, if it has one, is zero here. The rotation costs OC*KH*KW moves. */
static lk_status conv_dx_by_forward(lk_conv2d *L, float *dx, const float *dy, const float *w) {
    const lk_conv2d_cfg *c = &L->cfg;
    if (L->dwf) return lk_dwconv_forward(L->dwfwd, dx, dy, w, 1, NULL);
    const int kk = c->kh * c->kw;
    for (int o = 0; o < c->oc; o++)
        for (int t = 0; t < kk; t++) L->w_flip[(size_t)o * kk + t] = w[(size_t)o * kk + kk - 1 - t];
    LK_TRY(conv_weights_to(&L->w_to_fwd, L->need_w_fwd, L->m_w_user, L->m_w_flip, L->w_flip_fwd,
                           L->w_flip));
    LK_TRY(lk_mem_set(L->m_y, dy)); /* stride 1, centred: dy has x's shape */
    LK_TRY(lk_mem_set(L->m_dx, dx));
    dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, L->m_y}, {DNNL_ARG_WEIGHTS, L->m_w_flip},
                               {DNNL_ARG_DST, L->m_dx}};
    int n = 3;
    if (c->bias) {
        LK_TRY(lk_mem_set(L->m_b, L->zero_bias));
        args[n++] = (dnnl_exec_arg_t){DNNL_ARG_BIAS, L->m_b};
    }
    return lk_prim_exec(&L->fwd, n, args);
}

/* dw (and db) on our depthwise kernel (dw_custom); `in` as lk_dwconv_bwd_weights. */
static lk_status conv_dw_custom_grads(lk_conv2d *L, float *dw, float *db, const float *dy,
                                      const float *x, const lk_dw_input *in) {
    const lk_conv2d_cfg *c = &L->cfg;
    LK_TRY(lk_dwconv_bwd_weights(dw, x, dy, c->n, c->ic, c->ih, c->iw, L->oh, L->ow, c->kh, c->kw,
                                 c->sh, c->sw, c->pt, c->pl, L->dw_ws, in));
    if (c->bias) LK_TRY(lk_dwconv_bwd_bias(db, dy, c->n, c->oc, L->oh, L->ow));
    return LK_OK;
}

lk_status lk_conv2d_backward(lk_conv2d *L, float *dx, float *dw, float *db, const float *dy,
                             const float *x, const float *w) {
    LK_REQUIRE(L->cfg.train, "conv2d backward: layer was planned without backward (train=0)");
    LK_REQUIRE(dy, "conv2d backward: dy is NULL");
    if (dx && L->dx_flipped) {
        LK_REQUIRE(w, "conv2d backward: w is NULL");
        LK_TRY(conv_dx_by_forward(L, dx, dy, w));
    } else if (dx && L->wino_dx) {
        LK_REQUIRE(w, "conv2d backward: w is NULL");
        lk_wino_set_weights_rotated(&L->wg_dx, w);
        LK_TRY(lk_wino_forward(&L->wg_dx, dx, dy, NULL, NULL));
    } else if (dx) {
        LK_REQUIRE(L->bwd_d.p, "conv2d backward: planned without the input gradient (need_dx=0)");
        LK_REQUIRE(w, "conv2d backward: w is NULL");
        /* The forward's reordered copy is reusable when both layouts agree and
         * it was made from this very tensor in the preceding forward. */
        int reuse = L->need_w_fwd && L->w_cached == w &&
                    dnnl_memory_desc_equal(lk_prim_md(&L->bwd_d, dnnl_query_weights_md, 0),
                                           lk_prim_md(&L->fwd, dnnl_query_weights_md, 0));
        if (reuse)
            LK_TRY(lk_mem_set(L->m_w_bwd_d, L->w_fwd));
        else
            LK_TRY(conv_weights_to(&L->w_to_bwd_d, L->need_w_bwd_d, L->m_w_user, L->m_w_bwd_d,
                                   L->w_bwd_d, w));
        LK_TRY(lk_mem_set(L->m_dy, dy));
        LK_TRY(lk_mem_set(L->m_dx, dx));
        const dnnl_exec_arg_t args[] = {{DNNL_ARG_DIFF_DST, L->m_dy},
                                        {DNNL_ARG_WEIGHTS, L->m_w_bwd_d},
                                        {DNNL_ARG_DIFF_SRC, L->m_dx}};
        LK_TRY(lk_prim_exec(&L->bwd_d, 3, args));
    }
    if (dw || db) {
        LK_REQUIRE(L->bwd_w.p || L->dw_custom || L->dw_gemm || L->wino_dw,
                   "conv2d backward: planned without the weight gradient (no_dw=1)");
        LK_REQUIRE(x && dw, "conv2d backward: x and dw are required for the weight gradient");
        LK_REQUIRE(db || !L->cfg.bias, "conv2d backward: db is required (layer has a bias)");
        if (L->wino_dw) {
            LK_TRY(lk_wino_backward_w(&L->wg, dw, x, dy));
            if (L->cfg.bias) LK_TRY(lk_dwconv_bwd_bias(db, dy, L->cfg.n, L->cfg.oc, L->oh, L->ow));
            return LK_OK;
        }
        if (L->dw_custom) return conv_dw_custom_grads(L, dw, db, dy, x, NULL);
        if (L->dw_gemm) {
            LK_TRY(conv_bwd_w_gemm(L, dw, x, dy, NULL));
            /* db [OC] = sum of dy over positions (the depthwise kernel's column sum). */
            if (L->cfg.bias) LK_TRY(lk_dwconv_bwd_bias(db, dy, L->cfg.n, L->cfg.oc, L->oh, L->ow));
            return LK_OK;
        }
        LK_TRY(lk_mem_set(L->m_x, x));
        LK_TRY(lk_mem_set(L->m_dy, dy));
        LK_TRY(lk_mem_set(L->m_dw_int, L->need_dw_user ? (void *)L->dw_int : (void *)dw));
        dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, L->m_x}, {DNNL_ARG_DIFF_DST, L->m_dy},
                                   {DNNL_ARG_DIFF_WEIGHTS, L->m_dw_int}};
        int n = 3;
        if (L->cfg.bias) {
            LK_TRY(lk_mem_set(L->m_db, db));
            args[n++] = (dnnl_exec_arg_t){DNNL_ARG_DIFF_BIAS, L->m_db};
        }
        LK_TRY(lk_prim_exec(&L->bwd_w, n, args));
        if (L->need_dw_user) {
            LK_TRY(lk_mem_set(L->m_dw_user, dw));
            const dnnl_exec_arg_t r[] = {{DNNL_ARG_FROM, L->m_dw_int}, {DNNL_ARG_TO, L->m_dw_user}};
            LK_TRY(lk_prim_exec(&L->dw_to_user, 2, r));
        }
    }
    return LK_OK;
}

lk_status lk_conv2d_backward_w_gated(lk_conv2d *L, float *dw, const float *dy, const float *x,
                                     const float *gate) {
    const lk_conv2d_cfg *c = &L->cfg;
    LK_REQUIRE(c->gated_in && L->dw_gemm && L->gemm_ws,
               "conv2d backward: not planned for a gated input (gated_in, plain 1x1)");
    LK_REQUIRE(dw && dy && x && gate, "conv2d backward (gated): NULL argument");
    LK_REQUIRE(!c->bias, "conv2d backward (gated): the layer has a bias");
    return conv_bwd_w_gemm(L, dw, x, dy, gate);
}

int lk_conv2d_takes_rows(const lk_conv2d *L) { return L->dw_custom && L->cfg.in_rows; }

int lk_conv2d_forward_takes_rows(const lk_conv2d *L) { return L->dwf && L->cfg.in_rows; }

lk_status lk_conv2d_forward_rows(lk_conv2d *L, float *y, const float *x, const float *w,
                                 const lk_dw_input *in) {
    LK_REQUIRE(lk_conv2d_forward_takes_rows(L),
               "conv2d forward: not planned for an input made on demand (in_rows, ours)");
    LK_REQUIRE(y && x && w && in, "conv2d forward (rows): NULL argument");
    return lk_dwconv_forward(L->dwfwd, y, x, w, 0, in);
}

int lk_conv2d_forward_pools(const lk_conv2d *L) { return L->dwf && !L->cfg.train; }

lk_status lk_conv2d_forward_pool(lk_conv2d *L, float *y, float *pool, const float *x,
                                 const float *w, const float *b, uint64_t w_version) {
    LK_REQUIRE(lk_conv2d_forward_pools(L),
               "conv2d forward: no pool without our depthwise inference forward");
    LK_REQUIRE(y && pool && x && w && b, "conv2d forward (pool): NULL argument");
    return lk_dwconv_forward_eval(L->dwfwd, y, pool, x, w, b, w_version);
}

lk_status lk_conv2d_backward_w_rows(lk_conv2d *L, float *dw, float *db, const float *dy,
                                    const float *x, const lk_dw_input *in) {
    const lk_conv2d_cfg *c = &L->cfg;
    LK_REQUIRE(lk_conv2d_takes_rows(L),
               "conv2d backward: not planned for an input made on demand (in_rows)");
    LK_REQUIRE(dw && dy && x && in, "conv2d backward (rows): NULL argument");
    LK_REQUIRE(db || !c->bias, "conv2d backward: db is required (layer has a bias)");
    return conv_dw_custom_grads(L, dw, db, dy, x, in);
}

void lk_conv2d_free(lk_conv2d *L) {
    lk_prim_free(&L->fwd);
    lk_prim_free(&L->bwd_d);
    lk_prim_free(&L->bwd_w);
    lk_prim_free(&L->w_to_fwd);
    lk_prim_free(&L->w_to_bwd_d);
    lk_prim_free(&L->dw_to_user);
    lk_free(L->w_fwd);
    lk_free(L->w_bwd_d);
    lk_free(L->dw_int);
    lk_free(L->gemm_ws);
    lk_free(L->w_flip);
    lk_free(L->dw_ws);
    lk_free(L->w_flip_fwd);
    lk_free(L->zero_bias);
    lk_wino_free(&L->wg);
    lk_wino_free(&L->wg_dx);
    lk_stem_free(&L->st);
    if (L->dwfwd) lk_dwconv_fwd_free(L->dwfwd);
    lk_free(L->dwfwd);
    dnnl_memory_t *mems[] = {&L->m_x,     &L->m_y,      &L->m_w_user,  &L->m_w_fwd,
                             &L->m_b,     &L->m_dx,     &L->m_dy,      &L->m_w_bwd_d,
                             &L->m_dw_int, &L->m_dw_user, &L->m_db,    &L->m_w_flip,
                             &L->m_add};
    for (size_t i = 0; i < sizeof mems / sizeof mems[0]; i++) lk_mem_free(mems[i]);
    memset(L, 0, sizeof *L);
}
