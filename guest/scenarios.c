/* The test scenarios (KStackWatch's test cases 0..5, plus a clean run and a
 * corruption from an interrupt handler). Function names are a contract: the
 * engine's tests watch them (images/kswtest.toml).
 *
 * Every corrupting write goes through a pointer the compiler cannot see
 * through (launder), and is followed by a ground-truth console line
 *   KSWTEST corrupt writer=FN addr=0xA task=COMM len=L ...
 * meaning FN wrote the bytes [A, A+L).
 */
#include "kernel.h"

static u64 rng_state;
static u64 rnd(void) { return splitmix64(&rng_state); }
static long param_or(long v, long d) { return v >= 0 ? v : d; }
static const char *comm(void) { return current_task()->comm; }
static unsigned long unhappy_total;

static void note_unhappy(const char *victim)
{
	__atomic_add_fetch(&unhappy_total, 1, __ATOMIC_SEQ_CST);
	kprintf("KSWTEST unhappy victim=%s task=%s cpu=%d\n", victim, comm(), this_cpu()->cpu);
}

/* Scheduler statistics, printed just before every verdict. */
static void stats(void)
{
	char buf[160];
	int n = 0;

	for (int c = 0; c < nr_cpus; c++)
		n += snprintf(buf + n, sizeof(buf) - n, " cpu%d=%lu/%lu/%lu", c, percpu_area[c].ticks,
			      percpu_area[c].switches, percpu_area[c].ipis);
	kprintf("KSWTEST stats jiffies=%lu migrations=%lu ticks/switches/ipis:%s\n", jiffies, total_migrations, buf);
}

/* Busy work the optimiser cannot remove. */
static unsigned long churn(unsigned long x, int n)
{
	for (int i = 0; i < n; i++) {
		x = x * 6364136223846793005UL + 1442695040888963407UL;
		asm volatile("" : "+r"(x));
	}
	return x;
}

/* ==================================================== 0: watch-fire */
/* s0_victim finds its own canary slot (scanning up from its locals for the
 * guard value) and hands it to s0_poke, which overwrites it, prints the
 * ground truth, and puts the guard back so s0_victim returns cleanly. */
SCN void s0_poke(unsigned long *slot)
{
	unsigned long guard = READ_ONCE(__stack_chk_guard);
	unsigned long *p = launder(slot);

	WRITE_ONCE(*p, guard ^ 0x5a5a5a5a5a5a5a5aUL);
	ground_truth("s0_poke", p, 8);
	WRITE_ONCE(*p, guard);
	kprintf("KSWTEST repair writer=s0_poke addr=0x%lx task=%s len=8\n", (unsigned long)p, comm());
}

SCN long s0_victim(void)
{
	volatile unsigned long probe = 0x50c0ffee;
	unsigned long guard = READ_ONCE(__stack_chk_guard);
	unsigned long *w = launder((unsigned long *)&probe);
	unsigned long *slot = NULL;

	for (int i = 0; i < 64; i++) {
		if (READ_ONCE(w[i]) == guard) {
			slot = &w[i];
			break;
		}
	}
	if (!slot)
		return -1;
	kprintf("KSWTEST s0 canary=0x%lx task=%s\n", (unsigned long)slot, comm());
	s0_poke(slot);
	probe = probe + 1;
	return (long)(slot - w);
}

static volatile long s0_result = -2;
static void s0_task(void *arg) { (void)arg; s0_result = s0_victim(); }

static void scenario0(int n, const char *name)
{
	long runs = param_or(params.runs, 1), pokes = 0;

	for (long r = 0; r < runs; r++) {
		s0_result = -2;
		task_join(kthread_create(s0_task, NULL, "s0"));
		pokes += s0_result >= 0;
	}
	stats();
	kprintf("KSWTEST verdict scenario=%d name=%s result=%s pokes=%ld smashed=%lu\n", n, name,
		pokes == runs && !stack_chk_failures ? "poked" : "failed", pokes, stack_chk_failures);
}

