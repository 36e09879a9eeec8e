/* IDT, exceptions, 8259 masking, LAPIC + its periodic timer, SMP bring-up. */
#include "kernel.h"

struct regs {
	u64 r15, r14, r13, r12, r11, r10, r9, r8, rbp, rdi, rsi, rdx, rcx, rbx, rax;
	u64 vector, error, rip, cs, rflags, rsp, ss;
};

struct idt_entry {
	u16 off0, sel;
	u8 ist, type;
	u16 off1;
	u32 off2, zero;
} __attribute__((packed));

static struct idt_entry idt[256] __attribute__((aligned(16)));
struct percpu percpu_area[MAX_CPUS];
volatile unsigned long jiffies;         /* timer ticks of CPU 0 */
int nr_cpus = 1;
static u32 timer_initial_count;
volatile int ap_ready;
volatile int ap_boot_cpu;

#define LAPIC_ID        0x020
#define LAPIC_TPR       0x080
#define LAPIC_EOI       0x0b0
#define LAPIC_SVR       0x0f0
#define LAPIC_ICR_LO    0x300
#define LAPIC_ICR_HI    0x310
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_LVT_LINT0 0x350
#define LAPIC_LVT_LINT1 0x360
#define LAPIC_TIMER_INIT 0x380
#define LAPIC_TIMER_DIV 0x3e0

static inline u32 lapic_read(u32 reg) { return *(volatile u32 *)(LAPIC_BASE + reg); }
static inline void lapic_write(u32 reg, u32 v) { *(volatile u32 *)(LAPIC_BASE + reg) = v; }

u32 lapic_id(void) { return lapic_read(LAPIC_ID) >> 24; }

static const char *const exc_names[32] = {
	"#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS", "#NP",
	"#SS", "#GP", "#PF", "?15", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP",
};

static void load_idt(void)
{
	struct { u16 limit; u64 base; } __attribute__((packed)) p = { sizeof(idt) - 1, (u64)idt };

	asm volatile("lidt %0" :: "m"(p));
}

static void exception(struct regs *r)
{
	u64 cr2;

	asm volatile("mov %%cr2, %0" : "=r"(cr2));
	panic("exception vector=%lu (%s) rip=0x%lx err=0x%lx cr2=0x%lx rsp=0x%lx rbp=0x%lx",
	      r->vector, exc_names[r->vector] ? exc_names[r->vector] : "?", r->rip, r->error, cr2,
	      r->rsp, r->rbp);
}

/* Scenario 15 (wedge): each CPU masks its LAPIC timer at its next tick. */
volatile int timers_stopped;

void timer_interrupt(void)
{
	struct percpu *pc = this_cpu();

	if (timers_stopped) {
		lapic_write(LAPIC_LVT_TIMER, lapic_read(LAPIC_LVT_TIMER) | (1u << 16));
		lapic_write(LAPIC_EOI, 0);
		return;
	}
	pc->irq_depth++;
	pc->ticks++;
	if (pc->cpu == 0)
		jiffies++;
	lapic_write(LAPIC_EOI, 0);
	s7_timer_hook();
	pc->irq_depth--;
	schedule();             /* preempt: still on the interrupted task's stack */
}

void interrupt_dispatch(struct regs *r)
{
	struct percpu *pc = this_cpu();

	if (r->vector < 32) {
		pc->irq_depth++;
		exception(r);
	}
	if (r->vector == TIMER_VECTOR) {
		timer_interrupt();
		return;
	}
	if (r->vector == RESCHED_VECTOR) {
		pc->ipis++;
		lapic_write(LAPIC_EOI, 0);
		schedule();     /* something became runnable while this CPU idled */
		return;
	}
	if (r->vector == SPURIOUS_VECTOR || r->vector >= 0xf0)
		return;         /* LAPIC / 8259 spurious */
	pc->irq_depth++;
	panic("unexpected interrupt vector=%lu rip=0x%lx", r->vector, r->rip);
}

static void idt_init(void)
{
	for (int v = 0; v < 256; v++) {
		u64 a = (u64)isr_table + 16 * v;
		idt[v] = (struct idt_entry){
			.off0 = a, .sel = 0x08, .ist = 0, .type = 0x8e,
			.off1 = a >> 16, .off2 = a >> 32, .zero = 0,
		};
	}
}

static void pic_disable(void)
{
	/* remap the 8259s to 0xf0..0xff (away from the exceptions), mask all */
	outb(0x20, 0x11); outb(0xa0, 0x11);
	outb(0x21, 0xf0); outb(0xa1, 0xf8);
	outb(0x21, 0x04); outb(0xa1, 0x02);
	outb(0x21, 0x01); outb(0xa1, 0x01);
	outb(0x21, 0xff); outb(0xa1, 0xff);
}

