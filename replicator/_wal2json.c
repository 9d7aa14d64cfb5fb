/*
 * The hot path of replicator/decoding/wal2json.py, in C: wal2json format-version 2 actions
 * (Begin, Insert, Update, Delete, Commit) parsed straight into change events.
 *
 * Decoding wal2json's JSON in Python cost about 9 us per action (json's C scanner into dicts,
 * then itemgetters, the shape lookup, bool/bytea fixes and the event in Python): the reader of
 * an OLTP backlog was 90% busy, two thirds of it there. No JSON library fits: we need numbers
 * kept as the exact text the server printed ("1.50" stays "1.50", "-0" stays "-0"), which
 * orjson and ujson do not offer (they make floats), and values laid out straight into our
 * tuples. So this parser is written by hand, for the one shape wal2json prints.
 *
 * It is a strict subset of what the Python decoder accepts. Whatever it is not sure of (an
 * action other than B/C/I/U/D, NaN or Infinity, a nested value, a lone surrogate escape, a
 * duplicate key, a missing field, malformed JSON, a pending TRUNCATE, a shape it has not seen)
 * is handed back untouched to the Python decoder, which stays the reference and reports errors
 * (DecodeError). Nothing here changes the decoder's state before it knows it will decode the
 * message itself, so the two give the same events and the same errors
 * (tests/decoding/test_wal2json_native.py compares them).
 *
 * Column lists: the decoder keeps ``_native_shapes``, a dict from a key built of the raw bytes
 * of the schema, table and (name, type oid) pairs to a shape tuple
 *   (relation, positions or None, fix bytes or None, key indexes to compare or None, ncolumns)
 * made by its ``_native_shape(schema, table, names, typeoids, partial)`` (the Python shape logic
 * itself) on a miss. The decoder clears the dict whenever its table shapes change.
 *
 * - step(decoder, data, out) -> bool: one message; events appended to out; False: handed back.
 * - pump(...): the replication stream's read loop, as replicator._pgoutput's, for wal2json.
 *
 * Like _pgoutput.c, nothing here links against libpq: bind_libpq() finds psycopg's own.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include "_events.h"
#include "_pump.h"
#include <stdint.h>
#include <string.h>

/* Results of the steps below: decoded, handed back to Python (no error set), or a Python error. */
enum { BACK = 0, OK = 1, ERR = -1 };

/* -- JSON scanning ---------------------------------------------------------------------------- */

typedef struct {
    const unsigned char *p, *end;
} Scan;

typedef struct {
    const unsigned char *s;
    Py_ssize_t n;
    int escaped; /* strings: holds a backslash */
    int high;    /* strings: holds a byte >= 0x80 */
} Span;

enum { J_NONE = 0, J_STRING, J_NUMBER, J_INTEGER, J_TRUE, J_FALSE, J_NULL, J_OTHER };

static inline void
ws(Scan *sc)
{
    while (sc->p < sc->end && (*sc->p == ' ' || *sc->p == '\t' || *sc->p == '\n' || *sc->p == '\r'))
        sc->p++;
}

static int
hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Whether s[0..n) is UTF-8 that Python's strict decoder accepts (no surrogates, no overlongs). */
static int
utf8_valid(const unsigned char *s, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        int len;
        uint32_t cp;
        if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (i + len > n)
            return 0;
        for (int k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
            return 0;
        i += len;
    }
    return 1;
}

/* A string at sc->p ('"'): its raw content into span, sc->p past the closing quote. 0 if it is
 * not one Python's json (strict) would read: a control character, a bad escape, bad UTF-8. */
static int
scan_string(Scan *sc, Span *span)
{
    const unsigned char *p = sc->p + 1, *end = sc->end;
    int escaped = 0, high = 0;
    span->s = p;
    while (p < end) {
        unsigned char c = *p;
        if (c == '"')
            break;
        if (c < 0x20)
            return 0;
        if (c >= 0x80) {
            high = 1;
            p++;
        } else if (c == '\\') {
            escaped = 1;
            if (p + 1 >= end)
                return 0;
            unsigned char e = p[1];
            if (e == 'u') {
                if (p + 6 > end)
                    return 0;
                for (int k = 2; k < 6; k++)
                    if (hexval(p[k]) < 0)
                        return 0;
                p += 6;
            } else if (e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' || e == 'n' || e == 'r' || e == 't') {
                p += 2;
            } else {
                return 0;
            }
        } else {
            p++;
        }
    }
    if (p >= end)
        return 0;
    span->n = p - span->s;
    span->escaped = escaped;
    span->high = high;
    if (high && !utf8_valid(span->s, span->n))
        return 0;
    sc->p = p + 1;
    return 1;
}

