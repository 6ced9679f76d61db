/* The seccomp tier: a supervisor process answers seccomp user notifications.
 *
 * The child installs a filter that sends every syscall to the listener and then executes
 * the program.  Handing the listener fd to the parent is the delicate part: once the filter
 * is installed, every syscall of the child — sendmsg included — waits for a supervisor
 * that does not have the listener yet.  So the child only *stores* the fd number in the
 * shared memfd (a memory write, not a syscall) and the parent fetches the fd itself with
 * pidfd_getfd(2).
 *
 * A CONTINUEd call is run by the kernel after we answered, so its result is never visible
 * here: the trace shows "= ?" for those (documented in docs/tiers.md).
 */
#include "tiers/launch.h"
#include "tiers/exec.h"
#include "tiers/runtime.h"
#include "tiers/seccomp-guest.h"
#include "tiers/seccomp-view.h"
#include "tiers/seccomp-proc.h"
#include "core/bpf.h"
#include "core/view.h"
#include "core/mem.h"
#include "lib/buf.h"
#include "lib/str.h"
#include "lib/sys.h"
#include "lib/ksignal.h"
#include <linux/ioctl.h>
#include <linux/seccomp.h>
#include <linux/filter.h>
#include <linux/prctl.h>
#include <linux/signal.h>
#include <linux/poll.h>
#include <linux/mman.h>
#include <linux/time.h>
#include <linux/wait.h>
#include <linux/sched.h>
#include <asm/signal.h>
#include <linux/errno.h>
#include <linux/fcntl.h>

/* Newer than Debian 12's uapi headers (Linux 6.6). */
#ifndef SECCOMP_IOCTL_NOTIF_SET_FLAGS
#define SECCOMP_IOCTL_NOTIF_SET_FLAGS SECCOMP_IOW(4, __u64)
#endif
#ifndef SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP
#define SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP (1UL << 0)
#endif
#ifndef __NR_pidfd_getfd
#define __NR_pidfd_getfd 438
#endif


/* A tiny tid -> tgid cache for trace lines; collisions just recompute. */
struct tgid_cache { int tid[256], tgid[256]; };

static int cached_tgid(struct tgid_cache *c, int tid)
{
    unsigned i = (unsigned)tid & 255;
    if (c->tid[i] != tid) {
        c->tid[i] = tid;
        c->tgid[i] = kbox_sview_tgid(tid); /* only needed for trace output */
    }
    return c->tgid[i];
}

/* With a root view, the first program is started as every later one is (seccomp-guest.h):
 * through the in-process execve, whose checks and loading the supervisor serves in the
 * view.  The working directory (where the launcher put the supervisor) becomes the
 * descriptor the supervisor keeps for it. */
static void keep_cwd(const struct kbox_launch *L)
{
    long fd = kbox_openat(AT_FDCWD, ".", O_PATH | O_DIRECTORY | O_CLOEXEC, 0);
    if (fd < 0 || KSYS3(__NR_dup3, fd, L->cwd_fd, 0) != L->cwd_fd) {
        kbox_err("cannot keep the working directory for the root view", NULL, NULL);
        kbox_exit_group(KBOX_EXIT_INTERNAL);
    }
    kbox_close((int)fd);
}

static __attribute__((noreturn)) void child_exec_in_view(struct kbox_launch *L)
{
    /* The view is the supervisor's now: this process's paths are guest paths. */
    kbox_close(kbox_view.root_fd);
    kbox_view.root_fd = -1;
    L->self_path = kbox_sg_self_exe;
    kbox_rt.launch = L;
    kbox_rt.policy = L->policy;
    kbox_mem_init_self(&kbox_rt.self_mem);
    const uint64_t args[6] = { (uint64_t)(uintptr_t)L->path, (uint64_t)(uintptr_t)L->argv,
                               (uint64_t)(uintptr_t)L->envp };
    struct kbox_req req;
    kbox_req_init(&req, __NR_execve, args, 0, KBOX_TIER_SECCOMP, &kbox_rt.self_mem);
    long r = kbox_run_execve(&req, args);
    kbox_err(L->path, ": ", kbox_strerror((int)-r));
    kbox_exit_group(r == -ENOENT ? KBOX_EXIT_NOT_FOUND : KBOX_EXIT_CANNOT_EXEC);
}

