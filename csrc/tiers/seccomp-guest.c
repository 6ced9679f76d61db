/* The seccomp tier's in-process part with a root view (see seccomp-guest.h): the program's
 * execve and close_range, made again from the gate in the forms the supervisor checks. */
#include "tiers/seccomp-guest.h"
#include "tiers/exec.h"
#include "tiers/runtime.h"
#include "core/mem.h"
#include "loader/loader.h"
#include "lib/buf.h"
#include "lib/ksignal.h"
#include <linux/errno.h>
#include <linux/signal.h>

#define SYS_SECCOMP_CODE 1 /* si_code of a SECCOMP_RET_TRAP SIGSYS */

const char kbox_sg_self_exe[] = "/proc/self/exe";

/* close_range around the working-directory descriptor and the chroot root's below it
 * (seccomp-chroot.h), which the program must not close (the supervisor refuses a range that
 * covers either). */
static int64_t close_range_around(const uint64_t *a)
{
    unsigned lo = (unsigned)a[0], hi = (unsigned)a[1], keep_hi = (unsigned)kbox_rt.launch->cwd_fd;
    unsigned keep_lo = keep_hi - 1;
    if (lo > hi || keep_hi < lo || keep_lo > hi)
        return KSYS3(__NR_close_range, lo, hi, a[2]);
    long r = 0;
    if (keep_lo > lo)
        r = KSYS3(__NR_close_range, lo, keep_lo - 1, a[2]);
    if (r == 0 && keep_hi < hi)
        r = KSYS3(__NR_close_range, keep_hi + 1, hi, a[2]);
    return r;
}

static void sigsys(int sig, siginfo_t *si, void *ctx)
{
    kbox_ucontext_t *uc = ctx;
    (void)sig;
    if (si->si_code != SYS_SECCOMP_CODE) {
        /* Not ours (kill, or the program's own filter): the default action, as natively. */
        struct kbox_ksigaction dfl = { (uint64_t)(uintptr_t)SIG_DFL, 0, 0, 0 };
        kbox_rt_sigaction(SIGSYS, &dfl, NULL);
        KSYS3(__NR_tgkill, kbox_getpid(), kbox_gettid(), SIGSYS);
        return;
    }
    struct kbox_sg_failed f = { .nr = si->si_syscall };
    for (int i = 0; i < 6; i++)
        f.args[i] = kbox_uc_arg(uc, i);
    if (f.nr == __NR_close_range) {
        kbox_uc_set_ret(uc, (uint64_t)close_range_around(f.args));
        return;
    }
    if (f.nr != __NR_execve && f.nr != __NR_execveat) {
        kbox_uc_set_ret(uc, (uint64_t)-ENOSYS);
        return;
    }
    struct kbox_req req;
    kbox_req_init(&req, (int)f.nr, f.args, kbox_uc_pc(uc), KBOX_TIER_SECCOMP, &kbox_rt.self_mem);
    KSYS0(KBOX_NR_SG_QUIET);
    /* The new image starts with the mask the program had, not the handler's. */
    KSYS4(__NR_rt_sigprocmask, SIG_SETMASK, kbox_uc_sigmask(uc), NULL, 8);
    f.ret = kbox_run_execve(&req, f.args); /* returns only if the exec failed */
    KSYS1(KBOX_NR_SG_FAILED, &f);
    kbox_uc_set_ret(uc, (uint64_t)f.ret);
}

void kbox_seccomp_guest(struct kbox_launch *L)
{
    char msg[512];
    struct kbox_buf err;
    kbox_buf_init(&err, msg, sizeof(msg));
    struct kbox_loaded img;
    int rc = kbox_load_program(L->path, L->argv, L->envp, L->auxv, &img, &err);
    if (rc < 0) {
        kbox_err(msg, NULL, NULL);
        kbox_exit_group(rc == -ENOENT ? KBOX_EXIT_NOT_FOUND : KBOX_EXIT_CANNOT_EXEC);
    }
    L->self_path = kbox_sg_self_exe;
    kbox_rt.policy = L->policy;
    kbox_rt.launch = L;
    kbox_mem_init_self(&kbox_rt.self_mem);
    struct kbox_buf g;
    kbox_buf_init(&g, kbox_rt.guest_exe, sizeof(kbox_rt.guest_exe));
    kbox_buf_puts(&g, img.exe_path ? img.exe_path : L->path);
    struct kbox_ksigaction act = { (uint64_t)(uintptr_t)sigsys, SA_SIGINFO | SA_RESTORER,
                                   (uint64_t)(uintptr_t)kbox_sigreturn, 0 };
    if (kbox_rt_sigaction(SIGSYS, &act, NULL) < 0)
        kbox_exit_group(KBOX_EXIT_INTERNAL);
    KSYS0(KBOX_NR_SG_START);
    kbox_enter_guest(img.entry, img.sp);
}
