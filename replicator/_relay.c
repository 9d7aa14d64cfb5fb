/*
 * The per-row loop of replicator/relay.py, in C, with the GIL released.
 *
 * libpq hands over a COPY TO stream one CopyData message per row; through psycopg's wrapper
 * that costs about a microsecond of Python per row, and holds the GIL while doing it. Here
 * the rows are gathered into a large buffer and passed on to the destination's COPY FROM
 * without the GIL, so relays in several threads run on several cores. Everything else
 * (starting both COPYs, reading their results, errors, aborting) stays in relay.py.
 *
 * We must call the very libpq that psycopg uses: a PGconn from one libpq build passed to
 * another would be undefined behaviour (psycopg-binary bundles its own libpq). So nothing
 * here links against libpq: bind() finds psycopg's own (_libpq_bind.h).
 *
 * Contract with the caller (relay.py): both connections are in COPY OUT / COPY IN state,
 * stay open for the whole call (no other thread closes them; cancelling the source from
 * another thread is fine, libpq's cancel requests are made for that), and only this thread
 * uses them meanwhile. psycopg's notice receivers take the GIL themselves, so a NOTICE
 * parsed by libpq inside this loop is safe.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "_libpq_bind.h"
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <string.h>

typedef struct pg_conn PGconn; /* opaque, as in libpq-fe.h */

static int (*pq_getCopyData)(PGconn *, char **, int);
static int (*pq_putCopyData)(PGconn *, const char *, int);
static int (*pq_flush)(PGconn *);
static int (*pq_consumeInput)(PGconn *);
static int (*pq_socket)(const PGconn *);
static void (*pq_freemem)(void *);
static int bound;

/* Outcomes of pump(), besides a Python exception. relay.py turns them into its errors. */
enum {
    PUMP_DONE = 0,            /* the COPY TO ended (successfully or not: its result says) */
    PUMP_SOURCE_RECEIVE = 1,  /* PQgetCopyData returned -2 */
    PUMP_SOURCE_CONSUME = 2,  /* PQconsumeInput failed on the source */
    PUMP_DEST_SEND = 3,       /* PQputCopyData returned -1 */
    PUMP_DEST_FLUSH = 4,      /* PQflush returned -1 */
    PUMP_DEST_CONSUME = 5,    /* PQconsumeInput failed on the destination while flushing */
};

#define PYTHON_ERROR (-1) /* a Python exception is set (signal handler, progress callback, OS error) */

static PyObject *
relay_bind(PyObject *self, PyObject *args)
{
    const char *path;
    int expected;
    if (!PyArg_ParseTuple(args, "si:bind", &path, &expected))
        return NULL;
    /* Resolve everything first: a failed bind() leaves an earlier successful one in place. */
    const char *names[] = {"PQgetCopyData", "PQputCopyData", "PQflush",     "PQconsumeInput",
                           "PQsocket",      "PQfreemem",     "PQlibVersion"};
    void *found[sizeof(names) / sizeof(names[0])];
    PyObject *result = find_psycopg_libpq(path, expected, names, found, sizeof(names) / sizeof(names[0]), 6);
    if (result == NULL)
        return NULL;
    pq_getCopyData = (int (*)(PGconn *, char **, int))found[0];
    pq_putCopyData = (int (*)(PGconn *, const char *, int))found[1];
    pq_flush = (int (*)(PGconn *))found[2];
    pq_consumeInput = (int (*)(PGconn *))found[3];
    pq_socket = (int (*)(const PGconn *))found[4];
    pq_freemem = (void (*)(void *))found[5];
    bound = 1;
    return result;
}

typedef struct {
    PGconn *src, *dst;
    PyThreadState *saved; /* this thread's state while the GIL is released */
    PyObject *on_progress;
    int check_signals; /* in the main thread: run Python's signal handlers (Ctrl-C) now and then */
    long long every, rows, total, reported_rows, reported_bytes, pending_rows;
} Pump;

/* Wait for `events` on fd; on EINTR give Python's signal handlers a chance (Ctrl-C). */
static int
wait_fd(Pump *p, int fd, short events, short *revents)
{
    struct pollfd pfd = {.fd = fd, .events = events};
    for (;;) {
        int rv = poll(&pfd, 1, -1);
        if (rv > 0) {
            *revents = pfd.revents;
            return 0;
        }
        if (rv < 0 && errno == EINTR) {
            PyEval_RestoreThread(p->saved);
            int failed = PyErr_CheckSignals();
            p->saved = PyEval_SaveThread();
            if (failed)
                return PYTHON_ERROR;
            continue;
        }
        int err = errno;
        PyEval_RestoreThread(p->saved);
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
        p->saved = PyEval_SaveThread();
        return PYTHON_ERROR;
    }
}

