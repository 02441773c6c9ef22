/* Mean and max over channels (the 2-channel input of spatial attention), plain
 * C + OpenMP over positions; C is the contiguous axis of NHWC.
 *
 * Max semantics are torch.max(x, dim=1).values: on ties the FIRST maximal
 * channel is the argmax and receives the whole gradient (torch.amax would
 * split it evenly among the tied channels, which needs x in the backward).
 * A NaN channel is the max (NaN propagates, like torch) and is the argmax.
 */
#include <math.h>

#include "lk_layers.h"

/* Below this many elements the OpenMP fork costs more than the loop. */
#define LK_PAR_MIN 32768

lk_status lk_chanstat_forward(float *y, int32_t *argmax, const float *x, int64_t npos, int c) {
    LK_REQUIRE(npos >= 0 && c > 0, "chanstat: npos=%lld must be >= 0 and c=%d positive",
               (long long)npos, c);
    if (npos == 0) return LK_OK;
    LK_REQUIRE(y && argmax && x, "chanstat forward: NULL argument");
    const double inv_c = 1.0 / c;
#pragma omp parallel for schedule(static) if (npos * c >= LK_PAR_MIN)
    for (int64_t p = 0; p < npos; p++) {
        const float *xp = x + p * c; /* [C] */
        double sum = 0.0;
        float m = xp[0];
        int32_t am = 0;
        for (int i = 0; i < c; i++) {
            const float v = xp[i];
            sum += v;
            /* strict > keeps the first of tied maxima; once NaN, stay there */
            if (!isnan(m) && (v > m || isnan(v))) {
                m = v;
                am = i;
            }
        }
        y[2 * p] = (float)(sum * inv_c);
        y[2 * p + 1] = m;
        argmax[p] = am;
    }
    return LK_OK;
}

lk_status lk_chanstat_backward(float *dx, const float *dy, const int32_t *argmax, int64_t npos,
                               int c) {
    LK_REQUIRE(npos >= 0 && c > 0, "chanstat: npos=%lld must be >= 0 and c=%d positive",
               (long long)npos, c);
    if (npos == 0) return LK_OK;
    LK_REQUIRE(dx && dy && argmax, "chanstat backward: NULL argument");
    /* Validate before writing, so a bad argmax leaves dx untouched. */
    for (int64_t p = 0; p < npos; p++)
        LK_REQUIRE(argmax[p] >= 0 && argmax[p] < c,
                   "chanstat backward: argmax[%lld] = %d is out of range [0, %d)", (long long)p,
                   (int)argmax[p], c);
    const float inv_c = 1.0f / (float)c;
#pragma omp parallel for schedule(static) if (npos * c >= LK_PAR_MIN)
    for (int64_t p = 0; p < npos; p++) {
        float *d = dx + p * c; /* [C] */
        const float g_mean = dy[2 * p] * inv_c;
        for (int i = 0; i < c; i++) d[i] = g_mean;
        d[argmax[p]] += dy[2 * p + 1];
    }
    return LK_OK;
}
