/* leukemia._core.Model: the whole network as a Python object. Parameter,
 * gradient and buffer views are zero-copy NumPy arrays over the C arenas that
 * keep the model alive through their base object. */
#include "lk_py.h"

#include "lk_model.h"

typedef struct {
    PyObject_HEAD
    lk_model *m;
    int busy; /* one call at a time: the plan and arenas are shared state */
} PyModel;

static void model_dealloc(PyModel *self) {
    lk_model_free(self->m);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int model_init(PyModel *self, PyObject *args, PyObject *kw) {
    static char *names[] = {"arch", "num_classes", NULL};
    const char *arch;
    int k;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "si:Model", names, &arch, &k)) return -1;
    if (self->m) {
        PyErr_SetString(PyExc_RuntimeError, "Model is already initialised");
        return -1;
    }
    lk_status st = lk_model_create(&self->m, arch, k);
    if (st != LK_OK) {
        lk_py_raise(st);
        return -1;
    }
    return 0;
}

static int model_ready(PyModel *self) {
    if (!self->m) {
        PyErr_SetString(PyExc_RuntimeError, "Model is not initialised");
        return 0;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Model is in use by another thread");
        return 0;
    }
    return 1;
}

static PyObject *view(PyModel *self, float *data, const lk_tensor_desc *t, int flat, int64_t n) {
    npy_intp dims[4];
    int nd = flat ? 1 : t->ndim;
    if (flat)
        dims[0] = (npy_intp)n;
    else
        for (int i = 0; i < t->ndim; i++) dims[i] = (npy_intp)t->shape[i];
    PyObject *a = PyArray_SimpleNewFromData(nd, dims, NPY_FLOAT32, data);
    if (!a) return NULL;
    Py_INCREF(self);
    if (PyArray_SetBaseObject((PyArrayObject *)a, (PyObject *)self) < 0) {
        Py_DECREF(a);
        return NULL;
    }
    return a;
}

static PyObject *model_tensors(PyModel *self, PyObject *noargs) {
    if (!model_ready(self)) return NULL;
    int n = lk_model_num_tensors(self->m);
    PyObject *list = PyList_New(n);
    if (!list) return NULL;
    for (int i = 0; i < n; i++) {
        const lk_tensor_desc *t = lk_model_tensor(self->m, i);
        PyObject *shape = PyTuple_New(t->ndim);
        if (!shape) {
            Py_DECREF(list);
            return NULL;
        }
        for (int d = 0; d < t->ndim; d++) PyTuple_SET_ITEM(shape, d, PyLong_FromLongLong(t->shape[d]));
        PyObject *item = Py_BuildValue("(sNO)", t->name, shape,
                                       t->kind == LK_TENSOR_PARAM ? Py_True : Py_False);
        if (!item) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, item);
    }
    return list;
}

static int tensor_index(PyModel *self, PyObject *arg) {
    long i = PyLong_AsLong(arg);
    if (i == -1 && PyErr_Occurred()) return -1;
    if (i < 0 || i >= lk_model_num_tensors(self->m)) {
        PyErr_Format(PyExc_IndexError, "tensor index %ld out of range", i);
        return -1;
    }
    return (int)i;
}

static PyObject *model_tensor(PyModel *self, PyObject *arg) {
    if (!model_ready(self)) return NULL;
    int i = tensor_index(self, arg);
    if (i < 0) return NULL;
    return view(self, lk_model_tensor_data(self->m, i), lk_model_tensor(self->m, i), 0, 0);
}

static PyObject *model_grad(PyModel *self, PyObject *arg) {
    if (!model_ready(self)) return NULL;
    int i = tensor_index(self, arg);
    if (i < 0) return NULL;
    float *g = lk_model_tensor_grad(self->m, i);
    if (!g) Py_RETURN_NONE;
    return view(self, g, lk_model_tensor(self->m, i), 0, 0);
}

static PyObject *model_flat(PyModel *self, PyObject *arg) {
    if (!model_ready(self)) return NULL;
    int want_grad = PyObject_IsTrue(arg);
    if (want_grad < 0) return NULL;
    int64_t n;
    float *p = want_grad ? lk_model_grads(self->m, &n) : lk_model_params(self->m, &n);
    return view(self, p, NULL, 1, n);
}

