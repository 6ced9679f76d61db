/* The in-process runtime's stack switches (tiers/signals.h) and the rewrite trampolines'
 * entry.  In the gate section: their syscalls are the runtime's own. */
#include <asm/unistd.h>
#include "arch/interface.h"
#include "launch/rw-frame.h"

	.section kbox_gate, "ax", %progbits

/* void kbox_rw_a64_entry(struct kbox_rw_frame *f, uint64_t site)
 * Called by a trampoline (rewrite-tramp.S) with the program's x0..x18, x30 and nzcv saved
 * in f, on the program's stack.  Passthrough calls (kbox_trap_fast[nr]) are made right
 * here, touching only registers the frame holds; the rest go to kbox_rw_slow.  What a
 * signal sees at the svc is mapped back to the program's context by signals-aarch64.c. */
	.globl kbox_rw_a64_entry, kbox_rw_a64_svc
	.type kbox_rw_a64_entry, %function
kbox_rw_a64_entry:
	ldr x8, [x0, #KBOX_RWF_X8]
	cmp x8, #KBOX_NR_MAX
	b.hs 1f
	adrp x9, kbox_trap_fast
	add x9, x9, :lo12:kbox_trap_fast
	ldrb w9, [x9, x8]
	cbz w9, 1f                      /* 0: the slow path */
	cmp w9, #KBOX_FAST_ANY
	b.eq 2f                         /* 1: passthrough */
	ldr w11, [x0]                   /* 2: passthrough unless x0 is one of kbox_own_fd[] */
	adrp x12, kbox_own_fd
	add x12, x12, :lo12:kbox_own_fd
	ldp w13, w14, [x12]
	cmp w11, w13
	b.eq 1f
	cmp w11, w14
	b.eq 1f
2:	mov x9, x0
	mov x10, x1
	ldp x0, x1, [x9]
	ldp x2, x3, [x9, #16]
	ldp x4, x5, [x9, #32]
kbox_rw_a64_svc:
	svc #0
	str x0, [x9]
	ret
1:	b kbox_rw_slow
	.size kbox_rw_a64_entry, . - kbox_rw_a64_entry

/* void kbox_rw_slow(struct kbox_rw_frame *f, uint64_t site)
 * The kernel knows the thread's kbox stack as its sigaltstack: run kbox_rewrite_slow at the
 * top of it, unless we are on it already (or it is missing), then come back. */
	.globl kbox_rw_slow, kbox_rw_slow_back
	.type kbox_rw_slow, %function
kbox_rw_slow:
	sub sp, sp, #32                 /* stack_t at [sp] */
	mov x9, x0
	mov x10, x1
	mov x0, #0
	mov x1, sp
	mov x8, #__NR_sigaltstack
	svc #0
	cbnz x0, 1f
	ldr w11, [sp, #8]               /* ss_flags: SS_ONSTACK | SS_DISABLE */
	tst w11, #3
	b.ne 1f
	ldr x11, [sp]
	ldr x12, [sp, #16]
	add x11, x11, x12
	and x11, x11, #~15
	mov x12, sp
	mov sp, x11
	stp x12, x30, [sp, #-16]!
	mov x0, x9
	mov x1, x10
	bl kbox_rewrite_slow
kbox_rw_slow_back:
	ldp x12, x30, [sp]
	mov sp, x12
	add sp, sp, #32
	ret
1:	add sp, sp, #32
	mov x0, x9
	mov x1, x10
	b kbox_rewrite_slow
	.size kbox_rw_slow, . - kbox_rw_slow

/* noreturn void kbox_exit_unmap(uint64_t stack, uint64_t len, int code)
 * Every signal blocked first: one delivered after the unmap would find no stack. */
	.globl kbox_exit_unmap
	.type kbox_exit_unmap, %function
kbox_exit_unmap:
	mov x19, x0
	mov x20, x1
	mov x21, x2
	mov x0, #0                      /* SIG_BLOCK */
	adrp x1, kbox_all_signals
	add x1, x1, :lo12:kbox_all_signals
	mov x2, #0
	mov x3, #8
	mov x8, #__NR_rt_sigprocmask
	svc #0
	mov x0, x19
	mov x1, x20
	mov x8, #__NR_munmap
	svc #0
	mov x0, x21
	mov x8, #__NR_exit
	svc #0
	brk #0
	.size kbox_exit_unmap, . - kbox_exit_unmap

/* The restorer for a program handler installed without SA_RESTORER (glibc on aarch64 leaves
 * it to the vDSO): outside the gate, so its rt_sigreturn traps and is replayed like the
 * program's own; the same two instructions as the vDSO's, which unwinders recognise. */
	.text
	.globl kbox_guest_restorer
	.type kbox_guest_restorer, %function
kbox_guest_restorer:
	mov x8, #__NR_rt_sigreturn
	svc #0
	.size kbox_guest_restorer, . - kbox_guest_restorer

	.section .rodata
	.balign 8
kbox_all_signals:
	.quad -1
