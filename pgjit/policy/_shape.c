/* The gate's shape key in C: pgjit.policy.gate._shape_key_py, without re.
 *
 * Same contract as the Python reference (which is property-tested against
 * pglast's fingerprint, and this against the reference): return the
 * statement with its string and numeric literals replaced by "?", or None
 * when the text is outside the restricted alphabet where that replacement is
 * known to be exact. The literal rules are those of the reference's regular
 * expression, applied left to right as re.sub does:
 *
 *   a string:  a quote not preceded by [A-Za-z0-9_], up to the next quote;
 *   a number:  digits not preceded by [A-Za-z0-9_.], optionally "." and
 *              digits, and then not followed by [A-Za-z0-9_.].
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static int
is_word(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

static int
is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static PyObject *
shape_key(PyObject *self, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *b = (const unsigned char *)view.buf;
    Py_ssize_t n = view.len;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = b[i];
        if (c >= 0x80 || c == '"' || c == '\\' || c == '$' || c == '?' ||
            (c == '-' && i + 1 < n && b[i + 1] == '-') || (c == '/' && i + 1 < n && b[i + 1] == '*')) {
            PyBuffer_Release(&view);
            Py_RETURN_NONE;
        }
    }
    /* The key is never longer than the text. */
    PyObject *out = PyBytes_FromStringAndSize(NULL, n);
    if (out == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(out);
    Py_ssize_t k = 0, i = 0;
    int ok = 1;
    while (i < n) {
        unsigned char c = b[i];
        int after_word = i > 0 && is_word(b[i - 1]);
        if (c == '\'' && !after_word) {
            const unsigned char *close = memchr(b + i + 1, '\'', (size_t)(n - i - 1));
            if (close != NULL) {
                o[k++] = '?';
                i = (close - b) + 1;
                continue;
            }
        } else if (is_digit(c) && !after_word && !(i > 0 && b[i - 1] == '.')) {
            Py_ssize_t e = i;
            while (e < n && is_digit(b[e]))
                e++;
            if (e + 1 < n && b[e] == '.' && is_digit(b[e + 1])) {
                e++;
                while (e < n && is_digit(b[e]))
                    e++;
            }
            if (e == n || !(is_word(b[e]) || b[e] == '.')) {
                o[k++] = '?';
                i = e;
                continue;
            }
        }
        o[k++] = c;
        i++;
    }
    PyBuffer_Release(&view);
    /* A quote left over is a string the rules did not take (a prefix, an odd
     * quote); "??" is two literals touching ('a''b', 1'x'). */
    for (Py_ssize_t j = 0; j < k; j++) {
        if (o[j] == '\'' || (o[j] == '?' && j + 1 < k && o[j + 1] == '?')) {
            ok = 0;
            break;
        }
    }
    if (!ok) {
        Py_DECREF(out);
        Py_RETURN_NONE;
    }
    if (k != n && _PyBytes_Resize(&out, k) < 0)
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
