/* Whole-model C test, built with the sanitizers by run_sanitized.sh: both
 * architectures with every head, forward and backward (train and eval) under every
 * policy, frozen features, gradient accumulation, a re-plan to another size, error
 * paths, and a clean shutdown so LeakSanitizer sees every allocation. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "lk_dnnl.h"
#include "lk_model.h"

static int passed, failed;

#define CHECK(cond, ...)                                       \
    do {                                                       \
        if (cond) {                                            \
            passed++;                                          \
        } else {                                               \
            failed++;                                          \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);        \
            printf(__VA_ARGS__);                               \
            printf(" [%s]\n", lk_last_error());                \
        }                                                      \
    } while (0)

static uint64_t rng_state = 88172645463325252ULL;
static float urand(void) { /* xorshift64 in [-1, 1) */
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 40) * (1.0 / (1 << 23))) - 1.0f;
}

static int all_finite(const float *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(p[i])) return 0;
    return 1;
}

static void init_params(lk_model *m) {
    for (int i = 0; i < lk_model_num_tensors(m); i++) {
        const lk_tensor_desc *t = lk_model_tensor(m, i);
        float *d = lk_model_tensor_data(m, i);
        const char *name = t->name;
        size_t len = strlen(name);
        int is_var = len > 11 && strcmp(name + len - 11, "running_var") == 0;
        int is_bn_w = t->ndim == 1 && len > 6 && strcmp(name + len - 6, "weight") == 0;
        float scale = t->ndim == 4 ? 1.0f / sqrtf((float)(t->shape[1] * t->shape[2] * t->shape[3]))
                                   : 0.1f;
        for (int64_t k = 0; k < t->numel; k++)
            d[k] = is_var ? 1.0f : is_bn_w ? 1.0f + 0.1f * urand() : scale * urand();
    }
}

static lk_status create(lk_model **m, const char *arch, const char *head, int k,
                        lk_policy policy) {
    lk_model_cfg cfg = {.arch = arch, .head = head, .num_classes = k, .dropout = -1.f,
                        .sd_prob = -1.f, .policy = policy};
    return lk_model_create(m, &cfg);
}

static void run_arch(const char *arch) {
    enum { K = 3 };
    lk_model *m = NULL;
    CHECK(create(&m, arch, "linear", K, LK_POLICY_ALL) == LK_OK, "%s: create", arch);
    if (!m) return;
    init_params(m);
    int sizes[2][3] = {{2, 40, 48}, {3, 36, 36}};
    for (int s = 0; s < 2; s++) {
        int n = sizes[s][0], h = sizes[s][1], w = sizes[s][2];
        size_t nx = (size_t)n * 3 * h * w;
        float x[3 * 3 * 48 * 48], dx[3 * 3 * 48 * 48], logits[3 * K], dl[3 * K];
        for (size_t i = 0; i < nx; i++) x[i] = urand();
        for (int i = 0; i < n * K; i++) dl[i] = urand();
        CHECK(lk_model_forward(m, logits, NULL, x, n, h, w, LK_FWD_TRAIN | LK_FWD_INPUT_GRAD, 7) ==
                  LK_OK,
              "%s: train forward", arch);
        CHECK(all_finite(logits, (size_t)n * K), "%s: finite train logits", arch);
        CHECK(lk_model_backward(m, dx, dl, 0) == LK_OK, "%s: backward", arch);
        CHECK(all_finite(dx, nx), "%s: finite input gradient", arch);
        int64_t np_;
        float *g = lk_model_grads(m, &np_);
        CHECK(all_finite(g, (size_t)np_), "%s: finite parameter gradients", arch);
        double norm = 0;
        for (int64_t i = 0; i < np_; i++) norm += (double)g[i] * g[i];
        CHECK(norm > 0, "%s: non-zero gradients", arch);
        CHECK(lk_model_forward(m, logits, NULL, x, n, h, w, 0, 0) == LK_OK, "%s: eval forward",
              arch);
        CHECK(all_finite(logits, (size_t)n * K), "%s: finite eval logits", arch);
        CHECK(lk_model_backward(m, dx, dl, 0) == LK_ERR_STATE, "%s: backward after eval refused",
              arch);
    }
    float x1[3 * 40 * 40], l1[K];
    memset(x1, 0, sizeof x1);
    CHECK(lk_model_forward(m, l1, NULL, x1, 1, 40, 40, LK_FWD_TRAIN, 0) == LK_ERR_ARG,
          "%s: batch 1 train refused", arch);
    CHECK(lk_model_forward(m, l1, NULL, x1, 1, 8, 40, 0, 0) == LK_ERR_ARG,
          "%s: tiny image refused", arch);
    CHECK(lk_model_set_regularization(m, 1.5f, 0.f) == LK_ERR_ARG, "%s: bad dropout refused",
          arch);
    lk_model_free(m);
}

/* Every planning step can fail (here: the k-th primitive creation); the model must
 * report it, free what it built, and plan again cleanly afterwards. */
