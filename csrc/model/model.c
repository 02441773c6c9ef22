/* EfficientNet builder, planner and whole-network forward/backward. */
#include "lk_model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lk_blocks.h"

struct lk_model {
    lk_arch arch;
    int num_classes;
    float dropout, sd_prob; /* classifier dropout; stochastic-depth rate of the last block */

    /* Tensor table (state_dict order) and its three arenas. */
    lk_tensor_desc *tensors;
    int ntensors, cap;
    size_t nparams, nbuffers;   /* floats */
    float *params, *grads, *buffers;

    /* Network structure (parameter pointers set at creation). */
    lk_cba stem, head;
    lk_block blocks[LK_MAX_BLOCKS];
    float *fc_w, *fc_dw, *fc_b, *fc_db; /* classifier.1: [K, C], [K] */

    /* Current plan. */
    int planned, pn, ph, pw, ptrain;
    int64_t plans_made;
    lk_plan_opts opts;
    lk_gpool pool;
    lk_linear fc;
    lk_prim to_nhwc, to_nchw;
    dnnl_memory_t m_x_nchw, m_x_nhwc, m_dx_nhwc, m_dx_nchw;
    float *arena;
    size_t arena_floats;
    float *x;        /* [N, H, W, 3] input in NHWC */
    float *dx;       /* [N, H, W, 3] input gradient (train) */
    float *pooled;   /* [N, C] */
    float *dropped;  /* [N, C] after dropout (train) */
    uint8_t *mask;   /* [N, C] dropout mask (train) */
    float *dfeat, *dpooled; /* [N, C] */
    float *b0, *b1;  /* block-boundary gradients, each max activation */
    lk_grad_scratch g;
    int fwd_ready;   /* a train-mode forward ran on this plan */
};

/* ------------------------------------------------------------ tensor table */

/* Two-pass registration: pass 0 appends descriptors, pass 1 hands out pointers
 * in the same order. */
typedef struct lk_reg {
    lk_model *m;
    int pass, next;
    lk_status st;
} lk_reg;

static void reg_tensor(lk_reg *r, float **data, float **grad, lk_tensor_kind kind,
                       const char *name, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3) {
    lk_model *m = r->m;
    if (r->st != LK_OK) return;
    if (r->pass == 0) {
        if (m->ntensors == m->cap) {
            int cap = m->cap ? 2 * m->cap : 256;
            lk_tensor_desc *t = realloc(m->tensors, sizeof *t * (size_t)cap);
            if (!t) {
                r->st = LK_FAIL(LK_ERR_NOMEM, "tensor table");
                return;
            }
            m->tensors = t;
            m->cap = cap;
        }
        lk_tensor_desc *t = &m->tensors[m->ntensors++];
        memset(t, 0, sizeof *t);
        snprintf(t->name, sizeof t->name, "%s", name);
        t->ndim = ndim;
        int64_t dims[4] = {d0, d1, d2, d3};
        t->numel = 1;
        for (int i = 0; i < ndim; i++) {
            t->shape[i] = dims[i];
            t->numel *= dims[i];
        }
        t->kind = kind;
        size_t *counter = kind == LK_TENSOR_PARAM ? &m->nparams : &m->nbuffers;
        t->offset = *counter;
        *counter += (size_t)t->numel;
        return;
    }
    const lk_tensor_desc *t = &m->tensors[r->next++];
    if (kind == LK_TENSOR_PARAM) {
        *data = m->params + t->offset;
        if (grad) *grad = m->grads + t->offset;
    } else {
        *data = m->buffers + t->offset;
    }
}

static void reg_cba(lk_reg *r, lk_cba *u, const char *conv, const char *bn) {
    char name[80];
    snprintf(name, sizeof name, "%s.weight", conv);
    reg_tensor(r, &u->p.w, &u->p.dw, LK_TENSOR_PARAM, name, 4, u->oc, u->ic / u->groups, u->k, u->k);
    snprintf(name, sizeof name, "%s.weight", bn);
    reg_tensor(r, &u->p.gamma, &u->p.dgamma, LK_TENSOR_PARAM, name, 1, u->oc, 0, 0, 0);
    snprintf(name, sizeof name, "%s.bias", bn);
    reg_tensor(r, &u->p.beta, &u->p.dbeta, LK_TENSOR_PARAM, name, 1, u->oc, 0, 0, 0);
    snprintf(name, sizeof name, "%s.running_mean", bn);
    reg_tensor(r, &u->p.rmean, NULL, LK_TENSOR_BUFFER, name, 1, u->oc, 0, 0, 0);
    snprintf(name, sizeof name, "%s.running_var", bn);
    reg_tensor(r, &u->p.rvar, NULL, LK_TENSOR_BUFFER, name, 1, u->oc, 0, 0, 0);
}

