/*
 * kswgdb's TCG plugin: KStackWatch inside QEMU, with no breakpoint stop.
 *
 * Built at setup by kswgdb/plugin/build.py against the qemu-plugin.h of the
 * QEMU that loads it (API version 4: register and virtual-memory reads from
 * callbacks, QEMU >= 9.1). Every number comes from kswgdb's watch policy
 * (kswgdb.watch.resolve -> ArmSpec) through the plugin arguments; nothing
 * about the guest is decided here.
 *
 * At translation time it instruments:
 *   - each probe address (fn+fo's next instruction): an exec callback that
 *     identifies the task, computes the frame's CFA and slot, keeps the
 *     per-task depth, checks the canary against the guard (or scans upward
 *     for it), takes a pool slot and arms the watch;
 *   - each release point (ArmSpec.exits): an exec callback that disarms the
 *     watch of the frame with that (task, CFA);
 *   - every store but pushes and near calls (writes_below_sp_only): a memory
 *     callback that compares the address with the live watches (an atomic count
 *     keeps the no-watch path to one load).
 * A hit is one JSON line on a Unix socket (kswgdb listens in its private
 * 0700 run directory); the plugin never blocks the vCPU for kswgdb, which
 * freezes the guest through QMP when it wants to. Counters go out with
 * every hit and at exit.
 *
 * Arguments (-plugin file.so,ARG,ARG...):
 *   sock=PATH          the Unix socket to connect to (required)
 *   cur=N              %gs offset of the current task pointer (-1: task = stack base)
 *   tsz=N              stack size (THREAD_SIZE)
 *   pidoff=N comm=N    offsets of pid (4 bytes) and comm (16) in the task struct
 *   pool=N             how many watches may be live at once
 *   freeze=0|1         ask kswgdb to freeze at every hit
 *   hold=MS            a freezing hit holds its vCPU until kswgdb's byte, MS at most
 *   stores=2|1|0       store check with registers synced (default), without, none
 *                      (1 and 0 are for measurements: see docs/plugin-engine.md)
 *   exitfn=ADDR        a function every dying task calls: its frames end there
 *   w=I/PROBE/CB/CO/B/O/L/D/GK/GV/P
 *                      watch I: probe address, CFA base (0 rsp, 1 rbp) and
 *                      offset, slot base and offset, length, depth, guard kind
 *                      (0 none, 1 global address, 2 %gs offset) and value,
 *                      panic (freeze on its hits)
 *   x=I/ADDR/B/O       a release point of watch I, with the CFA rule there
 *   kmap=LO/HI         KASLR: the kernel's addresses are not known yet. Nothing is
 *                      probed until the first store into [LO, HI) (the kernel's
 *                      first write at its virtual addresses, as the gdbstub engine's
 *                      search watchpoint sees it). That store's vCPU is held while
 *                      a "kernel" line (the storing PC and 16 code bytes) goes to
 *                      kswgdb, which finds the slide and answers with one line of
 *                      arguments at the guest's addresses ("cfg ARG,ARG...\n",
 *                      the w=/x=/exitfn=/cur=... above plus chk=ADDR and pb=ADDR:
 *                      16 bytes at chk and 8 at pb are sent back in a "placed"
 *                      line, for kswgdb's symbol check and physical slide), or
 *                      "cfg none\n" (no slide: probe nothing).
 *   kstores=ADDR       check only stores by instructions at ADDR and above (Linux:
 *                      the kernel half; user code cannot write a kernel stack)
 *   prof=1             time the probe, release and store-check callbacks (the vCPU
 *                      thread's CPU time) and send the totals in the "end" line
 *                      (bench/linux_hot.py), with the store callbacks executed (range
 *                      test passed or not; REP string iterations and a few addressing
 *                      kinds apart: `store_kind`), the store instructions instrumented,
 *                      the blocks translated and the time spent instrumenting them
 *   hook=ADDR          module loads (do_init_module): each call holds its vCPU and
 *                      serves kswgdb's requests, one line each, until "go":
 *                      "r ADDR LEN" (guest memory, answered by a "mem" line),
 *                      "add ARG,ARG..." (more w=/x= watches, numbered on), "unhook"
 *                      (no module watch pends any more: the hook returns at once)
 * Numbers are C integers (0x hex, a leading - allowed).
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <poll.h>
#include <unistd.h>

#include <glib.h>
#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

#define MAX_SPECS 16
#define MAX_EXITS 64
#define MAX_FRAMES 4096
#define SCAN_WORDS 128
#define BT_DEPTH 16

enum { R_RAX, R_RBX, R_RCX, R_RDX, R_RSI, R_RDI, R_RBP, R_RSP, R_R8, R_R9, R_R10,
       R_R11, R_R12, R_R13, R_R14, R_R15, R_RIP, R_EFLAGS, R_GS_BASE, R_COUNT };
static const char *reg_names[R_COUNT] = {
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10",
    "r11", "r12", "r13", "r14", "r15", "rip", "eflags", "gs_base"};

struct stats {
    uint64_t calls, armed, skipped_depth, refused_pool, refused_check, reentries,
             returns, stale, hits, found_by_scan, dead_frame_writes, rep_repeats,
             same_value;
};

struct spec {
    uint64_t probe;
    int cfa_rbp;
    int64_t cfa_off;
    int base_rbp;
    int64_t off;
    int len;
    int depth;
    int guard_kind;
    uint64_t guard_val;
    int panic;
    struct stats st;
};

struct exitpt {
    uint64_t addr;
    int spec;
    int rbp;
    int64_t off;
};

struct frame {
    int used;
    int spec;
    uint64_t task;
    uint64_t cfa;
    int depth;
    int armed;
    uint64_t addr;
    int len;
    uint8_t old[8];
    uint64_t last_writer;
};

static struct spec specs[MAX_SPECS];
static int n_specs;
static struct exitpt exits[MAX_EXITS];
static int n_exits;
static struct frame frames[MAX_FRAMES];
static int frames_hw;           /* frames[0..frames_hw) may be used */
static int64_t cur_off = -1;
static uint64_t thread_size = 16384;
static int64_t pid_off = -1, comm_off = -1;
static int pool_cap = 256, pool_used, pool_high;
static uint64_t task_exit_addr;     /* a function every dying task calls (0: none) */
static int freeze_all;
static int hold_ms = 2000;      /* longest a freezing hit holds its vCPU for kswgdb */
/* How stores are checked: 2 registers synced for the callback (exact RSP for the
 * dead-frame rule, exact registers in the report), 1 without (cheaper; registers
 * may lag within a translation block), 0 not at all (measurement only). */
