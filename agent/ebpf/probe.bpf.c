// Ex-Ray's stack probe: one fixed BPF program for every Go binary and every
// request. Everything that depends on the target (g/m field offsets, where
// allgs is, status codes, budgets) is read from the `plan` map, which
// agent/ebpf/plan.py fills; nothing here is generated per binary or per spec.
// It is compiled once per machine and kernel (agent/ebpf/loader.py caches
// the bytecode).
//
// It runs from uprobes on the signal path (runtime.sigtramp, the .abi0
// entry the kernel calls; then sigtrampgo and sighandler) in the target's
// own context, in the one thread left running while every other thread is
// stopped by ptrace (agent/ebpf/executor.py sends it a SIGURG). It walks
// allgs, picks where each live goroutine's stack starts (its thread's
// registers when running, syscallsp/pc/bp in a syscall, else g.sched: as
// agent/goroutines.py start_of does), and copies: one record per goroutine
// into the ring buffer with the g struct's bytes and either its whole stack
// (when small) or the words at its stack pointer, then the (saved bp,
// return address) pair of each frame of its frame-pointer chain. The pcsp
// refinement and all symbolization run in Python after the resume.
//
// Two stages, each a bounded loop in its own program, chained by tail calls:
// `gstart` looks at GS_STEPS allgs entries per run (copies the g, picks the
// start, copies the stack or the words at sp, queues the chain's start in
// `work`), then `frames` follows FR_STEPS frame pointers per run across the
// queue. bcc 0.26 inlines everything (no BPF-to-BPF calls, no bpf_loop), and
// the verifier explores a bounded loop once per iteration, so a loop body
// with few branches and one way out is what buys iterations. A stage that
// finishes its batch tail-calls the next run (the kernel allows 33 per
// uprobe hit); when those run out the state says MORE and the next uprobe
// on the signal path, or the next SIGURG, goes on. The cursor lives in the
// `state` map, so any run resumes where the last stopped. Each run ends
// with a K_MARK record that wakes the agent's epoll.
#include <uapi/linux/ptrace.h>

#ifndef GS_STEPS
#define GS_STEPS 128            // allgs entries per gstart run (probe.py passes its own)
#endif
#ifndef FR_STEPS
#define FR_STEPS 256            // frames per frames run
#endif
#define WORK_MAX 65536          // goroutines one snapshot can queue (plan.max_gs is at most this)
#define G_MAX 1024              // bytes of a g we can copy (mask: G_MAX - 1)
#define TOP_MAX 8192            // bytes at a goroutine's sp we can copy
#define FR_MAX 64               // frames per K_FRAMES record; more go in the next one
#define REC_DATA (G_MAX + TOP_MAX)

// Record kinds (agent/ebpf/records.py parses them).
#define K_G 1                   // a goroutine: header, g bytes, top words
#define K_FRAMES 2              // frames of the goroutine allgs[gi], in order (several per goroutine)
#define K_THREAD 3              // the interrupted registers of the thread that ran the probe
#define K_MARK 4                // a run stopped (DONE, MORE, FAILED): wakes user space's epoll

// Phases of `state` (user space writes ARMED, the probe the rest).
#define PH_IDLE 0
#define PH_ARMED 1
#define PH_RUNNING 2
#define PH_MORE 3               // out of tail calls: trigger again to go on
#define PH_DONE 4
#define PH_FAILED 5

// Why a goroutine's frame chain ended (record flags).
#define F_TOP 1                 // a zero return address or frame pointer: the chain's end
#define F_RANGE 2               // a frame pointer outside [sp, stack.hi) or not increasing
#define F_READ 4                // a frame could not be read
#define F_BUDGET 8              // the plan's frame budget cut it
#define F_DROPPED 16            // a record did not fit in the ring buffer
#define F_GREAD 32              // the g itself could not be read
#define F_FULL 64               // the whole stack [sp, stack.hi) is in the record: no chain walk

