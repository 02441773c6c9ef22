/* Whole-network EfficientNet (torchvision-exact) on the layer library.
 *
 *   lk_model *m;
 *   lk_model_create(&m, "efficientnet_b3", 2);          // parameters + names
 *   // fill parameters through lk_model_tensor_data(m, i) ...
 *   lk_model_forward(m, logits, x, n, h, w, 1, seed);  // plans once per (n, h, w, mode)
 *   lk_model_backward(m, NULL, dlogits);               // fills every parameter gradient
 *   lk_model_free(m);
 *
 * Parameters, gradients and running statistics each live in one allocation
 * (tensors in torchvision state_dict order); activations live in one arena per
 * plan. Input images are NCHW float32 (PyTorch's layout); internally NHWC.
 */
#ifndef LK_MODEL_H
#define LK_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "lk_status.h"

typedef enum lk_tensor_kind { LK_TENSOR_PARAM = 0, LK_TENSOR_BUFFER = 1 } lk_tensor_kind;

typedef struct lk_tensor_desc {
    char name[80];     /* torchvision state_dict key */
    int ndim;
    int64_t shape[4];
    int64_t numel;
    lk_tensor_kind kind;
    size_t offset;     /* floats into the parameter (or buffer) arena */
} lk_tensor_desc;

typedef struct lk_model lk_model;

lk_status lk_model_create(lk_model **out, const char *arch, int num_classes);
void lk_model_free(lk_model *m);

int lk_model_num_tensors(const lk_model *m);
const lk_tensor_desc *lk_model_tensor(const lk_model *m, int i);
float *lk_model_tensor_data(lk_model *m, int i);
/* Gradient of a parameter (NULL for buffers). */
float *lk_model_tensor_grad(lk_model *m, int i);
int64_t lk_model_num_params(const lk_model *m);
/* Whole arenas (for optimizers and bulk copies). */
float *lk_model_params(lk_model *m, int64_t *count);
float *lk_model_grads(lk_model *m, int64_t *count);

typedef struct lk_model_info {
    const char *arch;
    int num_classes, default_size, nblocks;
    float dropout, sd_prob, bn_eps, bn_momentum;
    int plan_n, plan_h, plan_w, plan_train; /* current plan (0 if none) */
    int64_t plan_bytes;                     /* activation arena of the current plan */
    int64_t plans_made;                     /* how many times a plan was built */
} lk_model_info;
void lk_model_get_info(const lk_model *m, lk_model_info *info);

/* Classifier dropout and stochastic-depth rate (torchvision: B3 0.3 / 0.2,
 * V2-S 0.2 / 0.2); both in [0, 1). */
lk_status lk_model_set_regularization(lk_model *m, float dropout, float sd_prob);

/* logits [N, K] from x [N, 3, H, W]. train: batch-statistics BN (running stats
 * updated), dropout and stochastic depth from `seed`. Re-plans on a new
 * (n, h, w, train). */
lk_status lk_model_forward(lk_model *m, float *logits, const float *x, int n, int h, int w,
                           int train, uint64_t seed);
/* After a train-mode forward: every parameter gradient from dlogits [N, K]
 * (overwritten, not accumulated); dx [N, 3, H, W] may be NULL. */
lk_status lk_model_backward(lk_model *m, float *dx, const float *dlogits);

#endif
