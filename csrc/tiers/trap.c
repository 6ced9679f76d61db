/* The trap tier: the interposer lives inside the guest process.
 *
 * The launcher loads the guest's ELF into its own process, installs a SIGSYS handler and a
 * seccomp filter that traps every syscall whose instruction pointer is outside the
 * runtime's gate (lib/sys.h), and jumps to the guest's entry point.  Each trapped syscall
 * arrives here as SIGSYS; the handler asks the dispatcher and runs the call itself through
 * the gate.  (With --trap-backend sud, Syscall User Dispatch raises the same SIGSYS.)
 *
 * What needs care, and why:
 * - clone with CLONE_VM and a new stack (threads, posix_spawn): the child must not return
 *   into this handler, whose frame lives on the parent's stack.  It gets its own copy of
 *   the signal frame on its new stack and rt_sigreturns from the gate straight into the
 *   guest (kbox_clone_gate, arch/<arch>/sigframe.c).  fork-like clones just return
 *   through their own copy of the handler.  vfork (CLONE_VM without a new stack) runs
 *   without CLONE_VM: the child would otherwise run on, and overwrite, the very stack that
 *   holds the parent's handler frame.  CLONE_VFORK's suspension of the parent is kept.
 * - execve: a SIGSYS handler does not survive exec, so the new program is started through
 *   the launcher again (--relaunch); the filter does survive, and it still matches the
 *   launcher's gate because the launcher is linked at a fixed address.  Everything that
 *   would make the kernel's execve fail is checked first, so the caller still gets the
 *   right errno (shells try each PATH entry in turn).
 * - the guest may neither block SIGSYS nor replace this handler (a blocked SIGSYS from
 *   seccomp kills the process): SIGSYS is removed from every mask it installs, and its
 *   SIGSYS disposition is kept virtually and honoured for SIGSYS not caused by a trap.
 * - the runtime's own descriptors (trace output, shared state) survive close/close_range
 *   of the guest.
 */
#include "tiers/trap.h"
#include "tiers/signals.h"
#include "tiers/launch.h"
#include "tiers/vfork.h"
#include "tiers/rewrite.h"
#include "tiers/maps.h"
#include "core/bpf.h"
#include "core/mem.h"
#include "core/policy.h"
#include "loader/loader.h"
#include "lib/buf.h"
#include "lib/str.h"
#include "lib/sys.h"
#include <linux/fcntl.h>
#include <linux/stat.h>
#include <asm/stat.h>
#include <linux/filter.h>
#include <linux/mman.h>
#include <linux/prctl.h>
#include <linux/sched.h>
#include <linux/seccomp.h>
#include <linux/signal.h>
#include <linux/wait.h>

#define EPERM_ 1
#define ENOENT_ 2
#define EINTR_ 4
#define E2BIG_ 7
#define EBADF_ 9
#define ECHILD_ 10
#define ENOMEM_ 12
#define EFAULT_ 14
#define EINVAL_ 22
#define ENAMETOOLONG_ 36
#define EACCES_CODE 13
#define ELIBBAD_CODE 80

#ifndef SA_RESTORER
#define SA_RESTORER 0x04000000
#endif

#define SYS_SECCOMP_CODE 1        /* si_code of a SECCOMP_RET_TRAP SIGSYS */
#define SYS_USER_DISPATCH_CODE 2  /* si_code of a Syscall User Dispatch SIGSYS */

#ifndef PR_SET_SYSCALL_USER_DISPATCH
#define PR_SET_SYSCALL_USER_DISPATCH 59
#endif
#define PR_SYS_DISPATCH_ON 1
#define SYSCALL_DISPATCH_FILTER_BLOCK 1

#define SIGSYS_BIT KBOX_SIGBIT(SIGSYS)

/* Per-process runtime state.  Written before the guest starts (and by the guest's
 * rt_sigaction for SIGSYS, atomically enough for a single word per field); threads share
 * it, fork copies it, exec rebuilds it. */
static struct {
    struct kbox_policy *policy;
    struct kbox_mem self_mem;
    const struct kbox_launch *launch;
    char guest_exe[4096];
    volatile uint8_t sud_selector;
} rt;

/* ---- helpers ---------------------------------------------------------------------------- */

int kbox_own_fd[2] = { -1, -1 };

static bool is_reserved_fd(long fd)
{
    return fd >= 0 && (fd == kbox_own_fd[0] || fd == kbox_own_fd[1]);
}

const struct kbox_mem *kbox_trap_mem(void) { return &rt.self_mem; }

static int64_t run(long nr, const uint64_t *a)
{
    return kbox_syscall6(nr, (long)a[0], (long)a[1], (long)a[2], (long)a[3], (long)a[4], (long)a[5]);
}

