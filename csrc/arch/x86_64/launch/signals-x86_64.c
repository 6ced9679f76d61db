/* x86_64 signal frames, as the kernel builds and reads them (arch/x86/kernel/signal_64.c):
 *   rt_sigframe = { pretcode; struct ucontext; siginfo } — the handler is entered with rsp
 *   at pretcode (the restorer its `ret` pops) and rsp+8 16-byte aligned, rdi/rsi/rdx =
 *   signal, &info, &uc, rax = 0, DF/TF/RF clear;
 *   rt_sigreturn reads the ucontext at rsp (pretcode already popped);
 *   uc_mcontext.fpstate points at the FPU/xsave state, 64-byte aligned, which carries its
 *   own size in its software-reserved bytes (FP_XSTATE_MAGIC1, extended_size), above the
 *   frame.
 * And the two places where the rewrite tier runs on the program's stack in assembly
 * (kbox_rw_gate, the end of kbox_rw_slow), whose interrupted contexts are mapped back to the
 * program's. */
#include "arch.h"
#include "lib/str.h"
#include "arch/interface.h"
#include <stdbool.h>
#include <asm/sigcontext.h>
#include <linux/errno.h>
#include <linux/signal.h>

struct rt_sigframe64 {
    uint64_t pretcode;
    struct ucontext uc;
    siginfo_t info;
};

extern const uint8_t kbox_rw_gate[], kbox_rw_slow_back[], kbox_rw_slow_back_end[];

#define EFLAGS_TF 0x100
#define EFLAGS_DF 0x400
#define EFLAGS_RF 0x10000

static size_t fpstate_size(const struct _fpstate_64 *fp)
{
    if (!fp)
        return 0;
    if (fp->sw_reserved.magic1 == FP_XSTATE_MAGIC1 && fp->sw_reserved.extended_size > 512 &&
        fp->sw_reserved.extended_size < 64 * 1024)
        return fp->sw_reserved.extended_size;
    return 512;
}

void kbox_arch_push_frame(const siginfo_t *si, const kbox_ucontext_t *uc, uint64_t top,
                          struct kbox_frame_out *out)
{
    const struct _fpstate_64 *fp = (const struct _fpstate_64 *)uc->uc_mcontext.fpstate;
    size_t fpsize = fpstate_size(fp);
    uint64_t fpaddr = (top - fpsize) & ~(uint64_t)63;
    uint64_t f = ((fpaddr - sizeof(struct rt_sigframe64)) & ~(uint64_t)15) - 8;
    struct rt_sigframe64 *fr = (struct rt_sigframe64 *)(uintptr_t)f;
    if (fp)
        memcpy((void *)(uintptr_t)fpaddr, fp, fpsize);
    memcpy(&fr->uc, uc, sizeof(fr->uc));
    memcpy(&fr->info, si, sizeof(fr->info));
    fr->uc.uc_mcontext.fpstate = fp ? (struct _fpstate_64 *)(uintptr_t)fpaddr : NULL;
    fr->pretcode = 0;
    out->sp = f;
    out->uc = &fr->uc;
    out->si = &fr->info;
    out->fp = 0;
}

void kbox_arch_enter_handler(kbox_ucontext_t *uc, const struct kbox_frame_out *fr, uint64_t handler,
                             int sig, uint64_t restorer)
{
    struct sigcontext *m = &uc->uc_mcontext;
    *(uint64_t *)(uintptr_t)fr->sp = restorer;
    m->rip = handler;
    m->rsp = fr->sp;
    m->rdi = (uint64_t)sig;
    m->rsi = (uint64_t)(uintptr_t)fr->si;
    m->rdx = (uint64_t)(uintptr_t)fr->uc;
    m->rax = 0;
    m->eflags &= ~(uint64_t)(EFLAGS_DF | EFLAGS_TF | EFLAGS_RF);
}

kbox_ucontext_t *kbox_arch_sigreturn_uc(uint64_t sp) { return (kbox_ucontext_t *)(uintptr_t)sp; }

