/* leukemia._core: multi-phase initialised module that concatenates the method
 * tables of the binding files. */
#define LK_PY_MODULE_MAIN
#include "lk_py.h"

#include "lk_blocks.h"
#include "lk_cpu.h"
#include "lk_dnnl.h"
#include "lk_dwconv.h"
#include "lk_layers.h"

static PyObject *py_build_info(PyObject *self, PyObject *noargs) {
    lk_build_info info;
    lk_get_build_info(&info);
    lk_fork_info fork;
    lk_get_fork_info(&fork);
    char version[64];
    snprintf(version, sizeof version, "%d.%d.%d", info.dnnl_major, info.dnnl_minor,
             info.dnnl_patch);
    return Py_BuildValue("{s:s,s:s,s:s,s:s,s:s,s:i,s:i,s:O}", "onednn_version", version,
                         "onednn_commit", info.dnnl_hash ? info.dnnl_hash : "", "cpu_runtime",
                         info.cpu_runtime, "isa", info.isa, "kernel_isa",
                         lk_kernel_isa_name(lk_kernel_isa()), "num_threads",
                         lk_get_num_threads(), "max_threads", lk_max_threads(), "forked_child",
                         fork.forked ? Py_True : Py_False);
}

static PyObject *py_set_kernel_isa(PyObject *self, PyObject *arg) {
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name) return NULL;
    lk_status st = lk_kernel_isa_set(name);
    if (st != LK_OK) return lk_py_raise(st);
    return PyUnicode_FromString(lk_kernel_isa_name(lk_kernel_isa()));
}

static PyObject *py_kernel_isas(PyObject *self, PyObject *noargs) {
    PyObject *out = PyList_New(0);
    if (!out) return NULL;
    for (int i = LK_ISA_AVX512; i >= LK_ISA_C; i--) {
        if (!lk_kernel_isa_supported((lk_kernel_isa_t)i)) continue;
        PyObject *name = PyUnicode_FromString(lk_kernel_isa_name((lk_kernel_isa_t)i));
        if (!name || PyList_Append(out, name) < 0) {
            Py_XDECREF(name);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(name);
    }
    return out;
}

/* Tests: pretend the CPU lacks the paths in `mask` (bit 1 << isa); 0 undoes it. */
static PyObject *py_kernel_isa_hide(PyObject *self, PyObject *arg) {
    unsigned long mask = PyLong_AsUnsignedLong(arg);
    if (mask == (unsigned long)-1 && PyErr_Occurred()) return NULL;
    lk_kernel_isa_hide_for_tests((unsigned)mask);
    Py_RETURN_NONE;
}

/* Tests: switch a planning policy by name (names[i] is enum value i), returning the
 * previous one's name; `what` names the policy in the error. */
static PyObject *policy_switch(PyObject *arg, const char *const *names, int n, int (*get)(void),
                               void (*set)(int), const char *what) {
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name) return NULL;
    for (int i = 0; i < n; i++)
        if (!strcmp(name, names[i])) {
            int old = get();
            set(i);
            return PyUnicode_FromString(names[old]);
        }
    PyObject *choices = PyTuple_New(n);
    if (!choices) return NULL;
    for (int i = 0; i < n; i++) {
        PyObject *s = PyUnicode_FromString(names[i]);
        if (!s) {
            Py_DECREF(choices);
            return NULL;
        }
        PyTuple_SET_ITEM(choices, i, s);
    }
    PyErr_Format(PyExc_ValueError, "%s policy must be one of %R, got %R", what, choices, arg);
    Py_DECREF(choices);
    return NULL;
}

static int dw_get(void) { return (int)lk_dwconv_get_policy(); }
static void dw_set(int i) { lk_dwconv_set_policy((lk_dw_bwd_w_policy)i); }
static int dx_get(void) { return (int)lk_conv2d_get_dx_policy(); }
static void dx_set(int i) { lk_conv2d_set_dx_policy((lk_conv_dx_policy)i); }

static int dwf_get(void) { return (int)lk_conv2d_get_dwf_policy(); }
static void dwf_set(int i) { lk_conv2d_set_dwf_policy((lk_conv_dwf_policy)i); }

/* Tests: which forward conv2d plans for training depthwise layers ("auto", "onednn",
 * "ours"; also their stride-1 input gradient); returns the previous one. */
static PyObject *py_dwfwd_policy(PyObject *self, PyObject *arg) {
    static const char *const names[] = {"auto", "onednn", "ours"};
    return policy_switch(arg, names, 3, dwf_get, dwf_set, "depthwise forward");
}

static int dwl_get(void) { return (int)lk_dwconv_get_fwd_layout(); }
static void dwl_set(int i) { lk_dwconv_set_fwd_layout((lk_dwf_layout)i); }

