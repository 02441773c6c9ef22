/* Thread count and fork() handling of the core (see lk_threads.h). */
#include "lk_threads.h"

#include <pthread.h>
#include <stdatomic.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* Threads per CPU beyond which a larger count only costs (and 100000 crashed libgomp). */
#define LK_THREADS_PER_CPU 4

static pthread_once_t lk_threads_once_ = PTHREAD_ONCE_INIT;
static _Atomic int lk_nthreads_ = 1;       /* the process-wide count, >= 1 */
static _Atomic int lk_fork_released_ = 1;  /* the prepare handler released the pool */
static _Atomic int lk_forked_ = 0;         /* this process is a forked child */
static _Atomic int lk_fork_unusable_ = 0;  /* ... whose OpenMP pool could not be released */

int lk_max_threads(void) {
#ifdef _OPENMP
    int procs = omp_get_num_procs();
    if (procs < 1) procs = 1;
    int cap = procs > (1 << 20) / LK_THREADS_PER_CPU ? 1 << 20 : LK_THREADS_PER_CPU * procs;
    const int limit = omp_get_thread_limit();
    if (limit >= 1 && limit < cap) cap = limit;
    if (omp_get_max_active_levels() < 1) cap = 1; /* every region is inactive: one thread */
    return cap;
#else
    return 1;
#endif
}

static int lk_clamp(int n) {
    const int cap = lk_max_threads();
    return n < 1 ? 1 : n > cap ? cap : n;
}

static void lk_atfork_prepare(void) {
#ifdef _OPENMP
    /* Release this thread's worker pool so that the child does not inherit a pool
     * without threads. Fails only inside a parallel region (libgomp returns -1). */
    lk_fork_released_ = !omp_in_parallel() && omp_get_level() == 0 &&
                        omp_pause_resource_all(omp_pause_soft) == 0;
#endif
}

static void lk_atfork_child(void) {
    lk_forked_ = 1;
    if (!lk_fork_released_) {
        lk_fork_unusable_ = 1;
        lk_nthreads_ = 1;
#ifdef _OPENMP
        /* A one-thread region never touches the inherited pool (libgomp returns before
         * it for a team of one), so the core's own C loops stay safe in this thread. */
        omp_set_num_threads(1);
#endif
    }
}

static void lk_threads_init_once(void) {
#ifdef _OPENMP
    /* OMP_NUM_THREADS, or the CPUs available, as the runtime reports them here. */
    lk_nthreads_ = lk_clamp(omp_get_max_threads());
#endif
    pthread_atfork(lk_atfork_prepare, NULL, lk_atfork_child);
}

void lk_threads_init(void) { pthread_once(&lk_threads_once_, lk_threads_init_once); }

int lk_set_num_threads(int n) {
    lk_threads_init();
    if (lk_fork_unusable_) return lk_nthreads_; /* stays 1, see lk_atfork_child */
    const int eff = lk_clamp(n);
    lk_nthreads_ = eff;
#ifdef _OPENMP
    if (!omp_in_parallel()) omp_set_num_threads(eff);
#endif
    return eff;
}

int lk_get_num_threads(void) {
    lk_threads_init();
    return lk_nthreads_;
}

lk_status lk_thread_enter(void) {
    lk_threads_init();
    if (lk_fork_unusable_)
        return LK_FAIL(LK_ERR_STATE,
                       "this process was fork()ed from inside an OpenMP parallel region, so "
                       "the OpenMP runtime (GNU libgomp) cannot run threads in it and the "
                       "core refuses to start; create worker processes with the 'spawn' or "
                       "'forkserver' start method of multiprocessing instead");
#ifdef _OPENMP
    if (omp_in_parallel()) return LK_OK;
    const int n = lk_nthreads_;
    if (omp_get_max_threads() != n) omp_set_num_threads(n);
    if (omp_get_dynamic()) omp_set_dynamic(0);
#endif
    return LK_OK;
}

int lk_omp_threads_here(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

void lk_get_fork_info(lk_fork_info *info) {
    lk_threads_init();
    info->forked = lk_forked_;
    info->usable = !lk_fork_unusable_;
}
