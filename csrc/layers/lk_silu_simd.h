/* SiLU's numerics and its vector steps, shared by activation.c (the SiLU layer and
 * the fused BN+SiLU passes) and the kernels that apply SiLU in registers before their
 * results reach memory (expand_dw.c). Not a public header. */
#ifndef LK_SILU_SIMD_H
#define LK_SILU_SIMD_H

#include <stdint.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define LK_SILU_X86 1
#include <immintrin.h>
#endif

/* ------------------------------------------------------------------ SiLU
 * sigmoid from e = exp(-|x|), which lies in [0, 1] and never overflows:
 *   s = 1 / (1 + e) for x >= 0,   s = e / (1 + e) for x < 0,
 * so s keeps its relative accuracy on both tails. Then
 *   forward   y = x * s
 *   backward dx = dy * (s * (1 + x * (1 - s)))   (torch's formula, also its sign of zero)
 * exp(t), t = max(-|x|, -104): t = k ln2 + r with |r| <= ln2/2 (ln2 in two parts,
 * Cody-Waite), e^r = 1 + r (1 + r q(r)) with q of degree 4 fitted for the least
 * maximum relative error (3e-9 before float rounding), 2^k written into the exponent
 * bits. k goes down to -150, below the normal range, so 2^k is applied as 2^(k+64) then
 * 2^-64: a single rounding into the subnormals, and exactly 0 below e^-104.
 * Special values as torch: silu(nan) = nan, silu(inf) = inf, silu(-inf) = nan
 * (-inf * 0), silu(-1e4) = -0; the gradient is nan at nan and at +-inf. */
#define SILU_LOG2E 1.44269504088896341f
#define SILU_LN2_HI 0.693145751953125f        /* 0x3f317200: k * LN2_HI is exact */
#define SILU_LN2_LO 1.42860682030941723e-6f   /* ln2 - LN2_HI */
#define SILU_TMIN (-104.0f)                   /* e^-104 rounds to 0 */
#define SILU_2M64 5.42101086242752217e-20f    /* 2^-64 */
/* 1.5 * 2^23 + 191: adding it rounds t*log2(e) to an integer k, and the float's low
 * mantissa bits then hold k + 64 + 127, the biased exponent of 2^(k+64). */
#define SILU_SHIFT 12583103.0f
#define SILU_Q0 0.4999999403953552f
#define SILU_Q1 0.1666652113199234f
#define SILU_Q2 0.04166838899254799f
#define SILU_Q3 0.008368710055947304f
#define SILU_Q4 0.001381461275741458f

#ifdef LK_SILU_X86
#define LK_AVX2 __attribute__((target("avx2,fma")))

/* Lanes [0, rem) set (all 8 for rem >= 8): the mask of a tail, for every AVX2 kernel
 * that includes this header. */
LK_AVX2 static inline __m256i lk_lanes8(int64_t rem) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(rem < 8 ? rem : 8)),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* exp(t) for t in [SILU_TMIN, 0], 8 lanes. */
LK_AVX2 static inline __m256 silu_exp8(__m256 t) {
    const __m256 one = _mm256_set1_ps(1.0f);
    __m256 j = _mm256_fmadd_ps(t, _mm256_set1_ps(SILU_LOG2E), _mm256_set1_ps(SILU_SHIFT));
    __m256 k = _mm256_sub_ps(j, _mm256_set1_ps(SILU_SHIFT));
    __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(SILU_LN2_HI), t);
    r = _mm256_fnmadd_ps(k, _mm256_set1_ps(SILU_LN2_LO), r);
    __m256 q = _mm256_fmadd_ps(_mm256_set1_ps(SILU_Q4), r, _mm256_set1_ps(SILU_Q3));
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(SILU_Q2));
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(SILU_Q1));
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(SILU_Q0));
    __m256 p = _mm256_fmadd_ps(_mm256_fmadd_ps(q, r, one), r, one);
    __m256 scale = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(j), 23));
    return _mm256_mul_ps(_mm256_mul_ps(p, scale), _mm256_set1_ps(SILU_2M64));
}

/* sigmoid(x) = *num / *den: num = 1 (x >= 0) or e (x < 0), den = 1 + e, e = exp(-|x|). */
LK_AVX2 static inline void silu_parts8(__m256 x, __m256 *num, __m256 *den) {
    const __m256 one = _mm256_set1_ps(1.0f);
    /* -|x|; max() returns its second operand for a NaN, x * s is NaN regardless. */
    __m256 t = _mm256_max_ps(_mm256_or_ps(x, _mm256_set1_ps(-0.0f)), _mm256_set1_ps(SILU_TMIN));
    __m256 e = silu_exp8(t);
    *num = _mm256_blendv_ps(one, e, x); /* e where x's sign bit is set */
    *den = _mm256_add_ps(one, e);
}

/* Training: sigmoid by a true division. */
LK_AVX2 static inline __m256 silu_sigmoid8(__m256 x) {
    __m256 num, den;
    silu_parts8(x, &num, &den);
    /* A true division: s must be exactly 1 once e < 2^-24, or x * (1 - s) in the
     * gradient blows up for large x (a reciprocal estimate plus Newton step gives
     * 1 - 2^-24 at d = 1). */
    return _mm256_div_ps(num, den);
}