/* Tests: the ring layout of our depthwise forward ("auto": blocked where faster,
 * "nhwc"; read when a layer is planned); returns the previous one. */
static PyObject *py_dwlayout_policy(PyObject *self, PyObject *arg) {
    static const char *const names[] = {"auto", "nhwc"};
    return policy_switch(arg, names, 2, dwl_get, dwl_set, "depthwise ring layout");
}

static int stem_get(void) { return (int)lk_conv2d_get_stem_policy(); }
static void stem_set(int i) { lk_conv2d_set_stem_policy((lk_conv_stem_policy)i); }

/* Tests: whether dense convolutions with few input channels run our stem kernel
 * ("auto", "never"; read when a layer is planned); returns the previous one. */
static PyObject *py_stem_policy(PyObject *self, PyObject *arg) {
    static const char *const names[] = {"auto", "never"};
    return policy_switch(arg, names, 2, stem_get, stem_set, "stem");
}

static int fold_get(void) { return (int)lk_block_get_se_fold_policy(); }
static void fold_set(int i) { lk_block_set_se_fold_policy((lk_se_fold_policy)i); }

/* Tests: whether blocks fold the SE gate into their projection ("auto", "never",
 * "always"; read when a model is planned); returns the previous one. */
static PyObject *py_se_fold_policy(PyObject *self, PyObject *arg) {
    static const char *const names[] = {"auto", "never", "always"};
    return policy_switch(arg, names, 3, fold_get, fold_set, "SE fold");
}

static int xdw_get(void) { return (int)lk_block_get_expdw_policy(); }
static void xdw_set(int i) { lk_block_set_expdw_policy((lk_expdw_policy)i); }

/* Tests: whether MBConv blocks at inference run expansion and depthwise fused ("auto",
 * "never", "always"; read when a model is planned); returns the previous one. */
static PyObject *py_expdw_policy(PyObject *self, PyObject *arg) {
    static const char *const names[] = {"auto", "never", "always"};
    return policy_switch(arg, names, 3, xdw_get, xdw_set, "expand+depthwise");
}

static int resfuse_get(void) { return (int)lk_block_get_resfuse_policy(); }
static void resfuse_set(int i) { lk_block_set_resfuse_policy((lk_resfuse_policy)i); }

/* Tests: whether residual blocks at inference add their input inside the last unit's
 * convolution ("auto", "never"; read when a model is planned); returns the previous one. */
static PyObject *py_resfuse_policy(PyObject *self, PyObject *arg) {
    static const char *const names[] = {"auto", "never"};
    return policy_switch(arg, names, 2, resfuse_get, resfuse_set, "residual fusion");
}

static int wino_get(void) { return (int)lk_conv2d_get_wino_policy(); }
static void wino_set(int i) { lk_conv2d_set_wino_policy((lk_conv_wino_policy)i); }

/* Tests: whether dense 3x3 stride-1 convolutions run by Winograd, forward and gradients
 * ("auto", "never", "always"; a model plans anew when it changes); returns the previous
 * one. leukemia.set_conv_algorithm is the public face. */
static PyObject *py_wino_policy(PyObject *self, PyObject *arg) {
    static const char *const names[] = {"auto", "never", "always"};
    return policy_switch(arg, names, 3, wino_get, wino_set, "winograd");
}

/* Tests: which depthwise weight-gradient kernel conv2d plans ("auto", "onednn",
 * "custom"); returns the previous one. */
static PyObject *py_dwconv_policy(PyObject *self, PyObject *arg) {
    static const char *const names[] = {"auto", "onednn", "custom"};
    return policy_switch(arg, names, 3, dw_get, dw_set, "dwconv");
}

/* Tests: how conv2d plans a depthwise stride-1 input gradient ("auto": forward with the
 * rotated kernel, "onednn": the backward-data primitive); returns the previous one. */
static PyObject *py_conv_dx_policy(PyObject *self, PyObject *arg) {
    static const char *const names[] = {"auto", "onednn"};
    return policy_switch(arg, names, 2, dx_get, dx_set, "conv dx");
}

static PyObject *py_set_num_threads(PyObject *self, PyObject *arg) {
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 1) return PyErr_Format(PyExc_ValueError, "num_threads must be >= 1, got %ld", n);
    /* The core clamps to what the OpenMP runtime will grant (lk_max_threads). */
    return PyLong_FromLong(lk_set_num_threads(n > INT_MAX ? INT_MAX : (int)n));
}

static PyObject *py_get_num_threads(PyObject *self, PyObject *noargs) {
    return PyLong_FromLong(lk_get_num_threads());
}

static PyObject *py_max_threads(PyObject *self, PyObject *noargs) {
    return PyLong_FromLong(lk_max_threads());
}

static PyObject *py_omp_threads_here(PyObject *self, PyObject *noargs) {
    return PyLong_FromLong(lk_omp_threads_here());
}