struct plan {
    u64 allgs_addr;             // &runtime.allgs (the slice's array pointer), load bias added
    u64 allglen_addr;           // &runtime.allglen
    u64 dead_mask;              // bit s set: status s (scan bit masked) is not a live goroutine
    u64 running_mask;           // bit s set: status s runs on a thread (its registers count)
    u64 parked_mask;            // bit s set: status s was saved by gopark (g.sched is a call site)
    u32 tgid;
    u32 gscan;                  // the _Gscan bit
    u32 g_copy;                 // bytes of each g to copy (< G_MAX)
    u32 off_status, off_stack_lo, off_stack_hi, off_m;
    u32 off_sched_pc, off_sched_sp, off_sched_bp;
    u32 off_syscallsp, off_syscallpc, off_syscallbp;   // off_syscallbp: ~0 when absent
    u32 m_off_procid;
    u32 top_parked;             // bytes at sp to copy when the start is g.sched with a frame pointer
    u32 top_other;              // ... otherwise (registers, syscall, no frame pointer)
    u32 max_frames;             // frame budget per goroutine
    u32 max_gs;                 // allgs entries to look at, at most (<= WORK_MAX)
    u32 full_stack;             // a stack in use up to this many bytes is copied whole
};

struct regs3 { u64 pc, sp, bp; };

// A goroutine whose frame chain is still to be followed.
struct work { u64 fp, lo, hi; u32 gi, pad; };

struct state {
    u32 phase;
    u32 stage;                  // 0 gstart, 1 frames
    u32 triggers;               // probe runs that started or continued the walk
    u32 tail_calls;             // in this trigger
    u64 arr;                    // allgs array
    u64 n;                      // allglen
    u64 gi;                     // next allgs index
    u64 nwork;                  // goroutines queued in `work`
    u64 wi;                     // the one being walked
    u64 fp, lo, hi;             // its next frame pointer and bounds
    u32 gframes;                // its frames so far
    u32 cur;                    // frames in the record being built
    // totals, for the report
    u64 records, dropped, frames, gs, read_errors, budget_cuts;
    u64 t_first, t_last;        // CLOCK_MONOTONIC ns: the first run's start, the last run's end
    u32 runs;                   // program runs (entries and tail calls)
    u32 pad2;
    u64 gbuf_at;                // allgs index of gbuf[0] (~0: none)
    u64 gbuf[16];               // allgs pointers, read 16 at a time
};

struct rec_hdr {
    u32 kind;
    u32 gi;                     // allgs index
    u64 gaddr;
    u64 pc, sp, bp;             // where the walk starts (K_G)
    u32 start;                  // 0 sched, 1 syscall, 2 thread registers
    u32 tid;                    // m.procid, when the g has an m
    u32 g_len, top_len, nframes, flags;
};

struct rec {
    struct rec_hdr h;
    u8 data[REC_DATA + 16];     // K_G: g bytes then top bytes; K_FRAMES: (saved bp, return address) pairs
};

struct frec {
    struct rec_hdr h;
    u64 w[2 * FR_MAX];
};

BPF_ARRAY(plan, struct plan, 1);
BPF_ARRAY(state, struct state, 1);
BPF_ARRAY(work, struct work, WORK_MAX);
BPF_HASH(regs, u32, struct regs3, 4096);
BPF_PERCPU_ARRAY(scratch, struct rec, 1);
BPF_PERCPU_ARRAY(fscratch, struct frec, 1);
BPF_RINGBUF_OUTPUT(out, RINGBUF_PAGES);
BPF_PROG_ARRAY(progs, 2);

static __always_inline u64 gfield(struct rec *r, u32 off) {
    u64 v = 0;
    if (off >= G_MAX - 8)
        return 0;
    __builtin_memcpy(&v, r->data + (off & (G_MAX - 1)), 8);
    return v;
}

static __always_inline u32 gfield32(struct rec *r, u32 off) {
    u32 v = 0;
    if (off >= G_MAX - 4)
        return 0;
    __builtin_memcpy(&v, r->data + (off & (G_MAX - 1)), 4);
    return v;
}

static __always_inline void emit(struct state *st, void *r, u64 len) {
    // No wakeup: user space reads the ring after the resume, never waits on it.
    if (out.ringbuf_output(r, len, BPF_RB_NO_WAKEUP))
        st->dropped++;
    else
        st->records++;
}

