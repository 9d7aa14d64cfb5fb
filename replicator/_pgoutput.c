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
 *   XLogData messages carrying Insert, Update or Delete become Change events without
 *   leaving C. Anything else (Begin, Commit, Relation, keepalives, a message we cannot
 *   decode) is handed back to replicator/source/stream.py, which does what it always did.
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
#include <structmember.h>

#include "_libpq_bind.h"
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

/* Set by configure(): the change model's types and markers. */
static PyTypeObject *change_type, *lsn_type;
static PyObject *op_insert, *op_update, *op_delete, *unchanged_toast;
enum { F_OP, F_RELATION, F_NEW, F_OLD, F_LSN, F_XID, F_COMMIT_TIME, N_FIELDS };
static const char *const field_names[N_FIELDS] = {"op", "relation", "new", "old", "lsn", "xid", "commit_time"};
static PyMemberDef *fields[N_FIELDS];

/* configure(Change, Lsn, insert, update, delete, UNCHANGED_TOAST) */
static PyObject *
configure(PyObject *self, PyObject *args)
{
    PyObject *change, *lsn, *ins, *upd, *del, *toast;
    if (!PyArg_ParseTuple(args, "O!O!OOOO:configure", &PyType_Type, &change, &PyType_Type, &lsn, &ins, &upd,
                          &del, &toast))
        return NULL;
    if (!PyType_IsSubtype((PyTypeObject *)lsn, &PyLong_Type)) {
        PyErr_SetString(PyExc_TypeError, "configure: Lsn must be an int subclass");
        return NULL;
    }
    PyTypeObject *type = (PyTypeObject *)change;
    if (type->tp_new != PyBaseObject_Type.tp_new) {
        PyErr_SetString(PyExc_TypeError, "configure: Change must not define __new__");
        return NULL;
    }
    PyMemberDef *found[N_FIELDS];
    for (int i = 0; i < N_FIELDS; i++) {
        PyObject *descr = PyObject_GetAttrString(change, field_names[i]);
        if (descr == NULL)
            return NULL;
        int ok = Py_IS_TYPE(descr, &PyMemberDescr_Type)
                 && ((PyMemberDescrObject *)descr)->d_member->type == T_OBJECT_EX
                 && !(((PyMemberDescrObject *)descr)->d_member->flags & READONLY);
        if (ok)
            found[i] = ((PyMemberDescrObject *)descr)->d_member;
        Py_DECREF(descr);
        if (!ok) {
            PyErr_Format(PyExc_TypeError, "configure: Change.%s is not a writable slot", field_names[i]);
            return NULL;
        }
    }
    for (int i = 0; i < N_FIELDS; i++)
        fields[i] = found[i];
    Py_XSETREF(change_type, (PyTypeObject *)Py_NewRef(change));
    Py_XSETREF(lsn_type, (PyTypeObject *)Py_NewRef(lsn));
    Py_XSETREF(op_insert, Py_NewRef(ins));
    Py_XSETREF(op_update, Py_NewRef(upd));
    Py_XSETREF(op_delete, Py_NewRef(del));
    Py_XSETREF(unchanged_toast, Py_NewRef(toast));
    Py_RETURN_NONE;
}

/* An Lsn (an int subclass) holding v: int.__new__(Lsn, v), without Lsn.__new__'s range check. */
static PyObject *
make_lsn(unsigned long long v)
{
    PyObject *n = PyLong_FromUnsignedLongLong(v);
    if (n == NULL)
        return NULL;
    PyObject *args = PyTuple_Pack(1, n);
    Py_DECREF(n);
    if (args == NULL)
        return NULL;
    PyObject *lsn = PyLong_Type.tp_new(lsn_type, args, NULL);
    Py_DECREF(args);
    return lsn;
}

/* A Change of relation rel, built as Change's __init__ would: the one place row_change() and
 * pump() make their events. New reference, or NULL with an error set. */
static PyObject *
new_change(char kind, PyObject *rel, PyObject *new, PyObject *old, unsigned long long lsn_value, PyObject *xid,
           PyObject *commit_time)
{
    PyObject *lsn = make_lsn(lsn_value);
    if (lsn == NULL)
        return NULL;
    PyObject *change = change_type->tp_alloc(change_type, 0);
    if (change != NULL) {
        PyObject *op = kind == 'I' ? op_insert : kind == 'U' ? op_update : op_delete;
        PyObject *values[N_FIELDS] = {op, rel, new ? new : Py_None, old ? old : Py_None, lsn, xid, commit_time};
        for (int i = 0; i < N_FIELDS; i++) {
            if (PyMember_SetOne((char *)change, fields[i], values[i]) < 0) {
                Py_CLEAR(change);
                break;
            }
        }
    }
    Py_DECREF(lsn);
    return change;
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
};