/* torchvision's nn.Sequential index of a unit: "<prefix>.<i>.0" / ".1". */
static void reg_cba_at(lk_reg *r, lk_cba *u, const char *prefix, int i) {
    char conv[80], bn[80];
    snprintf(conv, sizeof conv, "%s.%d.0", prefix, i);
    snprintf(bn, sizeof bn, "%s.%d.1", prefix, i);
    reg_cba(r, u, conv, bn);
}

static void unit_set(lk_cba *u, int ic, int oc, int k, int stride, int groups, int act) {
    u->ic = ic;
    u->oc = oc;
    u->k = k;
    u->stride = stride;
    u->groups = groups;
    u->has_act = act;
}

/* Structure of a block (which units exist) from its config. */
static void block_setup(lk_block *b, const lk_block_cfg *c) {
    memset(b, 0, sizeof *b);
    b->cfg = *c;
    if (c->kind == LK_BLOCK_MBCONV) {
        unit_set(&b->u[0], c->in, c->expanded, 1, 1, 1, 1);
        unit_set(&b->u[1], c->expanded, c->expanded, c->kernel, c->stride, c->expanded, 1);
        unit_set(&b->u[2], c->expanded, c->out, 1, 1, 1, 0);
        b->first = c->has_expand ? 0 : 1;
        b->nu = 3;
        b->se_after = 1;
        b->se.c = c->expanded;
        b->se.sq = c->squeeze;
    } else if (c->has_expand) {
        unit_set(&b->u[0], c->in, c->expanded, c->kernel, c->stride, 1, 1);
        unit_set(&b->u[1], c->expanded, c->out, 1, 1, 1, 0);
        b->first = 0;
        b->nu = 2;
        b->se_after = -1;
    } else {
        unit_set(&b->u[0], c->in, c->out, c->kernel, c->stride, 1, 1);
        b->first = 0;
        b->nu = 1;
        b->se_after = -1;
    }
}

static void reg_block(lk_reg *r, lk_block *b) {
    char prefix[64];
    snprintf(prefix, sizeof prefix, "features.%d.%d.block", b->cfg.stage + 1, b->cfg.index);
    int seq = 0; /* position inside torchvision's block Sequential */
    for (int i = b->first; i < b->nu; i++) {
        reg_cba_at(r, &b->u[i], prefix, seq++);
        if (i == b->se_after) {
            char name[96];
            lk_se *s = &b->se;
            snprintf(name, sizeof name, "%s.%d.fc1.weight", prefix, seq);
            reg_tensor(r, &s->p.w1, &s->p.dw1, LK_TENSOR_PARAM, name, 4, s->sq, s->c, 1, 1);
            snprintf(name, sizeof name, "%s.%d.fc1.bias", prefix, seq);
            reg_tensor(r, &s->p.b1, &s->p.db1, LK_TENSOR_PARAM, name, 1, s->sq, 0, 0, 0);
            snprintf(name, sizeof name, "%s.%d.fc2.weight", prefix, seq);
            reg_tensor(r, &s->p.w2, &s->p.dw2, LK_TENSOR_PARAM, name, 4, s->c, s->sq, 1, 1);
            snprintf(name, sizeof name, "%s.%d.fc2.bias", prefix, seq);
            reg_tensor(r, &s->p.b2, &s->p.db2, LK_TENSOR_PARAM, name, 1, s->c, 0, 0, 0);
            seq++;
        }
    }
}