static void
put_utf8(unsigned char **o, uint32_t cp)
{
    unsigned char *q = *o;
    if (cp < 0x80) {
        *q++ = (unsigned char)cp;
    } else if (cp < 0x800) {
        *q++ = (unsigned char)(0xC0 | (cp >> 6));
        *q++ = (unsigned char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        *q++ = (unsigned char)(0xE0 | (cp >> 12));
        *q++ = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        *q++ = (unsigned char)(0x80 | (cp & 0x3F));
    } else {
        *q++ = (unsigned char)(0xF0 | (cp >> 18));
        *q++ = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
        *q++ = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        *q++ = (unsigned char)(0x80 | (cp & 0x3F));
    }
    *o = q;
}

static uint32_t
hex4(const unsigned char *p)
{
    return (uint32_t)(hexval(p[0]) << 12 | hexval(p[1]) << 8 | hexval(p[2]) << 4 | hexval(p[3]));
}

/* A scanned string as str: new reference; NULL without an error set to hand the message back
 * (a lone surrogate escape, which Python keeps as a lone code point), NULL with one on failure. */
static PyObject *
string_of(const Span *span)
{
    if (!span->escaped) {
        if (!span->high)
            return PyUnicode_FromKindAndData(PyUnicode_1BYTE_KIND, span->s, span->n);
        return PyUnicode_DecodeUTF8((const char *)span->s, span->n, "strict");
    }
    /* Escapes only shrink: \uXXXX (6 bytes) is at most 3 bytes of UTF-8, a pair (12) 4. */
    unsigned char local[256];
    unsigned char *buf = span->n <= (Py_ssize_t)sizeof local ? local : PyMem_Malloc(span->n);
    if (buf == NULL)
        return PyErr_NoMemory();
    unsigned char *o = buf;
    const unsigned char *p = span->s, *end = span->s + span->n;
    PyObject *result = NULL;
    while (p < end) {
        if (*p != '\\') {
            *o++ = *p++;
            continue;
        }
        unsigned char e = p[1];
        p += 2;
        switch (e) {
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        case 't': *o++ = '\t'; break;
        case 'u': {
            uint32_t cp = hex4(p);
            p += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (p + 6 <= end && p[0] == '\\' && p[1] == 'u') {
                    uint32_t lo = hex4(p + 2);
                    if (lo >= 0xDC00 && lo <= 0xDFFF) {
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                        p += 6;
                    } else {
                        goto back;
                    }
                } else {
                    goto back;
                }
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                goto back;
            }
            put_utf8(&o, cp);
            break;
        }
        default: *o++ = e; break; /* " \ / */
        }
    }
    result = PyUnicode_DecodeUTF8((const char *)buf, o - buf, "strict");
back:
    if (buf != local)
        PyMem_Free(buf);
    return result;
}

/* A number at sc->p: JSON's grammar, which is what Python's json reads (a "-" not followed by a
 * digit, e.g. -Infinity, is not one). *kind: J_INTEGER (no fraction, no exponent) or J_NUMBER. */
static int
scan_number(Scan *sc, Span *span, int *kind)
{
    const unsigned char *p = sc->p, *end = sc->end;
    span->s = p;
    if (p < end && *p == '-')
        p++;
    if (p >= end || *p < '0' || *p > '9')
        return 0;
    if (*p == '0')
        p++;
    else
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    *kind = J_INTEGER;
    if (p < end && *p == '.') {
        p++;
        if (p >= end || *p < '0' || *p > '9')
            return 0;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
        *kind = J_NUMBER;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        if (p >= end || *p < '0' || *p > '9')
            return 0;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
        *kind = J_NUMBER;
    }
    span->n = p - span->s;
    span->escaped = span->high = 0;
    sc->p = p;
    return 1;
}

static int
literal(Scan *sc, const char *word, Py_ssize_t n)
{
    if (sc->end - sc->p < n || memcmp(sc->p, word, n) != 0)
        return 0;
    sc->p += n;
    return 1;
}

/* Any scalar at sc->p: its kind and span (J_OTHER for an array or object, not consumed). */
static int
scan_scalar(Scan *sc, Span *span, int *kind)
{
    if (sc->p >= sc->end)
        return 0;
    unsigned char c = *sc->p;
    span->s = sc->p;
    span->n = 0;
    span->escaped = span->high = 0;
    if (c == '"') {
        *kind = J_STRING;
        return scan_string(sc, span);
    }
    if (c == '-' || (c >= '0' && c <= '9'))
        return scan_number(sc, span, kind);
    if (c == 't') {
        *kind = J_TRUE;
        return literal(sc, "true", 4);
    }
    if (c == 'f') {
        *kind = J_FALSE;
        return literal(sc, "false", 5);
    }
    if (c == 'n') {
        *kind = J_NULL;
        return literal(sc, "null", 4);
    }
    if (c == '[' || c == '{') {
        *kind = J_OTHER;
        return 1;
    }
    return 0; /* NaN, Infinity, or not JSON */
}

/* After a member or element: whitespace, then ',' (1, consumed, whitespace after it skipped), the
 * closer (2, consumed), or anything else (0). */
static int
next_member(Scan *sc, unsigned char closer)
{
    ws(sc);
    if (sc->p >= sc->end)
        return 0;
    if (*sc->p == ',') {
        sc->p++;
        ws(sc);
        return 1;
    }
    if (*sc->p == closer) {
        sc->p++;
        return 2;
    }
    return 0;
}

/* Checks and skips any JSON value (a member we do not use): 1, or 0 if it is not valid JSON. */
static int
skip_value(Scan *sc, int depth)
{
    Span span;
    int kind;
    if (!scan_scalar(sc, &span, &kind))
        return 0;
    if (kind != J_OTHER)
        return 1;
    if (depth > 32)
        return 0; /* Python's json would recurse further; hand it back */
    unsigned char closer = *sc->p == '[' ? ']' : '}';
    sc->p++;
    ws(sc);
    if (sc->p < sc->end && *sc->p == closer) {
        sc->p++;
        return 1;
    }
    for (;;) {
        if (closer == '}') {
            if (sc->p >= sc->end || *sc->p != '"' || !scan_string(sc, &span))
                return 0;
            ws(sc);
            if (sc->p >= sc->end || *sc->p != ':')
                return 0;
            sc->p++;
            ws(sc);
        }
        if (!skip_value(sc, depth + 1))
            return 0;
        int next = next_member(sc, closer);
        if (next == 0)
            return 0;
        if (next == 2)
            return 1;
    }
}

