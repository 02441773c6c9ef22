/* Python access to linear (inner product) for tests: plan, run, free per call. */
#include "lk_py.h"

#include "lk_layers.h"

/* x [N, IN] and w [OUT, IN]: float32, C-contiguous, matching IN; shapes into xd, wd. */
static int linear_inputs(PyObject *x, PyObject *w, const float **xp, const float **wp,
                         npy_intp *xd, npy_intp *wd) {
    if (!(*xp = lk_py_array(x, "x", NPY_FLOAT32, 2, 0, 0, xd))) return -1;
    if (!(*wp = lk_py_array(w, "w", NPY_FLOAT32, 2, 0, 0, wd))) return -1;
    if (wd[1] != xd[1]) {
        PyErr_Format(PyExc_ValueError, "w has %ld input features but x has %ld", (long)wd[1],
                     (long)xd[1]);
        return -1;
    }
    return 0;
}

static PyObject *py_linear_forward(PyObject *self, PyObject *args) {
    PyObject *y, *x, *w, *b;
    if (!PyArg_ParseTuple(args, "OOOO:linear_forward", &y, &x, &w, &b)) return NULL;
    npy_intp xd[2], wd[2];
    const float *xp, *wp;
    if (linear_inputs(x, w, &xp, &wp, xd, wd) < 0) return NULL;
    const float *bp = lk_py_array(b, "b", NPY_FLOAT32, 1, 0, 1, NULL);
    if (PyErr_Occurred()) return NULL;
    if (bp && lk_py_shape(b, "b", 1, (npy_intp[]){wd[0]}) < 0) return NULL;
    float *yp = lk_py_array(y, "y", NPY_FLOAT32, 2, 1, 0, NULL);
    if (!yp) return NULL;
    if (lk_py_shape(y, "y", 2, (npy_intp[]){xd[0], wd[0]}) < 0) return NULL;
    lk_linear L;
    lk_status st = lk_linear_init(&L, &(lk_linear_cfg){.n = (int)xd[0], .in = (int)xd[1],
                                                         .out = (int)wd[0], .bias = bp != NULL});
    if (st == LK_OK) LK_PY_CALL(st, lk_linear_forward(&L, yp, xp, wp, bp));
    lk_linear_free(&L);
    if (st != LK_OK) return lk_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *py_linear_backward(PyObject *self, PyObject *args) {
    PyObject *dx, *dw, *db, *dy, *x, *w;
    if (!PyArg_ParseTuple(args, "OOOOOO:linear_backward", &dx, &dw, &db, &dy, &x, &w))
        return NULL;
    npy_intp xd[2], wd[2];
    const float *xp, *wp;
    if (linear_inputs(x, w, &xp, &wp, xd, wd) < 0) return NULL;
    const float *dyp = lk_py_array(dy, "dy", NPY_FLOAT32, 2, 0, 0, NULL);
    if (!dyp) return NULL;
    if (lk_py_shape(dy, "dy", 2, (npy_intp[]){xd[0], wd[0]}) < 0) return NULL;
    float *dxp = lk_py_array(dx, "dx", NPY_FLOAT32, 2, 1, 1, NULL);
    if (PyErr_Occurred()) return NULL;
    if (dxp && lk_py_shape(dx, "dx", 2, xd) < 0) return NULL;
    float *dwp = lk_py_array(dw, "dw", NPY_FLOAT32, 2, 1, 1, NULL);
    if (PyErr_Occurred()) return NULL;
    if (dwp && lk_py_shape(dw, "dw", 2, wd) < 0) return NULL;
    float *dbp = lk_py_array(db, "db", NPY_FLOAT32, 1, 1, 1, NULL);
    if (PyErr_Occurred()) return NULL;
    if (dbp && lk_py_shape(db, "db", 1, (npy_intp[]){wd[0]}) < 0) return NULL;
    lk_linear L;
    lk_status st = lk_linear_init(&L, &(lk_linear_cfg){.n = (int)xd[0], .in = (int)xd[1],
                                                         .out = (int)wd[0], .bias = dbp != NULL,
                                                         .train = 1, .need_dx = dxp != NULL});
    if (st == LK_OK) LK_PY_CALL(st, lk_linear_backward(&L, dxp, dwp, dbp, dyp, xp, wp));
    lk_linear_free(&L);
    if (st != LK_OK) return lk_py_raise(st);
    Py_RETURN_NONE;
}

PyMethodDef lk_py_linear_methods[] = {
    {"linear_forward", py_linear_forward, METH_VARARGS,
     "linear_forward(y, x, w, b): y [N, OUT] = x [N, IN] w[OUT, IN]^T + b (b may be None)."},
    {"linear_backward", py_linear_backward, METH_VARARGS,
     "linear_backward(dx, dw, db, dy, x, w): gradients (dx, dw, db may be None)."},
    {NULL, NULL, 0, NULL},
};
