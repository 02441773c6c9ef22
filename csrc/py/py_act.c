#include "lk_py.h"

PyMethodDef lk_py_act_methods[] = {
    {NULL, NULL, 0, NULL},
};
