/* agent._pause: the hot part of a pause (agent/ptrace.py) in C.
 *
 * Between the first PTRACE_INTERRUPT and the walk's go, and between the
 * walk's end and the last PTRACE_DETACH, the target is stopped while the
 * agent runs. In Python that took 150-250 us: each step is a few lines of
 * cold bytecode (a walk or a decode has just evicted it from the caches),
 * while the system calls themselves take a few microseconds. Here the
 * sequence runs as one call for the common case only: every thread
 * reaches a plain stop, no thread is new, every GETREGS works. Anything
 * else comes back to Python with what was seen so far, and PausedProcess
 * goes on down its general path (which knows clones, exits, zombies,
 * stragglers and deadlines). Nothing here decides policy, keeps state
 * between calls or writes to the target: the requests are INTERRUPT,
 * GETREGS and DETACH, as in ptrace.py.
 *
 * The GIL is held throughout: a pause must not wait for another Python
 * thread to give it back (the switch interval is 5 ms). Every call is
 * bounded by the deadline and `patience_ns` given.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef PTRACE_INTERRUPT
#define PTRACE_INTERRUPT 0x4207
#endif
#ifndef PTRACE_EVENT_STOP
#define PTRACE_EVENT_STOP 128
#endif
#ifndef PTRACE_GETSIGMASK
#define PTRACE_GETSIGMASK 0x420a
#endif

/* What stop() ends with (ptrace.py: STOP_*). */
enum { STOP_OK = 0, STOP_SLOW, STOP_ODD, STOP_NEW, STOP_REGS };

#define BACKOFF_YIELDS 100      /* fruitless rounds spent in sched_yield before sleeping */
#define BACKOFF_SLEEP_NS 200000

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The ints of a Python sequence into a malloc'd array (NULL and an exception on error). */
static long *longs_of(PyObject *seq, Py_ssize_t *n, const char *what) {
    PyObject *fast = PySequence_Fast(seq, what);
    if (!fast)
        return NULL;
    *n = PySequence_Fast_GET_SIZE(fast);
    long *out = PyMem_Malloc((*n ? *n : 1) * sizeof(long));
    if (!out) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < *n; i++) {
        out[i] = PyLong_AsLong(PySequence_Fast_GET_ITEM(fast, i));
        if (out[i] == -1 && PyErr_Occurred()) {
            PyMem_Free(out);
            Py_DECREF(fast);
            return NULL;
        }
    }
    Py_DECREF(fast);
    return out;
}

static int cmp_long(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

/* interrupt(tids): PTRACE_INTERRUPT each, back to back. An error (ESRCH:
 * the thread is exiting) is left for waitpid to report. */
static PyObject *interrupt(PyObject *self, PyObject *args) {
    PyObject *seq;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "O", &seq))
        return NULL;
    long *tids = longs_of(seq, &n, "tids must be a sequence of ints");
    if (!tids)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++)
        ptrace(PTRACE_INTERRUPT, (pid_t)tids[i], 0, 0);
    PyMem_Free(tids);
    Py_RETURN_NONE;
}

/* A waitpid status that is a plain stop: the interrupt's PTRACE_EVENT_STOP
 * (also a group-stop's) or a signal-delivery-stop (the signal is kept by
 * the caller and delivered on detach). */
static int plain_stop(int status) {
    if (!WIFSTOPPED(status))
        return 0;
    int event = status >> 16;
    return event == 0 || event == PTRACE_EVENT_STOP;
}

struct seen { long tid; int status; int64_t ns; };   /* status -1: not our tracee (ECHILD) */

/* Waits (waitpid WNOHANG, __WALL) until every one of tids[0..n) has
 * reported; each report goes in seen[]. STOP_OK, STOP_ODD at the first
 * report that is not a plain stop, STOP_SLOW at until_ns. */
static int wait_stops(const long *tids, Py_ssize_t n, struct seen *seen, Py_ssize_t *nseen,
                      int64_t until_ns) {
    char *done = calloc(n ? n : 1, 1);
    if (!done)
        return STOP_SLOW;
    Py_ssize_t left = n;
    int spins = 0, code = STOP_OK;
    while (left > 0) {
        int progressed = 0;
        for (Py_ssize_t i = 0; i < n && code == STOP_OK; i++) {
            if (done[i])
                continue;
            int status = 0;
            pid_t r = waitpid((pid_t)tids[i], &status, __WALL | WNOHANG);
            if (r == 0 || (r < 0 && errno == EINTR))
                continue;
            struct seen *s = &seen[(*nseen)++];
            s->tid = tids[i];
            s->status = r < 0 ? -1 : status;
            s->ns = now_ns();
            done[i] = 1;
            left--;
            progressed = 1;
            if (r < 0 || !plain_stop(status))
                code = STOP_ODD;
        }
        if (code != STOP_OK || left == 0)
            break;
        if (now_ns() > until_ns) {
            code = STOP_SLOW;
            break;
        }
        if (progressed) {
            spins = 0;
        } else if (spins++ < BACKOFF_YIELDS) {
            sched_yield();       /* the threads we wait for may need this CPU to reach their stop */
        } else {
            struct timespec ts = {0, BACKOFF_SLEEP_NS};
            nanosleep(&ts, NULL);
        }
    }
    free(done);
    return code;
}