static int
span_is(const Span *span, const char *word)
{
    size_t n = strlen(word);
    return !span->escaped && (size_t)span->n == n && memcmp(span->s, word, n) == 0;
}

/* -- an action -------------------------------------------------------------------------------- */

typedef struct {
    Span name, typeoid;
    PyObject *value; /* str, None, True or False (new reference) */
} Col;

typedef struct {
    Col *items;
    Py_ssize_t n, cap;
    Col local[16];
    int present; /* the member was there (1: an array; 2: null) */
} Cols;

static void
cols_init(Cols *c)
{
    c->items = c->local;
    c->n = 0;
    c->cap = 16;
    c->present = 0;
}

static void
cols_free(Cols *c)
{
    for (Py_ssize_t i = 0; i < c->n; i++)
        Py_XDECREF(c->items[i].value);
    if (c->items != c->local)
        PyMem_Free(c->items);
    c->items = c->local;
    c->n = 0;
}

static Col *
cols_add(Cols *c)
{
    if (c->n == c->cap) {
        Py_ssize_t cap = c->cap * 2;
        Col *items = PyMem_Malloc(cap * sizeof(Col));
        if (items == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        memcpy(items, c->items, c->n * sizeof(Col));
        if (c->items != c->local)
            PyMem_Free(c->items);
        c->items = items;
        c->cap = cap;
    }
    Col *col = &c->items[c->n++];
    memset(col, 0, sizeof *col);
    return col;
}

/* A value: str for a string or a number (its text), None, True, False. BACK for anything else. */
static int
value_of(Scan *sc, PyObject **out)
{
    Span span;
    int kind;
    if (!scan_scalar(sc, &span, &kind))
        return BACK;
    switch (kind) {
    case J_STRING:
        *out = string_of(&span);
        return *out != NULL ? OK : PyErr_Occurred() ? ERR : BACK;
    case J_NUMBER:
    case J_INTEGER:
        *out = PyUnicode_FromKindAndData(PyUnicode_1BYTE_KIND, span.s, span.n);
        return *out != NULL ? OK : ERR;
    case J_TRUE: *out = Py_NewRef(Py_True); return OK;
    case J_FALSE: *out = Py_NewRef(Py_False); return OK;
    case J_NULL: *out = Py_NewRef(Py_None); return OK;
    default: return BACK; /* an array or object: Python makes it a list or dict */
    }
}

/* "columns" or "identity": null, or an array of {"name": str, "typeoid": integer, "value": scalar}. */
static int
parse_cols(Scan *sc, Cols *cols)
{
    if (sc->p < sc->end && *sc->p == 'n') {
        if (!literal(sc, "null", 4))
            return BACK;
        cols->present = 2;
        return OK;
    }
    if (sc->p >= sc->end || *sc->p != '[')
        return BACK;
    cols->present = 1;
    sc->p++;
    ws(sc);
    if (sc->p < sc->end && *sc->p == ']') {
        sc->p++;
        return OK;
    }
    for (;;) {
        if (sc->p >= sc->end || *sc->p != '{')
            return BACK;
        Col *col = cols_add(cols);
        if (col == NULL)
            return ERR;
        int has_name = 0, has_type = 0;
        sc->p++;
        ws(sc);
        if (sc->p < sc->end && *sc->p == '}')
            return BACK; /* no name: Python raises */
        for (;;) {
            Span key;
            if (sc->p >= sc->end || *sc->p != '"' || !scan_string(sc, &key))
                return BACK;
            ws(sc);
            if (sc->p >= sc->end || *sc->p != ':')
                return BACK;
            sc->p++;
            ws(sc);
            if (span_is(&key, "name")) {
                if (has_name || sc->p >= sc->end || *sc->p != '"' || !scan_string(sc, &col->name))
                    return BACK;
                has_name = 1;
            } else if (span_is(&key, "typeoid")) {
                int kind;
                if (has_type || !scan_number(sc, &col->typeoid, &kind) || kind != J_INTEGER
                    || col->typeoid.s[0] == '-')
                    return BACK;
                has_type = 1;
            } else if (span_is(&key, "value")) {
                if (col->value != NULL)
                    return BACK;
                int got = value_of(sc, &col->value);
                if (got != OK)
                    return got;
            } else if (key.escaped || !skip_value(sc, 1)) {
                return BACK; /* an escaped key might read "name" once decoded */
            }
            int next = next_member(sc, '}');
            if (next == 0)
                return BACK;
            if (next == 2)
                break;
        }
        if (!has_name || !has_type || col->value == NULL)
            return BACK;
        int next = next_member(sc, ']');
        if (next == 0)
            return BACK;
        if (next == 2)
            return OK;
    }
}

typedef struct {
    char action;
    Span xid, timestamp, lsn, nextlsn, schema, table;
    int xid_kind, timestamp_kind, lsn_kind, nextlsn_kind, schema_kind, table_kind;
    Cols columns, identity;
} Action;

/* One member of the top-level object that we use: kind and span, once. */
static int
member(Scan *sc, Span *span, int *kind)
{
    if (*kind != J_NONE)
        return BACK; /* a duplicate key: Python keeps the last */
    if (!scan_scalar(sc, span, kind) || *kind == J_OTHER)
        return BACK;
    return OK;
}

static int
parse_action(const unsigned char *data, Py_ssize_t size, Action *a)
{
    Scan sc = {data, data + size};
    if (size < 2 || data[0] != '{') /* Python's scanner reads from the first byte: no whitespace */
        return BACK;
    sc.p++;
    ws(&sc);
    if (sc.p < sc.end && *sc.p == '}')
        return BACK;
    int action_kind = J_NONE;
    Span action;
    for (;;) {
        Span key;
        if (sc.p >= sc.end || *sc.p != '"' || !scan_string(&sc, &key) || key.escaped)
            return BACK;
        ws(&sc);
        if (sc.p >= sc.end || *sc.p != ':')
            return BACK;
        sc.p++;
        ws(&sc);
        int got = OK;
        if (span_is(&key, "action"))
            got = member(&sc, &action, &action_kind);
        else if (span_is(&key, "xid"))
            got = member(&sc, &a->xid, &a->xid_kind);
        else if (span_is(&key, "timestamp"))
            got = member(&sc, &a->timestamp, &a->timestamp_kind);
        else if (span_is(&key, "lsn"))
            got = member(&sc, &a->lsn, &a->lsn_kind);
        else if (span_is(&key, "nextlsn"))
            got = member(&sc, &a->nextlsn, &a->nextlsn_kind);
        else if (span_is(&key, "schema"))
            got = member(&sc, &a->schema, &a->schema_kind);
        else if (span_is(&key, "table"))
            got = member(&sc, &a->table, &a->table_kind);
        else if (span_is(&key, "columns"))
            got = a->columns.present ? BACK : parse_cols(&sc, &a->columns);
        else if (span_is(&key, "identity"))
            got = a->identity.present ? BACK : parse_cols(&sc, &a->identity);
        else if (!skip_value(&sc, 1))
            got = BACK;
        if (got != OK)
            return got;
        int next = next_member(&sc, '}');
        if (next == 0)
            return BACK;
        if (next == 2)
            break;
    }
    ws(&sc);
    if (sc.p != sc.end)
        return BACK; /* Python ignores what follows the object; rare enough to leave to it */
    if (action_kind != J_STRING || action.escaped || action.n != 1)
        return BACK;
    a->action = (char)action.s[0];
    return OK;
}

/* An LSN as wal2json prints it ("16/B374D848"), into *v; 0 if it is not exactly that. */
static int
lsn_of(const Span *span, int kind, uint64_t *v)
{
    if (kind != J_STRING || span->escaped)
        return 0;
    uint64_t hi = 0, lo = 0;
    Py_ssize_t i = 0, n = span->n;
    int digits = 0;
    for (; i < n && span->s[i] != '/'; i++, digits++) {
        int h = hexval(span->s[i]);
        if (h < 0 || digits >= 8)
            return 0;
        hi = hi << 4 | (uint64_t)h;
    }
    if (digits == 0 || i >= n)
        return 0;
    digits = 0;
    for (i++; i < n; i++, digits++) {
        int h = hexval(span->s[i]);
        if (h < 0 || digits >= 8)
            return 0;
        lo = lo << 4 | (uint64_t)h;
    }
    if (digits == 0)
        return 0;
    *v = hi << 32 | lo;
    return 1;
}

/* -- the change model (configure) ------------------------------------------------------------- */

static PyObject *fromisoformat; /* beside _events.h's types and markers, set by configure() */
static PyObject *str_t, *str_f, *str_bytea_prefix;
static PyObject *attr_xid, *attr_time, *attr_begin, *attr_in_txn, *attr_truncate, *attr_shapes, *attr_shape_fn;
/* configure(Change, Lsn, insert, update, delete, UNCHANGED_TOAST, Begin, Commit, fromisoformat) */
static PyObject *
configure(PyObject *self, PyObject *args)
{
    PyObject *change, *lsn, *ins, *upd, *del, *toast, *begin, *commit, *iso;
    if (!PyArg_ParseTuple(args, "O!O!OOOOO!O!O:configure", &PyType_Type, &change, &PyType_Type, &lsn, &ins, &upd,
                          &del, &toast, &PyType_Type, &begin, &PyType_Type, &commit, &iso))
        return NULL;
    if (configure_events(change, lsn, ins, upd, del, toast, begin, commit) < 0) /* _events.h */
        return NULL;
    Py_XSETREF(fromisoformat, Py_NewRef(iso));
    Py_RETURN_NONE;
}

/* -- the decoder's state ---------------------------------------------------------------------- */

typedef struct {
    PyObject *decoder;
    PyObject *xid, *time, *begin; /* _xid, _time, _begin (Begin not yet sent, or None) */
    int in_txn;
    int truncating; /* _truncate is not empty: Python must flush it first */
    /* _native_shapes (a reference of our own: _native_shape() runs Python code, which could
     * replace the decoder's dict and free it while we still write into it) */
    PyObject *shapes;
    int changed;
} State;

static int
load_state(PyObject *decoder, State *st)
{
    memset(st, 0, sizeof *st);
    st->decoder = decoder;
    PyObject *in_txn = NULL, *truncate = NULL, *shapes = NULL;
    if ((st->xid = PyObject_GetAttr(decoder, attr_xid)) == NULL || (st->time = PyObject_GetAttr(decoder, attr_time)) == NULL
        || (st->begin = PyObject_GetAttr(decoder, attr_begin)) == NULL
        || (in_txn = PyObject_GetAttr(decoder, attr_in_txn)) == NULL
        || (truncate = PyObject_GetAttr(decoder, attr_truncate)) == NULL
        || (shapes = PyObject_GetAttr(decoder, attr_shapes)) == NULL)
        goto fail;
    if (!PyDict_Check(shapes)) {
        PyErr_SetString(PyExc_TypeError, "the decoder's _native_shapes must be a dict");
        goto fail;
    }
    st->in_txn = PyObject_IsTrue(in_txn);
    st->truncating = PyObject_IsTrue(truncate);
    if (st->in_txn < 0 || st->truncating < 0)
        goto fail;
    Py_DECREF(in_txn);
    Py_DECREF(truncate);
    st->shapes = shapes;
    return 0;
fail:
    Py_XDECREF(in_txn);
    Py_XDECREF(truncate);
    Py_XDECREF(shapes);
    Py_CLEAR(st->xid);
    Py_CLEAR(st->time);
    Py_CLEAR(st->begin);
    return -1;
}

static int
store_state(State *st)
{
    int failed = 0;
    if (st->changed) {
        PyObject *type, *value, *traceback;
        PyErr_Fetch(&type, &value, &traceback);
        failed = PyObject_SetAttr(st->decoder, attr_xid, st->xid) < 0
                 || PyObject_SetAttr(st->decoder, attr_time, st->time) < 0
                 || PyObject_SetAttr(st->decoder, attr_begin, st->begin) < 0
                 || PyObject_SetAttr(st->decoder, attr_in_txn, st->in_txn ? Py_True : Py_False) < 0;
        if (type != NULL) {
            if (failed)
                PyErr_Clear();
            PyErr_Restore(type, value, traceback);
        }
    }
    Py_CLEAR(st->xid);
    Py_CLEAR(st->time);
    Py_CLEAR(st->begin);
    Py_CLEAR(st->shapes);
    return failed ? -1 : 0;
}

/* -- shapes and rows -------------------------------------------------------------------------- */

typedef struct {
    PyObject *relation;  /* borrowed from the shape tuple */
    PyObject *positions; /* tuple of int, or None */
    PyObject *fix;       /* bytes, or None */
    PyObject *compare;   /* tuple of int (key indexes), or None (identity FULL) */
    Py_ssize_t ncolumns;
    PyObject *tuple; /* the shape tuple (new reference) */
} Shape;

static int
append_span(char **buf, Py_ssize_t *len, Py_ssize_t *cap, const Span *span)
{
    Py_ssize_t need = *len + 4 + span->n;
    if (need > *cap) {
        Py_ssize_t cap2 = need * 2;
        char *b = PyMem_Realloc(*buf, cap2);
        if (b == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        *buf = b;
        *cap = cap2;
    }
    uint32_t n = (uint32_t)span->n;
    memcpy(*buf + *len, &n, 4);
    memcpy(*buf + *len + 4, span->s, span->n);
    *len += 4 + span->n;
    return 0;
}

/* The key of a column list in _native_shapes: the raw bytes of schema, table and every
 * (name, type oid), each preceded by its length (so no two lists share one). */
static PyObject *
shape_key(const Action *a, const Cols *cols)
{
    Py_ssize_t len = 0, cap = 256;
    char *buf = PyMem_Malloc(cap);
    if (buf == NULL)
        return PyErr_NoMemory();
    int failed = append_span(&buf, &len, &cap, &a->schema) < 0 || append_span(&buf, &len, &cap, &a->table) < 0;
    for (Py_ssize_t i = 0; !failed && i < cols->n; i++)
        failed = append_span(&buf, &len, &cap, &cols->items[i].name) < 0
                 || append_span(&buf, &len, &cap, &cols->items[i].typeoid) < 0;
    PyObject *key = failed ? NULL : PyBytes_FromStringAndSize(buf, len);
    PyMem_Free(buf);
    return key;
}

/* Whether a shape tuple fits this column list; its parts into shape (borrowed from tuple).
 * 0 with an error set if not. */
static int
shape_fits(PyObject *tuple, const Cols *cols, Shape *shape)
{
    if (!PyTuple_Check(tuple) || PyTuple_GET_SIZE(tuple) != 5) {
        PyErr_SetString(PyExc_TypeError, "_native_shape must return a 5-tuple");
        return 0;
    }
    shape->relation = PyTuple_GET_ITEM(tuple, 0);
    shape->positions = PyTuple_GET_ITEM(tuple, 1);
    shape->fix = PyTuple_GET_ITEM(tuple, 2);
    shape->compare = PyTuple_GET_ITEM(tuple, 3);
    shape->ncolumns = PyLong_AsSsize_t(PyTuple_GET_ITEM(tuple, 4));
    int ok = !(shape->ncolumns == -1 && PyErr_Occurred())
             && (shape->positions == Py_None
                     ? shape->ncolumns == cols->n
                     : PyTuple_Check(shape->positions) && PyTuple_GET_SIZE(shape->positions) == cols->n)
             && (shape->fix == Py_None || (PyBytes_Check(shape->fix) && PyBytes_GET_SIZE(shape->fix) == cols->n))
             && (shape->compare == Py_None || PyTuple_Check(shape->compare));
    if (!ok && !PyErr_Occurred())
        PyErr_SetString(PyExc_TypeError, "_native_shape returned a shape that does not fit its columns");
    return ok;
}

/* The shape of this column list: from _native_shapes, else from the decoder's _native_shape()
 * (then kept, once checked: a shape that does not fit is an error, not a cache entry).
 * OK, BACK (the decoder failed: Python will do it again and report it), ERR. */
static int
shape_of(State *st, const Action *a, const Cols *cols, int partial, Shape *shape)
{
    PyObject *key = shape_key(a, cols);
    if (key == NULL)
        return ERR;
    PyObject *tuple = PyDict_GetItemWithError(st->shapes, key);
    if (tuple != NULL) {
        Py_INCREF(tuple);
    } else {
        if (PyErr_Occurred()) {
            Py_DECREF(key);
            return ERR;
        }
        PyObject *schema = NULL, *table = NULL, *names = NULL, *types = NULL;
        int got = ERR, misfit = 0;
        if ((schema = string_of(&a->schema)) == NULL || (table = string_of(&a->table)) == NULL
            || (names = PyTuple_New(cols->n)) == NULL || (types = PyTuple_New(cols->n)) == NULL)
            goto miss_done;
        for (Py_ssize_t i = 0; i < cols->n; i++) {
            PyObject *name = string_of(&cols->items[i].name);
            if (name == NULL)
                goto miss_done;
            PyTuple_SET_ITEM(names, i, name);
            PyObject *type = PyUnicode_FromKindAndData(PyUnicode_1BYTE_KIND, cols->items[i].typeoid.s,
                                                       cols->items[i].typeoid.n);
            if (type == NULL)
                goto miss_done;
            PyTuple_SET_ITEM(types, i, type);
        }
        tuple = PyObject_CallMethodObjArgs(st->decoder, attr_shape_fn, schema, table, names, types,
                                           partial ? Py_True : Py_False, NULL);
        if (tuple == NULL)
            goto miss_done;
        if (!shape_fits(tuple, cols, shape)) {
            misfit = 1;
            Py_CLEAR(tuple);
            goto miss_done;
        }
        if (PyDict_SetItem(st->shapes, key, tuple) < 0) {
            Py_CLEAR(tuple);
            goto miss_done;
        }
        got = OK;
    miss_done:
        Py_XDECREF(schema);
        Py_XDECREF(table);
        Py_XDECREF(names);
        Py_XDECREF(types);
        if (got != OK) {
            Py_DECREF(key);
            if (misfit)
                return ERR; /* our own code is wrong: say so, do not hide it behind Python */
            if (!PyErr_Occurred())
                return BACK; /* a lone surrogate in a name */
            if (PyErr_ExceptionMatches(PyExc_Exception) && !PyErr_ExceptionMatches(PyExc_MemoryError)) {
                PyErr_Clear(); /* the Python decoder does it again and reports it as it should */
                return BACK;
            }
            return ERR;
        }
    }
    Py_DECREF(key);
    if (!shape_fits(tuple, cols, shape)) {
        Py_DECREF(tuple);
        return ERR;
    }
    shape->tuple = tuple;
    return OK;
}

enum { FIX_NONE = 0, FIX_BOOL = 1, FIX_BYTEA = 2 };

/* The values of a column list laid out on the relation (as wal2json.py's _values): new reference
 * in *out; BACK for a bytea value that is not a string (Python raises). */
static int
values_of(const Shape *shape, const Cols *cols, PyObject *missing, PyObject **out)
{
    Py_ssize_t n = cols->n;
    const char *fix = shape->fix == Py_None ? NULL : PyBytes_AS_STRING(shape->fix);
    PyObject *row = PyTuple_New(shape->positions == Py_None ? n : shape->ncolumns);
    if (row == NULL)
        return ERR;
    if (shape->positions != Py_None)
        for (Py_ssize_t i = 0; i < shape->ncolumns; i++)
            PyTuple_SET_ITEM(row, i, Py_NewRef(missing));
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = cols->items[i].value;
        if (fix != NULL && fix[i] != FIX_NONE && v != Py_None) {
            if (fix[i] == FIX_BOOL) {
                v = Py_NewRef(v == Py_True ? str_t : str_f);
            } else {
                if (!PyUnicode_Check(v)) {
                    Py_DECREF(row);
                    return BACK;
                }
                if ((v = PyUnicode_Concat(str_bytea_prefix, v)) == NULL) {
                    Py_DECREF(row);
                    return ERR;
                }
            }
        } else {
            Py_INCREF(v);
        }
        Py_ssize_t pos = i;
        if (shape->positions != Py_None) {
            pos = PyLong_AsSsize_t(PyTuple_GET_ITEM(shape->positions, i));
            if (pos == -1 && PyErr_Occurred()) {
                Py_DECREF(v);
                Py_DECREF(row);
                return ERR;
            }
            if (pos < 0) { /* a generated column: pgoutput does not publish it */
                Py_DECREF(v);
                continue;
            }
            if (pos >= shape->ncolumns) {
                Py_DECREF(v);
                Py_DECREF(row);
                PyErr_SetString(PyExc_IndexError, "shape position out of range");
                return ERR;
            }
            Py_SETREF(((PyTupleObject *)row)->ob_item[pos], v);
        } else {
            PyTuple_SET_ITEM(row, pos, v);
        }
    }
    *out = row;
    return OK;
}

/* -- one action ------------------------------------------------------------------------------- */

static int
emit(State *st, PyObject *out, PyObject *event)
{
    if (st->begin != Py_None) {
        if (PyList_Append(out, st->begin) < 0)
            return -1;
        Py_SETREF(st->begin, Py_NewRef(Py_None));
        st->changed = 1;
    }
    return PyList_Append(out, event);
}

static int
on_begin(State *st, const Action *a)
{
    uint64_t lsn;
    if (a->xid_kind != J_INTEGER || a->xid.s[0] == '-' || a->xid.n > 18 || a->timestamp_kind != J_STRING
        || !lsn_of(&a->lsn, a->lsn_kind, &lsn))
        return BACK;
    long long x = 0;
    for (Py_ssize_t i = 0; i < a->xid.n; i++)
        x = x * 10 + (a->xid.s[i] - '0');
    PyObject *text = string_of(&a->timestamp);
    if (text == NULL)
        return PyErr_Occurred() ? ERR : BACK;
    PyObject *when = PyObject_CallOneArg(fromisoformat, text);
    Py_DECREF(text);
    if (when == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_ValueError))
            return ERR;
        PyErr_Clear(); /* Python reports it */
        return BACK;
    }
    PyObject *xid = PyLong_FromLongLong(x), *final_lsn = xid ? make_lsn(lsn) : NULL;
    if (final_lsn == NULL) {
        Py_XDECREF(xid);
        Py_DECREF(when);
        return ERR;
    }
    PyObject *values[N_BEGIN] = {xid, final_lsn, when};
    PyObject *begin = build(begin_type, begin_fields, values, N_BEGIN);
    Py_DECREF(final_lsn);
    if (begin == NULL) {
        Py_DECREF(xid);
        Py_DECREF(when);
        return ERR;
    }
    Py_SETREF(st->xid, xid);
    Py_SETREF(st->time, when);
    Py_SETREF(st->begin, begin);
    st->in_txn = 1;
    st->changed = 1;
    return OK;
}

