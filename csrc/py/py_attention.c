/* Python access to the attention helpers: mean/max over channels (NHWC), softmax
 * over the last axis (plan, run, free per call), the spatial gate (a one-channel
 * map times every channel) and the attention-weighted sum over positions. */
#include "lk_py.h"

#include "lk_layers.h"

static PyObject *py_chanstat_forward(PyObject *self, PyObject *args) {
    PyObject *y, *argmax, *x;
    if (!PyArg_ParseTuple(args, "OOO:channel_stats_forward", &y, &argmax, &x)) return NULL;
    npy_intp d[4];
    const float *xp = lk_py_array(x, "x", NPY_FLOAT32, 4, 0, 0, d);
    if (!xp) return NULL;
    if (d[3] < 1 || d[3] > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "x must have 1 to 2^31-1 channels, got %ld", (long)d[3]);
        return NULL;
    }
    float *yp = lk_py_array(y, "y", NPY_FLOAT32, 4, 1, 0, NULL);
    if (!yp || lk_py_shape(y, "y", 4, (npy_intp[]){d[0], d[1], d[2], 2}) < 0) return NULL;
    int32_t *ap = lk_py_array(argmax, "argmax", NPY_INT32, 3, 1, 0, NULL);
    if (!ap || lk_py_shape(argmax, "argmax", 3, d) < 0) return NULL;
    lk_status st;
    LK_PY_CALL(st, lk_chanstat_forward(yp, ap, xp, (int64_t)(d[0] * d[1] * d[2]), (int)d[3]));
    if (st != LK_OK) return lk_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *py_chanstat_backward(PyObject *self, PyObject *args) {
    PyObject *dx, *dy, *argmax;
    if (!PyArg_ParseTuple(args, "OOO:channel_stats_backward", &dx, &dy, &argmax)) return NULL;
    npy_intp d[4];
    float *dxp = lk_py_array(dx, "dx", NPY_FLOAT32, 4, 1, 0, d);
    if (!dxp) return NULL;
    if (d[3] < 1 || d[3] > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "dx must have 1 to 2^31-1 channels, got %ld", (long)d[3]);
        return NULL;
    }
    const float *dyp = lk_py_array(dy, "dy", NPY_FLOAT32, 4, 0, 0, NULL);
    if (!dyp || lk_py_shape(dy, "dy", 4, (npy_intp[]){d[0], d[1], d[2], 2}) < 0) return NULL;
    const int32_t *ap = lk_py_array(argmax, "argmax", NPY_INT32, 3, 0, 0, NULL);
    if (!ap || lk_py_shape(argmax, "argmax", 3, d) < 0) return NULL;
    lk_status st;
    LK_PY_CALL(st, lk_chanstat_backward(dxp, dyp, ap, (int64_t)(d[0] * d[1] * d[2]), (int)d[3]));
    if (st != LK_OK) return lk_py_raise(st);
    Py_RETURN_NONE;
}

/* [rows, cols] float32 array with both sizes in int range. */
static const float *rows_cols(PyObject *obj, const char *name, int out, int *rows, int *cols) {
    npy_intp d[2];
    const float *p = lk_py_array(obj, name, NPY_FLOAT32, 2, out, 0, d);
    if (!p) return NULL;
    if (d[0] < 1 || d[1] < 1 || d[0] > INT32_MAX || d[1] > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "%s must have positive sizes below 2^31, got (%ld, %ld)",
                     name, (long)d[0], (long)d[1]);
        return NULL;
    }
    *rows = (int)d[0];
    *cols = (int)d[1];
    return p;
}

