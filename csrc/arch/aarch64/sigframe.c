/* Building a signal frame for a new CLONE_VM child (thread or posix_spawn child).
 *
 * aarch64 rt_sigreturn: sp (16-byte aligned) points at struct rt_sigframe { siginfo_t;
 * struct ucontext; }; the FP/SIMD (and SVE/SME) state is in records inside
 * uc_mcontext.__reserved, and a large state continues in an extra_context block whose
 * absolute address (datap) the kernel checks.  The SIGSYS frame is copied whole and
 * datap relocated. */
#include "arch.h"
#include "lib/str.h"
#include <stdbool.h>
#include <asm/sigcontext.h>
#include <linux/signal.h>

uint64_t kbox_arch_child_frame(const void *si, const kbox_ucontext_t *uc, uint64_t newsp,
                               bool keep_altstack);

static struct extra_context *find_extra(const kbox_ucontext_t *uc)
{
    const uint8_t *p = (const uint8_t *)uc->uc_mcontext.__reserved;
    const uint8_t *end = p + sizeof(uc->uc_mcontext.__reserved);
    while (p + sizeof(struct _aarch64_ctx) <= end) {
        const struct _aarch64_ctx *h = (const struct _aarch64_ctx *)p;
        if (h->magic == 0 || h->size == 0)
            return NULL;
        if (h->magic == EXTRA_MAGIC)
            return (struct extra_context *)p;
        p += h->size;
    }
    return NULL;
}

uint64_t kbox_arch_child_frame(const void *si, const kbox_ucontext_t *uc, uint64_t newsp,
                               bool keep_altstack)
{
    const uint8_t *frame = si; /* rt_sigframe begins with the siginfo */
    size_t total = (size_t)((const uint8_t *)uc - frame) + sizeof(*uc);
    const struct extra_context *extra = find_extra(uc);
    if (extra)
        total = (size_t)(extra->datap + extra->size - (uint64_t)frame);
    uint64_t dst = (newsp - total) & ~(uint64_t)15;
    memcpy((void *)dst, frame, total);
    kbox_ucontext_t *c = (kbox_ucontext_t *)(dst + ((const uint8_t *)uc - frame));
    if (extra) {
        struct extra_context *ne = find_extra(c);
        ne->datap = dst + (extra->datap - (uint64_t)frame);
    }
    c->uc_mcontext.regs[0] = 0;
    c->uc_mcontext.sp = newsp;
    if (!keep_altstack) {
        c->uc_stack.ss_sp = NULL;
        c->uc_stack.ss_flags = SS_DISABLE;
        c->uc_stack.ss_size = 0;
    }
    return dst;
}
