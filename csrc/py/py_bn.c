#include "lk_py.h"

PyMethodDef lk_py_bn_methods[] = {
    {NULL, NULL, 0, NULL},
};
