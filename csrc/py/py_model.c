/* leukemia._core.Model: the whole network as a Python object. Parameter,
 * gradient and buffer views are zero-copy NumPy arrays over the C arenas that
 * keep the model alive through their base object; parameter and buffer views are
 * read-only unless asked for (writers must bump the version).
 *
 * Threads. One lock per model serialises every call that reads or changes its state
 * (forward, backward, policy, bump_version, info) and the Python-level compound
 * operations that hold it through acquire()/release() (state_dict, load_state_dict,
 * an optimizer step, writable()). Waiters queue in arrival order (fair: a thread
 * looping forward cannot starve a state_dict() from another thread) and wait with
 * the GIL released, waking every 50 ms to let Ctrl-C through. A call made by the
 * thread that holds the model through acquire() runs at once (it is part of that
 * operation); a second acquire() by the same thread raises instead of deadlocking. */
#include "lk_py.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lk_model.h"

/* A thread waiting for the model (lives on the waiting call's C stack). */
typedef struct model_waiter {
    struct model_waiter *next;
} model_waiter;

typedef struct model_lock {
    pthread_mutex_t mu; /* guards every field below; never held while waiting for the GIL */
    pthread_cond_t cv;
    int held;           /* a thread owns the model */
    int explicit_;      /* ... through acquire() (a compound operation) */
    unsigned long owner;             /* PyThread_get_thread_ident() of the owner */
    char what[64];                   /* what the owner is doing, for messages */
    model_waiter *head, *tail;       /* FIFO of waiting threads */
    pid_t pid;                       /* process that initialised mu and cv */
    int poisoned;                    /* forked while another thread held the model */
} model_lock;

typedef struct {
    PyObject_HEAD
    lk_model *m;
    model_lock lock;
    int lock_ready;
} PyModel;

static int lock_init(model_lock *L) {
    pthread_condattr_t ca;
    if (pthread_condattr_init(&ca) != 0) return -1;
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int bad = pthread_mutex_init(&L->mu, NULL) != 0;
    if (!bad && pthread_cond_init(&L->cv, &ca) != 0) {
        pthread_mutex_destroy(&L->mu);
        bad = 1;
    }
    pthread_condattr_destroy(&ca);
    L->head = L->tail = NULL;
    L->pid = getpid();
    return bad ? -1 : 0;
}

/* After fork() the child has only the forking thread: waiters and an owner that was
 * another thread are gone, and mu / cv may have been copied mid-use. Called with the
 * GIL held, so no other thread of the child is inside the lock code. */
static void lock_after_fork(model_lock *L) {
    if (L->pid == getpid()) return;
    const unsigned long me = PyThread_get_thread_ident();
    if (L->held && L->owner != me) L->poisoned = 1;
    lock_init(L); /* no destroy: the copies may be in a state only their owners could undo */
}

static void lock_remove(model_lock *L, model_waiter *w) {
    model_waiter **pp = &L->head, *prev = NULL;
    while (*pp && *pp != w) prev = *pp, pp = &(*pp)->next;
    if (!*pp) return;
    *pp = w->next;
    if (L->tail == w) L->tail = prev;
}

static void lock_take(model_lock *L, unsigned long me, const char *what, int explicit_) {
    L->held = 1;
    L->explicit_ = explicit_;
    L->owner = me;
    snprintf(L->what, sizeof L->what, "%s", what);
}

/* Take the model for `what`. Returns 1 when taken (the caller must call model_leave),
 * 0 when the calling thread already holds it through acquire() and `explicit_` is 0
 * (a call inside that operation: nothing to release), -1 with an exception set. */
