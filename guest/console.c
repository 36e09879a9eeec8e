/* COM1 console: polled output, whole lines under one spinlock so that lines
 * from two CPUs (or from an interrupt) never interleave. */
#include "kernel.h"

#define COM1 0x3f8

static spinlock_t console_lock;
static volatile int console_owner = -1;     /* CPU holding console_lock */
static volatile int panicking;

void serial_init(void)
{
	outb(COM1 + 1, 0x00);   /* no UART interrupts */
	outb(COM1 + 3, 0x80);   /* DLAB */
	outb(COM1 + 0, 0x01);   /* 115200 baud */
	outb(COM1 + 1, 0x00);
	outb(COM1 + 3, 0x03);   /* 8N1 */
	outb(COM1 + 2, 0xc7);   /* FIFO on, cleared */
	outb(COM1 + 4, 0x03);   /* DTR | RTS */
}

static void serial_putc(char c)
{
	int spins = 100000;

	while (!(inb(COM1 + 5) & 0x20) && --spins)
		cpu_relax();
	outb(COM1, (u8)c);
}

static int my_cpu(void)
{
	struct percpu *pc = this_cpu();

	return pc ? pc->cpu : -1;
}

static void console_write(const char *s, int n)
{
	unsigned long f = irq_save();
	int cpu = my_cpu();

	if (panicking) {
		/* the panicking CPU may take the lock from anyone, once */
		for (long i = 0; i < 2000000 && !spin_trylock(&console_lock); i++)
			cpu_relax();
	} else {
		spin_lock(&console_lock);
	}
	console_owner = cpu;
	for (int i = 0; i < n; i++)
		serial_putc(s[i]);
	console_owner = -1;
	spin_unlock(&console_lock);
	irq_restore(f);
}

/* ---- formatting ---- */
struct out { char *buf; int size, len; };

static void put(struct out *o, char c)
{
	if (o->len + 1 < o->size)
		o->buf[o->len] = c;
	o->len++;
}

static void put_num(struct out *o, unsigned long v, int base, int neg, int width, char padc)
{
	char tmp[24];
	int n = 0;

	do {
		tmp[n++] = "0123456789abcdef"[v % base];
		v /= base;
	} while (v);
	if (neg)
		tmp[n++] = '-';
	for (int i = n; i < width; i++)
		put(o, padc);
	while (n)
		put(o, tmp[--n]);
}

int vsnprintf(char *buf, int size, const char *fmt, va_list ap)
{
	struct out o = { buf, size, 0 };

	for (; *fmt; fmt++) {
		if (*fmt != '%') {
			put(&o, *fmt);
			continue;
		}
		fmt++;
		char padc = ' ';
		int width = 0, lng = 0;
		if (*fmt == '0') {
			padc = '0';
			fmt++;
		}
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (*fmt++ - '0');
		while (*fmt == 'l') {
			lng = 1;
			fmt++;
		}
		switch (*fmt) {
		case 'd':
		case 'i': {
			long v = lng ? va_arg(ap, long) : va_arg(ap, int);
			put_num(&o, v < 0 ? -(unsigned long)v : (unsigned long)v, 10, v < 0, width, padc);
			break;
		}
		case 'u':
			put_num(&o, lng ? va_arg(ap, unsigned long) : va_arg(ap, unsigned int), 10, 0, width, padc);
			break;
		case 'x':
			put_num(&o, lng ? va_arg(ap, unsigned long) : va_arg(ap, unsigned int), 16, 0, width, padc);
			break;
		case 'p':
			put(&o, '0');
			put(&o, 'x');
			put_num(&o, (unsigned long)va_arg(ap, void *), 16, 0, width, padc);
			break;
		case 'c':
			put(&o, (char)va_arg(ap, int));
			break;
		case 's': {
			const char *s = va_arg(ap, const char *);
			if (!s)
				s = "(null)";
			while (*s)
				put(&o, *s++);
			break;
		}
		case '%':
			put(&o, '%');
			break;
		default:
			put(&o, '%');
			if (*fmt)
				put(&o, *fmt);
			else
				fmt--;
		}
	}
	if (size > 0)
		buf[o.len < size ? o.len : size - 1] = 0;
	return o.len;
}

int snprintf(char *buf, int size, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, size, fmt, ap);
	va_end(ap);
	return n;
}

void kprintf(const char *fmt, ...)
{
	char buf[256];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n >= (int)sizeof(buf)) {
		n = sizeof(buf) - 1;
		buf[n - 1] = '\n';
	}
	console_write(buf, n);
}

void ksw_exit(int code)
{
	outl(DEBUG_EXIT_PORT, code);
	/* no isa-debug-exit device: stop here */
	for (;;)
		asm volatile("cli; hlt");
}

void panic(const char *fmt, ...)
{
	char buf[224];
	va_list ap;
	struct percpu *pc;
	struct task *t;

	asm volatile("cli");
	panicking = 1;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	pc = this_cpu();
	t = pc ? pc->current : NULL;
	kprintf("KSWTEST panic %s cpu=%d task=%s\n", buf, pc ? pc->cpu : -1, t ? t->comm : "-");
	ksw_exit(EXIT_PANIC);
}

/* The ground-truth line every corrupting writer prints right after its write:
 * it wrote [addr, addr + len). */
void ground_truth(const char *writer, const void *addr, unsigned long len)
{
	struct percpu *pc = this_cpu();
	struct task *t = pc->current;

	kprintf("KSWTEST corrupt writer=%s addr=0x%lx task=%s len=%lu pid=%d cpu=%d%s\n",
		writer, (unsigned long)addr, t ? t->comm : "-", len, t ? t->pid : -1, pc->cpu,
		pc->irq_depth ? " irq=1" : "");
}