static PyObject *model_forward(PyModel *self, PyObject *args) {
    PyObject *logits, *x;
    int train;
    unsigned long long seed;
    if (!PyArg_ParseTuple(args, "OOpK:forward", &logits, &x, &train, &seed)) return NULL;
    if (!model_ready(self)) return NULL;
    npy_intp xd[4];
    const float *xp = lk_py_array(x, "x", NPY_FLOAT32, 4, 0, 0, xd);
    if (!xp) return NULL;
    if (xd[1] != 3)
        return PyErr_Format(PyExc_ValueError, "x must be [N, 3, H, W] RGB images, got %ld channels",
                            (long)xd[1]);
    if (xd[0] > 100000 || xd[2] > 100000 || xd[3] > 100000)
        return PyErr_Format(PyExc_ValueError, "x is too large");
    float *lp = lk_py_array(logits, "logits", NPY_FLOAT32, 2, 1, 0, NULL);
    if (!lp) return NULL;
    lk_model_info info;
    lk_model_get_info(self->m, &info);
    if (lk_py_shape(logits, "logits", 2, (npy_intp[]){xd[0], info.num_classes}) < 0) return NULL;
    lk_status st;
    self->busy = 1;
    LK_PY_CALL(st, lk_model_forward(self->m, lp, xp, (int)xd[0], (int)xd[2], (int)xd[3], train,
                                    (uint64_t)seed));
    self->busy = 0;
    if (st != LK_OK) return lk_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *model_backward(PyModel *self, PyObject *args) {
    PyObject *dx, *dlogits;
    if (!PyArg_ParseTuple(args, "OO:backward", &dx, &dlogits)) return NULL;
    if (!model_ready(self)) return NULL;
    lk_model_info info;
    lk_model_get_info(self->m, &info);
    if (!info.plan_train)
        return PyErr_Format(PyExc_RuntimeError, "backward needs a preceding forward in train mode");
    const float *dl = lk_py_array(dlogits, "dlogits", NPY_FLOAT32, 2, 0, 0, NULL);
    if (!dl) return NULL;
    if (lk_py_shape(dlogits, "dlogits", 2, (npy_intp[]){info.plan_n, info.num_classes}) < 0)
        return NULL;
    float *dxp = lk_py_array(dx, "dx", NPY_FLOAT32, 4, 1, 1, NULL);
    if (PyErr_Occurred()) return NULL;
    if (dxp && lk_py_shape(dx, "dx", 4, (npy_intp[]){info.plan_n, 3, info.plan_h, info.plan_w}) < 0)
        return NULL;
    lk_status st;
    self->busy = 1;
    LK_PY_CALL(st, lk_model_backward(self->m, dxp, dl));
    self->busy = 0;
    if (st != LK_OK) return lk_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *model_info(PyModel *self, PyObject *noargs) {
    if (!self->m) return PyErr_Format(PyExc_RuntimeError, "Model is not initialised");
    lk_model_info i;
    lk_model_get_info(self->m, &i);
    return Py_BuildValue("{s:s,s:i,s:i,s:i,s:d,s:d,s:d,s:d,s:(iiii),s:L,s:L,s:L}", "arch", i.arch,
                         "num_classes", i.num_classes, "default_size", i.default_size, "nblocks",
                         i.nblocks, "dropout", (double)i.dropout, "bn_eps", (double)i.bn_eps,
                         "bn_momentum", (double)i.bn_momentum, "stochastic_depth_prob", (double)i.sd_prob, "plan", i.plan_n, i.plan_h,
                         i.plan_w, i.plan_train, "plan_bytes", (long long)i.plan_bytes,
                         "plans_made", (long long)i.plans_made, "num_params",
                         (long long)lk_model_num_params(self->m));
}

static PyObject *model_set_reg(PyModel *self, PyObject *args) {
    float dropout, sd;
    if (!PyArg_ParseTuple(args, "ff:set_regularization", &dropout, &sd)) return NULL;
    if (!model_ready(self)) return NULL;
    lk_status st = lk_model_set_regularization(self->m, dropout, sd);
    if (st != LK_OK) return lk_py_raise(st);
    Py_RETURN_NONE;
}

static PyMethodDef model_methods[] = {
    {"set_regularization", (PyCFunction)model_set_reg, METH_VARARGS,
     "set_regularization(dropout, stochastic_depth_prob)."},
    {"tensors", (PyCFunction)model_tensors, METH_NOARGS,
     "[(name, shape, is_parameter)] in torchvision state_dict order."},
    {"tensor", (PyCFunction)model_tensor, METH_O, "Zero-copy view of tensor i."},
    {"grad", (PyCFunction)model_grad, METH_O, "Zero-copy view of the gradient of tensor i (None for buffers)."},
    {"flat", (PyCFunction)model_flat, METH_O, "flat(grad: bool): 1-D view of all parameters or gradients."},
    {"forward", (PyCFunction)model_forward, METH_VARARGS, "forward(logits, x, train, seed)."},
    {"backward", (PyCFunction)model_backward, METH_VARARGS, "backward(dx or None, dlogits)."},
    {"info", (PyCFunction)model_info, METH_NOARGS, "Architecture and plan facts."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject PyModelType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "leukemia._core.Model",
    .tp_basicsize = sizeof(PyModel),
    .tp_dealloc = (destructor)model_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Model(arch, num_classes): an EfficientNet in the C core.",
    .tp_methods = model_methods,
    .tp_init = (initproc)model_init,
    .tp_new = PyType_GenericNew,
};

PyMethodDef lk_py_model_methods[] = {
    {NULL, NULL, 0, NULL},
};

int lk_py_model_register(PyObject *module) {
    if (PyType_Ready(&PyModelType) < 0) return -1;
    Py_INCREF(&PyModelType);
    if (PyModule_AddObject(module, "Model", (PyObject *)&PyModelType) < 0) {
        Py_DECREF(&PyModelType);
        return -1;
    }
    return 0;
}
