/* The masking filter's DataRow loop in C (pgjit.masking.wire).
 *
 * rows(buf, pos, spec) -> (stop, out, count)
 *
 * From ``pos``, takes the run of complete DataRow ('D') frames in ``buf``
 * and stops at the first frame that is anything else or incomplete
 * (``stop``: where that is; ``count``: the rows taken). With ``spec`` None
 * nothing in the rows is masked and ``out`` is None: the frames go as they
 * are. Otherwise ``out`` is the rows rebuilt, column ``i`` by ``spec[i]``:
 *
 *   None       the value as it is
 *   bytes      the value replaced by these bytes (NULL stays NULL)
 *   -1         NULL
 *   k >= 0     partial: the last k characters (UTF-8) kept, the others '*';
 *              a value of at most 2k characters becomes all '*'
 *   callable   f(value: bytes) -> bytes | None (None: NULL)
 *
 * and every column past the end of ``spec`` becomes NULL (a column pgjit
 * cannot place goes whole). The reference is the Python loop in wire.py
 * (Masker._datarow), which a test holds equal to this.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    char *p;
    Py_ssize_t len, cap;
} Buf;

static int
buf_grow(Buf *b, Py_ssize_t more)
{
    if (b->len + more <= b->cap)
        return 0;
    Py_ssize_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more)
        cap *= 2;
    char *p = PyMem_Realloc(b->p, (size_t)cap);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static int
buf_put(Buf *b, const void *src, Py_ssize_t n)
{
    if (buf_grow(b, n) < 0)
        return -1;
    memcpy(b->p + b->len, src, (size_t)n);
    b->len += n;
    return 0;
}

static int
buf_u32(Buf *b, uint32_t v)
{
    unsigned char x[4] = {(unsigned char)(v >> 24), (unsigned char)(v >> 16), (unsigned char)(v >> 8), (unsigned char)v};
    return buf_put(b, x, 4);
}

static inline uint32_t
be32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static const unsigned char NULL_LEN[4] = {0xff, 0xff, 0xff, 0xff};

/* partial: write the masked value (length prefix included) */
static int
put_partial(Buf *b, const unsigned char *v, Py_ssize_t n, long keep)
{
    Py_ssize_t chars = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if ((v[i] & 0xC0) != 0x80)
            chars++;
    Py_ssize_t stars, tail_bytes = 0;
    if (keep <= 0 || chars <= 2 * (Py_ssize_t)keep) {
        stars = chars;
    } else {
        stars = chars - keep;
        /* the bytes of the last ``keep`` characters */
        Py_ssize_t seen = 0, i = n;
        while (i > 0 && seen < keep) {
            i--;
            if ((v[i] & 0xC0) != 0x80)
                seen++;
        }
        tail_bytes = n - i;
    }
    if (buf_u32(b, (uint32_t)(stars + tail_bytes)) < 0 || buf_grow(b, stars + tail_bytes) < 0)
        return -1;
    memset(b->p + b->len, '*', (size_t)stars);
    b->len += stars;
    memcpy(b->p + b->len, v + n - tail_bytes, (size_t)tail_bytes);
    b->len += tail_bytes;
    return 0;
}

