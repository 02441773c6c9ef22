/* Whole-network EfficientNet (torchvision-exact backbone) with a selectable head.
 *
 *   lk_model *m;
 *   lk_model_cfg cfg = {.arch = "efficientnet_b3", .head = "multi_attention",
 *                       .num_classes = 2, .dropout = -1, .sd_prob = -1};
 *   lk_model_create(&m, &cfg);                   // parameters + names, policy last_block
 *   // fill parameters through lk_model_tensor_data(m, i), then lk_model_bump_version ...
 *   lk_model_forward(m, logits, NULL, x, n, h, w, LK_FWD_TRAIN, seed);
 *   lk_model_backward(m, NULL, dlogits, 0);      // gradients of the trainable tensors
 *   lk_model_free(m);
 *
 * Parameters, gradients and running statistics each live in one allocation
 * (tensors in state_dict order); activations live in one arena per plan. Input
 * images are NCHW float32 (PyTorch's layout); internally NHWC.
 *
 * Fine-tuning policy: every unit (conv-BN, squeeze-excitation, head module) trains
 * or is frozen. Frozen units follow Keras: they run as at inference (folded BN, no
 * stochastic depth), never change, and the backward stops below the first trainable
 * unit. The network is cut into pieces (stem, each block, the final 1x1 conv, the
 * head); the pieces before the first trainable one form the frozen prefix, planned
 * like inference, whose output `lk_model_forward` can return and later start from.
 */
#ifndef LK_MODEL_H
#define LK_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "lk_status.h"

typedef enum lk_tensor_kind { LK_TENSOR_PARAM = 0, LK_TENSOR_BUFFER = 1 } lk_tensor_kind;

typedef struct lk_tensor_desc {
    char name[80];     /* state_dict key (torchvision's for the backbone) */
    int ndim;
    int64_t shape[4];
    int64_t numel;
    lk_tensor_kind kind;
    size_t offset;     /* floats into the parameter (or buffer) arena */
    int unit;          /* the unit that owns it (trains as a whole) */
} lk_tensor_desc;

typedef enum lk_policy {
    LK_POLICY_DEFAULT = 0,    /* last_block for attention heads, all for the linear head */
    LK_POLICY_ALL = 1,        /* everything trains */
    LK_POLICY_LAST_BLOCK = 2, /* last stage, final 1x1 conv and head train (the study's) */
    LK_POLICY_HEAD = 3,       /* only the head trains */
    LK_POLICY_CUSTOM = 4      /* set tensor by tensor (lk_model_set_trainable) */
} lk_policy;

typedef struct lk_model_cfg {
    const char *arch;  /* "efficientnet_b3" | "efficientnet_v2_s" */
    const char *head;  /* "linear" (or NULL) | "multi_attention" | "channel_attention" |
                          "spatial_attention" */
    int num_classes;
    float dropout;     /* head dropout; < 0: linear head the arch's (0.3 / 0.2), else 0.5 */
    float sd_prob;     /* stochastic-depth rate of the last block; < 0: 0.2 */
    lk_policy policy;
} lk_model_cfg;

typedef struct lk_model lk_model;

lk_status lk_model_create(lk_model **out, const lk_model_cfg *cfg);
void lk_model_free(lk_model *m);

int lk_model_num_tensors(const lk_model *m);
const lk_tensor_desc *lk_model_tensor(const lk_model *m, int i);
/* Writers through these pointers must call lk_model_bump_version afterwards. */
float *lk_model_tensor_data(lk_model *m, int i);
/* Gradient of a parameter (NULL for buffers). */
float *lk_model_tensor_grad(lk_model *m, int i);
int64_t lk_model_num_params(const lk_model *m);
/* Whole arenas (for optimizers and bulk copies). */
float *lk_model_params(lk_model *m, int64_t *count);
float *lk_model_grads(lk_model *m, int64_t *count);

/* ---------------------------------------------------------------- policy */
lk_status lk_model_set_policy(lk_model *m, lk_policy policy);
/* flags [num_tensors]: 1 = trainable. A unit's tensors must agree (conv and BN of a
 * conv-BN unit, fc1 and fc2 of an SE, ...); buffers follow their unit. */
lk_status lk_model_set_trainable(lk_model *m, const uint8_t *flags);
int lk_model_tensor_trainable(const lk_model *m, int i);

