/* Signals in the in-process tiers.
 *
 * The runtime shares the program's threads, so three things the kernel does for a program
 * have to be redone here, or they go wrong the moment a signal meets the runtime:
 *
 * 1. Where the runtime runs.  The SIGSYS handler (and the rewrite tier's slow path) must not
 *    run on a stack of the program's: Go's goroutine stacks are a few KiB and the guard below
 *    them is not a guard page, so a signal frame plus the dispatcher silently overwrites
 *    another goroutine.  Each thread gets a kbox stack (signals.h), which is what the kernel
 *    holds as the thread's sigaltstack; the runtime's handlers are SA_ONSTACK.
 *
 * 2. The program's own alternate stack.  Since the kernel's sigaltstack is kbox's, the
 *    program's sigaltstack() is kept per thread in the record, and every handler the program
 *    installs is registered with the kernel as kbox's wrapper (SA_ONSTACK, so it too runs on
 *    the kbox stack).  The wrapper builds the frame the kernel would have built: on the
 *    program's alternate stack when the handler has SA_ONSTACK and the program has one (and
 *    is not already on it), else below the interrupted stack pointer; uc_stack as the program
 *    set it; then it returns into the program's handler with the handler's signal mask.  The
 *    program's rt_sigreturn reaches the runtime (it is a syscall like any other), which hands
 *    the kernel kbox's stack back in place of the frame's uc_stack before replaying it.
 *
 * 3. Signals that arrive while the runtime is serving a call (the interrupted stack pointer
 *    is on the kbox stack).  Natively the program would have been inside the syscall: the
 *    handler runs when the call returns (or is interrupted), with the program's registers
 *    at the syscall instruction, and never on top of the runtime's own frames.  So the
 *    wrapper defers: it blocks the signal for the rest of the runtime's work and queues it
 *    again; the runtime returns to the program through a frame that carries the program's
 *    own mask, and the kernel delivers it right there.  If the signal interrupted the
 *    blocking syscall the runtime was making for the program, that call ends with EINTR and
 *    the program's own call is restarted or fails with EINTR, as its handler's SA_RESTART
 *    says (musl's and glibc's thread cancellation rely on exactly this: the interrupted
 *    program counter at the syscall instruction).
 */
#include "tiers/signals.h"
#include "tiers/runtime.h"
#include "tiers/launch.h"
#include "core/mem.h"
#include "lib/str.h"
#include "lib/sys.h"
#include "lib/hash.h"
#include <linux/errno.h>
#include <linux/mman.h>
#include <linux/sched.h>
#include <linux/signal.h>

#ifndef SS_AUTODISARM
#define SS_AUTODISARM (1U << 31)
#endif
#define KBOX_THREAD_MAGIC 0x6b626f7874687264ULL /* "kboxthrd" */
#define NSIG_ 64

/* The program's own handlers, for signals whose kernel disposition is kbox's wrapper.
 * A signal absent here has the kernel's disposition as its truth (SIG_DFL, SIG_IGN). */
static struct kbox_ksigaction gact[NSIG_ + 1];
static uint8_t gact_set[NSIG_ + 1];
struct kbox_ksigaction kbox_guest_sigsys;

/* Arch code (arch/<arch>/launch/signals-<arch>.c, sigstack.S). */

/* ---- per-thread records -------------------------------------------------------------- */

/* The kbox stacks that exist, by base address: kbox_thread_self() must not read a record
 * at an address derived from a stack pointer that is not on one (it may be unmapped). */
#define KSTACKS_MAX 8192
static uint64_t kstacks[KSTACKS_MAX];

static uint64_t *kstack_slot(uint64_t base, bool insert)
{
    return kbox_u64set_slot(kstacks, KSTACKS_MAX, base, insert);
}

struct kbox_thread *kbox_thread_self(void)
{
    uint64_t sp = (uint64_t)(uintptr_t)__builtin_frame_address(0);
    uint64_t base = sp & ~(uint64_t)(KBOX_KSTACK_SIZE - 1);
    if (sp < base + KBOX_KSTACK_GUARD || sp >= base + KBOX_KSTACK_SIZE - KBOX_KSTACK_RECORD ||
        !kstack_slot(base, false))
        return NULL;
    struct kbox_thread *t = (struct kbox_thread *)(uintptr_t)(base + KBOX_KSTACK_SIZE - KBOX_KSTACK_RECORD);
    return t->magic == (KBOX_THREAD_MAGIC ^ base) ? t : NULL;
}

