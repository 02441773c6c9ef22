/* Optimizer step over flat parameter and gradient arenas: SGD, Adam and AdamW with
 * torch.optim's update formulas and defaults (single-tensor path of torch 2.14),
 * global-norm gradient clipping (torch.nn.utils.clip_grad_norm_), and a refusal of
 * non-finite gradients that leaves everything untouched.
 *
 *   // Two parameters of a model's arena, the second (a bias) without weight decay.
 *   lk_optim_segment segs[] = {
 *       {.param_offset = 0, .count = 864, .state_offset = 0, .group = 0},
 *       {.param_offset = 864, .count = 24, .state_offset = 864, .group = 0, .no_decay = 1},
 *   };
 *   lk_optim_group groups[1];
 *   lk_optim_group_defaults(&groups[0], LK_OPTIM_ADAMW);   // lr 1e-3, wd 1e-2, ...
 *   lk_optim opt = {.kind = LK_OPTIM_ADAMW, .num_params = n, .num_state = 888,
 *                   .segments = segs, .num_segments = 2, .groups = groups, .num_groups = 1,
 *                   .max_grad_norm = 1.0};
 *   lk_optim_report rep;
 *   lk_status st = lk_optim_step(&opt, params, grads, exp_avg, exp_avg_sq, &rep);
 *
 * Layout. Parameters and gradients are two arenas of `num_params` floats laid out
 * alike; a segment is one parameter tensor in them. The optimizer state (SGD's
 * momentum buffer; Adam's exp_avg and exp_avg_sq) is compact: `num_state` floats per
 * state array, segment s using [state_offset, state_offset + count). Segments must be
 * listed in increasing param_offset and increasing state_offset without overlap (the
 * natural order when the caller compacts the state in arena order); elements of the
 * arenas outside every segment are never read or written.
 *
 * Numerics. Per element, the arithmetic is torch's, in float32 and in torch's
 * operation order; scalars (bias corrections, step size, decay factor) are computed
 * in double as torch computes them in Python, then rounded to float once. Where torch
 * uses a fused multiply-add in its vector kernels the result may differ by one
 * rounding. Updates are elementwise, so they do not depend on the thread count.
 * The gradient norm is reduced over a fixed partition of the segments' elements
 * (LK_OPTIM_NORM_CHUNKS chunks, each summed in double in a fixed order, then the
 * chunk sums added in order), so it is bitwise the same for any thread count.
 */
#ifndef LK_OPTIM_H
#define LK_OPTIM_H

#include <stdint.h>

#include "lk_status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Fixed number of chunks of the gradient-norm reduction (independent of threads). */
#define LK_OPTIM_NORM_CHUNKS 256

typedef enum lk_optim_kind {
    LK_OPTIM_SGD = 0,   /* torch.optim.SGD: momentum, dampening, Nesterov, L2 decay */
    LK_OPTIM_ADAM = 1,  /* torch.optim.Adam: L2 decay added to the gradient */
    LK_OPTIM_ADAMW = 2, /* torch.optim.AdamW: decoupled decay p *= 1 - lr * wd */
} lk_optim_kind;

/* Hyper-parameters of a parameter group and its step counter. Fields a kind does not
 * use are ignored (and not validated). */
typedef struct lk_optim_group {
    double lr;           /* >= 0 */
    double weight_decay; /* >= 0 */
    double momentum;     /* SGD, >= 0 */
    double dampening;    /* SGD */
    int nesterov;        /* SGD: needs momentum > 0 and dampening == 0 */
    double beta1, beta2; /* Adam/AdamW, each in [0, 1) */
    double eps;          /* Adam/AdamW, >= 0 */
    /* Steps taken. Adam/AdamW: every successful lk_optim_step adds 1 and the bias
     * corrections use the new value (torch's per-parameter `step`, one per group here
     * since a group's parameters step together). SGD: counts the steps that wrote the
     * momentum buffer (those with momentum != 0); while it is 0 the next such step
     * initialises the buffer to the gradient, as torch does when its buffer is None. */
    int64_t step;
} lk_optim_group;

/* One parameter tensor: its elements in the arenas and in the state arrays. */
typedef struct lk_optim_segment {
    int64_t param_offset; /* first float in the parameter and gradient arenas */
    int64_t count;        /* floats, >= 0 */
    int64_t state_offset; /* first float in each state array */
    int32_t group;        /* index into lk_optim.groups */
    int32_t no_decay;     /* 1: weight decay 0 for this tensor (norms, biases) */
} lk_optim_segment;

/* What one step does (the caller owns every array; none is kept). */
typedef struct lk_optim {
    lk_optim_kind kind;
    int64_t num_params;                /* floats in the parameter and gradient arenas */
    int64_t num_state;                 /* floats in each state array */
    const lk_optim_segment *segments;  /* [num_segments], see the layout rules above */
    int num_segments;
    lk_optim_group *groups;            /* [num_groups]; `step` advances on success */
    int num_groups;
    /* Clip the global gradient norm to this before the update (>= 0; +inf never
     * clips, 0 zeroes the gradients, as torch); negative: no clipping. */
    double max_grad_norm;
} lk_optim;

/* Outcome of a step or a norm computation. */
typedef struct lk_optim_report {
    double grad_norm;    /* L2 norm of the segments' gradients, before clipping */
    int bad_segment;     /* LK_ERR_NUMERIC: first segment with a non-finite gradient; else -1 */
    int64_t bad_element; /* its element index within that segment; else -1 */
} lk_optim_report;

/* torch.optim's defaults for `kind`: lr 1e-3; SGD momentum, dampening and weight
 * decay 0, no Nesterov; Adam betas (0.9, 0.999), eps 1e-8, weight decay 0 (AdamW
 * 1e-2); step 0. */
void lk_optim_group_defaults(lk_optim_group *g, lk_optim_kind kind);

/* One optimizer step over the segments: checks every argument, then that every
 * gradient in the segments is finite (else LK_ERR_NUMERIC naming the first bad
 * segment and element, with nothing written), then clips (if max_grad_norm >= 0;
 * the gradients are scaled in place, as clip_grad_norm_ does), then updates
 * parameters and state and advances the groups' step counters.
 *   state1: SGD momentum buffer (may be NULL, and state offsets are not used, when no
 *           group has momentum) or Adam exp_avg [num_state];
 *   state2: Adam exp_avg_sq [num_state] (SGD: unused, may be NULL).
 * `report` (may be NULL) receives the norm (always computed: it is the finiteness
 * check) and, on LK_ERR_NUMERIC, where the first bad gradient is. */
lk_status lk_optim_step(const lk_optim *opt, float *params, float *grads, float *state1,
                        float *state2, lk_optim_report *report);

/* The global L2 norm of the segments' gradients (group fields are not used), with the
 * same finiteness check; nothing is written. */
lk_status lk_optim_grad_norm(const float *grads, int64_t num_params,
                             const lk_optim_segment *segments, int num_segments,
                             lk_optim_report *report);

/* torch.nn.utils.clip_grad_norm_ over the segments: norm as lk_optim_grad_norm, then
 * every gradient times min(max_norm / (norm + 1e-6), 1). max_norm >= 0 (+inf: only
 * measures). Non-finite gradients: LK_ERR_NUMERIC, nothing written. */
lk_status lk_optim_clip_grad_norm(float *grads, int64_t num_params,
                                  const lk_optim_segment *segments, int num_segments,
                                  double max_norm, lk_optim_report *report);

#ifdef __cplusplus
}
#endif
#endif
