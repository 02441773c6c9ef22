/* Classifier heads on the backbone's final feature map F [N, H, W, C] (NHWC):
 *
 *  LINEAR             torchvision's: GAP -> Dropout -> Linear C->K (`classifier.1.*`).
 *  MULTI_ATTENTION    the Keras "Multi-Attention" recipe (DESIGN.md):
 *                       a  = sigmoid(MLP(GAP F) + MLP(GMP F)), MLP = fc1 ReLU fc2 ReLU
 *                       Fc = a * F
 *                       cs = [mean_c Fc, max_c Fc]                      [N, H, W, 2]
 *                       g1 = GAP(S1(cs) * Fc),  g2 = GAP(S2(cs))        [N, C], [N, 1]
 *                       p  = sum_s softmax_s(F . w) F_s                  [N, C]
 *                       z  = (g1 + g2) / 2 + p
 *                     then BatchNorm1d -> Linear C->512 -> ReLU -> Dropout -> Linear 512->K.
 *                     S = 3x3 convs 2->64->32->16 (ReLU6) ->1 (sigmoid), no bias, pad 1.
 *  CHANNEL_ATTENTION  ablation: z = GAP(Fc) (channel attention only), same MLP tail.
 *  SPATIAL_ATTENTION  ablation: z = GAP(S1([mean_c F, max_c F]) * F) (one spatial
 *                     attention on F, no channel attention), same MLP tail.
 *
 * Parameters are torchvision-shaped pointers into the model's arenas; the head's
 * modules train or stay frozen one by one (lk_head_module).
 */
#ifndef LK_HEAD_H
#define LK_HEAD_H

#include "lk_blocks.h"

typedef enum lk_head_kind {
    LK_HEAD_LINEAR = 0,
    LK_HEAD_MULTI_ATTENTION = 1,
    LK_HEAD_CHANNEL_ATTENTION = 2,
    LK_HEAD_SPATIAL_ATTENTION = 3,
} lk_head_kind;

/* Name <-> kind ("linear", "multi_attention", "channel_attention", "spatial_attention"). */
const char *lk_head_kind_name(lk_head_kind kind);
int lk_head_kind_from_name(const char *name); /* -1 when unknown */

/* Modules whose parameters train together. */
typedef enum lk_head_module {
    LK_HM_CLASSIFIER = 0, /* classifier.1 (LINEAR) */
    LK_HM_CHANNEL,        /* head.channel.fc1/fc2 */
    LK_HM_SPATIAL1,       /* head.spatial1.0..3 */
    LK_HM_SPATIAL2,       /* head.spatial2.0..3 */
    LK_HM_ATTN_POOL,      /* head.attn_pool */
    LK_HM_BN,             /* head.bn */
    LK_HM_FC,             /* head.fc */
    LK_HM_OUT,            /* head.out */
    LK_HM_COUNT
} lk_head_module;

#define LK_HEAD_HIDDEN 512
/* head.bn is a BatchNorm1d with PyTorch's (and Keras') defaults, whatever the backbone's. */
#define LK_HEAD_BN_EPS 1e-5f
#define LK_HEAD_BN_MOMENTUM 0.1f
#define LK_SPATIAL_CONVS 4

typedef struct lk_spatial_att {
    float *w[LK_SPATIAL_CONVS], *dw[LK_SPATIAL_CONVS]; /* [64,2,3,3] [32,64,3,3] [16,32,3,3] [1,16,3,3] */
    lk_conv2d conv[LK_SPATIAL_CONVS];
    lk_act act[LK_SPATIAL_CONVS];                       /* ReLU6 x 3, sigmoid */
    float *z[LK_SPATIAL_CONVS];                         /* [N, H, W, 64|32|16|1] conv outputs */
    float *a[LK_SPATIAL_CONVS];                         /* activations; a[3] is the map [N, H, W] */
} lk_spatial_att;

typedef struct lk_head_params {
    float *cls_w, *cls_dw, *cls_b, *cls_db; /* classifier.1: [K, C], [K] */
    float *w1, *dw1, *b1, *db1;             /* head.channel.fc1: [C/8, C, 1, 1], [C/8] */
    float *w2, *dw2, *b2, *db2;             /* head.channel.fc2: [C, C/8, 1, 1], [C] */
    float *ap, *dap;                        /* head.attn_pool.weight: [1, C] */
    float *bn_g, *bn_dg, *bn_b, *bn_db;     /* head.bn: [C] */
    float *bn_rm, *bn_rv;                   /* head.bn running statistics [C] */
    float *fc_w, *fc_dw, *fc_b, *fc_db;     /* head.fc: [512, C], [512] */
    float *out_w, *out_dw, *out_b, *out_db; /* head.out: [K, 512], [K] */
} lk_head_params;

