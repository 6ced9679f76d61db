/* The aarch64 rewrite trampoline's frame, shared by rewrite-tramp.S (which builds it),
 * sigstack.S (which reads the syscall number and arguments), rewrite-aarch64.c and
 * signals-aarch64.c.  x0..x18, x30, nzcv and the decision word, placed KBOX_RWF_SP_OFFSET
 * bytes below the program's sp so that the 128 bytes below sp stay untouched (Go's clone
 * child reads m, g and fn from -8..-32(sp) after its first syscall). */
#ifndef KBOX_ARCH_A64_RW_FRAME_H
#define KBOX_ARCH_A64_RW_FRAME_H

#define KBOX_RWF_X8 64           /* x[8]: the syscall number */
#define KBOX_RWF_X30 152
#define KBOX_RWF_NZCV 160
#define KBOX_RWF_DECISION 168    /* nonzero: take the trap path */
#define KBOX_RWF_SIZE 176
#define KBOX_RWF_SP_OFFSET 304   /* program's sp - frame: the frame and 128 untouched bytes */

#ifndef __ASSEMBLER__
#include <stddef.h>
#include <stdint.h>

struct kbox_rw_frame {
    uint64_t x[19];     /* x0..x18 */
    uint64_t x30, nzcv, decision;
};
_Static_assert(offsetof(struct kbox_rw_frame, x[8]) == KBOX_RWF_X8, "x8");
_Static_assert(offsetof(struct kbox_rw_frame, x30) == KBOX_RWF_X30, "x30");
_Static_assert(offsetof(struct kbox_rw_frame, nzcv) == KBOX_RWF_NZCV, "nzcv");
_Static_assert(offsetof(struct kbox_rw_frame, decision) == KBOX_RWF_DECISION, "decision");
_Static_assert(sizeof(struct kbox_rw_frame) == KBOX_RWF_SIZE, "frame size");
_Static_assert(KBOX_RWF_SP_OFFSET == KBOX_RWF_SIZE + 128 && KBOX_RWF_SP_OFFSET % 16 == 0,
               "128 bytes below sp left alone, sp 16-byte aligned");
#endif

#endif
