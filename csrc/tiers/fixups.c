/* The in-process runtime's own adjustments to the program's calls (KBOX_SC_RUNTIME in the
 * syscall table): what must differ from running the call as asked because kbox lives in
 * the same process.
 * - SIGSYS is kbox's: the program may neither block it nor replace its handler (a blocked
 *   SIGSYS from seccomp kills the process), so it is taken out of every mask the program
 *   installs and its blocked bit and disposition are kept virtually (signals.c).
 * - Signal masks and alternate stacks set inside the SIGSYS handler would be undone by the
 *   handler's own rt_sigreturn, so they are emulated on the frame.
 * - The runtime's own descriptors (trace output, shared state) survive close, dup2 onto
 *   them and close_range.
 * - /proc/self/exe names the launcher; the program expects itself.
 */
#include "tiers/fixups.h"
#include "tiers/runtime.h"
#include "tiers/signals.h"
#include "core/mem.h"
#include "lib/str.h"
#include <linux/errno.h>
#include <linux/signal.h>

#define SIGSYS_BIT KBOX_SIGBIT(SIGSYS)

/* Copies the guest's sigset at `addr` to `tmp` without SIGSYS; returns the address to pass
 * the kernel instead (the original if SIGSYS was not in it, or it was unreadable). */
static uint64_t strip_sigsys(uint64_t addr, uint64_t *tmp)
{
    if (!addr)
        return addr;
    if (kbox_rt.self_mem.read(&kbox_rt.self_mem, addr, tmp, sizeof(*tmp)) != sizeof(*tmp))
        return addr; /* the kernel will report EFAULT itself */
    if (!(*tmp & SIGSYS_BIT))
        return addr;
    *tmp &= ~SIGSYS_BIT;
    return (uint64_t)(uintptr_t)tmp;
}


/* rt_sigprocmask inside the SIGSYS handler would be undone by the handler's own
 * rt_sigreturn, which restores the mask saved in the frame: so the frame's mask is what
 * gets changed.  SIGSYS never reaches the kernel's mask; its blocked bit is virtual. */
static int64_t emulate_sigprocmask(const uint64_t *a, kbox_ucontext_t *uc)
{
    uint64_t *cur = kbox_uc_sigmask(uc), set = 0;
    int how = (int)a[0];
    if (a[3] != 8)
        return -EINVAL;
    struct kbox_thread *t = kbox_thread_self();
    uint64_t old = *cur | (t && t->sigsys_blocked ? SIGSYS_BIT : 0);
    if (a[1]) {
        if (kbox_rt.self_mem.read(&kbox_rt.self_mem, a[1], &set, 8) != 8)
            return -EFAULT;
        if (how != SIG_BLOCK && how != SIG_UNBLOCK && how != SIG_SETMASK)
            return -EINVAL;
    }
    if (a[2] && kbox_rt.self_mem.write(&kbox_rt.self_mem, a[2], &old, 8) != 8)
        return -EFAULT;
    if (!a[1])
        return 0;
    uint64_t nw = how == SIG_BLOCK ? old | set : how == SIG_UNBLOCK ? old & ~set : set;
    /* SIGKILL and SIGSTOP cannot be blocked. */
    nw &= ~((1ULL << (SIGKILL - 1)) | (1ULL << (SIGSTOP - 1)));
    *cur = nw & ~SIGSYS_BIT;
    if (t)
        t->sigsys_blocked = (nw & SIGSYS_BIT) != 0; /* a pending one: kbox_sig_leave_runtime */
    return 0;
}

bool kbox_runtime_fixup(const struct kbox_req *req, struct kbox_answer *ans, kbox_ucontext_t *uc,
                          int64_t *ret)
{
    uint64_t *a = ans->args;
    switch (req->nr) {
    case __NR_rt_sigaction:
        *ret = kbox_sig_action((int)a[0], a[1], a[2], a[3]);
        return true;
    case __NR_rt_sigprocmask:
        *ret = emulate_sigprocmask(a, uc);
        return true;
    case __NR_sigaltstack:
        *ret = kbox_sig_altstack(a[0], a[1], kbox_uc_sp(uc));
        return true;
    case __NR_rt_sigpending: {
        uint64_t set;
        long r = KSYS2(__NR_rt_sigpending, &set, 8);
        struct kbox_thread *t = kbox_thread_self();
        if (r == 0 && t && t->sigsys_pending)
            set |= SIGSYS_BIT;
        if (r == 0 && kbox_rt.self_mem.write(&kbox_rt.self_mem, a[0], &set, 8) != 8)
            r = -EFAULT;
        *ret = r;
        return true;
    }
    case __NR_rt_sigsuspend:
        a[0] = strip_sigsys(a[0], &ans->scratch[0]);
        return false;
    case __NR_ppoll:
    case __NR_epoll_pwait:
#ifdef __NR_epoll_pwait2
    case __NR_epoll_pwait2:
#endif
        a[req->nr == __NR_ppoll ? 3 : 4] = strip_sigsys(a[req->nr == __NR_ppoll ? 3 : 4], &ans->scratch[0]);
        return false;
    case __NR_pselect6: {
        /* The 6th argument points at { const sigset_t *ss; size_t ss_len; }. */
        uint64_t pair[2];
        if (a[5] && kbox_rt.self_mem.read(&kbox_rt.self_mem, a[5], pair, sizeof(pair)) == sizeof(pair)) {
            uint64_t s = strip_sigsys(pair[0], &ans->scratch[0]);
            if (s != pair[0]) {
                ans->scratch[2] = s;
                ans->scratch[3] = pair[1];
                a[5] = (uint64_t)(uintptr_t)&ans->scratch[2];
            }
        }
        return false;
    }
    case __NR_close:
        if (kbox_is_own_fd((long)a[0])) {
            *ret = 0; /* the guest thinks it closed it; the runtime keeps it */
            return true;
        }
        return false;
    case __NR_dup3:
#ifdef __NR_dup2
    case __NR_dup2:
#endif
        if (kbox_is_own_fd((long)a[1])) {
            *ret = -EBADF;
            return true;
        }
        return false;
    case __NR_close_range: {
        /* Close around the runtime's descriptors. */
        unsigned lo = (unsigned)a[0], hi = (unsigned)a[1];
        int64_t r = 0;
        for (;;) {
            unsigned cut = hi;
            for (int i = 0; i < KBOX_OWN_FDS; i++)
                if (kbox_own_fd[i] >= 0 && (unsigned)kbox_own_fd[i] >= lo &&
                    (unsigned)kbox_own_fd[i] <= cut)
                    cut = (unsigned)kbox_own_fd[i];
            if (!kbox_is_own_fd(cut) || cut > hi) {
                r = KSYS3(__NR_close_range, lo, hi, a[2]);
                break;
            }
            if (cut > lo)
                r = KSYS3(__NR_close_range, lo, cut - 1, a[2]);
            if (r < 0 || cut == hi || cut == ~0u)
                break;
            lo = cut + 1;
        }
        *ret = r;
        return true;
    }
    case __NR_readlinkat:
#ifdef __NR_readlink
    case __NR_readlink:
#endif
    {
        /* /proc/self/exe names the launcher; the guest expects its own program. */
        int pi = req->nr == __NR_readlinkat ? 1 : 0;
        char p[32];
        long n = kbox_mem_read_str(&kbox_rt.self_mem, a[pi], p, sizeof(p));
        if (n > 0 && kbox_strcmp(p, "/proc/self/exe") == 0) {
            size_t len = kbox_strlen(kbox_rt.guest_exe), cap = (size_t)a[pi + 2];
            if (len > cap)
                len = cap;
            if (kbox_rt.self_mem.write(&kbox_rt.self_mem, a[pi + 1], kbox_rt.guest_exe, len) != (long)len) {
                *ret = -EFAULT;
            } else {
                *ret = (int64_t)len;
            }
            return true;
        }
        return false;
    }
    default:
        return false;
    }
}
