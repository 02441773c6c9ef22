/* Python access to batch normalization for tests: plan, run, free per call. */
#include "lk_py.h"

#include <string.h>

#include "lk_layers.h"

/* Build the config from x [N, H, W, C] or [N, C] (BatchNorm1d). */
static int bn_cfg(lk_bn_cfg *c, PyObject *x, const char *xname, float eps, float momentum,
                  int mode) {
    /* Rank first: lk_py_array writes one dim per axis. */
    if (!lk_py_array(x, xname, NPY_FLOAT32, -1, 0, 0, NULL)) return -1;
    int nd = PyArray_NDIM((PyArrayObject *)x);
    if (nd != 4 && nd != 2) {
        PyErr_Format(PyExc_ValueError, "%s must have 4 dimensions [N, H, W, C] or 2 [N, C], got %d",
                     xname, nd);
        return -1;
    }
    const npy_intp *d = PyArray_DIMS((PyArrayObject *)x);
    if (mode != LK_BN_TRAIN && mode != LK_BN_EVAL && mode != LK_BN_FROZEN) {
        PyErr_Format(PyExc_ValueError, "mode must be 0 (train), 1 (eval) or 2 (frozen), got %d",
                     mode);
        return -1;
    }
    memset(c, 0, sizeof *c);
    if (nd == 4)
        *c = (lk_bn_cfg){.n = (int)d[0], .h = (int)d[1], .w = (int)d[2], .c = (int)d[3]};
    else
        *c = (lk_bn_cfg){.n = (int)d[0], .h = 1, .w = 1, .c = (int)d[1]};
    c->eps = eps;
    c->momentum = momentum;
    c->mode = (lk_bn_mode)mode;
    return 0;
}

/* A [C] float32 array argument (None allowed when `optional`); NULL + exception on error. */
static float *bn_vec(PyObject *o, const char *name, int c, int out, int optional, int *err) {
    float *p = lk_py_array(o, name, NPY_FLOAT32, 1, out, optional, NULL);
    if (!p) {
        *err = PyErr_Occurred() != NULL;
        return NULL;
    }
    if (lk_py_shape(o, name, 1, (npy_intp[]){c}) < 0) *err = 1;
    return p;
}

static PyObject *py_bn_forward(PyObject *self, PyObject *args) {
    PyObject *y, *mean, *var, *x, *gamma, *beta, *rmean, *rvar;
    float eps, momentum;
    int mode;
    if (!PyArg_ParseTuple(args, "OOOOOOOOffi:bn_forward", &y, &mean, &var, &x, &gamma, &beta,
                          &rmean, &rvar, &eps, &momentum, &mode))
        return NULL;
    lk_bn_cfg c;
    if (bn_cfg(&c, x, "x", eps, momentum, mode) < 0) return NULL;
    float *yp = lk_py_array(y, "y", NPY_FLOAT32, -1, 1, 0, NULL);
    if (!yp) return NULL;
    if (lk_py_shape(y, "y", PyArray_NDIM((PyArrayObject *)x), PyArray_DIMS((PyArrayObject *)x)) < 0)
        return NULL;
    int err = 0;
    float *mp = bn_vec(mean, "mean", c.c, 1, 1, &err);
    if (err) return NULL;
    float *vp = bn_vec(var, "var", c.c, 1, 1, &err);
    if (err) return NULL;
    const float *gp = bn_vec(gamma, "gamma", c.c, 0, 0, &err);
    if (err) return NULL;
    const float *bp = bn_vec(beta, "beta", c.c, 0, 0, &err);
    if (err) return NULL;
    /* Running statistics are written in TRAIN mode only. */
    int train = mode == LK_BN_TRAIN;
    float *rmp = bn_vec(rmean, "running_mean", c.c, train, train, &err);
    if (err) return NULL;
    float *rvp = bn_vec(rvar, "running_var", c.c, train, train, &err);
    if (err) return NULL;
    if (!rmp != !rvp)
        return PyErr_Format(PyExc_ValueError,
                            "running_mean and running_var must both be arrays or both be None");
    lk_bn L;
    lk_status st = lk_bn_init(&L, &c);
    if (st == LK_OK) {
        const float *xp = PyArray_DATA((PyArrayObject *)x);
        LK_PY_CALL(st, lk_bn_forward(&L, yp, mp, vp, xp, gp, bp, rmp, rvp));
    }
    lk_bn_free(&L);
    if (st != LK_OK) return lk_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *py_bn_backward(PyObject *self, PyObject *args) {
    PyObject *dx, *dgamma, *dbeta, *dy, *x, *mean, *var, *gamma;
    float eps;
    int mode;
    if (!PyArg_ParseTuple(args, "OOOOOOOOfi:bn_backward", &dx, &dgamma, &dbeta, &dy, &x, &mean,
                          &var, &gamma, &eps, &mode))
        return NULL;
    lk_bn_cfg c;
    if (bn_cfg(&c, x, "x", eps, 0.1f, mode) < 0) return NULL;
    c.need_dx = dx != Py_None;
    int nd = PyArray_NDIM((PyArrayObject *)x);
    const npy_intp *xd = PyArray_DIMS((PyArrayObject *)x);
    float *dxp = lk_py_array(dx, "dx", NPY_FLOAT32, -1, 1, 1, NULL);
    if (PyErr_Occurred()) return NULL;
    if (dxp && lk_py_shape(dx, "dx", nd, xd) < 0) return NULL;
    const float *dyp = lk_py_array(dy, "dy", NPY_FLOAT32, -1, 0, 0, NULL);
    if (!dyp) return NULL;
    if (lk_py_shape(dy, "dy", nd, xd) < 0) return NULL;
    int err = 0;
    float *dgp = bn_vec(dgamma, "dgamma", c.c, 1, 1, &err);
    if (err) return NULL;
    float *dbp = bn_vec(dbeta, "dbeta", c.c, 1, 1, &err);
    if (err) return NULL;
    const float *mp = bn_vec(mean, "mean", c.c, 0, 0, &err);
    if (err) return NULL;
    const float *vp = bn_vec(var, "var", c.c, 0, 0, &err);
    if (err) return NULL;
    const float *gp = bn_vec(gamma, "gamma", c.c, 0, dxp == NULL, &err);
    if (err) return NULL;
    lk_bn L;
    lk_status st = lk_bn_init(&L, &c);
    if (st == LK_OK) {
        const float *xp = PyArray_DATA((PyArrayObject *)x);
        LK_PY_CALL(st, lk_bn_backward(&L, dxp, dgp, dbp, dyp, xp, mp, vp, gp));
    }
    lk_bn_free(&L);
    if (st != LK_OK) return lk_py_raise(st);
    Py_RETURN_NONE;
}

PyMethodDef lk_py_bn_methods[] = {
    {"bn_forward", py_bn_forward, METH_VARARGS,
     "bn_forward(y, mean, var, x, gamma, beta, running_mean, running_var, eps, momentum, mode):\n"
     "batch norm of x [N, H, W, C] or [N, C]; mode 0 train (mean/var receive the batch\n"
     "statistics, running stats updated in place if given), 1 eval, 2 frozen (running\n"
     "stats used; mean/var may be None and receive copies of them)."},
    {"bn_backward", py_bn_backward, METH_VARARGS,
     "bn_backward(dx, dgamma, dbeta, dy, x, mean, var, gamma, eps, mode): gradients\n"
     "(any of dx, dgamma, dbeta may be None); mean/var are the saved batch statistics\n"
     "(train) or the running ones (frozen)."},
    {NULL, NULL, 0, NULL},
};
