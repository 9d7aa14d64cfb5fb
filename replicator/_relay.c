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

static PyMethodDef relay_methods[] = {
    {"bind", relay_bind, METH_VARARGS,
     "bind(path, expected_version) -> (PQlibVersion(), library file): use the libpq found through\n"
     "an already loaded object, if its version is the expected one; else OSError (nothing changes)."},
    {"pump", relay_pump, METH_VARARGS,
     "pump(src_ptr, dst_ptr, on_progress, progress_every_rows, buffer_bytes, check_signals)\n"
     "-> (outcome, rows, bytes, reported_rows, reported_bytes): move rows until the COPY TO ends."},
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
