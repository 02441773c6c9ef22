#include "lk_py.h"

PyMethodDef lk_py_loss_methods[] = {
    {NULL, NULL, 0, NULL},
};