/* ============================================== 1: canary-overflow */
/* buf sits right below the canary (GCC puts arrays next to the guard):
 * buf[32] is the canary slot (rbp-0x18; rbp-0x8 holds the saved rbx). */
#define S1_WORDS   32
#define S1_OVERRUN 33           /* words written: the last one is the canary */

SCN unsigned long s1_overflow(unsigned long nwords)
{
	unsigned long buf[S1_WORDS];
	unsigned long *p = launder(buf);
	unsigned long n = launder(nwords);

	for (unsigned long i = 0; i < n; i++)
		p[i] = 0x4141414141410000UL + i;
	if (n > S1_WORDS)
		ground_truth("s1_overflow", &p[S1_WORDS], (n - S1_WORDS) * 8);
	return p[1] + p[S1_WORDS / 2];
}

static void s1_task(void *arg)
{
	(void)arg;
	s1_overflow(S1_OVERRUN);
	kprintf("KSWTEST s1 survived task=%s\n", comm());
}

static void scenario1(int n, const char *name)
{
	long runs = param_or(params.runs, 1);

	for (long r = 0; r < runs; r++)
		task_join(kthread_create(s1_task, NULL, "s1"));
	stats();
	kprintf("KSWTEST verdict scenario=%d name=%s result=%s smashed=%lu runs=%ld\n", n, name,
		stack_chk_failures == (unsigned long)runs ? "canary-smashed" : "missed",
		stack_chk_failures, runs);
}

/* =============================================== 2: recursive-depth */
/* Each level initialises its local `mark`, recurses, and after the child
 * returns writes `mark` again. Watched at depth 3: exactly one hit. */
#define S2_LEVELS 6
static int s2_verbose;

SCN unsigned long s2_recurse(int depth)
{
	volatile unsigned long mark = 0x52000000UL + depth;
	unsigned long r = 0;

	if (s2_verbose)
		kprintf("KSWTEST s2 depth=%d mark=0x%lx task=%s\n", depth, (unsigned long)&mark, comm());
	if (depth < S2_LEVELS - 1)
		r = s2_recurse(depth + 1);
	mark = 0x53000000UL + depth + (r & 0xff00);
	return mark;
}

static void s2_task(void *arg) { (void)arg; s2_recurse(0); }

static void scenario2(int n, const char *name)
{
	long runs = param_or(params.runs, 1);

	s2_verbose = 1;
	for (long r = 0; r < runs; r++)
		task_join(kthread_create(s2_task, NULL, "s2"));
	s2_verbose = 0;
	stats();
	kprintf("KSWTEST verdict scenario=%d name=%s result=%s levels=%d runs=%ld smashed=%lu\n", n,
		name, stack_chk_failures ? "failed" : "ok", S2_LEVELS, runs, stack_chk_failures);
}

/* ============================== 3, 4: (multi-)silent-corruption */
/*
 * A driver task calls s3_buggy(), which hands its local buffer to a worker
 * (the s3_corrupter task) as a pending request and, on an error path chosen
 * by the seeded RNG, returns without taking the pointer back. The driver then
 * calls s3_victim() through s3_enter_victim(), whose local `pad` pushes
 * s3_victim's frame down into the dead buffer: s3_victim's canary slot and the
 * top of its local `ledger` lie inside it. s3_victim kicks the worker, which
 * completes the stale request by writing the whole buffer (s3_corrupt_write).
 * s3_victim later finds `ledger` changed ("unhappy"), and its smashed canary
 * ends the driver task at return.
 */
#define S3_BUF_WORDS    16
#define S3_PAD_WORDS    4
#define S3_LEDGER_WORDS 8
#define S3_WAIT_TICKS   500
#define S3_LINGER_TICKS 2
#define S3_HAPPY        0x4a7e5a11UL

