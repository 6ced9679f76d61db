/* Process entry of kbox-launch (no libc); see the x86_64 version. */
	.text
	.globl _start
	.type _start, %function
_start:
	mov x29, #0
	mov x30, #0
	mov x0, sp
	bl kbox_main
	brk #0

/* noreturn void kbox_enter_guest(uint64_t entry, uint64_t sp)
 * At process entry: sp -> argc, x0 = function for atexit (0: none). */
	.globl kbox_enter_guest
	.type kbox_enter_guest, %function
kbox_enter_guest:
	mov sp, x1
	mov x16, x0
	mov x0, #0
	mov x1, #0
	mov x2, #0
	mov x3, #0
	mov x4, #0
	mov x5, #0
	mov x6, #0
	mov x7, #0
	mov x8, #0
	mov x29, #0
	mov x30, #0
	br x16
