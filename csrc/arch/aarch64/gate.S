/* The syscall gate: every svc the runtime executes is in this section, and the trap tier's
 * filter allows exactly this section (see lib/sys.h). */
#include <asm/unistd.h>

	.section kbox_gate, "ax", %progbits

/* long kbox_syscall6(long nr, long a1, long a2, long a3, long a4, long a5, long a6) */
	.globl kbox_syscall6
	.type kbox_syscall6, %function
kbox_syscall6:
	mov x8, x0
	mov x0, x1
	mov x1, x2
	mov x2, x3
	mov x3, x4
	mov x4, x5
	mov x5, x6
	svc #0
	ret
	.size kbox_syscall6, . - kbox_syscall6

/* SA_RESTORER, and where a guest's own rt_sigreturn is replayed: sp at the rt_sigframe. */
	.globl kbox_sigreturn
	.type kbox_sigreturn, %function
kbox_sigreturn:
	mov x8, #__NR_rt_sigreturn
	svc #0
	brk #0
	.size kbox_sigreturn, . - kbox_sigreturn

/* long kbox_clone_gate(long nr, long a1, long a2, long a3, long a4, long a5, void *child_frame)
 * See the x86_64 version.  x9 survives svc in both parent and child. */
	.globl kbox_clone_gate
	.type kbox_clone_gate, %function
kbox_clone_gate:
	mov x9, x6
	mov x8, x0
	mov x0, x1
	mov x1, x2
	mov x2, x3
	mov x3, x4
	mov x4, x5
	mov x5, xzr
	svc #0
	cbnz x0, 1f
	cbz x9, 1f
	mov sp, x9
	mov x8, #__NR_rt_sigreturn
	svc #0
	brk #0
1:	ret
	.size kbox_clone_gate, . - kbox_clone_gate
