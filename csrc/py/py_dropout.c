/* Python access to dropout and stochastic depth (elementwise: any rank). */
#include "lk_py.h"

#include "lk_layers.h"

/* Check that `obj` (already validated as an array) has the shape of `like`. */
static int same_shape(PyObject *obj, const char *name, PyObject *like) {
    return lk_py_shape(obj, name, PyArray_NDIM((PyArrayObject *)like),
                       PyArray_DIMS((PyArrayObject *)like));
}

static PyObject *py_dropout_forward(PyObject *self, PyObject *args) {
    PyObject *y, *mask, *x;
    float p;
    unsigned long long seed;
    if (!PyArg_ParseTuple(args, "OOOfK:dropout_forward", &y, &mask, &x, &p, &seed)) return NULL;
    const float *xp = lk_py_array(x, "x", NPY_FLOAT32, -1, 0, 0, NULL);
    if (!xp) return NULL;
    float *yp = lk_py_array(y, "y", NPY_FLOAT32, -1, 1, 0, NULL);
    if (!yp || same_shape(y, "y", x) < 0) return NULL;
    uint8_t *mp = lk_py_array(mask, "mask", NPY_UINT8, -1, 1, 0, NULL);
    if (!mp || same_shape(mask, "mask", x) < 0) return NULL;
    lk_status st;
    LK_PY_CALL(st, lk_dropout_forward(yp, mp, xp, (int64_t)lk_py_size(x), p, (uint64_t)seed));
    if (st != LK_OK) return lk_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *py_dropout_backward(PyObject *self, PyObject *args) {
    PyObject *dx, *dy, *mask;
    float p;
    if (!PyArg_ParseTuple(args, "OOOf:dropout_backward", &dx, &dy, &mask, &p)) return NULL;
    const float *dyp = lk_py_array(dy, "dy", NPY_FLOAT32, -1, 0, 0, NULL);
    if (!dyp) return NULL;
    float *dxp = lk_py_array(dx, "dx", NPY_FLOAT32, -1, 1, 0, NULL);
    if (!dxp || same_shape(dx, "dx", dy) < 0) return NULL;
    const uint8_t *mp = lk_py_array(mask, "mask", NPY_UINT8, -1, 0, 0, NULL);
    if (!mp || same_shape(mask, "mask", dy) < 0) return NULL;
    lk_status st;
    LK_PY_CALL(st, lk_dropout_backward(dxp, dyp, mp, (int64_t)lk_py_size(dy), p));
    if (st != LK_OK) return lk_py_raise(st);
    Py_RETURN_NONE;
}

/* x [N, ...] -> (n, per_sample); ValueError for rank 0 or N beyond int. */
static int rows_of(PyObject *x, const char *name, int *n, int64_t *per_sample) {
    PyArrayObject *a = (PyArrayObject *)x;
    if (PyArray_NDIM(a) < 1 || PyArray_DIM(a, 0) > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "%s must have a batch axis of at most 2^31-1 samples",
                     name);
        return -1;
    }
    *n = (int)PyArray_DIM(a, 0);
    *per_sample = *n ? (int64_t)(PyArray_SIZE(a) / *n) : 0;
    return 0;
}

static PyObject *py_stochdepth_forward(PyObject *self, PyObject *args) {
    PyObject *y, *keep, *x;
    float p;
    unsigned long long seed;
    if (!PyArg_ParseTuple(args, "OOOfK:stochastic_depth_forward", &y, &keep, &x, &p, &seed))
        return NULL;
    const float *xp = lk_py_array(x, "x", NPY_FLOAT32, -1, 0, 0, NULL);
    int n;
    int64_t per;
    if (!xp || rows_of(x, "x", &n, &per) < 0) return NULL;
    float *yp = lk_py_array(y, "y", NPY_FLOAT32, -1, 1, 0, NULL);
    if (!yp || same_shape(y, "y", x) < 0) return NULL;
    uint8_t *kp = lk_py_array(keep, "keep", NPY_UINT8, 1, 1, 0, NULL);
    if (!kp || lk_py_shape(keep, "keep", 1, (npy_intp[]){n}) < 0) return NULL;
    lk_status st;
    LK_PY_CALL(st, lk_stochdepth_forward(yp, kp, xp, n, per, p, (uint64_t)seed));
    if (st != LK_OK) return lk_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *py_stochdepth_backward(PyObject *self, PyObject *args) {
    PyObject *dx, *dy, *keep;
    float p;
    if (!PyArg_ParseTuple(args, "OOOf:stochastic_depth_backward", &dx, &dy, &keep, &p))
        return NULL;
    const float *dyp = lk_py_array(dy, "dy", NPY_FLOAT32, -1, 0, 0, NULL);
    int n;
    int64_t per;
    if (!dyp || rows_of(dy, "dy", &n, &per) < 0) return NULL;
    float *dxp = lk_py_array(dx, "dx", NPY_FLOAT32, -1, 1, 0, NULL);
    if (!dxp || same_shape(dx, "dx", dy) < 0) return NULL;
    const uint8_t *kp = lk_py_array(keep, "keep", NPY_UINT8, 1, 0, 0, NULL);
    if (!kp || lk_py_shape(keep, "keep", 1, (npy_intp[]){n}) < 0) return NULL;
    lk_status st;
    LK_PY_CALL(st, lk_stochdepth_backward(dxp, dyp, kp, n, per, p));
    if (st != LK_OK) return lk_py_raise(st);
    Py_RETURN_NONE;
}

PyMethodDef lk_py_dropout_methods[] = {
    {"dropout_forward", py_dropout_forward, METH_VARARGS,
     "dropout_forward(y, mask, x, p, seed): y = x * mask / (1 - p), mask (uint8) from (seed, index)."},
    {"dropout_backward", py_dropout_backward, METH_VARARGS,
     "dropout_backward(dx, dy, mask, p): dx = dy * mask / (1 - p)."},
    {"stochastic_depth_forward", py_stochdepth_forward, METH_VARARGS,
     "stochastic_depth_forward(y, keep, x, p, seed): per-sample keep [N] (uint8), torchvision 'row' mode."},
    {"stochastic_depth_backward", py_stochdepth_backward, METH_VARARGS,
     "stochastic_depth_backward(dx, dy, keep, p): dx[n] = dy[n] * keep[n] / (1 - p)."},
    {NULL, NULL, 0, NULL},
};