/* Send what libpq has queued for the destination (libpq's documented nonblocking protocol:
 * on 1, wait for read or write readiness; consume input when readable, so a server that is
 * itself blocked sending us something never deadlocks with us). */
static int
flush_dest(Pump *p)
{
    for (;;) {
        int rv = pq_flush(p->dst);
        if (rv == 0)
            return PUMP_DONE;
        if (rv < 0)
            return PUMP_DEST_FLUSH;
        short revents = 0;
        int fd = pq_socket(p->dst);
        if (fd < 0) /* poll() would ignore it and wait forever */
            return PUMP_DEST_FLUSH;
        int w = wait_fd(p, fd, POLLIN | POLLOUT, &revents);
        if (w)
            return w;
        if ((revents & POLLIN) && !pq_consumeInput(p->dst))
            return PUMP_DEST_CONSUME;
    }
}

static int
put_dest(Pump *p, const char *data, int len)
{
    for (;;) {
        int rv = pq_putCopyData(p->dst, data, len);
        if (rv == 1)
            break;
        if (rv < 0)
            return PUMP_DEST_SEND;
        /* 0: nonblocking libpq could not queue it yet; make room by flushing. */
        int f = flush_dest(p);
        if (f)
            return f;
    }
    return flush_dest(p);
}

/* After each send: progress every `every` rows, with the GIL taken just for the call. In the
 * main thread, a signal that arrived while we were not waiting in poll() is acted on here (the
 * Python loop would have run its handler at once; only the main thread runs handlers). */
static int
sent(Pump *p, long long nbytes)
{
    p->total += nbytes;
    if (p->check_signals) {
        PyEval_RestoreThread(p->saved);
        int failed = PyErr_CheckSignals();
        p->saved = PyEval_SaveThread();
        if (failed)
            return PYTHON_ERROR;
    }
    if (p->on_progress == Py_None || p->pending_rows < p->every)
        return 0;
    long long rows = p->pending_rows, bytes = p->total - p->reported_bytes;
    PyEval_RestoreThread(p->saved);
    PyObject *r = PyObject_CallFunction(p->on_progress, "LL", rows, bytes);
    Py_XDECREF(r);
    p->saved = PyEval_SaveThread();
    if (r == NULL)
        return PYTHON_ERROR;
    p->reported_rows += rows;
    p->reported_bytes += bytes;
    p->pending_rows = 0;
    return 0;
}

static int
pump_loop(Pump *p, char *buf, int cap)
{
    int size = 0, rc;
    for (;;) {
        char *row = NULL;
        int n = pq_getCopyData(p->src, &row, 1);
        if (n > 0) {
            rc = 0;
            if (size > 0 && size + n > cap) {
                rc = put_dest(p, buf, size);
                if (!rc)
                    rc = sent(p, size);
                size = 0;
            }
            if (!rc) {
                p->rows++;
                p->pending_rows++;
                if (n >= cap) { /* a large row goes out as it is, without a copy */
                    rc = put_dest(p, row, n);
                    if (!rc)
                        rc = sent(p, n);
                }
                else {
                    memcpy(buf + size, row, n);
                    size += n;
                }
            }
            pq_freemem(row);
            if (rc)
                return rc;
            continue;
        }
        if (n == 0) { /* no complete row buffered: wait for the source */
            short revents = 0;
            int fd = pq_socket(p->src);
            if (fd < 0)
                return PUMP_SOURCE_CONSUME;
            rc = wait_fd(p, fd, POLLIN, &revents);
            if (rc)
                return rc;
            if (!pq_consumeInput(p->src))
                return PUMP_SOURCE_CONSUME;
            continue;
        }
        if (n == -1)
            break;
        return PUMP_SOURCE_RECEIVE;
    }
    if (size > 0) {
        rc = put_dest(p, buf, size);
        if (!rc)
            rc = sent(p, size);
        if (rc)
            return rc;
    }
    return PUMP_DONE;
}

