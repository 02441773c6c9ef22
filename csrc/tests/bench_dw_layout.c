/* Inference layout study: an MBConv block's oneDNN primitives in NHWC against a
 * blocked layout (nChw16c for AVX-512, nChw8c for AVX2), as the eval plan runs them
 * (BN folded into a bias, SiLU as a post-op; SE as global pooling and a broadcast
 * multiply). Per block type of EfficientNet-B3@300 and EfficientNetV2-S@384 it times:
 *
 *   nhwc     expand 1x1 + depthwise + SE pool + SE multiply + project 1x1, all NHWC
 *   dw_blk   the same with only the depthwise in the blocked layout, reorders around it
 *   all_blk  every primitive in the blocked layout (end to end: no reorders)
 *
 * (the SE's two small 1x1 convolutions act on [N, C] vectors and are layout-free).
 * Timings are the minimum (steadier on a shared machine) or median of --reps runs.
 *
 *   bench_dw_layout [--batch N] [--reps N] [--median] [--block 8|16] [--model b3|v2s|all]
 *
 * Standalone (exits on errors); built beside bench_layers by benchmarks/build_bench.sh.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"

#include "oneapi/dnnl/dnnl.h"

#define CK(call)                                                                          \
    do {                                                                                  \
        dnnl_status_t s_ = (call);                                                        \
        if (s_ != dnnl_success) {                                                         \
            fprintf(stderr, "bench_dw_layout: %s failed (%d) at line %d\n", #call, (int)s_, \
                    __LINE__);                                                            \
            exit(1);                                                                      \
        }                                                                                 \
    } while (0)

static dnnl_engine_t eng;
static dnnl_stream_t strm;
static int g_reps = 20, g_median;

/* A primitive with its arguments (memories own their buffers). */
typedef struct op {
    dnnl_primitive_t p;
    int nargs;
    dnnl_exec_arg_t args[5];
    char impl[48];
} op;

static dnnl_memory_t mem(const_dnnl_memory_desc_t md, float fill) {
    dnnl_memory_t m;
    CK(dnnl_memory_create(&m, md, eng, DNNL_MEMORY_ALLOCATE));
    void *h;
    CK(dnnl_memory_get_data_handle(m, &h));
    size_t n = dnnl_memory_desc_get_size(md) / sizeof(float);
    float *f = h;
    for (size_t i = 0; i < n; i++) f[i] = fill * (float)((i * 7919u) % 97u) / 97.f;
    return m;
}

static dnnl_memory_desc_t md4(int n, int c, int h, int w, dnnl_format_tag_t tag) {
    dnnl_memory_desc_t md;
    const dnnl_dims_t d = {n, c, h, w};
    CK(dnnl_memory_desc_create_with_tag(&md, 4, d, dnnl_f32, tag));
    return md;
}

static void finish(op *o, dnnl_primitive_desc_t pd) {
    const char *impl = NULL;
    CK(dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl));
    snprintf(o->impl, sizeof o->impl, "%s", impl ? impl : "?");
    CK(dnnl_primitive_create(&o->p, pd));
    CK(dnnl_primitive_desc_destroy(pd));
}

/* Convolution x [n, ic, h, w] (layout `tag`) -> [n, oc, oh, ow] (same layout), groups g,
 * bias, optional SiLU post-op; weights in the layout oneDNN picks. */
