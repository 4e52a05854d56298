/* The gate's shape key in C: pgjit.policy.gate._shape_key_py, without re
 * (the function itself is in shape.h, which the relay core shares). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "shape.h"

static PyObject *
shape_key(PyObject *self, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    /* The key is never longer than the text. */
    PyObject *out = PyBytes_FromStringAndSize(NULL, view.len);
    if (out == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    ssize_t k = shape_into((const unsigned char *)view.buf, view.len, (unsigned char *)PyBytes_AS_STRING(out));
    PyBuffer_Release(&view);
    if (k < 0) {
        Py_DECREF(out);
        Py_RETURN_NONE;
    }
    if (k != view.len && _PyBytes_Resize(&out, k) < 0)
        return NULL;
    return out;
}

static PyMethodDef methods[] = {
    {"shape_key", shape_key, METH_O, "shape_key(raw: bytes) -> bytes | None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_shape", NULL, -1, methods};

PyMODINIT_FUNC
PyInit__shape(void)
{
    return PyModule_Create(&module);
}
