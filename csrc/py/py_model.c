#include "lk_py.h"

PyMethodDef lk_py_model_methods[] = {
    {NULL, NULL, 0, NULL},
};

int lk_py_model_register(PyObject *module) { return 0; }
