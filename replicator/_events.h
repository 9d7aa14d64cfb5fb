/* The change events both C decoders build (_pgoutput.c, _wal2json.c): the slots of the model's
 * Change, Begin and Commit classes (replicator/decoding/changes.py), found once by configure().
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

#endif
