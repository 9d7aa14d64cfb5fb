/*
 * The per-row work of replicator/decoding/pgoutput.py, in C.
 *
 * Realtime catch-up decodes every row message of the stream; walking a row's TupleData in
 * Python (a kind byte, a length, the text, for each column) and building its Change event
 * costs several microseconds per row, more than the destination needs to apply it.
 *
 * - row_message(buf, toast): the relation oid and the old and new value tuples of an Insert,
 *   Update or Delete message, exactly as pgoutput.py's pure-Python row_message_py() (same
 *   values, same errors), which remains the fallback when this module is not built.
 * - row_change(buf, relations, lsn, xid, commit_time): the same message as a Change event,
 *   built here as ``object.__new__(Change)`` plus one assignment per field, which is what the
 *   dataclass's __init__ does, without its Python frame. configure() hands over the classes
 *   and markers of replicator.decoding.changes and checks that Change is still the plain
 *   slotted dataclass this expects; pgoutput.py falls back to Python if it is not.
 * - pump(...): the replication stream's read loop for runs of row messages, straight from
 *   libpq. Through psycopg's wrapper each CopyData message costs a Python call, a buffer
 *   object, a memoryview, a slice and a copy before decoding even starts; here consecutive
 *   XLogData messages carrying Begin, Insert, Update, Delete or Commit become events without
 *   leaving C (an OLTP stream is mostly Begin and Commit: a pgbench transaction is six
 *   messages, two of them these, and decoding them in Python cost as much as the rows).
 *   Anything else (Relation, Type, Truncate, keepalives, a message we cannot decode) is handed
 *   back to replicator/source/stream.py, which does what it always did.
 *
 * pump() must call the very libpq psycopg uses (psycopg-binary bundles its own; a PGconn
 * from one build passed to another would be undefined behaviour). So nothing here links
 * against libpq: bind_libpq() finds psycopg's own (_libpq_bind.h, shared with _relay.c).
 *
 * Message formats: https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html
 * Values are text-format (we never start the stream with binary 'true'): str, None for NULL,
 * or the caller's UNCHANGED_TOAST marker for an unchanged TOASTed value.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <structmember.h>

#include "_events.h"
#include "_pump.h"
#include <stdint.h>

static uint32_t
be32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static PyObject *
malformed(const char *what)
{
    PyErr_SetString(PyExc_ValueError, what);
    return NULL;
}

/* TupleData at *pos: a tuple of values; *pos moves past it. NULL with ValueError set if malformed. */
static PyObject *
read_tuple(const unsigned char *buf, Py_ssize_t size, Py_ssize_t *pos, PyObject *toast)
{
    Py_ssize_t p = *pos;
    if (p + 2 > size)
        return malformed("tuple data cut short");
    int16_t count = (int16_t)(((unsigned)buf[p] << 8) | buf[p + 1]);
    p += 2;
    if (count < 0)
        count = 0; /* as range() of a negative count in the Python version: no columns */
    PyObject *values = PyTuple_New(count);
    if (values == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (p >= size) {
            Py_DECREF(values);
            return malformed("tuple data cut short");
        }
        unsigned char kind = buf[p];
        PyObject *v;
        if (kind == 't') {
            if (p + 5 > size) {
                Py_DECREF(values);
                return malformed("tuple data cut short");
            }
            int32_t len = (int32_t)be32(buf + p + 1);
            p += 5;
            if (len < 0 || len > size - p) {
                Py_DECREF(values);
                return malformed("tuple value longer than its message");
            }
            v = PyUnicode_DecodeUTF8((const char *)buf + p, len, "strict");
            if (v == NULL) {
                Py_DECREF(values);
                return NULL; /* UnicodeDecodeError, a ValueError */
            }
            p += len;
        } else if (kind == 'n') {
            v = Py_NewRef(Py_None);
            p += 1;
        } else if (kind == 'u') {
            v = Py_NewRef(toast);
            p += 1;
        } else if (kind == 'b') {
            Py_DECREF(values);
            return malformed("binary tuple data: the stream was started with binary 'true'");
        } else {
            Py_DECREF(values);
            PyErr_Format(PyExc_ValueError, "unknown tuple column kind '%c'", kind);
            return NULL;
        }
        PyTuple_SET_ITEM(values, i, v);
    }
    *pos = p;
    return values;
}

