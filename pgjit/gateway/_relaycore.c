/* The reactor's hot path in C: read, find frame boundaries, count, write.
 *
 * pgjit.gateway.reactor keeps the relay's logic in Python (Relay.from_client and
 * from_server). Most reads need none of it: a client read holding whole
 * Query/Sync/Execute frames only moves the ReadyForQuery count, and a server
 * read holding whole frames only moves that count and the transaction status.
 * For those, pump() does the work itself, with the same counters the Python
 * code uses (they live in the Core object), and builds no Python object but
 * the SQL it hands to a gate callback (below). It returns None when no event
 * was ready, else a list of what is left for Python, each entry one of:
 *
 *   (fd, events, -1, -1, None)  not read: Python handles the event as usual
 *   (fd, events,  0, -1, None)  the end of the stream (or a reset)
 *   (fd, events,  n, -1, data)  n bytes read, not yet looked at: Python relays
 *                               them; they are data[:n]
 *   (fd, events,  n,  s, rest)  relayed and counted, but only s of n bytes
 *                               were written: rest (bytes) is what was not
 *   (fd, events,  n, -2, None)  relayed and counted, the write failed: the
 *                               destination is gone
 *
 * Every read goes into one receive buffer that pump() shares between all
 * sessions (the caller's holder[0]), so an idle session owns no buffer. What
 * a read hands to Python must outlive the rest of the batch, which reads into
 * the same buffer: a small read is copied out (a bytes); a large one takes
 * the buffer itself with it, and holder[0] gets a fresh one.
 *
 * In a session with a policy, a Query, or a Parse of the unnamed statement,
 * takes this path only when the session's gate callback allows its SQL and
 * says nothing else is to be done; otherwise the read goes to Python, which
 * decides again (so the callback has no side effects).
 *
 * A direction takes this path only while Python says it may (c_fast/s_fast:
 * nothing carried over, no backlog, nothing to rewrite); a server read left
 * for Python also keeps the client direction off it for the rest of the batch. A read qualifies
 * only when it holds whole frames whose types the masks mark as handled here;
 * the frames are checked before anything is counted, so a read handed back to
 * Python has changed nothing. The Python relay is the reference and the
 * fallback when this module is not built; tests run both on the same input.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <errno.h>
#include <stdint.h>
#include <poll.h>
#include <time.h>
#include <sys/epoll.h>
#include <sys/socket.h>

/* Mask codes: what a frame type means to the fast path. */
enum {
    PASS = 0,       /* relayed as is */
    C_QUERY = 1,    /* client: answered by one ReadyForQuery */
    C_SYNC = 2,     /* client: answered by one ReadyForQuery, unless it falls into COPY */
    C_EXECUTE = 3,  /* client: starts a run of Syncs that a COPY may swallow */
    S_READY = 5,    /* server: ReadyForQuery */
    S_ERROR = 6,    /* server: ErrorResponse (remembered as the last frame) */
    C_GATED = 7,    /* client: a Query the gate callback must allow, then as C_QUERY */
    C_GATED_PARSE = 8, /* client: a Parse of the unnamed statement the gate callback must allow */
    PYTHON = 9,     /* Python must see the read */
};

#define MAX_EVENTS 512

typedef struct {
    PyObject_HEAD
    int cfd, ufd;
    PyObject *gate;        /* gate(sql: bytes) -> bool, for C_GATED frames, or NULL */
    unsigned char cmask[256], smask[256];
    unsigned long long cmax, smax;
    long long rfq_sent, rfq_received, syncs_since_execute, copy_base;
    int last_was_error;
    int c_fast, s_fast;
    char txn_status;
    /* Audit (set_audit): frames of these types that this path relays are
     * appended to log, each as a direction byte ('c' or 's') and the frame
     * (AUDIT_HEAD: its type and an empty body), for Python to record. */
    PyObject *log;
    int audit_lost; /* the log could not grow: frames went unlogged */
    unsigned char calog[256], salog[256];
} Core;

enum { AUDIT_NONE = 0, AUDIT_HEAD = 1, AUDIT_FRAME = 2 };

static int
Core_init(Core *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"cfd", "ufd", "cmask", "smask", "cmax", "smax", NULL};
    int cfd, ufd;
    Py_buffer cmask, smask;
    unsigned long long cmax, smax;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iiy*y*KK", kwlist, &cfd, &ufd, &cmask, &smask, &cmax, &smax))
        return -1;
    if (cmask.len != 256 || smask.len != 256) {
        PyBuffer_Release(&cmask);
        PyBuffer_Release(&smask);
        PyErr_SetString(PyExc_ValueError, "masks must be 256 bytes");
        return -1;
    }
    memcpy(self->cmask, cmask.buf, 256);
    memcpy(self->smask, smask.buf, 256);
    PyBuffer_Release(&cmask);
    PyBuffer_Release(&smask);
    self->cfd = cfd;
    self->ufd = ufd;
    self->cmax = cmax;
    self->smax = smax;
    self->txn_status = 'I';
    return 0;
}

