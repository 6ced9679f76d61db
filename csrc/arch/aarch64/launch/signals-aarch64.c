/* aarch64 signal frames, as the kernel builds and reads them (arch/arm64/kernel/signal.c):
 *   rt_sigframe = { siginfo; struct ucontext } at sp (16-byte aligned); the FP/SIMD (and
 *   SVE/SME) state is in records inside uc_mcontext.__reserved, a large state continuing
 *   in an extra_context block whose absolute address (datap) the kernel checks; above the
 *   frame, a frame record { x29, x30 } of the interrupted code, which x29 points at;
 *   the handler gets x0/x1/x2 = signal, &info, &uc and x30 = the restorer;
 *   rt_sigreturn reads the frame at sp.
 * And the rewrite tier's assembly paths on the program's stack (kbox_rw_a64_entry's svc, the
 * end of kbox_rw_slow), whose interrupted contexts are mapped back to the program's. */
#include "arch.h"
#include "lib/str.h"
#include "arch/interface.h"
#include "launch/rw-frame.h"
#include <stdbool.h>
#include <asm/sigcontext.h>
#include <linux/errno.h>
#include <linux/signal.h>

#define PSR_BTYPE_MASK 0x00000c00ULL
#define PSR_NZCV_MASK 0xf0000000ULL


extern const uint8_t kbox_rw_a64_svc[], kbox_rw_slow_back[];

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

void kbox_arch_push_frame(const siginfo_t *si, const kbox_ucontext_t *uc, uint64_t top,
                          struct kbox_frame_out *out)
{
    /* The ucontext and what follows it (an extra_context's data) are copied as one block;
     * the siginfo apart from it (the caller's may be a copy of its own). */
    const uint8_t *ucb = (const uint8_t *)uc;
    size_t ucsize = sizeof(*uc);
    const struct extra_context *extra = find_extra(uc);
    if (extra)
        ucsize = (size_t)(extra->datap + extra->size - (uint64_t)(uintptr_t)ucb);
    uint64_t rec = (top - 16) & ~(uint64_t)15;
    uint64_t dst = (rec - sizeof(siginfo_t) - ucsize) & ~(uint64_t)15;
    kbox_ucontext_t *c = (kbox_ucontext_t *)(uintptr_t)(dst + sizeof(siginfo_t));
    memcpy((void *)(uintptr_t)dst, si, sizeof(siginfo_t));
    memcpy(c, ucb, ucsize);
    if (extra) {
        struct extra_context *ne = find_extra(c);
        ne->datap = (uint64_t)(uintptr_t)c + (extra->datap - (uint64_t)(uintptr_t)ucb);
    }
    uint64_t *r = (uint64_t *)(uintptr_t)rec;
    r[0] = uc->uc_mcontext.regs[29];
    r[1] = uc->uc_mcontext.regs[30];
    out->sp = dst;
    out->uc = c;
    out->si = (siginfo_t *)(uintptr_t)dst;
    out->fp = rec;
}

void kbox_arch_enter_handler(kbox_ucontext_t *uc, const struct kbox_frame_out *fr, uint64_t handler,
                             int sig, uint64_t restorer)
{
    struct sigcontext *m = &uc->uc_mcontext;
    m->regs[0] = (uint64_t)sig;
    m->regs[1] = (uint64_t)(uintptr_t)fr->si;
    m->regs[2] = (uint64_t)(uintptr_t)fr->uc;
    m->regs[29] = fr->fp;
    m->regs[30] = restorer;
    m->sp = fr->sp;
    m->pc = handler;
    m->pstate &= ~PSR_BTYPE_MASK;
}

kbox_ucontext_t *kbox_arch_sigreturn_uc(uint64_t sp)
{
    return (kbox_ucontext_t *)(uintptr_t)(sp + sizeof(siginfo_t));
}