static uint64_t
be64(const unsigned char *p)
{
    return ((uint64_t)be32(p) << 32) | be32(p + 4);
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

/* pump(conn_ptr, relations, xid, commit_time, out, max_events, max_messages)
 *   -> (outcome, messages taken, highest WAL end seen, message bytes or None)
 *
 * Takes CopyData messages from libpq (never blocking) while they are XLogData carrying row
 * messages of known relations, appending their Change events to out. conn_ptr is psycopg's
 * PGconn.pgconn_ptr, in COPY BOTH state, used by no other thread meanwhile. The GIL is held
 * throughout (nothing here waits). */
static PyObject *
pump(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "pump() takes 7 arguments");
        return NULL;
    }
    if (pq_getCopyData == NULL || change_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "pump: bind_libpq() and configure() must be called first");
        return NULL;
    }
    PGconn *conn = (PGconn *)PyLong_AsVoidPtr(args[0]);
    if (conn == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "pump: no connection");
        return NULL;
    }
    PyObject *relations = args[1], *xid = args[2], *commit_time = args[3], *out = args[4];
    if (!PyDict_Check(relations) || !PyList_Check(out)) {
        PyErr_SetString(PyExc_TypeError, "pump: relations must be a dict and out a list");
        return NULL;
    }
    Py_ssize_t max_events = PyLong_AsSsize_t(args[5]);
    Py_ssize_t max_messages = PyLong_AsSsize_t(args[6]);
    if ((max_events == -1 || max_messages == -1) && PyErr_Occurred())
        return NULL;

    int outcome = PUMP_COUNT;
    Py_ssize_t taken = 0;
    uint64_t received = 0;
    PyObject *message = NULL;
    while (taken < max_messages) {
        if (PyList_GET_SIZE(out) >= max_events) {
            outcome = PUMP_FULL;
            break;
        }
        char *buf = NULL;
        int n = pq_getCopyData(conn, &buf, 1);
        if (n <= 0) {
            outcome = n == 0 ? PUMP_NO_DATA : n == -1 ? PUMP_END : PUMP_FAILED;
            break;
        }
        taken++;
        const unsigned char *data = (const unsigned char *)buf;
        PyObject *change = NULL;
        if (data[0] == 'w' && n > 25) {
            change = change_of(data + 25, n - 25, relations, be64(data + 1), xid, commit_time);
            if (change == NULL && PyErr_Occurred()) {
                pq_freemem(buf);
                return NULL;
            }
        }
        if (change == NULL) { /* not ours to decode: the caller handles it */
            message = PyBytes_FromStringAndSize(buf, n);
            pq_freemem(buf);
            if (message == NULL)
                return NULL;
            outcome = PUMP_MESSAGE;
            break;
        }
        uint64_t end = be64(data + 9);
        if (end > received)
            received = end;
        pq_freemem(buf);
        int failed = PyList_Append(out, change);
        Py_DECREF(change);
        if (failed < 0)
            return NULL;
    }
    PyObject *result = Py_BuildValue("(inKO)", outcome, taken, (unsigned long long)received,
                                     message ? message : Py_None);
    Py_XDECREF(message);
    return result;
}

static PyMethodDef methods[] = {
    {"bind_libpq", bind_libpq, METH_VARARGS,
     "bind_libpq(path, expected_version) -> (version, library): find psycopg's libpq for pump()."},
    {"pump", (PyCFunction)(void (*)(void))pump, METH_FASTCALL,
     "pump(conn_ptr, relations, xid, commit_time, out, max_events, max_messages)\n"
     "    -> (outcome, messages taken, highest WAL end seen, message or None)\n\n"
     "Read runs of pgoutput row messages straight from libpq into Change events."},
    {"configure", configure, METH_VARARGS,
     "configure(Change, Lsn, Op.INSERT, Op.UPDATE, Op.DELETE, UNCHANGED_TOAST): what row_change builds."},
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
    return PyModule_Create(&module);
}
