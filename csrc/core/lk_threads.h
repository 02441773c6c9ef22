/* Threads of the core: one process-wide thread count that every OpenMP region of the
 * core and of oneDNN (built on the same GNU OpenMP runtime) really gets, and fork().
 *
 * Team sizes. oneDNN sizes its work and its barriers by the thread count it reads
 * when a primitive is created (omp_get_max_threads) and then asks for exactly that
 * team; a smaller team spins forever in its barriers (seen with OMP_THREAD_LIMIT=1
 * and with OMP_DYNAMIC=true on a busy machine). So the count the core plans with is
 * one the runtime will grant: clamped to omp_get_thread_limit(), to a few threads
 * per CPU (OMP_NUM_THREADS=100000 overflowed libgomp's stack), to 1 when
 * OMP_MAX_ACTIVE_LEVELS=0, and dynamic teams are switched off in every calling
 * thread. The core's own regions hand out fixed tasks (`omp for`) or read
 * omp_get_num_threads() inside the region, so any team size gives the same result.
 *
 * fork(). GNU OpenMP keeps a pool of worker threads per calling thread; a forked
 * child inherits the pool's bookkeeping but not its threads, and its first
 * multi-threaded region waits for them forever. A pthread_atfork handler releases
 * the forking thread's pool just before fork (OpenMP 5.0 omp_pause_resource_all;
 * the parent rebuilds it on its next region), so the child starts a pool of its own
 * and runs with every thread. If the pool cannot be released (fork() called from
 * inside a parallel region), the child refuses every core call with LK_ERR_STATE
 * instead of hanging.
 */
#ifndef LK_THREADS_H
#define LK_THREADS_H

#include "lk_status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Read the environment's thread count (clamped) and register the fork handlers.
 * Idempotent and thread-safe; every function below calls it first. */
void lk_threads_init(void);

/* Set the process-wide thread count; returns the count in force, which is `n`
 * clamped to 1..lk_max_threads(). */
int lk_set_num_threads(int n);
/* The process-wide thread count (>= 1). */
int lk_get_num_threads(void);
/* Largest count the runtime will grant: min(OMP_THREAD_LIMIT, 4 x the CPUs this
 * process may run on), 1 if OMP_MAX_ACTIVE_LEVELS=0. */
int lk_max_threads(void);

/* Call at every entry into the core from a thread (the Python binding does, and so
 * do lk_prim_init and lk_prim_exec): applies the thread count and switches dynamic
 * teams off in the calling thread (OpenMP keeps both per thread). Cheap. Fails with
 * LK_ERR_STATE in a forked child whose OpenMP pool could not be released. Inside an
 * OpenMP parallel region it changes nothing (nested regions get one thread). */
lk_status lk_thread_enter(void);

/* OpenMP's thread count in the calling thread (for tests of lk_thread_enter). */
int lk_omp_threads_here(void);

/* Fork facts for build_info and tests: this process is a fork()ed child of a process
 * that had loaded the core; `usable` is 0 when its OpenMP pool could not be released. */
typedef struct lk_fork_info {
    int forked;
    int usable;
} lk_fork_info;
void lk_get_fork_info(lk_fork_info *info);

#ifdef __cplusplus
}
#endif
#endif