// Ends a run in `phase`, waking user space (the only record that wakes it).
static __always_inline void stop(struct state *st, u32 phase) {
    u64 mark = K_MARK;
    st->t_last = bpf_ktime_get_ns();
    st->phase = phase;
    out.ringbuf_output(&mark, sizeof(mark), BPF_RB_FORCE_WAKEUP);
}

// Looks at allgs[st->gi]: copies a live g, picks its start, copies the words
// at sp, and queues its frame chain.
static __always_inline void start_g(struct state *st, struct plan *p, struct rec *r, u64 n) {
    u64 gp = 0;
    u64 i = st->gi++;
    u64 at = st->gbuf_at;
    if (at == ~0ULL || i < at || i >= at + 16) {   // refill: 16 allgs entries in one read
        u64 cnt = n - i < 16 ? n - i : 16;
        at = bpf_probe_read_user(st->gbuf, (cnt * 8) & 0xf8, (void *)(st->arr + 8 * i)) ? ~0ULL : i;
        st->gbuf_at = at;
    }
    if (at != ~0ULL && i >= at && i < at + 16)
        gp = st->gbuf[(i - at) & 15];
    else if (bpf_probe_read_user(&gp, 8, (void *)(st->arr + 8 * i)))
        return;
    if (!gp)
        return;
    u32 glen = p->g_copy & (G_MAX - 1);
    r->h.kind = K_G;
    r->h.gi = i;
    r->h.gaddr = gp;
    r->h.flags = 0;
    r->h.nframes = 0;
    r->h.top_len = 0;
    r->h.tid = 0;
    r->h.g_len = glen;
    if (bpf_probe_read_user(r->data, glen, (void *)gp)) {
        st->read_errors++;
        r->h.g_len = 0;
        r->h.flags = F_GREAD;
        emit(st, r, sizeof(struct rec_hdr));
        return;
    }
    u32 status = gfield32(r, p->off_status) & ~p->gscan & 63;
    if ((p->dead_mask >> status) & 1)
        return;
    st->gs++;
    u64 lo = gfield(r, p->off_stack_lo), hi = gfield(r, p->off_stack_hi);
    u64 m = gfield(r, p->off_m);
    u64 procid = 0;
    if (m)
        bpf_probe_read_user(&procid, 8, (void *)(m + p->m_off_procid));
    u32 tid = (u32)procid;
    r->h.tid = tid;
    u64 pc = gfield(r, p->off_sched_pc), sp = gfield(r, p->off_sched_sp), bp = gfield(r, p->off_sched_bp);
    u32 start = 0;
    u64 ssp = gfield(r, p->off_syscallsp);
    if (ssp) {
        pc = gfield(r, p->off_syscallpc);
        sp = ssp;
        bp = gfield(r, p->off_syscallbp);
        start = 1;
    }
    if ((p->running_mask >> status) & 1) {
        struct regs3 *t = regs.lookup(&tid);
        if (t && t->sp >= lo && t->sp < hi) {
            pc = t->pc; sp = t->sp; bp = t->bp; start = 2;
        }
    }
    r->h.pc = pc; r->h.sp = sp; r->h.bp = bp; r->h.start = start;
    // Words at sp: the return address of a frame that has no frame pointer
    // (a leaf, a prologue, a fresh goroutine) is there, and pcsp finds it.
    // A small stack is copied whole (one read beats a read per frame, and
    // Python unwinds it as the ptrace executor does); a larger one gets the
    // words at sp and its frame-pointer chain.
    // Parked by gopark, a goroutine's sched is a call site with its frame
    // pointer; one preempted (asyncPreempt's frame is large, the function
    // it stopped may have no frame pointer), fresh, running or in a syscall
    // needs more of its stack for pcsp.
    u64 top = (start == 0 && bp && ((p->parked_mask >> status) & 1)) ? p->top_parked : p->top_other;
    u64 room = (sp >= lo && sp < hi) ? hi - sp : 0;
    int full = room && room <= p->full_stack && room <= TOP_MAX - 8;
    if (full || top > room)
        top = room;
    u32 tl = top & (TOP_MAX - 8);
    if (tl && !bpf_probe_read_user(r->data + glen, tl, (void *)sp))
        r->h.top_len = tl;
    if (full && r->h.top_len == room)
        r->h.flags = F_FULL;
    u64 len = sizeof(struct rec_hdr) + glen + r->h.top_len;
    if (len > sizeof(struct rec))
        len = sizeof(struct rec);
    emit(st, r, len);
    if (r->h.flags & F_FULL)
        return;
    u64 wi = st->nwork;
    struct work *w = work.lookup((u32 *)&wi);
    if (!w) {
        st->budget_cuts++;
        return;
    }
    w->fp = bp;
    w->lo = sp;
    w->hi = hi;
    w->gi = i;
    st->nwork = wi + 1;
}

