/* Status codes and error messages of the leukemia C core.
 *
 * The core never prints, exits or aborts: every fallible function returns an
 * lk_status and records a human-readable message (thread-local) that the Python
 * wrapper turns into an exception.
 */
#ifndef LK_STATUS_H
#define LK_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum lk_status {
    LK_OK = 0,
    LK_ERR_ARG,    /* invalid argument (shape, size, option) -> ValueError */
    LK_ERR_NOMEM,  /* allocation failed -> MemoryError */
    LK_ERR_DNNL,   /* a oneDNN call failed -> RuntimeError */
    LK_ERR_STATE,  /* called in the wrong state (e.g. backward before forward) */
    LK_ERR_NUMERIC /* NaN/Inf where a finite value is required */
} lk_status;

/* Name of a status code, e.g. "LK_ERR_ARG". */
const char *lk_status_str(lk_status s);

/* Message of the last failure on this thread ("" if none). */
const char *lk_last_error(void);

/* Record a failure (printf-style) and return `s`, so callers can write
 * `return lk_fail(LK_ERR_ARG, __FILE__, __LINE__, "bad %d", x);`. */
lk_status lk_fail(lk_status s, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

void lk_clear_error(void);

#define LK_FAIL(status, ...) lk_fail((status), __FILE__, __LINE__, __VA_ARGS__)

/* Propagate a failing lk_status unchanged. */
#define LK_TRY(expr)                   \
    do {                               \
        lk_status lk_try_s_ = (expr);  \
        if (lk_try_s_ != LK_OK)        \
            return lk_try_s_;          \
    } while (0)

/* Fail with LK_ERR_ARG unless `cond` holds; the message names the condition. */
#define LK_REQUIRE(cond, ...)                      \
    do {                                           \
        if (!(cond))                               \
            return LK_FAIL(LK_ERR_ARG, __VA_ARGS__); \
    } while (0)

#ifdef __cplusplus
}
#endif
#endif