static int store_mode = 2;
static uint64_t store_min_pc;   /* kstores=: stores of code below are not instrumented */
static uint64_t hit_seq;
/* prof=1: nanoseconds spent in probe, release and store-check (past the range test)
 * callbacks, and how many of the latter. */
static int prof;
static _Atomic uint64_t prof_probe_ns, prof_release_ns, prof_store_ns, prof_stores;
/* prof=1: every store callback executed (a plain count per vCPU: no atomic on the
 * hot path; QEMU 10.0's inline scoreboard adds crash when its array grows at the
 * second vCPU's start), store instructions instrumented, blocks translated and
 * nanoseconds in on_tb_trans. */
#define PROF_VCPUS 64
static struct { uint64_t n, rep, kind[4]; char pad[16]; } prof_store_calls[PROF_VCPUS];
static _Atomic uint64_t prof_store_sites, prof_tbs, prof_trans_ns;
#include <time.h>
/* The vCPU thread's CPU time: on a loaded host a callback preempted midway would
 * count the other processes' time too with a wall clock. */
static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The wall clock (vDSO, no system call) for on_tb_trans: tens of thousands of short
 * translations, where a system call per reading would cost more than it measures. */
static uint64_t wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
static atomic_int live_watches;
/* Every live watch lies in [live_lo, live_hi): a store outside needs no lock (most
 * stores of an armed call go to its callees' frames, below the watched slot). Widened
 * before a watch goes live, narrowed after one is dropped. */
static _Atomic uint64_t live_lo = UINT64_MAX, live_hi;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;
static int sock_fd = -1;
/* KASLR (kmap=): until placed, nothing is probed and stores are only looked at for
 * the first one into the kernel map. 1 when the addresses are the guest's. */
static atomic_int placed = 1;
static uint64_t kmap_lo, kmap_hi;
static uint64_t check_addr, phys_base_addr;     /* chk= and pb= of the cfg line */
#define PLACE_WAIT_MS 60000
static uint64_t hook_addr;          /* hook=: a module was loaded, not yet initialised */
static atomic_int hook_on;
#define HOOK_WAIT_MS 10000
#define MAX_READ (1 << 20)
/*
 * Code addresses that get an exec callback (probes, release points, exitfn=, hook=),
 * as a 4096-bit filter: translating any other instruction tests one bit instead of
 * every watch's addresses. Bits are only ever set: a stale one costs the exact
 * comparisons, never a callback.
 */
#define CODE_FILTER_BITS 4096
static _Atomic uint64_t code_filter[CODE_FILTER_BITS / 64];

static unsigned code_filter_bit(uint64_t pc)
{
    return (unsigned)((pc ^ (pc >> 12)) & (CODE_FILTER_BITS - 1));
}

static void code_filter_add(uint64_t pc)
{
    unsigned b = code_filter_bit(pc);
    atomic_fetch_or(&code_filter[b / 64], 1ull << (b % 64));
}

static int code_filter_has(uint64_t pc)
{
    unsigned b = code_filter_bit(pc);
    return (atomic_load_explicit(&code_filter[b / 64], memory_order_relaxed) >> (b % 64)) & 1;
}

static struct qemu_plugin_register *regs[R_COUNT];
static int regs_found;

/* ------------------------------------------------------------------ output */

static void send_line(const char *line, size_t n)
{
    pthread_mutex_lock(&out_lock);
    while (n > 0 && sock_fd >= 0) {
        ssize_t w = write(sock_fd, line, n);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            close(sock_fd);     /* kswgdb went away: keep the guest running */
            sock_fd = -1;
            break;
        }
        line += w;
        n -= (size_t)w;
    }
    pthread_mutex_unlock(&out_lock);
}

static void put_stats(GString *s)
{
    g_string_append(s, "\"stats\":[");
    for (int i = 0; i < n_specs; i++) {
        struct stats *t = &specs[i].st;
        g_string_append_printf(
            s, "%s{\"calls\":%" PRIu64 ",\"armed\":%" PRIu64 ",\"skipped_depth\":%" PRIu64
            ",\"refused_pool\":%" PRIu64 ",\"refused_check\":%" PRIu64 ",\"reentries\":%"
            PRIu64 ",\"returns\":%" PRIu64 ",\"stale\":%" PRIu64 ",\"hits\":%" PRIu64
            ",\"found_by_scan\":%" PRIu64 ",\"dead_frame_writes\":%" PRIu64
            ",\"rep_repeats\":%" PRIu64 ",\"same_value\":%" PRIu64 "}",
            i ? "," : "", t->calls, t->armed, t->skipped_depth, t->refused_pool,
            t->refused_check, t->reentries, t->returns, t->stale, t->hits, t->found_by_scan,
            t->dead_frame_writes, t->rep_repeats, t->same_value);
    }
    g_string_append_printf(s, "],\"pool_high\":%d,\"live\":%d", pool_high,
                           atomic_load(&live_watches));
}

/* --------------------------------------------------------------- guest reads */

static uint64_t reg(int r)
{
    GByteArray *buf = g_byte_array_sized_new(16);
    uint64_t v = 0;
    int n = qemu_plugin_read_register(regs[r], buf);
    if (n > 0) {
        memcpy(&v, buf->data, n < 8 ? n : 8);
    }
    g_byte_array_free(buf, TRUE);
    return v;
}

static int read_mem(uint64_t addr, void *out, size_t len)
{
    GByteArray *buf = g_byte_array_sized_new(len);
    int ok = qemu_plugin_read_memory_vaddr(addr, buf, len) && buf->len >= len;
    if (ok) {
        memcpy(out, buf->data, len);
    }
    g_byte_array_free(buf, TRUE);
    return ok;
}

static uint64_t read_u64(uint64_t addr)
{
    uint64_t v = 0;
    read_mem(addr, &v, 8);
    return v;
}

/* The task identity kswgdb's engine uses: the per-CPU current pointer, else the stack. */
static uint64_t current_task(uint64_t gs_base, uint64_t sp)
{
    if (cur_off >= 0 && gs_base) {
        uint64_t t = read_u64(gs_base + (uint64_t)cur_off);
        if (t) {
            return t;
        }
    }
    return sp & ~(thread_size - 1);
}

