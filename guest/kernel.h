/* kswtest: the freestanding x86-64 test kernel of kswgdb.
 *
 * Everything the engine reads through DWARF lives here: struct task, struct
 * percpu, percpu_area[], __stack_chk_guard, jiffies.  See README.md (the ABI).
 */
#ifndef KSWTEST_KERNEL_H
#define KSWTEST_KERNEL_H

#include <stdarg.h>
#include <stddef.h>

typedef unsigned long u64;
typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;

#define MAX_CPUS        8
#define MAX_TASKS       64              /* task_table[] slots; slot 0 is the boot task */
#define THREAD_SIZE     16384UL         /* every stack: 16 KiB, 16 KiB-aligned */
#define TIMER_VECTOR    0x20
#define RESCHED_VECTOR  0x21            /* IPI: wake an idle CPU */
#define SPURIOUS_VECTOR 0xef            /* LAPIC; 0xf0..0xff are the (masked) 8259s */
#define TRAMPOLINE_ADDR 0x8000UL        /* AP real-mode entry, SIPI vector 0x08 */
#define LAPIC_BASE      0xfee00000UL
#define DEBUG_EXIT_PORT 0xf4
#define STACK_MAGIC     0x4b53574b53544b21UL   /* "!KTSKWSK" at the base of every stack */

/* isa-debug-exit codes (QEMU exit status = code << 1 | 1) */
#define EXIT_SCENARIO(n) (0x10 + (n))
#define EXIT_NO_SCENARIO 0x3d
#define EXIT_PANIC       0x3e

/* A scenario function: a real call with a real frame (and, under
 * -fstack-protector-all, a canary), never inlined, cloned or merged. */
#define SCN __attribute__((noinline, noclone, no_icf))

#define barrier()       asm volatile("" ::: "memory")
#define READ_ONCE(x)    (*(const volatile __typeof__(x) *)&(x))
#define WRITE_ONCE(x, v) (*(volatile __typeof__(x) *)&(x) = (v))
/* Hide a value from the optimiser: it can no longer see where a pointer points. */
#define launder(x)      ({ __typeof__((x) + 0) __l = (x); asm volatile("" : "+r"(__l)); __l; })

enum task_state { TASK_FREE = 0, TASK_RUNNABLE = 1, TASK_ZOMBIE = 2 };
#define TF_BOOT 1       /* the boot task ("init", kmain) */
#define TF_IDLE 2       /* a per-CPU idle task, never on the run queue */

struct task {
	unsigned long stack;    /* lowest address of its stack (THREAD_SIZE-aligned) */
	unsigned long sp;       /* saved stack pointer while switched out */
	int pid;
	int cpu;                /* CPU it runs on / last ran on (-1: never ran) */
	char comm[16];
	int state;              /* enum task_state */
	int flags;              /* TF_* */
	int on_cpu;             /* 1 while some CPU is on its stack */
	int slot;               /* index in task_table[] */
	unsigned long wake;     /* not run before jiffies reaches this (sleep) */
	void (*fn)(void *);
	void *arg;
	struct task *next;      /* run-queue link */
	unsigned long switches; /* times switched in */
	unsigned long migrations; /* times switched in on a CPU other than the last */
};

/* At the lowest address of every stack (what SP rounds down to). */
struct stack_head {
	unsigned long magic;    /* STACK_MAGIC */
	struct task *task;
};

struct percpu {
	struct task *current;   /* %gs:0 */
	struct percpu *self;    /* %gs:8 */
	int cpu;
	int online;
	int irq_depth;          /* > 0 while in an interrupt/exception handler */
	int pad;
	unsigned long ticks;    /* timer interrupts taken on this CPU */
	unsigned long ipis;     /* resched IPIs taken */
	unsigned long switches; /* context switches on this CPU */
	struct task *idle;
	struct task *prev;      /* the task switched away from (finish_switch) */
} __attribute__((aligned(64)));

extern struct percpu percpu_area[MAX_CPUS];
extern struct task task_table[MAX_TASKS];
extern volatile unsigned long jiffies;
extern unsigned long __stack_chk_guard;
extern int nr_cpus;

/* Kernel command line parameters; -1 = not given (scenario default). */
struct params {
	long scenario;
	unsigned long seed;
	long runs, workers, iters;
	long cpus;
	long tick_us;
	long fault;             /* 1: ud2, 2: page fault, in a task after boot (tests the panic path) */
};
extern struct params params;
extern char cmdline[512];