struct s3_pair {
	spinlock_t lock;
	int id;
	unsigned long *ptr;     /* the request buffer handed to the worker */
	int words;
	int kick, ack, stop;
	int early;              /* this attempt takes the buggy early return */
	int early_returns, corrupt_writes, survived;
	char name[16];
};

SCN void s3_corrupt_write(struct s3_pair *p)
{
	unsigned long *b = launder(p->ptr);
	int n = p->words;

	for (int i = 0; i < n; i++)
		WRITE_ONCE(b[i], 0xc0ffee0000000000UL | ((unsigned long)p->id << 16) | i);
	p->corrupt_writes++;
	ground_truth("s3_corrupt_write", b, n * 8UL);
}

/* The worker thread: completes a pending request when kicked. */
SCN void s3_corrupter(void *arg)
{
	struct s3_pair *p = arg;
	unsigned long f;

	while (!READ_ONCE(p->stop)) {
		if (READ_ONCE(p->kick)) {
			f = spin_lock_irqsave(&p->lock);
			if (p->kick) {
				if (p->ptr) {
					s3_corrupt_write(p);
					p->ptr = NULL;
				}
				p->kick = 0;
				p->ack = 1;
			}
			spin_unlock_irqrestore(&p->lock, f);
		}
		sleep_ticks(1);
	}
}

SCN long s3_buggy(struct s3_pair *p)
{
	unsigned long buf[S3_BUF_WORDS];
	unsigned long *b = launder(buf);
	unsigned long f;

	for (int i = 0; i < S3_BUF_WORDS; i++)
		b[i] = 0x3b000000UL + i;
	f = spin_lock_irqsave(&p->lock);
	p->ptr = b;                     /* hand the buffer to the worker */
	p->words = S3_BUF_WORDS;
	spin_unlock_irqrestore(&p->lock, f);
	if (READ_ONCE(p->early)) {
		/* the bug: an error path that forgets to take the pointer back */
		p->early_returns++;
		kprintf("KSWTEST s3 early-return buf=0x%lx len=%d task=%s\n", (unsigned long)b,
			S3_BUF_WORDS * 8, comm());
		return -1;
	}
	sleep_ticks(1);
	f = spin_lock_irqsave(&p->lock);
	p->ptr = NULL;                  /* take it back */
	spin_unlock_irqrestore(&p->lock, f);
	return b[1];
}

SCN unsigned long s3_victim(struct s3_pair *p)
{
	unsigned long ledger[S3_LEDGER_WORDS];
	volatile unsigned long happy = S3_HAPPY;
	unsigned long *l = launder(ledger);
	unsigned long sum = 0, want = 0, f;

	for (int i = 0; i < S3_LEDGER_WORDS; i++) {
		l[i] = 0x7000 + i;
		want += 0x7000 + i;
	}
	if (p) {
		/* ask the worker to flush its queue; wait for it (bounded) */
		f = spin_lock_irqsave(&p->lock);
		p->ack = 0;
		p->kick = 1;
		spin_unlock_irqrestore(&p->lock, f);
		for (int t = 0; t < S3_WAIT_TICKS && !READ_ONCE(p->ack); t++)
			sleep_ticks(1);
		f = spin_lock_irqsave(&p->lock);
		p->kick = 0;            /* a late worker must not write any more */
		spin_unlock_irqrestore(&p->lock, f);
		/* carry on working (busy, so victims run on every CPU) */
		for (unsigned long t0 = jiffies; jiffies - t0 < S3_LINGER_TICKS;) {
			sum = churn(sum, 256);
			yield();
		}
		sum = 0;
	} else {
		yield();        /* live across a context switch, maybe a migration */
	}
	for (int i = 0; i < S3_LEDGER_WORDS; i++)
		sum += READ_ONCE(l[i]);
	if (sum != want || happy != S3_HAPPY)
		note_unhappy("s3_victim");
	return sum;
}

