/* EfficientNet architectures as data: a static stage table per model plus
 * torchvision's width/depth scaling rules, expanded into a flat block list. */
#ifndef LK_ARCH_H
#define LK_ARCH_H

#include "lk_blocks.h" /* lk_block_kind, lk_block_cfg */
#include "lk_status.h"

/* One row of a stage table, before width/depth scaling. */
typedef struct lk_stage_def {
    lk_block_kind kind;
    int expand, kernel, stride, in, out, repeats;
} lk_stage_def;

typedef struct lk_arch_def {
    const char *name;
    double width, depth;        /* multipliers applied to the table */
    const lk_stage_def *stages;
    int nstages;
    int head_out;               /* 0: 4 x last stage's output channels */
    float dropout, sd_prob, bn_eps, bn_momentum;
    int default_size;
} lk_arch_def;

#define LK_MAX_BLOCKS 64

typedef struct lk_arch {
    const lk_arch_def *def;
    int stem_out, head_in, head_out;
    int nblocks;
    lk_block_cfg blocks[LK_MAX_BLOCKS];
} lk_arch;

/* Look up "efficientnet_b3" or "efficientnet_v2_s" and expand its blocks. */
lk_status lk_arch_build(lk_arch *arch, const char *name);
/* Comma-separated list of the known architecture names. */
const char *lk_arch_names(void);

#endif
