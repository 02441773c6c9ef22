/* Bump allocator of the activation plans (see lk_arena.h). */
#include "lk_arena.h"

float *lk_arena_take(lk_arena *a, size_t count) {
    size_t off = a->used;
    a->used += (count + 15) & ~(size_t)15; /* keep every buffer 64-byte aligned */
    return a->base ? a->base + off : NULL;
}

void lk_arena_note(lk_arena *a, size_t count) {
    if (count > a->max_act) a->max_act = count;
}
