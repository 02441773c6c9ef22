/* SiLU, sigmoid, ReLU and ReLU6.
 *
 * Sigmoid, ReLU and ReLU6 run on oneDNN eltwise. Elementwise ops do not care
 * about layout, so they are planned on a flat 1-D descriptor of `count`
 * floats. Backward takes whichever forward tensor the algorithm needs: ReLU and
 * ReLU6 (clip_v2 [0, 6]) differentiate at the pre-activation x, sigmoid
 * (logistic_use_dst_for_bwd) at the output y, so y need not be recomputed.
 *
 * SiLU is hand-written: AVX-512 or AVX2+FMA intrinsics where the CPU has them,
 * portable C otherwise, chosen at run time (lk_cpu.h): oneDNN's swish was 2.5x (forward) and 3.2x
 * (backward) slower than PyTorch at EfficientNet shapes. Its backward, too,
 * differentiates at x. See silu_* below for the numerics.
 *
 * Boundary convention (matches PyTorch, checked by the tests at exactly 0 and
 * 6): ReLU'(0) = 0; ReLU6' is 1 only on the open interval (0, 6), like torch's
 * hardtanh backward. That is why ReLU6 is clip_v2 (open interval) and not
 * clip, whose backward passes the gradient at x == beta.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "lk_cpu.h"
#include "lk_layers.h"

#include "lk_silu_simd.h"

/* SiLU: the numerics and the vector helpers are in lk_silu_simd.h. */

/* Portable version: the same steps in plain C (bit moves through memcpy).
 * exp(t) for t in [SILU_TMIN, 0]; a NaN gives NaN bits, never UB. */
static inline float silu_exp1(float t) {
    float j = t * SILU_LOG2E + SILU_SHIFT;
    float k = j - SILU_SHIFT;
    float r = (t - k * SILU_LN2_HI) - k * SILU_LN2_LO;
    float q = (((SILU_Q4 * r + SILU_Q3) * r + SILU_Q2) * r + SILU_Q1) * r + SILU_Q0;
    float p = (q * r + 1.0f) * r + 1.0f;
    uint32_t jb;
    memcpy(&jb, &j, sizeof jb);
    jb <<= 23;
    float scale;
    memcpy(&scale, &jb, sizeof scale);
    return p * scale * SILU_2M64;
}

static inline float silu_sigmoid1(float x) {
    uint32_t xb;
    memcpy(&xb, &x, sizeof xb);
    uint32_t tb = xb | 0x80000000u;
    float t;
    memcpy(&t, &tb, sizeof t);
    t = t < SILU_TMIN ? SILU_TMIN : t; /* a NaN stays NaN; x * s is NaN then anyway */
    float e = silu_exp1(t);
    return ((xb >> 31) ? e : 1.0f) / (1.0f + e);
}

static void silu_fwd_c(float *y, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = x[i] * silu_sigmoid1(x[i]);
}

static void silu_bwd_c(float *dx, const float *dy, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float s = silu_sigmoid1(x[i]);
        dx[i] = dy[i] * (s * (x[i] * (1.0f - s) + 1.0f));
    }
}

#ifdef LK_SILU_X86
LK_AVX2 static void silu_fwd_avx2(float *y, const float *x, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        _mm256_storeu_ps(y + i, _mm256_mul_ps(v, silu_sigmoid8(v)));
    }
    if (i < n) { /* masked, so every element takes the same arithmetic */
        __m256i m = lk_lanes8(n - i);
        __m256 v = _mm256_maskload_ps(x + i, m);
        _mm256_maskstore_ps(y + i, m, _mm256_mul_ps(v, silu_sigmoid8(v)));
    }
}

/* Inference: silu_fast8 (reciprocal estimate and one Newton step). */
LK_AVX2 static void silu_fwd_fast_avx2(float *y, const float *x, int64_t n) {
    int64_t i = 0;
    for (; i < n; i += 8) {
        const int full = i + 8 <= n;
        const __m256i m = full ? _mm256_set1_epi32(-1) : lk_lanes8(n - i);
        __m256 o = silu_fast8(full ? _mm256_loadu_ps(x + i) : _mm256_maskload_ps(x + i, m));
        if (full) _mm256_storeu_ps(y + i, o);
        else _mm256_maskstore_ps(y + i, m, o);
    }
}

LK_AVX2 static void silu_bwd_avx2(float *dx, const float *dy, const float *x, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dx + i, silu_grad8(_mm256_loadu_ps(dy + i), _mm256_loadu_ps(x + i)));
    if (i < n) {
        __m256i m = lk_lanes8(n - i);
        __m256 g = silu_grad8(_mm256_maskload_ps(dy + i, m), _mm256_maskload_ps(x + i, m));
        _mm256_maskstore_ps(dx + i, m, g);
    }
}

