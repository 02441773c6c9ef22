#include "lk_py.h"

PyMethodDef lk_py_linear_methods[] = {
    {NULL, NULL, 0, NULL},
};