static int
on_commit(State *st, const Action *a, PyObject *out)
{
    if (st->begin != Py_None) { /* nothing was sent: skip the empty transaction */
        Py_SETREF(st->begin, Py_NewRef(Py_None));
        st->in_txn = 0;
        st->changed = 1;
        return OK;
    }
    uint64_t lsn, next;
    if (st->time == Py_None || !lsn_of(&a->lsn, a->lsn_kind, &lsn) || !lsn_of(&a->nextlsn, a->nextlsn_kind, &next))
        return BACK;
    PyObject *commit_lsn = make_lsn(lsn), *end_lsn = commit_lsn ? make_lsn(next) : NULL;
    if (end_lsn == NULL) {
        Py_XDECREF(commit_lsn);
        return ERR;
    }
    PyObject *values[N_COMMIT] = {st->xid, commit_lsn, end_lsn, st->time};
    PyObject *commit = build(commit_type, commit_fields, values, N_COMMIT);
    Py_DECREF(commit_lsn);
    Py_DECREF(end_lsn);
    if (commit == NULL)
        return ERR;
    int failed = PyList_Append(out, commit);
    Py_DECREF(commit);
    if (failed < 0)
        return ERR;
    st->in_txn = 0;
    st->changed = 1;
    return OK;
}

static int
on_change(State *st, const Action *a, PyObject *out)
{
    uint64_t lsn_value;
    char kind = a->action;
    if (st->time == Py_None || a->schema_kind != J_STRING || a->table_kind != J_STRING
        || !lsn_of(&a->lsn, a->lsn_kind, &lsn_value))
        return BACK;
    if (kind == 'D' ? a->identity.present != 1 : a->columns.present != 1)
        return BACK; /* Python: a KeyError or a TypeError */
    Shape shape = {0}, ishape = {0};
    PyObject *new = NULL, *old = NULL, *lsn = NULL, *change = NULL;
    int got;
    if (kind == 'D') {
        got = shape_of(st, a, &a->identity, 1, &shape);
        if (got == OK)
            got = values_of(&shape, &a->identity, Py_None, &old);
    } else {
        got = shape_of(st, a, &a->columns, kind == 'U', &shape);
        if (got == OK)
            got = values_of(&shape, &a->columns, kind == 'I' ? Py_None : unchanged_toast, &new);
        if (got == OK && kind == 'U' && a->identity.present == 1) {
            got = shape_of(st, a, &a->identity, 1, &ishape);
            if (got == OK && ishape.relation == shape.relation) {
                got = values_of(&ishape, &a->identity, Py_None, &old);
                if (got == OK && shape.compare != Py_None) {
                    int same = 1;
                    /* same == 1, not just non-zero: -1 is a failed comparison, whose error must
                     * not reach another call into Python */
                    for (Py_ssize_t i = 0; same == 1 && i < PyTuple_GET_SIZE(shape.compare); i++) {
                        Py_ssize_t k = PyLong_AsSsize_t(PyTuple_GET_ITEM(shape.compare, i));
                        if (k < 0 || k >= PyTuple_GET_SIZE(old) || k >= PyTuple_GET_SIZE(new)) {
                            if (!PyErr_Occurred())
                                PyErr_SetString(PyExc_IndexError, "key index out of range");
                            got = ERR;
                            break;
                        }
                        same = PyObject_RichCompareBool(PyTuple_GET_ITEM(old, k), PyTuple_GET_ITEM(new, k), Py_EQ);
                        if (same < 0)
                            got = ERR;
                    }
                    if (got == OK && same == 1)
                        Py_CLEAR(old); /* the key did not change: pgoutput sends no old key then */
                }
            }
        }
    }
    if (got == OK && (lsn = make_lsn(lsn_value)) == NULL)
        got = ERR;
    if (got == OK) {
        PyObject *op = kind == 'I' ? op_insert : kind == 'U' ? op_update : op_delete;
        PyObject *values[N_FIELDS] = {op, shape.relation, new ? new : Py_None, old ? old : Py_None,
                                      lsn, st->xid, st->time};
        change = build(change_type, fields, values, N_FIELDS);
        if (change == NULL || emit(st, out, change) < 0)
            got = ERR;
    }
    Py_XDECREF(change);
    Py_XDECREF(lsn);
    Py_XDECREF(new);
    Py_XDECREF(old);
    Py_XDECREF(shape.tuple);
    Py_XDECREF(ishape.tuple);
    return got;
}

