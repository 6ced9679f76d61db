/* The in-process runtime's stack switches (tiers/signals.h): the rewrite slow path moves onto
 * the thread's kbox stack, and a thread's exit unmaps it.  In the gate section: their
 * syscalls are the runtime's own. */
#include <asm/unistd.h>

	.section kbox_gate, "ax", @progbits

/* void kbox_rw_slow(struct kbox_rw_frame *f, uint64_t site)
 * Called by a trampoline on the program's stack (below its red zone).  The kernel knows the
 * thread's kbox stack as its sigaltstack: run kbox_rewrite_slow at the top of it, unless we
 * are on it already (or it is missing), then come back.  kbox_rw_slow_back is a single
 * instruction that leaves the kbox stack (signals-x86_64.c completes it for a signal that
 * arrives just before it). */
	.globl kbox_rw_slow, kbox_rw_slow_back, kbox_rw_slow_back_end
	.type kbox_rw_slow, @function
kbox_rw_slow:
	sub $40, %rsp                   /* stack_t at 0(%rsp), 16-byte aligned */
	mov %rdi, %r8
	mov %rsi, %r9
	xor %edi, %edi
	mov %rsp, %rsi
	mov $__NR_sigaltstack, %eax
	syscall
	test %rax, %rax
	jnz 1f
	testl $3, 8(%rsp)               /* ss_flags: SS_ONSTACK | SS_DISABLE */
	jnz 1f
	mov (%rsp), %rax                /* ss_sp + ss_size: the top */
	add 16(%rsp), %rax
	and $-16, %rax
	mov %rsp, %rcx
	mov %rax, %rsp
	push %rcx
	push %rcx                       /* the trampoline's stack pointer, alignment kept */
	mov %r8, %rdi
	mov %r9, %rsi
	call kbox_rewrite_slow
kbox_rw_slow_back:
	mov (%rsp), %rsp                /* 48 8b 24 24 */
kbox_rw_slow_back_end:
	add $40, %rsp
	ret
1:	add $40, %rsp
	mov %r8, %rdi
	mov %r9, %rsi
	jmp kbox_rewrite_slow
	.size kbox_rw_slow, . - kbox_rw_slow

/* noreturn void kbox_exit_unmap(uint64_t stack, uint64_t len, int code)
 * Every signal blocked first: one delivered after the unmap would find no stack. */
	.globl kbox_exit_unmap
	.type kbox_exit_unmap, @function
kbox_exit_unmap:
	mov %rdi, %r12
	mov %rsi, %r13
	mov %edx, %r14d
	mov $__NR_rt_sigprocmask, %eax
	xor %edi, %edi                  /* SIG_BLOCK */
	lea kbox_all_signals(%rip), %rsi
	xor %edx, %edx
	mov $8, %r10d
	syscall
	mov $__NR_munmap, %eax
	mov %r12, %rdi
	mov %r13, %rsi
	syscall
	mov $__NR_exit, %eax
	mov %r14d, %edi
	syscall
	hlt
	.size kbox_exit_unmap, . - kbox_exit_unmap

/* The restorer for a program handler installed without SA_RESTORER: outside the gate, so
 * its rt_sigreturn traps and is replayed like the program's own. */
	.text
	.globl kbox_guest_restorer
	.type kbox_guest_restorer, @function
kbox_guest_restorer:
	mov $__NR_rt_sigreturn, %eax
	syscall
	hlt
	.size kbox_guest_restorer, . - kbox_guest_restorer

	.section .rodata
	.balign 8
kbox_all_signals:
	.quad -1

	.section .note.GNU-stack, "", @progbits
