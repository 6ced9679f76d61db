/* The syscall gate: every syscall instruction the runtime executes is in this section, and
 * the trap tier's filter allows exactly this section (see lib/sys.h). */
#include <asm/unistd.h>

	.section kbox_gate, "ax", @progbits

/* long kbox_syscall6(long nr, long a1, long a2, long a3, long a4, long a5, long a6) */
	.globl kbox_syscall6
	.type kbox_syscall6, @function
kbox_syscall6:
	mov %rdi, %rax
	mov %rsi, %rdi
	mov %rdx, %rsi
	mov %rcx, %rdx
	mov %r8, %r10
	mov %r9, %r8
	mov 8(%rsp), %r9
	syscall
	ret
	.size kbox_syscall6, . - kbox_syscall6

/* The rewrite tier's passthrough path (see launch/rewrite-tramp.S): a trampoline jumps here
 * with the guest's registers as they were at its syscall site, the red zone stepped over and
 * the site's resume address pushed.  The syscall runs with the guest's flags untouched, so
 * r11 and the flags come back exactly as for the original instruction; rcx is set to the
 * resume address, as the kernel would have left it. */
	.globl kbox_rw_gate
	.type kbox_rw_gate, @function
kbox_rw_gate:
	syscall
	pop %rcx
	lea 128(%rsp), %rsp
	jmp *%rcx
	.size kbox_rw_gate, . - kbox_rw_gate

/* The runtime's SA_RESTORER, and the place a guest's own rt_sigreturn is replayed from:
 * entered with rsp pointing at the ucontext of a signal frame. */
	.globl kbox_sigreturn
	.type kbox_sigreturn, @function
kbox_sigreturn:
	mov $__NR_rt_sigreturn, %eax
	syscall
	hlt
	.size kbox_sigreturn, . - kbox_sigreturn

/* long kbox_clone_gate(long nr, long a1, long a2, long a3, long a4, long a5, void *child_uc)
 * Runs clone/clone3/fork.  A child that shares the parent's memory (threads, posix_spawn)
 * must not return into the handler whose stack frame belongs to the parent: if child_uc is
 * non-NULL, the child switches to that prepared signal frame (built on its own new stack)
 * and rt_sigreturns straight into the guest.  A child with its own copy of memory (fork)
 * passes child_uc = NULL and returns normally through its copy of the handler. */
	.globl kbox_clone_gate
	.type kbox_clone_gate, @function
kbox_clone_gate:
	push %r12
	mov 16(%rsp), %r12      /* child_uc: r12 survives the syscall in both processes */
	mov %rdi, %rax
	mov %rsi, %rdi
	mov %rdx, %rsi
	mov %rcx, %rdx
	mov %r8, %r10
	mov %r9, %r8
	xor %r9d, %r9d
	syscall
	test %rax, %rax
	jnz 1f
	test %r12, %r12
	jz 1f
	mov %r12, %rsp          /* child of a CLONE_VM clone: enter the guest via its frame */
	mov $__NR_rt_sigreturn, %eax
	syscall
	hlt
1:	pop %r12
	ret
	.size kbox_clone_gate, . - kbox_clone_gate

	.section .note.GNU-stack, "", @progbits