/* Calls s3_victim one frame deeper than s3_buggy ran, so that the victim's
 * canary and locals fall inside s3_buggy's dead buffer. */
SCN unsigned long s3_enter_victim(struct s3_pair *p)
{
	unsigned long pad[S3_PAD_WORDS];
	unsigned long *q = launder(pad);

	for (int i = 0; i < S3_PAD_WORDS; i++)
		q[i] = i;
	return s3_victim(p) + READ_ONCE(q[1]);
}

/* One attempt, in a fresh task: a smashed canary ends it. */
SCN void s3_driver(void *arg)
{
	struct s3_pair *p = arg;

	s3_buggy(p);
	s3_enter_victim(p);
	p->survived++;
}

static void scenario_s3(int n, const char *name, long workers, long runs)
{
	static struct s3_pair pairs[16];
	struct task *corr[16], *drv[16];
	long early_total = 0, writes = 0, survived = 0;
	unsigned long unhappy0 = unhappy_total, smashed0 = stack_chk_failures;

	if (workers > 16)
		workers = 16;
	if (workers < 1)
		workers = 1;
	for (int w = 0; w < workers; w++) {
		struct s3_pair *p = &pairs[w];
		memset(p, 0, sizeof(*p));
		p->id = w;
		snprintf(p->name, sizeof(p->name), "s3corr%d", w);
		corr[w] = kthread_create(s3_corrupter, p, p->name);
	}
	for (long r = 0; r < runs; r++) {
		for (int w = 0; w < workers; w++) {
			char nm[16];
			/* seeded: about half the attempts hit the buggy path, at least one does */
			int early = (rnd() >> 33) & 1;
			if (r == runs - 1 && w == workers - 1 && !early_total && !early)
				early = 1;
			early_total += early;
			pairs[w].early = early;
			snprintf(nm, sizeof(nm), "s3drv%d.%ld", w, r);
			drv[w] = kthread_create(s3_driver, &pairs[w], nm);
		}
		for (int w = 0; w < workers; w++)
			task_join(drv[w]);
	}
	for (int w = 0; w < workers; w++) {
		WRITE_ONCE(pairs[w].stop, 1);
		task_join(corr[w]);
		writes += pairs[w].corrupt_writes;
		survived += pairs[w].survived;
	}
	stats();
	kprintf("KSWTEST verdict scenario=%d name=%s result=%s runs=%ld workers=%ld early_returns=%ld"
		" corrupt_writes=%ld unhappy=%lu smashed=%lu survived=%ld migrations=%lu\n",
		n, name,
		writes && unhappy_total - unhappy0 == (unsigned long)writes &&
		stack_chk_failures - smashed0 == (unsigned long)writes ? "corrupted" : "missed",
		runs, workers, early_total, writes,
		unhappy_total - unhappy0, stack_chk_failures - smashed0, survived, total_migrations);
}

static void scenario3(int n, const char *name)
{
	scenario_s3(n, name, 1, param_or(params.runs, 4));
}

static void scenario4(int n, const char *name)
{
	scenario_s3(n, name, param_or(params.workers, 8), param_or(params.runs, 2));
}

/* ============================================ 5: prologue-corruption */
/* s5_victim publishes its local buffer; the s5_corrupter task writes one word
 * past its end (s5_victim's canary slot) and one word before its start (the
 * local `below`). */
#define S5_WORDS 7
#define S5_BELOW 0xb0b0b0b0UL
static unsigned long *volatile s5_buf;
static volatile int s5_words, s5_done;

SCN void s5_corrupter(void *arg)
{
	unsigned long *b = NULL;
	int n;

	(void)arg;
	for (int t = 0; t < 500 && !(b = s5_buf); t++)
		sleep_ticks(1);
	if (!b)
		return;
	b = launder(b);
	n = s5_words;
	WRITE_ONCE(b[n], 0x5555555555555555UL);        /* one past the end */
	ground_truth("s5_corrupter", &b[n], 8);
	WRITE_ONCE(b[-1], 0xaaaaaaaaaaaaaaaaUL);       /* one before the start */
	ground_truth("s5_corrupter", &b[-1], 8);
	s5_done = 1;
}