static uint64_t guard_value(struct spec *s, uint64_t gs_base)
{
    if (s->guard_kind == 1) {
        return read_u64(s->guard_val);
    }
    return read_u64(gs_base + s->guard_val);
}

/* ------------------------------------------------------------------- frames */

static struct frame *find_frame(uint64_t task, int spec, uint64_t cfa)
{
    for (int i = 0; i < frames_hw; i++) {
        struct frame *f = &frames[i];
        if (f->used && f->task == task && f->spec == spec && f->cfa == cfa) {
            return f;
        }
    }
    return NULL;
}

/* Under lock: the span of the armed frames, after one was dropped. */
static void narrow_live_range(void)
{
    uint64_t lo = UINT64_MAX, hi = 0;
    for (int i = 0; i < frames_hw; i++) {
        struct frame *f = &frames[i];
        if (f->used && f->armed) {
            lo = f->addr < lo ? f->addr : lo;
            hi = f->addr + (uint64_t)f->len > hi ? f->addr + (uint64_t)f->len : hi;
        }
    }
    atomic_store(&live_lo, lo);
    atomic_store(&live_hi, hi);
}

static void drop_frame(struct frame *f, int stale)
{
    if (stale) {
        specs[f->spec].st.stale++;
    }
    if (f->armed) {
        f->armed = 0;
        pool_used--;
        atomic_fetch_sub(&live_watches, 1);
        narrow_live_range();
    }
    f->used = 0;
    while (frames_hw > 0 && !frames[frames_hw - 1].used) {
        frames_hw--;
    }
}

/* A live call at cfa proves every deeper frame of the task returned unseen. */
static void drop_stale_below(uint64_t task, uint64_t cfa)
{
    for (int i = 0; i < frames_hw; i++) {
        struct frame *f = &frames[i];
        if (f->used && f->task == task && f->cfa < cfa) {
            drop_frame(f, 1);
        }
    }
}

static struct frame *new_frame(void)
{
    for (int i = 0; i < MAX_FRAMES; i++) {
        if (!frames[i].used) {
            if (i >= frames_hw) {
                frames_hw = i + 1;
            }
            memset(&frames[i], 0, sizeof(frames[i]));
            frames[i].used = 1;
            return &frames[i];
        }
    }
    return NULL;
}

/* ------------------------------------------------------------------- probe */

static void on_probe_body(unsigned int vcpu, void *udata);

/*
 * At most once a second, a probe says so ("beat"): the hang watchdog counts the
 * engine's work as activity, as it counts the gdbstub engine's stops.
 */
static void beat(void)
{
    static _Atomic uint64_t last;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    uint64_t now = (uint64_t)ts.tv_sec, was = atomic_load_explicit(&last, memory_order_relaxed);
    if (now != was && atomic_compare_exchange_strong(&last, &was, now)) {
        static const char line[] = "{\"event\":\"beat\"}\n";
        send_line(line, sizeof(line) - 1);
    }
}

static void on_probe(unsigned int vcpu, void *udata)
{
    uint64_t t0 = prof ? now_ns() : 0;
    beat();
    on_probe_body(vcpu, udata);
    if (prof) {
        atomic_fetch_add(&prof_probe_ns, now_ns() - t0);
    }
}

static void on_probe_body(unsigned int vcpu, void *udata)
{
    int idx = (int)(intptr_t)udata;
    struct spec *s = &specs[idx];
    uint64_t sp = reg(R_RSP), fp = reg(R_RBP), gs = reg(R_GS_BASE);
    uint64_t task = current_task(gs, sp);
    uint64_t cfa = (s->cfa_rbp ? fp : sp) + (uint64_t)s->cfa_off;
    uint64_t slot = (s->base_rbp ? fp : sp) + (uint64_t)s->off;
    uint8_t old[8] = {0};
    uint64_t expected = 0;
    int have_guard = s->guard_kind != 0;

    /* Guest reads first, outside the lock. */
    read_mem(slot, old, (size_t)s->len);
    if (have_guard) {
        expected = guard_value(s, gs);
    }

    pthread_mutex_lock(&lock);
    drop_stale_below(task, cfa);
    if (find_frame(task, idx, cfa)) {
        s->st.reentries++;
        goto out;
    }
    s->st.calls++;
    int depth = 0;
    for (int i = 0; i < frames_hw; i++) {
        struct frame *f = &frames[i];
        if (f->used && f->task == task && f->spec == idx && f->cfa > cfa) {
            depth++;
        }
    }
    struct frame *f = new_frame();
    if (!f) {
        s->st.refused_pool++;
        goto out;
    }
    f->spec = idx;
    f->task = task;
    f->cfa = cfa;
    f->depth = depth;
    if (depth != s->depth) {
        s->st.skipped_depth++;
        goto out;
    }
    if (have_guard && memcmp(old, &expected, 8) != 0) {
        /* KStackWatch's fallback: the first word equal to the guard, upward from SP. */
        uint64_t span = cfa > sp ? cfa - sp : 8;
        if (span > SCAN_WORDS * 8) {
            span = SCAN_WORDS * 8;
        }
        uint64_t words[SCAN_WORDS];
        uint64_t found = 0;
        if (read_mem(sp, words, span)) {
            for (uint64_t k = 0; k < span / 8; k++) {
                if (words[k] == expected) {
                    found = sp + 8 * k;
                    break;
                }
            }
        }
        if (!found) {
            s->st.refused_check++;
            goto out;
        }
        slot = found;
        memcpy(old, &expected, 8);
        s->st.found_by_scan++;
    }
    if (pool_used >= pool_cap) {
        s->st.refused_pool++;
        goto out;
    }
    pool_used++;
    if (pool_used > pool_high) {
        pool_high = pool_used;
    }
    if (slot < atomic_load(&live_lo)) {
        atomic_store(&live_lo, slot);
    }
    if (slot + (uint64_t)s->len > atomic_load(&live_hi)) {
        atomic_store(&live_hi, slot + (uint64_t)s->len);
    }
    f->armed = 1;
    f->addr = slot;
    f->len = s->len;
    memcpy(f->old, old, 8);
    s->st.armed++;
    atomic_fetch_add(&live_watches, 1);
out:
    pthread_mutex_unlock(&lock);
}

/* ----------------------------------------------------------------- release */

static void on_exit_point_body(unsigned int vcpu, void *udata);

static void on_exit_point(unsigned int vcpu, void *udata)
{
    uint64_t t0 = prof ? now_ns() : 0;
    on_exit_point_body(vcpu, udata);
    if (prof) {
        atomic_fetch_add(&prof_release_ns, now_ns() - t0);
    }
}

