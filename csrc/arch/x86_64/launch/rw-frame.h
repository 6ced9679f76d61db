/* The x86_64 rewrite trampoline's frame, shared by rewrite-tramp.S (which builds it with
 * pushes, last pushed first here), rewrite-x86_64.c and signals-x86_64.c.  The trampoline
 * first steps over the red zone (KBOX_RW_REDZONE bytes), pushes the decision slot, the
 * flags and the registers the C code may clobber, and passes the frame's address. */
#ifndef KBOX_ARCH_X86_RW_FRAME_H
#define KBOX_ARCH_X86_RW_FRAME_H

#define KBOX_RW_REDZONE 128
#define KBOX_RWF_FLAGS 72
#define KBOX_RWF_DECISION 80     /* nonzero: take the trap path */
#define KBOX_RWF_SIZE 88
/* After popping rax: rsp points at flags; the decision slot and the red zone follow. */
#define KBOX_RWF_TAIL (KBOX_RWF_SIZE - KBOX_RWF_FLAGS - 8 + KBOX_RW_REDZONE)

#ifndef __ASSEMBLER__
#include <stddef.h>
#include <stdint.h>

struct kbox_rw_frame {
    uint64_t r11, r10, r9, r8, rdi, rsi, rdx, rcx, rax, flags, decision;
};
_Static_assert(offsetof(struct kbox_rw_frame, flags) == KBOX_RWF_FLAGS, "flags");
_Static_assert(offsetof(struct kbox_rw_frame, decision) == KBOX_RWF_DECISION, "decision");
_Static_assert(sizeof(struct kbox_rw_frame) == KBOX_RWF_SIZE, "frame size");
_Static_assert(KBOX_RWF_TAIL == 8 + KBOX_RW_REDZONE, "decision slot + red zone");
#endif

#endif