SCN unsigned long s5_victim(void)
{
	unsigned long buf[S5_WORDS];
	volatile unsigned long below = S5_BELOW;
	unsigned long *b = launder(buf);
	unsigned long sum = 0;

	for (int i = 0; i < S5_WORDS; i++)
		b[i] = 0x5000 + i;
	s5_words = S5_WORDS;
	s5_buf = b;
	for (int t = 0; t < 500 && !s5_done; t++)
		sleep_ticks(1);
	s5_buf = NULL;
	for (int i = 0; i < S5_WORDS; i++)
		sum += READ_ONCE(b[i]);
	if (below != S5_BELOW)
		note_unhappy("s5_victim");
	return sum;
}

static void s5_task(void *arg) { (void)arg; s5_victim(); }

static void scenario5(int n, const char *name)
{
	long runs = param_or(params.runs, 1);
	unsigned long unhappy0 = unhappy_total;

	for (long r = 0; r < runs; r++) {
		s5_done = 0;
		s5_buf = NULL;
		struct task *c = kthread_create(s5_corrupter, NULL, "s5corr");
		struct task *v = kthread_create(s5_task, NULL, "s5victim");
		task_join(v);
		task_join(c);
	}
	stats();
	kprintf("KSWTEST verdict scenario=%d name=%s result=%s runs=%ld unhappy=%lu smashed=%lu\n", n,
		name, stack_chk_failures == (unsigned long)runs &&
		unhappy_total - unhappy0 == (unsigned long)runs ? "corrupted" : "missed",
		runs, unhappy_total - unhappy0,
		stack_chk_failures);
}

/* ======================================================== 6: clean */
#define S6_CHURN 4096     /* busy work per call: keeps the run long enough to migrate */
SCN unsigned long s6_helper(unsigned long x)
{
	unsigned long tmp[4];
	unsigned long *t = launder(tmp);

	for (int i = 0; i < 4; i++)
		t[i] = x + i;
	return churn(t[0] ^ t[3], S6_CHURN);
}

static volatile long s6_calls;

SCN void s6_worker(void *arg)
{
	long iters = (long)arg;
	unsigned long acc = 0;

	for (long i = 0; i < iters; i++) {
		acc += s3_victim(NULL);
		acc += s2_recurse(0);
		acc += s6_helper(acc + i);
		__atomic_add_fetch(&s6_calls, 1, __ATOMIC_SEQ_CST);
	}
}

static void scenario6(int n, const char *name)
{
	long workers = param_or(params.workers, 3), iters = param_or(params.iters, 1000);
	struct task *t[16];

	if (workers > 16)
		workers = 16;
	if (workers < 1)
		workers = 1;
	for (long w = 0; w < workers; w++) {
		char nm[16];
		snprintf(nm, sizeof(nm), "s6w%ld", w);
		t[w] = kthread_create(s6_worker, (void *)(iters / workers + (w < iters % workers)), nm);
	}
	for (long w = 0; w < workers; w++)
		task_join(t[w]);
	stats();
	kprintf("KSWTEST verdict scenario=%d name=%s result=%s calls=%ld workers=%ld unhappy=%lu"
		" smashed=%lu migrations=%lu\n", n, name,
		unhappy_total || stack_chk_failures ? "corrupted" : "clean", s6_calls, workers,
		unhappy_total, stack_chk_failures, total_migrations);
}

/* ================================================ 7: irq-corruption */
/* s7_victim publishes the address of its local `irq_target`; the LAPIC timer
 * interrupt handler (timer_interrupt -> s7_timer_hook -> s7_irq_corrupt), on
 * whichever CPU ticks next, writes through it once. */
