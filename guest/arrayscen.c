/* Scenarios 11-13: a watched local array, initialised three ways, then
 * corrupted by another task through a stale pointer.
 *
 * The victim fills its local `buf` (11: a loop of indexed stores; 12: `rep
 * stosq`, what an inlined memset becomes; 13: a call to a memset-like helper
 * given &buf), lends the buffer to the "sastale" task, takes it back, and
 * then waits. The other task kept its copy of the pointer and later writes
 * buf[SA_SLOT] through it (sa_stale_write), printing the usual ground truth.
 * The victim then finds buf[SA_SLOT] changed ("unhappy").
 *
 * What the scenarios test is the arming point: a watch on buf[SA_SLOT] armed
 * before the victim's own initialisation reports those stores as corruptions.
 * Names are a contract with images/kswtest.toml and the integration tests.
 */
#include "kernel.h"

#define SA_WORDS 16
#define SA_SLOT  9              /* the element the stale pointer hits */
#define SA_WAIT  500            /* ticks (2 ms) any side waits at most */

struct sa_share {
	unsigned long *volatile lent;   /* the buffer while it is lent out */
	volatile int taken, returned, written;
	const char *who;
};
static struct sa_share sa;
static unsigned long sa_unhappy, sa_writes;

/* The stale writer: keeps the lent pointer after it was taken back. */
SCN void sa_stale_write(unsigned long *stale)
{
	unsigned long *p = launder(stale);

	WRITE_ONCE(p[SA_SLOT], 0x5a5a000000000000UL | SA_SLOT);
	ground_truth("sa_stale_write", &p[SA_SLOT], 8);
}

static void sa_stale_task(void *arg)
{
	unsigned long *stale = NULL;

	(void)arg;
	for (int t = 0; t < SA_WAIT && !(stale = sa.lent); t++)
		sleep_ticks(1);
	if (!stale)
		return;
	sa.taken = 1;
	for (int t = 0; t < SA_WAIT && !sa.returned; t++)
		sleep_ticks(1);
	sa_stale_write(stale);          /* the bug: the buffer is no longer ours */
	sa_writes++;
	sa.written = 1;
}

/* Lend buf out, take it back, wait for the stale write, check buf. Inlined into
 * each victim: the buffer escapes through a store, not through a call. */
static inline __attribute__((always_inline)) void sa_lend_and_check(unsigned long *buf,
								    unsigned long first,
								    const char *victim)
{
	WRITE_ONCE(sa.lent, buf);
	for (int t = 0; t < SA_WAIT && !sa.taken; t++)
		sleep_ticks(1);
	WRITE_ONCE(sa.lent, NULL);
	sa.returned = 1;
	for (int t = 0; t < SA_WAIT && !sa.written; t++)
		sleep_ticks(1);
	if (READ_ONCE(buf[SA_SLOT]) != first + SA_SLOT * 0x101) {
		sa_unhappy++;
		kprintf("KSWTEST unhappy victim=%s task=%s cpu=%d\n", victim,
			current_task()->comm, this_cpu()->cpu);
	}
}

/* 11: a loop of indexed stores (mov [rsp+rax*8+...], rdx). */
SCN unsigned long s11_victim(unsigned long first)
{
	unsigned long buf[SA_WORDS];
	long n = launder((long)SA_WORDS);

	for (long i = 0; i < n; i++)
		buf[i] = first + i * 0x101;
	sa_lend_and_check(buf, first, "s11_victim");
	return buf[1];
}

/* 12: rep stosq over the whole array, then one element set. */
SCN unsigned long s12_victim(unsigned long first)
{
	unsigned long buf[SA_WORDS];
	unsigned long *dst = buf;
	unsigned long count = SA_WORDS;

	asm volatile("rep stosq" : "+D"(dst), "+c"(count) : "a"(first + SA_SLOT * 0x101)
		     : "memory");
	sa_lend_and_check(buf, first, "s12_victim");
	return buf[1];
}

/* 13: a memset-like helper given &buf. */
SCN void s13_fill(unsigned long *p, long n, unsigned long first)
{
	p = launder(p);
	for (long i = 0; i < n; i++)
		WRITE_ONCE(p[i], first + i * 0x101);
}

SCN unsigned long s13_victim(unsigned long first)
{
	unsigned long buf[SA_WORDS];

	s13_fill(buf, SA_WORDS, first);
	sa_lend_and_check(buf, first, "s13_victim");
	return buf[1];
}

static void sa_victim_task(void *arg)
{
	unsigned long (*victim)(unsigned long) = arg;

	victim(0x7100);
}

void scenario_array(int n, const char *name, unsigned long (*victim)(unsigned long))
{
	long runs = params.runs >= 0 ? params.runs : 2;
	unsigned long unhappy0 = sa_unhappy, writes0 = sa_writes;

	for (long r = 0; r < runs; r++) {
		memset(&sa, 0, sizeof(sa));
		struct task *w = kthread_create(sa_stale_task, NULL, "sastale");
		struct task *v = kthread_create(sa_victim_task, (void *)victim, "savictim");
		task_join(v);
		task_join(w);
	}
	kprintf("KSWTEST verdict scenario=%d name=%s result=%s runs=%ld stale_writes=%lu"
		" unhappy=%lu smashed=%lu\n", n, name,
		sa_writes - writes0 == (unsigned long)runs &&
		sa_unhappy - unhappy0 == (unsigned long)runs ? "corrupted" : "missed",
		runs, sa_writes - writes0, sa_unhappy - unhappy0, stack_chk_failures);
}

void scenario11(int n, const char *name) { scenario_array(n, name, s11_victim); }
void scenario12(int n, const char *name) { scenario_array(n, name, s12_victim); }
void scenario13(int n, const char *name) { scenario_array(n, name, s13_victim); }
