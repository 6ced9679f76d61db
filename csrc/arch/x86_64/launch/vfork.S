/* vfork without a handler frame in the way (see tiers/clone.c, "vfork").
 *
 * The SIGSYS handler returns to kbox_vfork_stub with the guest's registers and rax = the
 * vfork/clone number.  The stub lies in the gate, so the syscall is allowed.  Child and
 * parent (the parent only once the child has exec'd or exited) store the result where the
 * runtime can find it and raise a marker syscall from outside the gate; its SIGSYS handler
 * restores the guest's resume address.  No stack memory below the guest's sp is used, so
 * the vfork child may use that stack as freely as it does natively. */
#include "arch/interface.h"

	.section kbox_gate, "ax", @progbits
	.globl kbox_vfork_stub
	.type kbox_vfork_stub, @function
kbox_vfork_stub:
	syscall
	mov %rax, kbox_vfork_result(%rip)
	mov $KBOX_NR_VFORK_DONE, %eax
	jmp kbox_vfork_marker
	.size kbox_vfork_stub, . - kbox_vfork_stub

	.text
	.globl kbox_vfork_marker
	.type kbox_vfork_marker, @function
kbox_vfork_marker:
	syscall                 /* outside the gate: traps */
	.globl kbox_vfork_marker_end
kbox_vfork_marker_end:
	hlt
	.size kbox_vfork_marker, . - kbox_vfork_marker

	/* Where the stub leaves the call's result (x86_64: rax is the marker's number). */
	.bss
	.balign 8
	.globl kbox_vfork_result
kbox_vfork_result:
	.quad 0

	.section .note.GNU-stack, "", @progbits
