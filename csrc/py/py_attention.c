#include "lk_py.h"

PyMethodDef lk_py_attention_methods[] = {
    {NULL, NULL, 0, NULL},
};