/* An Insert, Update or Delete message: its kind, relation oid, and new references to its old and
 * new value tuples (NULL when the message has none). Returns -1 with ValueError set if malformed. */
static int
parse_row(const unsigned char *buf, Py_ssize_t size, PyObject *toast, char *kind_out, uint32_t *relid,
          PyObject **old_out, PyObject **new_out)
{
    PyObject *old = NULL, *new = NULL;
    Py_ssize_t pos = 6;
    if (size < 6) {
        malformed("row message cut short");
        return -1;
    }
    *relid = be32(buf + 1);
    unsigned char kind = buf[5];
    switch (buf[0]) {
    case 'I':
        if (kind != 'N') {
            malformed("INSERT without a new tuple");
            goto fail;
        }
        if ((new = read_tuple(buf, size, &pos, toast)) == NULL)
            goto fail;
        break;
    case 'U':
        if (kind == 'K' || kind == 'O') {
            if ((old = read_tuple(buf, size, &pos, toast)) == NULL)
                goto fail;
            if (pos >= size) {
                malformed("UPDATE without a new tuple");
                goto fail;
            }
            kind = buf[pos++];
        }
        if (kind != 'N') {
            malformed("UPDATE without a new tuple");
            goto fail;
        }
        if ((new = read_tuple(buf, size, &pos, toast)) == NULL)
            goto fail;
        break;
    case 'D':
        if (kind != 'K' && kind != 'O') {
            malformed("DELETE without an old tuple");
            goto fail;
        }
        if ((old = read_tuple(buf, size, &pos, toast)) == NULL)
            goto fail;
        break;
    default:
        PyErr_Format(PyExc_ValueError, "not a row message: '%c'", buf[0]);
        goto fail;
    }
    *kind_out = (char)buf[0];
    *old_out = old;
    *new_out = new;
    return 0;
fail:
    Py_XDECREF(old);
    Py_XDECREF(new);
    return -1;
}

/* row_message(buf, toast) -> (relation oid, old values or None, new values or None) */
static PyObject *
row_message(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "row_message(buf, toast) takes 2 arguments");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    char kind;
    uint32_t relid;
    PyObject *old, *new, *result = NULL;
    if (parse_row(view.buf, view.len, args[1], &kind, &relid, &old, &new) == 0) {
        result = Py_BuildValue("(kOO)", (unsigned long)relid, old ? old : Py_None, new ? new : Py_None);
        Py_XDECREF(old);
        Py_XDECREF(new);
    }
    PyBuffer_Release(&view);
    return result;
}

/* configure(Change, Lsn, insert, update, delete, UNCHANGED_TOAST, Begin, Commit) */
static PyObject *
configure(PyObject *self, PyObject *args)
{
    PyObject *change, *lsn, *ins, *upd, *del, *toast, *begin, *commit;
    if (!PyArg_ParseTuple(args, "O!O!OOOOO!O!:configure", &PyType_Type, &change, &PyType_Type, &lsn, &ins, &upd,
                          &del, &toast, &PyType_Type, &begin, &PyType_Type, &commit))
        return NULL;
    if (configure_events(change, lsn, ins, upd, del, toast, begin, commit) < 0) /* _events.h */
        return NULL;
    Py_RETURN_NONE;
}

/* A Change of relation rel: the one place row_change() and pump() make their events. */
static PyObject *
new_change(char kind, PyObject *rel, PyObject *new, PyObject *old, unsigned long long lsn_value, PyObject *xid,
           PyObject *commit_time)
{
    PyObject *lsn = make_lsn(lsn_value);
    if (lsn == NULL)
        return NULL;
    PyObject *op = kind == 'I' ? op_insert : kind == 'U' ? op_update : op_delete;
    PyObject *values[N_FIELDS] = {op, rel, new ? new : Py_None, old ? old : Py_None, lsn, xid, commit_time};
    PyObject *change = build(change_type, fields, values, N_FIELDS);
    Py_DECREF(lsn);
    return change;
}

/* A PostgreSQL timestamp (microseconds since 2000-01-01 UTC) as an aware datetime in UTC, as
 * pgoutput.py's pg_time() makes it. Days to a civil date: H. Hinnant's days_from_civil inverse. */