#define S7_MAGIC 0x7a7a7a7aUL
#define S7_SPIN_TICKS 200
static unsigned long *volatile s7_target;
static volatile unsigned long s7_armed_at;
static volatile int s7_hit;

SCN void s7_irq_corrupt(void)
{
	unsigned long *p = __atomic_exchange_n(&s7_target, NULL, __ATOMIC_SEQ_CST);

	if (!p)
		return;
	p = launder(p);
	WRITE_ONCE(*p, 0xdead7777UL);
	ground_truth("s7_irq_corrupt", p, 8);
	s7_hit = 1;
}

void s7_timer_hook(void)
{
	if (READ_ONCE(s7_target) && jiffies - s7_armed_at >= 2)
		s7_irq_corrupt();
}

SCN unsigned long s7_victim(void)
{
	volatile unsigned long irq_target = S7_MAGIC;
	unsigned long acc = 1, start;

	s7_armed_at = jiffies;
	__atomic_store_n(&s7_target, (unsigned long *)&irq_target, __ATOMIC_SEQ_CST);
	start = jiffies;
	while (!READ_ONCE(s7_hit) && jiffies - start < S7_SPIN_TICKS)
		acc = churn(acc, 64);
	__atomic_store_n(&s7_target, NULL, __ATOMIC_SEQ_CST);
	acc = churn(acc, 1000);         /* ... and only later looks at it */
	if (irq_target != S7_MAGIC)
		note_unhappy("s7_victim");
	return acc;
}

static void s7_task(void *arg) { (void)arg; s7_victim(); }

static void scenario7(int n, const char *name)
{
	long runs = param_or(params.runs, 1), hits = 0;
	unsigned long unhappy0 = unhappy_total;

	for (long r = 0; r < runs; r++) {
		s7_hit = 0;
		task_join(kthread_create(s7_task, NULL, "s7victim"));
		hits += s7_hit;
	}
	stats();
	kprintf("KSWTEST verdict scenario=%d name=%s result=%s runs=%ld irq_writes=%ld unhappy=%lu"
		" smashed=%lu\n", n, name,
		hits == runs && unhappy_total - unhappy0 == (unsigned long)runs ? "corrupted" : "missed",
		runs, hits,
		unhappy_total - unhappy0, stack_chk_failures);
}

/* ====================================================== dispatch */
/* ==================================================== 14: hit-storm */
/* Many watch hits in a short time on both CPUs (kswgdb's reliability test).
 * W pairs of tasks (workers=, default 2): s14_victim publishes the address of
 * its local `box` and spins (calls, timer interrupts: its stack page stays
 * busy) until its partner s14_poker, on whichever CPU, has written `box`
 * `iters` times (default 50) in s14_poke, each write a new value. Each pair
 * does that `runs` times (default 10). The verdict's pokes= is the number of
 * writes into a published box: a watcher of s14_victim's `box` must see
 * exactly that many hits. */
struct s14_pair {
	unsigned long *volatile box;
	long iters;
	volatile int stop;
	long pokes;
};

SCN void s14_poke(struct s14_pair *p, unsigned long *b)
{
	for (long i = 0; i < p->iters; i++)
		WRITE_ONCE(*b, 0x5714000000000000UL | ((unsigned long)p->pokes << 16) | (unsigned long)i);
	p->pokes++;
}

SCN void s14_poker(void *arg)
{
	struct s14_pair *p = arg;

	while (!READ_ONCE(p->stop)) {
		unsigned long *b = READ_ONCE(p->box);

		if (b) {
			s14_poke(p, launder(b));
			__atomic_store_n(&p->box, NULL, __ATOMIC_SEQ_CST);
		}
	}
}

