/* vfork without a handler frame in the way; see the x86_64 version.  The result stays in
 * x0 (the marker call's first argument); x8 is restored by the handler. */
#include "arch/interface.h"

	.section kbox_gate, "ax", %progbits
	.globl kbox_vfork_stub
	.type kbox_vfork_stub, %function
kbox_vfork_stub:
	svc #0
	mov x8, #KBOX_NR_VFORK_DONE
	b kbox_vfork_marker
	.size kbox_vfork_stub, . - kbox_vfork_stub

	.text
	.globl kbox_vfork_marker
	.type kbox_vfork_marker, %function
kbox_vfork_marker:
	svc #0                  /* outside the gate: traps */
	.globl kbox_vfork_marker_end
kbox_vfork_marker_end:
	brk #0
	.size kbox_vfork_marker, . - kbox_vfork_marker