/* ---- CPU helpers ---- */
static inline void outb(u16 port, u8 v) { asm volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { asm volatile("outw %0, %1" :: "a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { asm volatile("outl %0, %1" :: "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; asm volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u32 inl(u16 port) { u32 v; asm volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline void cpu_relax(void) { asm volatile("pause" ::: "memory"); }
static inline void wrmsr(u32 msr, u64 v)
{
	asm volatile("wrmsr" :: "c"(msr), "a"((u32)v), "d"((u32)(v >> 32)));
}
static inline struct percpu *this_cpu(void)
{
	struct percpu *p;
	asm volatile("movq %%gs:8, %0" : "=r"(p));
	return p;
}
static inline struct task *current_task(void)
{
	struct task *t;
	asm volatile("movq %%gs:0, %0" : "=r"(t));
	return t;
}
static inline unsigned long irq_save(void)
{
	unsigned long f;
	asm volatile("pushfq; popq %0; cli" : "=r"(f) :: "memory");
	return f;
}
static inline void irq_restore(unsigned long f)
{
	if (f & 0x200)
		asm volatile("sti" ::: "memory");
}

typedef struct { volatile int locked; } spinlock_t;
static inline void spin_lock(spinlock_t *l)
{
	while (__atomic_exchange_n(&l->locked, 1, __ATOMIC_ACQUIRE))
		while (l->locked)
			cpu_relax();
}
static inline int spin_trylock(spinlock_t *l)
{
	return !__atomic_exchange_n(&l->locked, 1, __ATOMIC_ACQUIRE);
}
static inline void spin_unlock(spinlock_t *l) { __atomic_store_n(&l->locked, 0, __ATOMIC_RELEASE); }
static inline unsigned long spin_lock_irqsave(spinlock_t *l)
{
	unsigned long f = irq_save();
	spin_lock(l);
	return f;
}
static inline void spin_unlock_irqrestore(spinlock_t *l, unsigned long f)
{
	spin_unlock(l);
	irq_restore(f);
}

/* ---- console.c ---- */
void serial_init(void);
int vsnprintf(char *buf, int size, const char *fmt, va_list ap);
int snprintf(char *buf, int size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void kprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void panic(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
void ksw_exit(int code) __attribute__((noreturn));
void ground_truth(const char *writer, const void *addr, unsigned long len);

/* ---- lib.c ---- */
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
void *memmove(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
void strlcpy(char *d, const char *s, size_t n);
u64 splitmix64(u64 *state);
void parse_cmdline(const char *s, struct params *p);

/* ---- cpu.c ---- */
void cpu_init_bsp(void);
void lapic_init(void);
void lapic_timer_start(void);
void smp_boot(void);
void timer_interrupt(void);
u32 lapic_id(void);
void kick_idle_cpu(void);

/* ---- sched.c ---- */
void sched_init(void);
struct task *kthread_create(void (*fn)(void *), void *arg, const char *name);
void yield(void);
void schedule(void);
void sleep_ticks(unsigned long n);
void task_exit(void) __attribute__((noreturn));
void task_join(struct task *t);
struct task *idle_task_create(int cpu);
void idle_loop(void) __attribute__((noreturn));
extern unsigned long stack_chk_failures;
extern unsigned long total_migrations;

/* ---- scenarios.c ---- */
void run_scenario(long n) __attribute__((noreturn));
void s7_timer_hook(void);

/* ---- physscen.c (scenarios 8-10: physical-memory polls) ---- */
void scenario8(int n, const char *name);
void scenario9(int n, const char *name);
void scenario10(int n, const char *name);

/* ---- arrayscen.c (scenarios 11-13: local arrays initialised three ways) ---- */
void scenario11(int n, const char *name);
void scenario12(int n, const char *name);
void scenario13(int n, const char *name);

/* ---- boot.S ---- */
extern char trampoline_start[], trampoline_end[];
extern u8 boot_stack[];
extern u8 task_stacks[][THREAD_SIZE];
extern volatile unsigned long ap_boot_rsp;
void switch_stack(unsigned long *save_sp, unsigned long new_sp);
void task_start(void);
extern char isr_table[];

#endif