/* Copies the guest's sigset at `addr` to `tmp` without SIGSYS; returns the address to pass
 * the kernel instead (the original if SIGSYS was not in it, or it was unreadable). */
static uint64_t strip_sigsys(uint64_t addr, uint64_t *tmp)
{
    if (!addr)
        return addr;
    if (rt.self_mem.read(&rt.self_mem, addr, tmp, sizeof(*tmp)) != sizeof(*tmp))
        return addr; /* the kernel will report EFAULT itself */
    if (!(*tmp & SIGSYS_BIT))
        return addr;
    *tmp &= ~SIGSYS_BIT;
    return (uint64_t)(uintptr_t)tmp;
}

static int arm_sud(void);

/* ---- vfork ------------------------------------------------------------------------------ */

/* A vfork child runs on its parent's stack, below the parent's stack pointer: exactly where
 * the parent's SIGSYS frame would be if the vfork were made inside the handler.  So the
 * handler only prepares: it returns to kbox_vfork_stub (arch/<arch>/launch/vfork.S) with
 * the guest's registers, the stub makes the call from the gate, and a marker syscall from
 * outside the gate brings each side back here once, to restore the resume address and, in
 * the parent, finish the call (trace, virtual pid).  One vfork at a time per process: the
 * slot below is taken until the parent has resumed (the parent is suspended meanwhile, and
 * other threads that vfork wait on the futex). */
uint64_t kbox_vfork_result;
static struct {
    int32_t lock;          /* futex word: 0 free, 1 taken */
    int32_t owner_tgid;
    uint64_t resume_pc, nr_reg;
    struct kbox_req req;
    struct kbox_answer ans;
} vf;

/* A vfork: CLONE_VM|CLONE_VFORK with no new stack, or with the caller's own stack pointer
 * (aarch64 glibc's vfork() is clone(CLONE_VM|CLONE_VFORK|SIGCHLD, sp)). */
static bool is_vfork_like(const struct kbox_req *req, const uint64_t *a, uint64_t sp)
{
#ifdef __NR_vfork
    if (req->nr == __NR_vfork)
        return true;
#endif
    uint64_t flags = 0, stack = 0;
    if (req->nr == __NR_clone) {
        flags = a[0];
        stack = a[1];
    } else if (req->nr == __NR_clone3) {
        struct clone_args ca;
        memset(&ca, 0, sizeof(ca));
        if (a[1] < 64 || rt.self_mem.read(&rt.self_mem, a[0], &ca, 64) != 64)
            return false;
        flags = ca.flags;
        stack = ca.stack ? ca.stack + ca.stack_size : 0;
    } else {
        return false;
    }
    return (flags & CLONE_VM) && (flags & CLONE_VFORK) && (!stack || stack == sp);
}

/* Returns false if the vfork must instead run as a fork (we are ourselves a vfork child of
 * the slot's holder, which waits for us: waiting for it would deadlock). */
