#include "lk_dnnl.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "oneapi/dnnl/dnnl_debug.h"

static dnnl_engine_t lk_engine_;
static dnnl_status_t lk_engine_status_ = dnnl_success;
static pthread_once_t lk_engine_once_ = PTHREAD_ONCE_INIT;
static _Thread_local dnnl_stream_t lk_stream_;
static atomic_uint_fast64_t lk_exec_count_, lk_reorder_count_, lk_weight_reorder_count_;

const char *lk_dnnl_status_str(dnnl_status_t s) { return dnnl_status2str(s); }

static void lk_engine_create_once(void) { lk_engine_status_ = dnnl_engine_create(&lk_engine_, dnnl_cpu, 0); }

lk_status lk_engine(dnnl_engine_t *out) {
    pthread_once(&lk_engine_once_, lk_engine_create_once);
    if (lk_engine_status_ != dnnl_success || !lk_engine_)
        return LK_FAIL(LK_ERR_DNNL, "cannot create the oneDNN CPU engine: %s",
                       dnnl_status2str(lk_engine_status_));
    *out = lk_engine_;
    return LK_OK;
}

/* A thread's stream is destroyed when the thread exits (Python may call the core
 * from many short-lived threads). */
static pthread_key_t lk_stream_key_;
static pthread_once_t lk_stream_key_once_ = PTHREAD_ONCE_INIT;

static void lk_stream_destroy(void *s) {
    if (s) dnnl_stream_destroy((dnnl_stream_t)s);
}

static void lk_stream_key_create(void) { pthread_key_create(&lk_stream_key_, lk_stream_destroy); }

lk_status lk_stream(dnnl_stream_t *out) {
    if (!lk_stream_) {
        dnnl_engine_t e = NULL;
        LK_TRY(lk_engine(&e));
        LK_DNNL(dnnl_stream_create(&lk_stream_, e, dnnl_stream_default_flags));
        pthread_once(&lk_stream_key_once_, lk_stream_key_create);
        pthread_setspecific(lk_stream_key_, lk_stream_);
    }
    *out = lk_stream_;
    return LK_OK;
}

void lk_shutdown(void) {
    if (lk_stream_) {
        pthread_setspecific(lk_stream_key_, NULL);
        dnnl_stream_destroy(lk_stream_);
        lk_stream_ = NULL;
    }
    /* The engine lives for the process (pthread_once cannot be re-armed); the
     * C tests destroy it here so that LeakSanitizer sees a clean exit. */
    if (lk_engine_) {
        dnnl_engine_destroy(lk_engine_);
        lk_engine_ = NULL;
        lk_engine_status_ = dnnl_invalid_arguments;
    }
}

static const char *lk_isa_name(dnnl_cpu_isa_t isa) {
    switch (isa) {
    case dnnl_cpu_isa_sse41: return "sse41";
    case dnnl_cpu_isa_avx: return "avx";
    case dnnl_cpu_isa_avx2: return "avx2";
    case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni";
    case dnnl_cpu_isa_avx2_vnni_2: return "avx2_vnni_2";
    case dnnl_cpu_isa_avx512_core: return "avx512_core";
    case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_fp16: return "avx512_core_fp16";
    case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx";
    case dnnl_cpu_isa_avx512_core_amx_fp16: return "avx512_core_amx_fp16";
    default: return "unknown";
    }
}

void lk_get_build_info(lk_build_info *info) {
    const dnnl_version_t *v = dnnl_version();
    info->dnnl_major = v->major;
    info->dnnl_minor = v->minor;
    info->dnnl_patch = v->patch;
    info->dnnl_hash = v->hash;
    switch (v->cpu_runtime) {
    case DNNL_RUNTIME_OMP: info->cpu_runtime = "OpenMP"; break;
    case DNNL_RUNTIME_TBB: info->cpu_runtime = "TBB"; break;
    case DNNL_RUNTIME_SEQ: info->cpu_runtime = "sequential"; break;
    case DNNL_RUNTIME_THREADPOOL: info->cpu_runtime = "threadpool"; break;
    case DNNL_RUNTIME_SYCL: info->cpu_runtime = "SYCL"; break;
    default: info->cpu_runtime = "unknown"; break;
    }
    info->isa = lk_isa_name(dnnl_get_effective_cpu_isa());
}

void *lk_alloc(size_t bytes) {
    if (bytes == 0) bytes = 64;
    size_t rounded = (bytes + 63) & ~(size_t)63;
    return aligned_alloc(64, rounded);
}

void lk_free(void *p) { free(p); }

/* Failure injection for the C tests: the n-th following lk_prim_init fails. */
static _Atomic int lk_fail_countdown_ = -1;

void lk_debug_fail_prim_init_after(int n) { lk_fail_countdown_ = n; }

lk_status lk_prim_init(lk_prim *P, dnnl_primitive_desc_t *pdp) {
    /* Take ownership at once: from here on only P (via lk_prim_free) releases it. */
    dnnl_primitive_desc_t pd = *pdp;
    *pdp = NULL;
    memset(P, 0, sizeof *P);
    P->pd = pd;
    /* oneDNN reads the thread count now and sizes the primitive's work by it. */
    LK_TRY(lk_thread_enter());
    if (lk_fail_countdown_ >= 0 && lk_fail_countdown_-- == 0)
        return LK_FAIL(LK_ERR_DNNL, "injected primitive-creation failure (test hook)");
    LK_DNNL(dnnl_primitive_create(&P->p, pd));
    const_dnnl_memory_desc_t smd = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    size_t sz = smd ? dnnl_memory_desc_get_size(smd) : 0;
    if (sz > 0) {
        P->scratch_buf = lk_alloc(sz);
        if (!P->scratch_buf) return LK_FAIL(LK_ERR_NOMEM, "scratchpad of %zu bytes", sz);
        dnnl_engine_t e = NULL;
        LK_TRY(lk_engine(&e));
        LK_DNNL(dnnl_memory_create(&P->scratch, smd, e, P->scratch_buf));
    }
    return LK_OK;
}

