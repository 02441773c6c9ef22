#include "lk_py.h"

PyMethodDef lk_py_dropout_methods[] = {
    {NULL, NULL, 0, NULL},
};