static void reg_all(lk_reg *r) {
    lk_model *m = r->m;
    reg_cba_at(r, &m->stem, "features", 0);
    for (int i = 0; i < m->arch.nblocks; i++) reg_block(r, &m->blocks[i]);
    char head[32];
    snprintf(head, sizeof head, "features.%d", m->arch.def->nstages + 1);
    char conv[48], bn[48];
    snprintf(conv, sizeof conv, "%s.0", head);
    snprintf(bn, sizeof bn, "%s.1", head);
    reg_cba(r, &m->head, conv, bn);
    reg_tensor(r, &m->fc_w, &m->fc_dw, LK_TENSOR_PARAM, "classifier.1.weight", 2, m->num_classes,
               m->arch.head_out, 0, 0);
    reg_tensor(r, &m->fc_b, &m->fc_db, LK_TENSOR_PARAM, "classifier.1.bias", 1, m->num_classes, 0,
               0, 0);
}

lk_status lk_model_create(lk_model **out, const char *arch, int num_classes) {
    *out = NULL;
    LK_REQUIRE(arch, "architecture name is NULL");
    LK_REQUIRE(num_classes >= 1 && num_classes <= 100000, "num_classes must be in 1..100000, got %d",
               num_classes);
    lk_model *m = calloc(1, sizeof *m);
    if (!m) return LK_FAIL(LK_ERR_NOMEM, "model");
    lk_status st = lk_arch_build(&m->arch, arch);
    if (st != LK_OK) {
        free(m);
        return st;
    }
    m->num_classes = num_classes;
    m->dropout = m->arch.def->dropout;
    m->sd_prob = m->arch.def->sd_prob;
    unit_set(&m->stem, 3, m->arch.stem_out, 3, 2, 1, 1);
    for (int i = 0; i < m->arch.nblocks; i++) block_setup(&m->blocks[i], &m->arch.blocks[i]);
    unit_set(&m->head, m->arch.head_in, m->arch.head_out, 1, 1, 1, 1);

    lk_reg r = {.m = m, .pass = 0};
    reg_all(&r);
    if (r.st == LK_OK) {
        m->params = lk_alloc(m->nparams * sizeof(float));
        m->grads = lk_alloc(m->nparams * sizeof(float));
        m->buffers = lk_alloc(m->nbuffers * sizeof(float));
        if (!m->params || !m->grads || !m->buffers) r.st = LK_FAIL(LK_ERR_NOMEM, "parameter arenas");
    }
    if (r.st == LK_OK) {
        memset(m->params, 0, m->nparams * sizeof(float));
        memset(m->grads, 0, m->nparams * sizeof(float));
        memset(m->buffers, 0, m->nbuffers * sizeof(float));
        r.pass = 1;
        reg_all(&r);
    }
    if (r.st != LK_OK) {
        lk_model_free(m);
        return r.st;
    }
    *out = m;
    return LK_OK;
}

/* ---------------------------------------------------------------- planning */

static void plan_free(lk_model *m) {
    lk_cba_free(&m->stem);
    lk_cba_free(&m->head);
    for (int i = 0; i < m->arch.nblocks; i++) lk_block_free(&m->blocks[i]);
    lk_gpool_free(&m->pool);
    lk_linear_free(&m->fc);
    lk_prim_free(&m->to_nhwc);
    lk_prim_free(&m->to_nchw);
    lk_mem_free(&m->m_x_nchw);
    lk_mem_free(&m->m_x_nhwc);
    lk_mem_free(&m->m_dx_nhwc);
    lk_mem_free(&m->m_dx_nchw);
    lk_free(m->arena);
    m->arena = NULL;
    m->planned = 0;
    m->fwd_ready = 0;
}

/* Inference keeps no activations for a backward, so two regions suffice: block i
 * binds its buffers into region i % 2 and reads its input from the other one. */
