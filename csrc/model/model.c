/* EfficientNet builder, fine-tuning policy, planner and whole-network forward/backward. */
#include "lk_model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lk_arch.h"
#include "lk_blocks.h"
#include "lk_head.h"

/* A unit: tensors that train together, and the piece of the network it sits in. */
typedef struct lk_unit_ref {
    int *trainable; /* the flag in the cba / SE / head module */
    int piece;      /* 0 stem, 1 + i block i, nb + 1 final 1x1 conv, nb + 2 head */
} lk_unit_ref;

struct lk_model {
    lk_arch arch;
    lk_head_kind head_kind;
    int num_classes;
    float dropout, sd_prob; /* head dropout; stochastic-depth rate of the last block */
    lk_policy policy;

    /* Tensor table (state_dict order), its units and three arenas. */
    lk_tensor_desc *tensors;
    int ntensors, cap;
    lk_unit_ref *units;
    int nunits, ucap;
    size_t nparams, nbuffers; /* floats */
    float *params, *grads, *buffers;
    lk_versions version;

    /* Network structure (parameter pointers set at creation). */
    lk_cba stem, conv_head; /* features.0, features.<last> (final 1x1 conv) */
    lk_block blocks[LK_MAX_BLOCKS];
    lk_head head;

    /* Current plan. */
    int planned, pn, ph, pw;
    unsigned pflags;
    int pwino;             /* conv2d's Winograd policy the plan was made under */
    lk_scratch scratch;    /* the plan's shared layer workspace (Winograd) */
    int start;             /* first piece run (the prefix boundary when from features) */
    int boundary;          /* first piece after the frozen prefix */
    int64_t plans_made;
    lk_plan_opts opts;
    lk_prim to_nhwc, to_nchw, feat_to_nchw;
    dnnl_memory_t m_x_nchw, m_x_nhwc, m_dx_nhwc, m_dx_nchw, m_f_nhwc, m_f_nchw;
    float *arena;
    size_t arena_floats;
    float *x;        /* [N, H, W, Cin] input (image or prefix output) in NHWC */
    float *dx;       /* [N, H, W, 3] input gradient (LK_FWD_INPUT_GRAD) */
    float *b0, *b1;  /* piece-boundary gradients, each the largest activation */
    lk_grad_scratch g;
    float *acc;      /* [trainable floats] saved gradients for accumulation */
    int fwd_ready;   /* a train-mode forward ran on this plan */
    int head_ready;  /* the head's buffers hold the last forward's activations */
};

/* Plan flag (internal, beside lk_forward_flags): inference everywhere, plus the head's
 * backward to its input in eval semantics (lk_head.eval_grad). */
#define LK_PLAN_EXPLAIN 8u

static int last_piece(const lk_model *m) { return m->arch.nblocks + 2; }

/* ------------------------------------------------------------ tensor table */

/* Two-pass registration: pass 0 appends descriptors and units, pass 1 hands out
 * pointers in the same order. */
typedef struct lk_reg {
    lk_model *m;
    int pass, next, unit;
    lk_status st;
} lk_reg;

/* Make room for one more element in a growing table; 0 when out of memory. */
static int table_grow(void **items, int *cap, int count, size_t size) {
    if (count < *cap) return 1;
    int n = *cap ? 2 * *cap : 128;
    void *p = realloc(*items, size * (size_t)n);
    if (!p) return 0;
    *items = p;
    *cap = n;
    return 1;
}

static void reg_unit(lk_reg *r, int *trainable, int piece) {
    lk_model *m = r->m;
    if (r->st != LK_OK || r->pass != 0) return;
    if (!table_grow((void **)&m->units, &m->ucap, m->nunits, sizeof *m->units)) {
        r->st = LK_FAIL(LK_ERR_NOMEM, "unit table");
        return;
    }
    m->units[m->nunits] = (lk_unit_ref){.trainable = trainable, .piece = piece};
    r->unit = m->nunits++;
}