static PyObject *py_softmax_forward(PyObject *self, PyObject *args) {
    PyObject *y, *x;
    if (!PyArg_ParseTuple(args, "OO:spatial_softmax_forward", &y, &x)) return NULL;
    int rows, cols;
    const float *xp = rows_cols(x, "x", 0, &rows, &cols);
    if (!xp) return NULL;
    float *yp = lk_py_array(y, "y", NPY_FLOAT32, 2, 1, 0, NULL);
    if (!yp || lk_py_shape(y, "y", 2, (npy_intp[]){rows, cols}) < 0) return NULL;
    lk_softmax L;
    lk_status st;
    LK_PY_CALL(st, lk_softmax_init(&L, rows, cols, 0));
    if (st == LK_OK) LK_PY_CALL(st, lk_softmax_forward(&L, yp, xp));
    lk_softmax_free(&L);
    if (st != LK_OK) return lk_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *py_softmax_backward(PyObject *self, PyObject *args) {
    PyObject *dx, *dy, *y;
    if (!PyArg_ParseTuple(args, "OOO:spatial_softmax_backward", &dx, &dy, &y)) return NULL;
    int rows, cols;
    const float *yp = rows_cols(y, "y", 0, &rows, &cols);
    if (!yp) return NULL;
    const npy_intp shape[2] = {rows, cols};
    const float *dyp = lk_py_array(dy, "dy", NPY_FLOAT32, 2, 0, 0, NULL);
    if (!dyp || lk_py_shape(dy, "dy", 2, shape) < 0) return NULL;
    float *dxp = lk_py_array(dx, "dx", NPY_FLOAT32, 2, 1, 0, NULL);
    if (!dxp || lk_py_shape(dx, "dx", 2, shape) < 0) return NULL;
    lk_softmax L;
    lk_status st;
    LK_PY_CALL(st, lk_softmax_init(&L, rows, cols, 1));
    if (st == LK_OK) LK_PY_CALL(st, lk_softmax_backward(&L, dxp, dyp, yp));
    lk_softmax_free(&L);
    if (st != LK_OK) return lk_py_raise(st);
    Py_RETURN_NONE;
}

/* A size that the core takes as an int: 1 .. 2^31-1. */
static int int_size(npy_intp v, const char *name, const char *what) {
    if (v >= 1 && v <= INT32_MAX) return 0;
    PyErr_Format(PyExc_ValueError, "%s must have 1 to 2^31-1 %s, got %ld", name, what, (long)v);
    return -1;
}

/* x [N, H, W, C] and map [N, H, W, 1] (the NHWC view of an [N, 1, H, W] map). */
static int spatial_mul_dims(PyObject *x, PyObject *map, npy_intp *xd, const float **xp,
                            const float **mp) {
    *xp = lk_py_array(x, "x", NPY_FLOAT32, 4, 0, 0, xd);
    if (!*xp || int_size(xd[3], "x", "channels") < 0) return -1;
    *mp = lk_py_array(map, "map", NPY_FLOAT32, 4, 0, 0, NULL);
    if (!*mp) return -1;
    return lk_py_shape(map, "map", 4, (npy_intp[]){xd[0], xd[1], xd[2], 1});
}

static PyObject *py_spatial_mul_forward(PyObject *self, PyObject *args) {
    PyObject *y, *x, *map;
    if (!PyArg_ParseTuple(args, "OOO:spatial_mul_forward", &y, &x, &map)) return NULL;
    npy_intp d[4];
    const float *xp, *mp;
    if (spatial_mul_dims(x, map, d, &xp, &mp) < 0) return NULL;
    float *yp = lk_py_array(y, "y", NPY_FLOAT32, 4, 1, 0, NULL); /* may be x */
    if (!yp || lk_py_shape(y, "y", 4, d) < 0) return NULL;
    lk_status st;
    LK_PY_CALL(st, lk_spatial_mul_forward(yp, xp, mp, (int64_t)(d[0] * d[1] * d[2]), (int)d[3]));
    if (st != LK_OK) return lk_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *py_spatial_mul_backward(PyObject *self, PyObject *args) {
    PyObject *dx, *dmap, *dy, *x, *map;
    if (!PyArg_ParseTuple(args, "OOOOO:spatial_mul_backward", &dx, &dmap, &dy, &x, &map))
        return NULL;
    npy_intp d[4];
    const float *xp, *mp;
    if (spatial_mul_dims(x, map, d, &xp, &mp) < 0) return NULL;
    const float *dyp = lk_py_array(dy, "dy", NPY_FLOAT32, 4, 0, 0, NULL);
    if (!dyp || lk_py_shape(dy, "dy", 4, d) < 0) return NULL;
    float *dxp = lk_py_array(dx, "dx", NPY_FLOAT32, 4, 1, 1, NULL); /* may be dy */
    if (PyErr_Occurred()) return NULL;
    if (dxp && lk_py_shape(dx, "dx", 4, d) < 0) return NULL;
    float *dmp = lk_py_array(dmap, "dmap", NPY_FLOAT32, 4, 1, 1, NULL);
    if (PyErr_Occurred()) return NULL;
    if (dmp && lk_py_shape(dmap, "dmap", 4, (npy_intp[]){d[0], d[1], d[2], 1}) < 0) return NULL;
    lk_status st;
    LK_PY_CALL(st, lk_spatial_mul_backward(dxp, dmp, dyp, xp, mp, (int64_t)(d[0] * d[1] * d[2]),
                                           (int)d[3]));
    if (st != LK_OK) return lk_py_raise(st);
    Py_RETURN_NONE;
}

/* x [N, S, C] and a [N, S], with N and C in int range. */
static int weighted_sum_dims(PyObject *x, PyObject *a, npy_intp *xd, const float **xp,
                             const float **ap) {
    *xp = lk_py_array(x, "x", NPY_FLOAT32, 3, 0, 0, xd);
    if (!*xp || int_size(xd[0], "x", "images") < 0 || int_size(xd[2], "x", "channels") < 0)
        return -1;
    *ap = lk_py_array(a, "a", NPY_FLOAT32, 2, 0, 0, NULL);
    if (!*ap) return -1;
    return lk_py_shape(a, "a", 2, (npy_intp[]){xd[0], xd[1]});
}

static PyObject *py_weighted_sum_forward(PyObject *self, PyObject *args) {
    PyObject *p, *x, *a;
    if (!PyArg_ParseTuple(args, "OOO:weighted_sum_forward", &p, &x, &a)) return NULL;
    npy_intp d[3];
    const float *xp, *ap;
    if (weighted_sum_dims(x, a, d, &xp, &ap) < 0) return NULL;
    float *pp = lk_py_array(p, "p", NPY_FLOAT32, 2, 1, 0, NULL);
    if (!pp || lk_py_shape(p, "p", 2, (npy_intp[]){d[0], d[2]}) < 0) return NULL;
    lk_status st;
    LK_PY_CALL(st, lk_weighted_sum_forward(pp, xp, ap, (int)d[0], (int64_t)d[1], (int)d[2]));
    if (st != LK_OK) return lk_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *py_weighted_sum_backward(PyObject *self, PyObject *args) {
    PyObject *dx, *da, *dp, *x, *a;
    int accumulate = 0;
    if (!PyArg_ParseTuple(args, "OOOOO|p:weighted_sum_backward", &dx, &da, &dp, &x, &a,
                          &accumulate))
        return NULL;
    npy_intp d[3];
    const float *xp, *ap;
    if (weighted_sum_dims(x, a, d, &xp, &ap) < 0) return NULL;
    const float *dpp = lk_py_array(dp, "dp", NPY_FLOAT32, 2, 0, 0, NULL);
    if (!dpp || lk_py_shape(dp, "dp", 2, (npy_intp[]){d[0], d[2]}) < 0) return NULL;
    float *dxp = lk_py_array(dx, "dx", NPY_FLOAT32, 3, 1, 1, NULL);
    if (PyErr_Occurred()) return NULL;
    if (dxp && lk_py_shape(dx, "dx", 3, d) < 0) return NULL;
    float *dap = lk_py_array(da, "da", NPY_FLOAT32, 2, 1, 1, NULL);
    if (PyErr_Occurred()) return NULL;
    if (dap && lk_py_shape(da, "da", 2, (npy_intp[]){d[0], d[1]}) < 0) return NULL;
    lk_status st;
    LK_PY_CALL(st, lk_weighted_sum_backward(dxp, dap, dpp, xp, ap, (int)d[0], (int64_t)d[1],
                                            (int)d[2], accumulate));
    if (st != LK_OK) return lk_py_raise(st);
    Py_RETURN_NONE;
}

PyMethodDef lk_py_attention_methods[] = {
    {"channel_stats_forward", py_chanstat_forward, METH_VARARGS,
     "channel_stats_forward(y, argmax, x): NHWC y[..., 0] = mean over C, y[..., 1] = max over C "
     "(first maximal channel saved in argmax)."},
    {"channel_stats_backward", py_chanstat_backward, METH_VARARGS,
     "channel_stats_backward(dx, dy, argmax): dx [N, H, W, C] from dy [N, H, W, 2]."},
    {"spatial_softmax_forward", py_softmax_forward, METH_VARARGS,
     "spatial_softmax_forward(y, x): softmax over the last axis of [rows, cols]."},
    {"spatial_softmax_backward", py_softmax_backward, METH_VARARGS,
     "spatial_softmax_backward(dx, dy, y): softmax gradient from dy and the forward output y."},
    {"spatial_mul_forward", py_spatial_mul_forward, METH_VARARGS,
     "spatial_mul_forward(y, x, map): y = x * map for x [N, H, W, C] and map [N, H, W, 1] "
     "(y may be x)."},
    {"spatial_mul_backward", py_spatial_mul_backward, METH_VARARGS,
     "spatial_mul_backward(dx, dmap, dy, x, map): dx = dy * map (may be dy), dmap [N, H, W, 1] "
     "= sum over C of dy * x; None skips an output."},
    {"weighted_sum_forward", py_weighted_sum_forward, METH_VARARGS,
     "weighted_sum_forward(p, x, a): p [N, C] = sum over s of a [N, S] * x [N, S, C]."},
    {"weighted_sum_backward", py_weighted_sum_backward, METH_VARARGS,
     "weighted_sum_backward(dx, da, dp, x, a, accumulate=False): dx [N, S, C] = a * dp "
     "(added into dx when accumulate), da [N, S] = dp . x; None skips an output."},
    {NULL, NULL, 0, NULL},
};