int gstart(struct pt_regs *ctx) {
    u32 zero = 0;
    struct state *st = state.lookup(&zero);
    struct plan *p = plan.lookup(&zero);
    struct rec *r = scratch.lookup(&zero);
    if (!st || !p || !r || st->phase != PH_RUNNING || st->stage != 0)
        return 0;
    st->runs++;
    u64 n = st->n < p->max_gs ? st->n : p->max_gs;
    // No early exit: a loop with one way out has its tail verified once.
    for (int i = 0; i < GS_STEPS; i++) {
        if (st->gi < n)
            start_g(st, p, r, n);
    }
    if (st->gi >= n) {             // every g seen: the frames stage starts at work[0]
        st->stage = 1;
        st->wi = 0;
        st->gframes = 0;
        st->cur = 0;
        struct work *w = work.lookup(&zero);
        if (w) {
            st->fp = w->fp;
            st->lo = w->lo;
            st->hi = w->hi;
        }
    }
    if (st->tail_calls < 32) {
        st->tail_calls++;
        progs.call(ctx, st->stage);
    }
    stop(st, PH_MORE);
    return 0;
}

// Sends the frames gathered for goroutine `gi` (the fscratch record).
static __always_inline void flush(struct state *st, struct frec *f, u32 flags) {
    u32 nf = st->cur & (FR_MAX - 1);
    if (st->cur >= FR_MAX)
        nf = FR_MAX;
    f->h.nframes = nf;
    f->h.flags = flags;
    emit(st, f, (sizeof(struct rec_hdr) + 16 * (u64)nf) & 0x3fff);
    st->cur = 0;
}

// Loads the next queued goroutine into the cursor; 0 when none is left.
static __always_inline int next_work(struct state *st, struct frec *f) {
    u32 wi = st->wi;
    struct work *w = work.lookup(&wi);
    if (!w || st->wi >= st->nwork)
        return 0;
    st->fp = w->fp;
    st->lo = w->lo;
    st->hi = w->hi;
    st->gframes = 0;
    st->cur = 0;
    f->h.kind = K_FRAMES;
    f->h.gi = w->gi;
    return 1;
}

int frames(struct pt_regs *ctx) {
    u32 zero = 0;
    struct state *st = state.lookup(&zero);
    struct plan *p = plan.lookup(&zero);
    struct frec *f = fscratch.lookup(&zero);
    if (!st || !p || !f || st->phase != PH_RUNNING || st->stage != 1)
        return 0;
    st->runs++;
    // This run may be on another CPU than the last one: the record of the
    // goroutine being walked starts afresh (frames were sent when it ran out).
    f->h.kind = K_FRAMES;
    f->h.gi = 0;
    if (st->wi < st->nwork) {
        u32 wi = st->wi;
        struct work *w = work.lookup(&wi);
        if (w)
            f->h.gi = w->gi;
    }
    for (int i = 0; i < FR_STEPS; i++) {
        if (st->wi >= st->nwork)
            continue;               // done: idle to the end (one way out of the loop)
        u64 fp = st->fp;
        u32 why = 0;
        if (!fp)
            why = F_TOP;
        else if (fp < st->lo || fp + 16 > st->hi || (fp & 7))
            why = F_RANGE;
        else if (st->gframes >= p->max_frames)
            why = F_BUDGET;
        if (!why) {
            u32 k = (st->cur & (FR_MAX - 1)) * 2;
            if (bpf_probe_read_user(&f->w[k & (2 * FR_MAX - 2)], 16, (void *)fp)) {
                why = F_READ;
                st->read_errors++;
            } else {
                u64 saved = f->w[k & (2 * FR_MAX - 2)], ret = f->w[(k + 1) & (2 * FR_MAX - 1)];
                st->cur++;
                st->gframes++;
                st->frames++;
                st->lo = fp + 16;
                st->fp = saved;
                if (!ret)
                    why = F_TOP;
                else if (saved && saved <= fp)
                    why = F_RANGE;
                else if (st->cur >= FR_MAX)
                    flush(st, f, 0);
            }
        }
        if (why) {
            flush(st, f, why);
            st->wi++;
            next_work(st, f);
        }
    }
    if (st->wi >= st->nwork) {
        stop(st, PH_DONE);
        return 0;
    }
    if (st->cur)
        flush(st, f, 0);
    if (st->tail_calls < 32) {
        st->tail_calls++;
        progs.call(ctx, 1);
    }
    stop(st, PH_MORE);
    return 0;
}

