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
 * stragglers and deadlines). Nothing here keeps state between calls or
 * writes to the target: the requests are INTERRUPT, GETREGS and DETACH, as
 * in ptrace.py; besides them, only this thread's own scheduling policy and
 * nice value change (PausedProcess.hold_cpu says why).
 *
 * The GIL is held throughout: a pause must not wait for another Python
 * thread to give it back (the switch interval is 5 ms). Every wait is
 * bounded by the until_ns it is given.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <time.h>

#ifndef PTRACE_INTERRUPT
#define PTRACE_INTERRUPT 0x4207
#endif
#ifndef PTRACE_EVENT_STOP
#define PTRACE_EVENT_STOP 128
#endif

/* What stop() ends with (ptrace.py: STOP_*). */
enum { STOP_OK = 0, STOP_SLOW, STOP_ODD, STOP_NEW, STOP_REGS };
/* What wait_done() ends with. */
enum { WAIT_DONE = 0, WAIT_LATE, WAIT_LOOK };

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

/* [(tid, status, ns), ...]; NULL and an exception on error. */
static PyObject *seen_list(const struct seen *v, Py_ssize_t n) {
    PyObject *list = PyList_New(n);
    for (Py_ssize_t i = 0; list && i < n; i++) {
        PyObject *t = Py_BuildValue("(liL)", v[i].tid, v[i].status, (long long)v[i].ns);
        if (!t)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, i, t);
    }
    return list;
}

/* stop(pid, pending, known, regs, until_ns, go_addr, rt_prio)
 *     -> (code, [(tid, status, ns), ...], errno, go_ns, rt)
 *
 * Waits for the interrupted threads `pending` to stop; checks that
 * /proc/pid/task holds no thread outside `known` (every tid the caller
 * traces, has given up on, or leaves running); PTRACE_GETREGS each
 * (tid, address) of `regs` into its address; then, if go_addr is not 0,
 * stores 1 in the u64 there (the eBPF probe's go: the walk may start) and
 * notes when; with rt_prio, this thread then runs SCHED_FIFO at that
 * priority (rt: it does), until the caller sets it back (see ptrace.py,
 * hold_cpu). It stops at the first step that does not go as planned, with
 * a code saying which (errno: of a failed GETREGS). until_ns bounds the
 * wait (CLOCK_MONOTONIC).
 *
 * (The probe's other runners are handed over later, by Python, just
 * before the agent sleeps until the walk ends: handed over here, one woke
 * on the agent's CPU and, on two CPUs, could keep the agent off it for the
 * whole walk, which then ended unnoticed for 0.2 ms.) */
static PyObject *stop(PyObject *self, PyObject *args) {
    long pid;
    PyObject *pending_seq, *known_seq, *regs_seq;
    long long until_ns;
    unsigned long long go_addr;
    int rt_prio, rt = 0;
    if (!PyArg_ParseTuple(args, "lOOOLKi", &pid, &pending_seq, &known_seq, &regs_seq, &until_ns, &go_addr, &rt_prio))
        return NULL;
    Py_ssize_t np = 0, nk = 0, nr = 0, nseen = 0;
    long *pending = NULL, *known = NULL, *regs = NULL;
    struct seen *seen = NULL;
    PyObject *out = NULL;
    int err = 0;
    int64_t go_ns = 0;
    if (!(pending = longs_of(pending_seq, &np, "pending must be a sequence of ints")) ||
        !(known = longs_of(known_seq, &nk, "known must be a sequence of ints")) ||
        !(regs = longs_of(regs_seq, &nr, "regs must be a flat sequence: tid, address, ...")))
        goto done;
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
        struct sched_param sp = {.sched_priority = rt_prio};
        rt = rt_prio > 0 && sched_setscheduler(0, SCHED_FIFO, &sp) == 0;
    }
    PyObject *list = seen_list(seen, nseen);
    if (list)
        out = Py_BuildValue("(iNiLi)", code, list, err, (long long)go_ns, rt);
done:
    PyMem_Free(pending);
    PyMem_Free(known);
    PyMem_Free(regs);
    PyMem_Free(seen);
    return out;
}

/* The flat sequence tid, signal, ... of detach() and wait_done() (NULL
 * and an exception on error). */
static long *pairs_of(PyObject *seq, Py_ssize_t *n) {
    long *pairs = longs_of(seq, n, "pairs must be a flat sequence: tid, signal, ...");
    if (pairs && *n % 2) {
        PyMem_Free(pairs);
        PyErr_SetString(PyExc_ValueError, "pairs must pair each tid with a signal");
        return NULL;
    }
    return pairs;
}

