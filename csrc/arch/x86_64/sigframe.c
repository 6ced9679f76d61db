/* Building a signal frame for a new CLONE_VM child (thread or posix_spawn child).
 *
 * x86_64 rt_sigreturn: the kernel reads `struct ucontext` at the stack pointer (its
 * rt_sigframe starts 8 bytes lower with the return address the restorer's `ret` popped),
 * and the FPU/extended state from uc_mcontext.fpstate, which must be 64-byte aligned and
 * carries its own size in the software-reserved bytes (FP_XSTATE_MAGIC1, extended_size,
 * then FP_XSTATE_MAGIC2 at the end). */
#include "arch.h"
#include "lib/str.h"
#include <stdbool.h>
#include <asm/sigcontext.h>
#include <linux/signal.h>

uint64_t kbox_arch_child_frame(const void *si, const kbox_ucontext_t *uc, uint64_t newsp,
                               bool keep_altstack);

uint64_t kbox_arch_child_frame(const void *si, const kbox_ucontext_t *uc, uint64_t newsp,
                               bool keep_altstack)
{
    (void)si;
    const struct _fpstate_64 *fp = (const struct _fpstate_64 *)uc->uc_mcontext.fpstate;
    size_t fpsize = 0;
    if (fp) {
        fpsize = 512;
        if (fp->sw_reserved.magic1 == FP_XSTATE_MAGIC1 && fp->sw_reserved.extended_size > 512 &&
            fp->sw_reserved.extended_size < 64 * 1024)
            fpsize = fp->sw_reserved.extended_size;
    }
    /* Leave the red zone of the new stack alone, as the kernel does. */
    uint64_t top = (newsp - KBOX_REDZONE) & ~(uint64_t)63;
    uint64_t fpaddr = (top - fpsize) & ~(uint64_t)63;
    uint64_t ucaddr = (fpaddr - sizeof(kbox_ucontext_t) - 64) & ~(uint64_t)15;
    if (fp)
        memcpy((void *)fpaddr, fp, fpsize);
    kbox_ucontext_t *c = (kbox_ucontext_t *)ucaddr;
    memcpy(c, uc, sizeof(*c));
    c->uc_mcontext.fpstate = fp ? (struct _fpstate_64 *)fpaddr : NULL;
    c->uc_mcontext.rsp = newsp;
    c->uc_mcontext.rax = 0;
    if (!keep_altstack) {
        /* A new thread starts without an alternate signal stack; sigreturn would otherwise
         * install the parent's, and two threads would share it. */
        c->uc_stack.ss_sp = NULL;
        c->uc_stack.ss_flags = SS_DISABLE;
        c->uc_stack.ss_size = 0;
    }
    return ucaddr;
}