static __attribute__((noreturn)) void child_exec(struct kbox_launch *L, volatile int32_t *slot)
{
    struct sock_filter prog[KBOX_BPF_MAX];
    static const int trapped[] = KBOX_SG_TRAPPED;
    int n = kbox_view_on() ? kbox_bpf_notify_trap_outside_gate(prog, KBOX_BPF_MAX,
                                                               (uint64_t)(uintptr_t)__start_kbox_gate,
                                                               (uint64_t)(uintptr_t)__stop_kbox_gate,
                                                               trapped, KBOX_SG_NTRAPPED)
                           : kbox_bpf_notify_all(prog, KBOX_BPF_MAX);
    struct sock_fprog fprog = { (unsigned short)n, prog };

    if (kbox_view_on())
        keep_cwd(L);
    if (KSYS5(__NR_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
        kbox_err("cannot set no_new_privs", NULL, NULL);
        kbox_exit_group(KBOX_EXIT_INTERNAL);
    }
    long fd = KSYS3(__NR_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &fprog);
    if (fd < 0) {
        kbox_err("seccomp user notification is not available on this kernel: ",
                 kbox_strerror((int)-fd), " (use --syscall-mode=trap)");
        kbox_exit_group(KBOX_EXIT_INTERNAL);
    }
    __atomic_store_n(slot, (int32_t)fd, __ATOMIC_RELEASE);
    /* From here on every syscall waits for the supervisor. */
    kbox_close((int)fd);
    if (kbox_view_on())
        child_exec_in_view(L);
    long r = KSYS3(__NR_execve, L->path, L->argv, L->envp);
    kbox_err(L->path, ": ", kbox_strerror((int)-r));
    kbox_exit_group(r == -ENOENT ? KBOX_EXIT_NOT_FOUND : KBOX_EXIT_CANNOT_EXEC);
}

static int attach_listener(int child, volatile int32_t *slot)
{
    long pidfd = KSYS2(__NR_pidfd_open, child, 0);
    if (pidfd < 0)
        return (int)pidfd;
    struct __kernel_timespec ts = { 0, 20000 };
    int fd_in_child;
    for (;;) {
        fd_in_child = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
        if (fd_in_child >= 0)
            break;
        int status;
        if (KSYS4(__NR_wait4, child, &status, WNOHANG, NULL) == child) {
            kbox_close((int)pidfd);
            return -1000 - kbox_status_to_exit(status); /* the child failed before exec */
        }
        KSYS2(__NR_nanosleep, &ts, NULL);
    }
    long fd = KSYS3(__NR_pidfd_getfd, pidfd, fd_in_child, 0);
    kbox_close((int)pidfd);
    return (int)fd;
}

/* Ending the supervisor without a race.  SIGCHLD (no SA_RESTART) interrupts a blocking
 * NOTIF_RECV; the handler reaps.  Once the first child is gone and no child remains, the
 * run is over: if the loop is inside RECV (or about to enter it) the handler finishes the
 * run itself, because on Linux 6.1 a RECV never returns once the last filtered task has
 * exited; otherwise the loop sees `over` before its next RECV. */
static struct {
    int child;
    volatile int in_recv;
    volatile int over;
    volatile int main_done;
    int main_status;
    void (*finish)(int status); /* the launcher's end of the run (kbox_launch.finish) */
} sup;

static void reap(void)
{
    for (;;) {
        int status;
        long w = KSYS4(__NR_wait4, -1, &status, WNOHANG | __WALL, NULL);
        if (w == sup.child) {
            sup.main_status = status;
            sup.main_done = 1;
        }
        if (w == -ECHILD && sup.main_done)
            sup.over = 1;
        if (w <= 0)
            return;
    }
}

static void on_sigchld(int sig)
{
    (void)sig;
    reap();
    if (sup.over && sup.in_recv)
        sup.finish(kbox_status_to_exit(sup.main_status));
}

/* Tasks doing kbox's work for the program's execve (seccomp-guest.h), whose calls are
 * served but neither policed nor traced. */
static struct { int tid[64]; int n; } quiet;

static int quiet_find(int tid)
{
    for (int i = 0; i < quiet.n; i++)
        if (quiet.tid[i] == tid)
            return i;
    return -1;
}

static void quiet_set(int tid, bool on)
{
    int i = quiet_find(tid);
    if (on && i < 0 && quiet.n < (int)(sizeof(quiet.tid) / sizeof(quiet.tid[0])))
        quiet.tid[quiet.n++] = tid;
    else if (!on && i >= 0)
        quiet.tid[i] = quiet.tid[--quiet.n];
}

static bool from_gate(const struct kbox_req *req)
{
    return req->ip > (uint64_t)(uintptr_t)__start_kbox_gate && req->ip <= (uint64_t)(uintptr_t)__stop_kbox_gate;
}

/* The relaunch execve of kbox (seccomp-guest.c), traced as the program's execve it stands
 * for: the path after --exec-path= and the arguments after "--". */
static void trace_relaunch(const struct kbox_policy *p, struct kbox_req *req)
{
    uint64_t argv = req->args[1], path = 0, ptr;
    char head[16];
    for (int i = 1; i < 256; i++) {
        if (req->mem->read(req->mem, argv + 8 * (uint64_t)i, &ptr, 8) != 8 || !ptr)
            return;
        long n = kbox_mem_read_str(req->mem, ptr, head, sizeof(head));
        if (n >= 12 && kbox_strncmp(head, "--exec-path=", 12) == 0)
            path = ptr + 12;
        if (n == 2 && head[0] == '-' && head[1] == '-') {
            struct kbox_req shown = *req;
            shown.args[0] = path;
            shown.args[1] = argv + 8 * (uint64_t)(i + 1);
            if (path)
                kbox_dispatch_trace(p, &shown, 0, KBOX_RET_KNOWN);
            return;
        }
    }
}

/* The markers of seccomp-guest.h; true if `req` was one (answered with *ret). */
static bool guest_marker(const struct kbox_policy *p, struct kbox_req *req, int64_t *ret)
{
    if (req->nr != KBOX_NR_SG_QUIET && req->nr != KBOX_NR_SG_START && req->nr != KBOX_NR_SG_FAILED)
        return false;
    *ret = 0;
    if (!from_gate(req)) {
        *ret = -ENOSYS;
        return true;
    }
    quiet_set(req->tid, req->nr == KBOX_NR_SG_QUIET);
    struct kbox_sg_failed f;
    if (req->nr == KBOX_NR_SG_FAILED && p->trace &&
        req->mem->read(req->mem, req->args[0], &f, sizeof(f)) == (long)sizeof(f) &&
        (f.nr == __NR_execve || f.nr == __NR_execveat)) {
        struct kbox_req shown = *req;
        shown.nr = (int)f.nr;
        for (int i = 0; i < 6; i++)
            shown.args[i] = f.args[i];
        kbox_dispatch_trace(p, &shown, f.ret, KBOX_RET_KNOWN);
    }
    return true;
}

static void answer(int listener, struct seccomp_notif_resp *resp, int64_t ret)
{
    if (ret < 0 && ret > -4096)
        resp->error = (int32_t)ret;
    else
        resp->val = ret;
    KSYS3(__NR_ioctl, listener, SECCOMP_IOCTL_NOTIF_SEND, resp);
}

/* One notification with a root view: the supervisor serves what touches a path
 * (seccomp-view.c), kbox's own work for an execve unpoliced and untraced. */
static void serve_in_view(const struct kbox_policy *p, struct kbox_sview *sv, struct kbox_req *req, uint64_t id,
                          struct seccomp_notif_resp *resp, int listener, struct tgid_cache *tc)
{
    int64_t ret;
    struct kbox_req shown;
    bool is_quiet = quiet.n && quiet_find(req->tid) >= 0;
    if (req->nr == __NR_exit || req->nr == __NR_exit_group)
        quiet_set(req->tid, false);
    if (guest_marker(p, req, &ret)) {
        answer(listener, resp, ret);
        return;
    }
    if (tc)
        req->pid = cached_tgid(tc, req->tid);
    bool relaunch = req->nr == __NR_execve && req->args[0] == (uint64_t)(uintptr_t)kbox_sg_self_exe;
    struct kbox_answer ans;
    if (is_quiet && !relaunch) {
        enum kbox_sview_action a = kbox_sview_serve(sv, req, id, &ret, &shown);
        if (a == KBOX_SV_CONTINUE) {
            resp->flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
            KSYS3(__NR_ioctl, listener, SECCOMP_IOCTL_NOTIF_SEND, resp);
        } else if (a == KBOX_SV_RESULT) {
            answer(listener, resp, ret);
        }
        return;
    }
    kbox_dispatch_enter(p, req, &ans);
    if (ans.verdict != KBOX_RUN) {
        /* A denied relaunch is traced by the guest's failure marker. */
        ret = ans.verdict == KBOX_RETURN ? ans.value : -ans.value;
        if (!relaunch)
            ret = kbox_dispatch_exit(p, req, &ans, ret, KBOX_RET_KNOWN);
        answer(listener, resp, ret);
        return;
    }
    enum kbox_sview_action a = kbox_sview_serve(sv, req, id, &ret, &shown);
    if (a == KBOX_SV_CONTINUE) {
        if (relaunch) {
            quiet_set(req->tid, true); /* until the relaunched kbox starts the program */
            if (p->trace)
                trace_relaunch(p, req);
        } else if (p->trace) {
            bool noreturn = kbox_sc_props(req->nr) & KBOX_SC_NORETURN;
            kbox_dispatch_exit(p, req, &ans, 0, noreturn ? KBOX_RET_NONE : KBOX_RET_UNKNOWN);
        }
        resp->flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
        KSYS3(__NR_ioctl, listener, SECCOMP_IOCTL_NOTIF_SEND, resp);
        return;
    }
    if (a == KBOX_SV_ANSWERED && ret == -EINPROGRESS) {
        kbox_dispatch_exit(p, &shown, &ans, 0, KBOX_RET_UNKNOWN); /* a child answers (a FIFO) */
        return;
    }
    ret = kbox_dispatch_exit(p, &shown, &ans, ret, KBOX_RET_KNOWN);
    if (a == KBOX_SV_RESULT)
        answer(listener, resp, ret);
}

int kbox_seccomp_run(struct kbox_launch *L)
{
    struct kbox_policy *p = L->policy;
    volatile int32_t *slot = &p->shared->listener_fd;
    *slot = -1;

    long child = kbox_fork_monitored();
    if (child < 0)
        return KBOX_EXIT_INTERNAL;
    if (child == 0)
        child_exec(L, slot);
    sup.child = (int)child;
    sup.finish = L->finish;

    kbox_monitor_ignore_terminal_signals((int)child);
    int listener = attach_listener((int)child, slot);
    if (listener <= -1000)
        return -(listener + 1000);
    if (listener < 0) {
        kbox_err("cannot take the seccomp listener from the child: ", kbox_strerror(-listener), NULL);
        KSYS2(__NR_kill, child, SIGKILL);
        return KBOX_EXIT_INTERNAL;
    }
    /* Linux >= 6.6: wake the supervisor on the same CPU synchronously, which cuts a round
     * trip from ~16-20 us to ~2 us here; older kernels refuse the flag and that is fine. */
    p->shared->sync_wakeup = KSYS3(__NR_ioctl, listener, SECCOMP_IOCTL_NOTIF_SET_FLAGS,
                                   SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP) == 0;

    struct seccomp_notif_sizes sizes;
    if (KSYS3(__NR_seccomp, SECCOMP_GET_NOTIF_SIZES, 0, &sizes) < 0 ||
        sizes.seccomp_notif > 512 || sizes.seccomp_notif_resp > 512) {
        kbox_err("unexpected seccomp notification sizes", NULL, NULL);
        KSYS2(__NR_kill, child, SIGKILL);
        return KBOX_EXIT_INTERNAL;
    }
    uint64_t notif_mem[64], resp_mem[64];
    struct seccomp_notif *notif = (struct seccomp_notif *)notif_mem;
    struct seccomp_notif_resp *resp = (struct seccomp_notif_resp *)resp_mem;
    struct tgid_cache *tc = NULL;
    if (p->trace) {
        long m = kbox_mmap(NULL, sizeof(*tc), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (!kbox_is_err(m))
            tc = (struct tgid_cache *)m;
    }

    bool in_view = kbox_view_on();
    static struct kbox_sview sv;
    if (in_view) {
        int r = kbox_sview_init(&sv, listener, L->cwd_fd);
        if (r < 0) {
            kbox_err("cannot prepare the root view's supervisor: ", kbox_strerror(-r), NULL);
            KSYS2(__NR_kill, child, SIGKILL);
            return KBOX_EXIT_INTERNAL;
        }
        quiet_set((int)child, true);
        sv.ids = p->root_record ? &p->shared->ids : NULL;
    }

    kbox_set_handler(SIGCHLD, on_sigchld, SA_NOCLDSTOP);
    uint64_t chld = KBOX_SIGBIT(SIGCHLD);
    KSYS4(__NR_rt_sigprocmask, SIG_UNBLOCK, &chld, NULL, 8);

    bool started = false;
    for (;;) {
        memset(notif, 0, sizes.seccomp_notif);
        sup.in_recv = 1;
        __atomic_signal_fence(__ATOMIC_SEQ_CST);
        if (sup.over)
            break;
        long r = KSYS3(__NR_ioctl, listener, SECCOMP_IOCTL_NOTIF_RECV, notif);
        sup.in_recv = 0;
        __atomic_signal_fence(__ATOMIC_SEQ_CST);
        if (r < 0)
            continue; /* -EINTR (SIGCHLD), or -ENOENT: the caller died meanwhile */

        struct kbox_mem mem;
        kbox_mem_init_notif(&mem, (int)notif->pid, listener, notif->id);
        struct kbox_req req;
        kbox_req_init(&req, notif->data.nr, (const uint64_t *)notif->data.args, notif->data.instruction_pointer,
                      KBOX_TIER_SECCOMP, &mem);
        req.pid = req.tid = (int)notif->pid;

        memset(resp, 0, sizes.seccomp_notif_resp);
        resp->id = notif->id;
        if (in_view) {
            serve_in_view(p, &sv, &req, notif->id, resp, listener, tc);
            continue;
        }
        /* The launcher's own calls between installing the filter and exec'ing the program
         * are not the program's: let them through unseen. */
        if (!started && (int)notif->pid == child && req.nr != __NR_execve) {
            resp->flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
            KSYS3(__NR_ioctl, listener, SECCOMP_IOCTL_NOTIF_SEND, resp);
            continue;
        }
        started = true;
        if (tc)
            req.pid = cached_tgid(tc, req.tid);

        struct kbox_answer ans;
        kbox_dispatch_enter(p, &req, &ans);
        if (ans.verdict == KBOX_RUN) {
            bool noreturn = kbox_sc_props(req.nr) & KBOX_SC_NORETURN;
            /* Trace before answering: the caller's memory (paths, argv) is stable only
             * while it waits for us. */
            if (p->trace)
                kbox_dispatch_exit(p, &req, &ans, 0, noreturn ? KBOX_RET_NONE : KBOX_RET_UNKNOWN);
            resp->flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
        } else {
            int64_t ret = ans.verdict == KBOX_RETURN ? ans.value : -ans.value;
            ret = kbox_dispatch_exit(p, &req, &ans, ret, KBOX_RET_KNOWN);
            if (ret < 0 && ret > -4096)
                resp->error = (int32_t)ret;
            else
                resp->val = ret;
        }
        KSYS3(__NR_ioctl, listener, SECCOMP_IOCTL_NOTIF_SEND, resp);
    }
    kbox_close(listener);
    return kbox_status_to_exit(sup.main_status);
}
