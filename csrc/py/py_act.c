/* Python access to the activations for tests: plan, run, free per call.
 * Arrays are flat float32 of any rank (activations are elementwise). */
#include "lk_py.h"

#include <string.h>

#include "lk_layers.h"

static int act_kind(const char *name, lk_act_kind *kind) {
    static const struct { const char *name; lk_act_kind kind; } table[] = {
        {"silu", LK_ACT_SILU}, {"sigmoid", LK_ACT_SIGMOID}, {"relu", LK_ACT_RELU},
        {"relu6", LK_ACT_RELU6}};
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (strcmp(name, table[i].name) == 0) {
            *kind = table[i].kind;
            return 0;
        }
    PyErr_Format(PyExc_ValueError,
                 "kind must be 'silu', 'sigmoid', 'relu' or 'relu6', got '%s'", name);
    return -1;
}

/* An array argument of the same shape as `ref` (any rank). */
static void *act_array(PyObject *obj, const char *name, int out, int optional, PyObject *ref) {
    void *p = lk_py_array(obj, name, NPY_FLOAT32, -1, out, optional, NULL);
    if (!p) return NULL;
    PyArrayObject *r = (PyArrayObject *)ref;
    if (lk_py_shape(obj, name, PyArray_NDIM(r), PyArray_DIMS(r)) < 0) return NULL;
    return p;
}

static PyObject *py_act_forward(PyObject *self, PyObject *args) {
    PyObject *y, *x;
    const char *name;
    if (!PyArg_ParseTuple(args, "OOs:act_forward", &y, &x, &name)) return NULL;
    lk_act_kind kind;
    if (act_kind(name, &kind) < 0) return NULL;
    const float *xp = lk_py_array(x, "x", NPY_FLOAT32, -1, 0, 0, NULL);
    if (!xp) return NULL;
    float *yp = act_array(y, "y", 1, 0, x);
    if (!yp) return NULL;
    lk_act L;
    lk_status st = lk_act_init(&L, kind, lk_py_size(x), 0);
    if (st == LK_OK) LK_PY_CALL(st, lk_act_forward(&L, yp, xp));
    lk_act_free(&L);
    if (st != LK_OK) return lk_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *py_act_backward(PyObject *self, PyObject *args) {
    PyObject *dx, *dy, *x, *y;
    const char *name;
    if (!PyArg_ParseTuple(args, "OOOOs:act_backward", &dx, &dy, &x, &y, &name)) return NULL;
    lk_act_kind kind;
    if (act_kind(name, &kind) < 0) return NULL;
    const float *dyp = lk_py_array(dy, "dy", NPY_FLOAT32, -1, 0, 0, NULL);
    if (!dyp) return NULL;
    float *dxp = act_array(dx, "dx", 1, 0, dy);
    if (!dxp) return NULL;
    const float *xp = act_array(x, "x", 0, 1, dy);
    if (PyErr_Occurred()) return NULL;
    const float *yp = act_array(y, "y", 0, 1, dy);
    if (PyErr_Occurred()) return NULL;
    lk_act L;
    lk_status st = lk_act_init(&L, kind, lk_py_size(dy), 1);
    if (st == LK_OK) LK_PY_CALL(st, lk_act_backward(&L, dxp, dyp, xp, yp));
    lk_act_free(&L);
    if (st != LK_OK) return lk_py_raise(st);
    Py_RETURN_NONE;
}

PyMethodDef lk_py_act_methods[] = {
    {"act_forward", py_act_forward, METH_VARARGS,
     "act_forward(y, x, kind): y = act(x) elementwise; kind 'silu'|'sigmoid'|'relu'|'relu6'."},
    {"act_backward", py_act_backward, METH_VARARGS,
     "act_backward(dx, dy, x, y, kind): dx = dy * act'; silu/relu/relu6 need x, sigmoid y "
     "(the other may be None)."},
    {NULL, NULL, 0, NULL},
};