static void percpu_setup(int cpu)
{
	struct percpu *pc = &percpu_area[cpu];

	pc->self = pc;
	pc->cpu = cpu;
	wrmsr(0xc0000101, (u64)pc);     /* IA32_GS_BASE */
}

void cpu_init_bsp(void)
{
	idt_init();
	load_idt();
	pic_disable();
	percpu_setup(0);
	percpu_area[0].online = 1;
}

void lapic_init(void)
{
	lapic_write(LAPIC_TPR, 0);
	lapic_write(LAPIC_SVR, 0x100 | SPURIOUS_VECTOR);
	lapic_write(LAPIC_LVT_LINT0, 0x10000);  /* masked */
	lapic_write(LAPIC_LVT_LINT1, 0x10000);
}

/* Periodic timer. QEMU's LAPIC timer counts at 1 GHz (APIC_BUS_CYCLE_NS = 1)
 * divided by the divide register; with /16 one count is 16 ns. */
void lapic_timer_start(void)
{
	if (!timer_initial_count) {
		long us = params.tick_us > 0 ? params.tick_us : 2000;
		timer_initial_count = us * 1000 / 16;
	}
	lapic_write(LAPIC_TIMER_DIV, 0x3);      /* divide by 16 */
	lapic_write(LAPIC_LVT_TIMER, 0x20000 | TIMER_VECTOR);   /* periodic */
	lapic_write(LAPIC_TIMER_INIT, timer_initial_count);
}

/* ---- fw_cfg: how many vCPUs QEMU has (FW_CFG_NB_CPUS) ---- */
static int fwcfg_nb_cpus(void)
{
	char sig[4];

	outw(0x510, 0x0000);
	for (int i = 0; i < 4; i++)
		sig[i] = inb(0x511);
	if (memcmp(sig, "QEMU", 4))
		return 0;
	outw(0x510, 0x0005);
	return inb(0x511) | (inb(0x511) << 8);
}

static void lapic_ipi(u32 apic, u32 lo)
{
	lapic_write(LAPIC_ICR_HI, apic << 24);
	lapic_write(LAPIC_ICR_LO, lo);
	for (int i = 0; i < 100000 && (lapic_read(LAPIC_ICR_LO) & 0x1000); i++)
		cpu_relax();
}

/* Wake an idle CPU (other than this one) to look at the run queue. */
void kick_idle_cpu(void)
{
	int me = this_cpu()->cpu;

	for (int c = 0; c < nr_cpus; c++) {
		struct percpu *pc = &percpu_area[c];
		if (c != me && pc->online && READ_ONCE(pc->current) == pc->idle) {
			lapic_ipi(c, RESCHED_VECTOR);   /* fixed, physical */
			return;
		}
	}
}

void ap_main(void)
{
	int cpu = ap_boot_cpu;
	struct percpu *pc = &percpu_area[cpu];

	load_idt();
	percpu_setup(cpu);
	pc->current = pc->idle;
	lapic_init();
	lapic_timer_start();
	pc->online = 1;
	__atomic_store_n(&ap_ready, 1, __ATOMIC_RELEASE);
	idle_loop();
}

/* INIT-SIPI-SIPI to APIC IDs 1..n-1, one at a time, each with a bounded wait. */
void smp_boot(void)
{
	int want = params.cpus > 0 ? params.cpus : fwcfg_nb_cpus();

	if (want <= 0)
		want = 2;
	if (want > MAX_CPUS)
		want = MAX_CPUS;
	memcpy((void *)TRAMPOLINE_ADDR, trampoline_start, trampoline_end - trampoline_start);
	for (int cpu = 1; cpu < want; cpu++) {
		struct task *idle = idle_task_create(cpu);
		unsigned long t0;

		percpu_area[cpu].idle = idle;
		ap_boot_rsp = idle->stack + THREAD_SIZE;
		ap_boot_cpu = cpu;
		ap_ready = 0;
		barrier();
		lapic_ipi(cpu, 0x4500);                 /* INIT */
		for (int i = 0; i < 1000; i++)
			cpu_relax();
		lapic_ipi(cpu, 0x4600 | (TRAMPOLINE_ADDR >> 12));      /* SIPI */
		for (int i = 0; i < 100; i++)
			cpu_relax();
		if (!READ_ONCE(ap_ready))
			lapic_ipi(cpu, 0x4600 | (TRAMPOLINE_ADDR >> 12));
		t0 = jiffies;
		while (!READ_ONCE(ap_ready) && jiffies - t0 < 250)
			yield();
		if (!READ_ONCE(ap_ready)) {
			kprintf("KSWTEST warning cpu=%d did not start\n", cpu);
			break;
		}
		nr_cpus = cpu + 1;
	}
}