static void run_injected_failures(void) {
    enum { K = 2, N = 2, H = 40, W = 40 };
    static const int ks[] = {0, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377};
    float x[N * 3 * H * W], logits[N * K], dl[N * K];
    for (size_t i = 0; i < sizeof x / sizeof x[0]; i++) x[i] = urand();
    for (int i = 0; i < N * K; i++) dl[i] = urand();
    for (size_t j = 0; j < sizeof ks / sizeof ks[0]; j++) {
        lk_model *m = NULL;
        if (create(&m, "efficientnet_v2_s", "multi_attention", K, LK_POLICY_LAST_BLOCK) != LK_OK) {
            CHECK(0, "create for failure injection");
            return;
        }
        init_params(m);
        for (int train = 0; train <= 1; train++) {
            lk_debug_fail_prim_init_after(ks[j]);
            unsigned flags = train ? LK_FWD_TRAIN : 0;
            lk_status st = lk_model_forward(m, logits, NULL, x, N, H, W, flags, 1);
            lk_debug_fail_prim_init_after(-1);
            CHECK(st == LK_ERR_DNNL && strstr(lk_last_error(), "injected"),
                  "injected failure %d (train=%d) reported", ks[j], train);
            CHECK(lk_model_backward(m, NULL, dl, 0) == LK_ERR_STATE,
                  "no backward after a failed plan");
            CHECK(lk_model_forward(m, logits, NULL, x, N, H, W, flags, 1) == LK_OK,
                  "plans again after injected failure %d", ks[j]);
            CHECK(all_finite(logits, N * K), "finite logits after recovery");
        }
        lk_model_free(m);
    }
}

/* Every head under every policy: train step, frozen parameters untouched, frozen
 * features + a start from them equal to the full network, accumulation. */
static void run_heads(const char *arch, int nheads) {
    enum { K = 2, N = 3, H = 48, W = 40 };
    static const char *heads[] = {"multi_attention", "linear", "channel_attention",
                                  "spatial_attention"};
    static const lk_policy pols[] = {LK_POLICY_ALL, LK_POLICY_LAST_BLOCK, LK_POLICY_HEAD};
    static float x[N * 3 * H * W], feats[N * 1536 * 32 * 32];
    float logits[N * K], logits2[N * K], dl[N * K];
    for (size_t i = 0; i < sizeof x / sizeof x[0]; i++) x[i] = urand();
    for (int i = 0; i < N * K; i++) dl[i] = urand();
    for (int hh = 0; hh < nheads; hh++) {
        lk_model *m = NULL;
        if (create(&m, arch, heads[hh], K, LK_POLICY_DEFAULT) != LK_OK) {
            CHECK(0, "%s/%s: create", arch, heads[hh]);
            continue;
        }
        init_params(m);
        int64_t np_;
        float *g = lk_model_grads(m, &np_);
        for (int p = 0; p < 3; p++) {
            CHECK(lk_model_set_policy(m, pols[p]) == LK_OK, "set policy");
            int c, fh, fw;
            CHECK(lk_model_features_shape(m, H, W, &c, &fh, &fw) == LK_OK, "features shape");
            CHECK(lk_model_forward(m, logits, feats, x, N, H, W, LK_FWD_TRAIN, 5) == LK_OK,
                  "%s/%s policy %d: train forward", arch, heads[hh], p);
            CHECK(all_finite(logits, N * K), "finite logits");
            CHECK(lk_model_backward(m, NULL, dl, 0) == LK_OK, "%s/%s policy %d: backward", arch,
                  heads[hh], p);
            int frozen_zero = 1, some_grad = 0;
            for (int i = 0; i < lk_model_num_tensors(m); i++) {
                const lk_tensor_desc *t = lk_model_tensor(m, i);
                if (t->kind != LK_TENSOR_PARAM) continue;
                const float *gi = lk_model_tensor_grad(m, i);
                for (int64_t k = 0; k < t->numel; k++) {
                    if (!lk_model_tensor_trainable(m, i) && gi[k] != 0.f) frozen_zero = 0;
                    if (lk_model_tensor_trainable(m, i) && gi[k] != 0.f) some_grad = 1;
                }
            }
            CHECK(frozen_zero && some_grad && all_finite(g, (size_t)np_),
                  "%s/%s policy %d: gradients only for trainable tensors", arch, heads[hh], p);
            /* The same step started from the returned features. */
            CHECK(lk_model_forward(m, logits2, NULL, feats, N, fh, fw,
                                   LK_FWD_TRAIN | LK_FWD_FROM_FEATURES, 5) == LK_OK,
                  "forward from features");
            CHECK(memcmp(logits, logits2, sizeof logits) == 0,
                  "%s/%s policy %d: from features == full network", arch, heads[hh], p);
            CHECK(lk_model_backward(m, NULL, dl, 1) == LK_OK, "accumulating backward");
            CHECK(lk_model_backward(m, logits, dl, 0) == LK_ERR_ARG,
                  "input gradient refused when not planned");
            CHECK(lk_model_frozen_features(m, feats, x, N, H, W) == LK_OK, "frozen features");
            CHECK(all_finite(feats, (size_t)N * c * fh * fw), "finite features");
        }
        lk_model_free(m);
    }
}

int main(void) {
    lk_model *m = NULL;
    CHECK(create(&m, "resnet50", "linear", 2, LK_POLICY_DEFAULT) == LK_ERR_ARG && !m,
          "unknown arch refused");
    CHECK(create(&m, "efficientnet_b3", "linear", 0, LK_POLICY_DEFAULT) == LK_ERR_ARG && !m,
          "0 classes refused");
    CHECK(create(&m, "efficientnet_b3", "transformer", 2, LK_POLICY_DEFAULT) == LK_ERR_ARG && !m,
          "unknown head refused");
    CHECK(lk_model_create(&m, NULL) == LK_ERR_ARG && !m, "NULL configuration refused");
    run_arch("efficientnet_v2_s");
    run_arch("efficientnet_b3");
    run_heads("efficientnet_b3", 4); /* every head */
    run_heads("efficientnet_v2_s", 1);
    run_injected_failures();
    lk_shutdown();
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