SCN unsigned long s14_victim(struct s14_pair *p)
{
	volatile unsigned long box = 0;
	unsigned long acc = 1;

	__atomic_store_n(&p->box, (unsigned long *)&box, __ATOMIC_SEQ_CST);
	while (READ_ONCE(p->box))
		acc = churn(acc, 16);
	return acc ^ box;
}

static struct s14_pair s14_pairs[8];
static long s14_runs;

static void s14_task(void *arg)
{
	for (long r = 0; r < s14_runs; r++)
		s14_victim(arg);
}

static void scenario14(int n, const char *name)
{
	long pairs = param_or(params.workers, 2), total = 0;
	struct task *victims[8], *pokers[8];

	s14_runs = param_or(params.runs, 10);
	if (pairs > 8)
		pairs = 8;
	if (pairs < 1)
		pairs = 1;
	for (long w = 0; w < pairs; w++) {
		char nm[16];
		s14_pairs[w].iters = param_or(params.iters, 50);
		snprintf(nm, sizeof(nm), "s14poke%ld", w);
		pokers[w] = kthread_create(s14_poker, &s14_pairs[w], nm);
		snprintf(nm, sizeof(nm), "s14vict%ld", w);
		victims[w] = kthread_create(s14_task, &s14_pairs[w], nm);
	}
	for (long w = 0; w < pairs; w++)
		task_join(victims[w]);
	for (long w = 0; w < pairs; w++) {
		WRITE_ONCE(s14_pairs[w].stop, 1);
		task_join(pokers[w]);
		total += s14_pairs[w].pokes * s14_pairs[w].iters;
	}
	stats();
	kprintf("KSWTEST verdict scenario=%d name=%s result=corrupted pokes=%ld pairs=%ld runs=%ld"
		" migrations=%lu\n", n, name, total, pairs, s14_runs, total_migrations);
}

/* ======================================================= 15: wedge */
/* A silent wedge, as a guest whose timer interrupt was lost for good: every
 * CPU masks its LAPIC timer at its next tick, then this CPU halts with
 * interrupts off. Nothing advances any more: no console line, no tick, no call
 * of a watched function. Only a debugger's hang watchdog can end such a run. */
extern volatile int timers_stopped;

static void scenario15(int n, const char *name)
{
	kprintf("KSWTEST wedge scenario=%d name=%s jiffies=%lu: stopping every timer\n", n, name,
		jiffies);
	timers_stopped = 1;
	for (;;)
		asm volatile("cli; hlt" ::: "memory");
}

static const struct {
	const char *name;
	void (*run)(int n, const char *name);
} scenarios[] = {
	{ "watch-fire", scenario0 },
	{ "canary-overflow", scenario1 },
	{ "recursive-depth", scenario2 },
	{ "silent-corruption", scenario3 },
	{ "multi-silent-corruption", scenario4 },
	{ "prologue-corruption", scenario5 },
	{ "clean", scenario6 },
	{ "irq-corruption", scenario7 },
	{ "dma-corruption", scenario8 },
	{ "cpu-phys-write", scenario9 },
	{ "constant-changed", scenario10 },
	{ "array-loop-init", scenario11 },
	{ "array-rep-stos-init", scenario12 },
	{ "array-helper-init", scenario13 },
	{ "hit-storm", scenario14 },
	{ "wedge", scenario15 },
};
#define NR_SCENARIOS ((long)(sizeof(scenarios) / sizeof(scenarios[0])))

void run_scenario(long n)
{
	if (n < 0 || n >= NR_SCENARIOS || !scenarios[n].run) {
		kprintf("KSWTEST no scenario (scenario=%ld; give scenario=0..%ld)\n", n,
			NR_SCENARIOS - 1);
		ksw_exit(EXIT_NO_SCENARIO);
	}
	rng_state = params.seed;
	kprintf("KSWTEST start scenario=%ld name=%s seed=%lu\n", n, scenarios[n].name, params.seed);
	scenarios[n].run(n, scenarios[n].name);
	ksw_exit(EXIT_SCENARIO(n));
}
