/* SGD, Adam and AdamW over flat arenas, with global-norm clipping (see lk_optim.h).
 *
 * A step runs in three passes: (1) the gradient norm over a fixed partition of the
 * segments, which is also the finiteness check (squares of float32 values summed in
 * double cannot overflow, so the sum is finite exactly when every gradient is);
 * (2) clipping, only after (1) succeeded; (3) the elementwise update. Nothing is
 * written before every check has passed, so a failing step leaves parameters,
 * gradients, state and step counters as they were.
 */
#include <math.h>
#include <stddef.h>

#include "lk_optim.h"

/* Below this many elements one thread is faster than waking the others. */
#define LK_OPTIM_PAR_MIN 32768

void lk_optim_group_defaults(lk_optim_group *g, lk_optim_kind kind) {
    *g = (lk_optim_group){
        .lr = 1e-3,
        .weight_decay = kind == LK_OPTIM_ADAMW ? 1e-2 : 0.0,
        .momentum = 0.0,
        .dampening = 0.0,
        .nesterov = 0,
        .beta1 = 0.9,
        .beta2 = 0.999,
        .eps = 1e-8,
        .step = 0,
    };
}

static const char *kind_name(lk_optim_kind k) {
    switch (k) {
    case LK_OPTIM_SGD: return "SGD";
    case LK_OPTIM_ADAM: return "Adam";
    case LK_OPTIM_ADAMW: return "AdamW";
    }
    return "?";
}

/* ------------------------------------------------------------------ checks */

/* Segments inside [0, num_params), in increasing order without overlap; with
 * `num_state` >= 0 the same for the state ranges; with `num_groups` >= 0 group indices
 * below it and no_decay flags 0 or 1. */
static lk_status check_segments(const lk_optim_segment *segs, int nseg, int64_t num_params,
                                int64_t num_state, int num_groups) {
    LK_REQUIRE(nseg >= 0, "optim: num_segments must be >= 0, got %d", nseg);
    LK_REQUIRE(num_params >= 0, "optim: num_params must be >= 0, got %lld",
               (long long)num_params);
    LK_REQUIRE(nseg == 0 || segs, "optim: segments is NULL");
    int64_t param_end = 0, state_end = 0;
    for (int s = 0; s < nseg; s++) {
        const lk_optim_segment *g = &segs[s];
        LK_REQUIRE(g->count >= 0, "optim: segment %d has count %lld < 0", s, (long long)g->count);
        LK_REQUIRE(g->param_offset >= param_end,
                   "optim: segment %d starts at parameter offset %lld, before the end %lld of "
                   "the previous segment (segments must be increasing and not overlap)",
                   s, (long long)g->param_offset, (long long)param_end);
        LK_REQUIRE(g->param_offset <= num_params - g->count,
                   "optim: segment %d [%lld, +%lld) ends past the %lld-float parameter arena", s,
                   (long long)g->param_offset, (long long)g->count, (long long)num_params);
        param_end = g->param_offset + g->count;
        if (num_state >= 0) {
            LK_REQUIRE(g->state_offset >= state_end,
                       "optim: segment %d starts at state offset %lld, before the end %lld of "
                       "the previous segment's state (state ranges must be increasing and not "
                       "overlap)",
                       s, (long long)g->state_offset, (long long)state_end);
            LK_REQUIRE(g->state_offset <= num_state - g->count,
                       "optim: segment %d's state [%lld, +%lld) ends past the %lld-float state "
                       "arrays",
                       s, (long long)g->state_offset, (long long)g->count, (long long)num_state);
            state_end = g->state_offset + g->count;
        }
        if (num_groups < 0) continue;
        LK_REQUIRE(g->group >= 0 && g->group < num_groups,
                   "optim: segment %d names group %d, but there are %d groups", s, (int)g->group,
                   num_groups);
        LK_REQUIRE(g->no_decay == 0 || g->no_decay == 1,
                   "optim: segment %d has no_decay %d (must be 0 or 1)", s, (int)g->no_decay);
    }
    return LK_OK;
}

