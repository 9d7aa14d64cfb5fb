/* The change events both C decoders build (_pgoutput.c, _wal2json.c): the slots of the model's
 * Change, Begin and Commit classes (replicator/decoding/changes.py), found once by configure(),
 * and how an Lsn and an event are made.
 * Included by each extension, which gets its own static copy. */
#ifndef REPLICATOR_EVENTS_H
#define REPLICATOR_EVENTS_H

#include <Python.h>
#include <structmember.h>

enum { F_OP, F_RELATION, F_NEW, F_OLD, F_LSN, F_XID, F_COMMIT_TIME, N_FIELDS };
static const char *const field_names[N_FIELDS] = {"op", "relation", "new", "old", "lsn", "xid", "commit_time"};
static PyMemberDef *fields[N_FIELDS];
enum { B_XID, B_FINAL_LSN, B_COMMIT_TIME, N_BEGIN };
static const char *const begin_names[N_BEGIN] = {"xid", "final_lsn", "commit_time"};
static PyMemberDef *begin_fields[N_BEGIN];
enum { C_XID, C_COMMIT_LSN, C_END_LSN, C_COMMIT_TIME, N_COMMIT };
static const char *const commit_names[N_COMMIT] = {"xid", "commit_lsn", "end_lsn", "commit_time"};
static PyMemberDef *commit_fields[N_COMMIT];

/* The slots of class cls named names[0..n), into found; -1 with TypeError if one is not a plain
 * writable slot or cls has a __new__ of its own (events are built as object.__new__ plus slots). */
static int
find_slots(PyObject *cls, const char *what, const char *const *names, int n, PyMemberDef **found)
{
    if (((PyTypeObject *)cls)->tp_new != PyBaseObject_Type.tp_new) {
        PyErr_Format(PyExc_TypeError, "configure: %s must not define __new__", what);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        PyObject *descr = PyObject_GetAttrString(cls, names[i]);
        if (descr == NULL)
            return -1;
        int ok = Py_IS_TYPE(descr, &PyMemberDescr_Type)
                 && ((PyMemberDescrObject *)descr)->d_member->type == T_OBJECT_EX
                 && !(((PyMemberDescrObject *)descr)->d_member->flags & READONLY);
        if (ok)
            found[i] = ((PyMemberDescrObject *)descr)->d_member;
        Py_DECREF(descr);
        if (!ok) {
            PyErr_Format(PyExc_TypeError, "configure: %s.%s is not a writable slot", what, names[i]);
            return -1;
        }
    }
    return 0;
}

/* The model's classes and values the events are made of, set by configure_events(). */
static PyTypeObject *change_type, *lsn_type, *begin_type, *commit_type;
static PyObject *op_insert, *op_update, *op_delete, *unchanged_toast;

/* What both decoders' configure() do with the model's classes once their arguments are parsed:
 * check them, find the slots, keep a reference to each. 0, or -1 with TypeError. */
static int
configure_events(PyObject *change, PyObject *lsn, PyObject *ins, PyObject *upd, PyObject *del, PyObject *toast,
                 PyObject *begin, PyObject *commit)
{
    if (!PyType_IsSubtype((PyTypeObject *)lsn, &PyLong_Type)) {
        PyErr_SetString(PyExc_TypeError, "configure: Lsn must be an int subclass");
        return -1;
    }
    PyMemberDef *found[N_FIELDS], *found_begin[N_BEGIN], *found_commit[N_COMMIT];
    if (find_slots(change, "Change", field_names, N_FIELDS, found) < 0
        || find_slots(begin, "Begin", begin_names, N_BEGIN, found_begin) < 0
        || find_slots(commit, "Commit", commit_names, N_COMMIT, found_commit) < 0)
        return -1;
    for (int i = 0; i < N_FIELDS; i++)
        fields[i] = found[i];
    for (int i = 0; i < N_BEGIN; i++)
        begin_fields[i] = found_begin[i];
    for (int i = 0; i < N_COMMIT; i++)
        commit_fields[i] = found_commit[i];
    Py_XSETREF(change_type, (PyTypeObject *)Py_NewRef(change));
    Py_XSETREF(lsn_type, (PyTypeObject *)Py_NewRef(lsn));
    Py_XSETREF(begin_type, (PyTypeObject *)Py_NewRef(begin));
    Py_XSETREF(commit_type, (PyTypeObject *)Py_NewRef(commit));
    Py_XSETREF(op_insert, Py_NewRef(ins));
    Py_XSETREF(op_update, Py_NewRef(upd));
    Py_XSETREF(op_delete, Py_NewRef(del));
    Py_XSETREF(unchanged_toast, Py_NewRef(toast));
    return 0;
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

/* An event of type, built as its dataclass __init__ would: object.__new__ plus one assignment per
 * slot (frozen dataclasses check only in __setattr__, which this does not go through). New
 * reference, or NULL with an error set. */
static PyObject *
build(PyTypeObject *type, PyMemberDef **slots, PyObject **values, int n)
{
    PyObject *event = type->tp_alloc(type, 0);
    if (event == NULL)
        return NULL;
    for (int i = 0; i < n; i++) {
        if (PyMember_SetOne((char *)event, slots[i], values[i]) < 0) {
            Py_DECREF(event);
            return NULL;
        }
    }
    return event;
}

#endif