/* ------------------------------------------------------------- versions */
/* Every change to parameters or running statistics made through the API bumps the
 * version (optimizer step, load, train-mode forward, policy change); folded and
 * reordered weights are cached by it. `frozen_too`: the change may have touched
 * frozen tensors (a load, a direct write), not only trainable ones. */
void lk_model_bump_version(lk_model *m, int frozen_too);
uint64_t lk_model_version(const lk_model *m);

typedef struct lk_model_info {
    const char *arch, *head;
    int num_classes, default_size, nblocks, feature_channels;
    float dropout, sd_prob, bn_eps, bn_momentum;
    lk_policy policy;
    int prefix_pieces;                      /* pieces in the frozen prefix */
    int plan_n, plan_h, plan_w, plan_flags; /* current plan (0 if none) */
    int planned;
    int64_t plan_bytes;                     /* activation arena and shared layer workspace
                                               of the current plan */
    int64_t plans_made;                     /* how many times a plan was built */
    int64_t trainable_params;               /* floats that train */
} lk_model_info;
void lk_model_get_info(const lk_model *m, lk_model_info *info);

/* Head dropout and stochastic-depth rate, both in [0, 1). */
lk_status lk_model_set_regularization(lk_model *m, float dropout, float sd_prob);

typedef enum lk_forward_flags {
    LK_FWD_TRAIN = 1,         /* training semantics; a backward may follow */
    LK_FWD_INPUT_GRAD = 2,    /* plan the gradient of the input image as well */
    LK_FWD_FROM_FEATURES = 4, /* x is the frozen prefix's output [N, C, H, W], not an image */
} lk_forward_flags;

/* Shape [C, FH, FW] of the frozen prefix's output for an image of H x W. */
lk_status lk_model_features_shape(const lk_model *m, int h, int w, int *c, int *fh, int *fw);

/* logits [N, K] from x: images [N, 3, H, W], or with LK_FWD_FROM_FEATURES the prefix
 * output [N, C, H, W]. `features` (may be NULL; image input only) receives the frozen
 * prefix's output [N, C, FH, FW]. Train: batch-statistics BN in trainable units,
 * dropout and stochastic depth from `seed`. Plans once per (n, h, w, flags). */
lk_status lk_model_forward(lk_model *m, float *logits, float *features, const float *x, int n,
                           int h, int w, unsigned flags, uint64_t seed);
/* Only the frozen prefix, as at inference: features [N, C, FH, FW] of images x. */
lk_status lk_model_frozen_features(lk_model *m, float *features, const float *x, int n, int h,
                                   int w);
/* After a train-mode forward: the gradients of every trainable tensor from dlogits
 * [N, K], overwritten or (accumulate) added; dx [N, 3, H, W] needs LK_FWD_INPUT_GRAD. */
lk_status lk_model_backward(lk_model *m, float *dx, const float *dlogits, int accumulate);

/* ------------------------------------------------------------ explanations */
/* Everything here runs in eval semantics: running-statistics BatchNorm everywhere, no
 * dropout, no stochastic depth. Parameters, running statistics, gradients and the
 * version are never written; only the current plan (a cache) is replaced. */

/* Shape [C, FH, FW] of the head's input F (the last 1x1 conv's output) for H x W images. */
lk_status lk_model_head_input_shape(const lk_model *m, int h, int w, int *c, int *fh, int *fw);
/* logits [N, K] of images x [N, 3, H, W] and (feat, may be NULL) F as [N, FH, FW, C] (NHWC). */
lk_status lk_model_explain_forward(lk_model *m, float *logits, float *feat, const float *x, int n,
                                   int h, int w);
/* After lk_model_explain_forward: dfeat [N, FH, FW, C] (NHWC), the gradient of
 * sum(dlogits * logits) with respect to F through the head; may be called repeatedly. */
lk_status lk_model_explain_backward(lk_model *m, float *dfeat, const float *dlogits);
/* After any forward: copies of the head's attention maps (each may be NULL; asking for
 * one the head lacks is an error): att [N, C] channel weights, s1 and s2 [N, FH, FW]
 * the spatial maps, attw [N, FH, FW] the attention-pool weights over positions. */
lk_status lk_model_head_maps(const lk_model *m, float *att, float *s1, float *s2, float *attw);

#endif
