/* Python access to softmax cross-entropy (labels int32, class weights optional). */
#include "lk_py.h"

#include "lk_layers.h"

/* Validate labels [N] (int32) and class_weight [K] or None for [N, K] logits. */
static int xent_args(PyObject *labels, PyObject *class_weight, int n, int k,
                     const int32_t **lp, const float **wp) {
    *lp = lk_py_array(labels, "labels", NPY_INT32, 1, 0, 0, NULL);
    if (!*lp || lk_py_shape(labels, "labels", 1, (npy_intp[]){n}) < 0) return -1;
    *wp = lk_py_array(class_weight, "class_weight", NPY_FLOAT32, 1, 0, 1, NULL);
    if (PyErr_Occurred()) return -1;
    if (*wp && lk_py_shape(class_weight, "class_weight", 1, (npy_intp[]){k}) < 0) return -1;
    return 0;
}

/* [N, K] array of at most INT32_MAX rows and columns. */
static int nk_of(PyObject *obj, const char *name, int out, void **data, int *n, int *k) {
    npy_intp d[2];
    *data = lk_py_array(obj, name, NPY_FLOAT32, 2, out, 0, d);
    if (!*data) return -1;
    if (d[0] > INT32_MAX || d[1] > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "%s is too large (%ld x %ld)", name, (long)d[0], (long)d[1]);
        return -1;
    }
    *n = (int)d[0];
    *k = (int)d[1];
    return 0;
}

static PyObject *py_xent_forward(PyObject *self, PyObject *args) {
    PyObject *prob, *logits, *labels, *class_weight;
    float smoothing;
    if (!PyArg_ParseTuple(args, "OOOOf:cross_entropy_forward", &prob, &logits, &labels,
                          &class_weight, &smoothing))
        return NULL;
    void *xp, *pp;
    int n, k;
    const int32_t *lp;
    const float *wp;
    if (nk_of(logits, "logits", 0, &xp, &n, &k) < 0) return NULL;
    pp = lk_py_array(prob, "prob", NPY_FLOAT32, 2, 1, 0, NULL);
    if (!pp || lk_py_shape(prob, "prob", 2, (npy_intp[]){n, k}) < 0) return NULL;
    if (xent_args(labels, class_weight, n, k, &lp, &wp) < 0) return NULL;
    float loss = 0.0f;
    lk_status st;
    LK_PY_CALL(st, lk_xent_forward(&loss, pp, xp, lp, wp, n, k, smoothing));
    if (st != LK_OK) return lk_py_raise(st);
    return PyFloat_FromDouble((double)loss);
}

static PyObject *py_xent_backward(PyObject *self, PyObject *args) {
    PyObject *dlogits, *prob, *labels, *class_weight;
    float smoothing, dloss;
    if (!PyArg_ParseTuple(args, "OOOOff:cross_entropy_backward", &dlogits, &prob, &labels,
                          &class_weight, &smoothing, &dloss))
        return NULL;
    void *pp, *dp;
    int n, k;
    const int32_t *lp;
    const float *wp;
    if (nk_of(prob, "prob", 0, &pp, &n, &k) < 0) return NULL;
    dp = lk_py_array(dlogits, "dlogits", NPY_FLOAT32, 2, 1, 0, NULL);
    if (!dp || lk_py_shape(dlogits, "dlogits", 2, (npy_intp[]){n, k}) < 0) return NULL;
    if (xent_args(labels, class_weight, n, k, &lp, &wp) < 0) return NULL;
    lk_status st;
    LK_PY_CALL(st, lk_xent_backward(dp, pp, lp, wp, n, k, smoothing, dloss));
    if (st != LK_OK) return lk_py_raise(st);
    Py_RETURN_NONE;
}

PyMethodDef lk_py_loss_methods[] = {
    {"cross_entropy_forward", py_xent_forward, METH_VARARGS,
     "cross_entropy_forward(prob, logits, labels, class_weight, label_smoothing) -> loss: "
     "mean softmax cross-entropy as torch; prob [N, K] receives softmax(logits)."},
    {"cross_entropy_backward", py_xent_backward, METH_VARARGS,
     "cross_entropy_backward(dlogits, prob, labels, class_weight, label_smoothing, dloss): "
     "dlogits [N, K] = dloss * dloss/dlogits."},
    {NULL, NULL, 0, NULL},
};
