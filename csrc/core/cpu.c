/* Run-time choice of the hand-written kernels' instruction set (see lk_cpu.h). */
#define _POSIX_C_SOURCE 200809L
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lk_cpu.h"

/* The path in force; -1 until first resolved. Resolving twice at once is
 * harmless: both threads compute the same value. */
static _Atomic int g_isa = -1;

/* Bit i set: path i treated as absent (tests of the refusal on any machine). */
static _Atomic unsigned g_hidden = 0;

void lk_kernel_isa_hide_for_tests(unsigned mask) {
    atomic_store_explicit(&g_hidden, mask & ~1u, memory_order_relaxed); /* C never hides */
}

int lk_kernel_isa_supported(lk_kernel_isa_t isa) {
    if (atomic_load_explicit(&g_hidden, memory_order_relaxed) & (1u << isa)) return 0;
#ifdef LK_X86
    /* libgcc's cpu model also checks that the OS saves the YMM/ZMM state (XCR0). */
    __builtin_cpu_init();
    const int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    switch (isa) {
    case LK_ISA_C: return 1;
    case LK_ISA_AVX2: return avx2;
    case LK_ISA_AVX512:
        return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
    }
    return 0;
#else
    return isa == LK_ISA_C;
#endif
}

const char *lk_kernel_isa_name(lk_kernel_isa_t isa) {
    switch (isa) {
    case LK_ISA_AVX512: return "avx512";
    case LK_ISA_AVX2: return "avx2";
    default: return "c";
    }
}

/* -1 for "auto" (or empty), -2 for an unknown name. */
static int parse_isa(const char *name) {
    if (!name || !*name || !strcasecmp(name, "auto")) return -1;
    if (!strcasecmp(name, "avx512")) return LK_ISA_AVX512;
    if (!strcasecmp(name, "avx2")) return LK_ISA_AVX2;
    if (!strcasecmp(name, "c")) return LK_ISA_C;
    return -2;
}

/* The widest supported path, capped by ONEDNN_MAX_CPU_ISA as oneDNN caps its own
 * kernels: a value naming AVX-512 (or ALL) allows everything, one naming AVX2
 * allows AVX2, anything older (SSE41, AVX) plain C. */
static int auto_isa(void) {
    int max = LK_ISA_AVX512;
    const char *cap = getenv("ONEDNN_MAX_CPU_ISA");
    if (cap && *cap && !strstr(cap, "512") && strncasecmp(cap, "all", 3) != 0)
        max = (strstr(cap, "AVX2") || strstr(cap, "avx2")) ? LK_ISA_AVX2 : LK_ISA_C;
    for (int i = max; i > LK_ISA_C; i--)
        if (lk_kernel_isa_supported((lk_kernel_isa_t)i)) return i;
    return LK_ISA_C;
}

/* LEUKEMIA_KERNEL_ISA when it names a supported path, else auto. */
static int resolve(void) {
    int want = parse_isa(getenv("LEUKEMIA_KERNEL_ISA"));
    if (want >= 0 && lk_kernel_isa_supported((lk_kernel_isa_t)want)) return want;
    return auto_isa();
}

lk_kernel_isa_t lk_kernel_isa(void) {
    int isa = atomic_load_explicit(&g_isa, memory_order_relaxed);
    if (isa < 0) {
        isa = resolve();
        atomic_store_explicit(&g_isa, isa, memory_order_relaxed);
    }
    return (lk_kernel_isa_t)isa;
}

lk_status lk_kernel_isa_set(const char *name) {
    const int want = parse_isa(name);
    LK_REQUIRE(want != -2, "kernel ISA '%s' unknown: expected avx512, avx2, c or auto",
               name ? name : "(null)");
    if (want == -1) {
        atomic_store_explicit(&g_isa, auto_isa(), memory_order_relaxed);
        return LK_OK;
    }
    LK_REQUIRE(lk_kernel_isa_supported((lk_kernel_isa_t)want),
               "kernel ISA '%s' is not supported by this CPU (it needs %s); the CPU runs: %s%s"
               "c",
               name,
               want == LK_ISA_AVX512 ? "AVX-512 F/DQ/BW/VL, AVX2 and FMA" : "AVX2 and FMA",
               lk_kernel_isa_supported(LK_ISA_AVX512) ? "avx512, " : "",
               lk_kernel_isa_supported(LK_ISA_AVX2) ? "avx2, " : "");
    atomic_store_explicit(&g_isa, want, memory_order_relaxed);
    return LK_OK;
}