static op conv(int n, int ic, int oc, int h, int w, int k, int s, int g, int silu,
               dnnl_format_tag_t tag, int *oh_out) {
    int pad = (k - 1) / 2, oh = (h + 2 * pad - k) / s + 1, ow = (w + 2 * pad - k) / s + 1;
    *oh_out = oh;
    dnnl_memory_desc_t x = md4(n, ic, h, w, tag), y = md4(n, oc, oh, ow, tag), wm, b;
    if (g == 1) {
        const dnnl_dims_t d = {oc, ic, k, k};
        CK(dnnl_memory_desc_create_with_tag(&wm, 4, d, dnnl_f32, dnnl_format_tag_any));
    } else {
        const dnnl_dims_t d = {g, oc / g, ic / g, k, k};
        CK(dnnl_memory_desc_create_with_tag(&wm, 5, d, dnnl_f32, dnnl_format_tag_any));
    }
    const dnnl_dims_t bd = {oc};
    CK(dnnl_memory_desc_create_with_tag(&b, 1, bd, dnnl_f32, dnnl_a));
    dnnl_primitive_attr_t attr;
    CK(dnnl_primitive_attr_create(&attr));
    if (silu) {
        dnnl_post_ops_t po;
        CK(dnnl_post_ops_create(&po));
        CK(dnnl_post_ops_append_eltwise(po, dnnl_eltwise_swish, 1.f, 0.f));
        CK(dnnl_primitive_attr_set_post_ops(attr, po));
        dnnl_post_ops_destroy(po);
    }
    const dnnl_dims_t st = {s, s}, dil = {0, 0}, p = {pad, pad};
    dnnl_primitive_desc_t pd;
    CK(dnnl_convolution_forward_primitive_desc_create(&pd, eng, dnnl_forward_inference,
                                                      dnnl_convolution_direct, x, wm, b, y, st,
                                                      dil, p, p, attr));
    op o = {.nargs = 4};
    o.args[0] = (dnnl_exec_arg_t){DNNL_ARG_SRC, mem(x, 1.f)};
    o.args[1] = (dnnl_exec_arg_t){DNNL_ARG_WEIGHTS,
                                  mem(dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0),
                                      0.1f)};
    o.args[2] = (dnnl_exec_arg_t){DNNL_ARG_BIAS, mem(b, 0.1f)};
    o.args[3] = (dnnl_exec_arg_t){DNNL_ARG_DST, mem(y, 0.f)};
    finish(&o, pd);
    dnnl_primitive_attr_destroy(attr);
    dnnl_memory_desc_destroy(x);
    dnnl_memory_desc_destroy(y);
    dnnl_memory_desc_destroy(wm);
    dnnl_memory_desc_destroy(b);
    return o;
}

static op reorder(int n, int c, int h, int w, dnnl_format_tag_t from, dnnl_format_tag_t to) {
    dnnl_memory_desc_t a = md4(n, c, h, w, from), b = md4(n, c, h, w, to);
    dnnl_primitive_desc_t pd;
    CK(dnnl_reorder_primitive_desc_create(&pd, a, eng, b, eng, NULL));
    op o = {.nargs = 2};
    o.args[0] = (dnnl_exec_arg_t){DNNL_ARG_FROM, mem(a, 1.f)};
    o.args[1] = (dnnl_exec_arg_t){DNNL_ARG_TO, mem(b, 0.f)};
    finish(&o, pd);
    dnnl_memory_desc_destroy(a);
    dnnl_memory_desc_destroy(b);
    return o;
}

/* SE: global average pool [n, c, h, w] -> [n, c, 1, 1] and x * gate([n, c, 1, 1]). */
static op se_pool(int n, int c, int h, int w, dnnl_format_tag_t tag) {
    dnnl_memory_desc_t x = md4(n, c, h, w, tag), y = md4(n, c, 1, 1, tag);
    const dnnl_dims_t st = {1, 1}, k = {h, w}, dil = {0, 0}, p = {0, 0};
    dnnl_primitive_desc_t pd;
    CK(dnnl_pooling_forward_primitive_desc_create(&pd, eng, dnnl_forward_inference,
                                                  dnnl_pooling_avg_exclude_padding, x, y, st, k,
                                                  dil, p, p, NULL));
    op o = {.nargs = 2};
    o.args[0] = (dnnl_exec_arg_t){DNNL_ARG_SRC, mem(x, 1.f)};
    o.args[1] = (dnnl_exec_arg_t){DNNL_ARG_DST, mem(y, 0.f)};
    finish(&o, pd);
    dnnl_memory_desc_destroy(x);
    dnnl_memory_desc_destroy(y);
    return o;
}