static int
Core_traverse(Core *self, visitproc visit, void *arg)
{
    Py_VISIT(self->gate);
    Py_VISIT(self->log);
    return 0;
}

static int
Core_clear(Core *self)
{
    Py_CLEAR(self->gate);
    Py_CLEAR(self->log);
    return 0;
}

static PyObject *
Core_set_audit(Core *self, PyObject *args)
{
    PyObject *log;
    Py_buffer cm, sm;
    if (!PyArg_ParseTuple(args, "O!y*y*", &PyByteArray_Type, &log, &cm, &sm))
        return NULL;
    if (cm.len != 256 || sm.len != 256) {
        PyBuffer_Release(&cm);
        PyBuffer_Release(&sm);
        PyErr_SetString(PyExc_ValueError, "audit masks must be 256 bytes");
        return NULL;
    }
    memcpy(self->calog, cm.buf, 256);
    memcpy(self->salog, sm.buf, 256);
    PyBuffer_Release(&cm);
    PyBuffer_Release(&sm);
    Py_INCREF(log);
    Py_XSETREF(self->log, log);
    Py_RETURN_NONE;
}

static PyMethodDef Core_methods[] = {
    {"set_audit", (PyCFunction)Core_set_audit, METH_VARARGS,
     "set_audit(log: bytearray, client_mask: bytes, server_mask: bytes): append the relayed frames the masks "
     "mark (1: type only, 2: whole frame), each after a direction byte, to log"},
    {NULL},
};

/* Append the audited frames of b[0:r] to the log; -1 on error. */
static int
audit_log(Core *c, int client, const unsigned char *b, Py_ssize_t r, int *logged)
{
    const unsigned char *amask = client ? c->calog : c->salog;
    PyObject *log = c->log;
    for (Py_ssize_t pos = 0; pos < r;) {
        uint32_t len = ((uint32_t)b[pos + 1] << 24) | ((uint32_t)b[pos + 2] << 16) | ((uint32_t)b[pos + 3] << 8) | (uint32_t)b[pos + 4];
        Py_ssize_t stop = pos + 1 + (Py_ssize_t)len;
        unsigned char a = amask[b[pos]];
        if (a != AUDIT_NONE) {
            Py_ssize_t at = PyByteArray_GET_SIZE(log);
            Py_ssize_t add = a == AUDIT_FRAME ? 1 + (stop - pos) : 6;
            if (PyByteArray_Resize(log, at + add) < 0)
                return -1;
            char *o = PyByteArray_AS_STRING(log) + at;
            o[0] = client ? 'c' : 's';
            if (a == AUDIT_FRAME) {
                memcpy(o + 1, b + pos, (size_t)(stop - pos));
            } else {
                o[1] = (char)b[pos];
                o[2] = 0; o[3] = 0; o[4] = 0; o[5] = 4;
            }
            *logged = 1;
        }
        pos = stop;
    }
    return 0;
}