static void on_exit_point_body(unsigned int vcpu, void *udata)
{
    struct exitpt *x = &exits[(intptr_t)udata];
    uint64_t sp = reg(R_RSP), fp = reg(R_RBP), gs = reg(R_GS_BASE);
    uint64_t task = current_task(gs, sp);
    uint64_t cfa = (x->rbp ? fp : sp) + (uint64_t)x->off;

    pthread_mutex_lock(&lock);
    struct frame *f = find_frame(task, x->spec, cfa);
    if (f) {
        drop_stale_below(task, cfa);
        specs[x->spec].st.returns++;
        drop_frame(f, 0);
    }
    pthread_mutex_unlock(&lock);
}

/* A dying task never reaches its release points: its frames end here. */
static void on_task_exit(unsigned int vcpu, void *udata)
{
    uint64_t sp = reg(R_RSP), gs = reg(R_GS_BASE);
    uint64_t task = current_task(gs, sp);

    pthread_mutex_lock(&lock);
    for (int i = 0; i < frames_hw; i++) {
        if (frames[i].used && frames[i].task == task) {
            drop_frame(&frames[i], 1);
        }
    }
    pthread_mutex_unlock(&lock);
}

/* ---------------------------------------------------------------------- hit */

static void put_task(GString *s, const char *key, uint64_t task)
{
    int32_t pid = -1;
    char comm[17] = {0};
    /* A task from %gs:current is a task_struct (which may well be thread_size-aligned);
     * without cur= the "task" is a stack base, with no pid or comm to read. */
    if (pid_off >= 0 && cur_off >= 0) {
        read_mem(task + (uint64_t)pid_off, &pid, 4);
    }
    if (comm_off >= 0 && cur_off >= 0) {
        read_mem(task + (uint64_t)comm_off, comm, 16);
    }
    for (char *c = comm; *c; c++) {
        if (*c < 0x20 || *c > 0x7e || *c == '"' || *c == '\\') {
            *c = '?';
        }
    }
    g_string_append_printf(s, ",\"%s\":{\"task\":\"0x%" PRIx64 "\",\"pid\":%" PRId32
                           ",\"comm\":\"%s\"}", key, task, pid, comm);
}

static void put_hex(GString *s, const char *key, const uint8_t *b, int n)
{
    g_string_append_printf(s, ",\"%s\":\"", key);
    for (int i = 0; i < n; i++) {
        g_string_append_printf(s, "%02x", b[i]);
    }
    g_string_append_c(s, '"');
}

/* The frame-pointer chain of the writer, within its stack: return addresses. */
static void put_backtrace(GString *s, uint64_t fp, uint64_t sp)
{
    uint64_t base = sp & ~(thread_size - 1), top = base + thread_size;
    g_string_append(s, ",\"fp_chain\":[");
    for (int n = 0; n < BT_DEPTH && fp >= base && fp + 16 <= top && fp % 8 == 0; n++) {
        uint64_t pair[2];
        if (!read_mem(fp, pair, 16) || pair[1] == 0) {
            break;
        }
        g_string_append_printf(s, "%s\"0x%" PRIx64 "\"", n ? "," : "", pair[1]);
        if (pair[0] <= fp) {
            break;
        }
        fp = pair[0];
    }
    g_string_append_c(s, ']');
}

/*
 * A freezing hit keeps its vCPU here, right after the store, until kswgdb has
 * asked QEMU to stop (QMP `stop`) and sends one byte back: the vCPU then pauses
 * at its next instruction-block boundary instead of running on for the QMP
 * round trip. Bounded by hold_ms, so a vanished kswgdb never hangs the guest.
 */
static void hold_for_freeze(void)
{
    pthread_mutex_lock(&out_lock);
    int fd = sock_fd;
    pthread_mutex_unlock(&out_lock);
    if (fd < 0) {
        return;
    }
    struct pollfd p = {.fd = fd, .events = POLLIN};
    char byte;
    if (poll(&p, 1, hold_ms) == 1 && read(fd, &byte, 1) != 1) {
        return;
    }
}

/*
 * A store instruction, as its memory callback's udata: the address in the low 48
 * bits (x86-64 virtual addresses are canonical: bits 63..47 are copies of bit 47)
 * and SITE_REP for a REP string store. Nothing is allocated or looked up per
 * translated store (a translation-heavy guest translates the same stores again
 * and again).
 */
struct store_site {
    uint64_t pc;
    int is_rep;
};
#define SITE_PC_BITS 48
#define SITE_REP (1ull << SITE_PC_BITS)

static void *site_udata(uint64_t pc, int is_rep)
{
    return (void *)(uintptr_t)((pc & (SITE_REP - 1)) | (is_rep ? SITE_REP : 0));
}

/* prof=1 only: what addresses a store (`store_kind`), in the udata's bits 49-50. */
enum { KIND_OTHER, KIND_RIP, KIND_GS_ABS, KIND_RSP };
#define SITE_KIND_SHIFT (SITE_PC_BITS + 1)

static int site_kind(void *udata)
{
    return (int)(((uint64_t)(uintptr_t)udata >> SITE_KIND_SHIFT) & 3);
}

/*
 * prof=1 only, to weigh which stores could go uninstrumented: a RIP-relative store
 * (a global at an address fixed at translation), a %gs:disp32 store with no base
 * and no index (per-CPU data), a store based on RSP, or another one (KIND_OTHER,
 * also whatever this short decoder does not know).
 */
