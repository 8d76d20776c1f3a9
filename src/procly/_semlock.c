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
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pythread.h>
#include <semaphore.h>
#include <errno.h>
#include <time.h>
#include <math.h>

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

#define ISMINE(o) ((o)->count > 0 && PyThread_get_thread_ident() == (o)->last_tid)

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
    if (self->view.obj != NULL)
        PyBuffer_Release(&self->view);
    Py_TYPE(self)->tp_free((PyObject *)self);
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
        ++self->count;
        Py_RETURN_TRUE;
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
        Py_RETURN_FALSE;

    if (timeout > 0.0) {
        double whole;
        double frac = modf(timeout, &whole);
        clock_gettime(CLOCK_MONOTONIC, &deadline);
        deadline.tv_sec += (time_t)whole;
        deadline.tv_nsec += (long)(frac * 1e9);
        if (deadline.tv_nsec >= 1000000000L) {
            deadline.tv_sec += 1;
            deadline.tv_nsec -= 1000000000L;
        }
    }
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        if (timeout > 0.0)
            res = sem_clockwait(self->sem, CLOCK_MONOTONIC, &deadline);
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
            Py_RETURN_FALSE;
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
acquired:
    ++self->count;
    self->last_tid = PyThread_get_thread_ident();
    Py_RETURN_TRUE;
}

/* acquire(block=True, timeout=None), parsed by hand: this is the hot path. */
static PyObject *
semlock_acquire(SemLockObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    int blocking = 1;
    PyObject *block_obj = NULL, *timeout_obj = Py_None;
    Py_ssize_t i, nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;

    if (nargs > 2) {
        PyErr_Format(PyExc_TypeError, "acquire() takes at most 2 arguments (%zd given)", nargs);
        return NULL;
    }
    if (nargs >= 1)
        block_obj = args[0];
    if (nargs == 2)
        timeout_obj = args[1];
    for (i = 0; i < nkw; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
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
        if (self->count > 1) {
            --self->count;
            Py_RETURN_NONE;
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
    if (self->count > 0)
        --self->count;
    Py_RETURN_NONE;
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
    return PyLong_FromLong((long)self->count);
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
    self->count = 0;
    Py_RETURN_NONE;
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

static PyTypeObject SemLockType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "procly._semlock.SemLock",
    .tp_basicsize = sizeof(SemLockObject),
    .tp_dealloc = (destructor)semlock_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "SemLock(buffer, offset, kind, maxvalue, value=-1): a semaphore in shared memory.",
    .tp_methods = semlock_methods,
    .tp_getset = semlock_getset,
    .tp_init = (initproc)semlock_init,
    .tp_new = PyType_GenericNew,
};

static struct PyModuleDef semlock_module = {
    PyModuleDef_HEAD_INIT, "procly._semlock",
    "Unnamed POSIX semaphores in shared memory (see procly.synchronize).", -1, NULL
};

PyMODINIT_FUNC
PyInit__semlock(void)
{
    PyObject *m;
    if (PyType_Ready(&SemLockType) < 0)
        return NULL;
    m = PyModule_Create(&semlock_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&SemLockType);
    if (PyModule_AddObject(m, "SemLock", (PyObject *)&SemLockType) < 0) {
        Py_DECREF(&SemLockType);
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddIntConstant(m, "SEMAPHORE", KIND_SEMAPHORE);
    PyModule_AddIntConstant(m, "RECURSIVE_MUTEX", KIND_RECURSIVE);
    PyModule_AddIntConstant(m, "SEM_SIZE", (long)sizeof(sem_t));
    return m;
}
