/*
 * procly._semlock: an unnamed POSIX semaphore living in shared memory.
 *
 * The sem_t sits inside a memory mapping that procly owns (a memfd arena, see
 * procly/_heap.py) and is initialised with pshared=1, so every process that maps the
 * arena shares it. There is no name, hence nothing in /dev/shm to leak: the memory goes
 * away with the last mapping.
 *
 * acquire/release are C methods so that an uncontended Lock costs what the standard
 * library's costs. Owner tracking (count, owning thread) is per process, as in
 * CPython; _after_fork() clears it in a forked child.
 *
 * Portability (one wheel for every CPython >= 3.11, every glibc >= 2.17, musl):
 *
 * - Only the limited C API of 3.11 is used (Py_LIMITED_API, set by setup.py), so the
 *   module is built once as an abi3 extension. The type is a heap type made with
 *   PyType_FromSpec; Py_buffer is part of the limited API since 3.11 and
 *   METH_FASTCALL | METH_KEYWORDS since 3.10.
 * - glibc 2.34 moved the semaphore functions from libpthread into libc under a new
 *   symbol version (GLIBC_2.34), so an extension linked on a recent system would not
 *   load on an older one. On glibc we bind each of them to its original version
 *   (still exported by every newer glibc) with .symver, see GLIBC_COMPAT below.
 * - sem_clockwait (glibc 2.30, absent from musl) is looked up at run time instead of
 *   being linked: see timed_wait().
 */
#define PY_SSIZE_T_CLEAN
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include <Python.h>
#include <pythread.h>
/* Never Py_RETURN_TRUE/FALSE/NONE here: headers of Python 3.12+ define them without a new
 * reference (their singletons are immortal), so a build with newer headers would steal
 * references from a 3.11 interpreter and free True. Py_NewRef is right everywhere. */
#include <semaphore.h>
#include <errno.h>
#include <time.h>
#include <math.h>
#include <dlfcn.h>
#include <stdlib.h>

#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
/* The first version of each symbol, per architecture (what glibc 2.17 exports). */
#  if defined(__x86_64__) && !defined(__ILP32__)
#    define GLIBC_BASE "GLIBC_2.2.5"
#  elif defined(__aarch64__)
#    define GLIBC_BASE "GLIBC_2.17"
#  elif defined(__powerpc64__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#    define GLIBC_BASE "GLIBC_2.17"
#  elif defined(__s390x__)
#    define GLIBC_BASE "GLIBC_2.2"
#  endif
#  ifdef GLIBC_BASE
#    define GLIBC_COMPAT(name) __asm__(".symver " #name "," #name "@" GLIBC_BASE);
GLIBC_COMPAT(sem_init)
GLIBC_COMPAT(sem_wait)
GLIBC_COMPAT(sem_trywait)
GLIBC_COMPAT(sem_timedwait)
GLIBC_COMPAT(sem_post)
GLIBC_COMPAT(sem_getvalue)
GLIBC_COMPAT(dlsym)
#  endif
#endif

enum { KIND_SEMAPHORE = 0, KIND_RECURSIVE = 1 };

typedef struct {
    PyObject_HEAD
    sem_t *sem;
    Py_buffer view;
    int kind;
    int maxvalue;
    int count;                 /* acquisitions held by this process */
    unsigned long last_tid;    /* thread that last acquired, in this process */
} SemLockObject;

/* count and last_tid are read and written with relaxed atomics (plain moves on x86 and
 * arm64): under the GIL that changes nothing, and on a free-threaded build several
 * threads holding one semaphore at once update count without losing a change. */
#define COUNT(o) __atomic_load_n(&(o)->count, __ATOMIC_RELAXED)
#define COUNT_ADD(o, n) __atomic_add_fetch(&(o)->count, (n), __ATOMIC_RELAXED)
#define COUNT_SET(o, n) __atomic_store_n(&(o)->count, (n), __ATOMIC_RELAXED)
#define ISMINE(o) (COUNT(o) > 0 && PyThread_get_thread_ident() == __atomic_load_n(&(o)->last_tid, __ATOMIC_RELAXED))

/* One acquisition fewer, never below zero (a semaphore released by a thread or process
 * that did not acquire it here). */