static void reg_tensor(lk_reg *r, float **data, float **grad, lk_tensor_kind kind,
                       const char *name, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3) {
    lk_model *m = r->m;
    if (r->st != LK_OK) return;
    if (r->pass == 0) {
        if (!table_grow((void **)&m->tensors, &m->cap, m->ntensors, sizeof *m->tensors)) {
            r->st = LK_FAIL(LK_ERR_NOMEM, "tensor table");
            return;
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
        t->unit = r->unit;
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

#define REG_P(r, d, g, name, ...) reg_tensor(r, d, g, LK_TENSOR_PARAM, name, __VA_ARGS__)

static void reg_cba(lk_reg *r, lk_cba *u, const char *conv, const char *bn, int piece) {
    char name[80];
    reg_unit(r, &u->trainable, piece);
    snprintf(name, sizeof name, "%s.weight", conv);
    REG_P(r, &u->p.w, &u->p.dw, name, 4, u->oc, u->ic / u->groups, u->k, u->k);
    snprintf(name, sizeof name, "%s.weight", bn);
    REG_P(r, &u->p.gamma, &u->p.dgamma, name, 1, u->oc, 0, 0, 0);
    snprintf(name, sizeof name, "%s.bias", bn);
    REG_P(r, &u->p.beta, &u->p.dbeta, name, 1, u->oc, 0, 0, 0);
    snprintf(name, sizeof name, "%s.running_mean", bn);
    reg_tensor(r, &u->p.rmean, NULL, LK_TENSOR_BUFFER, name, 1, u->oc, 0, 0, 0);
    snprintf(name, sizeof name, "%s.running_var", bn);
    reg_tensor(r, &u->p.rvar, NULL, LK_TENSOR_BUFFER, name, 1, u->oc, 0, 0, 0);
}

/* torchvision's nn.Sequential index of a unit: "<prefix>.<i>.0" / ".1". */
static void reg_cba_at(lk_reg *r, lk_cba *u, const char *prefix, int i, int piece) {
    char conv[80], bn[80];
    snprintf(conv, sizeof conv, "%s.%d.0", prefix, i);
    snprintf(bn, sizeof bn, "%s.%d.1", prefix, i);
    reg_cba(r, u, conv, bn, piece);
}

static void reg_block(lk_reg *r, lk_block *b, int piece) {
    char prefix[64];
    snprintf(prefix, sizeof prefix, "features.%d.%d.block", b->cfg.stage + 1, b->cfg.index);
    int seq = 0; /* position inside torchvision's block Sequential */
    for (int i = b->first; i < b->nu; i++) {
        reg_cba_at(r, &b->u[i], prefix, seq++, piece);
        if (i == b->se_after) {
            char name[80];
            lk_se *s = &b->se;
            reg_unit(r, &s->trainable, piece);
            snprintf(name, sizeof name, "%s.%d.fc1.weight", prefix, seq);
            REG_P(r, &s->p.w1, &s->p.dw1, name, 4, s->sq, s->c, 1, 1);
            snprintf(name, sizeof name, "%s.%d.fc1.bias", prefix, seq);
            REG_P(r, &s->p.b1, &s->p.db1, name, 1, s->sq, 0, 0, 0);
            snprintf(name, sizeof name, "%s.%d.fc2.weight", prefix, seq);
            REG_P(r, &s->p.w2, &s->p.dw2, name, 4, s->c, s->sq, 1, 1);
            snprintf(name, sizeof name, "%s.%d.fc2.bias", prefix, seq);
            REG_P(r, &s->p.b2, &s->p.db2, name, 1, s->c, 0, 0, 0);
            seq++;
        }
    }
}

static void reg_head(lk_reg *r, lk_head *hd, int piece) {
    lk_head_params *p = &hd->p;
    const int c = hd->c, c8 = hd->c8, k = hd->k, t = LK_HEAD_HIDDEN;
    int *tr = hd->trainable;
    if (hd->kind == LK_HEAD_LINEAR) {
        reg_unit(r, &tr[LK_HM_CLASSIFIER], piece);
        REG_P(r, &p->cls_w, &p->cls_dw, "classifier.1.weight", 2, k, c, 0, 0);
        REG_P(r, &p->cls_b, &p->cls_db, "classifier.1.bias", 1, k, 0, 0, 0);
        return;
    }
    if (hd->kind != LK_HEAD_SPATIAL_ATTENTION) {
        reg_unit(r, &tr[LK_HM_CHANNEL], piece);
        REG_P(r, &p->w1, &p->dw1, "head.channel.fc1.weight", 4, c8, c, 1, 1);
        REG_P(r, &p->b1, &p->db1, "head.channel.fc1.bias", 1, c8, 0, 0, 0);
        REG_P(r, &p->w2, &p->dw2, "head.channel.fc2.weight", 4, c, c8, 1, 1);
        REG_P(r, &p->b2, &p->db2, "head.channel.fc2.bias", 1, c, 0, 0, 0);
    }
    static const int ch[LK_SPATIAL_CONVS + 1] = {2, 64, 32, 16, 1};
    int nsp = hd->kind == LK_HEAD_MULTI_ATTENTION ? 2
              : hd->kind == LK_HEAD_SPATIAL_ATTENTION ? 1 : 0;
    for (int s = 0; s < nsp; s++) {
        reg_unit(r, &tr[LK_HM_SPATIAL1 + s], piece);
        for (int i = 0; i < LK_SPATIAL_CONVS; i++) {
            char name[48];
            snprintf(name, sizeof name, "head.spatial%d.%d.weight", s + 1, i);
            REG_P(r, &hd->sp[s].w[i], &hd->sp[s].dw[i], name, 4, ch[i + 1], ch[i], 3, 3);
        }
    }
    if (hd->kind == LK_HEAD_MULTI_ATTENTION) {
        reg_unit(r, &tr[LK_HM_ATTN_POOL], piece);
        REG_P(r, &p->ap, &p->dap, "head.attn_pool.weight", 2, 1, c, 0, 0);
    }
    reg_unit(r, &tr[LK_HM_BN], piece);
    REG_P(r, &p->bn_g, &p->bn_dg, "head.bn.weight", 1, c, 0, 0, 0);
    REG_P(r, &p->bn_b, &p->bn_db, "head.bn.bias", 1, c, 0, 0, 0);
    reg_tensor(r, &p->bn_rm, NULL, LK_TENSOR_BUFFER, "head.bn.running_mean", 1, c, 0, 0, 0);
    reg_tensor(r, &p->bn_rv, NULL, LK_TENSOR_BUFFER, "head.bn.running_var", 1, c, 0, 0, 0);
    reg_unit(r, &tr[LK_HM_FC], piece);
    REG_P(r, &p->fc_w, &p->fc_dw, "head.fc.weight", 2, t, c, 0, 0);
    REG_P(r, &p->fc_b, &p->fc_db, "head.fc.bias", 1, t, 0, 0, 0);
    reg_unit(r, &tr[LK_HM_OUT], piece);
    REG_P(r, &p->out_w, &p->out_dw, "head.out.weight", 2, k, t, 0, 0);
    REG_P(r, &p->out_b, &p->out_db, "head.out.bias", 1, k, 0, 0, 0);
}

static void reg_all(lk_reg *r) {
    lk_model *m = r->m;
    const int nb = m->arch.nblocks;
    reg_cba_at(r, &m->stem, "features", 0, 0);
    for (int i = 0; i < nb; i++) reg_block(r, &m->blocks[i], 1 + i);
    char conv[48], bn[48];
    snprintf(conv, sizeof conv, "features.%d.0", m->arch.def->nstages + 1);
    snprintf(bn, sizeof bn, "features.%d.1", m->arch.def->nstages + 1);
    reg_cba(r, &m->conv_head, conv, bn, nb + 1);
    reg_head(r, &m->head, nb + 2);
}

static void unit_set(lk_cba *u, int ic, int oc, int k, int stride, int act) {
    *u = (lk_cba){.ic = ic, .oc = oc, .k = k, .stride = stride, .groups = 1, .has_act = act,
                  .trainable = 1};
}

lk_status lk_model_create(lk_model **out, const lk_model_cfg *cfg) {
    LK_REQUIRE(out, "model create: out is NULL");
    *out = NULL;
    LK_REQUIRE(cfg && cfg->arch, "model create: configuration or architecture name is NULL");
    LK_REQUIRE(cfg->num_classes >= 1 && cfg->num_classes <= 100000,
               "num_classes must be in 1..100000, got %d", cfg->num_classes);
    int kind = cfg->head ? lk_head_kind_from_name(cfg->head) : LK_HEAD_LINEAR;
    LK_REQUIRE(kind >= 0,
               "unknown head '%s' (known: linear, multi_attention, channel_attention, "
               "spatial_attention)", cfg->head);
    LK_REQUIRE(cfg->dropout < 1.f, "dropout must be in [0, 1), got %g", (double)cfg->dropout);
    LK_REQUIRE(cfg->sd_prob < 1.f, "stochastic depth rate must be in [0, 1), got %g",
               (double)cfg->sd_prob);
    LK_REQUIRE(cfg->policy >= LK_POLICY_DEFAULT && cfg->policy < LK_POLICY_CUSTOM,
               "policy must be default, all, last_block or head, got %d", (int)cfg->policy);
    lk_model *m = calloc(1, sizeof *m);
    if (!m) return LK_FAIL(LK_ERR_NOMEM, "model");
    lk_status st = lk_arch_build(&m->arch, cfg->arch);
    if (st != LK_OK) {
        free(m);
        return st;
    }
    m->num_classes = cfg->num_classes;
    m->head_kind = (lk_head_kind)kind;
    m->dropout = cfg->dropout >= 0.f ? cfg->dropout
                 : kind == LK_HEAD_LINEAR ? m->arch.def->dropout : 0.5f;
    m->version = (lk_versions){1, 1};
    unit_set(&m->stem, 3, m->arch.stem_out, 3, 2, 1);
    for (int i = 0; i < m->arch.nblocks; i++) lk_block_setup(&m->blocks[i], &m->arch.blocks[i]);
    unit_set(&m->conv_head, m->arch.head_in, m->arch.head_out, 1, 1, 1);
    lk_head_setup(&m->head, m->head_kind, m->arch.head_out, m->num_classes, m->dropout);

    lk_reg r = {.m = m, .pass = 0};
    reg_all(&r);
    if (r.st == LK_OK) {
        m->params = lk_alloc(m->nparams * sizeof(float));
        m->grads = lk_alloc(m->nparams * sizeof(float));
        m->buffers = lk_alloc((m->nbuffers ? m->nbuffers : 1) * sizeof(float));
        if (!m->params || !m->grads || !m->buffers) r.st = LK_FAIL(LK_ERR_NOMEM, "parameter arenas");
    }
    if (r.st == LK_OK) {
        memset(m->params, 0, m->nparams * sizeof(float));
        memset(m->grads, 0, m->nparams * sizeof(float));
        memset(m->buffers, 0, m->nbuffers * sizeof(float));
        r.pass = 1;
        reg_all(&r);
    }
    if (r.st == LK_OK && cfg->sd_prob >= 0.f)
        r.st = lk_model_set_regularization(m, m->dropout, cfg->sd_prob);
    if (r.st == LK_OK) r.st = lk_model_set_policy(m, cfg->policy);
    if (r.st != LK_OK) {
        lk_model_free(m);
        return r.st;
    }
    m->sd_prob = cfg->sd_prob >= 0.f ? cfg->sd_prob : m->arch.def->sd_prob;
    *out = m;
    return LK_OK;
}

/* ------------------------------------------------------------------ policy */

static void plan_free(lk_model *m);

static int piece_trainable(const lk_model *m, int piece) {
    for (int u = 0; u < m->nunits; u++)
        if (m->units[u].piece == piece && *m->units[u].trainable) return 1;
    return 0;
}

/* First piece after the frozen prefix: the first with a trainable unit (the head at
 * the latest, which always runs from the prefix output). */
static int prefix_end(const lk_model *m) {
    for (int p = 0; p < last_piece(m); p++)
        if (piece_trainable(m, p)) return p;
    return last_piece(m);
}

static int64_t trainable_floats(const lk_model *m) {
    int64_t n = 0;
    for (int i = 0; i < m->ntensors; i++)
        if (m->tensors[i].kind == LK_TENSOR_PARAM && lk_model_tensor_trainable(m, i))
            n += m->tensors[i].numel;
    return n;
}

/* After the trainable set changed: new plans, zero gradients for frozen tensors. */
static void policy_changed(lk_model *m) {
    plan_free(m);
    lk_free(m->acc);
    m->acc = NULL;
    for (int i = 0; i < m->ntensors; i++) {
        const lk_tensor_desc *t = &m->tensors[i];
        if (t->kind == LK_TENSOR_PARAM && !lk_model_tensor_trainable(m, i))
            memset(m->grads + t->offset, 0, sizeof(float) * (size_t)t->numel);
    }
    lk_model_bump_version(m, 1);
}

lk_status lk_model_set_policy(lk_model *m, lk_policy policy) {
    LK_REQUIRE(m, "set_policy: model is NULL");
    if (policy == LK_POLICY_DEFAULT)
        policy = m->head_kind == LK_HEAD_LINEAR ? LK_POLICY_ALL : LK_POLICY_LAST_BLOCK;
    LK_REQUIRE(policy == LK_POLICY_ALL || policy == LK_POLICY_LAST_BLOCK ||
                   policy == LK_POLICY_HEAD,
               "set_policy: policy must be all, last_block or head (a custom set goes through "
               "lk_model_set_trainable), got %d", (int)policy);
    const int nb = m->arch.nblocks, last_stage = m->arch.def->nstages - 1;
    int first_train = 0; /* first trainable piece */
    if (policy == LK_POLICY_HEAD) first_train = nb + 2;
    if (policy == LK_POLICY_LAST_BLOCK) {
        first_train = nb + 1;
        for (int i = nb - 1; i >= 0 && m->blocks[i].cfg.stage == last_stage; i--) first_train = 1 + i;
    }
    for (int u = 0; u < m->nunits; u++) *m->units[u].trainable = m->units[u].piece >= first_train;
    m->policy = policy;
    policy_changed(m);
    return LK_OK;
}

lk_status lk_model_set_trainable(lk_model *m, const uint8_t *flags) {
    LK_REQUIRE(m && flags, "set_trainable: NULL argument");
    /* Validate first: a refused set changes nothing. */
    for (int i = 0; i < m->ntensors; i++) {
        const lk_tensor_desc *t = &m->tensors[i];
        if (t->kind != LK_TENSOR_PARAM) continue;
        for (int j = 0; j < i; j++) {
            const lk_tensor_desc *o = &m->tensors[j];
            if (o->kind == LK_TENSOR_PARAM && o->unit == t->unit && !flags[i] != !flags[j])
                return LK_FAIL(LK_ERR_ARG,
                               "'%s' and '%s' belong to one unit and must train together "
                               "(select both or neither)", o->name, t->name);
        }
    }
    for (int i = 0; i < m->ntensors; i++)
        if (m->tensors[i].kind == LK_TENSOR_PARAM)
            *m->units[m->tensors[i].unit].trainable = flags[i] != 0;
    m->policy = LK_POLICY_CUSTOM;
    policy_changed(m);
    return LK_OK;
}

int lk_model_tensor_trainable(const lk_model *m, int i) {
    if (i < 0 || i >= m->ntensors) return 0;
    return *m->units[m->tensors[i].unit].trainable;
}

void lk_model_bump_version(lk_model *m, int frozen_too) {
    m->version.all++;
    if (frozen_too) m->version.frozen++;
}

uint64_t lk_model_version(const lk_model *m) { return m->version.all; }

/* ----------------------------------------------------------------- shapes */

static int conv_out(int i, int k, int s) { return (i + 2 * ((k - 1) / 2) - k) / s + 1; }

/* Input channels of a piece. */
static int piece_in_channels(const lk_model *m, int p) {
    const int nb = m->arch.nblocks;
    if (p == 0) return 3;
    if (p <= nb) return m->blocks[p - 1].cfg.in;
    if (p == nb + 1) return m->arch.head_in;
    return m->arch.head_out;
}

/* Spatial size at the input of piece `upto` for an image of h x w. */
static void piece_in_size(const lk_model *m, int upto, int *h, int *w) {
    for (int p = 0; p < upto; p++) {
        int k = 1, s = 1;
        if (p == 0) {
            k = 3;
            s = 2;
        } else if (p <= m->arch.nblocks) {
            k = m->blocks[p - 1].cfg.kernel;
            s = m->blocks[p - 1].cfg.stride;
        }
        *h = conv_out(*h, k, s);
        *w = conv_out(*w, k, s);
    }
}

lk_status lk_model_features_shape(const lk_model *m, int h, int w, int *c, int *fh, int *fw) {
    LK_REQUIRE(m && c && fh && fw, "features_shape: NULL argument");
    LK_REQUIRE(h >= 32 && w >= 32 && h <= 4096 && w <= 4096,
               "image size %dx%d out of range (32..4096 per side)", h, w);
    int p = prefix_end(m);
    *c = piece_in_channels(m, p);
    *fh = h;
    *fw = w;
    piece_in_size(m, p, fh, fw);
    return LK_OK;
}

/* ---------------------------------------------------------------- planning */

static void plan_free(lk_model *m) {
    lk_cba_free(&m->stem);
    lk_cba_free(&m->conv_head);
    for (int i = 0; i < m->arch.nblocks; i++) lk_block_free(&m->blocks[i]);
    lk_head_free(&m->head);
    lk_prim_free(&m->to_nhwc);
    lk_prim_free(&m->to_nchw);
    lk_prim_free(&m->feat_to_nchw);
    dnnl_memory_t *mems[] = {&m->m_x_nchw, &m->m_x_nhwc, &m->m_dx_nhwc,
                             &m->m_dx_nchw, &m->m_f_nhwc, &m->m_f_nchw};
    for (size_t i = 0; i < sizeof mems / sizeof mems[0]; i++) lk_mem_free(mems[i]);
    lk_free(m->arena);
    m->arena = NULL;
    lk_free(m->scratch.base);
    m->scratch = (lk_scratch){0};
    m->planned = 0;
    m->fwd_ready = 0;
    m->head_ready = 0;
}

/* Output of piece p (after its forward). */
static const float *piece_out(const lk_model *m, int p) {
    if (p == 0) return m->stem.out;
    if (p <= m->arch.nblocks) return m->blocks[p - 1].out;
    return m->conv_head.out;
}

static const float *piece_in(const lk_model *m, int p) {
    return p == m->start ? m->x : piece_out(m, p - 1);
}

static void bind_piece(lk_model *m, int p, lk_arena *a) {
    const int nb = m->arch.nblocks;
    if (p == 0)
        lk_cba_bind(&m->stem, a);
    else if (p <= nb)
        lk_block_bind(&m->blocks[p - 1], a);
    else if (p == nb + 1)
        lk_cba_bind(&m->conv_head, a);
    else
        lk_head_bind(&m->head, a);
}

/* Pieces that keep nothing for a backward (the frozen prefix of a training plan, every
 * backbone piece of an inference plan) bind into two reused regions: piece p writes
 * region (p - start) % 2 and reads its input from the other. The rest bind in order. */
static void plan_bind(lk_model *m, lk_arena *a) {
    const int train = m->pflags & LK_FWD_TRAIN, last = last_piece(m);
    /* First piece bound in order: every piece with a backward keeps its activations
     * (with the input gradient that is every piece: it passes through the prefix). */
    const int split = !train ? last : (m->pflags & LK_FWD_INPUT_GRAD) ? m->start : m->boundary;
    const size_t n = (size_t)m->pn;
    m->x = lk_arena_take(a, n * m->ph * m->pw * (size_t)piece_in_channels(m, m->start));
    size_t region = 0;
    for (int p = m->start; p < split; p++) {
        lk_arena t = {0};
        bind_piece(m, p, &t);
        if (t.used > region) region = t.used;
    }
    if (region) {
        float *r[2] = {lk_arena_take(a, region), lk_arena_take(a, region)};
        for (int p = m->start; a->base && p < split; p++) {
            lk_arena ra = {.base = r[(p - m->start) % 2]};
            bind_piece(m, p, &ra);
        }
    }
    const int first_kept = split > m->start ? split : m->start;
    for (int p = first_kept; p <= last; p++) bind_piece(m, p, a);
    /* One buffer for what the kept blocks recompute (lk_block_shared); block i is piece
     * i + 1. */
    const int lo = first_kept > 1 ? first_kept - 1 : 0;
    const int hi = last < m->arch.nblocks ? last : m->arch.nblocks; /* one past the last */
    size_t shared = 0;
    for (int i = lo; i < hi; i++) {
        size_t c = lk_block_shared(&m->blocks[i]);
        if (c > shared) shared = c;
    }
    if (shared) {
        float *buf = lk_arena_take(a, shared);
        for (int i = lo; i < hi; i++) lk_block_share(&m->blocks[i], buf);
    }
    m->dx = NULL;
    if (!train) return;
    if (m->pflags & LK_FWD_INPUT_GRAD) m->dx = lk_arena_take(a, n * m->ph * m->pw * 3);
    size_t big = a->max_act;
    m->b0 = lk_arena_take(a, big);
    m->b1 = lk_arena_take(a, big);
    m->g.t1 = lk_arena_take(a, big);
    m->g.t2 = lk_arena_take(a, big);
}

static lk_status plan_cba(lk_cba *u, const lk_plan_opts *o, int train, int grad, int *h, int *w) {
    u->need_dx = train && grad;
    LK_TRY(lk_cba_plan(u, o, lk_unit_mode(train, u->trainable, grad), *h, *w));
    *h = u->oh;
    *w = u->ow;
    return LK_OK;
}

static lk_status plan_reorder(lk_prim *P, dnnl_memory_t *m_from, dnnl_memory_t *m_to, int n,
                              int c, int h, int w, dnnl_format_tag_t from, dnnl_format_tag_t to) {
    dnnl_memory_desc_t a = NULL, b = NULL;
    int needed;
    lk_status st = lk_md4(&a, n, c, h, w, from);
    if (st == LK_OK) st = lk_md4(&b, n, c, h, w, to);
    if (st == LK_OK) st = lk_reorder_init(P, &needed, a, b);
    if (st == LK_OK) st = lk_mem(m_from, a);
    if (st == LK_OK) st = lk_mem(m_to, b);
    if (a) dnnl_memory_desc_destroy(a);
    if (b) dnnl_memory_desc_destroy(b);
    return st;
}

static lk_status plan_layers(lk_model *m) {
    const lk_plan_opts *o = &m->opts;
    const int train = (m->pflags & LK_FWD_TRAIN) != 0, nb = m->arch.nblocks;
    int grad = train && (m->pflags & LK_FWD_INPUT_GRAD); /* a gradient is wanted here */
    int h = m->ph, w = m->pw;
    for (int p = m->start; p < last_piece(m); p++) {
        if (p == 0) {
            LK_TRY(plan_cba(&m->stem, o, train, grad, &h, &w));
        } else if (p <= nb) {
            lk_block *b = &m->blocks[p - 1];
            LK_TRY(lk_block_plan(b, o, train, grad, h, w));
            h = b->oh;
            w = b->ow;
        } else {
            LK_TRY(plan_cba(&m->conv_head, o, train, grad, &h, &w));
        }
        grad = grad || (train && piece_trainable(m, p));
    }
    m->head.eval_grad = (m->pflags & LK_PLAN_EXPLAIN) != 0;
    LK_TRY(lk_head_plan(&m->head, o->n, h, w, train, grad));

    /* NCHW user tensors <-> NHWC internal layout. */
    const int cin = piece_in_channels(m, m->start);
    LK_TRY(plan_reorder(&m->to_nhwc, &m->m_x_nchw, &m->m_x_nhwc, o->n, cin, m->ph, m->pw,
                        dnnl_nchw, dnnl_nhwc));
    if (m->pflags & LK_FWD_INPUT_GRAD)
        LK_TRY(plan_reorder(&m->to_nchw, &m->m_dx_nhwc, &m->m_dx_nchw, o->n, 3, m->ph, m->pw,
                            dnnl_nhwc, dnnl_nchw));
    if (m->start == 0 && m->boundary > 0) {
        int c, fh, fw;
        LK_TRY(lk_model_features_shape(m, m->ph, m->pw, &c, &fh, &fw));
        LK_TRY(plan_reorder(&m->feat_to_nchw, &m->m_f_nhwc, &m->m_f_nchw, o->n, c, fh, fw,
                            dnnl_nhwc, dnnl_nchw));
    }
    return LK_OK;
}

static lk_status plan(lk_model *m, int n, int h, int w, unsigned flags) {
    /* A changed convolution policy (leukemia.set_conv_algorithm) plans anew as well. */
    const int wino = (int)lk_conv2d_get_wino_policy();
    if (m->planned && m->pn == n && m->ph == h && m->pw == w && m->pflags == flags &&
        m->pwino == wino)
        return LK_OK;
    plan_free(m);
    const int from = (flags & LK_FWD_FROM_FEATURES) != 0;
    LK_REQUIRE(n >= 1, "batch size must be >= 1, got %d", n);
    if (from) {
        LK_REQUIRE(!(flags & LK_FWD_INPUT_GRAD),
                   "the input gradient needs an image input, not prefix features");
        LK_REQUIRE(h >= 1 && w >= 1 && h <= 4096 && w <= 4096,
                   "feature map size %dx%d out of range (1..4096 per side)", h, w);
    } else {
        LK_REQUIRE(h >= 32 && w >= 32 && h <= 4096 && w <= 4096,
                   "image size %dx%d out of range (32..4096 per side)", h, w);
    }
    LK_REQUIRE(!(flags & LK_FWD_TRAIN) || n >= 2,
               "training needs a batch of at least 2 images (batch-norm statistics), got %d", n);
    m->pn = n;
    m->ph = h;
    m->pw = w;
    m->pflags = flags;
    m->pwino = wino;
    m->boundary = prefix_end(m);
    m->start = from ? m->boundary : 0;
    m->opts = (lk_plan_opts){.n = n, .bn_eps = m->arch.def->bn_eps,
                             .bn_momentum = m->arch.def->bn_momentum, .scratch = &m->scratch};
    lk_status st = plan_layers(m);
    if (st != LK_OK) {
        plan_free(m);
        return st;
    }
    if (m->scratch.floats) {
        m->scratch.base = lk_alloc(m->scratch.floats * sizeof(float));
        if (!m->scratch.base) {
            const size_t mib = m->scratch.floats * sizeof(float) >> 20;
            plan_free(m);
            return LK_FAIL(LK_ERR_NOMEM, "layer workspace of %zu MiB for batch %d at %dx%d", mib,
                           n, h, w);
        }
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

static lk_status run_reorder(lk_prim *P, dnnl_memory_t from, dnnl_memory_t to, const float *src,
                             float *dst) {
    if (!P->p) { /* equal layouts (NHWC is NCHW at 1x1 spatial): lk_reorder_init made none */
        const_dnnl_memory_desc_t md;
        LK_DNNL(dnnl_memory_get_memory_desc(from, &md));
        memcpy(dst, src, dnnl_memory_desc_get_size(md));
        return LK_OK;
    }
    LK_TRY(lk_mem_set(from, src));
    LK_TRY(lk_mem_set(to, dst));
    const dnnl_exec_arg_t r[] = {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}};
    return lk_prim_exec(P, 2, r);
}

/* The prefix output (input of the boundary piece) to NCHW `features`. */
static lk_status emit_features(lk_model *m, float *features, const float *user_x) {
    if (m->boundary == 0) { /* nothing frozen: the features are the image */
        size_t count = (size_t)m->pn * 3 * m->ph * m->pw;
        memcpy(features, user_x, count * sizeof(float));
        return LK_OK;
    }
    return run_reorder(&m->feat_to_nchw, m->m_f_nhwc, m->m_f_nchw, piece_in(m, m->boundary),
                       features);
}

static lk_status forward(lk_model *m, float *logits, float *features, const float *x, int n,
                         int h, int w, unsigned flags, uint64_t seed, int prefix_only) {
    LK_TRY(plan(m, n, h, w, flags));
    m->fwd_ready = 0;
    m->head_ready = 0;
    LK_TRY(run_reorder(&m->to_nhwc, m->m_x_nchw, m->m_x_nhwc, x, m->x));
    const int nb = m->arch.nblocks, train = (flags & LK_FWD_TRAIN) != 0;
    const lk_versions *v = &m->version;
    for (int p = m->start; p < last_piece(m); p++) {
        if (p == m->boundary && features) LK_TRY(emit_features(m, features, x));
        if (p == m->boundary && prefix_only) return LK_OK;
        const float *in = piece_in(m, p);
        if (p == 0)
            LK_TRY(lk_cba_forward(&m->stem, in, lk_unit_version(v, m->stem.trainable)));
        else if (p <= nb) /* distinct, reproducible streams per block and per call */
            LK_TRY(lk_block_forward(&m->blocks[p - 1], in, seed * 1000003ULL + (uint64_t)p, v));
        else
            LK_TRY(lk_cba_forward(&m->conv_head, in, lk_unit_version(v, m->conv_head.trainable)));
    }
    if (m->boundary == last_piece(m) && features) LK_TRY(emit_features(m, features, x));
    if (prefix_only) return LK_OK;
    LK_TRY(lk_head_forward(&m->head, logits, piece_in(m, last_piece(m)), seed * 1000003ULL, v));
    m->head_ready = 1;
    if (train && trainable_floats(m) > 0) {
        lk_model_bump_version(m, 0); /* batch statistics moved the running ones */
        m->fwd_ready = 1;
    }
    return LK_OK;
}

lk_status lk_model_forward(lk_model *m, float *logits, float *features, const float *x, int n,
                           int h, int w, unsigned flags, uint64_t seed) {
    LK_REQUIRE(m && logits && x, "model forward: NULL argument");
    LK_REQUIRE(!(flags & ~7u), "model forward: unknown flags 0x%x", flags);
    LK_REQUIRE(!features || !(flags & LK_FWD_FROM_FEATURES),
               "model forward: features can be returned only for image input");
    return forward(m, logits, features, x, n, h, w, flags, seed, 0);
}

lk_status lk_model_frozen_features(lk_model *m, float *features, const float *x, int n, int h,
                                   int w) {
    LK_REQUIRE(m && features && x, "frozen_features: NULL argument");
    return forward(m, NULL, features, x, n, h, w, 0, 0, 1);
}

/* Copy the gradients of trainable tensors to (save) or add them from (restore) buf. */
static void trainable_grads(lk_model *m, float *buf, int restore) {
    size_t off = 0;
    for (int i = 0; i < m->ntensors; i++) {
        const lk_tensor_desc *t = &m->tensors[i];
        if (t->kind != LK_TENSOR_PARAM || !lk_model_tensor_trainable(m, i)) continue;
        float *g = m->grads + t->offset, *s = buf + off;
        if (restore) {
            for (int64_t k = 0; k < t->numel; k++) g[k] += s[k];
        } else {
            memcpy(s, g, sizeof(float) * (size_t)t->numel);
        }
        off += (size_t)t->numel;
    }
}

static lk_status backward(lk_model *m, const float *dlogits) {
    const int nb = m->arch.nblocks;
    const float *head_in = piece_in(m, last_piece(m));
    LK_TRY(lk_head_backward(&m->head, m->head.need_dfeat ? m->b0 : NULL, dlogits, head_in));
    if (!m->head.need_dfeat) return LK_OK;
    float *cur = m->b0, *other = m->b1;
    for (int p = nb + 1; p >= m->start; p--) {
        const float *in = piece_in(m, p);
        int more;
        if (p == nb + 1 || p == 0) {
            lk_cba *u = p ? &m->conv_head : &m->stem;
            if (u->mode == LK_MODE_EVAL) return LK_OK;
            float *dx = p ? other : m->dx;
            LK_TRY(lk_cba_backward(u, u->need_dx ? dx : NULL, cur, in));
            more = u->need_dx;
        } else {
            lk_block *b = &m->blocks[p - 1];
            if (b->mode == LK_MODE_EVAL) return LK_OK;
            LK_TRY(lk_block_backward(b, b->need_dx ? other : NULL, cur, in, &m->g));
            more = b->need_dx;
        }
        if (!more) return LK_OK;
        float *t = cur;
        cur = other;
        other = t;
    }
    return LK_OK;
}

lk_status lk_model_backward(lk_model *m, float *dx, const float *dlogits, int accumulate) {
    LK_REQUIRE(m && dlogits, "model backward: NULL argument");
    if (!m->fwd_ready)
        return LK_FAIL(LK_ERR_STATE, "backward needs a preceding forward in train mode with "
                                     "something trainable");
    LK_REQUIRE(!dx || (m->pflags & LK_FWD_INPUT_GRAD),
               "the input gradient was not planned: run the forward with the input gradient "
               "enabled");
    int64_t nt = trainable_floats(m);
    if (accumulate) {
        if (!m->acc) m->acc = lk_alloc((size_t)nt * sizeof(float));
        if (!m->acc) return LK_FAIL(LK_ERR_NOMEM, "gradient accumulation buffer of %lld floats",
                                    (long long)nt);
        trainable_grads(m, m->acc, 0);
    }
    lk_status st = backward(m, dlogits);
    if (st != LK_OK) return st;
    if (accumulate) trainable_grads(m, m->acc, 1);
    if (dx) LK_TRY(run_reorder(&m->to_nchw, m->m_dx_nhwc, m->m_dx_nchw, m->dx, dx));
    return LK_OK;
}

/* ------------------------------------------------------------ explanations */

lk_status lk_model_head_input_shape(const lk_model *m, int h, int w, int *c, int *fh, int *fw) {
    LK_REQUIRE(m && c && fh && fw, "head_input_shape: NULL argument");
    LK_REQUIRE(h >= 32 && w >= 32 && h <= 4096 && w <= 4096,
               "image size %dx%d out of range (32..4096 per side)", h, w);
    *c = m->head.c;
    *fh = h;
    *fw = w;
    piece_in_size(m, last_piece(m), fh, fw);
    return LK_OK;
}

lk_status lk_model_explain_forward(lk_model *m, float *logits, float *feat, const float *x, int n,
                                   int h, int w) {
    LK_REQUIRE(m && logits && x, "explain forward: NULL argument");
    LK_TRY(forward(m, logits, NULL, x, n, h, w, LK_PLAN_EXPLAIN, 0, 0));
    if (feat) { /* the head's input stays in the arena until the next forward */
        const size_t count = (size_t)m->pn * m->head.h * m->head.w * m->head.c;
        memcpy(feat, piece_in(m, last_piece(m)), count * sizeof(float));
    }
    return LK_OK;
}

lk_status lk_model_explain_backward(lk_model *m, float *dfeat, const float *dlogits) {
    LK_REQUIRE(m && dfeat && dlogits, "explain backward: NULL argument");
    if (!m->planned || !(m->pflags & LK_PLAN_EXPLAIN) || !m->head_ready)
        return LK_FAIL(LK_ERR_STATE, "explain backward needs a preceding explain forward "
                                     "(another forward ran in between)");
    return lk_head_backward(&m->head, dfeat, dlogits, piece_in(m, last_piece(m)));
}

lk_status lk_model_head_maps(const lk_model *m, float *att, float *s1, float *s2, float *attw) {
    LK_REQUIRE(m, "head maps: NULL model");
    if (!m->planned || !m->head_ready)
        return LK_FAIL(LK_ERR_STATE, "head maps need a preceding forward");
    const lk_head *hd = &m->head;
    const lk_head_kind k = hd->kind;
    const int chan = k == LK_HEAD_MULTI_ATTENTION || k == LK_HEAD_CHANNEL_ATTENTION;
    const int sp1 = k == LK_HEAD_MULTI_ATTENTION || k == LK_HEAD_SPATIAL_ATTENTION;
    const int multi = k == LK_HEAD_MULTI_ATTENTION;
    LK_REQUIRE(!att || chan, "head maps: the %s head has no channel attention",
               lk_head_kind_name(k));
    LK_REQUIRE(!s1 || sp1, "head maps: the %s head has no first spatial map",
               lk_head_kind_name(k));
    LK_REQUIRE((!s2 && !attw) || multi,
               "head maps: the %s head has no second spatial map nor attention pool",
               lk_head_kind_name(k));
    const size_t nc = (size_t)hd->n * hd->c, ns = (size_t)hd->n * hd->h * hd->w;
    if (att) memcpy(att, hd->b.att, nc * sizeof(float));
    if (s1) memcpy(s1, hd->sp[0].a[LK_SPATIAL_CONVS - 1], ns * sizeof(float));
    if (s2) memcpy(s2, hd->sp[1].a[LK_SPATIAL_CONVS - 1], ns * sizeof(float));
    if (attw) memcpy(attw, hd->b.attw, ns * sizeof(float));
    return LK_OK;
}

lk_status lk_model_set_regularization(lk_model *m, float dropout, float sd_prob) {
    LK_REQUIRE(dropout >= 0.f && dropout < 1.f, "dropout must be in [0, 1), got %g", dropout);
    LK_REQUIRE(sd_prob >= 0.f && sd_prob < 1.f, "stochastic depth rate must be in [0, 1), got %g",
               sd_prob);
    m->dropout = dropout;
    m->head.dropout = dropout;
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
    lk_free(m->acc);
    free(m->tensors);
    free(m->units);
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
    info->head = lk_head_kind_name(m->head_kind);
    info->num_classes = m->num_classes;
    info->default_size = m->arch.def->default_size;
    info->nblocks = m->arch.nblocks;
    info->dropout = m->dropout;
    info->sd_prob = m->sd_prob;
    info->bn_eps = m->arch.def->bn_eps;
    info->bn_momentum = m->arch.def->bn_momentum;
    info->policy = m->policy;
    info->prefix_pieces = prefix_end(m);
    info->feature_channels = piece_in_channels(m, prefix_end(m));
    info->trainable_params = trainable_floats(m);
    if (m->planned) {
        info->planned = 1;
        info->plan_n = m->pn;
        info->plan_h = m->ph;
        info->plan_w = m->pw;
        info->plan_flags = (int)m->pflags;
        info->plan_bytes = (int64_t)((m->arena_floats + m->scratch.floats) * sizeof(float));
    }
    info->plans_made = m->plans_made;
}
