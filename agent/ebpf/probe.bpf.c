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
// (batched in its runner's stage, sent as K_BATCH) with the g struct's
// bytes and either its whole stack (when small) or the words at its stack
// pointer, then the (saved bp, return address) pair of each frame of its
// frame-pointer chain. The pcsp refinement and all symbolization run in
// Python after the resume.
//
// Three stages, each a bounded loop in its own program, chained by tail
// calls, taken a chunk of GCHUNK allgs entries at a time: `gstart` looks at
// the chunk's entries (copies the g, picks the start, copies the stack or
// the words at sp, queues the chain's start in `work`), then `frames`
// follows FR_STEPS frame pointers per run across the chunk's chains, and,
// when the spec captures values, `reads` copies them (below, "captures");
// then the next chunk. bcc 0.26 inlines everything (no BPF-to-BPF calls, no bpf_loop), and
// the verifier explores a bounded loop once per iteration, so a loop body
// with few branches and one way out is what buys iterations. A stage that
// finishes its batch tail-calls the next run (the kernel allows 33 per
// uprobe hit); when those run out the state says MORE and the next uprobe
// on the signal path, or the next SIGURG (which the thread sends itself),
// goes on. The cursor lives in the
// `state` map, so any run resumes where the last stopped. The agent maps
// `state`, `ctl` and `tregs` into its memory: it arms the runners, sees
// them done and writes the stopped threads' registers without a system call.
//
// Runners: with many goroutines the walk is shared by up to R_MAX of the
// target's threads, each on its own CPU (the agent lets them go one by one
// into the signal's handler; `runners` maps their tids to an index). Each
// runner has its own `state`, list of chains, captures FIFO and buffers;
// they take allgs entries GCHUNK at a time from one shared cursor (`ctl`),
// so a runner that starts late takes less. A runner whose share is done
// waits (PH_WAIT: it signals itself again, so it never runs the target's
// code) until the last one ends the walk: the process then runs on as one.
#include <uapi/linux/ptrace.h>

#ifndef GS_STEPS
#define GS_STEPS 128            // allgs entries per gstart run (probe.py passes its own)
#endif
#ifndef FR_STEPS
#define FR_STEPS 256            // frames per frames run
#endif
#define WORK_MAX 65536          // allgs entries one snapshot looks at, at most (plan.max_gs)
#define R_MAX 4                 // runners (a power of two)
#define GCHUNK 32               // allgs entries a runner takes at a time: started, walked, read, then the next
#define W_NONE 0xffffffff       // the end of a runner's chain list
#define G_MAX 1024              // bytes of a g we can copy (mask: G_MAX - 1)
#define TOP_MAX 8192            // bytes at a goroutine's sp we can copy
#define FR_MAX 64               // frames per K_FRAMES record; more go in the next one
#define REC_DATA (G_MAX + TOP_MAX)
#define FULL_BYTES 1024         // with captures, a stack copied whole is kept here for its chain walk
// A goroutine's work entry and kept stack live only while its chunk is walked:
// slot ri * GCHUNK + its place in the chunk. The same few KiB each chunk, so
// they stay in the CPU's cache (a slot per allgs index touched 1 MiB of fresh
// memory per 1,000 goroutines).
#define SLOTS (R_MAX * GCHUNK)

// Record kinds (agent/ebpf/records.py parses them).
#define K_G 1                   // a goroutine: header, g bytes, top words
#define K_FRAMES 2              // frames of the goroutine allgs[gi], in order (several per goroutine)
#define K_THREAD 3              // the interrupted registers of the thread that ran the probe
#define K_MARK 4                // 8 bytes that wake the agent (BPF_RB_FORCE_WAKEUP); parse skips it
#define K_COPY 5                // captures: bytes copied at an address (the decoder's memory after the resume)
#define K_BATCH 6               // a runner's stage: K_G, K_FRAMES and K_COPY records one after another, each padded to 8

// Phases of `state` (user space writes ARMED, the probe the rest).
#define PH_IDLE 0
#define PH_ARMED 1
#define PH_RUNNING 2
#define PH_MORE 3               // out of tail calls: trigger again to go on
#define PH_DONE 4
#define PH_FAILED 5
#define PH_WAIT 6               // this runner's share is done; the others' is not
#define PH_GATE 7               // arrived before runner 0 has read allgs: waiting for it

#define SIGURG_NR 23            // the trigger's signal (Go's preemption signal, which it tolerates at any time)

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
    // Captures (the read program, agent/ebpf/capplan.py): prog is the slot of
    // the capture tables this target uses, NO_PROG for stacks only.
    u64 types_base;             // moduledata.types, load bias added: rtype words minus this key `rtypes`
    u64 bias;                   // load bias: a return address minus this keys `sites`
    u64 cap_bytes;              // bytes the captures may copy in all
    u32 prog, depth, elements, string_bytes;   // the decoder's depth, elements and string budgets
    u32 shape_base, n_shapes, map_base, n_maps; // this target's runs in `shapes` and `maps`
    u64 site_lo, site_hi;       // every key of `sites` is in [site_lo, site_hi]: a cheap test before the lookup
    u64 ro_lo, ro_hi;           // the binary's read-only data: leaves wholly inside are read from its file
};

// A thread's registers as PTRACE_GETREGS writes them (user_regs_struct).
struct uregs {
    u64 r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8, rax, rcx, rdx, rsi, rdi, orig_rax;
    u64 rip, cs, eflags, rsp, ss, fs_base, gs_base, ds, es, fs, gs;
};
#define T_MAX 4096              // threads whose registers a snapshot holds

// An item of the captures' FIFO (the reads stage, below). A map walk (I_MAPHDR .. I_GROUPS) goes one item at a time in the
// decoder's order, carrying what it still needs: `left` full slots (the
// decoder stops after min(used, elements) + 1 of them; ~0: it reads every
// group), the directory at `dir` of dl entries and the entry idx it is at,
// and in `word` the table being walked.
struct item {
    u64 addr, word;
    u32 len, tid, depth, kind, count, esize, base, left;
    u64 dir;
    u32 dl, idx;
};

// A goroutine whose frame chain is still to be followed; next: the same
// runner's next one (each runner follows its own list).
// fslot: 1 + the fstacks entry holding its whole stack (its chain is
// followed there, not in the target's memory), or 0.
struct work { u64 fp, lo, hi; u32 gi, fslot, next, pad; };

// The runners' shared words (`ctl`, mapped into the agent's memory: it
// reads and writes them without a system call): the allgs cursor, how
// many runners ended their share, how many there are (the agent lowers it
// when one can't start, or has not by the time the others are done) and
// how many have arrived; allgs and allglen, read by runner 0, and whether
// it has.
#define C_NEXT 0
#define C_DONE 1
#define C_NRUN 2
#define C_ARRIVED 3
#define C_ARR 4
#define C_N 5
#define C_GO 6                  // the process is stopped and its registers are in: the walk may start
#define C_INIT 7                // runner 0 has read allgs: the others may start
#define C_WORDS 8