static inline void
count_drop(SemLockObject *o)
{
    int c = COUNT(o);
    while (c > 0 && !__atomic_compare_exchange_n(&o->count, &c, c - 1, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
}

typedef int (*clockwait_fn)(sem_t *, clockid_t, const struct timespec *);
static clockwait_fn sem_clockwait_ptr;   /* NULL: glibc < 2.30 or musl */

/* Longest single sem_timedwait() when sem_clockwait() is missing. */
#define SLICE_NS 50000000L  /* 50 ms */

static void
timespec_add_ns(struct timespec *t, long long ns)
{
    t->tv_sec += (time_t)(ns / 1000000000LL);
    t->tv_nsec += (long)(ns % 1000000000LL);
    if (t->tv_nsec >= 1000000000L) {
        t->tv_sec += 1;
        t->tv_nsec -= 1000000000L;
    }
}

/*
 * Wait for the semaphore until *deadline* on CLOCK_MONOTONIC. Returns 0 or -1 with
 * errno set (ETIMEDOUT, EINTR, ...). Called without the GIL.
 *
 * With sem_clockwait() (glibc >= 2.30, found at run time) the kernel waits against
 * CLOCK_MONOTONIC itself. Without it (older glibc, musl) only sem_timedwait() exists,
 * whose deadline is on CLOCK_REALTIME, which an administrator or NTP may step. We
 * therefore wait in slices of at most SLICE_NS: each slice's realtime deadline is
 * "now + min(remaining, slice)", and after each slice the remaining time is computed
 * again from CLOCK_MONOTONIC. A forward step of the wall clock thus ends a slice
 * early (and we wait again); a backward step can lengthen only the slice in progress.
 * The overall timeout is measured on the monotonic clock either way. A poll loop over
 * sem_trywait() would avoid even that, at the cost of latency or CPU; a raw futex wait
 * would depend on each libc's private sem_t layout.
 */
static int
timed_wait(sem_t *sem, const struct timespec *deadline)
{
    struct timespec now, until;
    long long remaining;

    if (sem_clockwait_ptr != NULL)
        return sem_clockwait_ptr(sem, CLOCK_MONOTONIC, deadline);
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        remaining = (long long)(deadline->tv_sec - now.tv_sec) * 1000000000LL
                    + (deadline->tv_nsec - now.tv_nsec);
        if (remaining <= 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        clock_gettime(CLOCK_REALTIME, &until);
        timespec_add_ns(&until, remaining < SLICE_NS ? remaining : SLICE_NS);
        if (sem_timedwait(sem, &until) == 0)
            return 0;
        if (errno != ETIMEDOUT)
            return -1;
    }
}

static int
semlock_init(SemLockObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"buffer", "offset", "kind", "maxvalue", "value", NULL};
    PyObject *buffer;
    Py_ssize_t offset;
    int kind, maxvalue, value = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Onii|i", kwlist,
                                     &buffer, &offset, &kind, &maxvalue, &value))
        return -1;
    if (kind != KIND_SEMAPHORE && kind != KIND_RECURSIVE) {
        PyErr_SetString(PyExc_ValueError, "unrecognized kind");
        return -1;
    }
    if (self->view.obj != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "SemLock already initialised");
        return -1;
    }
    if (PyObject_GetBuffer(buffer, &self->view, PyBUF_WRITABLE) < 0)
        return -1;
    if (offset < 0 || offset + (Py_ssize_t)sizeof(sem_t) > self->view.len) {
        PyBuffer_Release(&self->view);
        PyErr_SetString(PyExc_ValueError, "semaphore does not fit in the buffer");
        return -1;
    }
    self->sem = (sem_t *)((char *)self->view.buf + offset);
    self->kind = kind;
    self->maxvalue = maxvalue;
    self->count = 0;
    self->last_tid = 0;
    if (value >= 0) {           /* creator: initialise the shared semaphore */
        if (sem_init(self->sem, 1, (unsigned int)value) < 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
    }
    return 0;
}

static void
semlock_dealloc(SemLockObject *self)
{
    PyTypeObject *tp = Py_TYPE((PyObject *)self);
    freefunc tp_free = (freefunc)PyType_GetSlot(tp, Py_tp_free);
    if (self->view.obj != NULL)
        PyBuffer_Release(&self->view);
    tp_free((PyObject *)self);
    Py_DECREF(tp);              /* instances of heap types own a reference to it */
}

static int
check_ready(SemLockObject *self)
{
    if (self->sem == NULL) {
        PyErr_SetString(PyExc_ValueError, "SemLock not initialised");
        return -1;
    }
    return 0;
}