stack_t kbox_thread_kstack(const struct kbox_thread *t)
{
    stack_t ss;
    ss.ss_sp = (void *)(uintptr_t)(t->base + KBOX_KSTACK_GUARD);
    ss.ss_flags = 0;
    ss.ss_size = KBOX_KSTACK_SIZE - KBOX_KSTACK_GUARD - KBOX_KSTACK_RECORD;
    return ss;
}

static bool on_kstack(const struct kbox_thread *t, uint64_t sp)
{
    return t && sp > t->base + KBOX_KSTACK_GUARD && sp <= t->base + KBOX_KSTACK_SIZE - KBOX_KSTACK_RECORD;
}

static const stack_t ss_disabled = { NULL, SS_DISABLE, 0 };

struct kbox_thread *kbox_thread_new(const struct kbox_thread *parent, uint64_t clone_flags)
{
    /* Twice the size, then trim to an aligned block: the record is found by masking sp. */
    long m = kbox_mmap(NULL, 2 * KBOX_KSTACK_SIZE, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (kbox_is_err(m))
        return NULL;
    uint64_t lo = (uint64_t)m, base = (lo + KBOX_KSTACK_SIZE - 1) & ~(uint64_t)(KBOX_KSTACK_SIZE - 1);
    if (base > lo)
        kbox_munmap((void *)(uintptr_t)lo, base - lo);
    if (lo + 2 * KBOX_KSTACK_SIZE > base + KBOX_KSTACK_SIZE)
        kbox_munmap((void *)(uintptr_t)(base + KBOX_KSTACK_SIZE), lo + 2 * KBOX_KSTACK_SIZE - base - KBOX_KSTACK_SIZE);
    kbox_mprotect((void *)(uintptr_t)base, KBOX_KSTACK_GUARD, PROT_NONE);
    if (!kstack_slot(base, true)) {
        kbox_munmap((void *)(uintptr_t)base, KBOX_KSTACK_SIZE);
        return NULL;
    }
    struct kbox_thread *t = (struct kbox_thread *)(uintptr_t)(base + KBOX_KSTACK_SIZE - KBOX_KSTACK_RECORD);
    memset(t, 0, sizeof(*t));
    t->magic = KBOX_THREAD_MAGIC ^ base;
    t->base = base;
    /* As the kernel's copy_process: a CLONE_VM child without CLONE_VFORK starts with no
     * alternate stack; the signal mask (our SIGSYS bit too) is inherited. */
    t->guest_ss = ss_disabled;
    if (parent) {
        if (clone_flags & CLONE_VFORK)
            t->guest_ss = parent->guest_ss;
        t->sigsys_blocked = parent->sigsys_blocked;
    }
    /* A vfork child's stack is freed by its parent once the parent resumes. */
    t->free_on_exit = !(clone_flags & CLONE_VFORK);
    return t;
}

void kbox_thread_forget(struct kbox_thread *t)
{
    uint64_t *slot = kstack_slot(t->base, false);
    if (slot)
        kbox_u64set_remove(slot);
}

void kbox_thread_free(struct kbox_thread *t)
{
    if (t) {
        kbox_thread_forget(t);
        kbox_munmap((void *)(uintptr_t)t->base, KBOX_KSTACK_SIZE);
    }
}

int kbox_signals_init(void (*sigsys_handler)(int, siginfo_t *, void *))
{
    struct kbox_thread *t = kbox_thread_new(NULL, 0);
    if (!t)
        return -ENOMEM;
    stack_t ss = kbox_thread_kstack(t);
    long r = KSYS2(__NR_sigaltstack, &ss, NULL);
    if (r < 0)
        return (int)r;
    kbox_guest_sigsys.handler = (uint64_t)(uintptr_t)SIG_DFL;
    struct kbox_ksigaction act = {
        .handler = (uint64_t)(uintptr_t)sigsys_handler,
        /* SA_NODEFER: a SIGSYS that no trap caused may arrive while serving a trap, and a
         * blocked SIGSYS from seccomp would kill the process. */
        .flags = SA_SIGINFO | SA_RESTORER | SA_NODEFER | SA_ONSTACK,
        .restorer = (uint64_t)(uintptr_t)kbox_sigreturn,
        .mask = 0,
    };
    r = kbox_rt_sigaction(SIGSYS, &act, NULL);
    if (r < 0)
        return (int)r;
    uint64_t unblock = KBOX_SIGBIT(SIGSYS);
    return (int)KSYS4(__NR_rt_sigprocmask, SIG_UNBLOCK, &unblock, NULL, 8);
}

/* ---- delivery --------------------------------------------------------------------------- */

static bool on_guest_altstack(const struct kbox_thread *t, uint64_t sp)
{
    /* The kernel's on_sig_stack() for a downward-growing stack. */
    uint64_t lo = (uint64_t)(uintptr_t)t->guest_ss.ss_sp;
    return t->guest_ss.ss_size && sp > lo && sp - lo <= t->guest_ss.ss_size;
}

/* Runs the program's handler `act` for `sig`: builds the frame the kernel would have built
 * for the interrupted program context `uc` (the frame the kernel built for us), and turns
 * `uc` into the handler's entry, so that returning from the current handler enters it. */
static void deliver(struct kbox_thread *t, int sig, const siginfo_t *si, kbox_ucontext_t *uc,
                    const struct kbox_ksigaction *act)
{
    uint64_t sp = kbox_uc_sp(uc);
    stack_t saved = t ? t->guest_ss : ss_disabled;
    uint64_t top = sp - KBOX_REDZONE;
    if ((act->flags & SA_ONSTACK) && t && t->guest_ss.ss_size && !on_guest_altstack(t, sp)) {
        top = (uint64_t)(uintptr_t)t->guest_ss.ss_sp + t->guest_ss.ss_size;
        if (t->guest_ss.ss_flags & SS_AUTODISARM)
            t->guest_ss = ss_disabled;
    }
    struct kbox_frame_out fr;
    kbox_arch_push_frame(si, uc, top, &fr);
    fr.uc->uc_stack = saved;
    uint64_t *gmask = kbox_uc_sigmask(fr.uc);
    if (t && t->sigsys_blocked)
        *gmask |= KBOX_SIGBIT(SIGSYS);

    /* The mask the handler runs with: the interrupted one, its sa_mask, the signal itself
     * unless SA_NODEFER.  SIGSYS stays out of the kernel's mask (a blocked trap kills). */
    uint64_t hmask = *gmask | act->mask;
    if (!(act->flags & SA_NODEFER))
        hmask |= KBOX_SIGBIT(sig);
    if (t)
        t->sigsys_blocked = (hmask & KBOX_SIGBIT(SIGSYS)) != 0;
    *kbox_uc_sigmask(uc) = hmask & ~(KBOX_SIGBIT(SIGSYS) | KBOX_SIGBIT(SIGKILL) | KBOX_SIGBIT(SIGSTOP));

    uint64_t restorer = (act->flags & SA_RESTORER) ? act->restorer : (uint64_t)(uintptr_t)kbox_guest_restorer;
    kbox_arch_enter_handler(uc, &fr, act->handler, sig, restorer);
}

/* A signal that arrived while the runtime was working on the kbox stack: hold it until
 * the runtime returns to the program (see the top of this file). */
static void defer(struct kbox_thread *t, int sig, const siginfo_t *si, kbox_ucontext_t *uc,
                  const struct kbox_ksigaction *act)
{
    uint64_t *mask = kbox_uc_sigmask(uc);
    if (!t->deferred) {
        t->saved_mask = *mask;
        t->deferred = 1;
    }
    *mask |= KBOX_SIGBIT(sig);
    KSYS4(__NR_rt_tgsigqueueinfo, kbox_getpid(), kbox_gettid(), sig, si);
    if (kbox_arch_at_restarted_syscall(uc)) {
        /* The runtime's syscall was interrupted and the kernel set it up to restart (our
         * wrapper has SA_RESTART): end it with EINTR instead, and let the program's own
         * call decide, after its handler, as the kernel would have. */
        kbox_arch_end_syscall_eintr(uc);
        t->restart = (act->flags & SA_RESTART) != 0;
    }
}

static bool is_fault(int sig, const siginfo_t *si)
{
    return si->si_code > 0 && (sig == SIGSEGV || sig == SIGBUS || sig == SIGFPE ||
                               sig == SIGILL || sig == SIGTRAP);
}

static void sig_wrapper(int sig, siginfo_t *si, void *ctx);

/* Registers the wrapper with the kernel for the program's action `a`.  It runs on the kbox
 * stack and always asks for restarts: it decides per signal whether the program's call
 * restarts (see defer and kbox_arch_sig_adjust). */
static long arm_wrapper(int sig, const struct kbox_ksigaction *a)
{
    struct kbox_ksigaction k = {
        .handler = (uint64_t)(uintptr_t)sig_wrapper,
        .flags = (a->flags & (SA_NOCLDSTOP | SA_NOCLDWAIT | SA_NODEFER | SA_RESETHAND)) |
                 SA_SIGINFO | SA_ONSTACK | SA_RESTART | SA_RESTORER,
        .restorer = (uint64_t)(uintptr_t)kbox_sigreturn,
        .mask = a->mask & ~KBOX_SIGBIT(SIGSYS),
    };
    return kbox_rt_sigaction(sig, &k, NULL);
}

/* The kernel's disposition for every signal the program handles. */
static void sig_wrapper(int sig, siginfo_t *si, void *ctx)
{
    kbox_ucontext_t *uc = ctx;
    struct kbox_thread *t = kbox_thread_self();
    if (!t) {
        static int told;
        if (!told++)
            kbox_err("internal error: a signal reached kbox's wrapper off its stack", NULL, NULL);
    }
    if (sig < 1 || sig > NSIG_ || !gact_set[sig])
        return; /* the program reset it meanwhile (SIG_DFL/SIG_IGN are the kernel's again) */
    struct kbox_ksigaction act = gact[sig];
    kbox_arch_sig_adjust(uc, (act.flags & SA_RESTART) != 0);
    if (on_kstack(t, kbox_uc_sp(uc)) && !is_fault(sig, si)) {
        /* With SA_RESETHAND the kernel reset its side on this delivery: the held signal
         * must still reach the program's handler, once. */
        if (act.flags & SA_RESETHAND)
            arm_wrapper(sig, &act);
        defer(t, sig, si, uc, &act);
        return;
    }
    if (act.flags & SA_RESETHAND)
        gact_set[sig] = 0; /* the kernel's side is SIG_DFL again */
    deliver(t, sig, si, uc, &act);
}

void kbox_sig_guest_sigsys(siginfo_t *si, kbox_ucontext_t *uc)
{
    struct kbox_thread *t = kbox_thread_self();
    struct kbox_ksigaction g = kbox_guest_sigsys;
    if (g.handler == (uint64_t)(uintptr_t)SIG_IGN)
        return;
    if (t && (t->sigsys_blocked || on_kstack(t, kbox_uc_sp(uc)))) {
        /* Blocked by the program, or arrived inside the runtime: delivered when the
         * program unblocks it, or when the runtime returns to the program. */
        t->sigsys_info = *si;
        t->sigsys_pending = 1;
        return;
    }
    if (g.handler == (uint64_t)(uintptr_t)SIG_DFL) {
        /* Default action: die of SIGSYS, as the program would have. */
        struct kbox_ksigaction dfl = { (uint64_t)(uintptr_t)SIG_DFL, 0, 0, 0 };
        kbox_rt_sigaction(SIGSYS, &dfl, NULL);
        KSYS3(__NR_tgkill, kbox_getpid(), kbox_gettid(), SIGSYS);
        return;
    }
    if (g.flags & SA_RESETHAND)
        kbox_guest_sigsys.handler = (uint64_t)(uintptr_t)SIG_DFL;
    deliver(t, SIGSYS, si, uc, &g);
}

void kbox_sig_leave_runtime(kbox_ucontext_t *uc, int nr, uint64_t arg0, uint64_t site)
{
    struct kbox_thread *t = kbox_thread_self();
    if (!t)
        return;
    if (t->restart) {
        t->restart = 0;
        if ((int64_t)kbox_uc_ret(uc) == -EINTR)
            kbox_arch_restart_at(uc, site, (uint64_t)nr, arg0);
    }
    t->deferred = 0; /* this frame carries the program's mask: the kernel releases them */
    if (t->sigsys_pending && !t->sigsys_blocked) {
        t->sigsys_pending = 0;
        siginfo_t si = t->sigsys_info;
        kbox_sig_guest_sigsys(&si, uc);
    }
}

/* ---- the program's calls ----------------------------------------------------------------- */

static const struct kbox_mem *mem(void) { return &kbox_rt.self_mem; }

int64_t kbox_sig_action(int sig, uint64_t act_addr, uint64_t oact_addr, uint64_t size)
{
    const struct kbox_mem *m = mem();
    if (size != 8 || sig < 1 || sig > NSIG_ || sig == SIGKILL || sig == SIGSTOP)
        return KSYS4(__NR_rt_sigaction, sig, act_addr, oact_addr, size); /* the kernel's errors */
    struct kbox_ksigaction nw, old;
    if (act_addr && m->read(m, act_addr, &nw, sizeof(nw)) != sizeof(nw))
        return -EFAULT;
    if (sig == SIGSYS) {
        old = kbox_guest_sigsys;
    } else {
        long r = kbox_rt_sigaction(sig, NULL, &old);
        if (r < 0)
            return r;
        if (gact_set[sig] && old.handler == (uint64_t)(uintptr_t)sig_wrapper)
            old = gact[sig];
    }
    if (oact_addr && m->write(m, oact_addr, &old, sizeof(old)) != sizeof(old))
        return -EFAULT;
    if (!act_addr)
        return 0;
    nw.mask &= ~(KBOX_SIGBIT(SIGKILL) | KBOX_SIGBIT(SIGSTOP));
    if (sig == SIGSYS) {
        kbox_guest_sigsys = nw;
        return 0;
    }
    if (nw.handler == (uint64_t)(uintptr_t)SIG_DFL || nw.handler == (uint64_t)(uintptr_t)SIG_IGN) {
        struct kbox_ksigaction k = nw;
        k.mask &= ~KBOX_SIGBIT(SIGSYS);
        gact_set[sig] = 0;
        return kbox_rt_sigaction(sig, &k, NULL);
    }
    gact[sig] = nw;
    gact_set[sig] = 1;
    return arm_wrapper(sig, &nw);
}

int64_t kbox_sig_altstack(uint64_t ss_addr, uint64_t old_addr, uint64_t guest_sp)
{
    const struct kbox_mem *m = mem();
    struct kbox_thread *t = kbox_thread_self();
    if (!t)
        return -EINVAL; /* not reached: the runtime always serves from a kbox stack */
    bool on = on_guest_altstack(t, guest_sp);
    stack_t old = t->guest_ss, nw;
    /* The kernel's do_sigaltstack() report: SS_ONSTACK while on it, else the flags set. */
    old.ss_flags = on ? SS_ONSTACK : t->guest_ss.ss_flags;
    if (ss_addr && m->read(m, ss_addr, &nw, sizeof(nw)) != sizeof(nw))
        return -EFAULT;
    if (old_addr && m->write(m, old_addr, &old, sizeof(old)) != sizeof(old))
        return -EFAULT;
    if (!ss_addr)
        return 0;
    if (on)
        return -EPERM;
    int mode = nw.ss_flags & ~(int)SS_AUTODISARM;
    if (mode != 0 && mode != SS_DISABLE && mode != SS_ONSTACK)
        return -EINVAL;
    if (mode == SS_DISABLE) {
        nw.ss_sp = NULL;
        nw.ss_size = 0;
    } else if (nw.ss_size < KBOX_MINSIGSTKSZ) {
        return -ENOMEM;
    }
    t->guest_ss = nw;
    return 0;
}

void kbox_sig_before_sigreturn(uint64_t sp)
{
    const struct kbox_mem *m = mem();
    struct kbox_thread *t = kbox_thread_self();
    uint64_t ucaddr = (uint64_t)(uintptr_t)kbox_arch_sigreturn_uc(sp);
    kbox_ucontext_t g;
    if (!t || m->read(m, ucaddr, &g, sizeof(g)) != sizeof(g))
        return; /* the kernel will refuse the frame itself (SIGSEGV), as natively */
    /* restore_altstack(): ignored while on the alternate stack, and invalid values are
     * dropped, as the kernel does (it squashes all but EFAULT). */
    if (!on_guest_altstack(t, sp)) {
        int mode = g.uc_stack.ss_flags & ~(int)SS_AUTODISARM;
        if (mode == SS_DISABLE)
            t->guest_ss = ss_disabled;
        else if ((mode == 0 || mode == SS_ONSTACK) && g.uc_stack.ss_size >= KBOX_MINSIGSTKSZ)
            t->guest_ss = g.uc_stack;
    }
    g.uc_stack = kbox_thread_kstack(t);
    uint64_t *gm = kbox_uc_sigmask(&g);
    t->sigsys_blocked = (*gm & KBOX_SIGBIT(SIGSYS)) != 0;
    *gm &= ~KBOX_SIGBIT(SIGSYS);
    m->write(m, ucaddr + offsetof(kbox_ucontext_t, uc_stack), &g.uc_stack, sizeof(g.uc_stack));
    m->write(m, ucaddr + offsetof(kbox_ucontext_t, uc_sigmask), gm, sizeof(*gm));
    /* A SIGSYS this unblocks is delivered by kbox_sig_leave_runtime. */
}