static PyObject *
pg_time(int64_t micros)
{
    int64_t secs = micros / 1000000, us = micros % 1000000;
    if (us < 0) {
        us += 1000000;
        secs -= 1;
    }
    int64_t days = secs / 86400, sod = secs % 86400;
    if (sod < 0) {
        sod += 86400;
        days -= 1;
    }
    int64_t z = days + 10957 + 719468; /* 2000-01-01 is day 10957 since 1970-01-01 */
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t y = yoe + era * 400;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    int64_t d = doy - (153 * mp + 2) / 5 + 1;
    int64_t m = mp < 10 ? mp + 3 : mp - 9;
    if (m <= 2)
        y += 1;
    if (y < 1 || y > 9999) { /* beyond datetime's range: as pg_time() would fail */
        PyErr_SetString(PyExc_OverflowError, "commit timestamp out of range");
        return NULL;
    }
    return PyDateTimeAPI->DateTime_FromDateAndTime((int)y, (int)m, (int)d, (int)(sod / 3600), (int)(sod / 60 % 60),
                                                   (int)(sod % 60), (int)us, PyDateTime_TimeZone_UTC,
                                                   PyDateTimeAPI->DateTimeType);
}

/* pg_time(micros) -> datetime: the C conversion, for tests against pgoutput.pg_time. */
static PyObject *
pg_time_py(PyObject *self, PyObject *arg)
{
    long long micros = PyLong_AsLongLong(arg);
    if (micros == -1 && PyErr_Occurred())
        return NULL;
    return pg_time(micros);
}

/* row_change(buf, relations, lsn, xid, commit_time) -> Change, or None if the relation is unknown */
static PyObject *
row_change(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "row_change(buf, relations, lsn, xid, commit_time) takes 5 arguments");
        return NULL;
    }
    if (change_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "row_change: configure() was not called");
        return NULL;
    }
    if (!PyDict_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "row_change: relations must be a dict");
        return NULL;
    }
    unsigned long long lsn_value = PyLong_AsUnsignedLongLong(args[2]);
    if (lsn_value == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    char kind;
    uint32_t relid;
    PyObject *old = NULL, *new = NULL, *oid = NULL, *result = NULL;
    if (parse_row(view.buf, view.len, unchanged_toast, &kind, &relid, &old, &new) < 0)
        goto done;
    if ((oid = PyLong_FromUnsignedLong(relid)) == NULL)
        goto done;
    PyObject *rel = PyDict_GetItemWithError(args[1], oid); /* borrowed */
    if (rel == NULL) {
        if (!PyErr_Occurred())
            result = Py_NewRef(Py_None);
        goto done;
    }
    result = new_change(kind, rel, new, old, lsn_value, args[3], args[4]);
done:
    Py_XDECREF(oid);
    Py_XDECREF(old);
    Py_XDECREF(new);
    PyBuffer_Release(&view);
    return result;
}

/* A row message (after the 25-byte XLogData header) as a Change; NULL without an error set when
 * it is something to hand back to the caller (not a row, unknown relation, malformed). */
static PyObject *
change_of(const unsigned char *msg, Py_ssize_t size, PyObject *relations, uint64_t lsn_value, PyObject *xid,
          PyObject *commit_time)
{
    char kind;
    uint32_t relid;
    PyObject *old = NULL, *new = NULL, *oid = NULL, *result = NULL;
    if (size < 1 || (msg[0] != 'I' && msg[0] != 'U' && msg[0] != 'D'))
        return NULL;
    if (parse_row(msg, size, unchanged_toast, &kind, &relid, &old, &new) < 0) {
        if (PyErr_ExceptionMatches(PyExc_ValueError))
            PyErr_Clear(); /* the caller decodes it again and reports it properly */
        return NULL;
    }
    if ((oid = PyLong_FromUnsignedLong(relid)) == NULL)
        goto done;
    PyObject *rel = PyDict_GetItemWithError(relations, oid); /* borrowed */
    if (rel == NULL)
        goto done; /* unknown (or an error, which stays set) */
    result = new_change(kind, rel, new, old, lsn_value, xid, commit_time);
done:
    Py_XDECREF(oid);
    Py_XDECREF(old);
    Py_XDECREF(new);
    return result;
}

/* The transaction state pump() reads from and writes back to the decoder (PgOutputDecoder's
 * _xid, _time and in_transaction), as its Python handlers of Begin and Commit keep it. */
