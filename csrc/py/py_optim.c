/* Python access to the optimizer step and gradient clipping (csrc/model/lk_optim.h).
 *
 * The tables arrive as NumPy arrays (built by leukemia.optim):
 *   segments int64 [nseg, 5]: param_offset, count, state_offset, group, no_decay
 *   groups float64 [ngroup, 8]: lr, weight_decay, momentum, dampening, nesterov,
 *                               beta1, beta2, eps
 *   steps    int64 [ngroup]:    step counters, advanced in place on success
 * They are converted to the core's structs before the GIL is released. A non-finite
 * gradient raises FloatingPointError(message, segment, element).
 */
#include "lk_py.h"

#include "lk_optim.h"

enum { SEG_COLS = 5, GROUP_COLS = 8 };

/* segments [nseg, 5] int64 -> a PyMem array of lk_optim_segment (NULL on error). */
static lk_optim_segment *segments_from(PyObject *obj, int *nseg) {
    npy_intp d[2];
    const int64_t *t = lk_py_array(obj, "segments", NPY_INT64, 2, 0, 0, d);
    if (!t) return NULL;
    if (d[1] != SEG_COLS) {
        PyErr_Format(PyExc_ValueError,
                     "segments must have %d columns (param_offset, count, state_offset, group, "
                     "no_decay), got %ld",
                     SEG_COLS, (long)d[1]);
        return NULL;
    }
    if (d[0] > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "too many segments (%ld)", (long)d[0]);
        return NULL;
    }
    lk_optim_segment *segs = PyMem_Malloc(((size_t)d[0] + 1) * sizeof *segs);
    if (!segs) {
        PyErr_NoMemory();
        return NULL;
    }
    for (npy_intp s = 0; s < d[0]; s++) {
        const int64_t *r = t + s * SEG_COLS;
        if (r[3] < INT32_MIN || r[3] > INT32_MAX || (r[4] != 0 && r[4] != 1)) {
            PyErr_Format(PyExc_ValueError,
                         "segments[%ld]: group %lld out of range or no_decay %lld not 0/1",
                         (long)s, (long long)r[3], (long long)r[4]);
            PyMem_Free(segs);
            return NULL;
        }
        segs[s] = (lk_optim_segment){.param_offset = r[0], .count = r[1], .state_offset = r[2],
                                     .group = (int32_t)r[3], .no_decay = (int32_t)r[4]};
    }
    *nseg = (int)d[0];
    return segs;
}

/* groups [ngroup, 8] float64 + steps [ngroup] int64 -> a PyMem array of lk_optim_group. */
static lk_optim_group *groups_from(PyObject *obj, PyObject *steps_obj, int *ngroup,
                                   int64_t **steps) {
    npy_intp d[2], sd[1];
    const double *t = lk_py_array(obj, "groups", NPY_FLOAT64, 2, 0, 0, d);
    if (!t) return NULL;
    if (d[1] != GROUP_COLS) {
        PyErr_Format(PyExc_ValueError,
                     "groups must have %d columns (lr, weight_decay, momentum, dampening, "
                     "nesterov, beta1, beta2, eps), got %ld",
                     GROUP_COLS, (long)d[1]);
        return NULL;
    }
    if (d[0] > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "too many groups (%ld)", (long)d[0]);
        return NULL;
    }
    if (!(*steps = lk_py_array(steps_obj, "steps", NPY_INT64, 1, 1, 0, sd))) return NULL;
    if (lk_py_shape(steps_obj, "steps", 1, (npy_intp[]){d[0]}) < 0) return NULL;
    lk_optim_group *groups = PyMem_Malloc(((size_t)d[0] + 1) * sizeof *groups);
    if (!groups) {
        PyErr_NoMemory();
        return NULL;
    }
    for (npy_intp g = 0; g < d[0]; g++) {
        const double *r = t + g * GROUP_COLS;
        if (r[4] != 0.0 && r[4] != 1.0) {
            PyErr_Format(PyExc_ValueError, "groups[%ld]: nesterov must be 0 or 1, got %g",
                         (long)g, r[4]);
            PyMem_Free(groups);
            return NULL;
        }
        groups[g] = (lk_optim_group){.lr = r[0], .weight_decay = r[1], .momentum = r[2],
                                     .dampening = r[3], .nesterov = r[4] != 0.0, .beta1 = r[5],
                                     .beta2 = r[6], .eps = r[7], .step = (*steps)[g]};
    }
    *ngroup = (int)d[0];
    return groups;
}

/* Raise for a failed core call; LK_ERR_NUMERIC carries where the bad gradient is. */
static PyObject *optim_raise(lk_status st, const lk_optim_report *rep) {
    if (st != LK_ERR_NUMERIC || rep->bad_segment < 0) return lk_py_raise(st);
    PyObject *args = Py_BuildValue("(siL)", lk_last_error(), rep->bad_segment,
                                   (long long)rep->bad_element);
    if (args) {
        PyErr_SetObject(PyExc_FloatingPointError, args);
        Py_DECREF(args);
    }
    return NULL;
}

static int parse_kind(const char *name, lk_optim_kind *kind) {
    if (!strcmp(name, "sgd")) *kind = LK_OPTIM_SGD;
    else if (!strcmp(name, "adam")) *kind = LK_OPTIM_ADAM;
    else if (!strcmp(name, "adamw")) *kind = LK_OPTIM_ADAMW;
    else {
        PyErr_Format(PyExc_ValueError, "kind must be 'sgd', 'adam' or 'adamw', got '%s'", name);
        return -1;
    }
    return 0;
}

