#include "lk_py.h"

PyMethodDef lk_py_elementwise_methods[] = {
    {NULL, NULL, 0, NULL},
};
