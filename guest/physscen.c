/* Scenarios 8-10: corruption that a physical-memory poll must see.
 *
 * Physical == virtual here (identity map of the first 4 GiB), so the address
 * printed in a ground-truth line is both the physical address a poll watches
 * and the virtual address a CPU watchpoint watches. Global names are a
 * contract with the tests (tests/integration/test_phys_polls.py).
 *
 *  8 dma-corruption: a PCI device (QEMU's edu, -device edu) writes 8 bytes into
 *    the kernel-owned page s8_zero_page by DMA. No CPU instruction writes it, so
 *    a CPU write watchpoint stays silent; only a physical poll sees it.
 *  9 cpu-phys-write: task "s9writer" writes s9_word through a pointer: a CPU
 *    write watchpoint and a physical poll both see it.
 * 10 constant-changed: s10_constant must never change; task "s10bug" flips
 *    one bit of it ("changes from" 0x5eed5eed5eed5eed).
 */
#include "kernel.h"

/* Ticks (2 ms) each scenario runs on after its write, so an outside observer
 * that saw the change still finds the guest alive to look at its vCPUs. */
#define S_LINGER 50

/* ------------------------------------------------------------ PCI + edu */
#define PCI_ADDR 0xcf8
#define PCI_DATA 0xcfc
#define EDU_VENDOR_DEVICE 0x11e81234u   /* device 0x11e8, vendor 0x1234 */
#define EDU_BAR0 0xfea00000u            /* free in the pc machine's PCI hole; qboot assigns no BARs */
#define EDU_BUFFER 0x40000u             /* the device's 4 KiB DMA buffer, device-side address */
#define EDU_DMA_MASK ((1ul << 28) - 1)  /* edu clamps RAM-side DMA addresses to 28 bits */
#define EDU_ID 0x00
#define EDU_DMA_SRC 0x80
#define EDU_DMA_DST 0x88
#define EDU_DMA_CNT 0x90
#define EDU_DMA_CMD 0x98
#define EDU_CMD_RUN 0x1
#define EDU_CMD_TO_RAM 0x2
#define S8_VALUE 0x33ul
#define S8_OFFSET 0x6a8                 /* the word of the zero page the device hits */

static u32 pci_read(int dev, int reg)
{
	outl(PCI_ADDR, 0x80000000u | (u32)dev << 11 | (u32)(reg & 0xfc));
	return inl(PCI_DATA);
}

static void pci_write(int dev, int reg, u32 v)
{
	outl(PCI_ADDR, 0x80000000u | (u32)dev << 11 | (u32)(reg & 0xfc));
	outl(PCI_DATA, v);
}

static volatile u32 *edu_reg(unsigned long off)
{
	return (volatile u32 *)(unsigned long)(EDU_BAR0 + off);
}

/* Bus 0 only: the pc machine puts -device edu there. Returns the slot or -1. */
static int edu_find(void)
{
	for (int dev = 0; dev < 32; dev++)
		if (pci_read(dev, 0) == EDU_VENDOR_DEVICE)
			return dev;
	return -1;
}

/* Start one DMA and wait for the device's timer (100 ms of virtual time) to run it. */
static int edu_dma(unsigned long src, unsigned long dst, unsigned long count, u32 cmd)
{
	unsigned long start = jiffies;

	/* 32-bit writes set the whole 64-bit register (edu zero-extends them). */

	*edu_reg(EDU_DMA_SRC) = (u32)src;
	*edu_reg(EDU_DMA_DST) = (u32)dst;
	*edu_reg(EDU_DMA_CNT) = (u32)count;
	*edu_reg(EDU_DMA_CMD) = cmd | EDU_CMD_RUN;
	while (*edu_reg(EDU_DMA_CMD) & EDU_CMD_RUN) {
		if (jiffies - start > 2000)     /* 4 s */
			return -1;
		sleep_ticks(1);
	}
	return 0;
}

/* The kernel's own "zero page": must stay all zeros (the real case: a byte of
 * arm64's zero page became 0x33 by a misconfigured device). */
unsigned long s8_zero_page[512] __attribute__((aligned(4096)));
/* What the device will write, staged in RAM for the RAM -> device DMA. */
unsigned long s8_staging __attribute__((aligned(64)));
static volatile int s8_status;