uint64_t kbox_arch_child_frame(const siginfo_t *si, const kbox_ucontext_t *uc, uint64_t newsp,
                               stack_t ks)
{
    struct kbox_frame_out fr;
    kbox_arch_push_frame(si, uc, (uint64_t)(uintptr_t)ks.ss_sp + ks.ss_size, &fr);
    fr.uc->uc_mcontext.rsp = newsp;
    fr.uc->uc_mcontext.rax = 0;
    fr.uc->uc_stack = ks;
    return (uint64_t)(uintptr_t)fr.uc;
}

/* kbox_rw_gate (gate.S), entered from a trampoline with the resume address pushed below
 * the stepped-over red zone and rcx = kbox_rw_gate:
 *   +0  syscall              not run yet (rcx = +0), or set up to restart (rcx = +2)
 *   +2  pop %rcx             done: rax = result
 *   +3  lea 128(%rsp),%rsp
 *   +11 jmp *%rcx */
void kbox_arch_sig_adjust(kbox_ucontext_t *uc, bool sa_restart)
{
    struct sigcontext *m = &uc->uc_mcontext;
    uint64_t g = (uint64_t)(uintptr_t)kbox_rw_gate;
    if (m->rip == (uint64_t)(uintptr_t)kbox_rw_slow_back) {
        /* Back from the slow path, about to leave the kbox stack. */
        m->rsp = *(uint64_t *)(uintptr_t)m->rsp;
        m->rip = (uint64_t)(uintptr_t)kbox_rw_slow_back_end;
        return;
    }
    if (m->rip < g || m->rip > g + 11)
        return;
    if (m->rip <= g + 2) {
        uint64_t resume = *(uint64_t *)(uintptr_t)m->rsp;
        m->rsp += 8 + KBOX_REDZONE;
        if (m->rip == g + 2 || (m->rcx == g + 2 && !sa_restart)) {
            if (m->rip == g)
                m->rax = (uint64_t)-EINTR; /* no SA_RESTART: the interrupted call fails */
            m->rip = m->rcx = resume;
        } else {
            /* Not run yet, or to be restarted: the site's own syscall instruction runs
             * it again (it traps, and is served like any trapped call). */
            m->rip = resume - KBOX_SYSCALL_INSN_LEN;
        }
    } else if (m->rip == g + 3) {
        m->rsp += KBOX_REDZONE;
        m->rip = m->rcx;
    } else if (m->rip == g + 11) {
        m->rip = m->rcx;
    }
}

bool kbox_arch_at_restarted_syscall(const kbox_ucontext_t *uc)
{
    const uint8_t *pc = (const uint8_t *)(uintptr_t)uc->uc_mcontext.rip;
    /* After a syscall the kernel leaves rcx = the address after it; a restart moves rip
     * back onto the instruction (0f 05) but leaves rcx. */
    return pc[0] == 0x0f && pc[1] == 0x05 && uc->uc_mcontext.rcx == uc->uc_mcontext.rip + 2;
}

void kbox_arch_end_syscall_eintr(kbox_ucontext_t *uc)
{
    uc->uc_mcontext.rip += KBOX_SYSCALL_INSN_LEN;
    uc->uc_mcontext.rax = (uint64_t)-EINTR;
}

void kbox_arch_restart_at(kbox_ucontext_t *uc, uint64_t site, uint64_t nr, uint64_t arg0)
{
    (void)arg0; /* rdi was never overwritten */
    uc->uc_mcontext.rip = site;
    uc->uc_mcontext.rax = nr;
}

void kbox_arch_syscall_return(kbox_ucontext_t *uc, uint64_t pc, uint64_t ret)
{
    /* What `syscall` leaves: the result in rax, the return address in rcx, rflags in r11. */
    uc->uc_mcontext.rip = pc;
    uc->uc_mcontext.rcx = pc;
    uc->uc_mcontext.r11 = uc->uc_mcontext.eflags;
    uc->uc_mcontext.rax = ret;
}
