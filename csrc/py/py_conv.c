/* Python access to conv2d for tests: plan, run, free per call. */
#include "lk_py.h"

#include <string.h>

#include "lk_layers.h"

/* Build the config from x [N, IH, IW, IC] and w [OC, IC/G, KH, KW]. */
static int conv_cfg(lk_conv2d_cfg *c, PyObject *x, PyObject *w, int has_bias, int sh, int sw,
                    int pt, int pl, int pb, int pr, int groups) {
    npy_intp xd[4], wd[4];
    if (!lk_py_array(x, "x", NPY_FLOAT32, 4, 0, 0, xd)) return -1;
    if (!lk_py_array(w, "w", NPY_FLOAT32, 4, 0, 0, wd)) return -1;
    if (groups < 1 || xd[3] % groups != 0 || wd[0] % groups != 0) {
        PyErr_Format(PyExc_ValueError, "groups=%d must divide in_channels=%ld and out_channels=%ld",
                     groups, (long)xd[3], (long)wd[0]);
        return -1;
    }
    if (wd[1] != xd[3] / groups) {
        PyErr_Format(PyExc_ValueError,
                     "w has %ld input channels per group but x has %ld channels / %d groups",
                     (long)wd[1], (long)xd[3], groups);
        return -1;
    }
    memset(c, 0, sizeof *c);
    *c = (lk_conv2d_cfg){.n = (int)xd[0], .ih = (int)xd[1], .iw = (int)xd[2], .ic = (int)xd[3],
                         .oc = (int)wd[0], .kh = (int)wd[2], .kw = (int)wd[3], .sh = sh, .sw = sw,
                         .pt = pt, .pl = pl, .pb = pb, .pr = pr, .groups = groups,
                         .bias = has_bias};
    return 0;
}

static PyObject *py_conv2d_forward(PyObject *self, PyObject *args) {
    PyObject *y, *x, *w, *b;
    int sh, sw, pt, pl, pb, pr, groups;
    if (!PyArg_ParseTuple(args, "OOOO(ii)(iiii)i:conv2d_forward", &y, &x, &w, &b, &sh, &sw, &pt,
                          &pl, &pb, &pr, &groups))
        return NULL;
    lk_conv2d_cfg c;
    if (conv_cfg(&c, x, w, b != Py_None, sh, sw, pt, pl, pb, pr, groups) < 0) return NULL;
    float *yp = lk_py_array(y, "y", NPY_FLOAT32, 4, 1, 0, NULL);
    if (!yp) return NULL;
    float *bp = lk_py_array(b, "b", NPY_FLOAT32, 1, 0, 1, NULL);
    if (PyErr_Occurred()) return NULL;
    if (bp && lk_py_shape(b, "b", 1, (npy_intp[]){c.oc}) < 0) return NULL;
    lk_conv2d L;
    lk_status st = lk_conv2d_init(&L, &c);
    if (st == LK_OK &&
        lk_py_shape(y, "y", 4, (npy_intp[]){c.n, L.oh, L.ow, c.oc}) < 0) {
        lk_conv2d_free(&L);
        return NULL;
    }
    if (st == LK_OK) {
        const float *xp = PyArray_DATA((PyArrayObject *)x), *wp = PyArray_DATA((PyArrayObject *)w);
        LK_PY_CALL(st, lk_conv2d_forward(&L, yp, xp, wp, bp, 0));
    }
    lk_conv2d_free(&L);
    if (st != LK_OK) return lk_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *py_conv2d_backward(PyObject *self, PyObject *args) {
    PyObject *dx, *dw, *db, *dy, *x, *w;
    int sh, sw, pt, pl, pb, pr, groups;
    if (!PyArg_ParseTuple(args, "OOOOOO(ii)(iiii)i:conv2d_backward", &dx, &dw, &db, &dy, &x, &w,
                          &sh, &sw, &pt, &pl, &pb, &pr, &groups))
        return NULL;
    lk_conv2d_cfg c;
    if (conv_cfg(&c, x, w, db != Py_None, sh, sw, pt, pl, pb, pr, groups) < 0) return NULL;
    c.train = 1;
    c.need_dx = dx != Py_None;
    float *dxp = lk_py_array(dx, "dx", NPY_FLOAT32, 4, 1, 1, NULL);
    if (PyErr_Occurred()) return NULL;
    float *dwp = lk_py_array(dw, "dw", NPY_FLOAT32, 4, 1, 0, NULL);
    if (!dwp) return NULL;
    float *dbp = lk_py_array(db, "db", NPY_FLOAT32, 1, 1, 1, NULL);
    if (PyErr_Occurred()) return NULL;
    const float *dyp = lk_py_array(dy, "dy", NPY_FLOAT32, 4, 0, 0, NULL);
    if (!dyp) return NULL;
    if (lk_py_shape(dw, "dw", 4, PyArray_DIMS((PyArrayObject *)w)) < 0) return NULL;
    if (dbp && lk_py_shape(db, "db", 1, (npy_intp[]){c.oc}) < 0) return NULL;
    if (dxp && lk_py_shape(dx, "dx", 4, PyArray_DIMS((PyArrayObject *)x)) < 0) return NULL;
    lk_conv2d L;
    lk_status st = lk_conv2d_init(&L, &c);
    if (st == LK_OK && lk_py_shape(dy, "dy", 4, (npy_intp[]){c.n, L.oh, L.ow, c.oc}) < 0) {
        lk_conv2d_free(&L);
        return NULL;
    }
    if (st == LK_OK) {
        const float *xp = PyArray_DATA((PyArrayObject *)x), *wp = PyArray_DATA((PyArrayObject *)w);
        LK_PY_CALL(st, lk_conv2d_backward(&L, dxp, dwp, dbp, dyp, xp, wp));
    }
    lk_conv2d_free(&L);
    if (st != LK_OK) return lk_py_raise(st);
    Py_RETURN_NONE;
}

PyMethodDef lk_py_conv_methods[] = {
    {"conv2d_forward", py_conv2d_forward, METH_VARARGS,
     "conv2d_forward(y, x, w, b, (sh, sw), (pt, pl, pb, pr), groups): NHWC y = conv(x)."},
    {"conv2d_backward", py_conv2d_backward, METH_VARARGS,
     "conv2d_backward(dx, dw, db, dy, x, w, stride, padding, groups): gradients (dx, db may be None)."},
    {NULL, NULL, 0, NULL},
};
