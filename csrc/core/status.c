#include "lk_status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* One message per thread: Python threads may call the core concurrently. */
static _Thread_local char lk_errbuf[1024];

const char *lk_status_str(lk_status s) {
    switch (s) {
    case LK_OK: return "LK_OK";
    case LK_ERR_ARG: return "LK_ERR_ARG";
    case LK_ERR_NOMEM: return "LK_ERR_NOMEM";
    case LK_ERR_DNNL: return "LK_ERR_DNNL";
    case LK_ERR_STATE: return "LK_ERR_STATE";
    case LK_ERR_NUMERIC: return "LK_ERR_NUMERIC";
    }
    return "LK_ERR_UNKNOWN";
}

const char *lk_last_error(void) { return lk_errbuf; }

void lk_clear_error(void) { lk_errbuf[0] = '\0'; }

lk_status lk_fail(lk_status s, const char *file, int line, const char *fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* Keep only the file's base name: no build paths in messages. */
    const char *base = strrchr(file, '/');
    snprintf(lk_errbuf, sizeof lk_errbuf, "%s (%s:%d)", msg, base ? base + 1 : file, line);
    return s;
}