static PyObject *
acquire_impl(SemLockObject *self, int blocking, PyObject *timeout_obj)
{
    int res, err = 0;
    double timeout = -1.0;
    struct timespec deadline = {0, 0};

    if (check_ready(self) < 0)
        return NULL;
    if (self->kind == KIND_RECURSIVE && ISMINE(self)) {
        COUNT_ADD(self, 1);
        return Py_NewRef(Py_True);
    }
    if (blocking && timeout_obj != Py_None) {
        timeout = PyFloat_AsDouble(timeout_obj);
        if (timeout == -1.0 && PyErr_Occurred())
            return NULL;
        if (timeout < 0.0 || isnan(timeout))
            timeout = 0.0;
    }
    /* Fast path: no system call, no GIL release. */
    do {
        res = sem_trywait(self->sem);
    } while (res < 0 && errno == EINTR);
    if (res == 0)
        goto acquired;
    if (errno != EAGAIN)
        return PyErr_SetFromErrno(PyExc_OSError);
    if (!blocking || timeout == 0.0)
        return Py_NewRef(Py_False);

    if (timeout > 0.0) {
        double whole;
        double frac = modf(timeout, &whole);
        clock_gettime(CLOCK_MONOTONIC, &deadline);
        deadline.tv_sec += (time_t)whole;
        timespec_add_ns(&deadline, (long long)(frac * 1e9));
    }
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        if (timeout > 0.0)
            res = timed_wait(self->sem, &deadline);
        else
            res = sem_wait(self->sem);
        err = errno;
        Py_END_ALLOW_THREADS
        if (res == 0)
            break;
        if (err == EINTR) {
            if (PyErr_CheckSignals() < 0)
                return NULL;     /* e.g. KeyboardInterrupt: propagate promptly */
            continue;
        }
        if (err == ETIMEDOUT)
            return Py_NewRef(Py_False);
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
acquired:
    COUNT_ADD(self, 1);
    __atomic_store_n(&self->last_tid, PyThread_get_thread_ident(), __ATOMIC_RELAXED);
    return Py_NewRef(Py_True);
}

/* acquire(block=True, timeout=None), parsed by hand: this is the hot path. */
static PyObject *
semlock_acquire(SemLockObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    int blocking = 1;
    PyObject *block_obj = NULL, *timeout_obj = Py_None;
    Py_ssize_t i, nkw = kwnames ? PyTuple_Size(kwnames) : 0;

    if (nargs > 2) {
        PyErr_Format(PyExc_TypeError, "acquire() takes at most 2 arguments (%zd given)", nargs);
        return NULL;
    }
    if (nargs >= 1)
        block_obj = args[0];
    if (nargs == 2)
        timeout_obj = args[1];
    for (i = 0; i < nkw; i++) {
        PyObject *name = PyTuple_GetItem(kwnames, i);  /* borrowed */
        if (PyUnicode_CompareWithASCIIString(name, "block") == 0 && nargs < 1)
            block_obj = args[nargs + i];
        else if (PyUnicode_CompareWithASCIIString(name, "timeout") == 0 && nargs < 2)
            timeout_obj = args[nargs + i];
        else {
            PyErr_Format(PyExc_TypeError, "acquire() got an unexpected keyword argument '%U'", name);
            return NULL;
        }
    }
    if (block_obj != NULL && (blocking = PyObject_IsTrue(block_obj)) < 0)
        return NULL;
    return acquire_impl(self, blocking, timeout_obj);
}

