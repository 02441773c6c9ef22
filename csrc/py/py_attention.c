/* Python access to the attention helpers: mean/max over channels (NHWC) and
 * softmax over the last axis (plan, run, free per call). */
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
    {NULL, NULL, 0, NULL},
};