/* Every thread in /proc/pid/task is in known[0..n) (sorted): STOP_OK, else STOP_NEW
 * (also when the listing fails: the general path finds out why). */
static int no_new_thread(long pid, const long *known, Py_ssize_t n) {
    char path[64];
    snprintf(path, sizeof(path), "/proc/%ld/task", pid);
    DIR *d = opendir(path);
    if (!d)
        return STOP_NEW;
    int code = STOP_OK;
    struct dirent *e;
    while (code == STOP_OK && (e = readdir(d)) != NULL) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        long tid = strtol(e->d_name, NULL, 10);
        if (!bsearch(&tid, known, n, sizeof(long), cmp_long))
            code = STOP_NEW;
    }
    closedir(d);
    return code;
}

/* [(tid, status, ns), ...], or [(tid, ns), ...] without status; NULL and an exception on error. */
static PyObject *seen_list(const struct seen *v, Py_ssize_t n, int with_status) {
    PyObject *list = PyList_New(n);
    for (Py_ssize_t i = 0; list && i < n; i++) {
        PyObject *t = with_status ? Py_BuildValue("(liL)", v[i].tid, v[i].status, (long long)v[i].ns)
                                  : Py_BuildValue("(lL)", v[i].tid, (long long)v[i].ns);
        if (!t)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, i, t);
    }
    return list;
}

/* The signal tid was stopped with in a signal-delivery-stop (it is held,
 * and delivered on detach), 0 if none. */
static int held_signal(long tid, const struct seen *seen, Py_ssize_t nseen) {
    for (Py_ssize_t i = 0; i < nseen; i++)
        if (seen[i].tid == tid && seen[i].status >= 0 && (seen[i].status >> 16) == 0)
            return WSTOPSIG(seen[i].status);
    return 0;
}

/* Lets stopped thread tid go, untraced, with sig pending (the eBPF probe's
 * other runners: their handler of sig runs before any code of theirs), as
 * PausedProcess.hand_over does; 0, or -1 when it must not go this way (it
 * holds another signal, or blocks sig) or a request failed: then it is
 * still stopped, and the caller's hand_over decides. */
static int hand_over(long pid, long tid, int sig, const struct seen *seen, Py_ssize_t nseen) {
    int held = held_signal(tid, seen, nseen);
    uint64_t mask = 0;
    if (held && held != sig)
        return -1;
    if (ptrace(PTRACE_GETSIGMASK, (pid_t)tid, (void *)sizeof(mask), &mask) == -1 || (mask >> (sig - 1)) & 1)
        return -1;
    if (!held && syscall(SYS_tgkill, (pid_t)pid, (pid_t)tid, sig) == -1)
        return -1;
    /* (a tgkill sent and a detach that fails: the signal stays pending, and is harmless) */
    return ptrace(PTRACE_DETACH, (pid_t)tid, 0, (void *)(uintptr_t)held) == -1 ? -1 : 0;
}

/* stop(pid, pending, known, regs, until_ns, go_addr, handover, sig)
 *     -> (code, [(tid, status, ns), ...], errno, go_ns, [(tid, ns), ...])
 *
 * Waits for the interrupted threads `pending` to stop; checks that
 * /proc/pid/task holds no thread outside `known` (every tid the caller
 * traces, has given up on, or leaves running); PTRACE_GETREGS each
 * (tid, address) of `regs` into its address; then, if go_addr is not 0,
 * stores 1 in the u64 there (the eBPF probe's go: the walk may start) and
 * notes when, and hands over each thread of `handover` with sig (see
 * hand_over; the last list says which went, and when). It stops at the
 * first step that does not go as planned, with a code saying which
 * (errno: of a failed GETREGS). until_ns bounds the wait (CLOCK_MONOTONIC). */