static lk_status check_group(const lk_optim_group *g, int i, lk_optim_kind kind) {
    LK_REQUIRE(isfinite(g->lr) && g->lr >= 0.0, "optim: group %d: invalid learning rate %g", i,
               g->lr);
    LK_REQUIRE(isfinite(g->weight_decay) && g->weight_decay >= 0.0,
               "optim: group %d: invalid weight_decay %g", i, g->weight_decay);
    LK_REQUIRE(g->step >= 0, "optim: group %d: step %lld < 0", i, (long long)g->step);
    if (kind == LK_OPTIM_SGD) {
        LK_REQUIRE(isfinite(g->momentum) && g->momentum >= 0.0,
                   "optim: group %d: invalid momentum %g", i, g->momentum);
        LK_REQUIRE(isfinite(g->dampening), "optim: group %d: invalid dampening %g", i,
                   g->dampening);
        LK_REQUIRE(g->nesterov == 0 || g->nesterov == 1,
                   "optim: group %d: nesterov must be 0 or 1, got %d", i, g->nesterov);
        LK_REQUIRE(!g->nesterov || (g->momentum > 0.0 && g->dampening == 0.0),
                   "optim: group %d: Nesterov momentum requires a momentum > 0 and zero "
                   "dampening (momentum %g, dampening %g)",
                   i, g->momentum, g->dampening);
    } else {
        LK_REQUIRE(g->beta1 >= 0.0 && g->beta1 < 1.0, "optim: group %d: beta1 %g not in [0, 1)",
                   i, g->beta1);
        LK_REQUIRE(g->beta2 >= 0.0 && g->beta2 < 1.0, "optim: group %d: beta2 %g not in [0, 1)",
                   i, g->beta2);
        LK_REQUIRE(isfinite(g->eps) && g->eps >= 0.0, "optim: group %d: invalid eps %g", i,
                   g->eps);
        LK_REQUIRE(g->step < INT64_MAX, "optim: group %d: step counter overflow", i);
    }
    return LK_OK;
}

/* ---------------------------------------------------------- gradient norm */

/* Sum of squares of g[0..n) in double, in eight interleaved lanes added in a fixed
 * tree: the order depends only on n. */
static double sumsq(const float *g, int64_t n) {
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) acc[l] += (double)g[i + l] * (double)g[i + l];
    for (int l = 0; i < n; i++, l++) acc[l] += (double)g[i] * (double)g[i];
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* Sum of squares of the elements [lo, hi) of the segments' concatenation. */
static double chunk_sumsq(const float *grads, const lk_optim_segment *segs, int nseg, int64_t lo,
                          int64_t hi) {
    double sum = 0.0;
    int64_t base = 0; /* index of segment s's first element in the concatenation */
    for (int s = 0; s < nseg && base < hi; s++) {
        int64_t a = lo > base ? lo : base;
        int64_t b = hi < base + segs[s].count ? hi : base + segs[s].count;
        if (a < b) sum += sumsq(grads + segs[s].param_offset + (a - base), b - a);
        base += segs[s].count;
    }
    return sum;
}

/* The norm, or LK_ERR_NUMERIC naming the first non-finite gradient (in segment order). */
static lk_status grad_norm(const float *grads, const lk_optim_segment *segs, int nseg,
                           lk_optim_report *rep) {
    int64_t total = 0;
    for (int s = 0; s < nseg; s++) total += segs[s].count;
    double part[LK_OPTIM_NORM_CHUNKS];
#pragma omp parallel for schedule(static) if (total >= LK_OPTIM_PAR_MIN)
    for (int c = 0; c < LK_OPTIM_NORM_CHUNKS; c++)
        part[c] = chunk_sumsq(grads, segs, nseg, total * c / LK_OPTIM_NORM_CHUNKS,
                              total * (c + 1) / LK_OPTIM_NORM_CHUNKS);
    double sum = 0.0;
    for (int c = 0; c < LK_OPTIM_NORM_CHUNKS; c++) sum += part[c];
    rep->grad_norm = sqrt(sum);
    if (isfinite(sum)) return LK_OK;
    for (int s = 0; s < nseg; s++) {
        for (int64_t i = 0; i < segs[s].count; i++) {
            const float *g = grads + segs[s].param_offset;
            if (!isfinite(g[i])) {
                rep->bad_segment = s;
                rep->bad_element = i;
                return LK_FAIL(LK_ERR_NUMERIC,
                               "optim: gradient of segment %d is not finite at element %lld "
                               "(value %g, arena offset %lld); nothing was updated",
                               s, (long long)i, (double)g[i],
                               (long long)(segs[s].param_offset + i));
            }
        }
    }
    /* Unreachable: a finite float32 array has a finite double sum of squares. */
    return LK_FAIL(LK_ERR_NUMERIC, "optim: gradient norm is not finite");
}

/* clip_grad_norm_'s factor: max_norm / (norm + 1e-6), clamped to at most 1. */
static void clip(float *grads, const lk_optim_segment *segs, int nseg, double max_norm,
                 double norm, int64_t total) {
    double coef = max_norm / (norm + 1e-6);
    if (!(coef < 1.0)) return; /* torch multiplies by 1.0: no change */
    const float c = (float)coef;
#pragma omp parallel if (total >= LK_OPTIM_PAR_MIN)
    for (int s = 0; s < nseg; s++) {
        if (segs[s].count == 0) continue; /* (the arenas may be NULL when empty) */
        float *g = grads + segs[s].param_offset;
#pragma omp for schedule(static) nowait
        for (int64_t i = 0; i < segs[s].count; i++) g[i] *= c;
    }
}

