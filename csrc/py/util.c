#include "lk_py.h"

PyObject *lk_py_raise(lk_status s) {
    const char *msg = lk_last_error();
    PyObject *type = PyExc_RuntimeError;
    switch (s) {
    case LK_ERR_ARG: type = PyExc_ValueError; break;
    case LK_ERR_NOMEM: type = PyExc_MemoryError; break;
    case LK_ERR_NUMERIC: type = PyExc_FloatingPointError; break;
    default: break;
    }
    PyErr_Format(type, "%s", msg[0] ? msg : lk_status_str(s));
    return NULL;
}

static const char *lk_py_dtype_name(int dtype) {
    switch (dtype) {
    case NPY_FLOAT32: return "float32";
    case NPY_INT32: return "int32";
    case NPY_UINT8: return "uint8";
    case NPY_INT64: return "int64";
    case NPY_FLOAT64: return "float64";
    default: return "?";
    }
}

void *lk_py_array(PyObject *obj, const char *name, int dtype, int ndim, int out, int optional,
                  npy_intp *dims) {
    if (obj == Py_None && optional) return NULL;
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a numpy.ndarray of %s, got %s", name,
                     lk_py_dtype_name(dtype), Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    if (PyArray_TYPE(a) != dtype) {
        PyErr_Format(PyExc_TypeError, "%s must have dtype %s, got %s", name,
                     lk_py_dtype_name(dtype), PyArray_DESCR(a)->typeobj->tp_name);
        return NULL;
    }
    if (ndim >= 0 && PyArray_NDIM(a) != ndim) {
        PyErr_Format(PyExc_ValueError, "%s must have %d dimensions, got %d", name, ndim,
                     PyArray_NDIM(a));
        return NULL;
    }
    if (!PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a)) {
        PyErr_Format(PyExc_ValueError, "%s must be C-contiguous and aligned", name);
        return NULL;
    }
    if (out && !PyArray_ISWRITEABLE(a)) {
        PyErr_Format(PyExc_ValueError, "output array %s is read-only", name);
        return NULL;
    }
    if (dims)
        for (int i = 0; i < PyArray_NDIM(a); i++) dims[i] = PyArray_DIM(a, i);
    return PyArray_DATA(a);
}

int lk_py_shape(PyObject *obj, const char *name, int ndim, const npy_intp *expect) {
    PyArrayObject *a = (PyArrayObject *)obj;
    int ok = PyArray_NDIM(a) == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = PyArray_DIM(a, i) == expect[i];
    if (ok) return 0;
    char got[256] = "(", want[256] = "(";
    for (int i = 0; i < PyArray_NDIM(a); i++)
        snprintf(got + strlen(got), sizeof got - strlen(got), "%s%ld", i ? ", " : "",
                 (long)PyArray_DIM(a, i));
    for (int i = 0; i < ndim; i++)
        snprintf(want + strlen(want), sizeof want - strlen(want), "%s%ld", i ? ", " : "",
                 (long)expect[i]);
    PyErr_Format(PyExc_ValueError, "%s has shape %s) but %s) was expected", name, got, want);
    return -1;
}

npy_intp lk_py_size(PyObject *obj) { return PyArray_SIZE((PyArrayObject *)obj); }