static void s8_task(void *arg)
{
	unsigned long target = (unsigned long)&s8_zero_page[S8_OFFSET / 8];
	int dev = edu_find();
	u32 id;

	(void)arg;
	if (dev < 0) {
		kprintf("KSWTEST s8 no-edu (run QEMU with -device edu)\n");
		s8_status = -1;
		return;
	}
	pci_write(dev, 0x10, EDU_BAR0);                 /* BAR0 */
	pci_write(dev, 0x04, pci_read(dev, 0x04) | 0x6); /* memory space + bus master */
	id = *edu_reg(EDU_ID);
	kprintf("KSWTEST s8 edu slot=%d bar0=0x%x id=0x%x\n", dev, EDU_BAR0, id);
	if ((target & ~EDU_DMA_MASK) || ((unsigned long)&s8_staging & ~EDU_DMA_MASK)) {
		kprintf("KSWTEST s8 buffer above the edu DMA mask\n");
		s8_status = -2;
		return;
	}
	s8_staging = S8_VALUE;
	sleep_ticks(10);                                /* let watchers settle on a live guest */
	if (edu_dma((unsigned long)&s8_staging, EDU_BUFFER, 8, 0) ||
	    edu_dma(EDU_BUFFER, target, 8, EDU_CMD_TO_RAM)) {
		kprintf("KSWTEST s8 dma-timeout\n");
		s8_status = -3;
		return;
	}
	kprintf("KSWTEST corrupt writer=edu-dma addr=0x%lx task=%s len=8 pid=%d cpu=%d dma=1\n",
		target, current_task()->comm, current_task()->pid, this_cpu()->cpu);
	s8_status = READ_ONCE(s8_zero_page[S8_OFFSET / 8]) == S8_VALUE ? 1 : -4;
	sleep_ticks(S_LINGER);
}

void scenario8(int n, const char *name)
{
	task_join(kthread_create(s8_task, NULL, "s8dma"));
	kprintf("KSWTEST verdict scenario=%d name=%s result=%s status=%d value=0x%lx\n", n, name,
		s8_status == 1 ? "corrupted" : "missed", s8_status,
		READ_ONCE(s8_zero_page[S8_OFFSET / 8]));
}

/* ------------------------------------------------------- 9: CPU write */
#define S9_VALUE 0x33ul
unsigned long s9_word __attribute__((aligned(64)));

SCN void s9_poke(unsigned long *p)
{
	p = launder(p);
	WRITE_ONCE(*p, S9_VALUE);
	ground_truth("s9_poke", p, 8);
}

static void s9_task(void *arg)
{
	(void)arg;
	sleep_ticks(20);
	s9_poke(&s9_word);
	sleep_ticks(S_LINGER);
}

void scenario9(int n, const char *name)
{
	task_join(kthread_create(s9_task, NULL, "s9writer"));
	kprintf("KSWTEST verdict scenario=%d name=%s result=%s value=0x%lx\n", n, name,
		READ_ONCE(s9_word) == S9_VALUE ? "corrupted" : "missed", READ_ONCE(s9_word));
}

/* ------------------------------------------------ 10: constant changed */
#define S10_CONSTANT 0x5eed5eed5eed5eedul
unsigned long s10_constant __attribute__((aligned(64))) = S10_CONSTANT;

SCN void s10_flip(unsigned long *p, int bit)
{
	p = launder(p);
	WRITE_ONCE(*p, READ_ONCE(*p) ^ (1ul << bit));
	ground_truth("s10_flip", p, 8);
}

static void s10_task(void *arg)
{
	(void)arg;
	sleep_ticks(20);
	s10_flip(&s10_constant, 17);
	sleep_ticks(S_LINGER);
}

void scenario10(int n, const char *name)
{
	task_join(kthread_create(s10_task, NULL, "s10bug"));
	kprintf("KSWTEST verdict scenario=%d name=%s result=%s value=0x%lx\n", n, name,
		READ_ONCE(s10_constant) != S10_CONSTANT ? "corrupted" : "missed",
		READ_ONCE(s10_constant));
}
