/* Python access to the broadcast channel multiply and elementwise add for tests. */
#include "lk_py.h"

#include "lk_layers.h"

/* x [N, H, W, C] and s [N, C], checked against each other. */
static int chmul_dims(PyObject *x, PyObject *s, npy_intp *xd) {
    if (!lk_py_array(x, "x", NPY_FLOAT32, 4, 0, 0, xd)) return -1;
    if (!lk_py_array(s, "s", NPY_FLOAT32, 2, 0, 0, NULL)) return -1;
    return lk_py_shape(s, "s", 2, (npy_intp[]){xd[0], xd[3]});
}

static PyObject *py_chmul_forward(PyObject *self, PyObject *args) {
    PyObject *y, *x, *s;
    if (!PyArg_ParseTuple(args, "OOO:chmul_forward", &y, &x, &s)) return NULL;
    npy_intp xd[4];
    if (chmul_dims(x, s, xd) < 0) return NULL;
    float *yp = lk_py_array(y, "y", NPY_FLOAT32, 4, 1, 0, NULL);
    if (!yp) return NULL;
    if (lk_py_shape(y, "y", 4, xd) < 0) return NULL;
    const float *xp = PyArray_DATA((PyArrayObject *)x), *sp = PyArray_DATA((PyArrayObject *)s);
    lk_chmul L;
    lk_status st = lk_chmul_init(&L, (int)xd[0], (int)xd[3], (int)xd[1], (int)xd[2]);
    if (st == LK_OK) LK_PY_CALL(st, lk_chmul_forward(&L, yp, xp, sp));
    lk_chmul_free(&L);
    if (st != LK_OK) return lk_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *py_chmul_backward(PyObject *self, PyObject *args) {
    PyObject *dx, *ds, *dy, *x, *s;
    if (!PyArg_ParseTuple(args, "OOOOO:chmul_backward", &dx, &ds, &dy, &x, &s)) return NULL;
    npy_intp xd[4];
    if (chmul_dims(x, s, xd) < 0) return NULL;
    const float *dyp = lk_py_array(dy, "dy", NPY_FLOAT32, 4, 0, 0, NULL);
    if (!dyp) return NULL;
    if (lk_py_shape(dy, "dy", 4, xd) < 0) return NULL;
    float *dxp = lk_py_array(dx, "dx", NPY_FLOAT32, 4, 1, 1, NULL);
    if (PyErr_Occurred()) return NULL;
    if (dxp && lk_py_shape(dx, "dx", 4, xd) < 0) return NULL;
    float *dsp = lk_py_array(ds, "ds", NPY_FLOAT32, 2, 1, 1, NULL);
    if (PyErr_Occurred()) return NULL;
    if (dsp && lk_py_shape(ds, "ds", 2, (npy_intp[]){xd[0], xd[3]}) < 0) return NULL;
    const float *xp = PyArray_DATA((PyArrayObject *)x), *sp = PyArray_DATA((PyArrayObject *)s);
    lk_chmul L;
    lk_status st = lk_chmul_init(&L, (int)xd[0], (int)xd[3], (int)xd[1], (int)xd[2]);
    if (st == LK_OK) LK_PY_CALL(st, lk_chmul_backward(&L, dxp, dsp, dyp, xp, sp));
    lk_chmul_free(&L);
    if (st != LK_OK) return lk_py_raise(st);
    Py_RETURN_NONE;
}

/* `name` has the shape of `ref` (any rank). */
static void *same_shape(PyObject *obj, const char *name, int out, PyObject *ref) {
    void *p = lk_py_array(obj, name, NPY_FLOAT32, -1, out, 0, NULL);
    if (!p) return NULL;
    PyArrayObject *r = (PyArrayObject *)ref;
    if (lk_py_shape(obj, name, PyArray_NDIM(r), PyArray_DIMS(r)) < 0) return NULL;
    return p;
}

static PyObject *py_add_forward(PyObject *self, PyObject *args) {
    PyObject *y, *a, *b;
    if (!PyArg_ParseTuple(args, "OOO:add_forward", &y, &a, &b)) return NULL;
    const float *ap = lk_py_array(a, "a", NPY_FLOAT32, -1, 0, 0, NULL);
    if (!ap) return NULL;
    const float *bp = same_shape(b, "b", 0, a);
    if (!bp) return NULL;
    float *yp = same_shape(y, "y", 1, a);
    if (!yp) return NULL;
    lk_status st;
    LK_PY_CALL(st, lk_add_forward(yp, ap, bp, (int64_t)lk_py_size(a)));
    if (st != LK_OK) return lk_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *py_add_inplace(PyObject *self, PyObject *args) {
    PyObject *y, *x;
    if (!PyArg_ParseTuple(args, "OO:add_inplace", &y, &x)) return NULL;
    float *yp = lk_py_array(y, "y", NPY_FLOAT32, -1, 1, 0, NULL);
    if (!yp) return NULL;
    const float *xp = same_shape(x, "x", 0, y);
    if (!xp) return NULL;
    lk_status st;
    LK_PY_CALL(st, lk_add_inplace(yp, xp, (int64_t)lk_py_size(y)));
    if (st != LK_OK) return lk_py_raise(st);
    Py_RETURN_NONE;
}

PyMethodDef lk_py_elementwise_methods[] = {
    {"chmul_forward", py_chmul_forward, METH_VARARGS,
     "chmul_forward(y, x, s): y [N, H, W, C] = x [N, H, W, C] * s [N, C] (broadcast)."},
    {"chmul_backward", py_chmul_backward, METH_VARARGS,
     "chmul_backward(dx, ds, dy, x, s): dx = dy * s, ds = sum_HW dy * x (dx, ds may be None)."},
    {"add_forward", py_add_forward, METH_VARARGS, "add_forward(y, a, b): y = a + b (same shapes)."},
    {"add_inplace", py_add_inplace, METH_VARARGS, "add_inplace(y, x): y += x (same shapes)."},
    {NULL, NULL, 0, NULL},
};
