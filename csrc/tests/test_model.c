/* Whole-model C test, built with the sanitizers by run_sanitized.sh: both
 * architectures forward and backward (train and eval), a re-plan to another size,
 * error paths, and a clean shutdown so LeakSanitizer sees every allocation. */
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

static void run_arch(const char *arch) {
    enum { K = 3 };
    lk_model *m = NULL;
    CHECK(lk_model_create(&m, arch, K) == LK_OK, "%s: create", arch);
    if (!m) return;
    init_params(m);
    int sizes[2][3] = {{2, 40, 48}, {3, 36, 36}};
    for (int s = 0; s < 2; s++) {
        int n = sizes[s][0], h = sizes[s][1], w = sizes[s][2];
        size_t nx = (size_t)n * 3 * h * w;
        float x[3 * 3 * 48 * 48], dx[3 * 3 * 48 * 48], logits[3 * K], dl[3 * K];
        for (size_t i = 0; i < nx; i++) x[i] = urand();
        for (int i = 0; i < n * K; i++) dl[i] = urand();
        CHECK(lk_model_forward(m, logits, x, n, h, w, 1, 7) == LK_OK, "%s: train forward", arch);
        CHECK(all_finite(logits, (size_t)n * K), "%s: finite train logits", arch);
        CHECK(lk_model_backward(m, dx, dl) == LK_OK, "%s: backward", arch);
        CHECK(all_finite(dx, nx), "%s: finite input gradient", arch);
        int64_t np_;
        float *g = lk_model_grads(m, &np_);
        CHECK(all_finite(g, (size_t)np_), "%s: finite parameter gradients", arch);
        double norm = 0;
        for (int64_t i = 0; i < np_; i++) norm += (double)g[i] * g[i];
        CHECK(norm > 0, "%s: non-zero gradients", arch);
        CHECK(lk_model_forward(m, logits, x, n, h, w, 0, 0) == LK_OK, "%s: eval forward", arch);
        CHECK(all_finite(logits, (size_t)n * K), "%s: finite eval logits", arch);
        CHECK(lk_model_backward(m, dx, dl) == LK_ERR_STATE, "%s: backward after eval refused",
              arch);
    }
    float x1[3 * 40 * 40], l1[K];
    memset(x1, 0, sizeof x1);
    CHECK(lk_model_forward(m, l1, x1, 1, 40, 40, 1, 0) == LK_ERR_ARG, "%s: batch 1 train refused",
          arch);
    CHECK(lk_model_forward(m, l1, x1, 1, 8, 40, 0, 0) == LK_ERR_ARG, "%s: tiny image refused",
          arch);
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
        if (lk_model_create(&m, "efficientnet_v2_s", K) != LK_OK) {
            CHECK(0, "create for failure injection");
            return;
        }
        init_params(m);
        for (int train = 0; train <= 1; train++) {
            lk_debug_fail_prim_init_after(ks[j]);
            lk_status st = lk_model_forward(m, logits, x, N, H, W, train, 1);
            lk_debug_fail_prim_init_after(-1);
            CHECK(st == LK_ERR_DNNL && strstr(lk_last_error(), "injected"),
                  "injected failure %d (train=%d) reported", ks[j], train);
            CHECK(lk_model_backward(m, NULL, dl) == LK_ERR_STATE,
                  "no backward after a failed plan");
            CHECK(lk_model_forward(m, logits, x, N, H, W, train, 1) == LK_OK,
                  "plans again after injected failure %d", ks[j]);
            CHECK(all_finite(logits, N * K), "finite logits after recovery");
        }
        lk_model_free(m);
    }
}

int main(void) {
    lk_model *m = NULL;
    CHECK(lk_model_create(&m, "resnet50", 2) == LK_ERR_ARG && !m, "unknown arch refused");
    CHECK(lk_model_create(&m, "efficientnet_b3", 0) == LK_ERR_ARG && !m, "0 classes refused");
    run_arch("efficientnet_v2_s");
    run_arch("efficientnet_b3");
    run_injected_failures();
    lk_shutdown();
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
