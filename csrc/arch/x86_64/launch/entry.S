/* Process entry of kbox-launch (no libc): hand the kernel's initial stack pointer
 * (argc, argv[], envp[], auxv[]) to kbox_main, and jump into a loaded guest. */
	.text
	.globl _start
	.type _start, @function
_start:
	xor %ebp, %ebp
	mov %rsp, %rdi
	and $-16, %rsp
	call kbox_main
	hlt

/* noreturn void kbox_enter_guest(uint64_t entry, uint64_t sp)
 * The ELF ABI at process entry: rsp -> argc, rdx = function for atexit (0: none), the other
 * registers unspecified; clear them so nothing of the launcher leaks into the guest. */
	.globl kbox_enter_guest
	.type kbox_enter_guest, @function
kbox_enter_guest:
	mov %rsi, %rsp
	mov %rdi, %r11
	xor %eax, %eax
	xor %ebx, %ebx
	xor %ecx, %ecx
	xor %edx, %edx
	xor %esi, %esi
	xor %edi, %edi
	xor %ebp, %ebp
	xor %r8d, %r8d
	xor %r9d, %r9d
	xor %r10d, %r10d
	xor %r12d, %r12d
	xor %r13d, %r13d
	xor %r14d, %r14d
	xor %r15d, %r15d
	jmp *%r11

	.section .note.GNU-stack, "", @progbits