LK_AVX512 static inline __m512 silu_sigmoid16(__m512 x) {
    __m512 num, den;
    silu_parts16(x, &num, &den);
    return _mm512_div_ps(num, den); /* exact 1 for e < 2^-24, as AVX2 */
}

/* Full vectors unmasked (masked stores are slow on some cores), the tail masked. */
LK_AVX512 static void silu_fwd_avx512(float *y, const float *x, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i);
        _mm512_storeu_ps(y + i, _mm512_mul_ps(v, silu_sigmoid16(v)));
    }
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(v, silu_sigmoid16(v)));
    }
}

/* Inference: silu_fast16 (rcp14 and one Newton step). */
LK_AVX512 static void silu_fwd_fast_avx512(float *y, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = i + 16 <= n ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(y + i, m, silu_fast16(_mm512_maskz_loadu_ps(m, x + i)));
    }
}

LK_AVX512 static inline __m512 silu_grad16(__m512 g, __m512 v) {
    const __m512 one = _mm512_set1_ps(1.0f);
    __m512 s = silu_sigmoid16(v);
    __m512 u = _mm512_fmadd_ps(v, _mm512_sub_ps(one, s), one);
    return _mm512_mul_ps(g, _mm512_mul_ps(s, u));
}

LK_AVX512 static void silu_bwd_avx512(float *dx, const float *dy, const float *x, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(dx + i, silu_grad16(_mm512_loadu_ps(dy + i), _mm512_loadu_ps(x + i)));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        __m512 g = silu_grad16(_mm512_maskz_loadu_ps(m, dy + i), _mm512_maskz_loadu_ps(m, x + i));
        _mm512_mask_storeu_ps(dx + i, m, g);
    }
}
#endif

enum { SILU_C = LK_ISA_C, SILU_AVX2 = LK_ISA_AVX2, SILU_AVX512 = LK_ISA_AVX512 };

/* The kernel path in force (lk_cpu.h: the widest the CPU has, capped by
 * ONEDNN_MAX_CPU_ISA, or forced by LEUKEMIA_KERNEL_ISA / lk_kernel_isa_set). */
static int silu_isa(void) { return (int)lk_kernel_isa(); }

/* Below this many floats one thread is faster than waking the others. */
#define SILU_PAR_MIN 32768

/* out = silu(a) (b == NULL) or out = a * silu'(b) (a = dy, b = x), split over the
 * threads in contiguous ranges of whole 64-byte lines. */
static void silu_run(float *out, const float *a, const float *b, int64_t n) {
    const int isa = silu_isa();
#pragma omp parallel if (n >= SILU_PAR_MIN)
    {
        int64_t nt = 1, t = 0;
#ifdef _OPENMP
        nt = omp_get_num_threads();
        t = omp_get_thread_num();
#endif
        const int64_t lines = (n + 15) / 16;
        int64_t i0 = lines * t / nt * 16, i1 = lines * (t + 1) / nt * 16;
        if (i1 > n) i1 = n;
        const int64_t m = i1 - i0;
        if (m <= 0) {
        }
#ifdef LK_SILU_X86
        else if (isa == SILU_AVX512) {
            if (b) silu_bwd_avx512(out + i0, a + i0, b + i0, m);
            else silu_fwd_avx512(out + i0, a + i0, m);
        } else if (isa == SILU_AVX2) {
            if (b) silu_bwd_avx2(out + i0, a + i0, b + i0, m);
            else silu_fwd_avx2(out + i0, a + i0, m);
        }
#endif
        else if (b) {
            silu_bwd_c(out + i0, a + i0, b + i0, m);
        } else {
            silu_fwd_c(out + i0, a + i0, m);
        }
    }
}

/* For fused callers that split the work themselves (batchnorm.c's BN+SiLU): the
 * same kernels on the calling thread only, never opening a parallel region. */
static void silu_serial(float *out, const float *a, const float *b, int64_t n) {
    if (n <= 0) return;
#ifdef LK_SILU_X86
    const int isa = silu_isa();
    if (isa == SILU_AVX512) {
        if (b) silu_bwd_avx512(out, a, b, n);
        else silu_fwd_avx512(out, a, n);
        return;
    }
    if (isa == SILU_AVX2) {
        if (b) silu_bwd_avx2(out, a, b, n);
        else silu_fwd_avx2(out, a, n);
        return;
    }
#endif
    if (b) silu_bwd_c(out, a, b, n);
    else silu_fwd_c(out, a, n);
}

void lk_silu_forward_serial(float *y, const float *x, int64_t n) { silu_serial(y, x, NULL, n); }