uint64_t kbox_arch_child_frame(const siginfo_t *si, const kbox_ucontext_t *uc, uint64_t newsp,
                               stack_t ks)
{
    struct kbox_frame_out fr;
    kbox_arch_push_frame(si, uc, (uint64_t)(uintptr_t)ks.ss_sp + ks.ss_size, &fr);
    fr.uc->uc_mcontext.regs[0] = 0;
    fr.uc->uc_mcontext.sp = newsp;
    fr.uc->uc_stack = ks;
    return fr.sp;
}

/* kbox_rw_a64_entry's passthrough path runs with x9 = the trampoline frame (the program's
 * x0..x18, x30, nzcv), x10 = the site, sp = the frame (the program's sp - KBOX_RWF_SP_OFFSET):
 *   svc+0  svc #0          not run yet, or set up to restart (the two look alike here)
 *   svc+4  str x0, [x9]    done: x0 = result
 *   svc+8  ret             the frame holds the result
 * kbox_rw_slow's way back: back+0 `ldp x12, x30, [sp]`, back+4 `mov sp, x12`, back+8. */
void kbox_arch_sig_adjust(kbox_ucontext_t *uc, bool sa_restart)
{
    struct sigcontext *m = &uc->uc_mcontext;
    uint64_t back = (uint64_t)(uintptr_t)kbox_rw_slow_back;
    if (m->pc == back) {
        const uint64_t *s = (const uint64_t *)(uintptr_t)m->sp;
        m->regs[12] = s[0];
        m->regs[30] = s[1];
        m->sp = s[0];
        m->pc = back + 8;
        return;
    }
    if (m->pc == back + 4) {
        m->sp = m->regs[12];
        m->pc = back + 8;
        return;
    }
    uint64_t svc = (uint64_t)(uintptr_t)kbox_rw_a64_svc;
    if (m->pc < svc || m->pc > svc + 8)
        return;
    const struct kbox_rw_frame *f = (const struct kbox_rw_frame *)(uintptr_t)m->regs[9];
    uint64_t site = m->regs[10], x0 = m->pc == svc + 4 ? m->regs[0] : f->x[0];
    for (int i = 0; i < 19; i++)
        m->regs[i] = f->x[i];
    m->regs[30] = f->x30;
    m->sp = (uint64_t)(uintptr_t)f + KBOX_RWF_SP_OFFSET;
    m->pstate = (m->pstate & ~PSR_NZCV_MASK) | (f->nzcv & PSR_NZCV_MASK);
    if (m->pc != svc) {
        m->regs[0] = x0;
        m->pc = site + KBOX_SYSCALL_INSN_LEN;
    } else if (!sa_restart) {
        /* Taken as interrupted (a restart): without SA_RESTART the call fails. */
        m->regs[0] = (uint64_t)-EINTR;
        m->pc = site + KBOX_SYSCALL_INSN_LEN;
    } else {
        m->pc = site; /* the site's branch into the trampoline runs the call again */
    }
}

bool kbox_arch_at_restarted_syscall(const kbox_ucontext_t *uc)
{
    /* A restart moves pc back onto the svc and puts the first argument back in x0; a
     * signal taken just before an svc looks the same, and is treated alike. */
    return *(const uint32_t *)(uintptr_t)uc->uc_mcontext.pc == 0xd4000001u;
}

void kbox_arch_end_syscall_eintr(kbox_ucontext_t *uc)
{
    uc->uc_mcontext.pc += KBOX_SYSCALL_INSN_LEN;
    uc->uc_mcontext.regs[0] = (uint64_t)-EINTR;
}

void kbox_arch_restart_at(kbox_ucontext_t *uc, uint64_t site, uint64_t nr, uint64_t arg0)
{
    uc->uc_mcontext.pc = site;
    uc->uc_mcontext.regs[0] = arg0;
    uc->uc_mcontext.regs[8] = nr;
}

void kbox_arch_syscall_return(kbox_ucontext_t *uc, uint64_t pc, uint64_t ret)
{
    uc->uc_mcontext.pc = pc;
    uc->uc_mcontext.regs[0] = ret;
}
