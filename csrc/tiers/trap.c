/* The trap tier: the interposer lives inside the program's process.
 *
 * The launcher loads the program's ELF into its own process, installs a SIGSYS handler and a
 * seccomp filter that traps every syscall whose instruction pointer is outside the
 * runtime's gate (lib/sys.h), and jumps to the program's entry point.  Each trapped syscall
 * arrives here as SIGSYS; the handler asks the dispatcher and runs the call itself through
 * the gate.  (With --trap-backend sud, Syscall User Dispatch raises the same SIGSYS.)  The
 * rewrite tier's slow path (kbox_rewrite_slow) serves its calls here too, without a frame.
 *
 * This file serves and installs; the jobs around it have their own files: starting tasks
 * (clone.c), execve (exec.c), the runtime's adjustments of calls it must see through
 * (fixups.c), signals and kbox's per-thread stacks (signals.c).  Which call takes which
 * path comes from the syscall table's properties (arch/sysent.h).
 */
#include "tiers/trap.h"
#include "tiers/runtime.h"
#include "tiers/clone.h"
#include "tiers/exec.h"
#include "tiers/fixups.h"
#include "tiers/view-rt.h"
#include "tiers/signals.h"
#include "tiers/rewrite.h"
#include "core/bpf.h"
#include "core/ids.h"
#include "core/mem.h"
#include "core/view-binds.h"
#include "loader/loader.h"
#include "lib/buf.h"
#include "lib/self.h"
#include "lib/str.h"
#include <linux/errno.h>
#include <linux/filter.h>
#include <linux/mman.h>
#include <linux/prctl.h>
#include <linux/seccomp.h>
#include <linux/signal.h>

#define SYS_SECCOMP_CODE 1        /* si_code of a SECCOMP_RET_TRAP SIGSYS */
#define SYS_USER_DISPATCH_CODE 2  /* si_code of a Syscall User Dispatch SIGSYS */

#ifndef PR_SET_SYSCALL_USER_DISPATCH
#define PR_SET_SYSCALL_USER_DISPATCH 59
#endif
#define PR_SYS_DISPATCH_ON 1
#define SYSCALL_DISPATCH_FILTER_BLOCK 1

static int arm_sud(void);

/* ---- serving ---------------------------------------------------------------------------- */

/* The passthrough table for this run's policy (kbox_trap_fast, arch/interface.h). */
static void compute_fast_paths(const struct kbox_policy *p)
{
    for (int nr = 0; nr < KBOX_NR_MAX; nr++)
        kbox_trap_fast[nr] = kbox_dispatch_passthrough(p, nr) &&
                             !(kbox_sc_props(nr) & (KBOX_SC_RUNTIME | KBOX_SC_FRAME)) &&
                             !(kbox_view_on() && kbox_view_touches(nr)) ? KBOX_FAST_ANY : 0;
    /* close is special only for the runtime's own descriptors (open+close is a hot pair). */
    if (kbox_dispatch_passthrough(p, __NR_close) && kbox_own_fd[2] < 0)
        kbox_trap_fast[__NR_close] = KBOX_FAST_UNLESS_OWN_FD;
}

/* Runs a call the dispatcher let through: inside the root view if there is one, with the
 * runtime's adjustments where it needs them (uc: the SIGSYS frame, or NULL). */
static void run_or_adjust(const struct kbox_req *req, struct kbox_answer *ans, kbox_ucontext_t *uc,
                          int64_t *ret)
{
    struct kbox_view_call vc;
    vc.active = false;
    if (kbox_view_on() && kbox_view_touches(req->nr) && kbox_view_enter(req, ans, &vc, ret)) {
        kbox_view_leave(req, ans, &vc, ret);
        return;
    }
    const struct kbox_policy *p = kbox_rt.policy;
    if (p->root_record && kbox_ids_file_call(req->nr))
        *ret = kbox_ids_syscall(&p->shared->ids, &kbox_rt.self_mem, req->nr, ans->args);
    else if (!(kbox_sc_props(req->nr) & KBOX_SC_RUNTIME) || !kbox_runtime_fixup(req, ans, uc, ret))
        *ret = kbox_rt_run(req->nr, ans->args);
    kbox_view_leave(req, ans, &vc, ret);
}

