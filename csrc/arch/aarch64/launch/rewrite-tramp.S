/* Template of an aarch64 rewrite trampoline (copied per site, never run in place).
 *
 * The site's `svc #0` became `b <trampoline>`.  The AAPCS has no red zone, but code that runs
 * with signals blocked may keep data below its stack pointer across a syscall, which the
 * kernel never touches: Go's clone stores m, g and fn at -8..-32(sp) of the new stack and
 * the child reads them back after its first syscall (gettid); Go's functions keep their
 * caller's frame pointer at -8(sp).  So the frame goes 128 bytes below sp, as below x86_64's
 * red zone, leaving [sp-128, sp) alone (sp stays 16-byte aligned).  x8 (the syscall number)
 * is read at run time, so sites with a computed number are served too.
 * Frame: launch/rw-frame.h (x0..x18 at 8*i, x30, nzcv, decision); the program's sp is the
 * frame + KBOX_RWF_SP_OFFSET. */
#include "launch/rw-frame.h"
	.text
	.globl kbox_rw_tmpl_start, kbox_rw_tmpl_site, kbox_rw_tmpl_entry
	.globl kbox_rw_tmpl_jmp1, kbox_rw_tmpl_jmp2, kbox_rw_tmpl_end
kbox_rw_tmpl_start:
	sub sp, sp, #KBOX_RWF_SP_OFFSET
	stp x0, x1, [sp, #0]
	stp x2, x3, [sp, #16]
	stp x4, x5, [sp, #32]
	stp x6, x7, [sp, #48]
	stp x8, x9, [sp, #64]
	stp x10, x11, [sp, #80]
	stp x12, x13, [sp, #96]
	stp x14, x15, [sp, #112]
	stp x16, x17, [sp, #128]
	stp x18, x30, [sp, #KBOX_RWF_X30 - 8]
	mrs x9, nzcv
	stp x9, xzr, [sp, #KBOX_RWF_NZCV]
	mov x0, sp
	ldr x1, kbox_rw_tmpl_site
	ldr x16, kbox_rw_tmpl_entry
	blr x16
	ldr x9, [sp, #KBOX_RWF_NZCV]
	msr nzcv, x9
	ldr x9, [sp, #KBOX_RWF_DECISION]
	cbnz x9, 1f
	ldp x0, x1, [sp, #0]
	ldp x2, x3, [sp, #16]
	ldp x4, x5, [sp, #32]
	ldp x6, x7, [sp, #48]
	ldp x8, x9, [sp, #64]
	ldp x10, x11, [sp, #80]
	ldp x12, x13, [sp, #96]
	ldp x14, x15, [sp, #112]
	ldp x16, x17, [sp, #128]
	ldp x18, x30, [sp, #KBOX_RWF_X30 - 8]
	add sp, sp, #KBOX_RWF_SP_OFFSET
kbox_rw_tmpl_jmp1:
	b .                             /* -> site + 4 */
1:	ldp x0, x1, [sp, #0]
	ldp x2, x3, [sp, #16]
	ldp x4, x5, [sp, #32]
	ldp x6, x7, [sp, #48]
	ldp x8, x9, [sp, #64]
	ldp x10, x11, [sp, #80]
	ldp x12, x13, [sp, #96]
	ldp x14, x15, [sp, #112]
	ldp x16, x17, [sp, #128]
	ldp x18, x30, [sp, #KBOX_RWF_X30 - 8]
	add sp, sp, #KBOX_RWF_SP_OFFSET
	svc #0                          /* outside the gate: the trap path serves it */
kbox_rw_tmpl_jmp2:
	b .                             /* -> site + 4 */
	.balign 8
kbox_rw_tmpl_site:
	.quad 0
kbox_rw_tmpl_entry:
	.quad 0
kbox_rw_tmpl_end:
