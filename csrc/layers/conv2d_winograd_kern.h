/* The per-instruction-set kernels of conv2d_winograd.c (not a public header): that
 * file includes this one once per path, with
 *   WK_SFX  the names' suffix (c, avx2, avx512)
 *   WK_TGT  the target attribute (empty for plain C)
 *   WK_LN   floats per vector (4, 8, 16)
 *   WK_MR   tiles per micro-tile of the products (WK_MR x 2 vectors of accumulators)
 * The vectors are GCC/Clang vector types, so one text serves every width; memory is
 * read and written through a copy of the type with alignment 4 (the tensors' rows need
 * not be aligned), locals keep the natural alignment. The formulas are the WG_* macros. */
#define WK_JOIN2(a, b) a##_##b
#define WK_JOIN(a, b) WK_JOIN2(a, b)
#define WK(name) WK_JOIN(name, WK_SFX)

typedef float WK(wk_vec) __attribute__((vector_size(WK_LN * sizeof(float))));
typedef float WK(wk_mem) __attribute__((vector_size(WK_LN * sizeof(float)), aligned(4)));
/* Half vectors, for channel counts that are a multiple of 8 but not of 16 (AVX-512). */
typedef float WK(wk_hvec) __attribute__((vector_size(WK_LN / 2 * sizeof(float))));
typedef float WK(wk_hmem) __attribute__((vector_size(WK_LN / 2 * sizeof(float)), aligned(4)));

/* The transforms into planes (input and output gradient): channels c .. c + W - 1 of
 * the KxK tile whose rows start at d[i][j], as values of type T (memory through M)
 * while W fit below n, through F (K values -> 6) down the columns and then along the
 * rows; the 36 results go to the planes of out (out + a * os, a = 6 * i + j). */
#define WK_PLANES_STEP(T, M, W, K, F, d, n, out, os)                                   \
    for (; c + (W) <= (n); c += (W)) {                                                 \
        T t[6][K]; /* [row of F d][column] */                                          \
        for (int j = 0; j < (K); j++) {                                                \
            T col[K], r[6];                                                            \
            for (int i = 0; i < (K); i++) col[i] = *(const M *)((d)[i][j] + c);        \
            F(r, col);                                                                 \
            for (int i = 0; i < 6; i++) t[i][j] = r[i];                                \
        }                                                                              \
        for (int i = 0; i < 6; i++) {                                                  \
            T r[6];                                                                    \
            F(r, t[i]);                                                                \
            for (int j = 0; j < 6; j++)                                                \
                *(M *)((out) + (size_t)(6 * i + j) * (os) + c) = r[j];                 \
        }                                                                              \
    }

/* One tile's input transform: the 36 planes of v (v + a * vs, a = 6 * i + j) receive
 * B^T d B [IC] of the 6x6 input tile d whose rows are rows[i] (NULL: padding) and
 * columns x0 .. x0 + 5 (outside [0, W): padding, read from `zero`). */
WK_TGT static void WK(wk_in)(float *v, size_t vs, const float *const rows[6], int x0, int w,
                             int ic, const float *zero) {
    typedef WK(wk_vec) vec;
    typedef WK(wk_mem) mem;
    typedef WK(wk_hvec) hvec;
    typedef WK(wk_hmem) hmem;
    const float *d[6][6];
    for (int i = 0; i < 6; i++)
        for (int j = 0; j < 6; j++) {
            const int x = x0 + j;
            d[i][j] = rows[i] && x >= 0 && x < w ? rows[i] + (int64_t)x * ic : zero;
        }
    int c = 0;
    WK_PLANES_STEP(vec, mem, WK_LN, 6, WG_BT, d, ic, v, vs)
    WK_PLANES_STEP(hvec, hmem, WK_LN / 2, 6, WG_BT, d, ic, v, vs)
    WK_PLANES_STEP(float, float, 1, 6, WG_BT, d, ic, v, vs)
}

/* m [WK_MR, NR vectors] (row stride ldm) = v [WK_MR, K] (row stride ldv) x u [K, NR
 * vectors] (row stride ldu): the accumulators stay in registers over K. */
WK_TGT LK_ALWAYS_INLINE void WK(wk_mm)(float *m, size_t ldm, const float *v, size_t ldv,
                                       const float *u, size_t ldu, int k, const int nr) {
    typedef WK(wk_vec) vec;
    typedef WK(wk_mem) mem;
    vec acc[WK_MR][2];
    for (int r = 0; r < WK_MR; r++)
        for (int q = 0; q < nr; q++) acc[r][q] = (vec){0};
    for (int p = 0; p < k; p++) {
        vec b[2];
        for (int q = 0; q < nr; q++) b[q] = *(const mem *)(u + (size_t)p * ldu + q * WK_LN);
        for (int r = 0; r < WK_MR; r++) {
            const float a = v[(size_t)r * ldv + p];
            for (int q = 0; q < nr; q++) acc[r][q] += a * b[q];
        }
    }
    for (int r = 0; r < WK_MR; r++)
        for (int q = 0; q < nr; q++) *(mem *)(m + (size_t)r * ldm + q * WK_LN) = acc[r][q];
}

/* wk_mm for one half vector of columns. */
WK_TGT static inline void WK(wk_mm_half)(float *m, size_t ldm, const float *v, size_t ldv,
                                         const float *u, size_t ldu, int k) {
    typedef WK(wk_hvec) hvec;
    typedef WK(wk_hmem) hmem;
    hvec acc[WK_MR];
    for (int r = 0; r < WK_MR; r++) acc[r] = (hvec){0};
    for (int p = 0; p < k; p++) {
        const hvec b = *(const hmem *)(u + (size_t)p * ldu);
        for (int r = 0; r < WK_MR; r++) acc[r] += v[(size_t)r * ldv + p] * b;
    }
    for (int r = 0; r < WK_MR; r++) *(hmem *)(m + (size_t)r * ldm) = acc[r];
}

/* The 36 products of a block for output channels [o0, o0 + nc): M plane a [T, nc] =
 * V plane a [T, IC] x U plane a [IC, o0 .. o0 + nc). */
WK_TGT static void WK(wk_products)(float *mb, size_t ms, const float *vb, size_t vs,
                                   const float *u, int t, int ic, int oc, int o0, int nc) {
    for (int a = 0; a < 36; a++) {
        const float *va = vb + (size_t)a * vs, *ua = u + (size_t)a * ic * oc + o0;
        float *ma = mb + (size_t)a * ms;
        for (int r = 0; r < t; r += WK_MR) {
            int o = 0;
            for (; o + 2 * WK_LN <= nc; o += 2 * WK_LN)
                WK(wk_mm)(ma + (size_t)r * nc + o, nc, va + (size_t)r * ic, ic, ua + o, oc, ic, 2);
            for (; o + WK_LN <= nc; o += WK_LN)
                WK(wk_mm)(ma + (size_t)r * nc + o, nc, va + (size_t)r * ic, ic, ua + o, oc, ic, 1);
            if (o < nc) /* 8 channels (AVX-512): nc is a multiple of 8 */
                WK(wk_mm_half)(ma + (size_t)r * nc + o, nc, va + (size_t)r * ic, ic, ua + o, oc, ic);
        }
    }
}

/* One tile's output transform for channels [o0, o0 + nc): y rows orow[i] (NULL: below
 * the map) at columns 0 .. ncol-1 (the tile's first column is 0) receive
 * A^T M A + bias, M the tile's row of the 36 planes of mb. */
WK_TGT static void WK(wk_out)(float *const orow[4], int ncol, const float *mt, size_t ms,
                              const float *bias, int oc, int o0, int nc) {
    typedef WK(wk_vec) vec;
    typedef WK(wk_mem) mem;
    typedef WK(wk_hvec) hvec;
    typedef WK(wk_hmem) hmem;
    int c = 0;
/* Channels c .. c + W - 1 as one value of type T (memory through M), while W fit. */
#define WK_OUT_STEP(T, M, W)                                                           \
    for (; c + (W) <= nc; c += (W)) {                                                  \
        T t[4][6]; /* [row of A^T M][column] */                                        \
        for (int j = 0; j < 6; j++) {                                                  \
            T col[6], r[4];                                                            \
            for (int i = 0; i < 6; i++)                                                \
                col[i] = *(const M *)(mt + (size_t)(6 * i + j) * ms + c);              \
            WG_AT(r, col);                                                             \
            for (int i = 0; i < 4; i++) t[i][j] = r[i];                                \
        }                                                                              \
        const T bv = bias ? *(const M *)(bias + o0 + c) : (T){0};                      \
        for (int i = 0; i < 4; i++) {                                                  \
            if (!orow[i]) continue;                                                    \
            T r[4];                                                                    \
            WG_AT(r, t[i]);                                                            \
            for (int j = 0; j < ncol; j++)                                             \
                *(M *)(orow[i] + (int64_t)j * oc + o0 + c) = r[j] + bv;                \
        }                                                                              \
    }
    WK_OUT_STEP(vec, mem, WK_LN)
    WK_OUT_STEP(hvec, hmem, WK_LN / 2)
#undef WK_OUT_STEP
}

/* row [n] += add [n] (the residual of lk_wino_forward). */
WK_TGT static void WK(wk_addrow)(float *row, const float *add, int64_t n) {
    typedef WK(wk_mem) mem;
    int64_t k = 0;
    for (; k + WK_LN <= n; k += WK_LN) *(mem *)(row + k) += *(const mem *)(add + k);
    for (; k < n; k++) row[k] += add[k];
}

/* Tiles [t0, t1) of the layer (t1 - t0 <= L->t): transforms and products through this
 * thread's workspace, then the SiLU (if any) and the residual (if any) over the block's
 * output rows, which are still in cache. */
WK_TGT static void WK(wk_block)(const lk_wino *L, float *y, const float *x, const float *b,
                                const float *add, float *ws, int64_t t0, int64_t t1) {
    const lk_wino_cfg *c = &L->cfg;
    const int th = (c->h + 3) / 4, tw = (c->w + 3) / 4, nt = (int)(t1 - t0);
    float *vb = ws, *mb = ws + 36 * L->vs;
    for (int64_t t = t0; t < t1; t++) {
        const int n = (int)(t / ((int64_t)th * tw)), r = (int)(t % ((int64_t)th * tw));
        const int y0 = (r / tw) * 4 - 1, x0 = (r % tw) * 4 - 1;
        const float *rows[6];
        for (int i = 0; i < 6; i++) {
            const int yy = y0 + i;
            rows[i] = yy >= 0 && yy < c->h ? x + ((int64_t)n * c->h + yy) * c->w * c->ic : NULL;
        }
        WK(wk_in)(vb + (size_t)(t - t0) * c->ic, L->vs, rows, x0, c->w, c->ic, L->zero);
    }
    /* A short last block: zero rows up to a whole micro-tile (their products are
     * never read, but must be numbers). */
    const int tpad = (nt + WK_MR - 1) / WK_MR * WK_MR;
    if (tpad > nt)
        for (int a = 0; a < 36; a++)
            memset(vb + (size_t)a * L->vs + (size_t)nt * c->ic, 0,
                   sizeof(float) * (size_t)(tpad - nt) * c->ic);
    for (int o0 = 0; o0 < c->oc; o0 += WG_NC) {
        const int nc = c->oc - o0 < WG_NC ? c->oc - o0 : WG_NC;
        WK(wk_products)(mb, L->ms, vb, L->vs, L->u, tpad, c->ic, c->oc, o0, nc);
        for (int64_t t = t0; t < t1; t++) {
            const int n = (int)(t / ((int64_t)th * tw)), r = (int)(t % ((int64_t)th * tw));
            const int oy = (r / tw) * 4, ox = (r % tw) * 4;
            float *orow[4];
            for (int i = 0; i < 4; i++)
                orow[i] = oy + i < c->h ? y + (((int64_t)n * c->h + oy + i) * c->w + ox) * c->oc
                                        : NULL;
            WK(wk_out)(orow, c->w - ox < 4 ? c->w - ox : 4, mb + (size_t)(t - t0) * nc, L->ms, b,
                       c->oc, o0, nc);
        }
    }
    if (!c->silu && !add) return;
    for (int64_t t = t0; t < t1; t++) {
        const int n = (int)(t / ((int64_t)th * tw)), r = (int)(t % ((int64_t)th * tw));
        const int oy = (r / tw) * 4, ox = (r % tw) * 4, ncol = c->w - ox < 4 ? c->w - ox : 4;
        for (int i = 0; i < 4 && oy + i < c->h; i++) {
            const int64_t off = (((int64_t)n * c->h + oy + i) * c->w + ox) * c->oc;
            if (c->silu) lk_silu_forward_fast_serial(y + off, y + off, (int64_t)ncol * c->oc);
            if (add) WK(wk_addrow)(y + off, add + off, (int64_t)ncol * c->oc);
        }
    }
}

/* One tile's output-gradient transform: the 36 planes of q (q + a * qs) receive
 * A dY A^T [OC] of the 4x4 tile dY whose rows are rows[i] (NULL: below the map) and
 * columns 0 .. ncol-1 (the rest: zeros). */
WK_TGT static void WK(wk_dy)(float *q, size_t qs, const float *const rows[4], int ncol, int oc,
                             const float *zero) {
    typedef WK(wk_vec) vec;
    typedef WK(wk_mem) mem;
    typedef WK(wk_hvec) hvec;
    typedef WK(wk_hmem) hmem;
    const float *d[4][4];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++)
            d[i][j] = rows[i] && j < ncol ? rows[i] + (int64_t)j * oc : zero;
    int c = 0;
    WK_PLANES_STEP(vec, mem, WK_LN, 4, WG_A, d, oc, q, qs)
    WK_PLANES_STEP(hvec, hmem, WK_LN / 2, 4, WG_A, d, oc, q, qs)
}

/* p [rows, NR vectors] (row stride ldp) += v^T q over k tiles: v [k, ldv] read at the
 * rows' columns, q [k, ldq]. The partial sums stay in registers over the tiles. */