/* One wal2json message: OK (its events appended to out, state updated), BACK, or ERR. */
static int
decode_one(State *st, const unsigned char *data, Py_ssize_t size, PyObject *out)
{
    if (st->truncating)
        return BACK;
    Action a;
    memset(&a, 0, sizeof a);
    cols_init(&a.columns);
    cols_init(&a.identity);
    int got = parse_action(data, size, &a);
    if (got == OK) {
        switch (a.action) {
        case 'B': got = on_begin(st, &a); break;
        case 'C': got = on_commit(st, &a, out); break;
        case 'I':
        case 'U':
        case 'D': got = on_change(st, &a, out); break;
        default: got = BACK; /* truncate, message, unknown: Python */
        }
    }
    cols_free(&a.columns);
    cols_free(&a.identity);
    return got;
}

/* step(decoder, data, out) -> bool */
static PyObject *
step(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyList_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "step(decoder, data, out: list) takes 3 arguments");
        return NULL;
    }
    if (change_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "step: configure() was not called");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    State st;
    PyObject *result = NULL;
    if (load_state(args[0], &st) == 0) {
        Py_ssize_t before = PyList_GET_SIZE(args[2]);
        int got = decode_one(&st, view.buf, view.len, args[2]);
        if (got == ERR && PyList_GET_SIZE(args[2]) > before)
            PyList_SetSlice(args[2], before, PyList_GET_SIZE(args[2]), NULL);
        if (store_state(&st) == 0 && got != ERR)
            result = Py_NewRef(got == OK ? Py_True : Py_False);
    }
    PyBuffer_Release(&view);
    return result;
}

