/* oneDNN plumbing shared by every layer: engine and stream, a checked-call
 * macro, primitives with their scratchpad, and memory objects whose data
 * handle is set per call (so a layer is planned once and reused).
 *
 * Layout convention of the whole core: activations are NHWC (channels last,
 * oneDNN tag `nhwc`), parameters keep PyTorch's layout (OIHW / GOIHW) so that
 * NumPy views of them are torchvision-shaped. Layers reorder weights to the
 * format oneDNN prefers internally.
 */
#ifndef LK_DNNL_H
#define LK_DNNL_H

#include <stddef.h>
#include <stdint.h>

#include "oneapi/dnnl/dnnl.h"
#include "lk_status.h"
#include "lk_threads.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Wrap every oneDNN call: on failure record expression, file, line and
 * dnnl_status2str, then return LK_ERR_DNNL from the enclosing function. */
#define LK_DNNL(expr)                                                              \
    do {                                                                           \
        dnnl_status_t lk_dnnl_s_ = (expr);                                         \
        if (lk_dnnl_s_ != dnnl_success)                                            \
            return lk_fail(LK_ERR_DNNL, __FILE__, __LINE__, "oneDNN call %s failed: %s", \
                           #expr, lk_dnnl_status_str(lk_dnnl_s_));                 \
    } while (0)

const char *lk_dnnl_status_str(dnnl_status_t s);

/* For a status already obtained: fail naming the call `what`. */
#define LK_DNNL_NAMED(status, what)                                                     \
    do {                                                                                \
        dnnl_status_t lk_dnnl_s_ = (status);                                            \
        if (lk_dnnl_s_ != dnnl_success)                                                 \
            return lk_fail(LK_ERR_DNNL, __FILE__, __LINE__, "oneDNN call %s failed: %s", \
                           (what), lk_dnnl_status_str(lk_dnnl_s_));                     \
    } while (0)

/* The same two checks for init functions that hold descriptors: they need a local
 * `lk_status st` and a `done:` label that releases everything and returns st. */
#define LK_TRY_GOTO(expr)                 \
    do {                                  \
        st = (expr);                      \
        if (st != LK_OK) goto done;       \
    } while (0)
#define LK_DNNL_GOTO(expr)                                                              \
    do {                                                                                \
        dnnl_status_t lk_dnnl_s_ = (expr);                                              \
        if (lk_dnnl_s_ != dnnl_success) {                                               \
            st = lk_fail(LK_ERR_DNNL, __FILE__, __LINE__, "oneDNN call %s failed: %s", \
                         #expr, lk_dnnl_status_str(lk_dnnl_s_));                        \
            goto done;                                                                  \
        }                                                                               \
    } while (0)

/* Process-wide CPU engine (created on first use, thread-safe). */
lk_status lk_engine(dnnl_engine_t *out);
/* This thread's stream on the engine (created on first use). */
lk_status lk_stream(dnnl_stream_t *out);
/* Release the engine and the calling thread's stream and scratchpad
 * (for leak-checked C tests; safe to call more than once). */
void lk_shutdown(void);

/* Build facts for leukemia.build_info(). */
typedef struct lk_build_info {
    int dnnl_major, dnnl_minor, dnnl_patch;
    const char *dnnl_hash;
    const char *cpu_runtime; /* "OpenMP", "TBB", "sequential", ... */
    const char *isa;         /* ISA oneDNN dispatches to, e.g. "avx2" */
} lk_build_info;
void lk_get_build_info(lk_build_info *info);

/* A primitive with its own descriptor and user-mode scratchpad. */
typedef struct lk_prim {
    dnnl_primitive_desc_t pd; /* owned */
    dnnl_primitive_t p;       /* owned */
    dnnl_memory_t scratch;    /* owned, NULL if the primitive needs none */
    void *scratch_buf;        /* owned, 64-byte aligned */
    int weights;              /* a weight reorder (counted apart from activation reorders) */
} lk_prim;

/* Take ownership of `*pd` (setting it to NULL, even on failure: lk_prim_free then
 * releases it) and create the primitive. */
lk_status lk_prim_init(lk_prim *P, dnnl_primitive_desc_t *pd);
/* Test hook: make the n-th following lk_prim_init fail (n < 0: never). */
void lk_debug_fail_prim_init_after(int n);
/* Execute with `args` (scratchpad appended) and wait for completion. */
lk_status lk_prim_exec(lk_prim *P, int nargs, const dnnl_exec_arg_t *args);
void lk_prim_free(lk_prim *P);
/* Memory descriptor the primitive chose for `what` (dnnl_query_src_md, ...). */
const_dnnl_memory_desc_t lk_prim_md(const lk_prim *P, dnnl_query_t what, int index);

/* Primitive attributes with the scratchpad in user mode (caller destroys). */
lk_status lk_attr(dnnl_primitive_attr_t *attr);

/* Plain memory descriptors (caller destroys with dnnl_memory_desc_destroy). */
lk_status lk_md(dnnl_memory_desc_t *md, int ndims, const int64_t *dims, dnnl_format_tag_t tag);
lk_status lk_md4(dnnl_memory_desc_t *md, int64_t a, int64_t b, int64_t c, int64_t d,
                 dnnl_format_tag_t tag);
lk_status lk_md2(dnnl_memory_desc_t *md, int64_t a, int64_t b, dnnl_format_tag_t tag);
lk_status lk_md1(dnnl_memory_desc_t *md, int64_t a);

/* A memory object without data; the handle is set before each execution. */
lk_status lk_mem(dnnl_memory_t *mem, const_dnnl_memory_desc_t md);
lk_status lk_mem_set(dnnl_memory_t mem, const void *ptr);
void lk_mem_free(dnnl_memory_t *mem);

/* A reorder between two descriptors; `*needed` is 0 when they are equal
 * (then nothing is created and the caller uses the source buffer directly). */
lk_status lk_reorder_init(lk_prim *P, int *needed, const_dnnl_memory_desc_t from,
                          const_dnnl_memory_desc_t to);

/* 64-byte aligned allocation for oneDNN buffers (NULL-safe free). */
void *lk_alloc(size_t bytes);
void lk_free(void *p);

/* Count of oneDNN primitive executions on all threads (for tests that check the
 * number of reorders in a steady-state step). */
uint64_t lk_exec_count(void);
uint64_t lk_reorder_exec_count(void);
uint64_t lk_weight_reorder_exec_count(void);

#ifdef __cplusplus
}
#endif
#endif