static int model_enter(PyModel *self, const char *what, int explicit_) {
    if (!self->lock_ready) {
        PyErr_SetString(PyExc_RuntimeError, "Model is not initialised");
        return -1;
    }
    model_lock *L = &self->lock;
    lock_after_fork(L);
    const unsigned long me = PyThread_get_thread_ident();
    pthread_mutex_lock(&L->mu);
    if (L->poisoned) {
        pthread_mutex_unlock(&L->mu);
        PyErr_Format(PyExc_RuntimeError,
                     "%s: this process was forked while another thread was using the model "
                     "(%s), so its state here is undefined; fork before starting threads "
                     "that use it, or start workers with the 'spawn' method", what, L->what);
        return -1;
    }
    if (L->held && L->owner == me) {
        const int inside = L->explicit_ && !explicit_;
        char holder[sizeof L->what];
        memcpy(holder, L->what, sizeof holder);
        pthread_mutex_unlock(&L->mu);
        if (inside) return 0;
        PyErr_Format(PyExc_RuntimeError,
                     "%s: this thread is already using the model (%s) and would wait for "
                     "itself; finish that first (e.g. leave the `with model.writable()` "
                     "block), and do not use the model from a callback or signal handler "
                     "that runs during another of its calls", what, holder);
        return -1;
    }
    model_waiter node = {NULL};
    if (!L->held && !L->head) {
        lock_take(L, me, what, explicit_);
        pthread_mutex_unlock(&L->mu);
        return 1;
    }
    if (L->tail) L->tail->next = &node;
    else L->head = &node;
    L->tail = &node;
    pthread_mutex_unlock(&L->mu);
    for (;;) {
        int granted;
        Py_BEGIN_ALLOW_THREADS
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_nsec += 50 * 1000 * 1000;
        if (until.tv_nsec >= 1000000000L) until.tv_sec++, until.tv_nsec -= 1000000000L;
        pthread_mutex_lock(&L->mu);
        while (!(L->head == &node && !L->held))
            if (pthread_cond_timedwait(&L->cv, &L->mu, &until) == ETIMEDOUT) break;
        granted = L->head == &node && !L->held;
        if (granted) { /* taken in the same critical section: nobody can slip in */
            lock_remove(L, &node);
            lock_take(L, me, what, explicit_);
        }
        pthread_mutex_unlock(&L->mu);
        Py_END_ALLOW_THREADS
        if (granted) return 1;
        if (PyErr_CheckSignals() < 0) { /* Ctrl-C: leave the queue, wake the next */
            pthread_mutex_lock(&L->mu);
            lock_remove(L, &node);
            pthread_cond_broadcast(&L->cv);
            pthread_mutex_unlock(&L->mu);
            return -1;
        }
    }
}

static void model_leave(PyModel *self) {
    model_lock *L = &self->lock;
    pthread_mutex_lock(&L->mu);
    L->held = 0;
    L->explicit_ = 0;
    L->owner = 0;
    L->what[0] = '\0';
    pthread_cond_broadcast(&L->cv);
    pthread_mutex_unlock(&L->mu);
}

static void model_dealloc(PyModel *self) {
    lk_model_free(self->m);
    if (self->lock_ready && self->lock.pid == getpid()) {
        pthread_cond_destroy(&self->lock.cv);
        pthread_mutex_destroy(&self->lock.mu);
    }
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
    if (!self->lock_ready) {
        if (lock_init(&self->lock) < 0) {
            PyErr_SetString(PyExc_RuntimeError, "Model: cannot create its lock");
            return -1;
        }
        self->lock_ready = 1;
    }
    lk_model_cfg cfg = {.arch = arch, .head = head, .num_classes = k, .dropout = dropout,
                        .sd_prob = sd, .policy = (lk_policy)policy};
    lk_status st;
    LK_PY_CALL(st, lk_model_create(&self->m, &cfg));
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
    return 1;
}

/* Run impl(self, args) holding the model (see model_enter). */
static PyObject *locked_call(PyModel *self, const char *what,
                             PyObject *(*impl)(PyModel *, PyObject *), PyObject *args) {
    if (!model_ready(self)) return NULL;
    const int taken = model_enter(self, what, 0);
    if (taken < 0) return NULL;
    PyObject *r = impl(self, args);
    if (taken) model_leave(self);
    return r;
}