void lk_silu_forward_fast_serial(float *y, const float *x, int64_t n) {
    if (n <= 0) return;
#ifdef LK_SILU_X86
    const int isa = silu_isa();
    if (isa == SILU_AVX512) {
        silu_fwd_fast_avx512(y, x, n);
        return;
    }
    if (isa == SILU_AVX2) {
        silu_fwd_fast_avx2(y, x, n);
        return;
    }
#endif
    silu_fwd_c(y, x, n);
}

void lk_silu_backward_serial(float *dx, const float *dy, const float *x, int64_t n) {
    silu_serial(dx, dy, x, n);
}

/* ---------------------------------------------------------- oneDNN eltwise */

typedef struct act_alg {
    dnnl_alg_kind_t alg;
    float alpha, beta;
    int use_dst; /* backward reads y instead of x */
} act_alg;

static lk_status act_alg_of(lk_act_kind kind, act_alg *a) {
    switch (kind) {
    case LK_ACT_SILU: *a = (act_alg){dnnl_eltwise_swish, 1.f, 0.f, 0}; return LK_OK; /* unused */
    case LK_ACT_SIGMOID: *a = (act_alg){dnnl_eltwise_logistic_use_dst_for_bwd, 0.f, 0.f, 1}; return LK_OK;
    case LK_ACT_RELU: *a = (act_alg){dnnl_eltwise_relu, 0.f, 0.f, 0}; return LK_OK;
    case LK_ACT_RELU6: *a = (act_alg){dnnl_eltwise_clip_v2, 0.f, 6.f, 0}; return LK_OK;
    }
    return LK_FAIL(LK_ERR_ARG, "activation: unknown kind %d", (int)kind);
}

lk_status lk_act_init(lk_act *L, lk_act_kind kind, int64_t count, int train) {
    memset(L, 0, sizeof *L);
    act_alg a = {0};
    LK_TRY(act_alg_of(kind, &a));
    LK_REQUIRE(count > 0, "activation: count must be positive, got %lld", (long long)count);
    L->kind = kind;
    L->count = count;
    L->train = train;
    if (kind == LK_ACT_SILU) return LK_OK; /* plain C: nothing to plan */

    dnnl_engine_t eng = NULL;
    LK_TRY(lk_engine(&eng));
    lk_status st = LK_OK;
    dnnl_memory_desc_t md = NULL;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t pd = NULL;

    LK_TRY_GOTO(lk_md1(&md, count)); /* [count]: x, y, dx, dy all share it */
    LK_TRY_GOTO(lk_attr(&attr));
    LK_DNNL_GOTO(dnnl_eltwise_forward_primitive_desc_create(
        &pd, eng, train ? dnnl_forward_training : dnnl_forward_inference, a.alg, md, md, a.alpha,
        a.beta, attr));
    LK_TRY_GOTO(lk_prim_init(&L->fwd, &pd));
    pd = NULL;
    LK_TRY_GOTO(lk_mem(&L->m_x, md));
    LK_TRY_GOTO(lk_mem(&L->m_y, md));
    if (train) {
        LK_DNNL_GOTO(dnnl_eltwise_backward_primitive_desc_create(&pd, eng, a.alg, md, md, md, a.alpha,
                                                       a.beta, L->fwd.pd, attr));
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

lk_status lk_act_forward(lk_act *L, float *y, const float *x) {
    LK_REQUIRE(L->count > 0 && (L->kind == LK_ACT_SILU || L->fwd.p),
               "activation: layer not initialised");
    LK_REQUIRE(y && x, "activation forward: NULL argument");
    if (L->kind == LK_ACT_SILU) {
        silu_run(y, x, NULL, L->count);
        return LK_OK;
    }
    LK_TRY(lk_mem_set(L->m_x, x));
    LK_TRY(lk_mem_set(L->m_y, y));
    const dnnl_exec_arg_t args[] = {{DNNL_ARG_SRC, L->m_x}, {DNNL_ARG_DST, L->m_y}};
    return lk_prim_exec(&L->fwd, 2, args);
}

lk_status lk_act_backward(lk_act *L, float *dx, const float *dy, const float *x, const float *y) {
    LK_REQUIRE(L->kind == LK_ACT_SILU ? L->train && L->count > 0 : L->bwd.p != NULL,
               "activation backward: layer was planned without backward (train=0)");
    act_alg a = {0};
    LK_TRY(act_alg_of(L->kind, &a));
    const float *data = a.use_dst ? y : x;
    LK_REQUIRE(dx && dy, "activation backward: dx and dy are required");
    LK_REQUIRE(data, "activation backward: %s is required for this activation",
               a.use_dst ? "y" : "x");
    if (L->kind == LK_ACT_SILU) {
        silu_run(dx, dy, x, L->count);
        return LK_OK;
    }
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