WK_TGT LK_ALWAYS_INLINE void WK(wk_acc)(float *p, size_t ldp, const float *v, size_t ldv,
                                        const float *q, size_t ldq, int k, const int rows,
                                        const int nr) {
    typedef WK(wk_vec) vec;
    typedef WK(wk_mem) mem;
    vec acc[WK_MR][2];
    for (int r = 0; r < rows; r++)
        for (int s = 0; s < nr; s++) acc[r][s] = *(const mem *)(p + (size_t)r * ldp + s * WK_LN);
    for (int t = 0; t < k; t++) {
        vec b[2];
        for (int s = 0; s < nr; s++) b[s] = *(const mem *)(q + (size_t)t * ldq + s * WK_LN);
        for (int r = 0; r < rows; r++) {
            const float a = v[(size_t)t * ldv + r];
            for (int s = 0; s < nr; s++) acc[r][s] += a * b[s];
        }
    }
    for (int r = 0; r < rows; r++)
        for (int s = 0; s < nr; s++) *(mem *)(p + (size_t)r * ldp + s * WK_LN) = acc[r][s];
}

/* wk_acc for one half vector of columns and one row. */
WK_TGT static void WK(wk_acc_half)(float *p, const float *v, size_t ldv, const float *q,
                                   size_t ldq, int k) {
    typedef WK(wk_hvec) hvec;
    typedef WK(wk_hmem) hmem;
    hvec acc = *(const hmem *)p;
    for (int t = 0; t < k; t++) acc += v[(size_t)t * ldv] * *(const hmem *)(q + (size_t)t * ldq);
    *(hmem *)p = acc;
}

/* Tiles [t0, t1) of the weight gradient: V (as the forward) and Q of the block, then
 * each plane's P_a [IC, OC] += V_a^T Q_a. */
WK_TGT static void WK(wk_block_w)(const lk_wino *L, float *pw, const float *x, const float *dy,
                                  float *ws, int64_t t0, int64_t t1) {
    const lk_wino_cfg *c = &L->cfg;
    const int th = (c->h + 3) / 4, tw = (c->w + 3) / 4, nt = (int)(t1 - t0);
    const int ic = c->ic, oc = c->oc;
    float *vb = ws, *qb = ws + 36 * L->vs;
    for (int64_t t = t0; t < t1; t++) {
        const int n = (int)(t / ((int64_t)th * tw)), r = (int)(t % ((int64_t)th * tw));
        const int oy = (r / tw) * 4, ox = (r % tw) * 4;
        const float *rows[6], *drows[4];
        for (int i = 0; i < 6; i++) {
            const int yy = oy - 1 + i;
            rows[i] = yy >= 0 && yy < c->h ? x + ((int64_t)n * c->h + yy) * c->w * ic : NULL;
        }
        for (int i = 0; i < 4; i++)
            drows[i] = oy + i < c->h ? dy + (((int64_t)n * c->h + oy + i) * c->w + ox) * oc : NULL;
        WK(wk_in)(vb + (size_t)(t - t0) * ic, L->vs, rows, ox - 1, c->w, ic, L->zero);
        WK(wk_dy)(qb + (size_t)(t - t0) * oc, L->qs, drows, c->w - ox < 4 ? c->w - ox : 4, oc,
                  L->zero);
    }
    for (int a = 0; a < 36; a++) {
        const float *va = vb + (size_t)a * L->vs, *qa = qb + (size_t)a * L->qs;
        float *pa = pw + (size_t)a * ic * oc;
        for (int i = 0; i < ic; i += WK_MR) {
            const int rows = ic - i < WK_MR ? ic - i : WK_MR;
            int o = 0;
            for (; o + 2 * WK_LN <= oc; o += 2 * WK_LN) {
                if (rows == WK_MR)
                    WK(wk_acc)(pa + (size_t)i * oc + o, oc, va + i, ic, qa + o, oc, nt, WK_MR, 2);
                else
                    for (int r = 0; r < rows; r++)
                        WK(wk_acc)(pa + (size_t)(i + r) * oc + o, oc, va + i + r, ic, qa + o, oc,
                                   nt, 1, 2);
            }
            for (; o + WK_LN <= oc; o += WK_LN)
                for (int r = 0; r < rows; r++)
                    WK(wk_acc)(pa + (size_t)(i + r) * oc + o, oc, va + i + r, ic, qa + o, oc, nt, 1,
                               1);
            if (o < oc) /* 8 channels (AVX-512) */
                for (int r = 0; r < rows; r++)
                    WK(wk_acc_half)(pa + (size_t)(i + r) * oc + o, va + i + r, ic, qa + o, oc, nt);
        }
    }
}

#undef WK_PLANES_STEP
#undef WK
#undef WK_JOIN
#undef WK_JOIN2