static PyObject *
relay_pump(PyObject *self, PyObject *args)
{
    unsigned long long src, dst;
    PyObject *on_progress;
    long long every;
    Py_ssize_t cap;
    int check_signals;
    if (!PyArg_ParseTuple(args, "KKOLnp:pump", &src, &dst, &on_progress, &every, &cap, &check_signals))
        return NULL;
    if (!bound) {
        PyErr_SetString(PyExc_RuntimeError, "bind() has not found libpq");
        return NULL;
    }
    if (src == 0 || dst == 0) {
        PyErr_SetString(PyExc_ValueError, "a connection is closed");
        return NULL;
    }
    if (on_progress != Py_None && !PyCallable_Check(on_progress)) {
        PyErr_SetString(PyExc_TypeError, "on_progress must be callable or None");
        return NULL;
    }
    if (cap < 1024 || cap > INT_MAX / 2) {
        PyErr_SetString(PyExc_ValueError, "buffer size out of range");
        return NULL;
    }
    char *buf = PyMem_RawMalloc((size_t)cap);
    if (buf == NULL)
        return PyErr_NoMemory();
    Pump p = {
        .src = (PGconn *)(uintptr_t)src,
        .dst = (PGconn *)(uintptr_t)dst,
        .on_progress = on_progress,
        .check_signals = check_signals,
        .every = every > 0 ? every : 1,
    };
    Py_INCREF(on_progress);
    p.saved = PyEval_SaveThread();
    int rc = pump_loop(&p, buf, (int)cap);
    PyEval_RestoreThread(p.saved);
    Py_DECREF(on_progress);
    PyMem_RawFree(buf);
    if (rc == PYTHON_ERROR)
        return NULL;
    return Py_BuildValue("(iLLLL)", rc, p.rows, p.total, p.reported_rows, p.reported_bytes);
}


/*
 * keywalk(): the merge of two ordered key streams, for delta passes (replicator/keywalk.py).
 *
 * Both connections are in COPY OUT state, each sending one table's keys in binary format in the
 * same order: the source's keys (in the pass's snapshot) and the destination's live keys. Each
 * key column has a kind: 'i' a big-endian two's-complement integer (int2/4/8, date, time,
 * timestamp[tz]: same width on both sides), 'b' bytes compared as memcmp then length (text
 * under COLLATE "C", uuid, bytea, bool, oid). The walk reads both streams row by row, without
 * the GIL, and hands every destination key the source does not have ("gone") to on_gone(bytes)
 * as binary COPY tuples, a buffer at a time; source keys the destination lacks ("missing") are
 * only counted. Nothing here says whether either COPY succeeded: the caller reads both results.
 */

enum {
    WALK_DEST_RECEIVE = 6,  /* PQgetCopyData returned -2 on the destination */
    WALK_DEST_CONSUME = 7,  /* PQconsumeInput failed on the destination */
    WALK_SOURCE_ROW = 8,    /* a source row is not a tuple of the expected shape (or a NULL) */
    WALK_DEST_ROW = 9,      /* likewise for a destination row */
};

typedef struct {
    PGconn *conn;
    char *row;       /* the current message (libpq's memory), NULL if none */
    const char *tup; /* the current tuple inside it */
    int len;         /* its length */
    int started;     /* the binary COPY header was seen */
    int ended;
    long long rows;
    int receive_failed, consume_failed, bad_row; /* this side's outcomes */
} Side;

static unsigned int
be32(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;
    return ((unsigned int)u[0] << 24) | ((unsigned int)u[1] << 16) | ((unsigned int)u[2] << 8) | u[3];
}

/* A tuple of exactly nkeys non-NULL fields filling len bytes. */
static int
tuple_ok(const char *t, int len, int nkeys)
{
    if (len < 2 || (((unsigned char)t[0] << 8) | (unsigned char)t[1]) != nkeys)
        return 0;
    long long at = 2;
    for (int k = 0; k < nkeys; k++) {
        if (at + 4 > len)
            return 0;
        unsigned int flen = be32(t + at);
        if (flen > 0x7fffffffu) /* -1: NULL; keys are NOT NULL */
            return 0;
        at += 4 + (long long)flen;
        if (at > len)
            return 0;
    }
    return at == len;
}

static const char COPY_SIGNATURE[11] = {'P', 'G', 'C', 'O', 'P', 'Y', '\n', '\377', '\r', '\n', '\0'};