/* -- the read loop ---------------------------------------------------------------------------- */

static int
decode_xlogdata(void *state, const unsigned char *data, Py_ssize_t n, PyObject *out, int *ended)
{
    State *st = (State *)state;
    int got = decode_one(st, data + 25, n - 25, out);
    *ended = !st->in_txn;
    return got == ERR ? PUMP_ERROR : got == BACK ? PUMP_BACK : PUMP_DECODED;
}

static int
store_pump_state(void *state)
{
    return store_state((State *)state);
}

/* pump(conn_ptr, decoder, out, max_events, max_messages, stop_at)
 *   -> (outcome, messages taken, highest WAL end seen, position, message bytes or None)
 * As replicator._pgoutput.pump: XLogData messages this module decodes become events without
 * leaving C; anything else (keepalives, truncate, logical messages, a message it hands back) is
 * returned to stream.py. position: the XLogData start of the last message after which no
 * transaction was open (a Commit), 0 if none. */
static PyObject *
pump(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PumpArgs a;
    if (pump_args(args, nargs, 6, 2, change_type != NULL, &a) < 0)
        return NULL;
    if (!PyList_Check(a.out)) {
        PyErr_SetString(PyExc_TypeError, "pump: out must be a list");
        return NULL;
    }
    State st;
    if (load_state(args[1], &st) < 0)
        return NULL;
    return pump_loop(&a, &st, decode_xlogdata, store_pump_state);
}

