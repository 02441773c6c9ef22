/* leukemia._core.Model: the whole network as a Python object. Parameter,
 * gradient and buffer views are zero-copy NumPy arrays over the C arenas that
 * keep the model alive through their base object; parameter and buffer views are
 * read-only unless asked for (writers must bump the version). */
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
    static char *names[] = {"arch", "num_classes", "head", "dropout", "stochastic_depth_prob",
                            "policy", NULL};
    const char *arch, *head = "linear";
    int k, policy = 0;
    float dropout = -1.f, sd = -1.f;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "si|sffi:Model", names, &arch, &k, &head, &dropout,
                                     &sd, &policy))
        return -1;
    if (self->m) {
        PyErr_SetString(PyExc_RuntimeError, "Model is already initialised");
        return -1;
    }
    lk_model_cfg cfg = {.arch = arch, .head = head, .num_classes = k, .dropout = dropout,
                        .sd_prob = sd, .policy = (lk_policy)policy};
    lk_status st = lk_model_create(&self->m, &cfg);
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

static PyObject *view(PyModel *self, float *data, const lk_tensor_desc *t, int flat, int64_t n,
                      int writable) {
    npy_intp dims[4];
    int nd = flat ? 1 : t->ndim;
    if (flat)
        dims[0] = (npy_intp)n;
    else
        for (int i = 0; i < t->ndim; i++) dims[i] = (npy_intp)t->shape[i];
    PyObject *a = PyArray_New(&PyArray_Type, nd, dims, NPY_FLOAT32, NULL, data, 0,
                              NPY_ARRAY_CARRAY, NULL);
    if (!a) return NULL;
    if (!writable) PyArray_CLEARFLAGS((PyArrayObject *)a, NPY_ARRAY_WRITEABLE);
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
        PyObject *item = Py_BuildValue("(sNOLi)", t->name, shape,
                                       t->kind == LK_TENSOR_PARAM ? Py_True : Py_False,
                                       (long long)t->offset, t->unit);
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

static PyObject *model_tensor(PyModel *self, PyObject *args) {
    PyObject *idx;
    int writable = 0;
    if (!PyArg_ParseTuple(args, "O|p:tensor", &idx, &writable)) return NULL;
    if (!model_ready(self)) return NULL;
    int i = tensor_index(self, idx);
    if (i < 0) return NULL;
    return view(self, lk_model_tensor_data(self->m, i), lk_model_tensor(self->m, i), 0, 0,
                writable);
}

static PyObject *model_grad(PyModel *self, PyObject *arg) {
    if (!model_ready(self)) return NULL;
    int i = tensor_index(self, arg);
    if (i < 0) return NULL;
    float *g = lk_model_tensor_grad(self->m, i);
    if (!g) Py_RETURN_NONE;
    return view(self, g, lk_model_tensor(self->m, i), 0, 0, 1);
}

static PyObject *model_flat(PyModel *self, PyObject *args) {
    int want_grad, writable = 0;
    if (!PyArg_ParseTuple(args, "p|p:flat", &want_grad, &writable)) return NULL;
    if (!model_ready(self)) return NULL;
    int64_t n;
    float *p = want_grad ? lk_model_grads(self->m, &n) : lk_model_params(self->m, &n);
    return view(self, p, NULL, 1, n, want_grad || writable);
}

static PyObject *model_forward(PyModel *self, PyObject *args) {
    PyObject *logits, *x, *features = Py_None;
    unsigned int flags;
    unsigned long long seed;
    if (!PyArg_ParseTuple(args, "OOIK|O:forward", &logits, &x, &flags, &seed, &features))
        return NULL;
    if (!model_ready(self)) return NULL;
    npy_intp xd[4];
    const float *xp = lk_py_array(x, "x", NPY_FLOAT32, 4, 0, 0, xd);
    if (!xp) return NULL;
    if (xd[0] > 100000 || xd[1] > 100000 || xd[2] > 100000 || xd[3] > 100000)
        return PyErr_Format(PyExc_ValueError, "x is too large");
    lk_model_info info;
    lk_model_get_info(self->m, &info);
    if (flags & LK_FWD_FROM_FEATURES) {
        if (xd[1] != info.feature_channels)
            return PyErr_Format(PyExc_ValueError,
                                "features must have %d channels (the frozen prefix's output), "
                                "got %ld", info.feature_channels, (long)xd[1]);
    } else if (xd[1] != 3) {
        return PyErr_Format(PyExc_ValueError, "x must be [N, 3, H, W] RGB images, got %ld channels",
                            (long)xd[1]);
    }
    float *lp = lk_py_array(logits, "logits", NPY_FLOAT32, 2, 1, 0, NULL);
    if (!lp) return NULL;
    if (lk_py_shape(logits, "logits", 2, (npy_intp[]){xd[0], info.num_classes}) < 0) return NULL;
    float *fp = lk_py_array(features, "features", NPY_FLOAT32, 4, 1, 1, NULL);
    if (PyErr_Occurred()) return NULL;
    if (fp) {
        int c, fh, fw;
        lk_status st = lk_model_features_shape(self->m, (int)xd[2], (int)xd[3], &c, &fh, &fw);
        if (st != LK_OK) return lk_py_raise(st);
        if (lk_py_shape(features, "features", 4, (npy_intp[]){xd[0], c, fh, fw}) < 0) return NULL;
    }
    lk_status st;
    self->busy = 1;
    LK_PY_CALL(st, lk_model_forward(self->m, lp, fp, xp, (int)xd[0], (int)xd[2], (int)xd[3], flags,
                                    (uint64_t)seed));
    self->busy = 0;
    if (st != LK_OK) return lk_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *model_frozen_features(PyModel *self, PyObject *args) {
    PyObject *out, *x;
    if (!PyArg_ParseTuple(args, "OO:frozen_features", &out, &x)) return NULL;
    if (!model_ready(self)) return NULL;
    npy_intp xd[4];
    const float *xp = lk_py_array(x, "x", NPY_FLOAT32, 4, 0, 0, xd);
    if (!xp) return NULL;
    if (xd[1] != 3)
        return PyErr_Format(PyExc_ValueError, "x must be [N, 3, H, W] RGB images, got %ld channels",
                            (long)xd[1]);
    if (xd[0] > 100000 || xd[2] > 100000 || xd[3] > 100000)
        return PyErr_Format(PyExc_ValueError, "x is too large");
    float *op = lk_py_array(out, "features", NPY_FLOAT32, 4, 1, 0, NULL);
    if (!op) return NULL;
    int c, fh, fw;
    lk_status st = lk_model_features_shape(self->m, (int)xd[2], (int)xd[3], &c, &fh, &fw);
    if (st != LK_OK) return lk_py_raise(st);
    if (lk_py_shape(out, "features", 4, (npy_intp[]){xd[0], c, fh, fw}) < 0) return NULL;
    self->busy = 1;
    LK_PY_CALL(st, lk_model_frozen_features(self->m, op, xp, (int)xd[0], (int)xd[2], (int)xd[3]));
    self->busy = 0;
    if (st != LK_OK) return lk_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *model_features_shape(PyModel *self, PyObject *args) {
    int h, w, c, fh, fw;
    if (!PyArg_ParseTuple(args, "ii:features_shape", &h, &w)) return NULL;
    if (!model_ready(self)) return NULL;
    lk_status st = lk_model_features_shape(self->m, h, w, &c, &fh, &fw);
    if (st != LK_OK) return lk_py_raise(st);
    return Py_BuildValue("(iii)", c, fh, fw);
}

static PyObject *model_backward(PyModel *self, PyObject *args) {
    PyObject *dx, *dlogits;
    int accumulate = 0;
    if (!PyArg_ParseTuple(args, "OO|p:backward", &dx, &dlogits, &accumulate)) return NULL;
    if (!model_ready(self)) return NULL;
    lk_model_info info;
    lk_model_get_info(self->m, &info);
    if (!info.planned || !(info.plan_flags & LK_FWD_TRAIN))
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
    LK_PY_CALL(st, lk_model_backward(self->m, dxp, dl, accumulate));
    self->busy = 0;
    if (st != LK_OK) return lk_py_raise(st);
    Py_RETURN_NONE;
}

static const char *policy_name(lk_policy p) {
    switch (p) {
    case LK_POLICY_ALL: return "all";
    case LK_POLICY_LAST_BLOCK: return "last_block";
    case LK_POLICY_HEAD: return "head";
    case LK_POLICY_CUSTOM: return "custom";
    default: return "default";
    }
}

static PyObject *model_info(PyModel *self, PyObject *noargs) {
    if (!self->m) return PyErr_Format(PyExc_RuntimeError, "Model is not initialised");
    lk_model_info i;
    lk_model_get_info(self->m, &i);
    return Py_BuildValue(
        "{s:s,s:s,s:i,s:i,s:i,s:d,s:d,s:d,s:d,s:s,s:i,s:i,s:(iiii),s:L,s:L,s:L,s:L,s:K}", "arch",
        i.arch, "head", i.head, "num_classes", i.num_classes, "default_size", i.default_size,
        "nblocks", i.nblocks, "dropout", (double)i.dropout, "bn_eps", (double)i.bn_eps,
        "bn_momentum", (double)i.bn_momentum, "stochastic_depth_prob", (double)i.sd_prob,
        "policy", policy_name(i.policy), "prefix_pieces", i.prefix_pieces, "feature_channels",
        i.feature_channels, "plan", i.plan_n, i.plan_h, i.plan_w, i.plan_flags, "plan_bytes",
        (long long)i.plan_bytes, "plans_made", (long long)i.plans_made, "num_params",
        (long long)lk_model_num_params(self->m), "trainable_params",
        (long long)i.trainable_params, "version",
        (unsigned long long)lk_model_version(self->m));
}

static PyObject *model_set_reg(PyModel *self, PyObject *args) {
    float dropout, sd;
    if (!PyArg_ParseTuple(args, "ff:set_regularization", &dropout, &sd)) return NULL;
    if (!model_ready(self)) return NULL;
    lk_status st = lk_model_set_regularization(self->m, dropout, sd);
    if (st != LK_OK) return lk_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *model_set_policy(PyModel *self, PyObject *arg) {
    long p = PyLong_AsLong(arg);
    if (p == -1 && PyErr_Occurred()) return NULL;
    if (!model_ready(self)) return NULL;
    lk_status st = lk_model_set_policy(self->m, (lk_policy)p);
    if (st != LK_OK) return lk_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *model_set_trainable(PyModel *self, PyObject *arg) {
    if (!model_ready(self)) return NULL;
    const uint8_t *f = lk_py_array(arg, "flags", NPY_UINT8, 1, 0, 0, NULL);
    if (!f) return NULL;
    if (lk_py_shape(arg, "flags", 1, (npy_intp[]){lk_model_num_tensors(self->m)}) < 0) return NULL;
    lk_status st = lk_model_set_trainable(self->m, f);
    if (st != LK_OK) return lk_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *model_trainable(PyModel *self, PyObject *noargs) {
    if (!model_ready(self)) return NULL;
    int n = lk_model_num_tensors(self->m);
    PyObject *list = PyList_New(n);
    if (!list) return NULL;
    for (int i = 0; i < n; i++)
        PyList_SET_ITEM(list, i, PyBool_FromLong(lk_model_tensor_trainable(self->m, i)));
    return list;
}

static PyObject *model_bump_version(PyModel *self, PyObject *arg) {
    int frozen_too = PyObject_IsTrue(arg);
    if (frozen_too < 0) return NULL;
    if (!model_ready(self)) return NULL;
    lk_model_bump_version(self->m, frozen_too);
    Py_RETURN_NONE;
}

static PyObject *model_version(PyModel *self, PyObject *noargs) {
    if (!self->m) return PyErr_Format(PyExc_RuntimeError, "Model is not initialised");
    return PyLong_FromUnsignedLongLong(lk_model_version(self->m));
}

static PyMethodDef model_methods[] = {
    {"set_regularization", (PyCFunction)model_set_reg, METH_VARARGS,
     "set_regularization(dropout, stochastic_depth_prob)."},
    {"set_policy", (PyCFunction)model_set_policy, METH_O,
     "set_policy(code): 0 default, 1 all, 2 last_block, 3 head."},
    {"set_trainable", (PyCFunction)model_set_trainable, METH_O,
     "set_trainable(uint8 flags per tensor)."},
    {"trainable", (PyCFunction)model_trainable, METH_NOARGS, "Trainable flag of every tensor."},
    {"tensors", (PyCFunction)model_tensors, METH_NOARGS,
     "[(name, shape, is_parameter, offset, unit)] in state_dict order."},
    {"tensor", (PyCFunction)model_tensor, METH_VARARGS,
     "tensor(i, writable=False): zero-copy view of tensor i."},
    {"grad", (PyCFunction)model_grad, METH_O, "Zero-copy view of the gradient of tensor i (None for buffers)."},
    {"flat", (PyCFunction)model_flat, METH_VARARGS,
     "flat(grad, writable=False): 1-D view of all parameters or gradients."},
    {"forward", (PyCFunction)model_forward, METH_VARARGS,
     "forward(logits, x, flags, seed, features=None)."},
    {"frozen_features", (PyCFunction)model_frozen_features, METH_VARARGS,
     "frozen_features(out, x): the frozen prefix's output."},
    {"features_shape", (PyCFunction)model_features_shape, METH_VARARGS,
     "features_shape(h, w) -> (C, FH, FW) of the frozen prefix's output."},
    {"backward", (PyCFunction)model_backward, METH_VARARGS,
     "backward(dx or None, dlogits, accumulate=False)."},
    {"info", (PyCFunction)model_info, METH_NOARGS, "Architecture and plan facts."},
    {"version", (PyCFunction)model_version, METH_NOARGS, "Parameter version."},
    {"bump_version", (PyCFunction)model_bump_version, METH_O,
     "bump_version(frozen_too): parameters changed outside the core."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject PyModelType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "leukemia._core.Model",
    .tp_basicsize = sizeof(PyModel),
    .tp_dealloc = (destructor)model_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Model(arch, num_classes, head='linear', dropout=-1, stochastic_depth_prob=-1, "
              "policy=0): an EfficientNet in the C core.",
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
