/* Boot: command line and guard (early_init), then kmain on the boot task. */
#include "kernel.h"

struct hvm_start_info {
	u32 magic;              /* 0x336ec578 */
	u32 version;
	u32 flags;
	u32 nr_modules;
	u64 modlist_paddr;
	u64 cmdline_paddr;
	u64 rsdp_paddr;
	u64 memmap_paddr;
	u32 memmap_entries;
	u32 reserved;
};
#define HVM_START_MAGIC 0x336ec578

char cmdline[512];
struct params params;

/* Runs before any function with a canary is live, so it may change the guard
 * (and has no canary itself). */
__attribute__((no_stack_protector)) void early_init(u32 start_info_paddr)
{
	const struct hvm_start_info *si = (const void *)(u64)start_info_paddr;
	u64 s, g;

	if (si && si->magic == HVM_START_MAGIC && si->cmdline_paddr)
		strlcpy(cmdline, (const char *)si->cmdline_paddr, sizeof(cmdline));
	parse_cmdline(cmdline, &params);
	s = params.seed ^ 0x4b53574755415244UL;        /* "KSWGUARD" */
	g = splitmix64(&s);
	__stack_chk_guard = g ? g : 0x1;
}

/* fault=1|2: an unexpected CPU exception in a task, to test the panic path. */
static void fault_task(void *arg)
{
	if ((long)arg == 1)
		asm volatile("ud2");
	*(volatile unsigned long *)0x100000000UL = 1;  /* above the 4 GiB identity map */
}

__attribute__((noreturn)) void kmain(void)
{
	serial_init();
	cpu_init_bsp();
	sched_init();
	lapic_init();
	lapic_timer_start();
	asm volatile("sti");
	smp_boot();
	kprintf("KSWTEST cpus=%d\n", nr_cpus);
	kprintf("KSWTEST cmdline=\"%s\" seed=%lu guard=0x%lx\n", cmdline, params.seed,
		__stack_chk_guard);
	if (params.fault > 0) {
		task_join(kthread_create(fault_task, (void *)params.fault, "fault"));
		panic("fault=%ld did not fault", params.fault);
	}
	run_scenario(params.scenario);
}