static int store_kind(struct qemu_plugin_insn *insn)
{
    uint8_t b[16] = {0};
    size_t n = qemu_plugin_insn_data(insn, b, sizeof(b));
    size_t i = 0;
    int gs = 0, rex = 0;
    for (; i < n; i++) {
        uint8_t c = b[i];
        if (c == 0x65) {
            gs = 1;
        } else if (c == 0x66 || c == 0x67 || c == 0xf0 || c == 0xf2 || c == 0xf3
                   || c == 0x2e || c == 0x36 || c == 0x3e || c == 0x26 || c == 0x64) {
            continue;
        } else if ((c & 0xf0) == 0x40) {
            rex = c;
        } else {
            break;
        }
    }
    if (i >= n) {
        return KIND_OTHER;
    }
    uint8_t op = b[i++];
    int modrm;
    if (op == 0x0f) {
        uint8_t op2 = i < n ? b[i++] : 0;
        modrm = op2 == 0x11 || op2 == 0x29 || op2 == 0x7f || op2 == 0xe7 || op2 == 0xc3
                || op2 == 0xb0 || op2 == 0xb1 || op2 == 0xc0 || op2 == 0xc1 || op2 == 0xab
                || op2 == 0xb3 || op2 == 0xbb || op2 == 0xba || (op2 >= 0x90 && op2 <= 0x9f)
                || op2 == 0xc7;
    } else {
        modrm = (op < 0x40 && (op & 7) <= 1) || (op >= 0x80 && op <= 0x83)
                || (op >= 0x86 && op <= 0x89) || op == 0x8c || op == 0xc0 || op == 0xc1
                || op == 0xc6 || op == 0xc7 || (op >= 0xd0 && op <= 0xd3) || op == 0xf6
                || op == 0xf7 || op == 0xfe || op == 0xff;
    }
    if (!modrm || i >= n) {
        return KIND_OTHER;
    }
    uint8_t m = b[i++];
    int mod = m >> 6, rm = m & 7;
    if (mod == 3) {
        return KIND_OTHER;
    }
    if (mod == 0 && rm == 5) {
        return KIND_RIP;
    }
    if (rm == 4 && i < n) {
        uint8_t sib = b[i];
        int base = (sib & 7) | ((rex & 1) << 3), index = ((sib >> 3) & 7) | ((rex & 2) << 2);
        if (mod == 0 && (sib & 7) == 5 && index == 4) {
            return gs ? KIND_GS_ABS : KIND_OTHER;
        }
        return base == 4 ? KIND_RSP : KIND_OTHER;
    }
    return KIND_OTHER;
}

static struct store_site site_of(void *udata)
{
    uint64_t u = (uint64_t)(uintptr_t)udata;
    struct store_site site = {
        .pc = (uint64_t)((int64_t)(u << (64 - SITE_PC_BITS)) >> (64 - SITE_PC_BITS)),
        .is_rep = (u & SITE_REP) != 0};
    return site;
}

static void place_kernel(uint64_t pc);
static void check_store(unsigned int vcpu, const struct store_site *site, uint64_t vaddr,
                        uint64_t size);

static void on_store(unsigned int vcpu, qemu_plugin_meminfo_t info, uint64_t vaddr,
                     void *udata)
{
    if (prof) {
        prof_store_calls[vcpu % PROF_VCPUS].n++;
        prof_store_calls[vcpu % PROF_VCPUS].rep += site_of(udata).is_rep;
        prof_store_calls[vcpu % PROF_VCPUS].kind[site_kind(udata)]++;
    }
    if (!atomic_load_explicit(&placed, memory_order_relaxed)) {
        if (vaddr >= kmap_lo && vaddr < kmap_hi) {
            place_kernel(site_of(udata).pc);
        }
        return;
    }
    if (atomic_load_explicit(&live_watches, memory_order_relaxed) == 0) {
        return;
    }
    uint64_t size = 1ull << qemu_plugin_mem_size_shift(info);
    if (vaddr >= atomic_load_explicit(&live_hi, memory_order_relaxed)
        || vaddr + size <= atomic_load_explicit(&live_lo, memory_order_relaxed)) {
        return;
    }
    uint64_t t0 = prof ? now_ns() : 0;
    struct store_site site = site_of(udata);
    check_store(vcpu, &site, vaddr, size);
    if (prof) {
        atomic_fetch_add(&prof_store_ns, now_ns() - t0);
        atomic_fetch_add(&prof_stores, 1);
    }
}

static void check_store(unsigned int vcpu, const struct store_site *site, uint64_t vaddr,
                        uint64_t size)
{
    struct frame hit[4];
    int n_hit = 0;

    pthread_mutex_lock(&lock);
    for (int i = 0; i < frames_hw && n_hit < 4; i++) {
        struct frame *f = &frames[i];
        if (f->used && f->armed && vaddr < f->addr + f->len && f->addr < vaddr + size) {
            hit[n_hit++] = *f;
        }
    }
    pthread_mutex_unlock(&lock);
    if (n_hit == 0) {
        return;
    }
    uint64_t sp = reg(R_RSP), fp = reg(R_RBP), gs = reg(R_GS_BASE);
    uint64_t writer = current_task(gs, sp);
    for (int h = 0; h < n_hit; h++) {
        struct frame *w = &hit[h];
        struct spec *s = &specs[w->spec];
        uint8_t now[8] = {0};
        read_mem(w->addr, now, (size_t)w->len);
        int freeze = 0;
        GString *line = NULL;
        pthread_mutex_lock(&lock);
        struct frame *f = find_frame(w->task, w->spec, w->cfa);
        if (!f || !f->armed || f->addr != w->addr) {
            goto next;              /* released meanwhile by its owner */
        }
        if (memcmp(now, f->old, (size_t)f->len) == 0) {
            s->st.same_value++;     /* the bytes did not change: no corruption */
            goto next;
        }
        if (writer == f->task && sp > f->addr + (uint64_t)f->len - 1) {
            /* The owner writes into a frame it has already left (a push). */
            s->st.dead_frame_writes++;
            memcpy(f->old, now, 8);
            goto next;
        }
        if (site->is_rep && f->last_writer == site->pc) {
            s->st.rep_repeats++;    /* one catch per rep instruction per armed call */
            memcpy(f->old, now, 8);
            goto next;
        }
        f->last_writer = site->pc;
        s->st.hits++;
        freeze = s->panic || freeze_all;
        line = g_string_new(NULL);
        g_string_append_printf(line, "{\"event\":\"hit\",\"seq\":%" PRIu64 ",\"spec\":%d,"
                               "\"vcpu\":%u,\"pc\":\"0x%" PRIx64 "\",\"addr\":\"0x%" PRIx64
                               "\",\"len\":%d,\"depth\":%d,\"freeze\":%d",
                               ++hit_seq, w->spec, vcpu, site->pc, f->addr, f->len,
                               f->depth, freeze);
        put_hex(line, "old", f->old, f->len);
        put_hex(line, "new", now, f->len);
        memcpy(f->old, now, 8);
        g_string_append_c(line, ',');
        put_stats(line);
next:
        pthread_mutex_unlock(&lock);
        if (line == NULL) {
            continue;
        }
        put_task(line, "owner", w->task);
        put_task(line, "writer", writer);
        g_string_append(line, ",\"regs\":{");
        for (int r = 0; r < R_COUNT; r++) {
            uint64_t v = r == R_RIP ? site->pc : reg(r);
            g_string_append_printf(line, "%s\"%s\":\"0x%" PRIx64 "\"", r ? "," : "",
                                   reg_names[r], v);
        }
        g_string_append_c(line, '}');
        put_backtrace(line, fp, sp);
        g_string_append(line, "}\n");
        send_line(line->str, line->len);
        g_string_free(line, TRUE);
        if (freeze) {
            hold_for_freeze();
        }
    }
}

