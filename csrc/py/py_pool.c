/* Python access to global average / max pooling for tests: plan, run, free per
 * call. The backward takes x and reruns the forward so that max pooling has
 * its argmax workspace. */
#include "lk_py.h"

#include <string.h>

#include "lk_layers.h"

static int pool_kind(const char *name, lk_pool_kind *kind) {
    if (strcmp(name, "avg") == 0) *kind = LK_POOL_AVG;
    else if (strcmp(name, "max") == 0) *kind = LK_POOL_MAX;
    else {
        PyErr_Format(PyExc_ValueError, "kind must be 'avg' or 'max', got '%s'", name);
        return -1;
    }
    return 0;
}

static PyObject *py_gpool_forward(PyObject *self, PyObject *args) {
    PyObject *y, *x;
    const char *name;
    if (!PyArg_ParseTuple(args, "OOs:gpool_forward", &y, &x, &name)) return NULL;
    lk_pool_kind kind;
    if (pool_kind(name, &kind) < 0) return NULL;
    npy_intp xd[4];
    const float *xp = lk_py_array(x, "x", NPY_FLOAT32, 4, 0, 0, xd);
    if (!xp) return NULL;
    float *yp = lk_py_array(y, "y", NPY_FLOAT32, 2, 1, 0, NULL);
    if (!yp) return NULL;
    if (lk_py_shape(y, "y", 2, (npy_intp[]){xd[0], xd[3]}) < 0) return NULL;
    lk_gpool L;
    lk_status st = lk_gpool_init(&L, kind, (int)xd[0], (int)xd[3], (int)xd[1], (int)xd[2], 0);
    if (st == LK_OK) LK_PY_CALL(st, lk_gpool_forward(&L, yp, xp));
    lk_gpool_free(&L);
    if (st != LK_OK) return lk_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *py_gpool_backward(PyObject *self, PyObject *args) {
    PyObject *dx, *dy, *x;
    const char *name;
    if (!PyArg_ParseTuple(args, "OOOs:gpool_backward", &dx, &dy, &x, &name)) return NULL;
    lk_pool_kind kind;
    if (pool_kind(name, &kind) < 0) return NULL;
    npy_intp xd[4];
    const float *xp = lk_py_array(x, "x", NPY_FLOAT32, 4, 0, 0, xd);
    if (!xp) return NULL;
    float *dxp = lk_py_array(dx, "dx", NPY_FLOAT32, 4, 1, 0, NULL);
    if (!dxp) return NULL;
    if (lk_py_shape(dx, "dx", 4, xd) < 0) return NULL;
    const float *dyp = lk_py_array(dy, "dy", NPY_FLOAT32, 2, 0, 0, NULL);
    if (!dyp) return NULL;
    if (lk_py_shape(dy, "dy", 2, (npy_intp[]){xd[0], xd[3]}) < 0) return NULL;
    float *y = PyMem_Malloc(sizeof(float) * (size_t)(xd[0] * xd[3]));
    if (!y) return PyErr_NoMemory();
    lk_gpool L;
    lk_status st = lk_gpool_init(&L, kind, (int)xd[0], (int)xd[3], (int)xd[1], (int)xd[2], 1);
    if (st == LK_OK) {
        Py_BEGIN_ALLOW_THREADS
        st = lk_thread_enter();
        if (st == LK_OK) st = lk_gpool_forward(&L, y, xp);
        if (st == LK_OK) st = lk_gpool_backward(&L, dxp, dyp);
        Py_END_ALLOW_THREADS
    }
    lk_gpool_free(&L);
    PyMem_Free(y);
    if (st != LK_OK) return lk_py_raise(st);
    Py_RETURN_NONE;
}

PyMethodDef lk_py_pool_methods[] = {
    {"gpool_forward", py_gpool_forward, METH_VARARGS,
     "gpool_forward(y, x, kind): y [N, C] = global 'avg'|'max' pool of NHWC x [N, H, W, C]."},
    {"gpool_backward", py_gpool_backward, METH_VARARGS,
     "gpool_backward(dx, dy, x, kind): dx [N, H, W, C] from dy [N, C] (reruns the forward on x)."},
    {NULL, NULL, 0, NULL},
};
