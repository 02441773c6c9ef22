/* Softmax cross-entropy with class weights and label smoothing, mean reduction,
 * exactly as torch.nn.functional.cross_entropy(logits, labels, weight=w,
 * label_smoothing=eps). Plain C: N x K is tiny next to the network.
 *
 * With lp = log_softmax(logits), w_c the class weight (1 without weights) and
 * D = sum_i w_{y_i} (N without weights), PyTorch computes
 *   loss = (1 - eps) * sum_i w_{y_i} (-lp[i, y_i]) / D
 *        + (eps / K) * sum_i sum_c w_c (-lp[i, c]) / D,
 * so the gradient with respect to logits[i, c] is, with W = sum_c w_c,
 *   dloss / D * ((1 - eps) w_{y_i} (p[i, c] - [c == y_i]) + (eps / K) (W p[i, c] - w_c)).
 * Sums are accumulated in double.
 */
#include <math.h>

#include "lk_layers.h"

static lk_status xent_check(const char *who, const int32_t *labels, const float *class_weight,
                            int n, int k, float smoothing, double *denom) {
    LK_REQUIRE(n > 0 && k > 0, "%s: n=%d and k=%d must be positive", who, n, k);
    LK_REQUIRE(isfinite(smoothing) && smoothing >= 0.0f && smoothing <= 1.0f,
               "%s: label_smoothing must be in [0, 1], got %g", who, (double)smoothing);
    LK_REQUIRE(labels, "%s: labels is NULL", who);
    if (class_weight)
        for (int c = 0; c < k; c++)
            if (!isfinite(class_weight[c]))
                return LK_FAIL(LK_ERR_NUMERIC, "%s: class_weight[%d] is not finite (%g)", who, c,
                               (double)class_weight[c]);
    double d = 0.0;
    for (int i = 0; i < n; i++) {
        LK_REQUIRE(labels[i] >= 0 && labels[i] < k,
                   "%s: label %d at row %d is out of range [0, %d)", who, (int)labels[i], i, k);
        d += class_weight ? (double)class_weight[labels[i]] : 1.0;
    }
    LK_REQUIRE(d != 0.0,
               "%s: the class weights of the batch's labels sum to 0 (the weighted mean is "
               "undefined)", who);
    *denom = d;
    return LK_OK;
}

lk_status lk_xent_forward(float *loss, float *prob, const float *logits, const int32_t *labels,
                          const float *class_weight, int n, int k, float smoothing) {
    double denom;
    LK_TRY(xent_check("cross-entropy forward", labels, class_weight, n, k, smoothing, &denom));
    LK_REQUIRE(loss && logits, "cross-entropy forward: NULL argument");
    double nll = 0.0, smooth = 0.0;
    for (int i = 0; i < n; i++) {
        const float *l = logits + (int64_t)i * k; /* [K] */
        float m = l[0];
        for (int c = 0; c < k; c++) {
            if (!isfinite(l[c]))
                return LK_FAIL(LK_ERR_NUMERIC,
                               "cross-entropy forward: logits[%d, %d] is not finite (%g)", i, c,
                               (double)l[c]);
            if (l[c] > m) m = l[c];
        }
        double s = 0.0; /* sum_c exp(l - max) >= 1, so log(s) is safe */
        for (int c = 0; c < k; c++) s += exp((double)l[c] - m);
        const double lse = (double)m + log(s);
        double row = 0.0; /* sum_c w_c (-lp[i, c]) */
        for (int c = 0; c < k; c++) {
            const double lp = (double)l[c] - lse;
            if (prob) prob[(int64_t)i * k + c] = (float)exp(lp);
            row -= (class_weight ? (double)class_weight[c] : 1.0) * lp;
        }
        const double wy = class_weight ? (double)class_weight[labels[i]] : 1.0;
        nll -= wy * ((double)l[labels[i]] - lse);
        smooth += row;
    }
    *loss = (float)((1.0 - smoothing) * nll / denom + (double)smoothing / k * smooth / denom);
    return LK_OK;
}

lk_status lk_xent_backward(float *dlogits, const float *prob, const int32_t *labels,
                           const float *class_weight, int n, int k, float smoothing, float dloss) {
    double denom;
    LK_TRY(xent_check("cross-entropy backward", labels, class_weight, n, k, smoothing, &denom));
    LK_REQUIRE(dlogits && prob, "cross-entropy backward: NULL argument");
    LK_REQUIRE(isfinite(dloss), "cross-entropy backward: dloss must be finite, got %g",
               (double)dloss);
    double wsum = 0.0; /* W = sum_c w_c */
    for (int c = 0; c < k; c++) wsum += class_weight ? (double)class_weight[c] : 1.0;
    const double g = (double)dloss / denom, a = 1.0 - smoothing, b = (double)smoothing / k;
    for (int i = 0; i < n; i++) {
        const float *p = prob + (int64_t)i * k; /* [K] */
        float *d = dlogits + (int64_t)i * k;    /* [K] */
        const double wy = class_weight ? (double)class_weight[labels[i]] : 1.0;
        for (int c = 0; c < k; c++) {
            const double wc = class_weight ? (double)class_weight[c] : 1.0;
            const double onehot = c == labels[i] ? 1.0 : 0.0;
            d[c] = (float)(g * (a * wy * ((double)p[c] - onehot) + b * (wsum * p[c] - wc)));
        }
    }
    return LK_OK;
}
