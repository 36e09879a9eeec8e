/* kswtest boot code: PVH entry (32-bit, paging off) -> long mode -> C,
 * the AP trampoline (real mode -> long mode), interrupt stubs, context switch.
 * Physical == virtual everywhere (identity map of the first 4 GiB).
 */

#define MSR_EFER        0xc0000080
#define EFER_LME        0x100
#define CR0_PE          0x1
#define CR0_PG          0x80000000
#define CR4_PAE         0x20
#define SEL_CODE64      0x08
#define SEL_DATA        0x10
#define SEL_CODE32      0x18
#define THREAD_SIZE     16384
#define MAX_TASKS       64
#define COM1            0x3f8

/* ---------------------------------------------------------------- PVH note */
	.section .note.pvh, "a", @note
	.balign 4
	.long 4                         /* namesz */
	.long 8                         /* descsz: QEMU reads a 64-bit value */
	.long 18                        /* XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz "Xen"
	.balign 4
	.quad pvh_entry
	.balign 4

/* Paging on, long mode on, far jump to the 64-bit code at \target.
 * No stack needed (an AP has none yet). */
.macro ENTER_LONG_MODE target
	mov %cr4, %eax
	or $CR4_PAE, %eax
	mov %eax, %cr4
	mov $pml4, %eax
	mov %eax, %cr3
	mov $MSR_EFER, %ecx
	rdmsr
	or $EFER_LME, %eax
	wrmsr
	mov %cr0, %eax
	and $0x9fffffff, %eax           /* caches on (CD, NW off: an AP starts with them set) */
	or $(CR0_PG | CR0_PE), %eax
	mov %eax, %cr0
	ljmp $SEL_CODE64, $\target
.endm

/* -------------------------------------------------------- 32-bit entry */
	.section .text.boot, "ax"
	.code32
	.globl pvh_entry
	.type pvh_entry, @function
pvh_entry:
	cli
	cld
	mov %ebx, pvh_start_info_paddr   /* %ebx: physical address of hvm_start_info */

	/* "KSWTEST boot": the first console line, before anything else. */
	mov $boot_msg, %esi
1:	lodsb
	test %al, %al
	jz 3f
	mov %al, %ah
	mov $COM1 + 5, %dx
2:	inb %dx, %al                    /* wait for THR empty */
	test $0x20, %al
	jz 2b
	mov %ah, %al
	mov $COM1, %dx
	outb %al, %dx
	jmp 1b
3:
	/* zero .bss (not .stacks) */
	mov $__bss_start, %edi
	mov $__bss_end, %ecx
	sub %edi, %ecx
	shr $2, %ecx
	xor %eax, %eax
	rep stosl

	/* 4 page directories: 2048 x 2 MiB = the first 4 GiB, identity.
	 * 3..4 GiB (the MMIO hole: LAPIC 0xfee00000, IOAPIC, PCI BARs) uncached. */
	mov $pd_tables, %edi
	xor %ecx, %ecx
4:	mov %ecx, %eax
	shl $21, %eax
	or $0x83, %eax                  /* present | writable | 2 MiB page */
	cmp $1536, %ecx
	jb 5f
	or $0x18, %eax                  /* PWT | PCD */
5:	mov %eax, (%edi,%ecx,8)
	movl $0, 4(%edi,%ecx,8)
	inc %ecx
	cmp $2048, %ecx
	jb 4b

	mov $pdpt, %edi
	mov $pd_tables + 3, %eax
	mov %eax, 0(%edi)
	add $0x1000, %eax
	mov %eax, 8(%edi)
	add $0x1000, %eax
	mov %eax, 16(%edi)
	add $0x1000, %eax
	mov %eax, 24(%edi)
	movl $pdpt + 3, pml4

	lgdt gdt_ptr
	mov $SEL_DATA, %ax
	mov %ax, %ds
	mov %ax, %es
	mov %ax, %ss
	ENTER_LONG_MODE long_entry_bsp

/* AP: arrives here from the trampoline in 32-bit protected mode. */
	.globl ap_entry32
ap_entry32:
	mov $SEL_DATA, %ax
	mov %ax, %ds
	mov %ax, %es
	mov %ax, %ss
	ENTER_LONG_MODE ap_entry64

	.code64
long_entry_bsp:
	mov $SEL_DATA, %ax
	mov %ax, %ds
	mov %ax, %es
	mov %ax, %ss
	xor %eax, %eax
	mov %ax, %fs
	mov %ax, %gs
	mov $boot_stack + THREAD_SIZE, %rsp
	xor %ebp, %ebp
	mov pvh_start_info_paddr(%rip), %edi
	call early_init                 /* sets __stack_chk_guard: no canary itself */
	call kmain
