/* Frame-boundary scanning for the relay's hot path, in C.
 *
 * The same function as pgjit.protocol.framing._scan_watched_py: walk the
 * 5-byte headers of PostgreSQL messages in buf[pos:end] and return the frames
 * whose tag is in the watch mask, the position of the first incomplete frame,
 * and the offending length when a length field is out of range (-1 if none).
 * No allocation but the result list; no I/O. The Python version is the
 * reference and the fallback when this module was not built.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

static PyObject *
scan_watched(PyObject *self, PyObject *args)
{
    Py_buffer view, mask;
    Py_ssize_t pos, end;
    unsigned long long max_size;
    if (!PyArg_ParseTuple(args, "y*nnKy*", &view, &pos, &end, &max_size, &mask))
        return NULL;
    if (mask.len != 256) {
        PyBuffer_Release(&view);
        PyBuffer_Release(&mask);
        PyErr_SetString(PyExc_ValueError, "watch mask must be 256 bytes");
        return NULL;
    }
    if (end > view.len)
        end = view.len;
    if (pos < 0)
        pos = 0;
    const unsigned char *b = (const unsigned char *)view.buf;
    const unsigned char *m = (const unsigned char *)mask.buf;
    long long bad = -1;
    PyObject *frames = PyList_New(0);
    if (frames == NULL)
        goto error;
    while (end - pos >= 5) {
        uint32_t len = ((uint32_t)b[pos + 1] << 24) | ((uint32_t)b[pos + 2] << 16) |
                       ((uint32_t)b[pos + 3] << 8) | (uint32_t)b[pos + 4];
        if (len < 4 || (unsigned long long)len > max_size) {
            bad = (long long)len;
            break;
        }
        Py_ssize_t stop = pos + 1 + (Py_ssize_t)len;
        if (stop > end)
            break;
        unsigned char tag = b[pos];
        if (m[tag]) {
            PyObject *t = Py_BuildValue("(inn)", (int)tag, pos, stop);
            if (t == NULL || PyList_Append(frames, t) < 0) {
                Py_XDECREF(t);
                goto error;
            }
            Py_DECREF(t);
        }
        pos = stop;
    }
    PyBuffer_Release(&view);
    PyBuffer_Release(&mask);
    return Py_BuildValue("(NnL)", frames, pos, bad);

error:
    Py_XDECREF(frames);
    PyBuffer_Release(&view);
    PyBuffer_Release(&mask);
    return NULL;
}

static PyMethodDef methods[] = {
    {"scan_watched", scan_watched, METH_VARARGS,
     "scan_watched(buf, pos, end, max_size, mask256) -> (frames, next_pos, bad_length)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_scan", NULL, -1, methods};

PyMODINIT_FUNC
PyInit__scan(void)
{
    return PyModule_Create(&module);
}
