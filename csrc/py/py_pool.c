#include "lk_py.h"

PyMethodDef lk_py_pool_methods[] = {
    {NULL, NULL, 0, NULL},
};