typedef struct {
    PyObject *xid;         /* int */
    PyObject *commit_time; /* datetime */
    int in_transaction;
    int changed;
} TxnState;

/* A Begin (msg[0] == 'B') or Commit ('C') message: its event appended to out, state updated.
 * 1 when done, 0 when it is malformed (the caller hands it back: Python reports it), -1 on error. */
static int
transaction_event(const unsigned char *msg, Py_ssize_t size, TxnState *st, PyObject *out)
{
    PyObject *event = NULL;
    if (msg[0] == 'B') {
        if (size < 21)
            return 0;
        uint64_t final_lsn = be64(msg + 1);
        int64_t micros = (int64_t)be64(msg + 9);
        PyObject *xid = PyLong_FromUnsignedLong(be32(msg + 17));
        if (xid == NULL)
            return -1;
        PyObject *when = pg_time(micros);
        if (when == NULL) {
            Py_DECREF(xid);
            if (!PyErr_ExceptionMatches(PyExc_OverflowError))
                return -1;
            PyErr_Clear();
            return 0;
        }
        PyObject *lsn = make_lsn(final_lsn);
        if (lsn == NULL) {
            Py_DECREF(xid);
            Py_DECREF(when);
            return -1;
        }
        PyObject *values[N_BEGIN] = {xid, lsn, when};
        event = build(begin_type, begin_fields, values, N_BEGIN);
        Py_DECREF(lsn);
        if (event == NULL) {
            Py_DECREF(xid);
            Py_DECREF(when);
            return -1;
        }
        Py_SETREF(st->xid, xid);
        Py_SETREF(st->commit_time, when);
        st->in_transaction = 1;
    } else {
        if (size < 26)
            return 0;
        PyObject *commit_lsn = make_lsn(be64(msg + 2));
        PyObject *end_lsn = commit_lsn ? make_lsn(be64(msg + 10)) : NULL;
        if (end_lsn == NULL) {
            Py_XDECREF(commit_lsn);
            return -1;
        }
        PyObject *values[N_COMMIT] = {st->xid, commit_lsn, end_lsn, st->commit_time};
        event = build(commit_type, commit_fields, values, N_COMMIT);
        Py_DECREF(commit_lsn);
        Py_DECREF(end_lsn);
        if (event == NULL)
            return -1;
        st->in_transaction = 0;
    }
    st->changed = 1;
    int failed = PyList_Append(out, event);
    Py_DECREF(event);
    return failed < 0 ? -1 : 1;
}

static int
load_state(PyObject *decoder, TxnState *st)
{
    st->changed = 0;
    st->xid = PyObject_GetAttrString(decoder, "_xid");
    st->commit_time = st->xid ? PyObject_GetAttrString(decoder, "_time") : NULL;
    PyObject *in_txn = st->commit_time ? PyObject_GetAttrString(decoder, "in_transaction") : NULL;
    if (in_txn == NULL) {
        Py_CLEAR(st->xid);
        Py_CLEAR(st->commit_time);
        return -1;
    }
    st->in_transaction = PyObject_IsTrue(in_txn);
    Py_DECREF(in_txn);
    return st->in_transaction < 0 ? -1 : 0;
}

/* Writes the state back (if it changed) and releases it; keeps an error already set. */
static int
store_state(PyObject *decoder, TxnState *st)
{
    int failed = 0;
    if (st->changed) {
        PyObject *type, *value, *traceback;
        PyErr_Fetch(&type, &value, &traceback);
        failed = PyObject_SetAttrString(decoder, "_xid", st->xid) < 0
                 || PyObject_SetAttrString(decoder, "_time", st->commit_time) < 0
                 || PyObject_SetAttrString(decoder, "in_transaction", st->in_transaction ? Py_True : Py_False) < 0;
        if (type != NULL) {
            if (failed)
                PyErr_Clear();
            PyErr_Restore(type, value, traceback);
        }
    }
    Py_CLEAR(st->xid);
    Py_CLEAR(st->commit_time);
    return failed ? -1 : 0;
}

/* One XLogData message for pump_loop (_pump.h): Begin and Commit keep the transaction state, a row
 * message of a known relation becomes a Change; anything else goes back to the caller. */
typedef struct {
    PyObject *decoder, *relations;
    TxnState st;
} PumpState;