static PyObject *
rows(PyObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t pos;
    PyObject *spec;
    if (!PyArg_ParseTuple(args, "y*nO", &view, &pos, &spec))
        return NULL;
    const unsigned char *d = view.buf;
    Py_ssize_t n = view.len, count = 0;
    if (pos < 0)
        pos = 0;
    if (spec == Py_None) {
        while (pos + 5 <= n && d[pos] == 'D') {
            Py_ssize_t stop = pos + 1 + (Py_ssize_t)be32(d + pos + 1);
            if (stop > n || stop < pos + 5)
                break;
            pos = stop;
            count++;
        }
        PyBuffer_Release(&view);
        return Py_BuildValue("nOn", pos, Py_None, count);
    }
    if (!PyTuple_Check(spec)) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_TypeError, "spec must be a tuple or None");
        return NULL;
    }
    Py_ssize_t ns = PyTuple_GET_SIZE(spec);
    Buf out = {NULL, 0, 0};
    while (pos + 7 <= n && d[pos] == 'D') {
        Py_ssize_t stop = pos + 1 + (Py_ssize_t)be32(d + pos + 1);
        if (stop > n || stop < pos + 7)
            break;
        Py_ssize_t start = out.len;
        int ncols = (d[pos + 5] << 8) | d[pos + 6];
        if (buf_put(&out, "D\0\0\0\0", 5) < 0 || buf_put(&out, d + pos + 5, 2) < 0)
            goto fail;
        Py_ssize_t p = pos + 7;
        for (int c = 0; c < ncols; c++) {
            if (p + 4 > stop)
                goto malformed;
            int32_t len = (int32_t)be32(d + p);
            p += 4;
            const unsigned char *v = d + p;
            if (len >= 0) {
                if (p + len > stop)
                    goto malformed;
                p += len;
            }
            PyObject *op = c < ns ? PyTuple_GET_ITEM(spec, c) : NULL;
            if (len < 0 || (op != NULL && op != Py_None && PyLong_Check(op) && PyLong_AsLong(op) == -1) || op == NULL) {
                if (buf_put(&out, NULL_LEN, 4) < 0)
                    goto fail;
                continue;
            }
            if (op == Py_None) {
                if (buf_put(&out, v - 4, 4 + len) < 0)
                    goto fail;
            } else if (PyBytes_Check(op)) {
                Py_ssize_t m = PyBytes_GET_SIZE(op);
                if (buf_u32(&out, (uint32_t)m) < 0 || buf_put(&out, PyBytes_AS_STRING(op), m) < 0)
                    goto fail;
            } else if (PyLong_Check(op)) {
                if (put_partial(&out, v, len, PyLong_AsLong(op)) < 0)
                    goto fail;
            } else {
                PyObject *arg = PyBytes_FromStringAndSize((const char *)v, len);
                if (arg == NULL)
                    goto fail;
                PyObject *r = PyObject_CallOneArg(op, arg);
                Py_DECREF(arg);
                if (r == NULL)
                    goto fail;
                if (r == Py_None) {
                    if (buf_put(&out, NULL_LEN, 4) < 0) {
                        Py_DECREF(r);
                        goto fail;
                    }
                } else if (PyBytes_Check(r)) {
                    Py_ssize_t m = PyBytes_GET_SIZE(r);
                    if (buf_u32(&out, (uint32_t)m) < 0 || buf_put(&out, PyBytes_AS_STRING(r), m) < 0) {
                        Py_DECREF(r);
                        goto fail;
                    }
                } else {
                    Py_DECREF(r);
                    PyErr_SetString(PyExc_TypeError, "a mask callable must return bytes or None");
                    goto fail;
                }
                Py_DECREF(r);
            }
        }
        if (p != stop)
            goto malformed;
        {
            uint32_t flen = (uint32_t)(out.len - start - 1);
            unsigned char *h = (unsigned char *)out.p + start + 1;
            h[0] = (unsigned char)(flen >> 24);
            h[1] = (unsigned char)(flen >> 16);
            h[2] = (unsigned char)(flen >> 8);
            h[3] = (unsigned char)flen;
        }
        pos = stop;
        count++;
    }
    PyBuffer_Release(&view);
    PyObject *res = PyBytes_FromStringAndSize(out.p ? out.p : "", out.len);
    PyMem_Free(out.p);
    if (res == NULL)
        return NULL;
    PyObject *t = Py_BuildValue("nNn", pos, res, count);
    return t;
malformed:
    PyErr_SetString(PyExc_ValueError, "malformed DataRow message from the server");
fail:
    PyBuffer_Release(&view);
    PyMem_Free(out.p);
    return NULL;
}

static PyMethodDef methods[] = {
    {"rows", rows, METH_VARARGS,
     "rows(buf, pos, spec) -> (stop, out, count): the run of DataRow frames from pos, masked by spec (see the module)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_rows", "pgjit masking's DataRow loop in C", -1, methods};

PyMODINIT_FUNC
PyInit__rows(void)
{
    return PyModule_Create(&module);
}
