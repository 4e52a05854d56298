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
 *   (fd, events, -3, -1, None)  relayed and counted (or nothing to relay),
 *                               but Python must look: frames in the audit
 *                               log, or TLS bytes waiting (see relay_event)
 *
 * For a TLS side (set_tls) n, s and rest count plaintext; a write to it that
 * the kernel did not take whole reports s = n: the records left are in the
 * TLS object's write BIO, where Python finds them.
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
#include <dlfcn.h>
#include <link.h>
#include <string.h>
#include "../policy/shape.h"

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

/* ------------------------------------------------------------------ TLS
 *
 * A TLS session's records are read and made here, through the OpenSSL that
 * Python's ssl module loaded, on the very SSL object (and memory BIOs) of the
 * session's ssl.SSLObject (pgjit.gateway.transport.TLSTransport): the
 * handshake, the login and every read Python does stay in Python, and either
 * side can read or write at any moment, as both drive the same object.
 * OpenSSL's functions are found with dlsym in the libssl already loaded (no
 * build-time headers); the SSL and BIO pointers are read from the _ssl
 * objects, whose first fields CPython has kept the same since 3.7, and are
 * checked against each other (the SSL object's app data is its Python
 * object, its BIOs are the MemoryBIOs') before they are used. Where any of
 * it does not hold, set_tls raises and the session keeps the Python path.
 */
#define SSL_ERROR_WANT_READ_ 2
#define BIO_CTRL_INFO_ 3
#define BIO_CTRL_PENDING_ 10

static struct {
    int tried, ok;
    int (*read_ex)(void *, void *, size_t, size_t *);
    int (*write_ex)(void *, const void *, size_t, size_t *);
    int (*get_error)(const void *, int);
    int (*pending)(const void *);
    void *(*get_rbio)(const void *);
    void *(*get_wbio)(const void *);
    void *(*get_ex_data)(const void *, int);
    int (*bio_write)(void *, const void *, int);
    int (*bio_read)(void *, void *, int);
    long (*bio_ctrl)(void *, int, long, void *);
    void (*err_clear)(void);
} ossl;

static int
find_libssl(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    const char *name = info->dlpi_name;
    if (name != NULL && strstr(name, "libssl.so") != NULL) {
        *(const char **)data = name;
        return 1;
    }
    return 0;
}

static int
ossl_load(void)
{
    if (ossl.tried)
        return ossl.ok;
    ossl.tried = 1;
    const char *path = NULL;
    dl_iterate_phdr(find_libssl, &path);
    if (path == NULL)
        return 0;
    void *h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    if (h == NULL)
        return 0;
#define SYM(field, name) if ((*(void **)&ossl.field = dlsym(h, name)) == NULL) return 0
    SYM(read_ex, "SSL_read_ex");
    SYM(write_ex, "SSL_write_ex");
    SYM(get_error, "SSL_get_error");
    SYM(pending, "SSL_pending");
    SYM(get_rbio, "SSL_get_rbio");
    SYM(get_wbio, "SSL_get_wbio");
    SYM(get_ex_data, "SSL_get_ex_data");
    SYM(bio_write, "BIO_write");
    SYM(bio_read, "BIO_read");
    SYM(bio_ctrl, "BIO_ctrl");
    SYM(err_clear, "ERR_clear_error");
#undef SYM
    ossl.ok = 1;
    return 1;
}

/* The head of CPython's _ssl._SSLSocket and _ssl.MemoryBIO objects. */
typedef struct { PyObject_HEAD PyObject *socket; void *ssl; } SSLSocketHead;
typedef struct { PyObject_HEAD void *bio; } MemoryBIOHead;

typedef struct {
    void *ssl, *rbio, *wbio; /* NULL: a plain socket */
    PyObject *keep;          /* (sslobj, incoming, outgoing): alive while used */
} Tls;

/* Ciphertext read from a socket, before it goes into the TLS object; also
 * where what the write BIO has sent is read off to. Under the GIL, shared. */
#define CIPHER_MAX (128 * 1024)
static unsigned char cipher[CIPHER_MAX];

/* Send what the write BIO holds; 1 when all went, 0 when some is left
 * (it stays in the BIO, where Python's TLSTransport.flush finds it), -2
 * when the socket is gone. */