static void plan_bind_eval(lk_model *m, lk_arena *a) {
    const lk_plan_opts *o = &m->opts;
    size_t n = (size_t)o->n, c = (size_t)m->arch.head_out;
    int nb = m->arch.nblocks;
    m->x = lk_arena_take(a, n * m->ph * m->pw * 3);
    m->pooled = lk_arena_take(a, n * c);
    size_t region = 0;
    lk_arena t = {0};
    lk_cba_bind(&m->stem, &t, o);
    region = t.used;
    for (int i = 0; i < nb; i++) {
        t = (lk_arena){0};
        lk_block_bind(&m->blocks[i], &t, o);
        if (t.used > region) region = t.used;
    }
    t = (lk_arena){0};
    lk_cba_bind(&m->head, &t, o);
    if (t.used > region) region = t.used;
    float *r[2] = {lk_arena_take(a, region), lk_arena_take(a, region)};
    if (!a->base) return; /* measuring */
    lk_arena ra = {.base = r[1]};
    lk_cba_bind(&m->stem, &ra, o);
    for (int i = 0; i < nb; i++) {
        ra = (lk_arena){.base = r[i % 2]};
        lk_block_bind(&m->blocks[i], &ra, o);
    }
    ra = (lk_arena){.base = r[nb % 2]};
    lk_cba_bind(&m->head, &ra, o);
}

static void plan_bind(lk_model *m, lk_arena *a) {
    const lk_plan_opts *o = &m->opts;
    if (!o->train) {
        plan_bind_eval(m, a);
        return;
    }
    size_t n = (size_t)o->n, c = (size_t)m->arch.head_out;
    m->x = lk_arena_take(a, n * m->ph * m->pw * 3);
    lk_cba_bind(&m->stem, a, o);
    for (int i = 0; i < m->arch.nblocks; i++) lk_block_bind(&m->blocks[i], a, o);
    lk_cba_bind(&m->head, a, o);
    m->pooled = lk_arena_take(a, n * c);
    m->dropped = o->train ? lk_arena_take(a, n * c) : NULL;
    m->mask = o->train ? (uint8_t *)lk_arena_take(a, n * c / 4 + 1) : NULL;
    if (o->train) {
        m->dx = lk_arena_take(a, n * m->ph * m->pw * 3);
        m->dfeat = lk_arena_take(a, n * c);
        m->dpooled = lk_arena_take(a, n * c);
        size_t big = a->max_act;
        m->b0 = lk_arena_take(a, big);
        m->b1 = lk_arena_take(a, big);
        m->g.s1 = lk_arena_take(a, big);
        m->g.s2 = lk_arena_take(a, big);
        m->g.t1 = lk_arena_take(a, big);
        m->g.t2 = lk_arena_take(a, big);
    }
}

static lk_status plan_layers(lk_model *m) {
    const lk_plan_opts *o = &m->opts;
    m->stem.need_dx = o->train;
    LK_TRY(lk_cba_plan(&m->stem, o, m->ph, m->pw));
    int h = m->stem.oh, w = m->stem.ow;
    for (int i = 0; i < m->arch.nblocks; i++) {
        LK_TRY(lk_block_plan(&m->blocks[i], &m->arch.blocks[i], o, h, w, 1));
        h = m->blocks[i].oh;
        w = m->blocks[i].ow;
    }
    m->head.need_dx = 1;
    LK_TRY(lk_cba_plan(&m->head, o, h, w));
    LK_TRY(lk_gpool_init(&m->pool, LK_POOL_AVG, o->n, m->arch.head_out, m->head.oh, m->head.ow,
                         o->train));
    LK_TRY(lk_linear_init(&m->fc, o->n, m->arch.head_out, m->num_classes, 1, o->train, 1));

    /* NCHW user images <-> NHWC internal layout. */
    dnnl_memory_desc_t nchw = NULL, nhwc = NULL;
    lk_status st = lk_md4(&nchw, o->n, 3, m->ph, m->pw, dnnl_nchw);
    if (st == LK_OK) st = lk_md4(&nhwc, o->n, 3, m->ph, m->pw, dnnl_nhwc);
    int needed;
    if (st == LK_OK) st = lk_reorder_init(&m->to_nhwc, &needed, nchw, nhwc);
    if (st == LK_OK && o->train) st = lk_reorder_init(&m->to_nchw, &needed, nhwc, nchw);
    if (st == LK_OK) st = lk_mem(&m->m_x_nchw, nchw);
    if (st == LK_OK) st = lk_mem(&m->m_x_nhwc, nhwc);
    if (st == LK_OK) st = lk_mem(&m->m_dx_nhwc, nhwc);
    if (st == LK_OK) st = lk_mem(&m->m_dx_nchw, nchw);
    if (nchw) dnnl_memory_desc_destroy(nchw);
    if (nhwc) dnnl_memory_desc_destroy(nhwc);
    return st;
}