static lk_status norm_args(const float *grads, int64_t num_params,
                           const lk_optim_segment *segs, int nseg, lk_optim_report *rep) {
    *rep = (lk_optim_report){.grad_norm = 0.0, .bad_segment = -1, .bad_element = -1};
    LK_TRY(check_segments(segs, nseg, num_params, -1, -1));
    LK_REQUIRE(grads || num_params == 0, "optim: grads is NULL");
    return LK_OK;
}

lk_status lk_optim_grad_norm(const float *grads, int64_t num_params,
                             const lk_optim_segment *segments, int num_segments,
                             lk_optim_report *report) {
    lk_optim_report local;
    lk_optim_report *rep = report ? report : &local;
    LK_TRY(norm_args(grads, num_params, segments, num_segments, rep));
    return grad_norm(grads, segments, num_segments, rep);
}

lk_status lk_optim_clip_grad_norm(float *grads, int64_t num_params,
                                  const lk_optim_segment *segments, int num_segments,
                                  double max_norm, lk_optim_report *report) {
    lk_optim_report local;
    lk_optim_report *rep = report ? report : &local;
    LK_TRY(norm_args(grads, num_params, segments, num_segments, rep));
    LK_REQUIRE(max_norm >= 0.0, "optim: max_norm must be >= 0, got %g", max_norm);
    LK_TRY(grad_norm(grads, segments, num_segments, rep));
    int64_t total = 0;
    for (int s = 0; s < num_segments; s++) total += segments[s].count;
    clip(grads, segments, num_segments, max_norm, rep->grad_norm, total);
    return LK_OK;
}

/* ---------------------------------------------------------------- updates */

/* torch's SGD on one segment (sgd.py, _single_tensor_sgd), in float32:
 *   g = grad + wd * p                      (grad.add(param, alpha=wd), if wd != 0)
 *   buf = g on the first step, else buf * momentum + (1 - dampening) * g
 *   g = g + momentum * buf (Nesterov) or buf       (if momentum != 0)
 *   p = p + (-lr) * g                      (param.add_(grad, alpha=-lr)) */
static void sgd_segment(float *p, const float *grad, float *buf, int64_t n,
                        const lk_optim_group *G, int decay) {
    const float wd = (float)G->weight_decay, mom = (float)G->momentum;
    const float keep = (float)(1.0 - G->dampening), neg_lr = (float)(-G->lr);
    const int use_wd = decay && G->weight_decay != 0.0, use_mom = G->momentum != 0.0;
    const int first = G->step == 0, nesterov = G->nesterov;
#pragma omp for schedule(static) nowait
    for (int64_t i = 0; i < n; i++) {
        float g = grad[i];
        if (use_wd) g = g + wd * p[i];
        if (use_mom) {
            float b = first ? g : buf[i] * mom + keep * g;
            buf[i] = b;
            g = nesterov ? g + mom * b : b;
        }
        p[i] = p[i] + neg_lr * g;
    }
}

/* Scalars of one Adam/AdamW step of a group, computed in double as torch does in
 * Python (adam.py, _single_tensor_adam, capturable=False), then rounded to float. */
typedef struct adam_coef {
    float decay_mul; /* AdamW: 1 - lr * wd */
    float wd;        /* Adam: L2 coefficient */
    float w1;        /* lerp weight 1 - beta1 */
    float beta2, one_minus_beta2;
    float bc2_sqrt;  /* (1 - beta2^step) ** 0.5 */
    float eps;
    float neg_step_size; /* -lr / (1 - beta1^step) */
} adam_coef;

static adam_coef adam_coefs(const lk_optim_group *G) {
    const double step = (double)(G->step + 1); /* step_t += 1 comes first */
    const double bc1 = 1.0 - pow(G->beta1, step), bc2 = 1.0 - pow(G->beta2, step);
    return (adam_coef){
        .decay_mul = (float)(1.0 - G->lr * G->weight_decay),
        .wd = (float)G->weight_decay,
        .w1 = (float)(1.0 - G->beta1),
        .beta2 = (float)G->beta2,
        .one_minus_beta2 = (float)(1.0 - G->beta2),
        .bc2_sqrt = (float)pow(bc2, 0.5),
        .eps = (float)G->eps,
        .neg_step_size = (float)(-(G->lr / bc1)),
    };
}

/* torch's Adam/AdamW on one segment, per element in float32:
 *   AdamW: p = p * (1 - lr*wd)    Adam: g = g + wd * p        (if wd != 0)
 *   m = lerp(m, g, 1 - beta1)     torch's lerp: m + w*(g - m) for |w| < 0.5,
 *                                 else g - (g - m)*(1 - w)
 *   v = v * beta2 + ((1 - beta2) * g) * g           (mul_, then addcmul_)
 *   denom = sqrt(v) / bc2_sqrt + eps
 *   p = p + ((-step_size) * m) / denom              (addcdiv_ evaluates value*t1/t2) */