static int
tls_flush(Tls *t, int fd)
{
    char *p = NULL; /* a memory BIO's data is one piece: what BIO_read would give next */
    long len = ossl.bio_ctrl(t->wbio, BIO_CTRL_INFO_, 0, &p);
    if (len <= 0 || p == NULL)
        return 1;
    ssize_t s = send(fd, p, (size_t)len, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (s < 0)
        return (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? 0 : -2;
    for (ssize_t left = s; left > 0;) { /* what went, off the BIO */
        int k = ossl.bio_read(t->wbio, cipher, left > CIPHER_MAX ? CIPHER_MAX : (int)left);
        if (k <= 0)
            return -2;
        left -= k;
    }
    return s < len ? 0 : 1;
}

/* Encrypt b[0:n] and send it: as tls_flush (a memory BIO takes any write). */
static int
tls_send(Tls *t, int fd, const unsigned char *b, Py_ssize_t n)
{
    size_t w = 0;
    /* The thread's OpenSSL error queue is empty here: every failure below
     * clears it, as Python's ssl module clears it before each call. */
    if (ossl.write_ex(t->ssl, b, (size_t)n, &w) != 1 || w != (size_t)n) {
        ossl.err_clear();
        return -2;
    }
    return tls_flush(t, fd);
}

/* Plaintext into b[0:cap]: what one read of ciphertext from fd decrypts to.
 * Returns its length; 0 at the end of the stream, a reset, a close_notify or
 * a TLS error (as the Python path reads them); -1 when nothing is there yet
 * (no data, or no whole record). */
static Py_ssize_t
tls_recv(Tls *t, int fd, unsigned char *b, Py_ssize_t cap)
{
    /* What the read decrypts to fits in b: ciphertext is never shorter than
     * its plaintext, and a record left over from before is at most ~16 KiB. */
    Py_ssize_t want = cap - 20 * 1024;
    if (want > CIPHER_MAX)
        want = CIPHER_MAX;
    if (want <= 0)
        return -1;
    ssize_t r = recv(fd, cipher, (size_t)want, MSG_DONTWAIT);
    if (r < 0)
        return (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? -1 : 0;
    if (r == 0)
        return 0;
    if (ossl.bio_write(t->rbio, cipher, (int)r) != (int)r) {
        ossl.err_clear();
        return 0;
    }
    Py_ssize_t total = 0;
    while (total < cap) {
        size_t got = 0;
        if (ossl.read_ex(t->ssl, b + total, (size_t)(cap - total), &got) == 1) {
            total += (Py_ssize_t)got;
            /* OpenSSL reads a record at a time from the BIO: when it is
             * empty and nothing decrypted is left, another call would only
             * say "want read". */
            if (ossl.bio_ctrl(t->rbio, BIO_CTRL_PENDING_, 0, NULL) <= 0 && ossl.pending(t->ssl) <= 0)
                break;
            continue;
        }
        int e = ossl.get_error(t->ssl, 0);
        if (e != SSL_ERROR_WANT_READ_) {
            ossl.err_clear();
            if (total == 0)
                return 0;
        }
        break;
    }
    return total > 0 ? total : -1;
}

static int
tls_unsent(Tls *t)
{
    return ossl.bio_ctrl(t->wbio, BIO_CTRL_PENDING_, 0, NULL) > 0;
}

/* A simple-protocol statement the core relayed and tracks until its
 * ReadyForQuery (see "Statements" below). */
#define TRACK_MAX 32
#define TRACK_TEXT_MAX (1024 * 1024)
typedef struct {
    long long seq, start_ns, at_us, rows;
    Py_ssize_t size, text_len;
    char *text; /* inline, or malloc'd when longer */
    int has_rows, error, copy, sqlstate_len;
    char sqlstate[32];
    char inline_text[160];
} Tracked;

static void
tracked_free(Tracked *t)
{
    if (t->text != t->inline_text)
        free(t->text);
    t->text = NULL;
}

typedef struct {
    PyObject_HEAD
    int cfd, ufd;
    PyObject *gate;        /* gate(sql: bytes) -> bool | 2, for C_GATED frames, or NULL */
    PyObject *gate_shapes; /* dict: shape keys the gate allows every statement of (gate_check), or NULL */
    unsigned long long gate_reused; /* statements let through by gate_shapes */
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
    Tls tls[2]; /* set_tls: [0] the client's side, [1] the server's */
    /* The audit's statement tracker (set_tracker; see "Statements" below). */
    int track;             /* Python says: its statement queue is empty, simple Queries are ours */
    long long seq;         /* the session's last statement number (shared with Python's queue) */
    Tracked fl[TRACK_MAX]; /* in flight, oldest first from fl_head */
    int fl_head, fl_n;
    PyObject *done;        /* bytearray: finished statements' entries, as JSON objects joined by ',', after
                            * 5 bytes kept for the frame's head (take_done) */
    long long done_n, done_at_us; /* how many, and the last one's time */
    PyObject *dirty, *owner; /* owner is appended to dirty when done stops being empty */
    PyObject *fp_cache, *fp_cb; /* shape key -> fingerprint; fingerprint(sql) for the rest */
    PyObject *trailer;     /* the E frame trailer's first items, as JSON (bytes): session, person, target, policy hash */
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
    Py_VISIT(self->gate_shapes);
    Py_VISIT(self->log);
    Py_VISIT(self->tls[0].keep);
    Py_VISIT(self->tls[1].keep);
    Py_VISIT(self->done);
    Py_VISIT(self->dirty);
    Py_VISIT(self->owner);
    Py_VISIT(self->fp_cache);
    Py_VISIT(self->fp_cb);
    Py_VISIT(self->trailer);
    return 0;
}

static int
Core_clear(Core *self)
{
    Py_CLEAR(self->gate);
    Py_CLEAR(self->gate_shapes);
    Py_CLEAR(self->log);
    for (int i = 0; i < 2; i++) {
        self->tls[i].ssl = self->tls[i].rbio = self->tls[i].wbio = NULL;
        Py_CLEAR(self->tls[i].keep);
    }
    Py_CLEAR(self->done);
    Py_CLEAR(self->dirty);
    Py_CLEAR(self->owner);
    Py_CLEAR(self->fp_cache);
    Py_CLEAR(self->fp_cb);
    Py_CLEAR(self->trailer);
    return 0;
}

static PyObject *
Core_set_tls(Core *self, PyObject *args)
{
    int side;
    PyObject *sslobj, *in, *out;
    if (!PyArg_ParseTuple(args, "iOOO", &side, &sslobj, &in, &out))
        return NULL;
    if (side != 0 && side != 1) {
        PyErr_SetString(PyExc_ValueError, "side must be 0 (client) or 1 (server)");
        return NULL;
    }
#if PY_VERSION_HEX < 0x03070000 || PY_VERSION_HEX >= 0x030E0000
    PyErr_SetString(PyExc_RuntimeError, "TLS in the C core is checked on CPython 3.7-3.13 only");
    return NULL;
#endif
    if (strcmp(Py_TYPE(sslobj)->tp_name, "_ssl._SSLSocket") != 0 ||
        strcmp(Py_TYPE(in)->tp_name, "_ssl.MemoryBIO") != 0 || strcmp(Py_TYPE(out)->tp_name, "_ssl.MemoryBIO") != 0 ||
        Py_TYPE(sslobj)->tp_basicsize < (Py_ssize_t)sizeof(SSLSocketHead) ||
        Py_TYPE(in)->tp_basicsize < (Py_ssize_t)sizeof(MemoryBIOHead)) {
        PyErr_SetString(PyExc_TypeError, "set_tls takes an _ssl._SSLSocket and its two _ssl.MemoryBIO");
        return NULL;
    }
    if (!ossl_load()) {
        PyErr_SetString(PyExc_RuntimeError, "the OpenSSL Python loaded (libssl) was not found");
        return NULL;
    }
    void *ssl = ((SSLSocketHead *)sslobj)->ssl;
    void *rbio = ((MemoryBIOHead *)in)->bio, *wbio = ((MemoryBIOHead *)out)->bio;
    if (ssl == NULL || rbio == NULL || wbio == NULL || ossl.get_ex_data(ssl, 0) != (void *)sslobj ||
        ossl.get_rbio(ssl) != rbio || ossl.get_wbio(ssl) != wbio) {
        PyErr_SetString(PyExc_RuntimeError, "the _ssl objects do not have the layout this module knows");
        return NULL;
    }
    PyObject *keep = PyTuple_Pack(3, sslobj, in, out);
    if (keep == NULL)
        return NULL;
    Tls *t = &self->tls[side];
    Py_XSETREF(t->keep, keep);
    t->ssl = ssl;
    t->rbio = rbio;
    t->wbio = wbio;
    Py_RETURN_NONE;
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

/* The length word of the frame whose type byte is at p. */
static inline uint32_t
frame_len(const unsigned char *p)
{
    return ((uint32_t)p[1] << 24) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 8) | (uint32_t)p[4];
}

/* ------------------------------------------------------------ The gate
 *
 * A gated session's Queries (and unnamed Parses) go upstream on this path
 * only when the gate callback (pgjit.gateway.relay.Relay.gate_allows) says
 * True. It may say ALLOW_SHAPE (2) instead: every statement with this one's
 * shape key (shape.h: the text with its literals replaced by "?", where that
 * is exact) gets the same answer for this session. The core then keeps the
 * key in gate_shapes (pgjit.policy.gate.ShapeVerdicts, which Python empties
 * whenever the answers may change: a new catalog, DDL, approvals) and lets
 * the next statement of that shape through without calling into Python.
 * Bounded: keys of at most GATE_SHAPE_MAX bytes, GATE_SHAPES_MAX of them. */

#define GATE_SHAPE_MAX 4096
#define GATE_SHAPES_MAX 128

/* May sql go upstream? 1 yes, 0 no (Python takes the read and decides). */
static int
gate_check(Core *c, const unsigned char *sql_at, Py_ssize_t sql_len)
{
    PyObject *key = NULL, *shapes = c->gate_shapes;
    if (shapes != NULL && PyDict_Check(shapes) && sql_len <= GATE_SHAPE_MAX) {
        unsigned char kb[GATE_SHAPE_MAX];
        ssize_t k = shape_into(sql_at, sql_len, kb);
        if (k >= 0) {
            key = PyBytes_FromStringAndSize((const char *)kb, k);
            if (key == NULL) {
                PyErr_Clear();
                return 0;
            }
            PyObject *hit = PyDict_GetItemWithError(shapes, key); /* borrowed */
            if (hit != NULL) {
                Py_DECREF(key);
                c->gate_reused++;
                return 1;
            }
            if (PyErr_Occurred()) {
                PyErr_Clear();
                Py_DECREF(key);
                return 0;
            }
        }
    }
    PyObject *sql = PyBytes_FromStringAndSize((const char *)sql_at, sql_len);
    if (sql == NULL) {
        PyErr_Clear();
        Py_XDECREF(key);
        return 0;
    }
    /* The callback runs Python code, which may replace gate and gate_shapes. */
    PyObject *gate = Py_NewRef(c->gate);
    Py_XINCREF(shapes);
    PyObject *verdict = PyObject_CallOneArg(gate, sql);
    Py_DECREF(gate);
    Py_DECREF(sql);
    int ok = verdict == Py_True;
    if (verdict != NULL && !ok && PyLong_CheckExact(verdict)) {
        long v = PyLong_AsLong(verdict);
        ok = v == 2;
        if (ok && key != NULL && shapes == c->gate_shapes && PyDict_GET_SIZE(shapes) < GATE_SHAPES_MAX &&
            PyDict_SetItem(shapes, key, Py_True) < 0)
            ok = 0;
    }
    if (verdict == NULL || PyErr_Occurred())
        PyErr_Clear();
    Py_XDECREF(verdict);
    Py_XDECREF(shapes);
    Py_XDECREF(key);
    return ok;
}

/* ------------------------------------------------------------ Statements
 *
 * An audited session's statements are pgjit.gateway.statements.Statement
 * objects in Python's StatementQueue, which the log above feeds. For the
 * commonest traffic, simple-protocol Queries and their replies, the core
 * keeps the queue itself instead, while Python says it may (track: its own
 * queue is empty): each Query it relays becomes a Tracked entry (its text
 * copied, its start and wall-clock time taken as it goes upstream), the
 * server's replies complete it (CommandComplete: rows; ErrorResponse: the
 * SQLSTATE; CopyOut/CopyBoth: a COPY), and its ReadyForQuery finishes it:
 * the core writes the statement's audit entry, the JSON object
 * pgjit.audit.writer would make of its statement and result records (less
 * the policy hash, which its statements record holds once), with the same
 * keys in the same (sorted) order and the same escapes (json.dumps,
 * ensure_ascii=False), to `done`. Python takes what is done once per slice
 * (take_done), as one frame for the audit writer process, and queues it as
 * it is: a statement costs no Python object on the way, and the gateway's
 * threads neither decode nor encode it. The entry's bytes are what
 * the hash chain covers: tests hold them equal to Python's for the same
 * statement (tests/test_audit_tracker.py).
 *
 * Anything the tracker does not model exactly — any other audited client
 * message (extended protocol, COPY data), a text that is not UTF-8 or is
 * large, more than TRACK_MAX in flight, a reply it cannot read exactly —
 * turns tracking off at that frame: the frame and all after it go to the
 * log, and Python takes the entries still in flight into its own queue
 * first (reclaim), so the two together saw every frame once, in order. */

typedef struct {
    char *p;
    size_t n, cap;
} Out;

static Out out_buf; /* the entry being written (under the GIL) */

#define FRAME_HEAD 5 /* an audit writer frame's type byte and 4-byte length */

static int
out_room(Out *o, size_t more)
{
    if (o->n + more <= o->cap)
        return 0;
    size_t cap = o->cap ? o->cap : 1024;
    while (cap < o->n + more)
        cap *= 2;
    char *p = realloc(o->p, cap);
    if (p == NULL)
        return -1;
    o->p = p;
    o->cap = cap;
    return 0;
}

static int
out_put(Out *o, const char *s, size_t n)
{
    if (out_room(o, n) < 0)
        return -1;
    memcpy(o->p + o->n, s, n);
    o->n += n;
    return 0;
}

#define OUT_LIT(o, lit) out_put((o), (lit), sizeof(lit) - 1)

static int
out_ll(Out *o, long long v)
{
    char tmp[24];
    int k = sizeof tmp;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        tmp[--k] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        tmp[--k] = '-';
    return out_put(o, tmp + k, sizeof tmp - (size_t)k);
}

/* us / 1000 as Python's repr(float) writes it: for any value below 10**15
 * (31 years of microseconds) the shortest decimal that round-trips is the
 * three-decimal one without its trailing zeros (a decimal of 15 digits or
 * fewer is the only one of that length naming its double), at least one
 * digit after the point, never an exponent (repr uses one from 1e16 on). */
static int
out_ms(Out *o, long long us)
{
    if (us < 0 || us >= 1000000000000000LL) {
        char *r = PyOS_double_to_string((double)us / 1000.0, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
        if (r == NULL)
            return -1;
        int bad = out_put(o, r, strlen(r));
        PyMem_Free(r);
        return bad;
    }
    if (out_ll(o, us / 1000) < 0)
        return -1;
    int frac = (int)(us % 1000);
    char d[4] = {'.', (char)('0' + frac / 100), (char)('0' + frac / 10 % 10), (char)('0' + frac % 10)};
    size_t k = 4;
    while (k > 2 && d[k - 1] == '0')
        k--;
    return out_put(o, d, k);
}

/* b[0:n] (UTF-8) as a JSON string, as json.dumps(ensure_ascii=False) writes it. */
static int
out_json_str(Out *o, const unsigned char *b, Py_ssize_t n)
{
    static const char hex[] = "0123456789abcdef";
    if (out_room(o, (size_t)n * 6 + 2) < 0)
        return -1;
    char *w = o->p + o->n;
    *w++ = '"';
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = b[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            *w++ = (char)c;
            continue;
        }
        *w++ = '\\';
        switch (c) {
        case '"': *w++ = '"'; break;
        case '\\': *w++ = '\\'; break;
        case '\n': *w++ = 'n'; break;
        case '\r': *w++ = 'r'; break;
        case '\t': *w++ = 't'; break;
        case '\b': *w++ = 'b'; break;
        case '\f': *w++ = 'f'; break;
        default:
            *w++ = 'u'; *w++ = '0'; *w++ = '0';
            *w++ = hex[c >> 4]; *w++ = hex[c & 15];
        }
    }
    *w++ = '"';
    o->n = (size_t)(w - o->p);
    return 0;
}

/* Whether b[0:n] is UTF-8 as Python's strict decoder takes it (no
 * surrogates, no overlong forms, nothing above U+10FFFF). */
static int
utf8_ok(const unsigned char *s, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
        } else if (c >= 0xC2 && c <= 0xDF) {
            if (i + 1 >= n || (s[i + 1] & 0xC0) != 0x80)
                return 0;
            i += 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            if (i + 2 >= n || (s[i + 1] & 0xC0) != 0x80 || (s[i + 2] & 0xC0) != 0x80 ||
                (c == 0xE0 && s[i + 1] < 0xA0) || (c == 0xED && s[i + 1] > 0x9F))
                return 0;
            i += 3;
        } else if (c >= 0xF0 && c <= 0xF4) {
            if (i + 3 >= n || (s[i + 1] & 0xC0) != 0x80 || (s[i + 2] & 0xC0) != 0x80 || (s[i + 3] & 0xC0) != 0x80 ||
                (c == 0xF0 && s[i + 1] < 0x90) || (c == 0xF4 && s[i + 1] > 0x8F))
                return 0;
            i += 4;
        } else {
            return 0;
        }
    }
    return 1;
}

static long long
mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static long long
wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

/* The records' time format (pgjit.audit.writer.iso_utc_us), as a JSON
 * string: the date and time of day are made once a second. */
static int
out_iso(Out *o, long long us)
{
    static long long sec = -1;
    static char day[24];
    static size_t day_len;
    long long s = us / 1000000;
    if (s != sec) {
        time_t t = (time_t)s;
        struct tm tm;
        gmtime_r(&t, &tm);
        day_len = strftime(day, sizeof day, "%Y-%m-%dT%H:%M:%S", &tm);
        sec = s;
    }
    char tmp[36];
    tmp[0] = '"';
    memcpy(tmp + 1, day, day_len);
    char *w = tmp + 1 + day_len;
    *w++ = '.';
    long long frac = us % 1000000;
    for (int i = 5; i >= 0; i--) {
        w[i] = (char)('0' + frac % 10);
        frac /= 10;
    }
    w += 6;
    *w++ = 'Z';
    *w++ = '"';
    return out_put(o, tmp, (size_t)(w - tmp));
}

/* Command tags whose last number is the rows returned or affected
 * (pgjit.gateway.statements._ROW_TAGS). */
static int
row_tag(const unsigned char *w, Py_ssize_t n)
{
    static const char *tags[] = {"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "COPY", "FETCH", "MOVE"};
    for (size_t i = 0; i < sizeof tags / sizeof tags[0]; i++)
        if ((Py_ssize_t)strlen(tags[i]) == n && memcmp(tags[i], w, (size_t)n) == 0)
            return 1;
    return 0;
}

static int
py_space(unsigned char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f); /* str.split() on ASCII */
}

/* A CommandComplete for the head statement: its rows, as Statement.rows
 * adds them up. 0 when the tag is not one the tracker reads exactly. */
static int
track_tag(Tracked *t, const unsigned char *body, Py_ssize_t n)
{
    const unsigned char *nul = memchr(body, 0, (size_t)n);
    if (nul != NULL)
        n = nul - body;
    for (Py_ssize_t i = 0; i < n; i++)
        if (body[i] >= 0x80)
            return 0;
    Py_ssize_t a = 0;
    while (a < n && py_space(body[a]))
        a++;
    Py_ssize_t b = a;
    while (b < n && !py_space(body[b]))
        b++;
    if (a == b || !row_tag(body + a, b - a))
        return 1; /* no rows said */
    Py_ssize_t e = n;
    while (e > 0 && py_space(body[e - 1]))
        e--;
    Py_ssize_t s = e;
    while (s > 0 && !py_space(body[s - 1]))
        s--;
    if (s == e)
        return 1;
    for (Py_ssize_t i = s; i < e; i++)
        if (body[i] < '0' || body[i] > '9')
            return 1;
    if (e - s > 18)
        return 0; /* Python's int has no bound; this does */
    long long v = 0;
    for (Py_ssize_t i = s; i < e; i++)
        v = v * 10 + (body[i] - '0');
    t->rows = t->has_rows ? t->rows + v : v;
    t->has_rows = 1;
    if (t->rows > 4000000000000000000LL)
        return 0;
    return 1;
}

/* An ErrorResponse's code field (statements._sqlstate): 0 when it is not
 * plain ASCII of a sensible length. */
static int
error_code(const unsigned char *b, Py_ssize_t n, char *into, int *len)
{
    Py_ssize_t pos = 0;
    *len = 0;
    while (pos < n && b[pos] != 0) {
        const unsigned char *end = memchr(b + pos + 1, 0, (size_t)(n - pos - 1 > 0 ? n - pos - 1 : 0));
        if (end == NULL || pos + 1 >= n)
            break;
        if (b[pos] == 'C') {
            Py_ssize_t k = end - (b + pos + 1);
            if (k >= 32)
                return 0;
            for (Py_ssize_t i = 0; i < k; i++)
                if (b[pos + 1 + i] >= 0x80)
                    return 0;
            memcpy(into, b + pos + 1, (size_t)k);
            *len = (int)k;
            return 1;
        }
        pos = (end - b) + 1;
    }
    return 1;
}

/* The fingerprint of t's text (recording.fingerprint_of): str or None (a
 * new reference), NULL on an error. */
static PyObject *
track_fingerprint(Core *c, Tracked *t)
{
    if (t->text_len == 0)
        Py_RETURN_NONE;
    if (t->text_len <= 4096 && c->fp_cache != NULL) {
        unsigned char key[4096];
        ssize_t k = shape_into((const unsigned char *)t->text, t->text_len, key);
        if (k >= 0) {
            PyObject *kb = PyBytes_FromStringAndSize((const char *)key, k);
            if (kb == NULL)
                return NULL;
            PyObject *v = PyDict_GetItemWithError(c->fp_cache, kb); /* borrowed */
            Py_DECREF(kb);
            if (v != NULL)
                return Py_NewRef(v);
            if (PyErr_Occurred())
                return NULL;
        }
    }
    PyObject *sql = PyBytes_FromStringAndSize(t->text, t->text_len);
    if (sql == NULL)
        return NULL;
    PyObject *fp = PyObject_CallOneArg(c->fp_cb, sql);
    Py_DECREF(sql);
    return fp;
}

/* The head statement got its ReadyForQuery: its entry onto done. -1 on an
 * error (no memory: the session ends, audit_lost). */
static int
track_finish(Core *c)
{
    Tracked *t = &c->fl[c->fl_head];
    long long end = mono_ns();
    Out *o = &out_buf;
    o->n = 0;
    PyObject *fp = track_fingerprint(c, t);
    if (fp == NULL)
        goto fail;
    long long dur_ns = end - t->start_ns, us = dur_ns / 1000, rem = dur_ns % 1000;
    if (rem > 500 || (rem == 500 && (us & 1))) /* to the microsecond, half to even, as round() */
        us++;
    int bad = OUT_LIT(o, "{\"at\":") || out_iso(o, t->at_us) || OUT_LIT(o, ",\"bytes\":") || out_ll(o, t->size) ||
              OUT_LIT(o, ",\"decision\":\"allow\",\"duration_ms\":") || out_ms(o, us) ||
              OUT_LIT(o, ",\"fingerprint\":");
    if (!bad) {
        if (fp == Py_None) {
            bad = OUT_LIT(o, "null");
        } else if (PyUnicode_Check(fp)) {
            Py_ssize_t k;
            const char *u = PyUnicode_AsUTF8AndSize(fp, &k);
            bad = u == NULL || out_json_str(o, (const unsigned char *)u, k);
        } else {
            PyErr_SetString(PyExc_TypeError, "a fingerprint is a str or None");
            bad = 1;
        }
    }
    Py_DECREF(fp);
    if (bad)
        goto fail;
    bad = (t->error ? OUT_LIT(o, ",\"outcome\":\"error\"") : OUT_LIT(o, ",\"outcome\":\"ok\"")) ||
          /* the protocol as the statement went upstream (a COPY's is the
           * protocol it came in, as Python records it) */
          OUT_LIT(o, ",\"protocol\":\"simple\",\"rows\":") ||
          (t->has_rows ? out_ll(o, t->rows) : OUT_LIT(o, "null")) || OUT_LIT(o, ",\"rule\":null,\"seq\":") ||
          out_ll(o, t->seq) || OUT_LIT(o, ",\"sqlstate\":") ||
          (t->error ? out_json_str(o, (const unsigned char *)t->sqlstate, t->sqlstate_len) : OUT_LIT(o, "null")) ||
          OUT_LIT(o, ",\"text\":") || out_json_str(o, (const unsigned char *)t->text, t->text_len) || OUT_LIT(o, "}");
    if (bad)
        goto fail;
    Py_ssize_t at = PyByteArray_GET_SIZE(c->done);
    Py_ssize_t add = (Py_ssize_t)o->n + (at > 0 ? 1 : FRAME_HEAD);
    if (PyByteArray_Resize(c->done, at + add) < 0)
        goto fail;
    char *w = PyByteArray_AS_STRING(c->done) + at;
    if (at > 0)
        *w++ = ',';
    else
        w += FRAME_HEAD; /* the frame's type and length: take_done writes them */
    memcpy(w, o->p, o->n);
    if (at == 0 && c->dirty != NULL && PyList_Append(c->dirty, c->owner) < 0)
        goto fail;
    c->done_n++;
    c->done_at_us = t->at_us;
    tracked_free(t);
    c->fl_head = (c->fl_head + 1) % TRACK_MAX;
    c->fl_n--;
    return 0;
fail:
    return -1;
}

/* A relayed client Query frame (pos: its type byte): tracked, or 0 when
 * the tracker cannot take it. */
static int
track_query(Core *c, const unsigned char *f, Py_ssize_t frame_size)
{
    const unsigned char *text = f + 5;
    Py_ssize_t n = frame_size - 6; /* the body but its final NUL (as replay_log takes it) */
    if (n < 0 || n > TRACK_TEXT_MAX || c->fl_n >= TRACK_MAX || !utf8_ok(text, n))
        return 0;
    Tracked *t = &c->fl[(c->fl_head + c->fl_n) % TRACK_MAX];
    char *copy = n <= (Py_ssize_t)sizeof t->inline_text ? t->inline_text : malloc((size_t)n);
    if (copy == NULL)
        return 0;
    memcpy(copy, text, (size_t)n);
    t->rows = 0;
    t->has_rows = t->error = t->copy = t->sqlstate_len = 0;
    t->text = copy;
    t->text_len = n;
    t->size = frame_size;
    t->seq = ++c->seq;
    t->start_ns = mono_ns();
    t->at_us = wall_us();
    c->fl_n++;
    return 1;
}

/* A relayed server frame while tracking (StatementQueue.server with only
 * Queries queued): 1 done, 0 when the tracker cannot read it exactly, -1
 * on an error. */
static int
track_server(Core *c, const unsigned char *f, Py_ssize_t frame_size)
{
    if (c->fl_n == 0)
        return 1; /* nothing owed: Python's queue would ignore it too */
    Tracked *t = &c->fl[c->fl_head];
    const unsigned char *body = f + 5;
    Py_ssize_t n = frame_size - 5;
    switch (f[0]) {
    case 'C':
        return track_tag(t, body, n);
    case 'E':
        if (!t->error) {
            char code[32];
            int k;
            if (!error_code(body, n, code, &k))
                return 0;
            memcpy(t->sqlstate, code, (size_t)k);
            t->sqlstate_len = k;
            t->error = 1;
        }
        return 1;
    case 'G':
    case 'H':
    case 'W':
        t->copy = 1;
        return 1;
    case 'Z':
        return track_finish(c) < 0 ? -1 : 1;
    default:
        return 1;
    }
}

/* Append one frame to the log (a direction byte, then the frame, or its
 * type and an empty body); -1 on error. */
static int
log_frame(Core *c, int client, const unsigned char *f, Py_ssize_t frame_size, unsigned char a)
{
    PyObject *log = c->log;
    Py_ssize_t at = PyByteArray_GET_SIZE(log);
    Py_ssize_t add = a == AUDIT_FRAME ? 1 + frame_size : 6;
    if (PyByteArray_Resize(log, at + add) < 0)
        return -1;
    char *o = PyByteArray_AS_STRING(log) + at;
    o[0] = client ? 'c' : 's';
    if (a == AUDIT_FRAME) {
        memcpy(o + 1, f, (size_t)frame_size);
    } else {
        o[1] = (char)f[0];
        o[2] = 0; o[3] = 0; o[4] = 0; o[5] = 4;
    }
    return 0;
}

/* The audited frames of b[0:r]: tracked, or logged for Python (*logged);
 * -1 on error. */
static int
audit_frames(Core *c, int client, const unsigned char *b, Py_ssize_t r, int *logged)
{
    const unsigned char *amask = client ? c->calog : c->salog;
    for (Py_ssize_t pos = 0; pos < r;) {
        Py_ssize_t size = 1 + (Py_ssize_t)frame_len(b + pos);
        unsigned char a = amask[b[pos]];
        if (a != AUDIT_NONE) {
            if (c->track && c->done != NULL) {
                int k = client ? (b[pos] == 'Q' && track_query(c, b + pos, size)) : track_server(c, b + pos, size);
                if (k < 0)
                    return -1;
                if (k > 0) {
                    pos += size;
                    continue;
                }
                c->track = 0; /* from this frame on, Python's (reclaim first) */
            }
            if (log_frame(c, client, b + pos, size, a) < 0)
                return -1;
            *logged = 1;
        }
        pos += size;
    }
    return 0;
}

static PyObject *
Core_set_tracker(Core *self, PyObject *args)
{
    PyObject *done, *dirty, *owner, *fp_cache, *fp_cb, *trailer;
    if (!PyArg_ParseTuple(args, "O!O!OO!OO!", &PyByteArray_Type, &done, &PyList_Type, &dirty, &owner, &PyDict_Type,
                          &fp_cache, &fp_cb, &PyBytes_Type, &trailer))
        return NULL;
    if (self->log == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "set_audit first");
        return NULL;
    }
    Py_XSETREF(self->done, Py_NewRef(done));
    Py_XSETREF(self->dirty, Py_NewRef(dirty));
    Py_XSETREF(self->owner, Py_NewRef(owner));
    Py_XSETREF(self->fp_cache, Py_NewRef(fp_cache));
    Py_XSETREF(self->fp_cb, Py_NewRef(fp_cb));
    if (PyByteArray_GET_SIZE(done) != 0) {
        PyErr_SetString(PyExc_ValueError, "done must be empty");
        return NULL;
    }
    Py_XSETREF(self->trailer, Py_NewRef(trailer));
    Py_RETURN_NONE;
}

