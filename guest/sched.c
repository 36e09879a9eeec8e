/* Tasks and a preemptive round-robin scheduler with one global run queue.
 *
 * The run-queue lock is held across the stack switch and released by the task
 * switched to (finish_switch), so a task put back on the queue cannot be picked
 * by the other CPU while this CPU is still on its stack.
 */
#include "kernel.h"

struct task task_table[MAX_TASKS];
unsigned long stack_chk_failures;       /* tasks ended by __stack_chk_fail */
unsigned long total_migrations;
static spinlock_t rq_lock;
static spinlock_t tasks_lock;
static struct task *rq_head, *rq_tail;
static int next_pid = 1;

/* __stack_chk_guard: the global canary value (-mstack-protector-guard=global).
 * Replaced at boot (early_init) from the seed before any protected frame lives. */
unsigned long __stack_chk_guard = 0x2f8a5c3e19d7b641UL;

static void stack_init(struct task *t)
{
	struct stack_head *h = (struct stack_head *)t->stack;

	h->magic = STACK_MAGIC;
	h->task = t;
}

void sched_init(void)
{
	struct task *t = &task_table[0];
	struct percpu *pc = &percpu_area[0];

	t->stack = (unsigned long)boot_stack;
	t->pid = next_pid++;
	t->cpu = 0;
	strlcpy(t->comm, "init", sizeof(t->comm));
	t->state = TASK_RUNNABLE;
	t->flags = TF_BOOT;
	t->on_cpu = 1;
	t->slot = 0;
	stack_init(t);
	pc->current = t;
	pc->idle = idle_task_create(0);
}

static struct task *task_alloc(void)
{
	unsigned long f = spin_lock_irqsave(&tasks_lock);
	struct task *t = NULL;

	for (int i = 1; i < MAX_TASKS; i++) {
		if (task_table[i].state == TASK_FREE) {
			t = &task_table[i];
			memset(t, 0, sizeof(*t));
			t->slot = i;
			t->stack = (unsigned long)task_stacks[i - 1];
			t->pid = next_pid++;
			t->cpu = -1;
			t->state = TASK_ZOMBIE;         /* reserved, not yet runnable */
			break;
		}
	}
	spin_unlock_irqrestore(&tasks_lock, f);
	if (!t)
		panic("out of task slots (MAX_TASKS=%d)", MAX_TASKS);
	stack_init(t);
	return t;
}

static void task_setup(struct task *t, void (*fn)(void *), void *arg, const char *name)
{
	unsigned long *sp = (unsigned long *)(t->stack + THREAD_SIZE);

	t->fn = fn;
	t->arg = arg;
	strlcpy(t->comm, name, sizeof(t->comm));
	*--sp = 0;
	*--sp = 0;                      /* fake return address: end of the rbp chain */
	*--sp = (unsigned long)task_start;
	for (int i = 0; i < 6; i++)     /* rbp rbx r12 r13 r14 r15 for switch_stack */
		*--sp = 0;
	t->sp = (unsigned long)sp;
}

static void rq_append(struct task *t)
{
	t->next = NULL;
	if (rq_tail)
		rq_tail->next = t;
	else
		rq_head = t;
	rq_tail = t;
}

static int rq_has_runnable(void)
{
	unsigned long now = jiffies;

	for (struct task *t = rq_head; t; t = t->next)
		if ((long)(t->wake - now) <= 0)
			return 1;
	return 0;
}

/* The first queued task whose sleep is over; tasks still asleep keep their place. */
static struct task *rq_pick(void)
{
	struct task *prev = NULL, *t;
	unsigned long now = jiffies;

	for (t = rq_head; t; prev = t, t = t->next) {
		if ((long)(t->wake - now) > 0)
			continue;
		if (prev)
			prev->next = t->next;
		else
			rq_head = t->next;
		if (rq_tail == t)
			rq_tail = prev;
		t->next = NULL;
		return t;
	}
	return NULL;
}

struct task *kthread_create(void (*fn)(void *), void *arg, const char *name)
{
	struct task *t = task_alloc();
	unsigned long f;