static void
Core_dealloc(Core *self)
{
    PyObject_GC_UnTrack(self);
    Core_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Core_get_txn_status(Core *self, void *closure)
{
    return PyBytes_FromStringAndSize(&self->txn_status, 1);
}

static int
Core_set_txn_status(Core *self, PyObject *value, void *closure)
{
    if (value == NULL || !PyBytes_Check(value) || PyBytes_GET_SIZE(value) != 1) {
        PyErr_SetString(PyExc_TypeError, "txn_status must be one byte");
        return -1;
    }
    self->txn_status = PyBytes_AS_STRING(value)[0];
    return 0;
}

static PyMemberDef Core_members[] = {
    {"rfq_sent", T_LONGLONG, offsetof(Core, rfq_sent), 0, "RFQ-producing client messages relayed"},
    {"rfq_received", T_LONGLONG, offsetof(Core, rfq_received), 0, "ReadyForQuery frames relayed"},
    {"syncs_since_execute", T_LONGLONG, offsetof(Core, syncs_since_execute), 0, NULL},
    {"copy_base", T_LONGLONG, offsetof(Core, copy_base), 0, "replies owed before the last Query/Execute"},
    {"last_was_error", T_BOOL, offsetof(Core, last_was_error), 0, "last server frame an ErrorResponse"},
    {"c_fast", T_BOOL, offsetof(Core, c_fast), 0, "client reads may take the C path"},
    {"s_fast", T_BOOL, offsetof(Core, s_fast), 0, "server reads may take the C path"},
    {"audit_lost", T_BOOL, offsetof(Core, audit_lost), 0, "the audit log could not take a frame"},
    {"gate", T_OBJECT, offsetof(Core, gate), 0,
     "gate(sql: bytes) -> bool: True lets a Query through the C path; False (or an exception) hands the "
     "read to Python, which decides again. It must have no side effects."},
    {NULL},
};

static PyGetSetDef Core_getset[] = {
    {"txn_status", (getter)Core_get_txn_status, (setter)Core_set_txn_status, "b'I', b'T' or b'E'", NULL},
    {NULL},
};

static PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pgjit.gateway._relaycore.Core",
    .tp_basicsize = sizeof(Core),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = (traverseproc)Core_traverse,
    .tp_clear = (inquiry)Core_clear,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Core_init,
    .tp_dealloc = (destructor)Core_dealloc,
    .tp_members = Core_members,
    .tp_methods = Core_methods,
    .tp_getset = Core_getset,
    .tp_doc = "One relayed session's sockets, buffers and ReadyForQuery counters.",
};

/* The length word of the frame whose type byte is at p. */
static inline uint32_t
frame_len(const unsigned char *p)
{
    return ((uint32_t)p[1] << 24) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 8) | (uint32_t)p[4];
}

/* Relay one readable event if it qualifies, reading into b (cap bytes).
 * Returns 1 when fully handled, 0 with *n and *sent set when Python must
 * take over. */
