/* x86-64 instruction-length decoder (64-bit mode only).
 *
 * It runs inside guest processes (the rewrite tier scans code there), so it is freestanding:
 * no libc, no allocation, no vector registers, no global state; every function is pure and
 * reentrant (safe in a signal handler and from several threads at once).
 *
 * Semantics follow the Intel SDM (Vol. 2, chapter 2 and appendix A); where AMD and Intel
 * CPUs differ, or capstone differs from the SDM, docs/x86-decoder.md says which way we go.
 */
#ifndef KBOX_ARCH_X86_64_DECODE_H
#define KBOX_ARCH_X86_64_DECODE_H

#include <stddef.h>
#include <stdint.h>

/* Longest legal instruction; the CPU raises #GP beyond it. */
#define KBOX_X86_MAX_INSN 15

/* Length (1..15) of the instruction at code[0], or -1 when it is invalid in 64-bit mode,
 * undecodable by us (see docs/x86-decoder.md) or would need more than `avail` bytes. */
int kbox_x86_insn_len(const uint8_t *code, size_t avail);

/* Walks instruction boundaries from code[0] (which must be a true instruction start, e.g. a
 * function's symbol address) and stores the address (base + offset) of every `syscall`
 * instruction -- exactly the two bytes 0f 05, no prefix -- into out[0..max).  Bytes 0f 05
 * inside an immediate or displacement are never reported.  An undecodable byte is skipped
 * (the walk resumes at the next byte).  Returns the total number found, which may exceed
 * max (only the first max are stored), or -EINVAL for bad arguments. */
int kbox_x86_find_syscalls(const uint8_t *code, size_t len, uint64_t base, uint64_t *out,
                           int max);

/* 1 if the walk from code[0] (same rules as kbox_x86_find_syscalls) reaches `offset` as an
 * instruction start and that instruction is `syscall` (0f 05); 0 if not; -EINVAL when
 * offset is outside [0, len). */
int kbox_x86_is_syscall_at(const uint8_t *code, size_t len, size_t offset);

#endif