static PyObject *py_optim_step(PyObject *self, PyObject *args) {
    const char *kind_name;
    PyObject *params, *grads, *state1, *state2, *segs_obj, *groups_obj, *steps_obj;
    double max_grad_norm;
    if (!PyArg_ParseTuple(args, "sOOOOOOOd:optim_step", &kind_name, &params, &grads, &state1,
                          &state2, &segs_obj, &groups_obj, &steps_obj, &max_grad_norm))
        return NULL;
    lk_optim opt = {.max_grad_norm = max_grad_norm};
    if (parse_kind(kind_name, &opt.kind) < 0) return NULL;
    npy_intp pd[1], gd[1], s1d[1] = {0}, s2d[1] = {0};
    float *pp = lk_py_array(params, "params", NPY_FLOAT32, 1, 1, 0, pd);
    if (!pp) return NULL;
    float *gp = lk_py_array(grads, "grads", NPY_FLOAT32, 1, 1, 0, gd);
    if (!gp) return NULL;
    if (gd[0] != pd[0]) {
        PyErr_Format(PyExc_ValueError, "grads has %ld elements but params has %ld", (long)gd[0],
                     (long)pd[0]);
        return NULL;
    }
    float *s1p = lk_py_array(state1, "state1", NPY_FLOAT32, 1, 1, 1, s1d);
    if (PyErr_Occurred()) return NULL;
    float *s2p = lk_py_array(state2, "state2", NPY_FLOAT32, 1, 1, 1, s2d);
    if (PyErr_Occurred()) return NULL;
    if (s1p && s2p && s1d[0] != s2d[0]) {
        PyErr_Format(PyExc_ValueError, "state1 has %ld elements but state2 has %ld",
                     (long)s1d[0], (long)s2d[0]);
        return NULL;
    }
    opt.num_params = pd[0];
    opt.num_state = s1p ? s1d[0] : s2d[0];
    int64_t *steps = NULL;
    lk_optim_segment *segs = segments_from(segs_obj, &opt.num_segments);
    if (!segs) return NULL;
    lk_optim_group *groups = groups_from(groups_obj, steps_obj, &opt.num_groups, &steps);
    if (!groups) {
        PyMem_Free(segs);
        return NULL;
    }
    opt.segments = segs;
    opt.groups = groups;
    lk_optim_report rep;
    lk_status st;
    LK_PY_CALL(st, lk_optim_step(&opt, pp, gp, s1p, s2p, &rep));
    if (st == LK_OK)
        for (int g = 0; g < opt.num_groups; g++) steps[g] = groups[g].step;
    PyMem_Free(segs);
    PyMem_Free(groups);
    if (st != LK_OK) return optim_raise(st, &rep);
    return PyFloat_FromDouble(rep.grad_norm);
}

static PyObject *py_optim_clip_grad_norm(PyObject *self, PyObject *args) {
    PyObject *grads, *segs_obj;
    double max_norm;
    if (!PyArg_ParseTuple(args, "OOd:optim_clip_grad_norm", &grads, &segs_obj, &max_norm))
        return NULL;
    npy_intp gd[1];
    float *gp = lk_py_array(grads, "grads", NPY_FLOAT32, 1, 1, 0, gd);
    if (!gp) return NULL;
    int nseg = 0;
    lk_optim_segment *segs = segments_from(segs_obj, &nseg);
    if (!segs) return NULL;
    lk_optim_report rep;
    lk_status st;
    LK_PY_CALL(st, lk_optim_clip_grad_norm(gp, gd[0], segs, nseg, max_norm, &rep));
    PyMem_Free(segs);
    if (st != LK_OK) return optim_raise(st, &rep);
    return PyFloat_FromDouble(rep.grad_norm);
}

PyMethodDef lk_py_optim_methods[] = {
    {"optim_step", py_optim_step, METH_VARARGS,
     "optim_step(kind, params, grads, state1, state2, segments, groups, steps, max_grad_norm)"
     " -> gradient norm (before clipping).\n\n"
     "kind: 'sgd', 'adam' or 'adamw'. params, grads: float32 [N] arenas (updated in place);\n"
     "state1 (momentum buffer / exp_avg), state2 (exp_avg_sq): float32 [S] or None;\n"
     "segments: int64 [nseg, 5] (param_offset, count, state_offset, group, no_decay);\n"
     "groups: float64 [ngroup, 8] (lr, weight_decay, momentum, dampening, nesterov, beta1,\n"
     "beta2, eps); steps: int64 [ngroup], advanced in place; max_grad_norm < 0: no clipping.\n"
     "A non-finite gradient raises FloatingPointError(message, segment, element) and changes\n"
     "nothing."},
    {"optim_clip_grad_norm", py_optim_clip_grad_norm, METH_VARARGS,
     "optim_clip_grad_norm(grads, segments, max_norm) -> norm before clipping: "
     "torch.nn.utils.clip_grad_norm_ over the segments (int64 [nseg, 5]) of grads (float32 "
     "[N], scaled in place); max_norm = inf only measures."},
    {NULL, NULL, 0, NULL},
};