static lk_status plan(lk_model *m, int n, int h, int w, int train) {
    if (m->planned && m->pn == n && m->ph == h && m->pw == w && m->ptrain == train) return LK_OK;
    plan_free(m);
    LK_REQUIRE(n >= 1, "batch size must be >= 1, got %d", n);
    LK_REQUIRE(h >= 32 && w >= 32 && h <= 4096 && w <= 4096,
               "image size %dx%d out of range (32..4096 per side)", h, w);
    LK_REQUIRE(!train || n >= 2,
               "training needs a batch of at least 2 images (batch-norm statistics), got %d", n);
    m->pn = n;
    m->ph = h;
    m->pw = w;
    m->ptrain = train;
    m->opts = (lk_plan_opts){.n = n, .train = train, .bn_eps = m->arch.def->bn_eps,
                             .bn_momentum = m->arch.def->bn_momentum};
    lk_status st = plan_layers(m);
    if (st != LK_OK) {
        plan_free(m);
        return st;
    }
    lk_arena a = {0};
    plan_bind(m, &a); /* measure */
    m->arena_floats = a.used;
    m->arena = lk_alloc(a.used * sizeof(float));
    if (!m->arena) {
        plan_free(m);
        return LK_FAIL(LK_ERR_NOMEM, "activation arena of %zu MiB for batch %d at %dx%d",
                       a.used * sizeof(float) >> 20, n, h, w);
    }
    lk_arena b = {.base = m->arena, .max_act = a.max_act};
    plan_bind(m, &b);
    m->planned = 1;
    m->plans_made++;
    return LK_OK;
}

/* ---------------------------------------------------------- forward/backward */

lk_status lk_model_forward(lk_model *m, float *logits, const float *x, int n, int h, int w,
                           int train, uint64_t seed) {
    LK_REQUIRE(m && logits && x, "model forward: NULL argument");
    LK_TRY(plan(m, n, h, w, train ? 1 : 0));
    m->fwd_ready = 0;
    LK_TRY(lk_mem_set(m->m_x_nchw, x));
    LK_TRY(lk_mem_set(m->m_x_nhwc, m->x));
    const dnnl_exec_arg_t r[] = {{DNNL_ARG_FROM, m->m_x_nchw}, {DNNL_ARG_TO, m->m_x_nhwc}};
    LK_TRY(lk_prim_exec(&m->to_nhwc, 2, r));

    LK_TRY(lk_cba_forward(&m->stem, m->x));
    const float *cur = m->stem.out;
    for (int i = 0; i < m->arch.nblocks; i++) {
        /* Distinct, reproducible streams per block and per call. */
        LK_TRY(lk_block_forward(&m->blocks[i], cur, seed * 1000003ULL + (uint64_t)i + 1));
        cur = m->blocks[i].out;
    }
    LK_TRY(lk_cba_forward(&m->head, cur));
    LK_TRY(lk_gpool_forward(&m->pool, m->pooled, m->head.out));
    const float *feat = m->pooled;
    int64_t nc = (int64_t)n * m->arch.head_out;
    if (train) {
        LK_TRY(lk_dropout_forward(m->dropped, m->mask, m->pooled, nc, m->dropout,
                                  seed * 1000003ULL));
        feat = m->dropped;
    }
    LK_TRY(lk_linear_forward(&m->fc, logits, feat, m->fc_w, m->fc_b));
    m->fwd_ready = train;
    return LK_OK;
}