6:	cli
	hlt
	jmp 6b

ap_entry64:
	mov $SEL_DATA, %ax
	mov %ax, %ds
	mov %ax, %es
	mov %ax, %ss
	xor %eax, %eax
	mov %ax, %fs
	mov %ax, %gs
	mov ap_boot_rsp(%rip), %rsp
	xor %ebp, %ebp
	call ap_main
7:	cli
	hlt
	jmp 7b

/* ------------------------------------------- AP trampoline (copied to 0x8000) */
	.code16
	.globl trampoline_start, trampoline_end
trampoline_start:
	cli
	cld
	mov %cs, %ax
	mov %ax, %ds
	lgdtl tramp_gdtr - trampoline_start
	mov %cr0, %eax
	or $CR0_PE, %eax
	mov %eax, %cr0
	ljmpl $SEL_CODE32, $ap_entry32
	.balign 8
tramp_gdtr:
	.word gdt_end - gdt - 1
	.long gdt
trampoline_end:
	.code64

/* ------------------------------------------------------ context switch */
	.text
/* void switch_stack(unsigned long *save_sp, unsigned long new_sp) */
	.globl switch_stack
	.type switch_stack, @function
switch_stack:
	push %rbp
	push %rbx
	push %r12
	push %r13
	push %r14
	push %r15
	mov %rsp, (%rdi)
	mov %rsi, %rsp
	pop %r15
	pop %r14
	pop %r13
	pop %r12
	pop %rbx
	pop %rbp
	ret
	.size switch_stack, . - switch_stack

/* First "return" of a new task (see kthread_create). */
	.globl task_start
	.type task_start, @function
task_start:
	xor %ebp, %ebp
	call task_bootstrap
	ud2
	.size task_start, . - task_start

/* ------------------------------------------------------ interrupt stubs */
/* 256 stubs, 16 bytes apart: isr_table + 16 * vector. Vectors with a CPU
 * error code: 8, 10-14, 17, 21, 29, 30; the others push a 0. */
	.balign 16
	.globl isr_table
isr_table:
	.set vec, 0
	.rept 256
	.balign 16
	.if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
	.else
	pushq $0
	.endif
	pushq $vec
	jmp isr_common
	.set vec, vec + 1
	.endr

/* Runs on the interrupted task's stack (ring 0, no IST). struct regs layout:
 * r15..rax, vector, error, rip, cs, rflags, rsp, ss. A fake frame (interrupted
 * rip, rbp) makes the rbp chain run through the interrupted function. */
isr_common:
	push %rax
	push %rbx
	push %rcx
	push %rdx
	push %rsi
	push %rdi
	push %rbp
	push %r8
	push %r9
	push %r10
	push %r11
	push %r12
	push %r13
	push %r14
	push %r15
	cld
	pushq 17*8(%rsp)                /* interrupted rip */
	push %rbp
	mov %rsp, %rbp
	lea 16(%rsp), %rdi
	call interrupt_dispatch
	add $16, %rsp
	pop %r15
	pop %r14
	pop %r13
	pop %r12
	pop %r11
	pop %r10
	pop %r9
	pop %r8
	pop %rbp
	pop %rdi
	pop %rsi
	pop %rdx
	pop %rcx
	pop %rbx
	pop %rax
	add $16, %rsp
	iretq

/* ------------------------------------------------------------- data */
	.section .rodata
boot_msg:
	.asciz "KSWTEST boot\n"

	.data
	.balign 8
	.globl pvh_start_info_paddr
pvh_start_info_paddr:
	.long 0, 0
	.globl ap_boot_rsp
ap_boot_rsp:
	.quad 0
	.balign 16
gdt:
	.quad 0                         /* null */
	.quad 0x00af9a000000ffff        /* 0x08: 64-bit code */
	.quad 0x00cf92000000ffff        /* 0x10: data */
	.quad 0x00cf9a000000ffff        /* 0x18: 32-bit code (AP trampoline) */
gdt_end:
	.globl gdt_ptr
gdt_ptr:
	.word gdt_end - gdt - 1
	.quad gdt

	.bss
	.balign 4096
pml4:	.skip 4096
pdpt:	.skip 4096
pd_tables:
	.skip 4 * 4096

/* Stacks: not loaded, not zeroed, 16 KiB-aligned. */
	.section .stacks, "aw", @nobits
	.balign THREAD_SIZE
	.globl boot_stack, task_stacks
boot_stack:
	.skip THREAD_SIZE
task_stacks:
	.skip THREAD_SIZE * MAX_TASKS

	.section .note.GNU-stack, "", @progbits