/* The gradient g * silu'(v), torch's formula. */
LK_AVX2 static inline __m256 silu_grad8(__m256 g, __m256 v) {
    const __m256 one = _mm256_set1_ps(1.0f);
    __m256 s = silu_sigmoid8(v);
    __m256 u = _mm256_fmadd_ps(v, _mm256_sub_ps(one, s), one);
    return _mm256_mul_ps(g, _mm256_mul_ps(s, u));
}

#define LK_AVX512 __attribute__((target("avx512f")))

/* The AVX2 steps in 16 lanes; scalef applies 2^k with one rounding into the
 * subnormals, so the 2^(k+64) * 2^-64 detour is not needed. */
LK_AVX512 static inline __m512 silu_exp16(__m512 t) {
    const __m512 one = _mm512_set1_ps(1.0f);
    __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(t, _mm512_set1_ps(SILU_LOG2E)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(SILU_LN2_HI), t);
    r = _mm512_fnmadd_ps(k, _mm512_set1_ps(SILU_LN2_LO), r);
    __m512 q = _mm512_fmadd_ps(_mm512_set1_ps(SILU_Q4), r, _mm512_set1_ps(SILU_Q3));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(SILU_Q2));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(SILU_Q1));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(SILU_Q0));
    __m512 p = _mm512_fmadd_ps(_mm512_fmadd_ps(q, r, one), r, one);
    return _mm512_scalef_ps(p, k);
}

/* silu_parts8 in 16 lanes. */
LK_AVX512 static inline void silu_parts16(__m512 x, __m512 *num, __m512 *den) {
    const __m512 one = _mm512_set1_ps(1.0f);
    const __m512i sign = _mm512_set1_epi32((int)0x80000000u);
    __m512i xi = _mm512_castps_si512(x);
    __m512 t = _mm512_max_ps(_mm512_castsi512_ps(_mm512_or_si512(xi, sign)),
                             _mm512_set1_ps(SILU_TMIN));
    __m512 e = silu_exp16(t);
    *num = _mm512_mask_blend_ps(_mm512_test_epi32_mask(xi, sign), one, e);
    *den = _mm512_add_ps(one, e);
}

/* Inference: x * sigmoid(x) as x / (1 + exp(-x)), the reciprocal from the estimate (12
 * bits) and one Newton step instead of the divider, about 2^-22 relative. Without the
 * training form's sign split: x is clamped to [-88.3, 88.3], so that exp(-x) stays
 * finite and its 2^k normal (k <= 127, the bias folded into SILU_SHIFT_FAST, no 2^-64
 * detour); the same polynomial, in -r. Below -87.3 the reciprocal underflows to 0 and
 * the result is -0, as torch's float32 (-inf gives NaN, inf and NaN pass through).
 * Four operations fewer than the split form: 0.73-0.82x its time in a loop over L1,
 * at most 2.3e-7 relative against double over [-110, 110] (the split form 2.9e-7). */
#define SILU_SHIFT_FAST 12583039.0f /* 1.5 * 2^23 + 127: the low bits hold k + 127 */
#define SILU_CLAMP_FAST 88.3f
LK_AVX2 static inline __m256 silu_fast8(__m256 v) {
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 xc = _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(-SILU_CLAMP_FAST)),
                                    _mm256_set1_ps(SILU_CLAMP_FAST));
    /* exp(-xc) = 2^k e^r: j = -xc log2(e) + shift, rn = xc + k ln2 = -r */
    const __m256 j = _mm256_fnmadd_ps(xc, _mm256_set1_ps(SILU_LOG2E),
                                      _mm256_set1_ps(SILU_SHIFT_FAST));
    const __m256 k = _mm256_sub_ps(j, _mm256_set1_ps(SILU_SHIFT_FAST));
    __m256 rn = _mm256_fmadd_ps(k, _mm256_set1_ps(SILU_LN2_HI), xc);
    rn = _mm256_fmadd_ps(k, _mm256_set1_ps(SILU_LN2_LO), rn);
    /* e^r = 1 + r (1 + r q(r)): the odd coefficients change sign in rn */
    __m256 q = _mm256_fmadd_ps(_mm256_set1_ps(SILU_Q4), rn, _mm256_set1_ps(-SILU_Q3));
    q = _mm256_fmadd_ps(q, rn, _mm256_set1_ps(SILU_Q2));
    q = _mm256_fmadd_ps(q, rn, _mm256_set1_ps(-SILU_Q1));
    q = _mm256_fmadd_ps(q, rn, _mm256_set1_ps(SILU_Q0));
    const __m256 p = _mm256_fnmadd_ps(_mm256_fnmadd_ps(q, rn, one), rn, one);
    const __m256 scale = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(j), 23));
    const __m256 d = _mm256_fmadd_ps(p, scale, one); /* 1 + exp(-xc) */
    __m256 r = _mm256_rcp_ps(d);
    r = _mm256_mul_ps(r, _mm256_fnmadd_ps(d, r, _mm256_set1_ps(2.0f)));
    return _mm256_mul_ps(v, r);
}

/* silu_fast8 in 16 lanes: rcp14 and one Newton step (about 2^-27 relative). */
LK_AVX512 static inline __m512 silu_fast16(__m512 v) {
    __m512 num, d;
    silu_parts16(v, &num, &d);
    __m512 r = _mm512_rcp14_ps(d);
    r = _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0f)));
    return _mm512_mul_ps(v, _mm512_mul_ps(num, r));
}
#endif

#endif