static PyObject *py_exec_counts(PyObject *self, PyObject *noargs) {
    return Py_BuildValue("{s:K,s:K,s:K}", "primitives", (unsigned long long)lk_exec_count(),
                         "reorders", (unsigned long long)lk_reorder_exec_count(),
                         "weight_reorders", (unsigned long long)lk_weight_reorder_exec_count());
}

PyMethodDef lk_py_core_methods[] = {
    {"build_info", py_build_info, METH_NOARGS, "oneDNN version, runtime, ISA and threads."},
    {"set_kernel_isa", py_set_kernel_isa, METH_O,
     "Force the hand-written kernels' path ('avx512', 'avx2', 'c' or 'auto'); returns the "
     "path in force."},
    {"kernel_isas", py_kernel_isas, METH_NOARGS,
     "Kernel paths this CPU can run, widest first."},
    {"_kernel_isa_hide", py_kernel_isa_hide, METH_O,
     "Tests: treat the kernel paths in the bit mask (1 << isa) as absent from this CPU."},
    {"_dwconv_policy", py_dwconv_policy, METH_O,
     "Tests: depthwise weight-gradient kernel conv2d plans; returns the previous policy."},
    {"_conv_dx_policy", py_conv_dx_policy, METH_O,
     "Tests: depthwise stride-1 input-gradient path conv2d plans; returns the previous one."},
    {"_dwfwd_policy", py_dwfwd_policy, METH_O,
     "Tests: which forward training depthwise layers run (also their stride-1 input "
     "gradient); returns the previous policy."},
    {"_dwlayout_policy", py_dwlayout_policy, METH_O,
     "Tests: the ring layout of our depthwise forward (blocked where faster, or NHWC); "
     "returns the previous policy."},
    {"_stem_policy", py_stem_policy, METH_O,
     "Tests: whether dense convolutions with few input channels run our stem kernel; "
     "returns the previous policy."},
    {"_se_fold_policy", py_se_fold_policy, METH_O,
     "Tests: whether MBConv blocks fold the SE gate into their projection; returns the "
     "previous policy."},
    {"_expdw_policy", py_expdw_policy, METH_O,
     "Tests: whether MBConv blocks at inference fuse expansion and depthwise; returns the "
     "previous policy."},
    {"_resfuse_policy", py_resfuse_policy, METH_O,
     "Tests: whether residual blocks at inference add their input inside the last unit's "
     "convolution; returns the previous policy."},
    {"_wino_policy", py_wino_policy, METH_O,
     "Tests: whether dense 3x3 stride-1 convolutions run by Winograd (forward and gradients); "
     "returns the previous policy."},
    {"set_num_threads", py_set_num_threads, METH_O,
     "Set the thread count of the core; returns the count in force (clamped to max_threads())."},
    {"get_num_threads", py_get_num_threads, METH_NOARGS, "Thread count of the core."},
    {"max_threads", py_max_threads, METH_NOARGS,
     "Largest thread count the OpenMP runtime grants (OMP_THREAD_LIMIT, 4 per CPU)."},
    {"omp_threads_here", py_omp_threads_here, METH_NOARGS,
     "OpenMP's thread count in the calling thread (after its last core call)."},
    {"exec_counts", py_exec_counts, METH_NOARGS,
     "Counts of primitive, reorder and weight-reorder executions since import."},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef *lk_py_tables[] = {
    lk_py_core_methods,   lk_py_conv_methods,        lk_py_bn_methods,
    lk_py_act_methods,    lk_py_pool_methods,        lk_py_linear_methods,
    lk_py_elementwise_methods, lk_py_dropout_methods, lk_py_loss_methods,
    lk_py_attention_methods, lk_py_model_methods, lk_py_optim_methods,
};

static int lk_py_exec(PyObject *m) {
    if (PyArray_ImportNumPyAPI() < 0) return -1;
    /* Read OMP_NUM_THREADS & co. and register the fork handlers at import. */
    lk_threads_init();
    for (size_t t = 0; t < sizeof lk_py_tables / sizeof lk_py_tables[0]; t++) {
        if (PyModule_AddFunctions(m, lk_py_tables[t]) < 0) return -1;
    }
    if (lk_py_model_register(m) < 0) return -1;
    return 0;
}

static PyModuleDef_Slot lk_py_slots[] = {
    {Py_mod_exec, (void *)lk_py_exec},
    {0, NULL},
};

static struct PyModuleDef lk_py_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "leukemia._core",
    .m_doc = "C core of leukemia: EfficientNet layers and models on oneDNN.",
    .m_size = 0,
    .m_slots = lk_py_slots,
};

PyMODINIT_FUNC PyInit__core(void) { return PyModuleDef_Init(&lk_py_module); }
