/* Shared helpers of the Python binding (the only folder that includes Python.h).
 *
 * Every py_*.c file exports one NULL-terminated method table that module.c
 * concatenates into `leukemia._core`. Arrays are checked here, the C core is
 * called with the GIL released, and a failing lk_status becomes an exception.
 */
#ifndef LK_PY_H
#define LK_PY_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define PY_ARRAY_UNIQUE_SYMBOL lk_ARRAY_API
#ifndef LK_PY_MODULE_MAIN
#define NO_IMPORT_ARRAY
#endif
#include <numpy/arrayobject.h>

#include "lk_dnnl.h"
#include "lk_status.h"

/* Raise the exception matching a failed lk_status (message from the core). */
PyObject *lk_py_raise(lk_status s);

/* Validate an array argument: a NumPy float32 (or int32 / uint8 / int64 / float64 per `dtype`)
 * array, C-contiguous and aligned, of rank `ndim` (-1: any), writable when
 * `out` is set. Returns the data pointer, or NULL with TypeError/ValueError
 * naming `name`. `dims` (may be NULL) receives the shape. None is accepted
 * (returning NULL without an exception) only when `optional` is set; callers
 * distinguish with PyErr_Occurred(). */
void *lk_py_array(PyObject *obj, const char *name, int dtype, int ndim, int out, int optional,
                  npy_intp *dims);

/* Check an array's shape against `expect` (length ndim); ValueError naming
 * `name` with both shapes otherwise. Returns 0 on success, -1 on error. */
int lk_py_shape(PyObject *obj, const char *name, int ndim, const npy_intp *expect);

/* Number of elements of an array argument. */
npy_intp lk_py_size(PyObject *obj);

/* Run a core call with the GIL released, after lk_thread_enter (the thread count in
 * this thread, and the refusal in an unusable forked child); the caller raises on a
 * failing status. */
#define LK_PY_CALL(status_var, call)                        \
    do {                                                    \
        Py_BEGIN_ALLOW_THREADS                              \
        status_var = lk_thread_enter();                     \
        if (status_var == LK_OK) status_var = (call);       \
        Py_END_ALLOW_THREADS                                \
    } while (0)

/* Method tables of the binding files. */
extern PyMethodDef lk_py_core_methods[];
extern PyMethodDef lk_py_conv_methods[];
extern PyMethodDef lk_py_bn_methods[];
extern PyMethodDef lk_py_act_methods[];
extern PyMethodDef lk_py_pool_methods[];
extern PyMethodDef lk_py_linear_methods[];
extern PyMethodDef lk_py_elementwise_methods[];
extern PyMethodDef lk_py_dropout_methods[];
extern PyMethodDef lk_py_loss_methods[];
extern PyMethodDef lk_py_attention_methods[];
extern PyMethodDef lk_py_model_methods[];
extern PyMethodDef lk_py_optim_methods[];

/* Types registered by binding files (model handle); called from module exec. */
int lk_py_model_register(PyObject *module);

#endif