#define LK_LOCKED(name, what)                                         \
    static PyObject *name(PyModel *self, PyObject *args) {            \
        return locked_call(self, what, name##_impl, args);            \
    }

static PyObject *model_acquire(PyModel *self, PyObject *arg) {
    if (!model_ready(self)) return NULL;
    const char *what = PyUnicode_AsUTF8(arg);
    if (!what) return NULL;
    if (model_enter(self, what, 1) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *model_release(PyModel *self, PyObject *noargs) {
    if (!model_ready(self)) return NULL;
    model_lock *L = &self->lock;
    pthread_mutex_lock(&L->mu);
    const int mine = L->held && L->explicit_ && L->owner == PyThread_get_thread_ident();
    pthread_mutex_unlock(&L->mu);
    if (!mine)
        return PyErr_Format(PyExc_RuntimeError,
                            "Model.release(): this thread does not hold the model");
    model_leave(self);
    Py_RETURN_NONE;
}

static PyObject *model_holder(PyModel *self, PyObject *noargs) {
    if (!model_ready(self)) return NULL;
    model_lock *L = &self->lock;
    char what[sizeof L->what];
    pthread_mutex_lock(&L->mu);
    const int held = L->held;
    memcpy(what, L->what, sizeof what);
    pthread_mutex_unlock(&L->mu);
    if (!held) Py_RETURN_NONE;
    return PyUnicode_FromString(what);
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

/* x as a batch of RGB images [N, 3, H, W] float32 (shape in xd), or NULL with an error. */
static const float *rgb_images(PyObject *x, npy_intp xd[4]) {
    const float *xp = lk_py_array(x, "x", NPY_FLOAT32, 4, 0, 0, xd);
    if (!xp) return NULL;
    if (xd[1] != 3) {
        PyErr_Format(PyExc_ValueError, "x must be [N, 3, H, W] RGB images, got %ld channels",
                     (long)xd[1]);
        return NULL;
    }
    if (xd[0] > 100000 || xd[2] > 100000 || xd[3] > 100000) {
        PyErr_Format(PyExc_ValueError, "x is too large");
        return NULL;
    }
    return xp;
}

/* The caller's logits output [n, num_classes] float32, or NULL with an error. */
static float *logits_out(PyObject *logits, npy_intp n, const lk_model_info *info) {
    float *lp = lk_py_array(logits, "logits", NPY_FLOAT32, 2, 1, 0, NULL);
    if (!lp) return NULL;
    if (lk_py_shape(logits, "logits", 2, (npy_intp[]){n, info->num_classes}) < 0) return NULL;
    return lp;
}

static PyObject *model_forward_impl(PyModel *self, PyObject *args) {
    PyObject *logits, *x, *features = Py_None;
    unsigned int flags;
    unsigned long long seed;
    if (!PyArg_ParseTuple(args, "OOIK|O:forward", &logits, &x, &flags, &seed, &features))
        return NULL;
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
    float *lp = logits_out(logits, xd[0], &info);
    if (!lp) return NULL;
    float *fp = lk_py_array(features, "features", NPY_FLOAT32, 4, 1, 1, NULL);
    if (PyErr_Occurred()) return NULL;
    if (fp) {
        int c, fh, fw;
        lk_status st = lk_model_features_shape(self->m, (int)xd[2], (int)xd[3], &c, &fh, &fw);
        if (st != LK_OK) return lk_py_raise(st);
        if (lk_py_shape(features, "features", 4, (npy_intp[]){xd[0], c, fh, fw}) < 0) return NULL;
    }
    lk_status st;
    LK_PY_CALL(st, lk_model_forward(self->m, lp, fp, xp, (int)xd[0], (int)xd[2], (int)xd[3], flags,
                                    (uint64_t)seed));
    if (st != LK_OK) return lk_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *model_frozen_features_impl(PyModel *self, PyObject *args) {
    PyObject *out, *x;
    if (!PyArg_ParseTuple(args, "OO:frozen_features", &out, &x)) return NULL;
    npy_intp xd[4];
    const float *xp = rgb_images(x, xd);
    if (!xp) return NULL;
    float *op = lk_py_array(out, "features", NPY_FLOAT32, 4, 1, 0, NULL);
    if (!op) return NULL;
    int c, fh, fw;
    lk_status st = lk_model_features_shape(self->m, (int)xd[2], (int)xd[3], &c, &fh, &fw);
    if (st != LK_OK) return lk_py_raise(st);
    if (lk_py_shape(out, "features", 4, (npy_intp[]){xd[0], c, fh, fw}) < 0) return NULL;
    LK_PY_CALL(st, lk_model_frozen_features(self->m, op, xp, (int)xd[0], (int)xd[2], (int)xd[3]));
    if (st != LK_OK) return lk_py_raise(st);
    Py_RETURN_NONE;
}
/* The core reads the input in place: a float32 array that is not C-contiguous and
 * aligned (a strided or reversed view, Fortran order, a buffer at an odd address) is
 * copied first, so that such inputs give the bits of their contiguous copy. */
static PyObject *with_carray_arg(PyModel *self, PyObject *args, Py_ssize_t pos,
                                 PyObject *(*impl)(PyModel *, PyObject *)) {
    PyObject *x = PyTuple_Check(args) && PyTuple_GET_SIZE(args) > pos ? PyTuple_GET_ITEM(args, pos)
                                                                      : NULL;
    if (!x || !PyArray_Check(x) || PyArray_TYPE((PyArrayObject *)x) != NPY_FLOAT32 ||
        PyArray_ISCARRAY_RO((PyArrayObject *)x))
        return impl(self, args);
    PyObject *copy = PyArray_NewCopy((PyArrayObject *)x, NPY_CORDER);
    if (!copy) return NULL;
    PyObject *args2 = PyTuple_New(PyTuple_GET_SIZE(args));
    if (!args2) {
        Py_DECREF(copy);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(args); i++) {
        PyObject *item = i == pos ? copy : PyTuple_GET_ITEM(args, i);
        if (i != pos) Py_INCREF(item);
        PyTuple_SET_ITEM(args2, i, item);
    }
    PyObject *r = impl(self, args2);
    Py_DECREF(args2);
    return r;
}

static PyObject *model_forward_carray(PyModel *self, PyObject *args) {
    return with_carray_arg(self, args, 1, model_forward_impl);
}
static PyObject *model_frozen_features_carray(PyModel *self, PyObject *args) {
    return with_carray_arg(self, args, 1, model_frozen_features_impl);
}

static PyObject *model_forward(PyModel *self, PyObject *args) {
    return locked_call(self, "forward", model_forward_carray, args);
}
static PyObject *model_frozen_features(PyModel *self, PyObject *args) {
    return locked_call(self, "frozen_features", model_frozen_features_carray, args);
}

static PyObject *model_features_shape_impl(PyModel *self, PyObject *args) {
    int h, w, c, fh, fw;
    if (!PyArg_ParseTuple(args, "ii:features_shape", &h, &w)) return NULL;
    lk_status st = lk_model_features_shape(self->m, h, w, &c, &fh, &fw);
    if (st != LK_OK) return lk_py_raise(st);
    return Py_BuildValue("(iii)", c, fh, fw);
}
LK_LOCKED(model_features_shape, "features_shape")

static PyObject *model_backward_impl(PyModel *self, PyObject *args) {
    PyObject *dx, *dlogits;
    int accumulate = 0;
    if (!PyArg_ParseTuple(args, "OO|p:backward", &dx, &dlogits, &accumulate)) return NULL;
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
    LK_PY_CALL(st, lk_model_backward(self->m, dxp, dl, accumulate));
    if (st != LK_OK) return lk_py_raise(st);
    Py_RETURN_NONE;
}
LK_LOCKED(model_backward, "backward")

/* ------------------------------------------------------------ explanations */

static PyObject *model_head_input_shape_impl(PyModel *self, PyObject *args) {
    int h, w, c, fh, fw;
    if (!PyArg_ParseTuple(args, "ii:head_input_shape", &h, &w)) return NULL;
    lk_status st = lk_model_head_input_shape(self->m, h, w, &c, &fh, &fw);
    if (st != LK_OK) return lk_py_raise(st);
    return Py_BuildValue("(iii)", c, fh, fw);
}
LK_LOCKED(model_head_input_shape, "head_input_shape")

static PyObject *model_explain_forward_impl(PyModel *self, PyObject *args) {
    PyObject *logits, *feat, *x;
    if (!PyArg_ParseTuple(args, "OOO:explain_forward", &logits, &feat, &x)) return NULL;
    npy_intp xd[4];
    const float *xp = rgb_images(x, xd);
    if (!xp) return NULL;
    lk_model_info info;
    lk_model_get_info(self->m, &info);
    float *lp = logits_out(logits, xd[0], &info);
    if (!lp) return NULL;
    float *fp = lk_py_array(feat, "feat", NPY_FLOAT32, 4, 1, 1, NULL);
    if (PyErr_Occurred()) return NULL;
    if (fp) {
        int c, fh, fw;
        lk_status st = lk_model_head_input_shape(self->m, (int)xd[2], (int)xd[3], &c, &fh, &fw);
        if (st != LK_OK) return lk_py_raise(st);
        if (lk_py_shape(feat, "feat", 4, (npy_intp[]){xd[0], fh, fw, c}) < 0) return NULL;
    }
    lk_status st;
    LK_PY_CALL(st, lk_model_explain_forward(self->m, lp, fp, xp, (int)xd[0], (int)xd[2],
                                            (int)xd[3]));
    if (st != LK_OK) return lk_py_raise(st);
    Py_RETURN_NONE;
}
static PyObject *model_explain_forward_carray(PyModel *self, PyObject *args) {
    return with_carray_arg(self, args, 2, model_explain_forward_impl);
}
static PyObject *model_explain_forward(PyModel *self, PyObject *args) {
    return locked_call(self, "explain_forward", model_explain_forward_carray, args);
}

static PyObject *model_explain_backward_impl(PyModel *self, PyObject *args) {
    PyObject *dfeat, *dlogits;
    if (!PyArg_ParseTuple(args, "OO:explain_backward", &dfeat, &dlogits)) return NULL;
    lk_model_info info;
    lk_model_get_info(self->m, &info);
    if (!info.planned)
        return PyErr_Format(PyExc_RuntimeError, "explain_backward needs explain_forward first");
    const float *dl = lk_py_array(dlogits, "dlogits", NPY_FLOAT32, 2, 0, 0, NULL);
    if (!dl) return NULL;
    if (lk_py_shape(dlogits, "dlogits", 2, (npy_intp[]){info.plan_n, info.num_classes}) < 0)
        return NULL;
    float *dp = lk_py_array(dfeat, "dfeat", NPY_FLOAT32, 4, 1, 0, NULL);
    if (!dp) return NULL;
    int c, fh, fw;
    lk_status st = lk_model_head_input_shape(self->m, info.plan_h, info.plan_w, &c, &fh, &fw);
    if (st != LK_OK) return lk_py_raise(st);
    if (lk_py_shape(dfeat, "dfeat", 4, (npy_intp[]){info.plan_n, fh, fw, c}) < 0) return NULL;
    LK_PY_CALL(st, lk_model_explain_backward(self->m, dp, dl));
    if (st != LK_OK) return lk_py_raise(st);
    Py_RETURN_NONE;
}
LK_LOCKED(model_explain_backward, "explain_backward")

static PyObject *model_head_maps_impl(PyModel *self, PyObject *args) {
    PyObject *o[4];
    static const char *names[4] = {"att", "s1", "s2", "attw"};
    if (!PyArg_ParseTuple(args, "OOOO:head_maps", &o[0], &o[1], &o[2], &o[3])) return NULL;
    lk_model_info info;
    lk_model_get_info(self->m, &info);
    if (!info.planned)
        return PyErr_Format(PyExc_RuntimeError, "head_maps needs a preceding forward");
    int c, fh, fw;
    lk_status st = lk_model_head_input_shape(self->m, info.plan_h, info.plan_w, &c, &fh, &fw);
    if (info.plan_flags & LK_FWD_FROM_FEATURES)
        return PyErr_Format(PyExc_RuntimeError, "head_maps needs a forward from images");
    if (st != LK_OK) return lk_py_raise(st);
    float *p[4];
    for (int i = 0; i < 4; i++) {
        p[i] = lk_py_array(o[i], names[i], NPY_FLOAT32, i ? 3 : 2, 1, 1, NULL);
        if (PyErr_Occurred()) return NULL;
        if (!p[i]) continue;
        int bad = i ? lk_py_shape(o[i], names[i], 3, (npy_intp[]){info.plan_n, fh, fw})
                    : lk_py_shape(o[i], names[i], 2, (npy_intp[]){info.plan_n, c});
        if (bad < 0) return NULL;
    }
    LK_PY_CALL(st, lk_model_head_maps(self->m, p[0], p[1], p[2], p[3]));
    if (st != LK_OK) return lk_py_raise(st);
    Py_RETURN_NONE;
}
LK_LOCKED(model_head_maps, "head_maps")

static const char *policy_name(lk_policy p) {
    switch (p) {
    case LK_POLICY_ALL: return "all";
    case LK_POLICY_LAST_BLOCK: return "last_block";
    case LK_POLICY_HEAD: return "head";
    case LK_POLICY_CUSTOM: return "custom";
    default: return "default";
    }
}

static PyObject *model_info_impl(PyModel *self, PyObject *noargs) {
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
LK_LOCKED(model_info, "info")

static PyObject *model_set_reg_impl(PyModel *self, PyObject *args) {
    float dropout, sd;
    if (!PyArg_ParseTuple(args, "ff:set_regularization", &dropout, &sd)) return NULL;
    lk_status st = lk_model_set_regularization(self->m, dropout, sd);
    if (st != LK_OK) return lk_py_raise(st);
    Py_RETURN_NONE;
}
LK_LOCKED(model_set_reg, "set_regularization")

static PyObject *model_set_policy_impl(PyModel *self, PyObject *arg) {
    long p = PyLong_AsLong(arg);
    if (p == -1 && PyErr_Occurred()) return NULL;
    lk_status st = lk_model_set_policy(self->m, (lk_policy)p);
    if (st != LK_OK) return lk_py_raise(st);
    Py_RETURN_NONE;
}
LK_LOCKED(model_set_policy, "set_policy")

static PyObject *model_set_trainable_impl(PyModel *self, PyObject *arg) {
    const uint8_t *f = lk_py_array(arg, "flags", NPY_UINT8, 1, 0, 0, NULL);
    if (!f) return NULL;
    if (lk_py_shape(arg, "flags", 1, (npy_intp[]){lk_model_num_tensors(self->m)}) < 0) return NULL;
    lk_status st = lk_model_set_trainable(self->m, f);
    if (st != LK_OK) return lk_py_raise(st);
    Py_RETURN_NONE;
}
LK_LOCKED(model_set_trainable, "set_trainable")

static PyObject *model_trainable_impl(PyModel *self, PyObject *noargs) {
    int n = lk_model_num_tensors(self->m);
    PyObject *list = PyList_New(n);
    if (!list) return NULL;
    for (int i = 0; i < n; i++)
        PyList_SET_ITEM(list, i, PyBool_FromLong(lk_model_tensor_trainable(self->m, i)));
    return list;
}
LK_LOCKED(model_trainable, "trainable")

static PyObject *model_bump_version_impl(PyModel *self, PyObject *arg) {
    int frozen_too = PyObject_IsTrue(arg);
    if (frozen_too < 0) return NULL;
    lk_model_bump_version(self->m, frozen_too);
    Py_RETURN_NONE;
}
LK_LOCKED(model_bump_version, "bump_version")

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
    {"head_input_shape", (PyCFunction)model_head_input_shape, METH_VARARGS,
     "head_input_shape(h, w) -> (C, FH, FW) of the head's input F."},
    {"explain_forward", (PyCFunction)model_explain_forward, METH_VARARGS,
     "explain_forward(logits, feat NHWC or None, x): eval-semantics forward keeping F."},
    {"explain_backward", (PyCFunction)model_explain_backward, METH_VARARGS,
     "explain_backward(dfeat NHWC, dlogits): d(sum dlogits*logits)/dF in eval semantics."},
    {"head_maps", (PyCFunction)model_head_maps, METH_VARARGS,
     "head_maps(att, s1, s2, attw), each None or an output: the head's attention maps."},
    {"info", (PyCFunction)model_info, METH_NOARGS, "Architecture and plan facts."},
    {"version", (PyCFunction)model_version, METH_NOARGS, "Parameter version."},
    {"bump_version", (PyCFunction)model_bump_version, METH_O,
     "bump_version(frozen_too): parameters changed outside the core."},
    {"acquire", (PyCFunction)model_acquire, METH_O,
     "acquire(what): hold the model for a compound operation named `what` (waits in turn, "
     "with the GIL released; raises if this thread already holds it)."},
    {"release", (PyCFunction)model_release, METH_NOARGS, "Release what acquire() took."},
    {"holder", (PyCFunction)model_holder, METH_NOARGS,
     "What the thread holding the model is doing, or None if nobody holds it."},
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
