/*
 * Finding the libpq psycopg uses, shared by replicator/_relay.c and replicator/_pgoutput.c.
 *
 * A PGconn from one libpq build passed to another would be undefined behaviour (psycopg-binary
 * bundles its own libpq), so neither extension links against libpq. The caller passes the path
 * of an object psycopg has already loaded (replicator/libpq.py: its pq extension module, or the
 * libpq its ctypes wrapper loaded); it is opened with RTLD_NOLOAD (never loading anything new)
 * and the functions are looked up in that object's dependency tree, where the dynamic linker
 * finds exactly the libpq that object uses. The library's version must be psycopg's.
 */

#ifndef REPLICATOR_LIBPQ_BIND_H
#define REPLICATOR_LIBPQ_BIND_H

#include <Python.h>

#include <dlfcn.h>

/*
 * Looks up names[0..n) (which must include "PQlibVersion" at index version_at) into found[].
 * Returns a new reference to (version, library file), or NULL with OSError set; found[] is
 * only meaningful on success, so a failed call leaves the caller's earlier binding alone.
 * The handle is never dlclose()d: psycopg keeps the library loaded for the life of the process.
 */
static PyObject *
find_psycopg_libpq(const char *path, int expected, const char *const *names, void **found, size_t n,
                   size_t version_at)
{
    dlerror();
    void *handle = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    if (handle == NULL) {
        const char *why = dlerror();
        return PyErr_Format(PyExc_OSError, "%s is not loaded in this process (%s)", path,
                            why ? why : "dlopen with RTLD_NOLOAD found no such object");
    }
    for (size_t i = 0; i < n; i++) {
        found[i] = dlsym(handle, names[i]);
        if (found[i] == NULL)
            return PyErr_Format(PyExc_OSError, "%s not found from %s", names[i], path);
    }
    Dl_info info;
    const char *library = "?";
    if (dladdr(found[0], &info) && info.dli_fname)
        library = info.dli_fname;
    int version = ((int (*)(void))found[version_at])();
    if (version != expected)
        return PyErr_Format(PyExc_OSError, "the libpq found from %s (%s) is version %d, not %d", path,
                            library, version, expected);
    return Py_BuildValue("(is)", version, library);
}

#endif
