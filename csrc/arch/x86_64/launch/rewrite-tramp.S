/* Template of an x86_64 rewrite trampoline (copied per site, never run in place).
 *
 * The site's relocated instruction (the >= 5-byte instruction before `syscall`, which the
 * patch replaced by `jmp rel32`) is copied in front of this.
 *
 * Passthrough path first: if the dispatcher has nothing to do for this syscall number (no
 * trace, deny, stats, ...: kbox_rw_fast), step over the red zone, push the resume address
 * and let kbox_rw_gate run the syscall.  Nothing on this path writes the flags (mov, movz,
 * bswap, lea, push, jrcxz and jmp leave them alone; rcx and r11 are free because the
 * syscall clobbers them anyway), so no pushfq/popfq: the kernel sees the guest's flags and
 * returns them in r11 and rflags exactly as for the original instruction.  The number is
 * the low 32 bits of rax, as the kernel reads it; the table has 65536 entries, indexed by
 * the low 16 bits once bswap has shown the high 16 to be zero.  An entry of 2 (close) is a
 * passthrough unless the descriptor is one of the runtime's: lea computes edi - fd without
 * touching the flags, and jrcxz tests it.
 *
 * Otherwise: step over the red zone, save flags and every register the C dispatcher may
 * clobber, call kbox_rw_slow (which moves to the thread's kbox stack and runs
 * kbox_rewrite_slow there) on a 16-byte aligned stack, restore, and jump back past
 * the syscall.  If the dispatcher wants the call to take the trap path (clone, execve, ...),
 * the registers are restored and a `syscall` here — outside the gate — raises SIGSYS.
 * Frame, low to high: rbx r11 r10 r9 r8 rdi rsi rdx rcx rax flags decision [red zone]
 * (launch/rw-frame.h: struct kbox_rw_frame starts at r11). */
#include "launch/rw-frame.h"
	.text
	.globl kbox_rw_tmpl_start, kbox_rw_tmpl_site, kbox_rw_tmpl_entry
	.globl kbox_rw_tmpl_jmp1, kbox_rw_tmpl_jmp2, kbox_rw_tmpl_end
	.globl kbox_rw_tmpl_fast, kbox_rw_tmpl_resume, kbox_rw_tmpl_gate
	.globl kbox_rw_tmpl_fd0, kbox_rw_tmpl_fd1
kbox_rw_tmpl_start:
	mov %eax, %ecx
	bswap %ecx
	movzwl %cx, %ecx                /* the number's high 16 bits (byte-swapped) */
	jrcxz 2f
	jmp 3f
2:	movzwl %ax, %ecx
kbox_rw_tmpl_fast:
	movabs $0x3333333333333333, %r11   /* 49 bb imm64: kbox_rw_fast */
	movzbl (%r11,%rcx), %ecx
	jrcxz 3f                        /* 0: the slow path */
	lea -1(%rcx), %rcx
	jrcxz 4f                        /* 1: passthrough */
kbox_rw_tmpl_fd0:                   /* 2: passthrough unless edi is one of kbox_own_fd[] */
	lea 0x7fffffff(%edi), %ecx      /* 67 8d 8f disp32: edi - own_fd[0] */
	jrcxz 3f
kbox_rw_tmpl_fd1:
	lea 0x7fffffff(%edi), %ecx      /* 67 8d 8f disp32: edi - own_fd[1] */
	jrcxz 3f
4:	lea -KBOX_RW_REDZONE(%rsp), %rsp
kbox_rw_tmpl_resume:
	movabs $0x4444444444444444, %rcx   /* 48 b9 imm64: the resume address */
	push %rcx
kbox_rw_tmpl_gate:
	movabs $0x5555555555555555, %rcx   /* 48 b9 imm64: kbox_rw_gate */
	jmp *%rcx
3:	lea -KBOX_RW_REDZONE(%rsp), %rsp            /* 48 8d 64 24 80 */
	push $0                         /* decision slot */
	pushfq
	push %rax
	push %rcx
	push %rdx
	push %rsi
	push %rdi
	push %r8
	push %r9
	push %r10
	push %r11
	push %rbx
	mov %rsp, %rbx
	and $-16, %rsp
	lea 8(%rbx), %rdi
kbox_rw_tmpl_site:
	movabs $0x1111111111111111, %rsi   /* 48 be imm64: the site */
kbox_rw_tmpl_entry:
	movabs $0x2222222222222222, %rax   /* 48 b8 imm64: kbox_rw_slow */
	call *%rax
	mov %rbx, %rsp
	pop %rbx
	pop %r11
	pop %r10
	pop %r9
	pop %r8
	pop %rdi
	pop %rsi
	pop %rdx
	pop %rcx
	pop %rax
	cmpq $0, 8(%rsp)
	jne 1f
	popfq
	lea KBOX_RWF_TAIL(%rsp), %rsp             /* decision slot + red zone */
kbox_rw_tmpl_jmp1:
	.byte 0xe9                      /* jmp rel32 -> resume */
	.long 0
1:	popfq
	lea KBOX_RWF_TAIL(%rsp), %rsp
	syscall                         /* outside the gate: the trap path serves it */
kbox_rw_tmpl_jmp2:
	.byte 0xe9                      /* jmp rel32 -> resume */
	.long 0
kbox_rw_tmpl_end:

	.section .note.GNU-stack, "", @progbits