static PyObject *
semlock_release(SemLockObject *self, PyObject *Py_UNUSED(ignored))
{
    if (check_ready(self) < 0)
        return NULL;
    if (self->kind == KIND_RECURSIVE) {
        if (!ISMINE(self)) {
            PyErr_SetString(PyExc_AssertionError,
                            "attempt to release recursive lock not owned by thread");
            return NULL;
        }
        if (COUNT(self) > 1) {
            COUNT_ADD(self, -1);
            return Py_NewRef(Py_None);
        }
    }
    else {
        int sval;
        if (sem_getvalue(self->sem, &sval) < 0)
            return PyErr_SetFromErrno(PyExc_OSError);
        if (sval >= self->maxvalue) {
            PyErr_SetString(PyExc_ValueError, "semaphore or lock released too many times");
            return NULL;
        }
    }
    if (sem_post(self->sem) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    count_drop(self);
    return Py_NewRef(Py_None);
}

static PyObject *
semlock_enter(SemLockObject *self, PyObject *Py_UNUSED(ignored))
{
    return acquire_impl(self, 1, Py_None);
}

static PyObject *
semlock_exit(SemLockObject *self, PyObject *args)
{
    return semlock_release(self, NULL);
}

static PyObject *
semlock_count(SemLockObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong((long)COUNT(self));
}

static PyObject *
semlock_is_mine(SemLockObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(ISMINE(self));
}

static PyObject *
semlock_get_value(SemLockObject *self, PyObject *Py_UNUSED(ignored))
{
    int sval;
    if (check_ready(self) < 0)
        return NULL;
    if (sem_getvalue(self->sem, &sval) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    if (sval < 0)   /* some systems report waiters as a negative value */
        sval = 0;
    return PyLong_FromLong((long)sval);
}

static PyObject *
semlock_is_zero(SemLockObject *self, PyObject *Py_UNUSED(ignored))
{
    int sval;
    if (check_ready(self) < 0)
        return NULL;
    if (sem_getvalue(self->sem, &sval) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyBool_FromLong(sval <= 0);
}

static PyObject *
semlock_after_fork(SemLockObject *self, PyObject *Py_UNUSED(ignored))
{
    COUNT_SET(self, 0);
    return Py_NewRef(Py_None);
}

static PyObject *
semlock_get_kind(SemLockObject *self, void *closure) { return PyLong_FromLong(self->kind); }

static PyObject *
semlock_get_maxvalue(SemLockObject *self, void *closure) { return PyLong_FromLong(self->maxvalue); }

static PyMethodDef semlock_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))semlock_acquire, METH_FASTCALL | METH_KEYWORDS,
     "acquire(block=True, timeout=None) -> bool: take the semaphore."},
    {"release", (PyCFunction)semlock_release, METH_NOARGS, "release(): give the semaphore back."},
    {"__enter__", (PyCFunction)semlock_enter, METH_NOARGS, "Acquire on entering a with block."},
    {"__exit__", (PyCFunction)semlock_exit, METH_VARARGS, "Release on leaving a with block."},
    {"_count", (PyCFunction)semlock_count, METH_NOARGS, "Acquisitions held by this process."},
    {"_is_mine", (PyCFunction)semlock_is_mine, METH_NOARGS, "Whether this thread holds it."},
    {"_get_value", (PyCFunction)semlock_get_value, METH_NOARGS, "The semaphore's value."},
    {"_is_zero", (PyCFunction)semlock_is_zero, METH_NOARGS, "Whether the value is zero."},
    {"_after_fork", (PyCFunction)semlock_after_fork, METH_NOARGS, "Forget ownership (forked child)."},
    {NULL, NULL, 0, NULL}
};

static PyGetSetDef semlock_getset[] = {
    {"kind", (getter)semlock_get_kind, NULL, "0: semaphore, 1: recursive mutex", NULL},
    {"maxvalue", (getter)semlock_get_maxvalue, NULL, "largest value release() allows", NULL},
    {NULL}
};

static PyType_Slot semlock_slots[] = {
    {Py_tp_dealloc, semlock_dealloc},
    {Py_tp_doc, "SemLock(buffer, offset, kind, maxvalue, value=-1): a semaphore in shared memory."},
    {Py_tp_methods, semlock_methods},
    {Py_tp_getset, semlock_getset},
    {Py_tp_init, semlock_init},
    {Py_tp_new, PyType_GenericNew},
    {0, NULL}
};

static PyType_Spec semlock_spec = {
    .name = "procly._semlock.SemLock",
    .basicsize = sizeof(SemLockObject),
    .itemsize = 0,
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .slots = semlock_slots,
};

static struct PyModuleDef semlock_module = {
    PyModuleDef_HEAD_INIT, "procly._semlock",
    "Unnamed POSIX semaphores in shared memory (see procly.synchronize).", -1, NULL, NULL, NULL, NULL, NULL
};

PyMODINIT_FUNC
PyInit__semlock(void)
{
    PyObject *m, *type;

    /* PROCLY_NO_SEM_CLOCKWAIT=1 takes the older-libc path here too (for its tests). */
    {
        const char *off = getenv("PROCLY_NO_SEM_CLOCKWAIT");
        if (off == NULL || off[0] == '\0' || (off[0] == '0' && off[1] == '\0'))
            sem_clockwait_ptr = (clockwait_fn)dlsym(RTLD_DEFAULT, "sem_clockwait");
    }
    m = PyModule_Create(&semlock_module);
    if (m == NULL)
        return NULL;
#ifdef Py_GIL_DISABLED
    /* Free-threaded build: safe without the GIL. The semaphore itself is the
     * synchronization, and count and last_tid are atomic (see COUNT). */
    PyUnstable_Module_SetGIL(m, Py_MOD_GIL_NOT_USED);
#endif
    type = PyType_FromSpec(&semlock_spec);
    if (type == NULL || PyModule_AddObject(m, "SemLock", type) < 0) {
        Py_XDECREF(type);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "SEMAPHORE", KIND_SEMAPHORE) < 0
        || PyModule_AddIntConstant(m, "RECURSIVE_MUTEX", KIND_RECURSIVE) < 0
        || PyModule_AddIntConstant(m, "SEM_SIZE", (long)sizeof(sem_t)) < 0
        || PyModule_AddIntConstant(m, "HAVE_SEM_CLOCKWAIT", sem_clockwait_ptr != NULL) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