static op se_mul(int n, int c, int h, int w, dnnl_format_tag_t tag) {
    dnnl_memory_desc_t x = md4(n, c, h, w, tag), s = md4(n, c, 1, 1, tag);
    dnnl_primitive_desc_t pd;
    CK(dnnl_binary_primitive_desc_create(&pd, eng, dnnl_binary_mul, x, s, x, NULL));
    op o = {.nargs = 3};
    o.args[0] = (dnnl_exec_arg_t){DNNL_ARG_SRC_0, mem(x, 1.f)};
    o.args[1] = (dnnl_exec_arg_t){DNNL_ARG_SRC_1, mem(s, 1.f)};
    o.args[2] = (dnnl_exec_arg_t){DNNL_ARG_DST, mem(x, 0.f)};
    finish(&o, pd);
    dnnl_memory_desc_destroy(x);
    dnnl_memory_desc_destroy(s);
    return o;
}

static double time_op(op *o) {
    double t[256];
    int n = g_reps < 256 ? g_reps : 256;
    for (int r = 0; r < 2; r++) CK(dnnl_primitive_execute(o->p, strm, o->nargs, o->args));
    CK(dnnl_stream_wait(strm));
    for (int r = 0; r < n; r++) {
        double a = now_ms();
        CK(dnnl_primitive_execute(o->p, strm, o->nargs, o->args));
        CK(dnnl_stream_wait(strm));
        t[r] = now_ms() - a;
    }
    qsort(t, (size_t)n, sizeof t[0], cmp_d);
    return g_median ? t[n / 2] : t[0];
}

static void op_free(op *o) {
    for (int i = 0; i < o->nargs; i++) dnnl_memory_destroy(o->args[i].memory);
    dnnl_primitive_destroy(o->p);
}

typedef struct blk {
    const char *model;
    int in, exp, out, h, k, s, se, count;
} blk;

/* MBConv blocks (one row per distinct shape, `count` blocks of it per network). */
static const blk blocks[] = {
    /* EfficientNet-B3 @ 300 */
    {"b3", 40, 40, 24, 150, 3, 1, 1, 1},     {"b3", 24, 24, 24, 150, 3, 1, 1, 1},
    {"b3", 24, 144, 32, 150, 3, 2, 1, 1},    {"b3", 32, 192, 32, 75, 3, 1, 1, 2},
    {"b3", 32, 192, 48, 75, 5, 2, 1, 1},     {"b3", 48, 288, 48, 38, 5, 1, 1, 2},
    {"b3", 48, 288, 96, 38, 3, 2, 1, 1},     {"b3", 96, 576, 96, 19, 3, 1, 1, 4},
    {"b3", 96, 576, 136, 19, 5, 1, 1, 1},    {"b3", 136, 816, 136, 19, 5, 1, 1, 4},
    {"b3", 136, 816, 232, 19, 5, 2, 1, 1},   {"b3", 232, 1392, 232, 10, 5, 1, 1, 5},
    {"b3", 232, 1392, 384, 10, 3, 1, 1, 1},  {"b3", 384, 2304, 384, 10, 3, 1, 1, 1},
    /* EfficientNetV2-S @ 384 (MBConv stages; the fused stages have no depthwise) */
    {"v2s", 64, 256, 128, 48, 3, 2, 1, 1},   {"v2s", 128, 512, 128, 24, 3, 1, 1, 5},
    {"v2s", 128, 768, 160, 24, 3, 1, 1, 1},  {"v2s", 160, 960, 160, 24, 3, 1, 1, 8},
    {"v2s", 160, 960, 256, 24, 3, 2, 1, 1},  {"v2s", 256, 1536, 256, 12, 3, 1, 1, 14},
};