	task_setup(t, fn, arg, name);
	f = spin_lock_irqsave(&rq_lock);
	t->state = TASK_RUNNABLE;
	rq_append(t);
	kick_idle_cpu();
	spin_unlock_irqrestore(&rq_lock, f);
	return t;
}

static void idle_fn(void *unused)
{
	(void)unused;
	idle_loop();
}

struct task *idle_task_create(int cpu)
{
	struct task *t = task_alloc();
	char name[16];

	snprintf(name, sizeof(name), "idle/%d", cpu);
	task_setup(t, idle_fn, NULL, name);
	t->flags = TF_IDLE;
	t->state = TASK_RUNNABLE;
	t->cpu = cpu;
	t->on_cpu = (cpu != 0);         /* an AP starts directly on its idle stack */
	return t;
}

/* Called with interrupts disabled (yield, timer interrupt, task_exit). */
void schedule(void)
{
	struct percpu *pc = this_cpu();
	struct task *prev = pc->current, *next;

	spin_lock(&rq_lock);
	if (prev->state == TASK_RUNNABLE && !(prev->flags & TF_IDLE))
		rq_append(prev);
	next = rq_pick();
	if (!next)
		next = pc->idle;
	if (rq_has_runnable())
		kick_idle_cpu();
	if (next == prev) {
		spin_unlock(&rq_lock);
		return;
	}
	if (next->cpu >= 0 && next->cpu != pc->cpu) {
		next->migrations++;
		total_migrations++;
	}
	next->cpu = pc->cpu;
	next->on_cpu = 1;
	next->switches++;
	pc->switches++;
	pc->prev = prev;
	pc->current = next;
	switch_stack(&prev->sp, next->sp);
	/* now running as whoever switched back to us, maybe on another CPU */
	pc = this_cpu();
	pc->prev->on_cpu = 0;
	spin_unlock(&rq_lock);
}

/* First code of every new task, entered from task_start with rq_lock held. */
void task_bootstrap(void)
{
	struct percpu *pc = this_cpu();
	struct task *t = pc->current;

	pc->prev->on_cpu = 0;
	spin_unlock(&rq_lock);
	asm volatile("sti" ::: "memory");
	t->fn(t->arg);
	task_exit();
}

void yield(void)
{
	unsigned long f = irq_save();

	schedule();
	irq_restore(f);
}

void sleep_ticks(unsigned long n)
{
	struct task *t = current_task();

	t->wake = jiffies + n;
	yield();
}

void task_exit(void)
{
	struct task *t = current_task();

	irq_save();
	if (t->flags & (TF_BOOT | TF_IDLE))
		panic("task_exit of %s", t->comm);
	t->state = TASK_ZOMBIE;
	schedule();
	panic("zombie %s ran", t->comm);
}

/* Wait for a task to end, then free its slot and stack. */
void task_join(struct task *t)
{
	unsigned long f;

	while (!(READ_ONCE(t->state) == TASK_ZOMBIE && !READ_ONCE(t->on_cpu)))
		sleep_ticks(1);
	f = spin_lock_irqsave(&tasks_lock);
	t->state = TASK_FREE;
	spin_unlock_irqrestore(&tasks_lock, f);
}

void idle_loop(void)
{
	for (;;) {
		asm volatile("cli" ::: "memory");
		schedule();
		asm volatile("sti; hlt" ::: "memory");
	}
}

/* -fstack-protector-all: a smashed canary ends the task (the scenario verdict
 * counts it); in the boot task, an idle task or an interrupt it is a panic. */
__attribute__((noreturn)) void __stack_chk_fail(void)
{
	unsigned long caller = (unsigned long)__builtin_return_address(0);
	struct percpu *pc = this_cpu();
	struct task *t = pc->current;

	if (pc->irq_depth || (t->flags & (TF_BOOT | TF_IDLE)))
		panic("stack-protector caller=0x%lx irq=%d", caller, pc->irq_depth);
	__atomic_add_fetch(&stack_chk_failures, 1, __ATOMIC_SEQ_CST);
	kprintf("KSWTEST stack-protector caller=0x%lx task=%s pid=%d cpu=%d\n",
		caller, t->comm, t->pid, pc->cpu);
	task_exit();
}