/* Advance `s` to its next tuple (or to its end). 0, or an outcome. */
static int
side_next(Pump *p, Side *s, int nkeys)
{
    if (s->row != NULL) {
        pq_freemem(s->row);
        s->row = NULL;
    }
    for (;;) {
        char *row = NULL;
        int n = pq_getCopyData(s->conn, &row, 1);
        if (n > 0) {
            const char *t = row;
            int len = n;
            if (!s->started) { /* the header travels with the first tuple */
                s->started = 1;
                if (len < 19 || memcmp(t, COPY_SIGNATURE, 11) != 0 || be32(t + 15) > (unsigned int)(len - 19)) {
                    pq_freemem(row);
                    return s->bad_row;
                }
                int skip = 19 + (int)be32(t + 15);
                t += skip;
                len -= skip;
                if (len == 0) {
                    pq_freemem(row);
                    continue;
                }
            }
            if (len == 2 && (unsigned char)t[0] == 0xff && (unsigned char)t[1] == 0xff) {
                pq_freemem(row); /* the trailer: the end follows */
                continue;
            }
            if (!tuple_ok(t, len, nkeys)) {
                pq_freemem(row);
                return s->bad_row;
            }
            s->row = row;
            s->tup = t;
            s->len = len;
            s->rows++;
            return 0;
        }
        if (n == 0) {
            short revents = 0;
            int fd = pq_socket(s->conn);
            if (fd < 0)
                return s->consume_failed;
            int rc = wait_fd(p, fd, POLLIN, &revents);
            if (rc)
                return rc;
            if (!pq_consumeInput(s->conn))
                return s->consume_failed;
            continue;
        }
        if (n == -1) {
            s->ended = 1;
            return 0;
        }
        return s->receive_failed;
    }
}

/* Order of two tuples of the same shape (checked by tuple_ok), by the key kinds. */
static int
compare_tuples(const char *kinds, int nkeys, const char *a, const char *b)
{
    a += 2;
    b += 2;
    for (int k = 0; k < nkeys; k++) {
        unsigned int la = be32(a), lb = be32(b);
        a += 4;
        b += 4;
        int c = 0;
        if (kinds[k] == 'i' && la == lb && la > 0) {
            unsigned char ca = (unsigned char)a[0] ^ 0x80, cb = (unsigned char)b[0] ^ 0x80;
            c = ca != cb ? (ca < cb ? -1 : 1) : memcmp(a + 1, b + 1, la - 1);
        }
        else {
            c = memcmp(a, b, la < lb ? la : lb);
            if (c == 0 && la != lb)
                c = la < lb ? -1 : 1;
        }
        if (c != 0)
            return c < 0 ? -1 : 1;
        a += la;
        b += lb;
    }
    return 0;
}

typedef struct {
    PyObject *on_gone;
    char *buf;
    int cap, size;
    long long count;
} Gone;

static int
gone_flush(Pump *p, Gone *g, const char *data, int len)
{
    PyEval_RestoreThread(p->saved);
    PyObject *r = PyObject_CallFunction(g->on_gone, "y#", data, (Py_ssize_t)len);
    Py_XDECREF(r);
    p->saved = PyEval_SaveThread();
    return r == NULL ? PYTHON_ERROR : 0;
}

static int
gone_add(Pump *p, Gone *g, const char *t, int len)
{
    g->count++;
    int rc = 0;
    if (g->size > 0 && g->size + len > g->cap) {
        rc = gone_flush(p, g, g->buf, g->size);
        g->size = 0;
    }
    if (rc)
        return rc;
    if (len >= g->cap)
        return gone_flush(p, g, t, len);
    memcpy(g->buf + g->size, t, len);
    g->size += len;
    return 0;
}

static int
walk_loop(Pump *p, Side *src, Side *dst, const char *kinds, int nkeys, Gone *g, long long *missing)
{
    int rc;
    if ((rc = side_next(p, src, nkeys)) || (rc = side_next(p, dst, nkeys)))
        return rc;
    while (!dst->ended) {
        int c = src->ended ? 1 : compare_tuples(kinds, nkeys, src->tup, dst->tup);
        if (c > 0) { /* the destination's key is not at the source */
            if ((rc = gone_add(p, g, dst->tup, dst->len)) || (rc = side_next(p, dst, nkeys)))
                return rc;
            continue;
        }
        if (c < 0)
            (*missing)++;
        else if ((rc = side_next(p, dst, nkeys)))
            return rc;
        if ((rc = side_next(p, src, nkeys)))
            return rc;
        if (p->check_signals) {
            PyEval_RestoreThread(p->saved);
            int failed = PyErr_CheckSignals();
            p->saved = PyEval_SaveThread();
            if (failed)
                return PYTHON_ERROR;
        }
    }
    while (!src->ended) { /* the destination ended: the rest of the source is missing there */
        (*missing)++;
        if ((rc = side_next(p, src, nkeys)))
            return rc;
    }
    if (g->size > 0)
        return gone_flush(p, g, g->buf, g->size);
    return 0;
}

