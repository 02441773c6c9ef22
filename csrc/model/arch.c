/* Stage tables and torchvision's scaling rules (_make_divisible, ceil depth). */
#include "lk_arch.h"

#include <math.h>
#include <string.h>

/* EfficientNet-B0 base table; B3 scales it by width 1.2, depth 1.4. */
static const lk_stage_def lk_b0_stages[] = {
    {LK_BLOCK_MBCONV, 1, 3, 1, 32, 16, 1},  {LK_BLOCK_MBCONV, 6, 3, 2, 16, 24, 2},
    {LK_BLOCK_MBCONV, 6, 5, 2, 24, 40, 2},  {LK_BLOCK_MBCONV, 6, 3, 2, 40, 80, 3},
    {LK_BLOCK_MBCONV, 6, 5, 1, 80, 112, 3}, {LK_BLOCK_MBCONV, 6, 5, 2, 112, 192, 4},
    {LK_BLOCK_MBCONV, 6, 3, 1, 192, 320, 1},
};

/* EfficientNetV2-S (no scaling). */
static const lk_stage_def lk_v2s_stages[] = {
    {LK_BLOCK_FUSED, 1, 3, 1, 24, 24, 2},    {LK_BLOCK_FUSED, 4, 3, 2, 24, 48, 4},
    {LK_BLOCK_FUSED, 4, 3, 2, 48, 64, 4},    {LK_BLOCK_MBCONV, 4, 3, 2, 64, 128, 6},
    {LK_BLOCK_MBCONV, 6, 3, 1, 128, 160, 9}, {LK_BLOCK_MBCONV, 6, 3, 2, 160, 256, 15},
};

static const lk_arch_def lk_archs[] = {
    {"efficientnet_b3", 1.2, 1.4, lk_b0_stages, 7, 0, 0.3f, 0.2f, 1e-5f, 0.1f, 300},
    {"efficientnet_v2_s", 1.0, 1.0, lk_v2s_stages, 6, 1280, 0.2f, 0.2f, 1e-3f, 0.1f, 384},
};

const char *lk_arch_names(void) { return "efficientnet_b3, efficientnet_v2_s"; }

/* torchvision's _make_divisible(v, 8): round to a multiple of 8, never below
 * 90 % of v. */
static int lk_make_divisible(double v) {
    int nv = (int)(v + 4.0) / 8 * 8;
    if (nv < 8) nv = 8;
    if (nv < 0.9 * v) nv += 8;
    return nv;
}

static int lk_scale_ch(int c, double width) { return lk_make_divisible(c * width); }

lk_status lk_arch_build(lk_arch *arch, const char *name) {
    memset(arch, 0, sizeof *arch);
    const lk_arch_def *def = NULL;
    for (size_t i = 0; i < sizeof lk_archs / sizeof lk_archs[0]; i++)
        if (strcmp(lk_archs[i].name, name) == 0) def = &lk_archs[i];
    LK_REQUIRE(def, "unknown architecture '%s' (known: %s)", name, lk_arch_names());
    arch->def = def;

    int total = 0;
    for (int s = 0; s < def->nstages; s++) total += (int)ceil(def->stages[s].repeats * def->depth);
    LK_REQUIRE(total <= LK_MAX_BLOCKS, "architecture '%s' has too many blocks", name);

    int id = 0;
    for (int s = 0; s < def->nstages; s++) {
        const lk_stage_def *sd = &def->stages[s];
        int reps = (int)ceil(sd->repeats * def->depth);
        int in = lk_scale_ch(sd->in, def->width), out = lk_scale_ch(sd->out, def->width);
        for (int r = 0; r < reps; r++, id++) {
            lk_block_cfg *b = &arch->blocks[id];
            b->kind = sd->kind;
            b->stage = s;
            b->index = r;
            b->in = r == 0 ? in : out;
            b->out = out;
            b->stride = r == 0 ? sd->stride : 1;
            b->kernel = sd->kernel;
            b->expanded = lk_scale_ch(b->in * sd->expand, 1.0);
            b->has_expand = b->expanded != b->in;
            b->has_se = sd->kind == LK_BLOCK_MBCONV;
            b->squeeze = b->in / 4 > 1 ? b->in / 4 : 1;
            b->residual = b->stride == 1 && b->in == b->out;
            b->sd_prob = def->sd_prob * (float)id / (float)total;
        }
    }
    arch->nblocks = total;
    arch->stem_out = lk_scale_ch(def->stages[0].in, def->width);
    arch->head_in = arch->blocks[total - 1].out;
    arch->head_out = def->head_out ? def->head_out : 4 * arch->head_in;
    return LK_OK;
}