/* Tracking off; the statements in flight, for Python's queue. */
static PyObject *
Core_reclaim(Core *self, PyObject *unused)
{
    self->track = 0;
    if (self->fl_n == 0)
        Py_RETURN_NONE;
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    while (self->fl_n > 0) {
        Tracked *t = &self->fl[self->fl_head];
        PyObject *rows = t->has_rows ? PyLong_FromLongLong(t->rows) : Py_NewRef(Py_None);
        PyObject *e = rows == NULL ? NULL
                      : Py_BuildValue("(Ly#nLLiNiz#)", t->seq, t->text, t->text_len, t->size, t->at_us, t->start_ns,
                                      t->copy, rows, t->error, t->error ? t->sqlstate : NULL, (Py_ssize_t)t->sqlstate_len);
        if (e == NULL || PyList_Append(out, e) < 0) {
            Py_XDECREF(e);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(e);
        tracked_free(t);
        self->fl_head = (self->fl_head + 1) % TRACK_MAX;
        self->fl_n--;
    }
    return out;
}

/* The tracker's references let go (the owner refers back to this core),
 * and what it had in flight freed: the session is over. */
static PyObject *
Core_drop_tracker(Core *self, PyObject *unused)
{
    self->track = 0;
    while (self->fl_n > 0) {
        tracked_free(&self->fl[self->fl_head]);
        self->fl_head = (self->fl_head + 1) % TRACK_MAX;
        self->fl_n--;
    }
    Py_CLEAR(self->done);
    Py_CLEAR(self->dirty);
    Py_CLEAR(self->owner);
    Py_CLEAR(self->fp_cache);
    Py_CLEAR(self->fp_cb);
    Py_CLEAR(self->trailer);
    Py_RETURN_NONE;
}

/* What is done, as one frame for the audit writer process
 * (pgjit.audit.process: E), and done empty again: (frame, count), or None.
 * The frame: b"E", its payload's length (4 bytes, big-endian), the payload:
 * the entries (JSON objects joined by ','), b"\n", and the trailer, a JSON
 * list: the trailer's first items (set_tracker), the count, the last
 * entry's time in microseconds. */
static PyObject *
Core_take_done(Core *self, PyObject *unused)
{
    if (self->done == NULL || PyByteArray_GET_SIZE(self->done) == 0)
        Py_RETURN_NONE;
    Out *o = &out_buf;
    o->n = 0;
    if (OUT_LIT(o, "\n[") || out_put(o, PyBytes_AS_STRING(self->trailer), (size_t)PyBytes_GET_SIZE(self->trailer)) ||
        OUT_LIT(o, ",") || out_ll(o, self->done_n) || OUT_LIT(o, ",") || out_ll(o, self->done_at_us) || OUT_LIT(o, "]"))
        return NULL;
    Py_ssize_t at = PyByteArray_GET_SIZE(self->done);
    PyObject *frame = PyBytes_FromStringAndSize(NULL, at + (Py_ssize_t)o->n);
    if (frame == NULL)
        return NULL;
    char *w = PyBytes_AS_STRING(frame);
    memcpy(w, PyByteArray_AS_STRING(self->done), (size_t)at);
    memcpy(w + at, o->p, o->n);
    unsigned long long len = (unsigned long long)(at + (Py_ssize_t)o->n - FRAME_HEAD);
    w[0] = 'E';
    w[1] = (char)(len >> 24); w[2] = (char)(len >> 16); w[3] = (char)(len >> 8); w[4] = (char)len;
    PyObject *res = Py_BuildValue("(NL)", frame, self->done_n);
    if (res == NULL)
        return NULL;
    self->done_n = 0;
    if (PyByteArray_Resize(self->done, 0) < 0) {
        Py_DECREF(res);
        return NULL;
    }
    return res;
}

static PyMethodDef Core_methods[] = {
    {"set_tls", (PyCFunction)Core_set_tls, METH_VARARGS,
     "set_tls(side: 0 client | 1 server, sslobj: ssl.SSLObject._sslobj, incoming: ssl.MemoryBIO, outgoing: "
     "ssl.MemoryBIO): that side's bytes go through this TLS object (RuntimeError or TypeError: they cannot)"},
    {"set_audit", (PyCFunction)Core_set_audit, METH_VARARGS,
     "set_audit(log: bytearray, client_mask: bytes, server_mask: bytes): append the relayed frames the masks "
     "mark (1: type only, 2: whole frame), each after a direction byte, to log"},
    {"set_tracker", (PyCFunction)Core_set_tracker, METH_VARARGS,
     "set_tracker(done: bytearray (empty), dirty: list, owner, fingerprints: dict, fingerprint, trailer: bytes): "
     "track simple Queries while .track is set (after set_audit; see the module's Statements section)"},
    {"reclaim", (PyCFunction)Core_reclaim, METH_NOARGS,
     "reclaim() -> [(seq, text, size, at_us, start_ns, copy, rows, error, sqlstate), ...] | None: tracking off, "
     "and the statements in flight, oldest first, for Python's queue"},
    {"drop_tracker", (PyCFunction)Core_drop_tracker, METH_NOARGS,
     "drop_tracker(): the tracker's references released and what it had in flight dropped (after reclaim "
     "and take_done: the session is over)"},
    {"take_done", (PyCFunction)Core_take_done, METH_NOARGS,
     "take_done() -> (frame: bytes, count) | None: the finished statements' entries, as one E frame for the "
     "audit writer process (pgjit.audit.process)"},
    {NULL},
};

static void
Core_dealloc(Core *self)
{
    PyObject_GC_UnTrack(self);
    Core_clear(self);
    for (int i = 0; i < self->fl_n; i++)
        tracked_free(&self->fl[(self->fl_head + i) % TRACK_MAX]);
    self->fl_n = 0;
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
    {"track", T_BOOL, offsetof(Core, track), 0, "the core tracks simple Queries (set_tracker; Python's queue is empty)"},
    {"seq", T_LONGLONG, offsetof(Core, seq), 0, "the session's last statement number"},
    {"in_flight", T_INT, offsetof(Core, fl_n), READONLY, "statements the tracker has in flight"},
    {"done_count", T_LONGLONG, offsetof(Core, done_n), READONLY,
     "statements the tracker finished whose entries wait in done for take_done"},
    {"gate", T_OBJECT, offsetof(Core, gate), 0,
     "gate(sql: bytes) -> bool: True lets a Query through the C path; False (or an exception) hands the "
     "read to Python, which decides again; 2 lets it through and puts its shape key in gate_shapes. It must "
     "have no side effects."},
    {"gate_shapes", T_OBJECT, offsetof(Core, gate_shapes), 0,
     "dict or None: shape keys whose every Query the gate lets through (the core looks there first)"},
    {"gate_reused", T_ULONGLONG, offsetof(Core, gate_reused), 0, "Queries gate_shapes let through without the gate"},
    {NULL},
};

static PyObject *
Core_get_in_flight_since(Core *self, void *closure)
{
    if (self->fl_n == 0)
        Py_RETURN_NONE;
    return PyLong_FromLongLong(self->fl[self->fl_head].start_ns);
}

static PyGetSetDef Core_getset[] = {
    {"in_flight_since", (getter)Core_get_in_flight_since, NULL,
     "when the oldest statement the tracker has in flight went upstream (CLOCK_MONOTONIC ns), or None", NULL},
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


/* audit_frames, and on an error (no memory) the session ends: Python
 * sees audit_lost. */
static void
audit_or_lose(Core *c, int client, const unsigned char *b, Py_ssize_t r, int *logged)
{
    if (audit_frames(c, client, b, r, logged) < 0) {
        PyErr_Clear();
        c->audit_lost = 1;
        *logged = 1;
    }
}

/* Relay one readable event if it qualifies, reading into b (cap bytes).
 * Returns 1 when fully handled, 0 with *n and *sent set when Python must
 * take over. *logged is set when Python must look at the session even so:
 * frames logged for the audit, or a TLS object holding plaintext or unsent
 * records. */
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
    Tls *src = &c->tls[client ? 0 : 1], *dst = &c->tls[client ? 1 : 0];
    ssize_t r;
    if (src->ssl != NULL) {
        r = tls_recv(src, fd, b, cap);
        /* Records the read made OpenSSL answer (a key update): sent now, or
         * left for Python to wait for writable; plaintext a read left in the
         * TLS object is read by Python (no socket event will announce it). */
        if ((tls_unsent(src) && tls_flush(src, fd) == 0) || ossl.pending(src->ssl) > 0)
            *logged = 1;
        if (r < 0)
            return 1;
    } else {
        r = recv(fd, b, (size_t)cap, MSG_DONTWAIT);
        if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                return 1; /* nothing there after all (level-triggered: it will come back) */
            *n = 0;       /* a reset reads as the end of the stream, as in Python */
            return 0;
        }
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
        if ((code == C_GATED || code == C_GATED_PARSE) && !gate_check(c, sql_at, sql_len))
            return 0;
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
    /* A client's frames are audited before they go upstream (a statement
     * is tracked, or logged, before it runs); the server's after they went
     * to the client, off the round trip's path. */
    if (client && c->log != NULL)
        audit_or_lose(c, 1, b, r, logged);

    int dest = client ? c->ufd : c->cfd;
    int done;
    if (dst->ssl != NULL) {
        /* All the plaintext is taken; ciphertext the kernel did not take
         * stays in the write BIO, and Python waits for writable (sent = n,
         * nothing left of the plaintext). */
        int k = tls_send(dst, dest, b, r);
        done = k == 1;
        if (!done)
            *sent = k == 0 ? r : -2;
    } else {
        ssize_t w = send(dest, b, (size_t)r, MSG_DONTWAIT | MSG_NOSIGNAL);
        done = w == r;
        if (!done)
            *sent = w >= 0 ? w : (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? 0 : -2;
    }
    /* (relayed and counted, whatever the write did: Python sends the rest) */
    if (!client && c->log != NULL)
        audit_or_lose(c, 0, b, r, logged);
    return done;
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

static int
check_holder(PyObject *holder)
{
    if (PyList_GET_SIZE(holder) != 1 || !PyByteArray_CheckExact(PyList_GET_ITEM(holder, 0)) ||
        PyByteArray_GET_SIZE(PyList_GET_ITEM(holder, 0)) == 0) {
        PyErr_SetString(PyExc_ValueError, "holder must be [bytearray], not empty");
        return -1;
    }
    return 0;
}

/* One epoll_wait (not waiting) and its events: *ready is how many there
 * were; the list of what is left for Python (NULL with an exception set,
 * or when nothing is: then *ready may still be > 0). */
static PyObject *
pump_once(int epfd, int maxevents, PyObject *cores, PyObject *holder, int *ready_out, int timeout_ms)
{
    if (maxevents < 1 || maxevents > MAX_EVENTS)
        maxevents = MAX_EVENTS;
    struct epoll_event evs[MAX_EVENTS];
    int ready;
    if (timeout_ms > 0) { /* waiting: with the GIL released (the audit writer's thread runs meanwhile) */
        Py_BEGIN_ALLOW_THREADS
        ready = epoll_wait(epfd, evs, maxevents, timeout_ms);
        Py_END_ALLOW_THREADS
    } else {
        ready = epoll_wait(epfd, evs, maxevents, 0);
    }
    if (ready < 0) {
        if (errno != EINTR) {
            PyErr_SetFromErrno(PyExc_OSError);
            return NULL;
        }
        ready = 0;
    }
    *ready_out = ready;
    PyObject *out = NULL; /* made at the first report */
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
            if (done) { /* relayed; frames logged for the audit, or TLS bytes waiting: Python looks */
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
        if (t == NULL)
            goto error;
        if (out == NULL && (out = PyList_New(0)) == NULL) {
            Py_DECREF(t);
            goto error;
        }
        if (PyList_Append(out, t) < 0) {
            Py_DECREF(t);
            goto error;
        }
        Py_DECREF(t);
    }
    return out;

error:
    Py_XDECREF(out);
    return NULL;
}

static PyObject *
pump(PyObject *self, PyObject *args)
{
    int epfd, maxevents, ready = 0;
    PyObject *cores, *holder;
    if (!PyArg_ParseTuple(args, "iiO!O!", &epfd, &maxevents, &PyDict_Type, &cores, &PyList_Type, &holder))
        return NULL;
    if (check_holder(holder) < 0)
        return NULL;
    PyObject *out = pump_once(epfd, maxevents, cores, holder, &ready, 0);
    if (out != NULL || PyErr_Occurred())
        return out;
    if (ready == 0)
        Py_RETURN_NONE;
    return PyList_New(0);
}

static long long
now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* pump() until it leaves something for Python or budget_us have passed,
 * waiting for events in epoll_wait with the GIL released: the reactor's
 * relaying slice (pgjit.gateway.reactor.Reactor.run) without a trip through
 * the interpreter per event, and one syscall per wakeup. The reports, or
 * None when the time was up (or a signal came: Python handles it) with
 * nothing for Python. epoll_wait counts in milliseconds: the slice may run
 * over by up to one. */
static PyObject *
run_slice(PyObject *self, PyObject *args)
{
    int epfd, maxevents;
    long long budget_us;
    PyObject *cores, *holder;
    if (!PyArg_ParseTuple(args, "iiO!O!L", &epfd, &maxevents, &PyDict_Type, &cores, &PyList_Type, &holder, &budget_us))
        return NULL;
    if (check_holder(holder) < 0)
        return NULL;
    long long end = now_us() + (budget_us > 0 ? budget_us : 0);
    int timeout_ms = 0; /* the first pump does not wait */
    for (;;) {
        int ready = 0;
        errno = 0;
        PyObject *out = pump_once(epfd, maxevents, cores, holder, &ready, timeout_ms);
        if (out != NULL || PyErr_Occurred())
            return out;
        if (ready == 0 && timeout_ms > 0 && errno == EINTR)
            Py_RETURN_NONE; /* a signal */
        long long left = end - now_us();
        if (left <= 0)
            Py_RETURN_NONE;
        timeout_ms = ready > 0 ? 0 : (int)((left + 999) / 1000);
    }
}

static PyMethodDef methods[] = {
    {"run_slice", run_slice, METH_VARARGS,
     "run_slice(epoll_fd, max_events, cores, holder, budget_us) -> [reports] | None: pump until something is "
     "left for Python or the time is up, waiting (GIL released) in between"},
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