/* Serves a call outside any signal handler (the rewrite slow path); returns the result. */
static int64_t serve_direct(struct kbox_req *req)
{
    const struct kbox_policy *p = kbox_rt.policy;
    struct kbox_answer ans;
    int64_t ret;
    if (p->trace || p->virtual_pid) {
        req->pid = (int)kbox_getpid();
        req->tid = (int)kbox_gettid();
    }
    kbox_dispatch_enter(p, req, &ans);
    if (ans.verdict != KBOX_RUN)
        ret = ans.verdict == KBOX_RETURN ? ans.value : -ans.value;
    else
        run_or_adjust(req, &ans, NULL, &ret);
    return kbox_dispatch_exit(p, req, &ans, ret, KBOX_RET_KNOWN);
}

/* The rewrite slow path: a trampoline's call the passthrough table does not let through,
 * on the thread's kbox stack (entered through kbox_rw_slow, arch/<arch>/launch/sigstack.S). */
void kbox_rewrite_slow(struct kbox_rw_frame *f, uint64_t site)
{
    int nr = kbox_arch_rw_nr(f);
    int64_t ret;
    if (kbox_trap_is_fast(nr, kbox_arch_rw_arg(f, 0))) {
        ret = kbox_syscall6(nr, (long)kbox_arch_rw_arg(f, 0), (long)kbox_arch_rw_arg(f, 1),
                            (long)kbox_arch_rw_arg(f, 2), (long)kbox_arch_rw_arg(f, 3),
                            (long)kbox_arch_rw_arg(f, 4), (long)kbox_arch_rw_arg(f, 5));
    } else if (kbox_trap_needs_frame(nr)) {
        kbox_arch_rw_set_trap(f);
        return;
    } else {
        uint64_t args[6];
        for (int i = 0; i < 6; i++)
            args[i] = kbox_arch_rw_arg(f, i);
        struct kbox_req req;
        kbox_req_init(&req, nr, args, site + KBOX_SYSCALL_INSN_LEN, KBOX_TIER_REWRITE, &kbox_rt.self_mem);
        ret = serve_direct(&req);
    }
    struct kbox_thread *t = kbox_thread_self();
    if (t && t->deferred) {
        /* A signal arrived while we served, and is held blocked for the program: resume
         * through the trap path, whose frame brings the program's mask back (and with it
         * the signal, at the syscall site, as the kernel would deliver it). */
        t->resume_nr = (uint64_t)nr;
        t->resume_site = site;
        t->resume_ret = (uint64_t)ret;
        t->resume_arg0 = kbox_arch_rw_arg(f, 0);
        t->resume_restart = t->restart && ret == -EINTR;
        t->restart = 0;
        kbox_arch_rw_set_nr(f, KBOX_NR_RW_RESUME);
        kbox_arch_rw_set_trap(f);
        return;
    }
    kbox_arch_rw_set_result(f, site + KBOX_SYSCALL_INSN_LEN, ret);
}

/* ---- the handler -------------------------------------------------------------------------- */

void kbox_trap_serve(struct kbox_req *req, const siginfo_t *si, kbox_ucontext_t *uc)
{
    const struct kbox_policy *p = kbox_rt.policy;
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

    if (kbox_vfork_begin(req, &ans, uc))
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
        kbox_rt_run(req->nr, ans.args);
        return;
    }
    case __NR_execve:
    case __NR_execveat:
        ret = kbox_run_execve(req, ans.args);
        kbox_uc_set_ret(uc, (uint64_t)kbox_dispatch_exit(p, req, &ans, ret, KBOX_RET_KNOWN));
        return;
    default:
        break;
    }
    if (kbox_sc_props(req->nr) & KBOX_SC_NEWTASK) {
        ret = kbox_run_clone(req, ans.args, si, uc);
        if (ret == 0) {
            /* The child of a fork-like clone: fix what the dispatcher must, trace nothing
             * (the parent's line reports the call, as strace does). */
            if (kbox_rt.launch->trap_backend == KBOX_TRAP_SUD)
                arm_sud();
            struct kbox_policy quiet = *p;
            quiet.trace = false;
            if (quiet.virtual_pid)
                req->tid = req->pid = (int)kbox_gettid();
            kbox_uc_set_ret(uc, (uint64_t)kbox_dispatch_exit(&quiet, req, &ans, 0, KBOX_RET_KNOWN));
            return;
        }
    } else {
        run_or_adjust(req, &ans, uc, &ret);
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
            kbox_rewrite_site(site);
        kbox_sig_leave_runtime(uc, nr, arg0, site);
        return;
    }
    if (nr == KBOX_NR_VFORK_DONE && kbox_uc_pc(uc) == (uint64_t)(uintptr_t)kbox_vfork_marker_end) {
        kbox_vfork_finish(uc);
        return;
    }
    if (nr == KBOX_NR_RW_RESUME && kbox_rewrite_owns(kbox_uc_pc(uc))) {
        rewrite_resume(uc);
        return;
    }
    uint64_t args[6];
    for (int i = 0; i < 6; i++)
        args[i] = kbox_uc_arg(uc, i);
    struct kbox_req req;
    kbox_req_init(&req, nr, args, kbox_uc_pc(uc), KBOX_TIER_TRAP, &kbox_rt.self_mem);
    kbox_trap_serve(&req, si, uc);
    if (kbox_rewrite_enabled() && !kbox_trap_needs_frame(nr))
        kbox_rewrite_site(site);
    kbox_sig_leave_runtime(uc, nr, req.args[0], site);
}