static PyObject *
relay_keywalk(PyObject *self, PyObject *args)
{
    unsigned long long src, dst;
    const char *kinds;
    Py_ssize_t nkeys;
    PyObject *on_gone;
    Py_ssize_t cap;
    int check_signals;
    if (!PyArg_ParseTuple(args, "KKy#Onp:keywalk", &src, &dst, &kinds, &nkeys, &on_gone, &cap, &check_signals))
        return NULL;
    if (!bound) {
        PyErr_SetString(PyExc_RuntimeError, "bind() has not found libpq");
        return NULL;
    }
    if (src == 0 || dst == 0) {
        PyErr_SetString(PyExc_ValueError, "a connection is closed");
        return NULL;
    }
    if (nkeys < 1 || nkeys > 32 || strspn(kinds, "ib") != (size_t)nkeys) {
        PyErr_SetString(PyExc_ValueError, "kinds: 1 to 32 of 'i' and 'b'");
        return NULL;
    }
    if (!PyCallable_Check(on_gone)) {
        PyErr_SetString(PyExc_TypeError, "on_gone must be callable");
        return NULL;
    }
    if (cap < 1024 || cap > INT_MAX / 2) {
        PyErr_SetString(PyExc_ValueError, "buffer size out of range");
        return NULL;
    }
    Gone g = {.on_gone = on_gone, .cap = (int)cap};
    g.buf = PyMem_RawMalloc((size_t)cap);
    if (g.buf == NULL)
        return PyErr_NoMemory();
    Side s = {.conn = (PGconn *)(uintptr_t)src, .receive_failed = PUMP_SOURCE_RECEIVE,
              .consume_failed = PUMP_SOURCE_CONSUME, .bad_row = WALK_SOURCE_ROW};
    Side d = {.conn = (PGconn *)(uintptr_t)dst, .receive_failed = WALK_DEST_RECEIVE,
              .consume_failed = WALK_DEST_CONSUME, .bad_row = WALK_DEST_ROW};
    Pump p = {.check_signals = check_signals};
    long long missing = 0;
    Py_INCREF(on_gone);
    p.saved = PyEval_SaveThread();
    int rc = walk_loop(&p, &s, &d, kinds, (int)nkeys, &g, &missing);
    if (s.row != NULL)
        pq_freemem(s.row);
    if (d.row != NULL)
        pq_freemem(d.row);
    PyEval_RestoreThread(p.saved);
    Py_DECREF(on_gone);
    PyMem_RawFree(g.buf);
    if (rc == PYTHON_ERROR)
        return NULL;
    return Py_BuildValue("(iLLLL)", rc, s.rows, d.rows, g.count, missing);
}

static PyMethodDef relay_methods[] = {
    {"bind", relay_bind, METH_VARARGS,
     "bind(path, expected_version) -> (PQlibVersion(), library file): use the libpq found through\n"
     "an already loaded object, if its version is the expected one; else OSError (nothing changes)."},
    {"pump", relay_pump, METH_VARARGS,
     "pump(src_ptr, dst_ptr, on_progress, progress_every_rows, buffer_bytes, check_signals)\n"
     "-> (outcome, rows, bytes, reported_rows, reported_bytes): move rows until the COPY TO ends."},
    {"keywalk", relay_keywalk, METH_VARARGS,
     "keywalk(src_ptr, dst_ptr, kinds, on_gone, buffer_bytes, check_signals)\n"
     "-> (outcome, source_rows, destination_rows, gone, missing): merge two ordered binary key streams."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef relay_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "replicator._relay",
    .m_doc = "COPY TO -> COPY FROM relay loop in C; see replicator/relay.py.",
    .m_size = -1,
    .m_methods = relay_methods,
};

PyMODINIT_FUNC
PyInit__relay(void)
{
    return PyModule_Create(&relay_module);
}