// The uprobes on the signal path (runtime.sigtramp, then sigtrampgo and
// sighandler): the first, at sigtramp(sig, info, ctx), starts the walk when
// user space armed it; each later one in the same delivery, or in the next
// SIGURG's, goes on while the state says MORE, with a fresh tail-call budget.
int on_sigtramp(struct pt_regs *ctx) {
    u32 zero = 0;
    struct plan *p = plan.lookup(&zero);
    struct state *st = state.lookup(&zero);
    if (!p || !st)
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    if ((u32)(id >> 32) != p->tgid)
        return 0;
    u32 phase = st->phase;
    if (phase != PH_ARMED && phase != PH_MORE)
        return 0;
    st->triggers++;
    st->tail_calls = 0;
    if (phase == PH_ARMED) {
        st->t_first = bpf_ktime_get_ns();
        st->runs = 0;
        // This thread was not stopped: its interrupted registers are in the
        // signal's ucontext (uc_mcontext.gregs at offset 40).
        u32 tid = (u32)id;
        struct rec *r = scratch.lookup(&zero);
        if (!r)
            return 0;
        u64 uc = PT_REGS_PARM3(ctx);
        r->h.kind = K_THREAD;
        r->h.gi = 0;
        r->h.gaddr = 0;
        r->h.tid = tid;
        r->h.flags = 0;
        r->h.nframes = 0;
        r->h.top_len = 0;
        r->h.g_len = 0;
        r->h.start = 2;
        if (!bpf_probe_read_user(r->data, 23 * 8, (void *)(uc + 40))) {
            u64 *g = (u64 *)r->data;
            struct regs3 t = {.pc = g[16], .sp = g[15], .bp = g[10]};
            regs.update(&tid, &t);
            r->h.pc = t.pc; r->h.sp = t.sp; r->h.bp = t.bp;
            r->h.g_len = 23 * 8;
        } else {
            st->read_errors++;
        }
        emit(st, r, sizeof(struct rec_hdr) + 23 * 8);
        u64 n = 0, arr = 0;
        if (bpf_probe_read_user(&n, 8, (void *)p->allglen_addr) ||
            bpf_probe_read_user(&arr, 8, (void *)p->allgs_addr)) {
            st->read_errors++;
            stop(st, PH_FAILED);
            return 0;
        }
        st->n = n;
        st->arr = arr;
        st->gi = 0;
        st->gbuf_at = ~0ULL;
        st->nwork = 0;
        st->stage = 0;
    }
    st->phase = PH_RUNNING;
    progs.call(ctx, st->stage);
    stop(st, PH_FAILED);        // the tail call did not happen: the programs are not in place
    return 0;
}

// Later on the signal path (runtime.sigtrampgo, runtime.sighandler): only
// goes on with a walk that ran out of tail calls, never starts one.
int on_more(struct pt_regs *ctx) {
    u32 zero = 0;
    struct plan *p = plan.lookup(&zero);
    struct state *st = state.lookup(&zero);
    if (!p || !st)
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    if ((u32)(id >> 32) != p->tgid || st->phase != PH_MORE)
        return 0;
    st->triggers++;
    st->tail_calls = 0;
    st->phase = PH_RUNNING;
    progs.call(ctx, st->stage);
    stop(st, PH_FAILED);
    return 0;
}

