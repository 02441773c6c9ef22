/* Run-time choice of the instruction set of the hand-written kernels.
 *
 * The extension is built without build-machine flags (no -mavx2, no -march), so
 * one binary runs on any x86-64 CPU. Each hand-written kernel exists as plain C,
 * an AVX2+FMA and an AVX-512 variant (functions with __attribute__((target))),
 * and calls the one lk_kernel_isa() names. oneDNN dispatches its own JIT kernels
 * independently (ONEDNN_MAX_CPU_ISA caps those).
 *
 * The path in force is resolved once, on first use: LEUKEMIA_KERNEL_ISA
 * (avx512 | avx2 | c | auto) when it names a path this CPU has, otherwise the
 * widest path the CPU has, capped like oneDNN by ONEDNN_MAX_CPU_ISA (so an
 * `ONEDNN_MAX_CPU_ISA=AVX2` run shows an AVX2-only machine's kernels too).
 * lk_kernel_isa_set changes it at any time; a path the CPU lacks is refused
 * with a message (never run: that would be SIGILL). The core does not report a
 * bad LEUKEMIA_KERNEL_ISA itself (it never prints); the Python package checks
 * it with lk_kernel_isa_set and raises.
 *
 * Usage for a plain-C loop that should vectorise for the path in force: write
 * its body as an always-inline function `NAME_body`, instantiate the variants
 * with LK_KERNEL_CLONES and call through LK_KERNEL_PICK(NAME). The variants must
 * not open OpenMP parallel regions themselves (an outlined region would be
 * compiled for the default target): split the work outside and call them per
 * thread or per task.
 */
#ifndef LK_CPU_H
#define LK_CPU_H

#include "lk_status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum lk_kernel_isa_t {
    LK_ISA_C = 0,    /* portable C (SSE2 at most, the x86-64 baseline) */
    LK_ISA_AVX2 = 1, /* AVX2 + FMA */
    LK_ISA_AVX512 = 2 /* AVX-512 F, DQ, BW, VL (plus AVX2 + FMA) */
} lk_kernel_isa_t;

/* The path in force (resolved on first call, see above). Cheap: one atomic load. */
lk_kernel_isa_t lk_kernel_isa(void);

/* Force a path by name: "avx512", "avx2", "c", or "auto" (the widest the CPU has,
 * capped by ONEDNN_MAX_CPU_ISA as read now; LEUKEMIA_KERNEL_ISA is not consulted). Fails with
 * LK_ERR_ARG for an unknown name or a path this CPU does not have; the path in
 * force is then unchanged. Not meant to race with running kernels (a kernel
 * reads the path once per call, so either path is correct). */
lk_status lk_kernel_isa_set(const char *name);

/* Whether this CPU (and its OS) can run `isa`. */
int lk_kernel_isa_supported(lk_kernel_isa_t isa);

/* Tests only: treat the paths whose bit (1 << isa) is set in `mask` as absent from
 * this CPU (plain C is never hidden); 0 restores the truth. Does not change the
 * path in force. */
void lk_kernel_isa_hide_for_tests(unsigned mask);

/* "avx512", "avx2" or "c". */
const char *lk_kernel_isa_name(lk_kernel_isa_t isa);

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define LK_X86 1
#define LK_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define LK_TARGET_AVX512 \
    __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")))
#define LK_ALWAYS_INLINE static inline __attribute__((always_inline))

/* void NAME_c(PARAMS), NAME_avx2(PARAMS), NAME_avx512(PARAMS), each the inlined
 * NAME_body(ARGS) compiled for its instruction set. */
#define LK_KERNEL_CLONES(name, params, args)                                  \
    static void name##_c params { name##_body args; }                         \
    LK_TARGET_AVX2 static void name##_avx2 params { name##_body args; }       \
    LK_TARGET_AVX512 static void name##_avx512 params { name##_body args; }

#define LK_KERNEL_PICK(name)                                   \
    (lk_kernel_isa() == LK_ISA_AVX512 ? name##_avx512          \
     : lk_kernel_isa() == LK_ISA_AVX2 ? name##_avx2 : name##_c)
#else
#define LK_ALWAYS_INLINE static inline
#define LK_KERNEL_CLONES(name, params, args) \
    static void name##_c params { name##_body args; }
#define LK_KERNEL_PICK(name) name##_c
#endif

#ifdef __cplusplus
}
#endif
#endif
