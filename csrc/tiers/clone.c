/* Starting tasks from the in-process runtime: vfork, and clone of threads and processes.
 *
 * - clone with CLONE_VM and a new stack (threads, posix_spawn): the child must not return
 *   into the SIGSYS handler, whose frame lives on the parent's kbox stack.  The parent makes
 *   the child's kbox stack first, and builds the child's frame there (a copy of the SIGSYS
 *   frame); the child rt_sigreturns from the gate straight into the program
 *   (kbox_clone_gate, arch/<arch>/launch/signals-<arch>.c).  Fork-like clones just return
 *   through their own copy of the handler.
 * - vfork (CLONE_VM without a new stack) is made from outside the handler (below), or, when
 *   that would deadlock, runs without CLONE_VM: the child would otherwise run on, and
 *   overwrite, the very stack that holds the parent's handler frame.  CLONE_VFORK's
 *   suspension of the parent is kept either way.
 */
#include "tiers/clone.h"
#include "tiers/runtime.h"
#include "tiers/signals.h"
#include "lib/lock.h"
#include "lib/str.h"
#include <linux/errno.h>
#include <linux/sched.h>
#include <linux/signal.h>

/* ---- vfork ------------------------------------------------------------------------------ */

/* A vfork child runs on its parent's stack, below the parent's stack pointer: exactly where
 * the parent's SIGSYS frame would be if the vfork were made inside the handler.  So the
 * handler only prepares: it returns to kbox_vfork_stub (arch/<arch>/launch/vfork.S) with
 * the guest's registers, the stub makes the call from the gate, and a marker syscall from
 * outside the gate brings each side back here once, to restore the resume address and, in
 * the parent, finish the call (trace, virtual pid).  One vfork at a time per process: the
 * slot below is taken until the parent has resumed (the parent is suspended meanwhile, and
 * other threads that vfork wait on the futex). */
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
        if (a[1] < 64 || kbox_rt.self_mem.read(&kbox_rt.self_mem, a[0], &ca, 64) != 64)
            return false;
        flags = ca.flags;
        stack = ca.stack ? ca.stack + ca.stack_size : 0;
    } else {
        return false;
    }
    return (flags & CLONE_VM) && (flags & CLONE_VFORK) && (!stack || stack == sp);
}

/* Returns false if the call is no vfork, or if the vfork must instead run as a fork (we are
 * ourselves a vfork child of the slot's holder, which waits for us: waiting for it would
 * deadlock). */
bool kbox_vfork_begin(const struct kbox_req *req, const struct kbox_answer *ans,
                      kbox_ucontext_t *uc)
{
    if (!is_vfork_like(req, ans->args, kbox_uc_sp(uc)))
        return false;
    int tgid = (int)kbox_getpid();
    while (!kbox_trylock(&vf.lock)) {
        if (__atomic_load_n(&vf.owner_tgid, __ATOMIC_RELAXED) != tgid)
            return false;
        kbox_lock_wait(&vf.lock);
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

void kbox_vfork_finish(kbox_ucontext_t *uc)
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
    kbox_unlock(&vf.lock);
    kbox_uc_set_ret(uc, (uint64_t)kbox_dispatch_exit(kbox_rt.policy, &req, &ans, ret, KBOX_RET_KNOWN));
}

/* ---- clone ------------------------------------------------------------------------------ */

int64_t kbox_run_clone(const struct kbox_req *req, const uint64_t *args, const siginfo_t *si,
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
        if (size < 64 || kbox_rt.self_mem.read(&kbox_rt.self_mem, a[0], &ca, size) != (long)size)
            return a[1] < 64 ? -EINVAL : -EFAULT;
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
                return -EINVAL; /* two threads on one stack: not supported in-process */
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
                return -ENOMEM;
            child_frame = kbox_arch_child_frame(si, uc, newsp, kbox_thread_kstack(child));
        }
    }
    int64_t r = kbox_clone_gate(nr, (long)a[0], (long)a[1], (long)a[2], (long)a[3], (long)a[4], child_frame);
    /* A vfork child is done with its stack once we run again (it has exec'd or exited). */
    if (child && (r < 0 || (flags & CLONE_VFORK)))
        kbox_thread_free(child);
    return r;
}

