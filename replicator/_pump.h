/*
 * The read loop both C decoders run (replicator/_pgoutput.c, replicator/_wal2json.c): CopyData
 * messages taken from psycopg's libpq (bound by bind_libpq, never blocking) while the decoder
 * turns their XLogData into events without leaving C; anything else is handed back to stream.py.
 * Each decoder supplies how one XLogData message is decoded and how its transaction state is
 * written back; the loop, its limits and its outcomes are the same for both.
 */

#ifndef REPLICATOR_PUMP_H
#define REPLICATOR_PUMP_H

#include <Python.h>
#include <stdint.h>

#include "_libpq_bind.h"

/* libpq, as psycopg loaded it (bind_libpq). */
typedef struct pg_conn PGconn; /* opaque, as in libpq-fe.h */
static int (*pq_getCopyData)(PGconn *, char **, int);
static void (*pq_freemem)(void *);

/* bind_libpq(path, expected_version) -> (version, library file); see _libpq_bind.h */
static PyObject *
bind_libpq(PyObject *self, PyObject *args)
{
    const char *path;
    int expected;
    if (!PyArg_ParseTuple(args, "si:bind_libpq", &path, &expected))
        return NULL;
    const char *names[] = {"PQgetCopyData", "PQfreemem", "PQlibVersion"};
    void *found[3];
    PyObject *result = find_psycopg_libpq(path, expected, names, found, 3, 2);
    if (result == NULL)
        return NULL;
    pq_getCopyData = (int (*)(PGconn *, char **, int))found[0];
    pq_freemem = (void (*)(void *))found[1];
    return result;
}

/* Outcomes of pump(); stream.py knows them by these numbers. */
enum {
    PUMP_FULL = 0,     /* out holds max_events events */
    PUMP_COUNT = 1,    /* max_messages messages taken: time for the caller's periodic checks */
    PUMP_NO_DATA = 2,  /* nothing buffered: the caller waits for the socket */
    PUMP_MESSAGE = 3,  /* a message for the caller to handle, returned as bytes */
    PUMP_END = 4,      /* PQgetCopyData returned -1: the server ended the COPY */
    PUMP_FAILED = 5,   /* PQgetCopyData returned -2 */
    PUMP_UNTIL = 6,    /* a transaction ending at or past stop_at was taken */
};

/* What a decoder made of one XLogData message. */
enum { PUMP_BACK = 0, PUMP_DECODED = 1, PUMP_ERROR = -1 };

static uint64_t
be64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

/* The common arguments of pump(): conn_ptr first, then out and the three limits from args[at];
 * configured: whether the module's configure() ran. */
typedef struct {
    PGconn *conn;
    PyObject *out;
    Py_ssize_t max_events, max_messages;
    unsigned long long stop_at;
} PumpArgs;

static int
pump_args(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t expected, Py_ssize_t at, int configured, PumpArgs *a)
{
    if (nargs != expected) {
        PyErr_Format(PyExc_TypeError, "pump() takes %zd arguments", expected);
        return -1;
    }
    if (pq_getCopyData == NULL || !configured) {
        PyErr_SetString(PyExc_RuntimeError, "pump: bind_libpq() and configure() must be called first");
        return -1;
    }
    a->conn = (PGconn *)PyLong_AsVoidPtr(args[0]);
    if (a->conn == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "pump: no connection");
        return -1;
    }
    a->out = args[at];
    a->max_events = PyLong_AsSsize_t(args[at + 1]);
    a->max_messages = PyLong_AsSsize_t(args[at + 2]);
    if ((a->max_events == -1 || a->max_messages == -1) && PyErr_Occurred())
        return -1;
    a->stop_at = PyLong_AsUnsignedLongLong(args[at + 3]);
    if (a->stop_at == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    return 0;
}

/* Decode one XLogData message (data[0] == 'w', n > 25: its 25-byte header, then the plugin's
 * payload) into out: PUMP_DECODED (*ended: no transaction is open after it), PUMP_BACK (for the
 * caller; nothing appended), or PUMP_ERROR (an exception set). */
typedef int (*pump_decode_fn)(void *state, const unsigned char *data, Py_ssize_t n, PyObject *out, int *ended);
/* Write the decoder's transaction state back (0, or -1 with an exception set). */
typedef int (*pump_store_fn)(void *state);

/* -> (outcome, messages taken, highest WAL end seen, position, message bytes or None); position:
 * the XLogData start of the last message after which no transaction was open, 0 if none. The GIL
 * is held throughout (nothing here waits). The state is stored back whatever happens. */
static PyObject *
pump_loop(const PumpArgs *a, void *state, pump_decode_fn decode, pump_store_fn store)
{
    PyObject *out = a->out;
    int outcome = PUMP_COUNT;
    Py_ssize_t taken = 0;
    uint64_t received = 0, position = 0;
    PyObject *message = NULL;
    while (taken < a->max_messages) {
        if (PyList_GET_SIZE(out) >= a->max_events) {
            outcome = PUMP_FULL;
            break;
        }
        char *buf = NULL;
        int n = pq_getCopyData(a->conn, &buf, 1);
        if (n <= 0) {
            outcome = n == 0 ? PUMP_NO_DATA : n == -1 ? PUMP_END : PUMP_FAILED;
            break;
        }
        taken++;
        const unsigned char *data = (const unsigned char *)buf;
        int got = PUMP_BACK, ended = 0;
        if (data[0] == 'w' && n > 25) {
            Py_ssize_t before = PyList_GET_SIZE(out);
            got = decode(state, data, n, out, &ended);
            if (got == PUMP_ERROR && PyList_GET_SIZE(out) > before)
                PyList_SetSlice(out, before, PyList_GET_SIZE(out), NULL);
        }
        if (got == PUMP_ERROR) {
            pq_freemem(buf);
            store(state);
            return NULL;
        }
        if (got == PUMP_BACK) { /* not ours to decode: the caller handles it */
            message = PyBytes_FromStringAndSize(buf, n);
            pq_freemem(buf);
            if (message == NULL) {
                store(state);
                return NULL;
            }
            outcome = PUMP_MESSAGE;
            break;
        }
        uint64_t end = be64(data + 9);
        if (end > received)
            received = end;
        if (ended)
            position = be64(data + 1);
        pq_freemem(buf);
        if (ended && position >= a->stop_at) {
            outcome = PUMP_UNTIL;
            break;
        }
    }
    if (store(state) < 0) {
        Py_XDECREF(message);
        return NULL;
    }
    PyObject *result = Py_BuildValue("(inKKO)", outcome, taken, (unsigned long long)received,
                                     (unsigned long long)position, message ? message : Py_None);
    Py_XDECREF(message);
    return result;
}

#endif