struct state {
    u32 phase;
    u32 stage;                  // 0 gstart, 1 frames, 2 reads (captures)
    u32 triggers;               // probe runs that started or continued the walk
    u32 tail_calls;             // in this trigger
    u64 arr;                    // allgs array
    u64 n;                      // allglen
    u64 gi;                     // next allgs index
    u64 gend;                   // the end of this runner's allgs chunk
    u32 wi, wnext;              // the work entry being walked, and the next (W_NONE: none)
    u64 fp, lo, hi;             // its next frame pointer and bounds
    u32 gframes;                // its frames so far
    u32 cur;                    // frames in the record being built
    // totals, for the report
    u64 records, dropped, frames, gs, read_errors, budget_cuts;
    u64 t_first, t_last;        // CLOCK_MONOTONIC ns: the first run's start, the last run's end
    u32 runs;                   // program runs (entries and tail calls)
    u32 moved;                  // items being expanded moved to the spare room (keep_held)
    u64 gbuf_at;                // allgs index of gbuf[0] (~0: none)
    u64 gbuf[16];               // allgs pointers, read 16 at a time
    // the reads stage (captures): a FIFO of items, items[qhead] .. items[qtail - 1]
    u64 qhead, qtail;
    u64 cbytes;                 // bytes copied for captures
    u64 copies, misses, qcuts, unknown, sites;   // copy records; failed reads; items refused; rtypes not in the table; captured frames
    // the expansion cursor: the units of the item being expanded, and the slots of the current unit
    u64 ex_word;                // EX_SITE: the frame's CFA
    u32 ex_kind, ex_tid, ex_count, ex_stride, ex_base, ex_depth, ex_unit;
    u32 ex_first, ex_n, ex_slot, ex_ubase;
    u32 ex_at;                  // where the item's bytes are (held())
    struct item ex_item;        // the item being expanded (a map walk goes on from it)
    u64 pad5;
    u32 fslot;                  // the chain being walked is in fstacks[fslot - 1] (0: in memory)
    u32 cpu;                    // the CPU the runner arrived on (for diagnostics)
    u64 fbase;                  // the address of that copy's first byte
    u32 whead, wtail;           // this runner's list of chains in `work` (W_NONE: empty)
    u32 gdone, waits;           // no allgs chunk left; rounds spent waiting for the other runners
    u64 statics;                // leaves not copied: they are in the binary's read-only data
    // set by the agent when it arms the runner:
    u64 reads_cut_ns;           // CLOCK_MONOTONIC: no reads run starts after this (the captures' share of the pause)
    u64 cap_bytes;              // this runner's share of plan.cap_bytes
    u32 ri, qbase, qmask;       // this runner's index; its FIFO is items[qbase .. qbase + qmask]
    u32 cut;                    // the reads stopped at reads_cut_ns
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
// Mapped into the agent's memory (BPF_F_MMAPABLE): it arms the runners,
// watches them and reads their totals with loads and stores, not system
// calls (each a few us, tens of us when its code is cold, in the pause).
BPF_F_TABLE("array", int, struct state, state, R_MAX, BPF_F_MMAPABLE);
BPF_F_TABLE("array", int, u64, ctl, C_WORDS, BPF_F_MMAPABLE);
// The registers of the process's threads for its running goroutines: the
// stopped threads' written by PTRACE_GETREGS straight into this mapped
// array, each runner's from its signal frame; tslot: a tid's slot, written
// before the pause.
BPF_F_TABLE("array", int, struct uregs, tregs, T_MAX, BPF_F_MMAPABLE);
BPF_HASH(tslot, u32, u32, T_MAX);
BPF_HASH(runners, u32, u32, 64);        // a runner's tid -> its index
BPF_ARRAY(work, struct work, SLOTS);
// Per runner, not per CPU: two runners may share a CPU, and a runner may
// move between CPUs from one round to the next.
BPF_ARRAY(scratch, struct rec, R_MAX);
BPF_ARRAY(fscratch, struct frec, R_MAX);
BPF_RINGBUF_OUTPUT(out, RINGBUF_PAGES);
BPF_PROG_ARRAY(progs, 3);
// With captures, the stacks copied whole (a goroutine's chain is followed in
// its copy: the frames stage meets its captured frames without a read each).
struct fstack { u8 data[FULL_BYTES + 16]; };
BPF_ARRAY(fstacks, struct fstack, SLOTS);

// Words loaded whole from copied bytes. A memcpy into a u64 compiles to
// eight byte loads and fourteen shifts and ors (clang assumes the bytes
// unaligned); x86 loads any address in one instruction and the verifier
// allows it (no BPF_F_STRICT_ALIGNMENT), and most of these words are
// aligned anyway (Go's fields are, and records start at multiples of 8).
#define LOAD64(p) (*(const u64 *)(const void *)(p))
#define LOAD32(p) (*(const u32 *)(const void *)(p))

static __always_inline u64 gfield(struct rec *r, u32 off) {
    if (off >= G_MAX - 8)
        return 0;
    return LOAD64(r->data + (off & (G_MAX - 1)));
}

static __always_inline u32 gfield32(struct rec *r, u32 off) {
    if (off >= G_MAX - 4)
        return 0;
    return LOAD32(r->data + (off & (G_MAX - 1)));
}

static __always_inline u64 *cval(u32 k) {
    return ctl.lookup(&k);
}

// The runner an entry program (a uprobe) found the thread to be, for the
// stages it tail-calls: they run on the same CPU in the same invocation,
// so a per-CPU word hands it on without a hash lookup per run.
BPF_PERCPU_ARRAY(current_ri, u32, 1);

// The current thread is of the process the plan is for. A stage checks, as
// the uprobes do: a runner of a process given up on (a failed pause, a
// deadline) that is still in its tail calls when the next process's plan
// goes in stops there, instead of walking its own memory with that plan.
static __always_inline int ours(struct plan *p) {
    return (u32)(bpf_get_current_pid_tgid() >> 32) == p->tgid;
}

// The calling thread's runner state (0: not a runner of this walk), found
// by its tid; an entry program's lookup.
static __always_inline struct state *my_state(void) {
    u32 tid = (u32)bpf_get_current_pid_tgid(), zero = 0;
    u32 *ri = runners.lookup(&tid);
    u32 *cur = current_ri.lookup(&zero);
    if (!ri || !cur)
        return 0;
    u32 k = *ri & (R_MAX - 1);
    *cur = k;
    return state.lookup(&k);
}

// The same in a tail-called stage: the runner its entry program found.
static __always_inline struct state *stage_state(void) {
    u32 zero = 0;
    u32 *cur = current_ri.lookup(&zero);
    if (!cur)
        return 0;
    u32 k = *cur & (R_MAX - 1);
    return state.lookup(&k);
}

// Records reach the ring buffer STAGE bytes at a time: each runner keeps
// its records (goroutines, frames, copies) in its own stage and sends them
// as one K_BATCH record when it is full and when the runner ends. A ring
// record per goroutine or value made the runners fight over the ring's
// producer lock: each record cost 2-3x more with two runners than with one.
#ifndef STAGE
#define STAGE 65536             // a power of two (probe.py's stage_bytes)
#endif
#define STAGE_REC 16384         // the largest record a stage takes (a K_G: 64 + 1 KiB + 8 KiB)
#define RBUF 4096               // bytes of one captures' read (an element run is split at this)
#define RBUF_MASK (2 * RBUF - 1)
// A K_COPY record: the bytes copied at addr.
struct crec { u32 kind, len; u64 addr; u8 data[2 * RBUF + 8]; };
// Past the records, the spare room: the item being expanded when it is not
// a record of the stage (see held()).
#define SPARE (STAGE + STAGE_REC + 32)
struct stage { u32 kind, len; u8 data[SPARE + 16 + 2 * RBUF + 8]; };   // a crec fits in the spare room
BPF_ARRAY(stages, struct stage, R_MAX);

static __always_inline struct stage *stage_of(struct state *st) {
    u32 me = st->ri & (R_MAX - 1);
    return stages.lookup(&me);
}

// Sends the stage's records as one K_BATCH record and empties it.
static __always_inline void flush_stage(struct state *st, struct stage *sg) {
    u32 used = sg->len;
    if (!used)
        return;
    if (used > STAGE)
        used = STAGE;
    sg->kind = K_BATCH;
    if (out.ringbuf_output(sg, 8 + (u64)used, BPF_RB_NO_WAKEUP))
        st->dropped++;
    else
        st->records++;
    sg->len = 0;
}

// The captures' item being expanded: its K_COPY record, read in place in
// the stage (at < STAGE), or in the spare room (at == SPARE).
static __always_inline struct crec *held(struct stage *sg, u32 at) {
    return (struct crec *)(sg->data + (at < SPARE ? at : SPARE));
}

// The stage starts again while an item is expanded in place: its record
// moves to the spare room first (the next records would overwrite it).
static __always_inline void keep_held(struct state *st, struct stage *sg) {
    u32 at = st->ex_at;
    if (st->ex_kind == 0 /* EX_NONE */ || at >= SPARE)
        return;
    struct crec *h = (struct crec *)(sg->data + (at & (STAGE - 1)));
    u32 n = 16 + (h->len & RBUF_MASK);
    if (!bpf_probe_read_kernel(sg->data + SPARE, n, h)) {
        st->ex_at = SPARE;
        st->moved++;
    }
}

// Where the next record of n bytes goes in the stage, sending the stage
// first if it has no room.
static __always_inline u8 *stage_at(struct state *st, struct stage *sg, u32 n) {
    if (sg->len + n + 8 > STAGE) {
        keep_held(st, sg);
        flush_stage(st, sg);
    }
    u32 off = sg->len & (STAGE - 1);
    return sg->data + off;
}

// A record of len bytes at r into the runner's stage (the ring buffer
// directly if the runner has none). No wakeup: user space reads the ring
// after the resume, never waits on it.
static __always_inline void emit(struct state *st, void *r, u64 len) {
    struct stage *sg = stage_of(st);
    if (!sg || len > STAGE_REC) {
        if (out.ringbuf_output(r, len & (STAGE_REC - 1), BPF_RB_NO_WAKEUP))
            st->dropped++;
        else
            st->records++;
        return;
    }
    u32 n = len & (STAGE_REC - 1);
    u8 *at = stage_at(st, sg, n);
    if (bpf_probe_read_kernel(at, n, r)) {
        st->dropped++;
        return;
    }
    sg->len = (sg->len + n + 7) & ~7U;
}

// Ends a run in `phase`, waking user space (the only record that wakes it).
static __always_inline void stop(struct state *st, u32 phase) {
    st->t_last = bpf_ktime_get_ns();
    st->phase = phase;
    // Out of tail calls with work left: this thread sends itself the next
    // SIGURG. Go's handler blocks every signal, so it stays pending and the
    // kernel delivers it as the handler returns, before the thread runs any
    // Go code: the walk goes on in a new round of the signal path's uprobes
    // with no round trip through user space, and the one thread left
    // running never runs the target's code mid-walk.
    if (phase == PH_MORE)
        bpf_send_signal_thread(SIGURG_NR);
}

// ---------------------------------------------------------------- captures
//
// The read program (probe_compiler/readprog.py), executed here from the
// tables agent/ebpf/capplan.py writes before the pause. A captured frame is
// met in the frames stage: its return address (less the load bias) keys
// `sites`, which lists the frame's roots as CFA offsets (the frame pointer
// saved beside that return address, + 16, is the frame's CFA). Each root, and every value the shapes reach from
// it, is an item of a FIFO: the reads stage copies an item's bytes into
// its stage as a K_COPY record, then expands them there unit by unit (an
// element, a map slot's key or elem, a root) and slot by slot (a string, a
// pointer, ...), queueing the values they point to: breadth first, one read
// per value, the same bytes the ptrace executor copies. Nothing is decoded
// here; the decoder reads these copies after the resume, and whatever a
// copy lacks (a read that failed here, a map this does not walk, a site or
// a dynamic type not in the tables) it finds missing, which sends the
// snapshot to the ptrace executor (agent/ebpf/executor.py).

#define ITEMS_MAX 131072        // the FIFO (a power of two)
#ifndef RD_STEPS
#define RD_STEPS 48             // steps (a read, or a slot) per reads run
#endif
#define NO_PROG 0xffffffff

// Item kinds.
#define I_VALUE 0               // read len bytes; expand tid at base
#define I_ELEMS 1               // read count elements of esize; expand tid in each
#define I_LEAF 2                // read len bytes; nothing inside
#define I_MAPHDR 3              // a map's header: swiss, its one group or its directory next; hmap, its first bucket
#define I_GROUPS 4              // count swiss groups of esize: the full slots' keys and elems; then the next ones
#define I_DIRSCAN 10            // directory entries from idx on: the first table after `word` (the last one walked)
#define I_TABLE 11              // a directory map's table: its groups next
#define I_BUCKET 12             // an hmap bucket (Go < 1.24): its full slots; then its overflow, or the next one
#define I_ITAB 5                // the itab's type word at addr; then the dynamic value of `word`
#define I_DIRECT 6              // no read: expand tid over the 8 bytes of `word`
#define I_SITE 7                // a captured frame: addr is its CFA, roots[tid ..+count]
#define I_ROOT 8                // roots[tid] of the frame whose CFA is addr: its pieces, then its value
#define I_DEREF 9               // a pointer (8 bytes at addr) on roots[tid]'s way to its value, the count-th

// Expansion kinds (the units of the item in rbuf).
#define EX_NONE 0
#define EX_ELEMS 1              // unit u: tid at base + u * stride
#define EX_GROUPS 2             // unit u: group u >> 4, slot (u & 15) >> 1, key (even) or elem (odd)
#define EX_SITE 3               // unit u: root tid + u of the frame whose CFA is ex_word
#define EX_DIRSCAN 4            // unit u: directory entry idx + u: the first table not walked yet

// Slot kinds (readprog's ["str", ...] etc., capplan.SLOT_KINDS).
#define S_STR 1
#define S_PTR 2
#define S_SLICE 3
#define S_MAP 4
#define S_IFACE 5
#define S_CHAN 6
#define S_FUNC 7

struct shape { u32 need, first, count, pad; };
struct slot { u32 kind, a, b, c; s32 d; u32 pad; };
struct rtype { u32 tid, direct; };
// A map's layout. Swiss (impl 0): the header's used/dirPtr/dirLen, the
// table's groups data and lengthMask, the group's ctrl word and slots. hmap
// (impl 1, Go < 1.24): `used` is count, dir_ptr buckets, dir_len oldbuckets,
// table the bucket's overflow pointer, table_data B and table_mask flags (one
// byte each), group the bucket's size, ctrl its tophash bytes.
struct mapl {
    u32 header, used, dir_ptr, dir_len, group, ctrl, keys, key_stride, elems, elem_stride, key, elem;
    u32 table, table_data, table_mask, impl, same_size_grow, min_tophash;
    u32 key_ind, elem_ind;      // keys or elems over 128 bytes: the slots hold pointers to them
};
// A root: its bytes are [CFA + span_off, + span_len) on the stack, put
// together from up to 4 pieces (src, size) of that span; the captured value
// is at `sub` in them, or at the end of nderef steps. Step i reads its bytes
// (the root's from sub for step 0, else hsize[i] bytes where the last step
// left): the pointer at poff[i] (a deref's is at 0, a slice index's at its
// data word), stopping at nil, or where the length at loff[i] (-1: none) is
// not above idx[i]; the pointer + step_add[i] (idx * the element size) +
// add[i] is where the next step, or the value, is.
// `final` says what is read there: the value (F_VALUE), fsize bytes at
// foff (F_LEAF: a len, a cap), or nothing (F_NONE: a constant, an address).
#define F_VALUE 0
#define F_LEAF 1
#define F_NONE 2
struct root {
    s32 span_off;
    u32 span_len, tid, sub, npieces, nderef;
    s32 add[4];
    u16 src[4], size[4];
    u32 final, foff, fsize, pad;
    u16 poff[4];
    s16 loff[4];
    s32 idx[4], step_add[4];
    u16 hsize[4];
};
struct site { u32 first, count; };

// Several targets' tables live side by side: the hashes' keys carry the
// table slot (plan.prog) in the top byte above a pc or rtype offset; the
// arrays hold each target's run (types and maps are dense indices, an array
// load instead of a hash lookup for every slot).
BPF_HASH(sites, u64, struct site, 65536);
BPF_ARRAY(roots, struct root, 65536);
BPF_ARRAY(shapes, struct shape, 131072);
BPF_ARRAY(slots, struct slot, 262144);
BPF_HASH(rtypes, u64, struct rtype, 65536);
BPF_ARRAY(maps, struct mapl, 8192);
BPF_ARRAY(items, struct item, ITEMS_MAX);
static __always_inline u64 pkey(struct plan *p, u64 v) {
    return ((u64)p->prog << 56) | (v & 0x00ffffffffffffffULL);
}

static __always_inline u64 rword(struct crec *b, u32 off) {
    if (off + 8 > b->len)
        return 0;
    return LOAD64(b->data + (off & RBUF_MASK));
}

// The queue's next free item (the caller fills it, then st->qtail++), or 0
// when the queue or the captures' byte budget is full.
static __always_inline struct item *qslot(struct state *st, struct plan *p) {
    if (st->qtail - st->qhead > st->qmask || st->cbytes >= st->cap_bytes) {
        st->qcuts++;
        return 0;
    }
    u32 k = (st->qbase + (st->qtail & st->qmask)) & (ITEMS_MAX - 1);
    return items.lookup(&k);
}

static __always_inline void push(struct state *st, struct plan *p, u32 kind, u64 addr, u64 len,
                                 u32 tid, u32 depth, u32 count, u32 esize, u32 base, u64 word) {
    struct item *it = qslot(st, p);
    if (!it)
        return;
    it->addr = addr;
    it->word = word;
    it->len = len > 0xffffffffULL ? 0xffffffff : (u32)len;
    it->tid = tid;
    it->depth = depth;
    it->kind = kind;
    it->count = count;
    it->esize = esize;
    it->base = base;
    it->left = ~0U;
    it->dir = 0;
    it->dl = it->idx = 0;
    st->qtail++;
}

// The next item of a map walk: `c` with kind, addr, len and count replaced.
static __always_inline void push_walk(struct state *st, struct plan *p, struct item *c, u32 kind, u64 addr,
                                      u64 len, u32 count) {
    struct item *it = qslot(st, p);
    if (!it)
        return;
    *it = *c;
    it->kind = kind;
    it->addr = addr;
    it->len = len > 0xffffffffULL ? 0xffffffff : (u32)len;
    it->count = count;
    st->qtail++;
}

// A copy of n bytes at addr written at `at` (its header and bytes are
// there): counted and kept in the stage.
static __always_inline void staged(struct state *st, struct stage *sg, u8 *at, u64 addr, u32 n) {
    struct crec *h = (struct crec *)at;
    h->kind = K_COPY;
    h->len = n;
    h->addr = addr;
    sg->len = (sg->len + 16 + n + 7) & ~7U;
    st->cbytes += n;
    st->copies++;
}

// Copies n bytes at addr into the stage, where the expansion reads them
// (st->ex_at): one copy, sent as it is. 0 if the read failed (not
// resident, or gone: the decoder will miss them).
static __always_inline int copy_in(struct state *st, struct stage *sg, u64 addr, u32 n) {
    n &= RBUF_MASK;
    if (!n)
        return 0;
    u8 *at = stage_at(st, sg, 16 + n);
    if (bpf_probe_read_user(at + 16, n, (void *)addr)) {
        st->misses++;
        return 0;
    }
    st->ex_at = sg->len & (STAGE - 1);
    staged(st, sg, at, addr, n);
    return 1;
}

// Bytes with nothing inside copied straight into the stage.
static __always_inline int copy_leaf(struct state *st, u64 addr, u32 n) {
    n &= RBUF_MASK;
    struct stage *sg = stage_of(st);
    if (!n || !sg)
        return 0;
    u8 *at = stage_at(st, sg, 16 + n);
    if (bpf_probe_read_user(at + 16, n, (void *)addr)) {
        st->misses++;
        return 0;
    }
    staged(st, sg, at, addr, n);
    return 1;
}

static __always_inline struct shape *shape_of(struct plan *p, u32 t) {
    if (t >= p->n_shapes)
        return 0;
    u32 k = p->shape_base + t;
    return shapes.lookup(&k);
}

static __always_inline struct mapl *map_of(struct plan *p, u32 t) {
    if (t >= p->n_maps)
        return 0;
    u32 k = p->map_base + t;
    return maps.lookup(&k);
}

// An interface's dynamic value, from its runtime type word.
static __always_inline void dyn(struct state *st, struct plan *p, u64 rt, u64 data, u32 depth) {
    if (!rt || !p->types_base || rt < p->types_base)
        return;
    u64 k = pkey(p, rt - p->types_base);
    struct rtype *r = rtypes.lookup(&k);
    if (!r) {
        st->unknown++;
        return;
    }
    if (r->direct) {
        push(st, p, I_DIRECT, 0, 8, r->tid, depth, 1, 0, 0, data);
        return;
    }
    struct shape *s = shape_of(p, r->tid);
    if (s && s->need && data && depth < p->depth)
        push(st, p, I_VALUE, data, s->need, r->tid, depth + 1, 1, 0, 0, 0);
}

static __always_inline void start_ex(struct state *st, u32 kind, u32 tid, u32 count, u32 stride,
                                     u32 base, u32 depth, u64 word) {
    st->ex_kind = kind;
    st->ex_tid = tid;
    st->ex_count = count;
    st->ex_stride = stride;
    st->ex_base = base;
    st->ex_depth = depth;
    st->ex_word = word;
    st->ex_unit = 0;
    st->ex_n = 0;
    st->ex_slot = 0;
}

// The k-th pointer on a root's way to its value: follow it.
static __always_inline void chain(struct state *st, struct plan *p, struct crec *b, struct root *r, u32 ri,
                                  u32 o, u32 k) {
    k &= 3;
    u64 ptr = rword(b, o + r->poff[k]);
    if (r->loff[k] >= 0) {      // s[i]: out of range stops, as in the decoder
        s64 n = rword(b, o + r->loff[k]);
        if (!(n > r->idx[k] || n < 0))
            return;
    }
    if (!ptr)
        return;                 // nil: the decoder reads nothing past it either
    u64 at = ptr + (s64)r->step_add[k] + (s64)r->add[k];
    if (k + 1 < r->nderef && k < 3) {
        push(st, p, I_DEREF, at, r->hsize[(k + 1) & 3], ri, 0, k + 1, 0, 0, 0);
        return;
    }
    if (r->final == F_LEAF) {
        push(st, p, I_LEAF, at + r->foff, r->fsize, 0, 0, 0, 0, 0, 0);
        return;
    }
    struct shape *s = shape_of(p, r->tid);
    if (s && s->need && r->final == F_VALUE)
        push(st, p, I_VALUE, at, s->need, r->tid, 0, 1, 0, 0, 0);
}

// A root of the frame whose CFA is cfa: its span copied and sent, its
// pieces put together in the spare room, then its value expanded or its
// pointers followed.
static __always_inline void read_root(struct state *st, struct plan *p, struct stage *sg, u32 ri, u64 cfa) {
    struct root *r = roots.lookup(&ri);
    if (!r || !copy_in(st, sg, cfa + (s64)r->span_off, r->span_len & (RBUF - 1)))
        return;
    struct crec *b = held(sg, st->ex_at);
    if (r->npieces > 1) {
        struct crec *span = b;
        b = held(sg, SPARE);
        u32 at = 0;
        for (int i = 0; i < 4; i++) {
            if (i < r->npieces) {
                u32 sz = r->size[i] & 255;
                if (sz)
                    bpf_probe_read_kernel(b->data + (at & 1023), sz, span->data + (r->src[i] & 1023));
                at += sz;
            }
        }
        b->len = at;
        st->ex_at = SPARE;
    }
    if (!r->nderef) {
        if (r->final == F_VALUE)        // a len or cap of a value held here needs nothing more
            start_ex(st, EX_ELEMS, r->tid, 1, 0, r->sub, 0, 0);
    }
    else
        chain(st, p, b, r, ri, r->sub, 0);
}

// A directory map's table: its groups, in order.
static __always_inline void walk_table(struct state *st, struct plan *p, struct crec *b, struct item *c) {
    struct mapl *m = map_of(p, c->tid);
    if (!m)
        return;
    u64 data = rword(b, m->table_data);
    s64 mask = rword(b, m->table_mask);
    if (data && mask >= 0 && mask < 65536)
        push_walk(st, p, c, I_GROUPS, data, m->group, (u32)mask + 1);
}

// A groups item is expanded: the walk goes on while the decoder would
// still read, with the rest of this table's groups or the next table.
static __always_inline void groups_done(struct state *st, struct plan *p, struct crec *b) {
    struct item *c = &st->ex_item;
    if (!c->left)
        return;
    if (c->kind == I_BUCKET) {
        struct mapl *m = map_of(p, c->tid);
        if (!m)
            return;
        u64 ovf = rword(b, m->table);
        if (ovf) {                  // the bucket's overflow chain, in the decoder's order
            push_walk(st, p, c, I_BUCKET, ovf, m->group, 1);
            return;
        }
        if (c->idx + 1 < c->base) {
            c->idx++;
            push_walk(st, p, c, I_BUCKET, c->word + (u64)c->idx * m->group, m->group, 1);
        } else if (c->dir) {        // then the old buckets of a grow
            c->word = c->dir;
            c->base = c->dl;
            c->dir = 0;
            c->idx = 0;
            push_walk(st, p, c, I_BUCKET, c->word, m->group, 1);
        }
        return;
    }
    if (c->kind != I_GROUPS)
        return;
    if (c->base) {
        push_walk(st, p, c, I_GROUPS, c->addr + (u64)c->count * c->esize, (u64)c->base * c->esize, c->base);
        return;
    }
    if (c->dir && c->idx + 1 < c->dl) {
        c->idx++;
        push_walk(st, p, c, I_DIRSCAN, c->dir + 8 * (u64)c->idx, (u64)(c->dl - c->idx) * 8, 0);
    }
}

// Pops an item: copies its bytes into the stage, starts their expansion.
static __always_inline void read_item(struct state *st, struct plan *p, struct stage *sg) {
    u32 k = (st->qbase + (st->qhead & st->qmask)) & (ITEMS_MAX - 1);
    st->qhead++;
    struct item *it = items.lookup(&k);
    if (!it)
        return;
    struct item c = *it;
    if (c.kind == I_SITE) {
        st->sites++;
        start_ex(st, EX_SITE, c.tid, c.count, 0, 0, 0, c.addr);
        return;
    }
    if (c.kind == I_DIRECT) {
        struct crec *w = held(sg, SPARE);
        *(u64 *)w->data = c.word;
        w->len = 8;
        st->ex_at = SPARE;
        start_ex(st, EX_ELEMS, c.tid, 1, 0, 0, c.depth, 0);
        return;
    }
    if (c.kind == I_ROOT) {
        read_root(st, p, sg, c.tid, c.addr);
        return;
    }
    u64 len = c.len;
    if ((c.kind == I_ELEMS || c.kind == I_GROUPS) && c.esize) {
        // an element run longer than a read: the rest is an item of its own
        // (a map's groups: after these, if the walk needs more)
        u32 per = RBUF / c.esize;
        if (per == 0)
            per = 1;
        if (c.count > per) {
            if (c.kind == I_ELEMS)
                push(st, p, c.kind, c.addr + (u64)per * c.esize, (u64)(c.count - per) * c.esize, c.tid,
                     c.depth, c.count - per, c.esize, 0, 0);
            c.base = c.count - per;     // I_GROUPS: groups after these
            c.count = per;
        } else {
            c.base = 0;
        }
        len = (u64)c.count * c.esize;
    }
    if (len > RBUF && c.kind == I_LEAF) {   // a long string: the rest is a leaf of its own
        push(st, p, I_LEAF, c.addr + RBUF, len - RBUF, 0, c.depth, 0, 0, 0, 0);
        len = RBUF;
    }
    if (len > RBUF)
        len = RBUF;             // a value longer than a read is copied in part: the decoder misses the rest
    u32 n = len & RBUF_MASK;
    if (!copy_in(st, sg, c.addr, n))
        return;
    struct crec *b = held(sg, st->ex_at);
    if (c.kind == I_VALUE)
        start_ex(st, EX_ELEMS, c.tid, 1, 0, c.base, c.depth, 0);
    else if (c.kind == I_ELEMS)
        start_ex(st, EX_ELEMS, c.tid, c.count, c.esize, 0, c.depth, 0);
    else if (c.kind == I_GROUPS) {
        start_ex(st, EX_GROUPS, c.tid, c.count * 16, c.esize, 0, c.depth, 0);
        st->ex_item = c;
    } else if (c.kind == I_BUCKET) {
        start_ex(st, EX_GROUPS, c.tid, 16, c.esize, 0, c.depth, 0);
        st->ex_item = c;
    } else if (c.kind == I_DIRSCAN) {
        start_ex(st, EX_DIRSCAN, c.tid, n / 8, 8, 0, c.depth, 0);
        st->ex_item = c;
    } else if (c.kind == I_TABLE)
        walk_table(st, p, b, &c);
    else if (c.kind == I_ITAB)
        dyn(st, p, rword(b, 0), c.word, c.depth);
    else if (c.kind == I_DEREF) {
        u32 ri = c.tid;
        struct root *r = roots.lookup(&ri);
        if (r)
            chain(st, p, b, r, ri, 0, c.count);
    }
    else if (c.kind == I_MAPHDR) {
        struct mapl *m = map_of(p, c.tid);
        if (!m)
            return;
        s64 used = rword(b, m->used);
        u64 dp = rword(b, m->dir_ptr), dl = rword(b, m->dir_len);
        c.left = (used >= 0 && (u64)used > p->elements) ? p->elements + 1 : ~0U;
        c.esize = m->group;
        if (m->impl) {              // hmap: buckets[0 .. 2^B), then the old ones of a grow
            u32 lg = b->data[m->table_data & RBUF_MASK] & 63;
            u32 flags = b->data[m->table_mask & RBUF_MASK];
            c.word = dp;
            c.base = 1U << (lg & 31);
            c.idx = 0;
            c.dir = dl;
            c.dl = (flags & m->same_size_grow) ? c.base : (lg ? 1U << ((lg - 1) & 31) : 1);
            if (!dp) {
                c.word = dl;
                c.base = c.dl;
                c.dir = 0;
            }
            if (c.word && lg < 24)
                push_walk(st, p, &c, I_BUCKET, c.word, m->group, 1);
        } else if (dp && dl == 0)   // one group
            push_walk(st, p, &c, I_GROUPS, dp, m->group, 1);
        else if (dp && dl <= RBUF / 8) {   // a directory (a longer one the decoder finds missing)
            c.dir = dp;
            c.dl = dl;
            c.idx = 0;
            c.word = 0;
            push_walk(st, p, &c, I_DIRSCAN, dp, dl * 8, 0);
        }
    }
}

// From unit u (a slot's key) on, the first unit whose slot is full, or
// the next group's first: the key and elem units of a swiss group's empty
// slots are passed over in one step (a map of 3 fills 3 of a group's 8).
// A full slot's ctrl byte has its high bit clear; no loop (the verifier
// would walk it once per step of the reads loop).
static __always_inline u32 full_slot(struct state *st, struct mapl *m, struct crec *b, u32 u) {
    u32 g = u >> 4, i = (u & 15) >> 1;
    u32 at = g * st->ex_stride + m->ctrl;
    if (m->impl || at + 8 > b->len)
        return u;               // an hmap's tophash bytes: one slot a step, as before
    u64 full = ~rword(b, at) & 0x8080808080808080ULL;
    full >>= 8 * i;
    if (!full)
        return (g + 1) << 4;
    u32 k = 0;
    if (!(full & 0x80808080ULL)) {
        k += 4;
        full >>= 32;
    }
    if (!(full & 0x8080ULL)) {
        k += 2;
        full >>= 16;
    }
    if (!(full & 0x80ULL))
        k += 1;
    return (g << 4) + 2 * (i + k);
}

// The next unit of the item being expanded: its type and where its bytes start.
static __always_inline void next_unit(struct state *st, struct plan *p, struct crec *b) {
    u32 u = st->ex_unit;
    st->ex_n = 0;
    st->ex_slot = 0;
    if (st->ex_kind == EX_GROUPS && !(u & 1)) {
        struct mapl *m = map_of(p, st->ex_tid);
        u = m ? full_slot(st, m, b, u) : st->ex_count;
        if (u >= st->ex_count) {
            st->ex_unit = u;
            return;
        }
    }
    st->ex_unit = u + 1;
    u32 tid = st->ex_tid, base = st->ex_base + u * st->ex_stride;
    if (st->ex_kind == EX_SITE) {
        push(st, p, I_ROOT, st->ex_word, 0, st->ex_tid + u, 0, 0, 0, 0, 0);
        return;
    }
    if (st->ex_kind == EX_DIRSCAN) {
        struct item *c = &st->ex_item;
        u64 tp = rword(b, u * 8);
        if (tp && tp != c->word) {  // a table covers 2^(globalDepth - localDepth) entries in a row
            struct mapl *m = map_of(p, c->tid);
            c->idx += u;
            c->word = tp;
            if (m)
                push_walk(st, p, c, I_TABLE, tp, m->table, 0);
            st->ex_unit = st->ex_count;     // the walk goes on from that table
        }
        return;
    }
    if (st->ex_kind == EX_GROUPS) {
        struct mapl *m = map_of(p, st->ex_tid);
        if (!m)
            return;
        u32 g = (u >> 4) * st->ex_stride, j = u & 15, i = j >> 1;
        u32 at = g + m->ctrl + i;
        if (at >= b->len)
            return;
        u8 ctrl = b->data[at & RBUF_MASK];
        if (m->impl ? ctrl < m->min_tophash : (ctrl & 0x80))
            return;             // an empty, deleted or evacuated slot
        if (!(j & 1) && st->ex_item.left != ~0U && st->ex_item.left)
            st->ex_item.left--;
        tid = (j & 1) ? m->elem : m->key;
        base = g + ((j & 1) ? m->elems + i * m->elem_stride : m->keys + i * m->key_stride);
        if ((j & 1) ? m->elem_ind : m->key_ind) {     // the slot holds a pointer to it
            u64 ptr = rword(b, base);
            struct shape *s = shape_of(p, tid);
            if (ptr && s && s->need && st->ex_depth < p->depth)
                push(st, p, I_VALUE, ptr, s->need, tid, st->ex_depth, 1, 0, 0, 0);
            return;
        }
    }
    struct shape *s = shape_of(p, tid);
    if (!s)
        return;
    st->ex_first = s->first;
    st->ex_n = s->count;
    st->ex_ubase = base;
}

// Bytes with nothing inside (a string's, a chan's header, a func's word):
// copied and sent at once, saving the queue's round trip; a long one is queued.
static __always_inline void leaf(struct state *st, struct plan *p, u64 addr, u64 len, u32 depth) {
    if (addr >= p->ro_lo && addr + len <= p->ro_hi) {
        st->statics++;          // a literal: the decoder reads it from the binary
        return;
    }
    if (len > RBUF || st->cbytes >= st->cap_bytes) {
        push(st, p, I_LEAF, addr, len, 0, depth, 0, 0, 0, 0);
        return;
    }
    copy_leaf(st, addr, len);
}

// One slot of the current unit: queue what it points to.
static __always_inline void do_slot(struct state *st, struct plan *p, struct crec *b) {
    u32 si = st->ex_first + st->ex_slot++;
    struct slot *sl = slots.lookup(&si);
    if (!sl)
        return;
    u32 base = st->ex_ubase, depth = st->ex_depth, kind = sl->kind;
    u64 ptr = rword(b, base + sl->a);
    if (kind == S_STR) {
        s64 n = rword(b, base + sl->b);
        if (n) {
            u64 want = (n < 0 || (u64)n > p->string_bytes) ? p->string_bytes : (u64)n;
            leaf(st, p, ptr, want, depth);
        }
    } else if (kind == S_PTR) {
        struct shape *s = shape_of(p, sl->c);
        if (ptr && depth < p->depth && s && s->need)
            push(st, p, I_VALUE, ptr, s->need, sl->c, depth + 1, 1, 0, 0, 0);
    } else if (kind == S_SLICE) {
        s64 n = rword(b, base + sl->b);
        u64 cnt = (n < 0 || (u64)n > p->elements) ? p->elements : (u64)n;
        if (ptr && depth < p->depth && cnt && sl->d > 0) {
            struct shape *s = shape_of(p, sl->c);
            u32 k = (s && s->count) ? I_ELEMS : I_LEAF;
            push(st, p, k, ptr, cnt * (u64)sl->d, sl->c, depth + 1, cnt, sl->d, 0, 0);
        }
    } else if (kind == S_MAP) {
        struct mapl *m = map_of(p, sl->c);
        if (ptr && depth < p->depth && m)
            push(st, p, I_MAPHDR, ptr, m->header, sl->c, depth + 1, 1, 0, 0, 0);
    } else if (kind == S_IFACE) {
        u64 data = rword(b, base + sl->b);
        if (sl->d >= 0) {
            if (ptr)
                push(st, p, I_ITAB, ptr + sl->d, 8, 0, depth, 1, 0, 0, data);
        } else {
            dyn(st, p, ptr, data, depth);
        }
    } else if (kind == S_CHAN) {
        if (ptr && sl->d > 0)
            leaf(st, p, ptr, sl->d, depth);
    } else if (kind == S_FUNC) {
        if (ptr)
            leaf(st, p, ptr, 8, depth);
    }
}

// Wakes the agent, which sleeps on the ring buffer while every CPU has a
// runner walking (every other record is sent without a wakeup): a nap's
// timer took a runner's CPU every 50 us.
static __always_inline void wake_agent(void) {
    u64 mark = K_MARK;
    out.ringbuf_output(&mark, sizeof(mark), BPF_RB_FORCE_WAKEUP);
}

// This runner's share is done: the last runner to get here ends the walk;
// the others wait for it, signalling themselves (see on_sigtramp). Each
// wakes the agent: it watches the end from the CPU this one no longer
// walks on, and drops the runners still on their way once every runner
// that arrived is done.
static __always_inline void finish(struct state *st) {
    struct stage *sg = stage_of(st);
    if (sg)
        flush_stage(st, sg);
    u64 *done = cval(C_DONE), *nrun = cval(C_NRUN);
    u64 d = done ? __sync_fetch_and_add(done, 1) + 1 : 0;
    if (!nrun || d >= *nrun) {
        stop(st, PH_DONE);
        wake_agent();
        return;
    }
    wake_agent();
    st->t_last = bpf_ktime_get_ns();
    st->phase = PH_WAIT;
    bpf_send_signal_thread(SIGURG_NR);
}

int reads(struct pt_regs *ctx) {
    u32 zero = 0;
    struct state *st = stage_state();
    struct plan *p = plan.lookup(&zero);
    if (!st || !p || !ours(p) || st->phase != PH_RUNNING || st->stage != 2)
        return 0;
    struct stage *sg = stage_of(st);
    if (!sg)
        return 0;
    st->runs++;
    u64 t0 = bpf_ktime_get_ns();
    if (st->reads_cut_ns && t0 >= st->reads_cut_ns) {
        // What is not copied yet is missing: those rows say the captures
        // stopped. The stacks of the chunks left are still walked.
        st->cut = 1;
        st->qhead = st->qtail;
        st->ex_kind = EX_NONE;
    }
    for (int i = 0; i < RD_STEPS; i++) {
        // An item is read, its first unit started and that unit's first
        // slot done, all in one step (each no step of its own).
        if (st->ex_kind == EX_NONE && st->qhead < st->qtail)
            read_item(st, p, sg);
        if (st->ex_kind != EX_NONE) {
            if (st->ex_slot >= st->ex_n)
                next_unit(st, p, held(sg, st->ex_at));
            if (st->ex_slot < st->ex_n)
                do_slot(st, p, held(sg, st->ex_at));
        }
        // An expansion ends in the step that did its last slot (or that
        // started one with nothing in it), not in a step of its own.
        if (st->ex_kind != EX_NONE && st->ex_slot >= st->ex_n && st->ex_unit >= st->ex_count) {
            if (st->ex_kind == EX_GROUPS)
                groups_done(st, p, held(sg, st->ex_at));   // (a leaf of the step may have moved it)
            st->ex_kind = EX_NONE;
        }
    }
    if (st->ex_kind == EX_NONE && st->qhead >= st->qtail) {
        st->stage = 0;          // the chunk's captures are read: the next chunk
        // The FIFO starts again at its first item: each chunk's items reuse
        // the same cache lines (going on would write fresh memory all walk).
        st->qhead = st->qtail = 0;
    }
    if (st->tail_calls < 32) {
        st->tail_calls++;
        progs.call(ctx, st->stage);
    }
    stop(st, PH_MORE);
    return 0;
}

// The cursor on a queued goroutine's chain.
static __always_inline void load_work(struct state *st, struct work *w) {
    st->fp = w->fp;
    st->lo = w->lo;
    st->hi = w->hi;
    st->fslot = w->fslot;
    st->fbase = w->lo;
    st->wnext = w->next;
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
        u32 *slot = tslot.lookup(&tid);
        struct uregs *t = slot ? tregs.lookup(slot) : 0;
        if (t && t->rsp >= lo && t->rsp < hi) {
            pc = t->rip; sp = t->rsp; bp = t->rbp; start = 2;
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
    // The goroutine's place in its chunk is its own: its kept copy's slot
    // and its work entry's need no counter the runners share.
    u32 slot = (st->ri & (R_MAX - 1)) * GCHUNK + (u32)(i & (GCHUNK - 1));
    u32 fslot = 0;
    if (r->h.flags & F_FULL) {
        // Stacks only: the copy is all Python needs. With captures the chain
        // is followed to meet the captured frames: in a kept copy (else in
        // memory, frame by frame).
        if (p->prog == NO_PROG)
            return;
        u32 n = r->h.top_len;
        u32 fi = n <= FULL_BYTES - 8 ? slot : SLOTS;
        struct fstack *fs = fstacks.lookup(&fi);
        if (fs && !bpf_probe_read_kernel(fs->data, n & (FULL_BYTES - 1), r->data + (glen & (G_MAX - 1))))
            fslot = fi + 1;
    }
    u32 wi = slot;
    struct work *w = work.lookup(&wi);
    if (!w)
        return;
    w->fp = bp;
    w->lo = sp;
    w->hi = fslot ? sp + r->h.top_len : hi;
    w->gi = i;
    w->fslot = fslot;
    w->next = W_NONE;
    struct work *tail = 0;
    if (st->wtail != W_NONE) {
        u32 t = st->wtail;
        tail = work.lookup(&t);
    }
    if (tail)
        tail->next = wi;
    else
        st->whead = wi;
    st->wtail = wi;
}

// This runner's next chunk of allgs entries (none left: gdone).
static __always_inline void take_chunk(struct state *st, u64 n) {
    u64 *next = cval(C_NEXT);
    u64 c = next ? __sync_fetch_and_add(next, GCHUNK) : n;
    if (c >= n) {
        st->gdone = 1;
        return;
    }
    st->gi = c;
    st->gend = c + GCHUNK < n ? c + GCHUNK : n;
}

int gstart(struct pt_regs *ctx) {
    u32 zero = 0;
    struct state *st = stage_state();
    struct plan *p = plan.lookup(&zero);
    if (!st || !p || !ours(p) || st->phase != PH_RUNNING || st->stage != 0)
        return 0;
    u32 me = st->ri & (R_MAX - 1);
    struct rec *r = scratch.lookup(&me);
    if (!r)
        return 0;
    st->runs++;
    u64 n = st->n < p->max_gs ? st->n : p->max_gs;
    // A chunk at a time: its goroutines started here, their chains walked
    // (frames), their captures read (reads), then the next chunk; its
    // stacks and values are still in the CPU's cache when walked and read.
    // A chunk with no chain to walk (stacks only, copied whole) is followed
    // by the next in the same run. No early exit: a loop with one way out
    // has its tail verified once.
    for (int i = 0; i < GS_STEPS; i++) {
        if (st->gi >= st->gend && !st->gdone && st->whead == W_NONE)
            take_chunk(st, n);
        if (st->gi < st->gend)
            start_g(st, p, r, n);
    }
    if (st->gi >= st->gend && st->whead == W_NONE && st->gdone) {
        finish(st);
        return 0;
    }
    if (st->gi >= st->gend && st->whead != W_NONE) {   // the chunk is started: the frames stage walks its chains
        st->stage = 1;
        st->wi = st->whead;
        st->gframes = 0;
        st->cur = 0;
        u32 wi = st->wi;
        struct work *w = work.lookup(&wi);
        if (w)
            load_work(st, w);
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
    if (!st->fslot)             // a whole stack's record already holds these words
        emit(st, f, (sizeof(struct rec_hdr) + 16 * (u64)nf) & 0x3fff);
    st->cur = 0;
}

// Loads the next queued goroutine into the cursor; 0 when none is left.
static __always_inline int next_work(struct state *st, struct frec *f) {
    st->wi = st->wnext;
    u32 wi = st->wi;
    struct work *w = work.lookup(&wi);
    if (!w)
        return 0;
    load_work(st, w);
    st->gframes = 0;
    st->cur = 0;
    f->h.kind = K_FRAMES;
    f->h.gi = w->gi;
    return 1;
}

// The (saved bp, return address) pair at fp: from the goroutine's kept
// whole-stack copy, or read from its memory. 0 if it can't be had.
static __always_inline int pair_at(struct state *st, u64 *dst, u64 fp) {
    if (!st->fslot)
        return !bpf_probe_read_user(dst, 16, (void *)fp);
    u32 fi = st->fslot - 1;
    struct fstack *fs = fstacks.lookup(&fi);
    u64 off = fp - st->fbase;
    if (!fs || off > FULL_BYTES - 16)
        return 0;
    dst[0] = LOAD64(fs->data + (off & (FULL_BYTES - 1)));
    dst[1] = LOAD64(fs->data + ((off + 8) & (FULL_BYTES - 1)));
    return 1;
}

int frames(struct pt_regs *ctx) {
    u32 zero = 0;
    struct state *st = stage_state();
    struct plan *p = plan.lookup(&zero);
    if (!st || !p || !ours(p) || st->phase != PH_RUNNING || st->stage != 1)
        return 0;
    u32 me = st->ri & (R_MAX - 1);
    struct frec *f = fscratch.lookup(&me);
    if (!f)
        return 0;
    st->runs++;
    // The record of the goroutine being walked starts afresh in every run
    // (its frames so far were sent when the last run ended).
    f->h.kind = K_FRAMES;
    f->h.gi = 0;
    if (st->wi != W_NONE) {
        u32 wi = st->wi;
        struct work *w = work.lookup(&wi);
        if (w)
            f->h.gi = w->gi;
    }
    for (int i = 0; i < FR_STEPS; i++) {
        if (st->wi == W_NONE)
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
            if (!pair_at(st, &f->w[k & (2 * FR_MAX - 2)], fp)) {
                why = F_READ;
                st->read_errors++;
            } else {
                u64 saved = f->w[k & (2 * FR_MAX - 2)], ret = f->w[(k + 1) & (2 * FR_MAX - 1)];
                st->cur++;
                st->gframes++;
                st->frames++;
                st->lo = fp + 16;
                st->fp = saved;
                u64 lpc = ret - p->bias;
                if (p->prog != NO_PROG && !st->cut && saved && lpc >= p->site_lo && lpc <= p->site_hi) {
                    u64 sk = pkey(p, lpc);       // the caller's frame: is it captured?
                    struct site *s = sites.lookup(&sk);
                    if (s)
                        push(st, p, I_SITE, saved + 16, 0, s->first, 0, s->count, 0, 0, 0);
                }
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
            if (!next_work(st, f))
                st->wi = W_NONE;
        }
    }
    if (st->wi == W_NONE) {         // the chunk's chains are walked: its captured frames' reads, or the next chunk
        st->whead = st->wtail = W_NONE;
        st->stage = (p->prog == NO_PROG || st->qhead >= st->qtail) ? 0 : 2;
        if (st->tail_calls < 32) {
            st->tail_calls++;
            progs.call(ctx, st->stage);
        }
        stop(st, PH_MORE);
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

// A runner that waits for the others (PH_WAIT): on each round of the
// signal path it ends the walk if they are done, or signals itself again.
static __always_inline void wait_round(struct state *st) {
    u64 *done = cval(C_DONE), *nrun = cval(C_NRUN);
    st->waits++;
    if (!done || !nrun || *done >= *nrun)
        stop(st, PH_DONE);
    else
        bpf_send_signal_thread(SIGURG_NR);
}

// A runner's first run: its interrupted registers (from the signal's
// ucontext, uc_mcontext.gregs at offset 40) as a K_THREAD record; runner
// 0's in its tregs slot too (it was not stopped: they are only here; the
// others' came from PTRACE_GETREGS). 0: it failed.
static __always_inline int arrive(struct pt_regs *ctx, struct state *st, u32 tid) {
    u32 me = st->ri & (R_MAX - 1);
    struct rec *r = scratch.lookup(&me);
    if (!r)
        return 0;
    st->t_first = bpf_ktime_get_ns();
    st->cpu = bpf_get_smp_processor_id();
    st->runs = 0;
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
        r->h.pc = g[16]; r->h.sp = g[15]; r->h.bp = g[10];
        r->h.g_len = 23 * 8;
        u32 *slot = me == 0 ? tslot.lookup(&tid) : 0;
        struct uregs *t = slot ? tregs.lookup(slot) : 0;
        if (t) {
            t->rip = g[16];
            t->rsp = g[15];
            t->rbp = g[10];
        }
    } else {
        st->read_errors++;
    }
    // Straight to the ring: a process's records are told apart by the
    // K_THREAD records of its runners (every batch of its walk comes after
    // the first of them).
    if (out.ringbuf_output(r, sizeof(struct rec_hdr) + 23 * 8, BPF_RB_NO_WAKEUP))
        st->dropped++;
    else
        st->records++;
    u64 *arrived = cval(C_ARRIVED);
    if (!arrived)
        return 0;
    __sync_fetch_and_add(arrived, 1);
    return 1;
}

// allgs and allglen, read for all runners by runner 0.
static __always_inline int read_allgs(struct plan *p, struct state *st) {
    u64 *carr = cval(C_ARR), *cn = cval(C_N), *init = cval(C_INIT);
    u64 n = 0, arr = 0;
    if (!carr || !cn || !init)
        return 0;
    if (bpf_probe_read_user(&n, 8, (void *)p->allglen_addr) ||
        bpf_probe_read_user(&arr, 8, (void *)p->allgs_addr)) {
        st->read_errors++;
        return 0;
    }
    *carr = arr;
    *cn = n;
    *init = 1;
    if (n > p->max_gs)
        st->budget_cuts = n - p->max_gs;
    return 1;
}

// An arrived runner starts once the agent says go (C_GO: it signals runner
// 0 before it stops the other threads, so the signal's way in overlaps the
// stops): runner 0 then reads allgs and allglen for all; another once
// runner 0 has. Meanwhile it waits in PH_GATE, signalling itself, so it
// never runs the target's code.
static __always_inline void gate_round(struct pt_regs *ctx, struct plan *p, struct state *st) {
    u64 *carr = cval(C_ARR), *cn = cval(C_N), *init = cval(C_INIT), *go = cval(C_GO);
    if (!carr || !cn || !init || !go) {
        stop(st, PH_FAILED);
        return;
    }
    if (!*go || (!*init && st->ri)) {
        st->waits++;
        bpf_send_signal_thread(SIGURG_NR);
        return;
    }
    if (!*init && !read_allgs(p, st)) {
        stop(st, PH_FAILED);
        return;
    }
    st->n = *cn;
    st->arr = *carr;
    st->gi = st->gend = 0;
    st->gdone = 0;
    st->gbuf_at = ~0ULL;
    st->whead = st->wtail = st->wi = st->wnext = W_NONE;
    st->stage = 0;
    st->tail_calls = 0;
    st->phase = PH_RUNNING;
    progs.call(ctx, st->stage);
    stop(st, PH_FAILED);        // the tail call did not happen: the programs are not in place
}

// A round of the signal path for a runner past its arrival: the gate, a
// wait for the others to end, or more of its walk.
static __always_inline int go_on(struct pt_regs *ctx, struct plan *p, struct state *st, u32 phase) {
    if (phase == PH_GATE) {
        gate_round(ctx, p, st);
        return 0;
    }
    if (phase == PH_WAIT) {
        wait_round(st);
        return 0;
    }
    if (phase != PH_MORE)
        return 0;
    st->triggers++;
    st->tail_calls = 0;
    st->phase = PH_RUNNING;
    progs.call(ctx, st->stage);
    stop(st, PH_FAILED);        // the tail call did not happen: the programs are not in place
    return 0;
}

// The uprobes on the signal path (runtime.sigtramp, then sigtrampgo and
// sighandler): the first, at sigtramp(sig, info, ctx), takes a runner the
// agent armed into the gate; each later one in the same delivery, or in
// the next SIGURG's, goes on while its state says MORE, with a fresh
// tail-call budget, or takes a waiting runner's next round.
int on_sigtramp(struct pt_regs *ctx) {
    u32 zero = 0;
    struct plan *p = plan.lookup(&zero);
    u64 id = bpf_get_current_pid_tgid();
    if (!p || (u32)(id >> 32) != p->tgid)
        return 0;
    struct state *st = my_state();
    if (!st)
        return 0;
    u32 phase = st->phase;
    if (phase == PH_ARMED) {
        st->triggers++;
        if (!arrive(ctx, st, (u32)id)) {
            stop(st, PH_FAILED);
            return 0;
        }
        st->phase = PH_GATE;
        phase = PH_GATE;
    }
    return go_on(ctx, p, st, phase);
}

// Later on the signal path (runtime.sigtrampgo, runtime.sighandler): only
// goes on with a walk that ran out of tail calls, a gate or a wait; never
// starts one.
int on_more(struct pt_regs *ctx) {
    u32 zero = 0;
    struct plan *p = plan.lookup(&zero);
    u64 id = bpf_get_current_pid_tgid();
    if (!p || (u32)(id >> 32) != p->tgid)
        return 0;
    struct state *st = my_state();
    if (!st)
        return 0;
    return go_on(ctx, p, st, st->phase);
}