/* ---- installing the runtime ----------------------------------------------------------------- */

/* Syscall User Dispatch is a per-task setting that clone and fork do not pass on, so it
 * is armed again in every fork-like child (threads and vfork children are served through
 * the seccomp filter below until they exec). */
static int arm_sud(void)
{
    uint64_t lo = (uint64_t)(uintptr_t)__start_kbox_gate, hi = (uint64_t)(uintptr_t)__stop_kbox_gate;
    kbox_rt.sud_selector = SYSCALL_DISPATCH_FILTER_BLOCK;
    return (int)KSYS5(__NR_prctl, PR_SET_SYSCALL_USER_DISPATCH, PR_SYS_DISPATCH_ON, lo, hi - lo,
                      &kbox_rt.sud_selector);
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
        kbox_exit_group(rc == -ENOENT ? KBOX_EXIT_NOT_FOUND : KBOX_EXIT_CANNOT_EXEC);
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
        return -EFAULT;
    return __atomic_compare_exchange_n((uint32_t *)(uintptr_t)addr, &expect, desired, false,
                                       __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST) ? 1 : 0;
}

/* Loads the program into this process, arms the runtime and enters the guest. */
static __attribute__((noreturn)) void become_guest(struct kbox_launch *L)
{
    struct kbox_loaded img;
    load_or_exit(L, &img);
    kbox_rt.policy = L->policy;
    kbox_rt.launch = L;
    kbox_own_fd[0] = L->policy->trace ? L->policy->trace_fd : -1;
    kbox_own_fd[1] = L->shared_fd;
    kbox_own_fd[2] = kbox_view.base_fd;
    _Static_assert(KBOX_OWN_FDS == 3 + 2 * KBOX_VIEW_BINDS_MAX + 1, "two own descriptors per bind, a chroot's root");
    for (int b = 0; b < kbox_view_nbinds; b++) {
        kbox_own_fd[3 + 2 * b] = kbox_view_binds[b].fd;
        kbox_own_fd[4 + 2 * b] = kbox_view_binds[b].parent_fd;
    }
    kbox_own_fd[KBOX_OWN_FD_CHROOT] = kbox_view_chrooted() ? kbox_view.root_fd : -1;
    compute_fast_paths(L->policy);
    if (L->rewrite)
        kbox_rewrite_enable(kbox_trap_fast, KBOX_NR_MAX, kbox_own_fd);
    kbox_mem_init_self(&kbox_rt.self_mem);
    kbox_rt.self_mem.swap32 = self_swap32;
    if (L->rewrite && !L->no_promote && !img.interp_len) {
        /* A static program's libc is in its own text: its wrapper calls can be promoted. */
        struct kbox_map text;
        if (kbox_maps_find(img.main_entry, &text) == 0 && (text.prot & PROT_EXEC))
            kbox_rewrite_promote(text.lo, text.hi);
    }
    {
        struct kbox_buf g;
        kbox_buf_init(&g, kbox_rt.guest_exe, sizeof(kbox_rt.guest_exe));
        kbox_buf_puts(&g, img.exe_path ? img.exe_path : L->path);
    }
    if (kbox_signals_init(sigsys_handler) < 0 || install_trap_source(L) < 0)
        kbox_exit_group(KBOX_EXIT_INTERNAL);

    if (L->policy->trace) {
        /* strace's first line: the execve that started this image, which succeeded. */
        const uint64_t args[6] = { (uint64_t)(uintptr_t)L->path, (uint64_t)(uintptr_t)L->argv,
                                   (uint64_t)(uintptr_t)L->envp };
        struct kbox_req req;
        kbox_req_init(&req, __NR_execve, args, 0, KBOX_TIER_TRAP, &kbox_rt.self_mem);
        req.pid = (int)kbox_getpid();
        req.tid = (int)kbox_gettid();
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

    long child = kbox_fork_monitored();
    if (child < 0)
        return KBOX_EXIT_INTERNAL;
    if (child == 0)
        become_guest(L);
    return kbox_monitor_children((int)child);
}