lk_status lk_prim_exec(lk_prim *P, int nargs, const dnnl_exec_arg_t *args) {
    dnnl_exec_arg_t all[16];
    if (nargs > 15) return LK_FAIL(LK_ERR_ARG, "too many primitive arguments (%d)", nargs);
    memcpy(all, args, sizeof(dnnl_exec_arg_t) * (size_t)nargs);
    if (P->scratch) all[nargs++] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, P->scratch};
    dnnl_stream_t s = NULL;
    LK_TRY(lk_thread_enter()); /* the team it asks for must be the one it gets */
    LK_TRY(lk_stream(&s));
    LK_DNNL(dnnl_primitive_execute(P->p, s, nargs, all));
    LK_DNNL(dnnl_stream_wait(s));
    atomic_fetch_add(&lk_exec_count_, 1);
    dnnl_primitive_kind_t kind = dnnl_undefined_primitive;
    if (dnnl_primitive_desc_query(P->pd, dnnl_query_primitive_kind, 0, &kind) == dnnl_success &&
        kind == dnnl_reorder) {
        atomic_fetch_add(&lk_reorder_count_, 1);
        if (P->weights) atomic_fetch_add(&lk_weight_reorder_count_, 1);
    }
    return LK_OK;
}

void lk_prim_free(lk_prim *P) {
    if (!P) return;
    if (P->p) dnnl_primitive_destroy(P->p);
    if (P->pd) dnnl_primitive_desc_destroy(P->pd);
    if (P->scratch) dnnl_memory_destroy(P->scratch);
    lk_free(P->scratch_buf);
    memset(P, 0, sizeof *P);
}

const_dnnl_memory_desc_t lk_prim_md(const lk_prim *P, dnnl_query_t what, int index) {
    return dnnl_primitive_desc_query_md(P->pd, what, index);
}

lk_status lk_attr(dnnl_primitive_attr_t *attr) {
    LK_DNNL(dnnl_primitive_attr_create(attr));
    dnnl_status_t s = dnnl_primitive_attr_set_scratchpad_mode(*attr, dnnl_scratchpad_mode_user);
    if (s != dnnl_success) {
        dnnl_primitive_attr_destroy(*attr);
        *attr = NULL;
        LK_DNNL_NAMED(s, "dnnl_primitive_attr_set_scratchpad_mode");
    }
    return LK_OK;
}

lk_status lk_md(dnnl_memory_desc_t *md, int ndims, const int64_t *dims, dnnl_format_tag_t tag) {
    dnnl_dims_t d;
    for (int i = 0; i < ndims; i++) d[i] = dims[i];
    LK_DNNL(dnnl_memory_desc_create_with_tag(md, ndims, d, dnnl_f32, tag));
    return LK_OK;
}

lk_status lk_md4(dnnl_memory_desc_t *md, int64_t a, int64_t b, int64_t c, int64_t d,
                 dnnl_format_tag_t tag) {
    const int64_t dims[4] = {a, b, c, d};
    return lk_md(md, 4, dims, tag);
}

lk_status lk_md2(dnnl_memory_desc_t *md, int64_t a, int64_t b, dnnl_format_tag_t tag) {
    const int64_t dims[2] = {a, b};
    return lk_md(md, 2, dims, tag);
}

lk_status lk_md1(dnnl_memory_desc_t *md, int64_t a) { return lk_md(md, 1, &a, dnnl_a); }

lk_status lk_mem(dnnl_memory_t *mem, const_dnnl_memory_desc_t md) {
    dnnl_engine_t e = NULL;
    LK_TRY(lk_engine(&e));
    LK_DNNL(dnnl_memory_create(mem, md, e, DNNL_MEMORY_NONE));
    return LK_OK;
}

lk_status lk_mem_set(dnnl_memory_t mem, const void *ptr) {
    LK_DNNL(dnnl_memory_set_data_handle(mem, (void *)ptr));
    return LK_OK;
}

void lk_mem_free(dnnl_memory_t *mem) {
    if (*mem) dnnl_memory_destroy(*mem);
    *mem = NULL;
}

lk_status lk_reorder_init(lk_prim *P, int *needed, const_dnnl_memory_desc_t from,
                          const_dnnl_memory_desc_t to) {
    memset(P, 0, sizeof *P);
    *needed = !dnnl_memory_desc_equal(from, to);
    if (!*needed) return LK_OK;
    dnnl_engine_t e = NULL;
    LK_TRY(lk_engine(&e));
    dnnl_primitive_attr_t attr;
    LK_TRY(lk_attr(&attr));
    dnnl_primitive_desc_t pd;
    dnnl_status_t s = dnnl_reorder_primitive_desc_create(&pd, from, e, to, e, attr);
    dnnl_primitive_attr_destroy(attr);
    LK_DNNL_NAMED(s, "dnnl_reorder_primitive_desc_create");
    return lk_prim_init(P, &pd);
}

uint64_t lk_exec_count(void) { return atomic_load(&lk_exec_count_); }
uint64_t lk_reorder_exec_count(void) { return atomic_load(&lk_reorder_count_); }
uint64_t lk_weight_reorder_exec_count(void) { return atomic_load(&lk_weight_reorder_count_); }