lk_status lk_model_backward(lk_model *m, float *dx, const float *dlogits) {
    LK_REQUIRE(m && dlogits, "model backward: NULL argument");
    if (!m->fwd_ready)
        return LK_FAIL(LK_ERR_STATE, "backward needs a preceding forward in train mode");
    int n = m->pn;
    int64_t nc = (int64_t)n * m->arch.head_out;
    const float *feat = m->dropped;
    LK_TRY(lk_linear_backward(&m->fc, m->dfeat, m->fc_dw, m->fc_db, dlogits, feat, m->fc_w));
    LK_TRY(lk_dropout_backward(m->dpooled, m->dfeat, m->mask, nc, m->dropout));
    LK_TRY(lk_gpool_backward(&m->pool, m->b0, m->dpooled));
    int nb = m->arch.nblocks;
    const float *head_in = m->blocks[nb - 1].out;
    LK_TRY(lk_cba_backward(&m->head, m->b1, m->b0, head_in, &m->g));
    float *cur = m->b1, *other = m->b0;
    for (int i = nb - 1; i >= 0; i--) {
        const float *in = i ? m->blocks[i - 1].out : m->stem.out;
        LK_TRY(lk_block_backward(&m->blocks[i], other, cur, in, &m->g));
        float *t = cur;
        cur = other;
        other = t;
    }
    LK_TRY(lk_cba_backward(&m->stem, dx ? m->dx : NULL, cur, m->x, &m->g));
    if (dx) {
        LK_TRY(lk_mem_set(m->m_dx_nhwc, m->dx));
        LK_TRY(lk_mem_set(m->m_dx_nchw, dx));
        const dnnl_exec_arg_t r[] = {{DNNL_ARG_FROM, m->m_dx_nhwc}, {DNNL_ARG_TO, m->m_dx_nchw}};
        LK_TRY(lk_prim_exec(&m->to_nchw, 2, r));
    }
    return LK_OK;
}

lk_status lk_model_set_regularization(lk_model *m, float dropout, float sd_prob) {
    LK_REQUIRE(dropout >= 0.f && dropout < 1.f, "dropout must be in [0, 1), got %g", dropout);
    LK_REQUIRE(sd_prob >= 0.f && sd_prob < 1.f, "stochastic depth rate must be in [0, 1), got %g",
               sd_prob);
    m->dropout = dropout;
    m->sd_prob = sd_prob;
    /* torchvision: block i of T drops with probability sd_prob * i / T. */
    for (int i = 0; i < m->arch.nblocks; i++) {
        float p = sd_prob * (float)i / (float)m->arch.nblocks;
        m->arch.blocks[i].sd_prob = p;
        m->blocks[i].cfg.sd_prob = p;
    }
    plan_free(m); /* buffers for stochastic depth depend on the rates */
    return LK_OK;
}

/* ------------------------------------------------------------------ access */

void lk_model_free(lk_model *m) {
    if (!m) return;
    plan_free(m);
    lk_free(m->params);
    lk_free(m->grads);
    lk_free(m->buffers);
    free(m->tensors);
    free(m);
}

int lk_model_num_tensors(const lk_model *m) { return m->ntensors; }

const lk_tensor_desc *lk_model_tensor(const lk_model *m, int i) {
    return i >= 0 && i < m->ntensors ? &m->tensors[i] : NULL;
}

float *lk_model_tensor_data(lk_model *m, int i) {
    const lk_tensor_desc *t = lk_model_tensor(m, i);
    if (!t) return NULL;
    return (t->kind == LK_TENSOR_PARAM ? m->params : m->buffers) + t->offset;
}

float *lk_model_tensor_grad(lk_model *m, int i) {
    const lk_tensor_desc *t = lk_model_tensor(m, i);
    return t && t->kind == LK_TENSOR_PARAM ? m->grads + t->offset : NULL;
}

int64_t lk_model_num_params(const lk_model *m) { return (int64_t)m->nparams; }

float *lk_model_params(lk_model *m, int64_t *count) {
    *count = (int64_t)m->nparams;
    return m->params;
}

float *lk_model_grads(lk_model *m, int64_t *count) {
    *count = (int64_t)m->nparams;
    return m->grads;
}

void lk_model_get_info(const lk_model *m, lk_model_info *info) {
    memset(info, 0, sizeof *info);
    info->arch = m->arch.def->name;
    info->num_classes = m->num_classes;
    info->default_size = m->arch.def->default_size;
    info->nblocks = m->arch.nblocks;
    info->dropout = m->dropout;
    info->sd_prob = m->sd_prob;
    info->bn_eps = m->arch.def->bn_eps;
    info->bn_momentum = m->arch.def->bn_momentum;
    if (m->planned) {
        info->plan_n = m->pn;
        info->plan_h = m->ph;
        info->plan_w = m->pw;
        info->plan_train = m->ptrain;
        info->plan_bytes = (int64_t)(m->arena_floats * sizeof(float));
    }
    info->plans_made = m->plans_made;
}