static int
relay_event(Core *c, int fd, uint32_t ev, unsigned char *b, Py_ssize_t cap, Py_ssize_t *n, Py_ssize_t *sent, int *logged)
{
    *n = -1;
    *sent = -1;
    if ((ev & EPOLLOUT) || !(ev & (EPOLLIN | EPOLLERR | EPOLLHUP)))
        return 0;
    int client = fd == c->cfd;
    if (!client && fd != c->ufd)
        return 0;
    if (!(client ? c->c_fast : c->s_fast))
        return 0;
    ssize_t r = recv(fd, b, (size_t)cap, MSG_DONTWAIT);
    if (r < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return 1; /* nothing there after all (level-triggered: it will come back) */
        *n = 0;       /* a reset reads as the end of the stream, as in Python */
        return 0;
    }
    *n = r;
    if (r == 0)
        return 0;

    const unsigned char *mask = client ? c->cmask : c->smask;
    unsigned long long max = client ? c->cmax : c->smax;
    Py_ssize_t pos = 0;
    int gated = 0;
    while (r - pos >= 5) {
        uint32_t len = frame_len(b + pos);
        if (len < 4 || (unsigned long long)len > max)
            return 0;
        Py_ssize_t stop = pos + 1 + (Py_ssize_t)len;
        if (stop > r)
            return 0;
        unsigned char code = mask[b[pos]];
        if (code == PYTHON || (code == S_READY && len != 5))
            return 0;
        if (code == C_GATED || code == C_GATED_PARSE) {
            if (len < 5 || c->gate == NULL || c->gate == Py_None)
                return 0;
            gated = 1;
        }
        pos = stop;
    }
    if (pos != r)
        return 0;

    /* Queries of a gated session: all must be allowed, or Python takes the
     * read (and decides again, so the callback must not have side effects). */
    for (pos = 0; gated && pos < r;) {
        uint32_t len = frame_len(b + pos);
        unsigned char code = mask[b[pos]];
        const unsigned char *sql_at = b + pos + 5;
        Py_ssize_t sql_len = (Py_ssize_t)len - 5; /* a Query: its body but the final NUL */
        if (code == C_GATED_PARSE) {
            /* name NUL query NUL ...: only the unnamed statement (a named one
             * is remembered by Python, for EXECUTE and Bind) */
            const unsigned char *body = b + pos + 5, *end = b + pos + 1 + len;
            const unsigned char *nul = body[0] == 0 ? memchr(body + 1, 0, (size_t)(end - body - 1)) : NULL;
            if (nul == NULL)
                return 0;
            sql_at = body + 1;
            sql_len = nul - sql_at;
        }
        if (code == C_GATED || code == C_GATED_PARSE) {
            PyObject *sql = PyBytes_FromStringAndSize((const char *)sql_at, sql_len);
            if (sql == NULL) {
                PyErr_Clear();
                return 0;
            }
            PyObject *gate = c->gate;
            Py_INCREF(gate);
            PyObject *verdict = PyObject_CallOneArg(gate, sql);
            Py_DECREF(gate);
            Py_DECREF(sql);
            if (verdict != Py_True) {
                if (verdict == NULL)
                    PyErr_Clear();
                Py_XDECREF(verdict);
                return 0;
            }
            Py_DECREF(verdict);
        }
        pos += 1 + (Py_ssize_t)len;
    }

    /* Every frame is whole and ours: count, then write. */
    int last = -1;
    Py_ssize_t last_stop = 0;
    for (pos = 0; pos < r;) {
        uint32_t len = frame_len(b + pos);
        Py_ssize_t stop = pos + 1 + (Py_ssize_t)len;
        switch (mask[b[pos]]) {
        case C_QUERY:
        case C_GATED:
            c->copy_base = c->rfq_sent;
            c->rfq_sent++;
            c->syncs_since_execute = 0;
            break;
        case C_SYNC:
            c->rfq_sent++;
            c->syncs_since_execute++;
            break;
        case C_EXECUTE:
            c->copy_base = c->rfq_sent;
            c->syncs_since_execute = 0;
            break;
        case S_READY:
            c->rfq_received++;
            c->txn_status = (char)b[pos + 5];
            last = S_READY;
            last_stop = stop;
            break;
        case S_ERROR:
            last = S_ERROR;
            last_stop = stop;
            break;
        default:
            break;
        }
        pos = stop;
    }
    if (!client)
        c->last_was_error = last == S_ERROR && last_stop == r;
    if (c->log != NULL && audit_log(c, client, b, r, logged) < 0) {
        PyErr_Clear(); /* out of memory: Python ends the session (reactor, audit_lost) */
        c->audit_lost = 1;
        *logged = 1;
    }

    int dest = client ? c->ufd : c->cfd;
    ssize_t w = send(dest, b, (size_t)r, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (w == r)
        return 1;
    if (w < 0)
        *sent = (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? 0 : -2;
    else
        *sent = w;
    return 0;
}

/* Reads up to this size that are handed to Python are copied out of the
 * shared buffer; a larger one takes the buffer with it. */
#define COPY_MAX (16 * 1024)

/* The n bytes of a read Python takes over, safe from the rest of the batch:
 * a copy when small, else the shared buffer itself, replaced in holder[0]
 * by a fresh one. */
static PyObject *
hand_over(PyObject *holder, PyObject *buf, Py_ssize_t n)
{
    if (n <= COPY_MAX)
        return PyBytes_FromStringAndSize(PyByteArray_AS_STRING(buf), n);
    PyObject *fresh = PyByteArray_FromStringAndSize(NULL, PyByteArray_GET_SIZE(buf));
    if (fresh == NULL)
        return NULL;
    Py_INCREF(buf);
    if (PyList_SetItem(holder, 0, fresh) < 0) { /* steals fresh */
        Py_DECREF(buf);
        return NULL;
    }
    return buf;
}

static PyObject *
pump(PyObject *self, PyObject *args)
{
    int epfd, maxevents;
    PyObject *cores, *holder;
    if (!PyArg_ParseTuple(args, "iiO!O!", &epfd, &maxevents, &PyDict_Type, &cores, &PyList_Type, &holder))
        return NULL;
    if (PyList_GET_SIZE(holder) != 1 || !PyByteArray_CheckExact(PyList_GET_ITEM(holder, 0)) ||
        PyByteArray_GET_SIZE(PyList_GET_ITEM(holder, 0)) == 0) {
        PyErr_SetString(PyExc_ValueError, "holder must be [bytearray], not empty");
        return NULL;
    }
    if (maxevents < 1 || maxevents > MAX_EVENTS)
        maxevents = MAX_EVENTS;
    struct epoll_event evs[MAX_EVENTS];
    int ready = epoll_wait(epfd, evs, maxevents, 0);
    if (ready < 0) {
        if (errno != EINTR)
            return PyErr_SetFromErrno(PyExc_OSError);
        ready = 0;
    }
    if (ready == 0)
        Py_RETURN_NONE;
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    for (int i = 0; i < ready; i++) {
        int fd = evs[i].data.fd;
        uint32_t ev = evs[i].events;
        Py_ssize_t n = -1, sent = -1;
        int logged = 0;
        PyObject *data = NULL;
        PyObject *key = PyLong_FromLong(fd);
        if (key == NULL)
            goto error;
        PyObject *core = PyDict_GetItemWithError(cores, key); /* borrowed */
        Py_DECREF(key);
        if (core == NULL && PyErr_Occurred())
            goto error;
        if (core != NULL && Py_IS_TYPE(core, &CoreType)) {
            PyObject *buf = PyList_GET_ITEM(holder, 0);
            Py_INCREF(buf); /* the gate callback runs Python code */
            Py_INCREF(core);
            int done = relay_event((Core *)core, fd, ev, (unsigned char *)PyByteArray_AS_STRING(buf),
                                   PyByteArray_GET_SIZE(buf), &n, &sent, &logged);
            if (!done && n > 0 && sent == -1 && fd == ((Core *)core)->ufd)
                /* A server read left for Python may end the session (a
                 * ParameterStatus, pgjit.gateway.lexstate): no client read of this
                 * batch goes upstream before Python has seen it. Python
                 * sets c_fast again once it has. */
                ((Core *)core)->c_fast = 0;
            Py_DECREF(core);
            if (done && !logged) {
                Py_DECREF(buf);
                continue;
            }
            if (done) { /* relayed, and frames logged for the audit: Python records them */
                n = -3;
                sent = -1;
            }
            if (n > 0 && sent == -1)
                data = hand_over(holder, buf, n);
            else if (sent >= 0) /* what the write left, always a copy: it waits for EPOLLOUT */
                data = PyBytes_FromStringAndSize(PyByteArray_AS_STRING(buf) + sent, n - sent);
            Py_DECREF(buf);
            if (((n > 0 && sent == -1) || sent >= 0) && data == NULL)
                goto error;
        }
        PyObject *t = Py_BuildValue("(iInnN)", fd, (unsigned int)ev, n, sent, data ? data : Py_NewRef(Py_None));
        if (t == NULL || PyList_Append(out, t) < 0) {
            Py_XDECREF(t);
            goto error;
        }
        Py_DECREF(t);
    }
    return out;

error:
    Py_DECREF(out);
    return NULL;
}

/* Block until the epoll instance has an event or timeout_us passes, with the
 * GIL released (the audit writer's thread runs meanwhile). The reactor calls
 * this between pumps for a short while after traffic, instead of going back
 * to trio for every read: a trio wakeup costs more than the round trip it
 * waits for. True when an event is ready. */
static PyObject *
wait_ready(PyObject *self, PyObject *args)
{
    int epfd;
    long long timeout_us;
    if (!PyArg_ParseTuple(args, "iL", &epfd, &timeout_us))
        return NULL;
    if (timeout_us < 0)
        timeout_us = 0;
    struct pollfd p = {.fd = epfd, .events = POLLIN, .revents = 0};
    struct timespec ts = {(time_t)(timeout_us / 1000000), (long)(timeout_us % 1000000) * 1000};
    int r;
    Py_BEGIN_ALLOW_THREADS
    r = ppoll(&p, 1, &ts, NULL);
    Py_END_ALLOW_THREADS
    if (r < 0) {
        if (errno == EINTR)
            Py_RETURN_FALSE; /* a signal: back to trio, which handles it */
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyBool_FromLong(r > 0);
}

static PyMethodDef methods[] = {
    {"wait_ready", wait_ready, METH_VARARGS,
     "wait_ready(epoll_fd, timeout_us) -> bool: block (GIL released) until an event is ready or the time is up"},
    {"pump", pump, METH_VARARGS,
     "pump(epoll_fd, max_events, cores: dict[fd, Core], holder: [bytearray]) -> [(fd, events, n, sent, data), ...]\n"
     "left for Python, or None when no event was ready; holder[0] is the shared receive buffer"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_relaycore", NULL, -1, methods};

PyMODINIT_FUNC
PyInit__relaycore(void)
{
    if (PyType_Ready(&CoreType) < 0)
        return NULL;
    PyObject *mod = PyModule_Create(&module);
    if (mod == NULL)
        return NULL;
    /* The mask codes, for pgjit.gateway.reactor to build masks with. */
    static const struct { const char *name; int value; } codes[] = {
        {"PASS", PASS}, {"C_QUERY", C_QUERY}, {"C_SYNC", C_SYNC}, {"C_EXECUTE", C_EXECUTE},
{"S_READY", S_READY}, {"S_ERROR", S_ERROR}, {"C_GATED", C_GATED},
        {"C_GATED_PARSE", C_GATED_PARSE}, {"PYTHON", PYTHON},
    };
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        if (PyModule_AddIntConstant(mod, codes[i].name, codes[i].value) < 0) {
            Py_DECREF(mod);
            return NULL;
        }
    }
    Py_INCREF(&CoreType);
    if (PyModule_AddObject(mod, "Core", (PyObject *)&CoreType) < 0) {
        Py_DECREF(&CoreType);
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