static int
decode_xlogdata(void *state, const unsigned char *data, Py_ssize_t n, PyObject *out, int *ended)
{
    PumpState *ps = (PumpState *)state;
    const unsigned char *msg = data + 25;
    if (msg[0] == 'B' || msg[0] == 'C') {
        int done = transaction_event(msg, n - 25, &ps->st, out);
        *ended = msg[0] == 'C';
        return done < 0 ? PUMP_ERROR : done == 0 ? PUMP_BACK : PUMP_DECODED;
    }
    PyObject *change = change_of(msg, n - 25, ps->relations, be64(data + 1), ps->st.xid, ps->st.commit_time);
    if (change == NULL)
        return PyErr_Occurred() ? PUMP_ERROR : PUMP_BACK;
    int appended = PyList_Append(out, change);
    Py_DECREF(change);
    return appended < 0 ? PUMP_ERROR : PUMP_DECODED;
}

static int
store_pump_state(void *state)
{
    PumpState *ps = (PumpState *)state;
    return store_state(ps->decoder, &ps->st);
}

/* pump(conn_ptr, decoder, relations, out, max_events, max_messages, stop_at)
 *   -> (outcome, messages taken, highest WAL end seen, position, message bytes or None)
 *
 * Takes CopyData messages from libpq (never blocking) while they are XLogData carrying Begin,
 * Commit or row messages of known relations, appending their events to out. conn_ptr is
 * psycopg's PGconn.pgconn_ptr, in COPY BOTH state, used by no other thread meanwhile; decoder
 * the PgOutputDecoder whose transaction state (_xid, _time, in_transaction) this keeps up to date.
 * position: the XLogData start of the last Commit taken (where the stream may be confirmed once
 * it is applied; 0 if none). Stops after a Commit at or past stop_at (PUMP_UNTIL). The GIL is
 * held throughout (nothing here waits). */
static PyObject *
pump(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PumpArgs a;
    if (pump_args(args, nargs, 7, 3, change_type != NULL, &a) < 0)
        return NULL;
    PumpState ps;
    ps.decoder = args[1];
    ps.relations = args[2];
    if (!PyDict_Check(ps.relations) || !PyList_Check(a.out)) {
        PyErr_SetString(PyExc_TypeError, "pump: relations must be a dict and out a list");
        return NULL;
    }
    if (load_state(ps.decoder, &ps.st) < 0)
        return NULL;
    return pump_loop(&a, &ps, decode_xlogdata, store_pump_state);
}

static PyMethodDef methods[] = {
    {"bind_libpq", bind_libpq, METH_VARARGS,
     "bind_libpq(path, expected_version) -> (version, library): find psycopg's libpq for pump()."},
    {"pump", (PyCFunction)(void (*)(void))pump, METH_FASTCALL,
     "pump(conn_ptr, decoder, relations, out, max_events, max_messages, stop_at)\n"
     "    -> (outcome, messages taken, highest WAL end seen, position, message or None)\n\n"
     "Read runs of pgoutput Begin, row and Commit messages straight from libpq into events."},
    {"configure", configure, METH_VARARGS,
     "configure(Change, Lsn, Op.INSERT, Op.UPDATE, Op.DELETE, UNCHANGED_TOAST, Begin, Commit):\n"
     "what row_change and pump build."},
    {"pg_time", pg_time_py, METH_O, "pg_time(microseconds since 2000-01-01 UTC) -> aware datetime (UTC)."},
    {"row_change", (PyCFunction)(void (*)(void))row_change, METH_FASTCALL,
     "row_change(buf, relations, lsn, xid, commit_time) -> Change, or None if the relation is unknown\n\n"
     "Decode an Insert, Update or Delete message of pgoutput (bytes) into a Change event."},
    {"row_message", (PyCFunction)(void (*)(void))row_message, METH_FASTCALL,
     "row_message(buf, toast) -> (relation oid, old values or None, new values or None)\n\n"
     "Decode an Insert, Update or Delete message of pgoutput (text-format values)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "replicator._pgoutput",
    .m_doc = "pgoutput row messages decoded in C (see replicator/decoding/pgoutput.py).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__pgoutput(void)
{
    PyDateTime_IMPORT;
    if (PyDateTimeAPI == NULL)
        return NULL;
    return PyModule_Create(&module);
}