static PyMethodDef methods[] = {
    {"bind_libpq", bind_libpq, METH_VARARGS,
     "bind_libpq(path, expected_version) -> (version, library): find psycopg's libpq for pump()."},
    {"configure", configure, METH_VARARGS,
     "configure(Change, Lsn, Op.INSERT, Op.UPDATE, Op.DELETE, UNCHANGED_TOAST, Begin, Commit, fromisoformat)"},
    {"step", (PyCFunction)(void (*)(void))step, METH_FASTCALL,
     "step(decoder, data, out) -> bool: decode one wal2json action into out; False: left to Python."},
    {"pump", (PyCFunction)(void (*)(void))pump, METH_FASTCALL,
     "pump(conn_ptr, decoder, out, max_events, max_messages, stop_at)\n"
     "    -> (outcome, messages taken, highest WAL end seen, position, message or None)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "replicator._wal2json",
    .m_doc = "wal2json format-version 2 actions decoded in C (see replicator/decoding/wal2json.py).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__wal2json(void)
{
    if ((str_t = PyUnicode_InternFromString("t")) == NULL || (str_f = PyUnicode_InternFromString("f")) == NULL
        || (str_bytea_prefix = PyUnicode_InternFromString("\\x")) == NULL
        || (attr_xid = PyUnicode_InternFromString("_xid")) == NULL
        || (attr_time = PyUnicode_InternFromString("_time")) == NULL
        || (attr_begin = PyUnicode_InternFromString("_begin")) == NULL
        || (attr_in_txn = PyUnicode_InternFromString("in_transaction")) == NULL
        || (attr_truncate = PyUnicode_InternFromString("_truncate")) == NULL
        || (attr_shapes = PyUnicode_InternFromString("_native_shapes")) == NULL
        || (attr_shape_fn = PyUnicode_InternFromString("_native_shape")) == NULL)
        return NULL;
    return PyModule_Create(&module);
}
