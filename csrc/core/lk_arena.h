/* A bump allocator over one float allocation, used in two passes: with base ==
 * NULL it only measures (`used` grows, pointers are NULL), then the caller
 * allocates `used` floats and binds again with the real base. */
#ifndef LK_ARENA_H
#define LK_ARENA_H

#include <stddef.h>

typedef struct lk_arena {
    float *base;    /* NULL while measuring */
    size_t used;    /* floats handed out so far (each buffer rounded up to 64 bytes) */
    size_t max_act; /* largest activation noted (floats): sizes the shared gradient scratch */
} lk_arena;

/* A workspace shared by the layers of one plan, which run one after another and keep
 * nothing in it between calls: each layer reserves its size while it is planned, the
 * plan then allocates the largest once (instead of one workspace per layer). */
typedef struct lk_scratch {
    size_t floats; /* the largest reservation */
    float *base;   /* allocated by the plan's owner after planning; NULL before */
} lk_scratch;

static inline void lk_scratch_reserve(lk_scratch *s, size_t floats) {
    if (floats > s->floats) s->floats = floats;
}

/* Take `count` floats (64-byte aligned); NULL while measuring. */
float *lk_arena_take(lk_arena *a, size_t count);
/* Record an activation size for `max_act`. */
void lk_arena_note(lk_arena *a, size_t count);

#endif