static void adam_segment(float *p, const float *grad, float *m, float *v, int64_t n,
                         const adam_coef *c, int decoupled, int decay) {
    const int use_wd = decay && c->wd != 0.0f;
    const int small_w = fabsf(c->w1) < 0.5f;
#pragma omp for schedule(static) nowait
    for (int64_t i = 0; i < n; i++) {
        float g = grad[i], pi = p[i];
        if (use_wd) {
            if (decoupled) pi = pi * c->decay_mul;
            else g = g + c->wd * pi;
        }
        float mi = m[i];
        mi = small_w ? mi + c->w1 * (g - mi) : g - (g - mi) * (1.0f - c->w1);
        float vi = v[i] * c->beta2;
        vi = vi + c->one_minus_beta2 * g * g;
        const float denom = sqrtf(vi) / c->bc2_sqrt + c->eps;
        m[i] = mi;
        v[i] = vi;
        p[i] = pi + c->neg_step_size * mi / denom;
    }
}

lk_status lk_optim_step(const lk_optim *opt, float *params, float *grads, float *state1,
                        float *state2, lk_optim_report *report) {
    lk_optim_report local;
    lk_optim_report *rep = report ? report : &local;
    *rep = (lk_optim_report){.grad_norm = 0.0, .bad_segment = -1, .bad_element = -1};
    LK_REQUIRE(opt, "optim: opt is NULL");
    const lk_optim_kind kind = opt->kind;
    LK_REQUIRE(kind == LK_OPTIM_SGD || kind == LK_OPTIM_ADAM || kind == LK_OPTIM_ADAMW,
               "optim: unknown kind %d", (int)kind);
    LK_REQUIRE(opt->num_groups >= 0 && (opt->num_groups == 0 || opt->groups),
               "optim: %d groups at %p", opt->num_groups, (void *)opt->groups);
    LK_REQUIRE(opt->num_state >= 0, "optim: num_state must be >= 0, got %lld",
               (long long)opt->num_state);
    LK_REQUIRE(!isnan(opt->max_grad_norm), "optim: max_grad_norm is NaN");
    int any_momentum = 0;
    for (int i = 0; i < opt->num_groups; i++) {
        LK_TRY(check_group(&opt->groups[i], i, kind));
        any_momentum |= opt->groups[i].momentum != 0.0;
    }
    /* SGD without momentum keeps no state: its state offsets are not used. */
    const int uses_state = kind != LK_OPTIM_SGD || any_momentum;
    const lk_optim_segment *segs = opt->segments;
    const int nseg = opt->num_segments;
    LK_TRY(check_segments(segs, nseg, opt->num_params, uses_state ? opt->num_state : -1,
                          opt->num_groups));
    LK_REQUIRE((params && grads) || opt->num_params == 0, "optim: params or grads is NULL");
    if (kind == LK_OPTIM_SGD)
        LK_REQUIRE(state1 || !any_momentum || opt->num_state == 0,
                   "optim: SGD with momentum needs the momentum buffer (state1)");
    else
        LK_REQUIRE((state1 && state2) || opt->num_state == 0,
                   "optim: %s needs exp_avg (state1) and exp_avg_sq (state2)", kind_name(kind));

    LK_TRY(grad_norm(grads, segs, nseg, rep));
    int64_t total = 0;
    for (int s = 0; s < nseg; s++) total += segs[s].count;
    if (opt->max_grad_norm >= 0.0) clip(grads, segs, nseg, opt->max_grad_norm, rep->grad_norm, total);

    const lk_optim_group *groups = opt->groups;
#pragma omp parallel if (total >= LK_OPTIM_PAR_MIN)
    for (int s = 0; s < nseg; s++) {
        const lk_optim_segment *sg = &segs[s];
        if (sg->count == 0) continue; /* (the arenas may be NULL when empty) */
        const lk_optim_group *G = &groups[sg->group];
        float *p = params + sg->param_offset;
        const float *g = grads + sg->param_offset;
        if (kind == LK_OPTIM_SGD) {
            float *buf = G->momentum != 0.0 ? state1 + sg->state_offset : NULL;
            sgd_segment(p, g, buf, sg->count, G, !sg->no_decay);
        } else {
            const adam_coef c = adam_coefs(G);
            adam_segment(p, g, state1 + sg->state_offset, state2 + sg->state_offset, sg->count,
                         &c, kind == LK_OPTIM_ADAMW, !sg->no_decay);
        }
    }
    for (int i = 0; i < opt->num_groups; i++)
        if (kind != LK_OPTIM_SGD || opt->groups[i].momentum != 0.0) opt->groups[i].step++;
    return LK_OK;
}