static PyObject *stop(PyObject *self, PyObject *args) {
    long pid;
    PyObject *pending_seq, *known_seq, *regs_seq, *handover_seq;
    long long until_ns;
    unsigned long long go_addr;
    int sig;
    if (!PyArg_ParseTuple(args, "lOOOLKOi", &pid, &pending_seq, &known_seq, &regs_seq, &until_ns, &go_addr,
                          &handover_seq, &sig))
        return NULL;
    if (sig < 1 || sig > 64) {
        PyErr_SetString(PyExc_ValueError, "sig must be a signal number (1-64)");
        return NULL;
    }
    Py_ssize_t np = 0, nk = 0, nr = 0, nh = 0, nseen = 0, nhanded = 0;
    long *pending = NULL, *known = NULL, *regs = NULL, *handover = NULL;
    struct seen *seen = NULL, *handed = NULL;
    PyObject *out = NULL;
    int err = 0;
    int64_t go_ns = 0;
    if (!(pending = longs_of(pending_seq, &np, "pending must be a sequence of ints")) ||
        !(known = longs_of(known_seq, &nk, "known must be a sequence of ints")) ||
        !(regs = longs_of(regs_seq, &nr, "regs must be a flat sequence: tid, address, ...")) ||
        !(handover = longs_of(handover_seq, &nh, "handover must be a sequence of ints")))
        goto done;
    if (!(handed = PyMem_Malloc((nh ? nh : 1) * sizeof(*handed)))) {
        PyErr_NoMemory();
        goto done;
    }
    if (nr % 2) {
        PyErr_SetString(PyExc_ValueError, "regs must pair each tid with an address");
        goto done;
    }
    if (!(seen = PyMem_Malloc((np ? np : 1) * sizeof(*seen)))) {
        PyErr_NoMemory();
        goto done;
    }
    qsort(known, nk, sizeof(long), cmp_long);
    int code = wait_stops(pending, np, seen, &nseen, until_ns);
    if (code == STOP_OK)
        code = no_new_thread(pid, known, nk);
    for (Py_ssize_t i = 0; code == STOP_OK && i < nr; i += 2) {
        if (ptrace(PTRACE_GETREGS, (pid_t)regs[i], 0, (void *)(uintptr_t)regs[i + 1]) == -1) {
            err = errno;
            code = STOP_REGS;
        }
    }
    if (code == STOP_OK && go_addr) {
        __atomic_store_n((uint64_t *)(uintptr_t)go_addr, 1, __ATOMIC_SEQ_CST);
        go_ns = now_ns();
        for (Py_ssize_t i = 0; i < nh; i++) {
            if (hand_over(pid, handover[i], sig, seen, nseen) == 0) {
                handed[nhanded].tid = handover[i];
                handed[nhanded++].ns = now_ns();
            }
        }
    }
    PyObject *list = seen_list(seen, nseen, 1), *hlist = seen_list(handed, nhanded, 0);
    if (list && hlist)
        out = Py_BuildValue("(iOiLO)", code, list, err, (long long)go_ns, hlist);
    Py_XDECREF(list);
    Py_XDECREF(hlist);
done:
    PyMem_Free(pending);
    PyMem_Free(known);
    PyMem_Free(regs);
    PyMem_Free(handover);
    PyMem_Free(seen);
    PyMem_Free(handed);
    return out;
}

/* detach(pairs) -> [(errno, ns), ...]: PTRACE_DETACH each (tid, signal)
 * of a flat sequence tid, sig, ..., the signal delivered as it resumes;
 * ns: when that detach returned. */
static PyObject *detach(PyObject *self, PyObject *args) {
    PyObject *seq;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "O", &seq))
        return NULL;
    long *pairs = longs_of(seq, &n, "pairs must be a flat sequence: tid, signal, ...");
    if (!pairs)
        return NULL;
    if (n % 2) {
        PyMem_Free(pairs);
        PyErr_SetString(PyExc_ValueError, "pairs must pair each tid with a signal");
        return NULL;
    }
    int *errs = PyMem_Malloc((n ? n : 1) / 2 * sizeof(int) + sizeof(int));
    int64_t *ns = PyMem_Malloc((n ? n : 1) / 2 * sizeof(int64_t) + sizeof(int64_t));
    PyObject *out = NULL;
    if (!errs || !ns) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i += 2) {
        errs[i / 2] = ptrace(PTRACE_DETACH, (pid_t)pairs[i], 0, (void *)(uintptr_t)pairs[i + 1]) == -1 ? errno : 0;
        ns[i / 2] = now_ns();
    }
    out = PyList_New(n / 2);
    for (Py_ssize_t i = 0; out && i < n / 2; i++) {
        PyObject *t = Py_BuildValue("(iL)", errs[i], (long long)ns[i]);
        if (!t) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, i, t);
    }
done:
    PyMem_Free(pairs);
    PyMem_Free(errs);
    PyMem_Free(ns);
    return out;
}

static PyMethodDef methods[] = {
    {"interrupt", interrupt, METH_VARARGS, "PTRACE_INTERRUPT each tid of a sequence."},
    {"stop", stop, METH_VARARGS,
     "stop(pid, pending, known, regs, until_ns, go_addr, handover, sig)\n"
     "-> (code, [(tid, status, ns)], errno, go_ns, [(tid, ns)])"},
    {"detach", detach, METH_VARARGS, "detach([tid, sig, ...]) -> [(errno, ns), ...]"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "agent._pause",
                                    "The hot part of a pause, in C (see agent/ptrace.py).", -1, methods};

PyMODINIT_FUNC PyInit__pause(void) {
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    if (PyModule_AddIntConstant(m, "STOP_OK", STOP_OK) || PyModule_AddIntConstant(m, "STOP_SLOW", STOP_SLOW) ||
        PyModule_AddIntConstant(m, "STOP_ODD", STOP_ODD) || PyModule_AddIntConstant(m, "STOP_NEW", STOP_NEW) ||
        PyModule_AddIntConstant(m, "STOP_REGS", STOP_REGS)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