static bool vfork_begin(const struct kbox_req *req, const struct kbox_answer *ans,
                        kbox_ucontext_t *uc)
{
    int tgid = (int)kbox_getpid();
    for (;;) {
        int32_t zero = 0;
        if (__atomic_compare_exchange_n(&vf.lock, &zero, 1, false, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
            break;
        if (__atomic_load_n(&vf.owner_tgid, __ATOMIC_RELAXED) != tgid)
            return false;
        KSYS6(__NR_futex, &vf.lock, 0 /* FUTEX_WAIT */, 1, NULL, NULL, 0);
    }
    vf.owner_tgid = tgid;
    vf.resume_pc = kbox_uc_pc(uc);
    vf.nr_reg = kbox_uc_nr_reg(uc);
    vf.req = *req;
    vf.ans = *ans;
    kbox_uc_set_nr(uc, (uint64_t)req->nr);
    for (int i = 0; i < 6; i++)
        kbox_uc_set_arg(uc, i, ans->args[i]);
    kbox_uc_set_pc(uc, (uint64_t)(uintptr_t)kbox_vfork_stub);
    return true;
}

static void vfork_finish(kbox_ucontext_t *uc)
{
    int64_t ret = (int64_t)kbox_uc_vfork_result(uc);
    kbox_uc_restore_nr_reg(uc, vf.nr_reg);
    kbox_uc_set_pc(uc, vf.resume_pc);
    if (ret == 0) {
        kbox_uc_set_ret(uc, 0); /* the child; the parent's line reports the call */
        return;
    }
    struct kbox_req req = vf.req;
    struct kbox_answer ans = vf.ans;
    __atomic_store_n(&vf.lock, 0, __ATOMIC_RELEASE);
    KSYS6(__NR_futex, &vf.lock, 1 /* FUTEX_WAKE */, 1, NULL, NULL, 0);
    kbox_uc_set_ret(uc, (uint64_t)kbox_dispatch_exit(rt.policy, &req, &ans, ret, KBOX_RET_KNOWN));
}

/* ---- clone ------------------------------------------------------------------------------ */

static int64_t run_clone(const struct kbox_req *req, const uint64_t *args, const siginfo_t *si,
                         kbox_ucontext_t *uc)
{
    long nr = req->nr;
    uint64_t a[6];
    memcpy(a, args, sizeof(a));
    uint64_t flags = 0, newsp = 0;
    struct clone_args ca;

    if (nr == __NR_clone) {
        flags = a[0];
        newsp = a[1];
    } else if (nr == __NR_clone3) {
        size_t size = a[1] < sizeof(ca) ? (size_t)a[1] : sizeof(ca);
        memset(&ca, 0, sizeof(ca));
        if (size < 64 || rt.self_mem.read(&rt.self_mem, a[0], &ca, size) != (long)size)
            return a[1] < 64 ? -EINVAL_ : -EFAULT_;
        flags = ca.flags;
        newsp = ca.stack ? ca.stack + ca.stack_size : 0;
    }
#ifdef __NR_vfork
    else if (nr == __NR_vfork) {
        nr = __NR_clone;
        flags = CLONE_VM | CLONE_VFORK | SIGCHLD;
        memset(a, 0, sizeof(a));
        a[0] = flags;
    }
#endif

    uint64_t child_frame = 0;
    struct kbox_thread *child = NULL;
    if (flags & CLONE_VM) {
        if (!newsp) {
            if (!(flags & CLONE_VFORK))
                return -EINVAL_; /* two threads on one stack: not supported in-process */
            flags &= ~(uint64_t)CLONE_VM;
            if (nr == __NR_clone3) {
                ca.flags = flags;
                a[0] = (uint64_t)(uintptr_t)&ca;
                a[1] = sizeof(ca);
            } else {
                a[0] = flags;
            }
        } else {
            /* The child shares our memory: it gets its own kbox stack, and enters the guest
             * from a copy of this frame built there (never on the program's new stack). */
            child = kbox_thread_new(kbox_thread_self(), flags);
            if (!child)
                return -ENOMEM_;
            child_frame = kbox_arch_child_frame(si, uc, newsp, child);
        }
    }
    int64_t r = kbox_clone_gate(nr, (long)a[0], (long)a[1], (long)a[2], (long)a[3], (long)a[4], child_frame);
    /* A vfork child is done with its stack once we run again (it has exec'd or exited). */
    if (child && (r < 0 || (flags & CLONE_VFORK)))
        kbox_thread_free(child);
    return r;
}

/* ---- execve ----------------------------------------------------------------------------- */

/* What the kernel's execve would say about `path` before it replaces the image; 0 if the
 * program would start.  Mirrors the loader's checks without mapping anything. */
static int exec_precheck(const char *path, int depth)
{
    if (depth > 4)
        return -40; /* ELOOP */
    long r = KSYS4(__NR_faccessat, -100, path, 1 /* X_OK */, 0);
    if (r < 0)
        return (int)r;
    long fd = kbox_openat(-100, path, O_RDONLY | O_CLOEXEC, 0);
    if (fd < 0)
        return (int)fd;
    /* Map the whole file (nothing is read until touched): the ELF checks compare offsets
     * against the real file size. */
    struct stat st;
    long r2 = KSYS2(__NR_fstat, fd, &st);
    if (r2 < 0 || (st.st_mode & S_IFMT) != S_IFREG) {
        kbox_close((int)fd);
        return r2 < 0 ? (int)r2 : -EACCES_CODE;
    }
    size_t size = (size_t)st.st_size;
    if (size == 0) {
        kbox_close((int)fd);
        return -8; /* ENOEXEC */
    }
    long m = kbox_mmap(NULL, size, PROT_READ, MAP_PRIVATE, (int)fd, 0);
    kbox_close((int)fd);
    if (kbox_is_err(m))
        return (int)m;
    const char *buf = (const char *)m;
    long n = (long)size;
    int rc = 0;
    if (n >= 2 && buf[0] == '#' && buf[1] == '!') {
        char interp[256];
        long i = 2, j = 0;
        while (i < n && (buf[i] == ' ' || buf[i] == '\t'))
            i++;
        while (i < n && j < (long)sizeof(interp) - 1 && buf[i] != ' ' && buf[i] != '\t' &&
               buf[i] != '\n' && buf[i] != 0)
            interp[j++] = buf[i++];
        interp[j] = 0;
        rc = j ? exec_precheck(interp, depth + 1) : -8; /* ENOEXEC */
    } else {
        struct kbox_elf_info info;
        char msg[256];
        struct kbox_buf err;
        kbox_buf_init(&err, msg, sizeof(msg));
        rc = kbox_elf_check(buf, size, &info, &err);
        if (rc == 0 && info.is_dynamic && info.interp[0]) {
            rc = (int)KSYS4(__NR_faccessat, -100, info.interp, 1, 0);
            if (rc == -EACCES_CODE)
                rc = -ELIBBAD_CODE;
        }
    }
    kbox_munmap((void *)buf, size);
    return rc;
}

static int64_t run_execve(const struct kbox_req *req, const uint64_t *a)
{
    /* "--exec-path=" followed by the path: the launcher option is built in place. */
    static const char opt[] = "--exec-path=";
    char optbuf[sizeof(opt) - 1 + 4096];
    char *path = optbuf + sizeof(opt) - 1;
    memcpy(optbuf, opt, sizeof(opt) - 1);
    uint64_t argv_addr, envp_addr;
    long n;
    if (req->nr == __NR_execve) {
        n = kbox_mem_read_str(&rt.self_mem, a[0], path, 4096);
        argv_addr = a[1];
        envp_addr = a[2];
    } else { /* execveat(dirfd, path, argv, envp, flags) */
        char rel[4096];
        n = kbox_mem_read_str(&rt.self_mem, a[1], rel, sizeof(rel));
        argv_addr = a[2];
        envp_addr = a[3];
        if (n >= 0) {
            struct kbox_buf b;
            kbox_buf_init(&b, path, 4096);
            int dirfd = (int)a[0];
            if (rel[0] == '/' ) {
                kbox_buf_puts(&b, rel);
            } else if (rel[0] == 0 && (a[4] & AT_EMPTY_PATH)) {
                kbox_buf_puts(&b, "/proc/self/fd/");
                kbox_buf_dec(&b, dirfd);
            } else if (dirfd == AT_FDCWD) {
                kbox_buf_puts(&b, rel);
            } else {
                kbox_buf_puts(&b, "/proc/self/fd/");
                kbox_buf_dec(&b, dirfd);
                kbox_buf_putc(&b, '/');
                kbox_buf_puts(&b, rel);
            }
            if (b.truncated)
                return -ENAMETOOLONG_;
            n = (long)b.len;
        }
    }
    if (n < 0)
        return n;
    if (n == 0)
        return -ENOENT_;
    if (kbox_strcmp(path, "/proc/self/exe") == 0)
        memcpy(path, rt.guest_exe, kbox_strlen(rt.guest_exe) + 1);

    int rc = exec_precheck(path, 0);
    if (rc < 0)
        return rc;

    /* Count the guest's argv (reading through the safe accessor: it is guest memory). */
    long argc = 0;
    for (;; argc++) {
        uint64_t p;
        if (!argv_addr)
            break;
        if (rt.self_mem.read(&rt.self_mem, argv_addr + 8 * (uint64_t)argc, &p, 8) != 8)
            return -EFAULT_;
        if (!p)
            break;
        if (argc > 1 << 20)
            return -E2BIG_;
    }
    const struct kbox_launch *L = rt.launch;
    size_t slots = (size_t)L->n_launcher_opts + (size_t)argc + 8;
    size_t bytes = (slots * sizeof(char *) + 4095) & ~(size_t)4095;
    long m = kbox_mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (kbox_is_err(m))
        return -ENOMEM_;
    char **nargv = (char **)m;
    size_t k = 0;
    nargv[k++] = (char *)L->self_path;
    for (int i = 0; i < L->n_launcher_opts; i++)
        nargv[k++] = L->launcher_opts[i];
    nargv[k++] = "--relaunch";
    nargv[k++] = optbuf;
    nargv[k++] = "--";
    if (argc == 0)
        nargv[k++] = path; /* execve with an empty argv: give the program its path */
    for (long i = 0; i < argc; i++)
        nargv[k++] = *(char **)(uintptr_t)(argv_addr + 8 * (uint64_t)i);
    nargv[k] = NULL;
    long r = KSYS3(__NR_execve, L->self_path, nargv, envp_addr);
    kbox_munmap(nargv, bytes);
    return r;
}

/* ---- the runtime's own adjustments -------------------------------------------------------- */

/* rt_sigprocmask inside the SIGSYS handler would be undone by the handler's own
 * rt_sigreturn, which restores the mask saved in the frame: so the frame's mask is what
 * gets changed.  SIGSYS never reaches the kernel's mask; its blocked bit is virtual. */
static int64_t emulate_sigprocmask(const uint64_t *a, kbox_ucontext_t *uc)
{
    uint64_t *cur = kbox_uc_sigmask(uc), set = 0;
    int how = (int)a[0];
    if (a[3] != 8)
        return -EINVAL_;
    struct kbox_thread *t = kbox_thread_self();
    uint64_t old = *cur | (t && t->sigsys_blocked ? SIGSYS_BIT : 0);
    if (a[1]) {
        if (rt.self_mem.read(&rt.self_mem, a[1], &set, 8) != 8)
            return -EFAULT_;
        if (how != SIG_BLOCK && how != SIG_UNBLOCK && how != SIG_SETMASK)
            return -EINVAL_;
    }
    if (a[2] && rt.self_mem.write(&rt.self_mem, a[2], &old, 8) != 8)
        return -EFAULT_;
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

/* Returns true if the call was fully emulated (result in *ret). */
static bool runtime_fixup(const struct kbox_req *req, struct kbox_answer *ans, kbox_ucontext_t *uc,
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
        if (r == 0 && rt.self_mem.write(&rt.self_mem, a[0], &set, 8) != 8)
            r = -EFAULT_;
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
        if (a[5] && rt.self_mem.read(&rt.self_mem, a[5], pair, sizeof(pair)) == sizeof(pair)) {
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
        if (is_reserved_fd((long)a[0])) {
            *ret = 0; /* the guest thinks it closed it; the runtime keeps it */
            return true;
        }
        return false;
    case __NR_dup3:
#ifdef __NR_dup2
    case __NR_dup2:
#endif
        if (is_reserved_fd((long)a[1])) {
            *ret = -EBADF_;
            return true;
        }
        return false;
    case __NR_close_range: {
        /* Close around the runtime's descriptors. */
        unsigned lo = (unsigned)a[0], hi = (unsigned)a[1];
        int64_t r = 0;
        for (;;) {
            unsigned cut = hi;
            for (int i = 0; i < 2; i++)
                if (kbox_own_fd[i] >= 0 && (unsigned)kbox_own_fd[i] >= lo &&
                    (unsigned)kbox_own_fd[i] <= cut)
                    cut = (unsigned)kbox_own_fd[i];
            if (!is_reserved_fd(cut) || cut > hi) {
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
        long n = kbox_mem_read_str(&rt.self_mem, a[pi], p, sizeof(p));
        if (n > 0 && kbox_strcmp(p, "/proc/self/exe") == 0) {
            size_t len = kbox_strlen(rt.guest_exe), cap = (size_t)a[pi + 2];
            if (len > cap)
                len = cap;
            if (rt.self_mem.write(&rt.self_mem, a[pi + 1], rt.guest_exe, len) != (long)len) {
                *ret = -EFAULT_;
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

/* ---- serving without a signal frame (rewrite trampolines) ------------------------------------ */

/* Calls runtime_fixup() treats specially; everything else the runtime passes through. */
static bool runtime_special(int nr)
{
    switch (nr) {
    case __NR_rt_sigaction: case __NR_rt_sigprocmask: case __NR_rt_sigsuspend: case __NR_ppoll:
    case __NR_epoll_pwait: case __NR_pselect6: case __NR_close: case __NR_dup3:
    case __NR_close_range: case __NR_readlinkat: case __NR_sigaltstack: case __NR_rt_sigpending:
#ifdef __NR_epoll_pwait2
    case __NR_epoll_pwait2:
#endif
#ifdef __NR_dup2
    case __NR_dup2:
#endif
#ifdef __NR_readlink
    case __NR_readlink:
#endif
        return true;
    default:
        return false;
    }
}


int64_t kbox_trap_serve_direct(struct kbox_req *req)
{
    const struct kbox_policy *p = rt.policy;
    struct kbox_answer ans;
    int64_t ret;
    req->mem = &rt.self_mem;
    if (p->trace || p->virtual_pid) {
        req->pid = (int)kbox_getpid();
        req->tid = (int)kbox_gettid();
    }
    kbox_dispatch_enter(p, req, &ans);
    if (ans.verdict != KBOX_RUN)
        ret = ans.verdict == KBOX_RETURN ? ans.value : -ans.value;
    else if (!runtime_fixup(req, &ans, NULL, &ret))
        ret = run(req->nr, ans.args);
    return kbox_dispatch_exit(p, req, &ans, ret, KBOX_RET_KNOWN);
}

/* Calls that need the interrupted context (the signal frame): kbox_trap_serve handles them
 * itself, or emulates them on the frame (signal mask, alternate stack). */
bool kbox_trap_needs_frame(int nr)
{
    switch (nr) {
    case __NR_rt_sigreturn: case __NR_exit: case __NR_exit_group: case __NR_execve:
    case __NR_execveat: case __NR_clone: case __NR_clone3: case KBOX_NR_VFORK_DONE:
    case __NR_rt_sigprocmask: case __NR_sigaltstack: case __NR_rt_sigpending:
#ifdef __NR_fork
    case __NR_fork:
#endif
#ifdef __NR_vfork
    case __NR_vfork:
#endif
        return true;
    default:
        return false;
    }
}

uint8_t kbox_trap_fast[KBOX_NR_MAX];

static void compute_fast_paths(const struct kbox_policy *p)
{
    for (int nr = 0; nr < KBOX_NR_MAX; nr++)
        kbox_trap_fast[nr] = kbox_dispatch_passthrough(p, nr) && !runtime_special(nr) &&
                             !kbox_trap_needs_frame(nr) ? KBOX_FAST_ANY : 0;
    /* close is special only for the runtime's own descriptors (open+close is a hot pair). */
    if (kbox_dispatch_passthrough(p, __NR_close))
        kbox_trap_fast[__NR_close] = KBOX_FAST_UNLESS_OWN_FD;
}

/* ---- the handler -------------------------------------------------------------------------- */

void kbox_trap_serve(struct kbox_req *req, const siginfo_t *si, kbox_ucontext_t *uc)
{
    const struct kbox_policy *p = rt.policy;
    struct kbox_answer ans;
    int64_t ret;

    if (p->trace || p->virtual_pid) {
        req->pid = (int)kbox_getpid();
        req->tid = (int)kbox_gettid();
    }
    kbox_dispatch_enter(p, req, &ans);
    if (ans.verdict != KBOX_RUN) {
        ret = ans.verdict == KBOX_RETURN ? ans.value : -ans.value;
        kbox_uc_set_ret(uc, (uint64_t)kbox_dispatch_exit(p, req, &ans, ret, KBOX_RET_KNOWN));
        return;
    }

    if (is_vfork_like(req, ans.args, kbox_uc_sp(uc)) && vfork_begin(req, &ans, uc))
        return;

    switch (req->nr) {
    case __NR_rt_sigreturn:
        /* Replay the guest's sigreturn from the gate, on the guest's stack pointer, once
         * this handler's own frame is gone. */
        if (p->trace)
            kbox_dispatch_trace(p, req, 0, KBOX_RET_NONE);
        kbox_sig_before_sigreturn(kbox_uc_sp(uc));
        kbox_uc_set_pc(uc, (uint64_t)(uintptr_t)kbox_sigreturn);
        return;
    case __NR_exit:
    case __NR_exit_group: {
        if (p->trace)
            kbox_dispatch_trace(p, req, 0, KBOX_RET_NONE);
        struct kbox_thread *t = kbox_thread_self();
        if (req->nr == __NR_exit && t && t->free_on_exit) {
            kbox_thread_forget(t);
            kbox_exit_unmap(t->base, KBOX_KSTACK_SIZE, (int)ans.args[0]);
        }
        run(req->nr, ans.args);
        return;
    }
    case __NR_execve:
    case __NR_execveat:
        ret = run_execve(req, ans.args);
        break;
    case __NR_clone:
    case __NR_clone3:
#ifdef __NR_fork
    case __NR_fork:
#endif
#ifdef __NR_vfork
    case __NR_vfork:
#endif
        ret = run_clone(req, ans.args, si, uc);
        if (ret == 0) {
            /* The child of a fork-like clone: fix what the dispatcher must, trace nothing
             * (the parent's line reports the call, as strace does). */
            if (rt.launch->trap_backend == KBOX_TRAP_SUD)
                arm_sud();
            struct kbox_policy quiet = *p;
            quiet.trace = false;
            if (quiet.virtual_pid)
                req->tid = req->pid = (int)kbox_gettid();
            kbox_uc_set_ret(uc, (uint64_t)kbox_dispatch_exit(&quiet, req, &ans, 0, KBOX_RET_KNOWN));
            return;
        }
        break;
    default:
        if (!runtime_fixup(req, &ans, uc, &ret))
            ret = run(req->nr, ans.args);
        break;
    }
    kbox_uc_set_ret(uc, (uint64_t)kbox_dispatch_exit(p, req, &ans, ret, KBOX_RET_KNOWN));
}

/* The rewrite slow path's hand-back (kbox_rewrite_slow): it served the call, but a signal
 * arrived meanwhile and waits, blocked, for the program; this trap comes from the site's
 * trampoline with the program's registers, and its frame carries the program's mask. */
static void rewrite_resume(kbox_ucontext_t *uc)
{
    struct kbox_thread *t = kbox_thread_self();
    if (!t)
        return;
    kbox_uc_set_nr(uc, t->resume_nr);
    if (t->resume_restart)
        kbox_arch_restart_at(uc, t->resume_site, t->resume_nr, t->resume_arg0);
    else
        kbox_arch_syscall_return(uc, t->resume_site + KBOX_SYSCALL_INSN_LEN, t->resume_ret);
    *kbox_uc_sigmask(uc) = t->saved_mask;
    t->deferred = 0;
}

static void sigsys_handler(int sig, siginfo_t *si, void *ctx)
{
    kbox_ucontext_t *uc = ctx;
    int nr = si->si_syscall;
    uint64_t restart, site = kbox_uc_pc(uc) - KBOX_SYSCALL_INSN_LEN;
    (void)sig;
    if (kbox_rewrite_enabled() && kbox_rewrite_interim(kbox_uc_pc(uc), &restart)) {
        /* A placeholder of a patch in progress: nothing ran; run the instruction again. */
        kbox_uc_set_pc(uc, restart);
        return;
    }
    if (si->si_code != SYS_SECCOMP_CODE && si->si_code != SYS_USER_DISPATCH_CODE) {
        kbox_sig_guest_sigsys(si, uc);
        return;
    }
    uint64_t arg0 = kbox_uc_arg(uc, 0);
    if (kbox_trap_is_fast(nr, arg0)) {
        kbox_uc_set_ret(uc, (uint64_t)kbox_syscall6(nr, (long)arg0, (long)kbox_uc_arg(uc, 1),
                                                    (long)kbox_uc_arg(uc, 2), (long)kbox_uc_arg(uc, 3),
                                                    (long)kbox_uc_arg(uc, 4), (long)kbox_uc_arg(uc, 5)));
        if (kbox_rewrite_enabled())
            kbox_rewrite_site(site, nr);
        kbox_sig_leave_runtime(uc, nr, arg0, site);
        return;
    }
    if (nr == KBOX_NR_VFORK_DONE && kbox_uc_pc(uc) == (uint64_t)(uintptr_t)kbox_vfork_marker_end) {
        vfork_finish(uc);
        return;
    }
    if (nr == KBOX_NR_RW_RESUME && kbox_rewrite_owns(kbox_uc_pc(uc))) {
        rewrite_resume(uc);
        return;
    }
    struct kbox_req req;
    req.nr = nr;
    for (int i = 0; i < 6; i++)
        req.args[i] = kbox_uc_arg(uc, i);
    req.ip = kbox_uc_pc(uc);
    req.tier = KBOX_TIER_TRAP;
    req.path = KBOX_PATH_TRAPPED;
    req.pid = req.tid = 0;
    req.mem = &rt.self_mem;
    kbox_trap_serve(&req, si, uc);
    if (kbox_rewrite_enabled())
        kbox_rewrite_site(site, nr);
    kbox_sig_leave_runtime(uc, nr, req.args[0], site);
}

/* ---- installing the runtime ----------------------------------------------------------------- */

/* Syscall User Dispatch is a per-task setting that clone and fork do not pass on, so it
 * is armed again in every fork-like child (threads and vfork children are served through
 * the seccomp filter below until they exec). */
static int arm_sud(void)
{
    uint64_t lo = (uint64_t)(uintptr_t)__start_kbox_gate, hi = (uint64_t)(uintptr_t)__stop_kbox_gate;
    rt.sud_selector = SYSCALL_DISPATCH_FILTER_BLOCK;
    return (int)KSYS5(__NR_prctl, PR_SET_SYSCALL_USER_DISPATCH, PR_SYS_DISPATCH_ON, lo, hi - lo,
                      &rt.sud_selector);
}

static int install_trap_source(const struct kbox_launch *L)
{
    uint64_t lo = (uint64_t)(uintptr_t)__start_kbox_gate, hi = (uint64_t)(uintptr_t)__stop_kbox_gate;
    if (L->trap_backend == KBOX_TRAP_SUD) {
        long r = arm_sud();
        if (r < 0) {
            kbox_err("Syscall User Dispatch is not available on this kernel (",
                     kbox_strerror((int)-r), "); use --trap-backend seccomp");
            return (int)r;
        }
    }
    /* The seccomp filter is installed with either backend: with SUD it is the safety net
     * for tasks in which SUD is not armed (new threads, vfork children), which then trap
     * into the same handler through SECCOMP_RET_TRAP. */
    if (L->relaunch)
        return 0; /* the filter survived execve and still matches our fixed-address gate */
    struct sock_filter prog[KBOX_BPF_MAX];
    int n = kbox_bpf_trap_outside_gate(prog, KBOX_BPF_MAX, lo, hi);
    if (n < 0)
        return n;
    struct sock_fprog fprog = { (unsigned short)n, prog };
    long r = KSYS5(__NR_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    if (r == 0)
        r = KSYS3(__NR_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fprog);
    if (r < 0)
        kbox_err("cannot install the seccomp filter: ", kbox_strerror((int)-r), NULL);
    return (int)r;
}

/* Loads the program into this process, or reports why not (shell exit codes) and exits. */
static void load_or_exit(struct kbox_launch *L, struct kbox_loaded *img)
{
    char msg[512];
    struct kbox_buf err;
    kbox_buf_init(&err, msg, sizeof(msg));
    int rc = kbox_load_program(L->path, L->argv, L->envp, L->auxv, img, &err);
    if (rc < 0) {
        kbox_err(msg, NULL, NULL);
        kbox_exit_group(rc == -ENOENT_ ? KBOX_EXIT_NOT_FOUND : KBOX_EXIT_CANNOT_EXEC);
    }
}

/* kbox_mem.swap32 for our own memory: a compare-and-swap in place, after /proc/self/maps
 * has shown the word to be in writable memory (a guest's bad pointer must not fault here).
 * Only clone with --virtual-pid uses it. */
static long self_swap32(const struct kbox_mem *m, uint64_t addr, uint32_t expect, uint32_t desired)
{
    (void)m;
    struct kbox_map map;
    if ((addr & 3) || kbox_maps_find(addr, &map) < 0 || !(map.prot & PROT_WRITE))
        return -EFAULT_;
    return __atomic_compare_exchange_n((uint32_t *)(uintptr_t)addr, &expect, desired, false,
                                       __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST) ? 1 : 0;
}

/* Loads the program into this process, arms the runtime and enters the guest. */
static __attribute__((noreturn)) void become_guest(struct kbox_launch *L)
{
    struct kbox_loaded img;
    load_or_exit(L, &img);
    rt.policy = L->policy;
    rt.launch = L;
    compute_fast_paths(L->policy);
    if (L->rewrite)
        kbox_rewrite_enable(L->policy);
    kbox_mem_init_self(&rt.self_mem);
    rt.self_mem.swap32 = self_swap32;
    if (L->rewrite && !L->no_promote && !img.interp_len) {
        /* A static program's libc is in its own text: its wrapper calls can be promoted. */
        struct kbox_map text;
        if (kbox_maps_find(img.main_entry, &text) == 0 && (text.prot & PROT_EXEC))
            kbox_rewrite_promote(text.lo, text.hi);
    }
    kbox_own_fd[0] = L->policy->trace ? L->policy->trace_fd : -1;
    kbox_own_fd[1] = L->shared_fd;
    {
        struct kbox_buf g;
        kbox_buf_init(&g, rt.guest_exe, sizeof(rt.guest_exe));
        kbox_buf_puts(&g, img.exe_path ? img.exe_path : L->path);
    }
    if (kbox_signals_init(sigsys_handler) < 0 || install_trap_source(L) < 0)
        kbox_exit_group(KBOX_EXIT_INTERNAL);

    if (L->policy->trace) {
        /* strace's first line: the execve that started this image, which succeeded. */
        struct kbox_req req = {
            .nr = __NR_execve,
            .args = { (uint64_t)(uintptr_t)L->path, (uint64_t)(uintptr_t)L->argv,
                      (uint64_t)(uintptr_t)L->envp },
            .tier = KBOX_TIER_TRAP,
            .path = KBOX_PATH_TRAPPED,
            .pid = (int)kbox_getpid(),
            .tid = (int)kbox_gettid(),
            .mem = &rt.self_mem,
        };
        kbox_dispatch_trace(L->policy, &req, 0, KBOX_RET_KNOWN);
    }
    kbox_enter_guest(img.entry, img.sp);
}

int kbox_plain_run(struct kbox_launch *L)
{
    struct kbox_loaded img;
    load_or_exit(L, &img);
    kbox_enter_guest(img.entry, img.sp);
}

int kbox_trap_run(struct kbox_launch *L)
{
    if (L->relaunch)
        become_guest(L);

    uint64_t block = (1ULL << (SIGCHLD - 1)), orig;
    KSYS4(__NR_rt_sigprocmask, SIG_BLOCK, &block, &orig, 8);
    KSYS2(__NR_prctl, PR_SET_CHILD_SUBREAPER, 1);
    long child = KSYS5(__NR_clone, SIGCHLD, 0, NULL, NULL, 0);
    if (child < 0) {
        kbox_err("fork failed: ", kbox_strerror((int)-child), NULL);
        return KBOX_EXIT_INTERNAL;
    }
    if (child == 0) {
        KSYS4(__NR_rt_sigprocmask, SIG_SETMASK, &orig, NULL, 8);
        KSYS2(__NR_prctl, PR_SET_PDEATHSIG, SIGKILL);
        become_guest(L);
    }
    return kbox_monitor_children((int)child);
}