/* PTRACE_DETACH each pair, back to back; then [(errno, ns), ...]. */
static PyObject *detach_pairs(const long *pairs, Py_ssize_t n) {
    int *errs = PyMem_Malloc((n / 2 + 1) * sizeof(int));
    int64_t *ns = PyMem_Malloc((n / 2 + 1) * sizeof(int64_t));
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
    PyMem_Free(errs);
    PyMem_Free(ns);
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
    long *pairs = pairs_of(seq, &n);
    if (!pairs)
        return NULL;
    PyObject *out = detach_pairs(pairs, n);
    PyMem_Free(pairs);
    return out;
}

/* wait_done(done_addr, arrived_addr, n, ncpu, epfd, until_ns, pairs, nice)
 *     -> (code, seen_ns, [(errno, ns), ...])
 *
 * The end of an eBPF walk: waits until the u64 at done_addr (runners done)
 * reaches n, then at once detaches `pairs` as detach() does (WAIT_DONE;
 * seen_ns: when the count was seen). While n - done >= ncpu every CPU has
 * a runner walking, and this sleeps on epfd (the probe's ring buffer, which
 * a runner that ends its share wakes); otherwise it spins on the word from
 * the CPU that runner left. WAIT_LATE: every runner that arrived (the u64 at
 * arrived_addr) is done, but not n of them (the caller drops the late ones);
 * WAIT_LOOK: until_ns came (the caller looks at the runners, then waits again).
 * Once they are detached, this thread is SCHED_OTHER at `nice` (the agent
 * held its CPU as SCHED_FIFO, at nice -20: a thread let go that woke on
 * that CPU would wait for it). */
static PyObject *wait_done(PyObject *self, PyObject *args) {
    unsigned long long done_addr, arrived_addr;
    long long n, ncpu, until_ns;
    int epfd, nice;
    PyObject *seq;
    if (!PyArg_ParseTuple(args, "KKLLiLOi", &done_addr, &arrived_addr, &n, &ncpu, &epfd, &until_ns, &seq, &nice))
        return NULL;
    if (!done_addr || !arrived_addr) {
        PyErr_SetString(PyExc_ValueError, "done_addr and arrived_addr must be addresses");
        return NULL;
    }
    Py_ssize_t np;
    long *pairs = pairs_of(seq, &np);
    if (!pairs)
        return NULL;
    const uint64_t *done = (const uint64_t *)(uintptr_t)done_addr, *arrived = (const uint64_t *)(uintptr_t)arrived_addr;
    int code = WAIT_LOOK;
    int64_t seen_ns = 0;
    for (;;) {
        uint64_t d = __atomic_load_n(done, __ATOMIC_ACQUIRE), a = __atomic_load_n(arrived, __ATOMIC_ACQUIRE);
        if ((long long)d >= n) {
            code = WAIT_DONE;
            seen_ns = now_ns();
            break;
        }
        if (a > 0 && a <= d) {
            code = WAIT_LATE;
            break;
        }
        int64_t now = now_ns();
        if (now >= until_ns)
            break;
        if (n - (long long)d >= ncpu) {
            struct epoll_event ev;
            int ms = (int)((until_ns - now + 999999) / 1000000);
            epoll_wait(epfd, &ev, 1, ms);     /* a runner's wakeup, the look's time, or EINTR: look again */
        }
    }
    PyObject *results = code == WAIT_DONE ? detach_pairs(pairs, np) : PyList_New(0);
    if (code == WAIT_DONE) {
        struct sched_param sp = {.sched_priority = 0};
        sched_setscheduler(0, SCHED_OTHER, &sp);
        setpriority(PRIO_PROCESS, 0, nice);           /* 0: this thread */
    }
    PyMem_Free(pairs);
    if (!results)
        return NULL;
    return Py_BuildValue("(iLN)", code, (long long)seen_ns, results);
}

static PyMethodDef methods[] = {
    {"interrupt", interrupt, METH_VARARGS, "PTRACE_INTERRUPT each tid of a sequence."},
    {"stop", stop, METH_VARARGS,
     "stop(pid, pending, known, regs, until_ns, go_addr, rt_prio) -> (code, [(tid, status, ns)], errno, go_ns, rt)"},
    {"detach", detach, METH_VARARGS, "detach([tid, sig, ...]) -> [(errno, ns), ...]"},
    {"wait_done", wait_done, METH_VARARGS,
     "wait_done(done_addr, arrived_addr, n, ncpu, epfd, until_ns, [tid, sig, ...], nice)\n"
     "-> (code, seen_ns, [(errno, ns)])"},
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
        PyModule_AddIntConstant(m, "STOP_REGS", STOP_REGS) || PyModule_AddIntConstant(m, "WAIT_DONE", WAIT_DONE) ||
        PyModule_AddIntConstant(m, "WAIT_LATE", WAIT_LATE) || PyModule_AddIntConstant(m, "WAIT_LOOK", WAIT_LOOK)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