/* ------------------------------------------------------------- translation */

static int is_rep_string_store(struct qemu_plugin_insn *insn)
{
    uint8_t b[4] = {0};
    size_t n = qemu_plugin_insn_data(insn, b, sizeof(b));
    int rep = 0;
    for (size_t i = 0; i < n; i++) {
        if (b[i] == 0xf3 || b[i] == 0xf2) {
            rep = 1;
        } else if (b[i] == 0x66 || (b[i] & 0xf0) == 0x40) {
            continue;               /* operand-size prefix, REX */
        } else {
            return rep && (b[i] == 0xaa || b[i] == 0xab || b[i] == 0xa4 || b[i] == 0xa5);
        }
    }
    return 0;
}

static void on_hook(unsigned int vcpu, void *udata);

/*
 * A push or a near call (push r64, push imm, pushf, call rel32; a REX prefix at
 * most): it writes only just below the writer's stack pointer, where no live frame
 * of its task lies, and no other task's stack. Such stores are not checked: they
 * are a large share of a kernel's stores (every prologue and call), and only a
 * frame its task has already left could be written by one. Until the kernel is
 * placed (kmap=) they are, as every store is: the first kernel-map write finds it.
 */
static int writes_below_sp_only(struct qemu_plugin_insn *insn)
{
    uint8_t b[2] = {0};
    size_t n = qemu_plugin_insn_data(insn, b, sizeof(b));
    uint8_t op = n >= 1 ? b[0] : 0;
    if (n >= 2 && (op & 0xf0) == 0x40) {
        op = b[1];
        return op >= 0x50 && op <= 0x57;
    }
    return (op >= 0x50 && op <= 0x57) || op == 0x6a || op == 0x68 || op == 0x9c
           || op == 0xe8;
}

/* The exec callbacks of one instruction: a probe, a release point, the hooks. */
static void instrument_code(struct qemu_plugin_insn *insn, uint64_t pc)
{
    int k_specs = atomic_load(&placed) ? n_specs : 0;
    int k_exits = atomic_load(&placed) ? n_exits : 0;
    for (int k = 0; k < k_specs; k++) {
        if (specs[k].probe == pc) {
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_probe, QEMU_PLUGIN_CB_R_REGS,
                                                   (void *)(intptr_t)k);
        }
    }
    for (int k = 0; k < k_exits; k++) {
        if (exits[k].addr == pc) {
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_exit_point, QEMU_PLUGIN_CB_R_REGS,
                                                   (void *)(intptr_t)k);
        }
    }
    if (hook_addr && pc == hook_addr && atomic_load(&hook_on)) {
        qemu_plugin_register_vcpu_insn_exec_cb(insn, on_hook, QEMU_PLUGIN_CB_R_REGS, NULL);
    }
    if (task_exit_addr && k_specs && pc == task_exit_addr) {
        qemu_plugin_register_vcpu_insn_exec_cb(insn, on_task_exit, QEMU_PLUGIN_CB_R_REGS,
                                               NULL);
    }
}

static void on_tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    uint64_t t0 = prof ? wall_ns() : 0;
    size_t n = qemu_plugin_tb_n_insns(tb);
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        uint64_t pc = qemu_plugin_insn_vaddr(insn);
        if (code_filter_has(pc)) {
            instrument_code(insn, pc);
        }
        /* Unplaced (kmap=), every store is looked at, stores=0 included: the first
         * kernel-map write places the kernel. */
        int placed_now = atomic_load(&placed);
        if (pc < store_min_pc || (placed_now && (store_mode == 0
                                                 || writes_below_sp_only(insn)))) {
            continue;
        }
        qemu_plugin_register_vcpu_mem_cb(insn, on_store, store_mode != 1 ?
                                         QEMU_PLUGIN_CB_R_REGS : QEMU_PLUGIN_CB_NO_REGS,
                                         QEMU_PLUGIN_MEM_W,
                                         (void *)((uintptr_t)site_udata(
                                             pc, is_rep_string_store(insn))
                                             | (prof ? (uintptr_t)store_kind(insn)
                                                       << SITE_KIND_SHIFT : 0)));
        if (prof) {
            atomic_fetch_add(&prof_store_sites, 1);
        }
    }
    if (prof) {
        atomic_fetch_add(&prof_tbs, 1);
        atomic_fetch_add(&prof_trans_ns, wall_ns() - t0);
    }
}

static void on_vcpu_init(qemu_plugin_id_t id, unsigned int vcpu)
{
    if (__atomic_load_n(&regs_found, __ATOMIC_ACQUIRE)) {
        return;
    }
    GArray *all = qemu_plugin_get_registers();
    int found = 0;
    for (guint i = 0; i < all->len; i++) {
        qemu_plugin_reg_descriptor *d = &g_array_index(all, qemu_plugin_reg_descriptor, i);
        for (int r = 0; r < R_COUNT; r++) {
            if (!regs[r] && strcmp(d->name, reg_names[r]) == 0) {
                regs[r] = d->handle;
                found++;
            }
        }
    }
    g_array_free(all, TRUE);
    __atomic_store_n(&regs_found, 1, __ATOMIC_RELEASE);
}

static uint64_t prof_store_call_count(int what)    /* -2 all, -1 REP, else a kind */
{
    uint64_t n = 0;
    for (int v = 0; v < PROF_VCPUS; v++) {
        n += what == -2 ? prof_store_calls[v].n : what == -1 ? prof_store_calls[v].rep
                                                             : prof_store_calls[v].kind[what];
    }
    return n;
}