int main(int argc, char **argv) {
    int batch = 1, bsize = 16;
    const char *model = "all";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--batch") && i + 1 < argc) batch = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) g_reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--block") && i + 1 < argc) bsize = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--model") && i + 1 < argc) model = argv[++i];
        else if (!strcmp(argv[i], "--median")) g_median = 1;
        else {
            fprintf(stderr, "usage: %s [--batch N] [--reps N] [--median] [--block 8|16] "
                            "[--model b3|v2s|all]\n", argv[0]);
            return 2;
        }
    }
    const dnnl_format_tag_t B = bsize == 8 ? dnnl_nChw8c : dnnl_nChw16c, H = dnnl_nhwc;
    CK(dnnl_engine_create(&eng, dnnl_cpu, 0));
    CK(dnnl_stream_create(&strm, eng, dnnl_stream_default_flags));
    printf("# batch %d, blocked layout nChw%dc, %s of %d runs, ms per block (x count)\n", batch,
           bsize, g_median ? "median" : "minimum", g_reps);
    printf("%-4s %-22s %5s | %7s %7s %7s %7s %7s | %7s %7s %7s | %7s %7s %7s %7s %7s | "
           "%7s %7s %7s  dw,pool,mul impl nhwc / blk\n",
           "net", "block in>exp>out@h k s", "count", "exp", "dw", "pool", "mul", "proj",
           "dw_b", "r_in", "r_out", "exp_b", "dw_b", "pool_b", "mul_b", "proj_b", "nhwc",
           "dw_blk", "all_blk");
    double tot[2][3] = {{0}};
    for (size_t bi = 0; bi < sizeof blocks / sizeof blocks[0]; bi++) {
        const blk *b = &blocks[bi];
        if (strcmp(model, "all") && strcmp(model, b->model)) continue;
        int oh, oh2, n = batch;
        double t[2][5], r_in, r_out;
        char dw_impl[2][200];
        for (int l = 0; l < 2; l++) {
            dnnl_format_tag_t tag = l ? B : H;
            op ops[5];
            ops[0] = conv(n, b->in, b->exp, b->h, b->h, 1, 1, 1, 1, tag, &oh);
            ops[1] = conv(n, b->exp, b->exp, b->h, b->h, b->k, b->s, b->exp, 1, tag, &oh);
            ops[2] = se_pool(n, b->exp, oh, oh, tag);
            ops[3] = se_mul(n, b->exp, oh, oh, tag);
            ops[4] = conv(n, b->exp, b->out, oh, oh, 1, 1, 1, 0, tag, &oh2);
            for (int i = 0; i < 5; i++) {
                t[l][i] = (b->in == b->exp && i == 0) ? 0.0 : time_op(&ops[i]);
                op_free(&ops[i]);
            }
            snprintf(dw_impl[l], sizeof dw_impl[l], "%s,%s,%s", ops[1].impl, ops[2].impl,
                     ops[3].impl);
        }
        op ri = reorder(n, b->exp, b->h, b->h, H, B), ro = reorder(n, b->exp, oh, oh, B, H);
        r_in = time_op(&ri);
        r_out = time_op(&ro);
        op_free(&ri);
        op_free(&ro);
        double nh = t[0][0] + t[0][1] + t[0][2] + t[0][3] + t[0][4];
        double dwb = nh - t[0][1] + t[1][1] + r_in + r_out;
        double all = t[1][0] + t[1][1] + t[1][2] + t[1][3] + t[1][4];
        int g = !strcmp(b->model, "v2s");
        tot[g][0] += b->count * nh;
        tot[g][1] += b->count * dwb;
        tot[g][2] += b->count * all;
        char name[32];
        snprintf(name, sizeof name, "%d>%d>%d@%d k%d s%d", b->in, b->exp, b->out, b->h, b->k,
                 b->s);
        printf("%-4s %-22s %5d | %7.3f %7.3f %7.3f %7.3f %7.3f | %7.3f %7.3f %7.3f | %7.3f "
               "%7.3f %7.3f %7.3f %7.3f | %7.3f %7.3f %7.3f  %s / %s\n",
               b->model, name, b->count, t[0][0], t[0][1], t[0][2], t[0][3], t[0][4], t[1][1],
               r_in, r_out, t[1][0], t[1][1], t[1][2], t[1][3], t[1][4], nh, dwb, all,
               dw_impl[0], dw_impl[1]);
        fflush(stdout);
    }
    for (int g = 0; g < 2; g++)
        if (tot[g][0] > 0)
            printf("TOTAL %s (blocks x count, ms): nhwc %.2f  dw_blk %.2f  all_blk %.2f\n",
                   g ? "v2s" : "b3", tot[g][0], tot[g][1], tot[g][2]);
    dnnl_stream_destroy(strm);
    dnnl_engine_destroy(eng);
    return 0;
}