/* Buffers of a planned head, all in the plan's arena. S = H*W positions. */
typedef struct lk_head_buffers {
    float *pool2;        /* [2N, C] GAP rows then GMP rows of F */
    float *z1, *h1;      /* [2N, C/8] fc1 output, after ReLU */
    float *z2, *h2;      /* [2N, C] fc2 output, after ReLU */
    float *apre, *att;   /* [N, C] MLP(GAP) + MLP(GMP), after sigmoid */
    float *fc_in;        /* [N, S, C] Fc = att * F (channel attention) */
    float *cs;           /* [N, S, 2] channel mean/max of the spatial input */
    int32_t *argmax;     /* [N, S] channel argmax of the spatial input */
    float *fs;           /* [N, S, C] S1 map * spatial input */
    float *g1, *g2;      /* [N, C] GAP of fs (or of the input); [N] GAP of the S2 map */
    float *scores, *attw;/* [N, S] F . w and its softmax over positions */
    float *pooled_att;   /* [N, C] attention-weighted pool p */
    float *z, *zb;       /* [N, C] before / after BatchNorm1d (LINEAR: GAP(F)) */
    float *bn_mean, *bn_var; /* [C] batch statistics */
    float *y1, *r1;      /* [N, 512] fc output, after ReLU */
    float *drop;         /* [N, 512] (LINEAR: [N, C]) after dropout (backward plans) */
    uint8_t *mask;       /* dropout mask, one byte per element */
    /* Gradients (backward plans). */
    float *ddrop, *dy1;  /* [N, 512] (LINEAR: ddrop is [N, C]) */
    float *dzb, *dz;     /* [N, C] at the BN output / input */
    float *dg1;          /* [N, C] */
    float *dg2;          /* [N] */
    float *dattw, *dscores; /* [N, S] */
    float *tmp;          /* [N, S, C] one contribution to dF before it is added */
    float *dx_sp;        /* [N, S, C] gradient of the spatial input (Fc or F) */
    float *dfs;          /* [N, S, C] gradient of fs, then of chanstat's input */
    float *dmap;         /* [N, S] gradient of a spatial map */
    float *dcs, *dcs2;   /* [N, S, 2] gradients of cs from S1, S2 */
    float *dsp0, *dsp1;  /* [N, S, 64] ping-pong gradients inside a spatial branch */
    float *datt;         /* [N, C] gradient of att, then of apre */
    float *dh2, *dpool2; /* [2N, C] */
    float *dh1;          /* [2N, C/8] */
} lk_head_buffers;

typedef struct lk_head {
    lk_head_kind kind;
    int c, c8, k;       /* feature channels, C/8, classes */
    float dropout;
    lk_head_params p;
    lk_spatial_att sp[2];
    int trainable[LK_HM_COUNT];
    /* Set before lk_head_plan: plan a backward in eval semantics (explanations). BN1d
     * uses its running statistics, dropout is the identity, and no parameter gradient
     * is written; only the gradient of F is computed. */
    int eval_grad;

    /* Plan. */
    int n, h, w;
    int bwd;            /* a backward is planned (training plan with a gradient path) */
    int need_dfeat;     /* the gradient of F is wanted (something below trains) */
    int need_dz;        /* the attention part needs a backward */
    lk_gpool gap, gmp, gap_map;     /* GAP/GMP over H, W of [N, H, W, C]; GAP of the S2 map */
    lk_linear fc1, fc2, attn, fc, out, cls;
    lk_act relu1, relu2, gate, relu_fc;
    lk_chmul chmul;
    lk_softmax softmax;
    lk_bn bn;

    lk_head_buffers b;  /* activations and gradient scratch of the current plan */
} lk_head;

/* Zero the head and set its structure. */
void lk_head_setup(lk_head *hd, lk_head_kind kind, int c, int k, float dropout);
/* Plan for features [N, H, W, C]. `train`: a training plan; `grad_in`: the gradient of
 * F is wanted. Module modes follow `trainable`. With `eval_grad` set, both are implied
 * and every module runs as at inference. */
lk_status lk_head_plan(lk_head *hd, int n, int h, int w, int train, int grad_in);
void lk_head_bind(lk_head *hd, lk_arena *a);
/* logits [N, K] from f [N, H, W, C]; dropout from `seed` when a backward is planned. */
lk_status lk_head_forward(lk_head *hd, float *logits, const float *f, uint64_t seed,
                          const lk_versions *v);
/* dfeat [N, H, W, C] (NULL unless need_dfeat) and trainable parameter gradients. */
lk_status lk_head_backward(lk_head *hd, float *dfeat, const float *dlogits, const float *f);
void lk_head_free(lk_head *hd);
int lk_head_any_trainable(const lk_head *hd);

#endif