static void on_exit_qemu(qemu_plugin_id_t id, void *p)
{
    GString *line = g_string_new("{\"event\":\"end\",");
    pthread_mutex_lock(&lock);
    put_stats(line);
    pthread_mutex_unlock(&lock);
    if (prof) {
        g_string_append_printf(line, ",\"prof\":{\"probe_ns\":%" PRIu64 ",\"release_ns\":%"
                               PRIu64 ",\"store_ns\":%" PRIu64 ",\"stores\":%" PRIu64
                               ",\"store_calls\":%" PRIu64 ",\"rep_calls\":%" PRIu64
                               ",\"rip_calls\":%" PRIu64 ",\"gs_abs_calls\":%" PRIu64
                               ",\"rsp_calls\":%" PRIu64
                               ",\"store_sites\":%" PRIu64
                               ",\"tbs\":%" PRIu64 ",\"trans_ns\":%" PRIu64 "}",
                               atomic_load(&prof_probe_ns), atomic_load(&prof_release_ns),
                               atomic_load(&prof_store_ns), atomic_load(&prof_stores),
                               prof_store_call_count(-2), prof_store_call_count(-1),
                               prof_store_call_count(KIND_RIP),
                               prof_store_call_count(KIND_GS_ABS),
                               prof_store_call_count(KIND_RSP),
                               atomic_load(&prof_store_sites), atomic_load(&prof_tbs),
                               atomic_load(&prof_trans_ns));
    }
    g_string_append(line, "}\n");
    send_line(line->str, line->len);
    g_string_free(line, TRUE);
}

/* ---------------------------------------------------------------- arguments */

static int parse_fields(const char *text, int64_t *out, int want)
{
    char *end;
    for (int i = 0; i < want; i++) {
        errno = 0;
        out[i] = strtoll(text, &end, 0);
        if (errno == ERANGE) {   /* kernel addresses: above INT64_MAX */
            out[i] = (int64_t)strtoull(text, &end, 0);
        }
        if (end == text || (i < want - 1 && *end != '/') || (i == want - 1 && *end)) {
            return -1;
        }
        text = end + 1;
    }
    return 0;
}

static int connect_to(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path)) {
        return -1;
    }
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        if (fd >= 0) {
            close(fd);
        }
        return -1;
    }
    return fd;
}

/* One NAME=VALUE argument (command line or kswgdb's cfg line); -1 if bad. */
static int parse_arg(const char *arg, const char **sock)
{
    const char *eq = strchr(arg, '=');
    if (!eq) {
        fprintf(stderr, "kswplugin: argument without '=': %s\n", arg);
        return -1;
    }
    size_t k = (size_t)(eq - arg);
    const char *v = eq + 1;
    int64_t f[11];
    if (!strncmp(arg, "sock", k) && k == 4) {
        *sock = v;
    } else if (k == 3 && !strncmp(arg, "cur", k)) {
        cur_off = strtoll(v, NULL, 0);
    } else if (k == 3 && !strncmp(arg, "tsz", k)) {
        thread_size = strtoull(v, NULL, 0);
    } else if (k == 6 && !strncmp(arg, "pidoff", k)) {
        pid_off = strtoll(v, NULL, 0);
    } else if (k == 4 && !strncmp(arg, "comm", k)) {
        comm_off = strtoll(v, NULL, 0);
    } else if (k == 4 && !strncmp(arg, "pool", k)) {
        pool_cap = (int)strtol(v, NULL, 0);
    } else if (k == 4 && !strncmp(arg, "hold", k)) {
        hold_ms = (int)strtol(v, NULL, 0);
    } else if (k == 6 && !strncmp(arg, "stores", k)) {
        store_mode = (int)strtol(v, NULL, 0);
    } else if (k == 6 && !strncmp(arg, "exitfn", k)) {
        task_exit_addr = strtoull(v, NULL, 0);
        code_filter_add(task_exit_addr);
    } else if (k == 6 && !strncmp(arg, "freeze", k)) {
        freeze_all = (int)strtol(v, NULL, 0);
    } else if (k == 1 && arg[0] == 'w') {
        if (parse_fields(v, f, 11) || f[0] != n_specs || n_specs >= MAX_SPECS
            || f[6] < 1 || f[6] > 8) {
            fprintf(stderr, "kswplugin: bad watch: %s\n", v);
            return -1;
        }
        struct spec *s = &specs[n_specs++];
        s->probe = (uint64_t)f[1];
        s->cfa_rbp = (int)f[2];
        s->cfa_off = f[3];
        s->base_rbp = (int)f[4];
        s->off = f[5];
        s->len = (int)f[6];
        s->depth = (int)f[7];
        s->guard_kind = (int)f[8];
        s->guard_val = (uint64_t)f[9];
        s->panic = (int)f[10];
        code_filter_add(s->probe);
    } else if (k == 1 && arg[0] == 'x') {
        if (parse_fields(v, f, 4) || f[0] < 0 || f[0] >= n_specs || n_exits >= MAX_EXITS) {
            fprintf(stderr, "kswplugin: bad release point: %s\n", v);
            return -1;
        }
        struct exitpt *x = &exits[n_exits++];
        x->spec = (int)f[0];
        x->addr = (uint64_t)f[1];
        x->rbp = (int)f[2];
        x->off = f[3];
        code_filter_add(x->addr);
    } else if (k == 4 && !strncmp(arg, "kmap", k)) {
        if (parse_fields(v, f, 2)) {
            fprintf(stderr, "kswplugin: bad kmap: %s\n", v);
            return -1;
        }
        kmap_lo = (uint64_t)f[0];
        kmap_hi = (uint64_t)f[1];
        atomic_store(&placed, 0);
    } else if (k == 7 && !strncmp(arg, "kstores", k)) {
        store_min_pc = strtoull(v, NULL, 0);
    } else if (k == 4 && !strncmp(arg, "prof", k)) {
        prof = (int)strtol(v, NULL, 0);
    } else if (k == 4 && !strncmp(arg, "hook", k)) {
        hook_addr = strtoull(v, NULL, 0);
        code_filter_add(hook_addr);
        atomic_store(&hook_on, 1);
    } else if (k == 3 && !strncmp(arg, "chk", k)) {
        check_addr = strtoull(v, NULL, 0);
    } else if (k == 2 && !strncmp(arg, "pb", k)) {
        phys_base_addr = strtoull(v, NULL, 0);
    } else {
        fprintf(stderr, "kswplugin: unknown argument: %s\n", arg);
        return -1;
    }
    return 0;
}

/* One line from kswgdb (at most cap-1 bytes, without its newline); -1: none in time. */
static int read_line(int fd, char *buf, size_t cap, int wait_ms)
{
    size_t n = 0;
    while (n + 1 < cap) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, wait_ms) != 1 || read(fd, &buf[n], 1) != 1) {
            return -1;
        }
        if (buf[n] == '\n') {
            break;
        }
        n++;
    }
    buf[n] = 0;
    return (int)n;
}

/*
 * The kernel's first store into its virtual map (kmap=): this vCPU is held while
 * kswgdb finds the slide from the storing code and answers with the arguments at
 * the guest's addresses. No probe was translated before (nothing matched while
 * unplaced), and at this point of the boot the kernel runs on one vCPU.
 */
static void place_kernel(uint64_t pc)
{
    static pthread_mutex_t place_lock = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&place_lock);
    if (atomic_load(&placed)) {
        pthread_mutex_unlock(&place_lock);
        return;
    }
    uint8_t code[16] = {0};
    GString *line = g_string_new(NULL);
    g_string_append_printf(line, "{\"event\":\"kernel\",\"pc\":\"0x%" PRIx64 "\"", pc);
    put_hex(line, "code", code, read_mem(pc, code, sizeof(code)) ? (int)sizeof(code) : 0);
    g_string_append(line, "}\n");
    send_line(line->str, line->len);
    g_string_free(line, TRUE);

    pthread_mutex_lock(&out_lock);
    int fd = sock_fd;
    pthread_mutex_unlock(&out_lock);
    static char cfg[16384];
    int ok = fd >= 0 && read_line(fd, cfg, sizeof(cfg), PLACE_WAIT_MS) > 4
             && !strncmp(cfg, "cfg ", 4);
    n_specs = n_exits = 0;
    task_exit_addr = 0;
    check_addr = phys_base_addr = 0;
    if (ok && strcmp(cfg + 4, "none") != 0) {
        const char *ignored = NULL;
        char *save = NULL;
        for (char *arg = strtok_r(cfg + 4, ",", &save); arg; arg = strtok_r(NULL, ",", &save)) {
            if (parse_arg(arg, &ignored)) {
                n_specs = n_exits = 0;       /* a bad line probes nothing */
                task_exit_addr = 0;
                break;
            }
        }
    }
    uint8_t check[16] = {0};
    uint64_t phys_base = 0;
    int have_check = check_addr && read_mem(check_addr, check, sizeof(check));
    int have_pb = phys_base_addr && read_mem(phys_base_addr, &phys_base, 8);
    line = g_string_new(NULL);
    g_string_append_printf(line, "{\"event\":\"placed\",\"specs\":%d,\"exits\":%d", n_specs,
                           n_exits);
    put_hex(line, "check", check, have_check ? (int)sizeof(check) : 0);
    if (have_pb) {
        g_string_append_printf(line, ",\"phys_base\":\"0x%" PRIx64 "\"", phys_base);
    }
    g_string_append(line, "}\n");
    send_line(line->str, line->len);
    g_string_free(line, TRUE);
    atomic_store(&placed, 1);
    pthread_mutex_unlock(&place_lock);
}

/*
 * A module is linked in and relocated, its init not run yet: kswgdb reads the
 * module list through this held vCPU and adds the watches of the module, then
 * says "go" (bounded by HOOK_WAIT_MS per line, so a vanished kswgdb never hangs
 * the guest). Probes in the module's code are translated after this returns.
 */
static void on_hook(unsigned int vcpu, void *udata)
{
    if (!atomic_load(&hook_on)) {
        return;
    }
    pthread_mutex_lock(&out_lock);
    int fd = sock_fd;
    pthread_mutex_unlock(&out_lock);
    if (fd < 0) {
        return;
    }
    static pthread_mutex_t hook_lock = PTHREAD_MUTEX_INITIALIZER;
    static char req[16384];
    pthread_mutex_lock(&hook_lock);
    char hello[96];
    int n = snprintf(hello, sizeof(hello), "{\"event\":\"hook\",\"pc\":\"0x%" PRIx64 "\"}\n",
                     hook_addr);
    send_line(hello, (size_t)n);
    while (read_line(fd, req, sizeof(req), HOOK_WAIT_MS) >= 0) {
        if (!strcmp(req, "go")) {
            break;
        } else if (!strcmp(req, "unhook")) {
            atomic_store(&hook_on, 0);
        } else if (!strncmp(req, "r ", 2)) {
            char *end;
            uint64_t addr = strtoull(req + 2, &end, 0);
            uint64_t len = strtoull(end, NULL, 0);
            GString *line = g_string_new("{\"event\":\"mem\"");
            uint8_t *buf = len && len <= MAX_READ ? g_malloc(len) : NULL;
            put_hex(line, "data", buf, buf && read_mem(addr, buf, len) ? (int)len : 0);
            g_free(buf);
            g_string_append(line, "}\n");
            send_line(line->str, line->len);
            g_string_free(line, TRUE);
        } else if (!strncmp(req, "add ", 4)) {
            const char *ignored = NULL;
            char *save = NULL;
            int ok = 1;
            pthread_mutex_lock(&lock);
            for (char *arg = strtok_r(req + 4, ",", &save); arg && ok;
                 arg = strtok_r(NULL, ",", &save)) {
                ok = parse_arg(arg, &ignored) == 0;
            }
            pthread_mutex_unlock(&lock);
            n = snprintf(hello, sizeof(hello), "{\"event\":\"added\",\"ok\":%d,\"specs\":%d}\n",
                         ok, n_specs);
            send_line(hello, (size_t)n);
        }
    }
    pthread_mutex_unlock(&hook_lock);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                           int argc, char **argv)
{
    const char *sock = NULL;
    for (int i = 0; i < argc; i++) {
        if (parse_arg(argv[i], &sock)) {
            return -1;
        }
    }
    if (!sock || thread_size == 0 || (thread_size & (thread_size - 1))) {
        fprintf(stderr, "kswplugin: need sock=PATH and a power-of-two tsz\n");
        return -1;
    }
    sock_fd = connect_to(sock);
    if (sock_fd < 0) {
        fprintf(stderr, "kswplugin: cannot connect to %s: %s\n", sock, strerror(errno));
        return -1;
    }
    char hello[160];
    int n = snprintf(hello, sizeof(hello), "{\"event\":\"hello\",\"api\":%d,\"specs\":%d,"
                     "\"exits\":%d,\"vcpus\":%d}\n", QEMU_PLUGIN_VERSION, n_specs, n_exits,
                     info->system.smp_vcpus);
    send_line(hello, (size_t)n);
    qemu_plugin_register_vcpu_init_cb(id, on_vcpu_init);
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_tb_trans);
    qemu_plugin_register_atexit_cb(id, on_exit_qemu, NULL);
    return 0;
}
