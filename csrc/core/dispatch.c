/* The dispatcher: one decision procedure for every tier.
 *
 * A tier calls kbox_dispatch_enter() with the request, carries out the answer, and calls
 * kbox_dispatch_exit() with the outcome.  Policies never look at which tier asked, except
 * where a tier physically cannot do something (the seccomp tier cannot change the
 * arguments or the result of a call it lets the kernel run); those limits are checked when
 * the run starts, not silently here.
 */
#include "arch.h"
#include "arch/sysent.h"
#include "core/ids.h"
#include "core/policy.h"
#include "lib/buf.h"
#include "lib/str.h"
#include "lib/sys.h"
#include <asm/unistd.h>
#include <linux/errno.h>
#include <linux/mman.h>
#include <linux/sched.h>
#include <linux/wait.h>


static bool in_process(const struct kbox_req *req) { return req->tier != KBOX_TIER_SECCOMP; }

int kbox_guest_pid(const struct kbox_policy *p, int real)
{
    if (!p->virtual_pid || !p->shared)
        return real;
    return kbox_vpid_lookup(p->shared, real);
}

/* ---- virtual pids ------------------------------------------------------------------- */

/* pid argument in kill()/wait4() convention: >0 a process, <-1 a process group, 0 and -1
 * special.  Returns false if the virtual id names nothing in the run. */
static bool pid_in(const struct kbox_policy *p, uint64_t *arg, bool group_sign)
{
    int v = (int)*arg;
    if (v == 0 || v == -1)
        return true;
    int mag = v < 0 ? -v : v;
    if (v < 0 && !group_sign)
        return true; /* not a pid-shaped argument */
    int real = kbox_vpid_real(p->shared, mag);
    if (!real)
        return false;
    *arg = (uint64_t)(int64_t)(v < 0 ? -real : real);
    return true;
}

static int64_t pid_out(const struct kbox_policy *p, int64_t ret)
{
    if (ret <= 0)
        return ret;
    return kbox_vpid_lookup(p->shared, (int)ret);
}

/* Virtual ids in, on the way to the kernel: every argument the syscall table marks as a pid
 * (KA_PID: 0 is the caller) or a pid-or-group (KA_PIDSPEC: kill, wait4).  getpid/gettid
 * are answered here; waitid's id is a pid only for P_PID and P_PGID. */
static void vpid_enter(const struct kbox_policy *p, const struct kbox_req *req,
                       struct kbox_answer *ans)
{
    struct kbox_shared *s = p->shared;
    if (req->nr == __NR_getpid || req->nr == __NR_gettid) {
        ans->verdict = KBOX_RETURN;
        ans->value = kbox_vpid_assign(s, req->nr == __NR_getpid ? req->pid : req->tid);
        return;
    }
    if (req->nr == __NR_waitid) {
        if ((ans->args[0] == P_PID || ans->args[0] == P_PGID) && !pid_in(p, &ans->args[1], false))
            goto esrch;
        return;
    }
    const struct kbox_sysent *e = kbox_sysent(req->nr);
    if (!e)
        return;
    for (int i = 0; i < e->nargs; i++) {
        if ((e->arg[i] == KA_PID || e->arg[i] == KA_PIDSPEC) &&
            !pid_in(p, &ans->args[i], e->arg[i] == KA_PIDSPEC))
            goto esrch;
    }
    return;
esrch:
    ans->verdict = KBOX_FAIL;
    ans->value = ESRCH;
}

/* Writes a virtual id over the real one the kernel stored in guest memory
 * (CLONE_PARENT_SETTID, CLONE_CHILD_SETTID): glibc keeps a thread's tid there and later
 * passes it to tgkill.  Only while the word still holds the real id: a thread that has
 * already exited had it cleared to 0 by CLONE_CHILD_CLEARTID, and pthread_join waits for
 * that 0 — writing the id back would make it wait forever. */
static void rewrite_tid_in_memory(const struct kbox_req *req, uint64_t addr, int32_t real,
                                  int32_t virt)
{
    if (!addr || !req->mem)
        return;
    if (req->mem->swap32 && req->mem->swap32(req->mem, addr, (uint32_t)real, (uint32_t)virt) >= 0)
        return;
    if (req->mem->write)
        req->mem->write(req->mem, addr, &virt, sizeof(virt));
}

static void clone_flags_and_tids(const struct kbox_req *req, uint64_t *flags, uint64_t *ptid,
                                 uint64_t *ctid)
{
    *flags = *ptid = *ctid = 0;
    switch (req->nr) {
    case __NR_clone:
        *flags = req->args[0];
        *ptid = req->args[2];
        /* x86_64 passes (flags, stack, ptid, ctid, tls); aarch64 (flags, stack, ptid, tls,
         * ctid): the arch header says which slot holds ctid. */
        *ctid = req->args[KBOX_CLONE_CTID_ARG];
        break;
    case __NR_clone3: {
        struct clone_args ca;
        memset(&ca, 0, sizeof(ca));
        if (req->mem && req->mem->read(req->mem, req->args[0], &ca, sizeof(ca)) >= 16) {
            *flags = ca.flags;
            *ptid = ca.parent_tid;
            *ctid = ca.child_tid;
        }
        break;
    }
    default:
        break;
    }
}

/* Virtual ids out: a new task's id (and the tid words clone wrote), and every result the
 * syscall table types as a pid. */
static int64_t vpid_exit(const struct kbox_policy *p, const struct kbox_req *req, int64_t ret)
{
    struct kbox_shared *s = p->shared;
    if (kbox_sc_props(req->nr) & KBOX_SC_NEWTASK) {
        uint64_t flags, ptid, ctid;
        clone_flags_and_tids(req, &flags, &ptid, &ctid);
        if (ret > 0) {
            int v = kbox_vpid_assign(s, (int)ret);
            if (flags & CLONE_PARENT_SETTID)
                rewrite_tid_in_memory(req, ptid, (int32_t)ret, v);
            /* A CLONE_VM child shares our memory: its CHILD_SETTID word is ours to fix. */
            if ((flags & CLONE_CHILD_SETTID) && (flags & CLONE_VM))
                rewrite_tid_in_memory(req, ctid, (int32_t)ret, v);
            return v;
        }
        if (ret == 0 && (flags & CLONE_CHILD_SETTID)) {
            int real = (int)KSYS0(__NR_gettid);
            rewrite_tid_in_memory(req, ctid, real, kbox_vpid_assign(s, real));
        }
        return ret;
    }
    switch (req->nr) {
    case __NR_set_tid_address:
        return kbox_vpid_assign(s, req->tid);
    case __NR_waitid:
        if (ret == 0 && req->args[2] && req->mem && req->mem->write) {
            /* siginfo_t: si_pid is the int at offset 16 on both architectures. */
            int32_t real;
            if (req->mem->read(req->mem, req->args[2] + 16, &real, 4) == 4 && real > 0) {
                int32_t v = kbox_vpid_lookup(s, real);
                req->mem->write(req->mem, req->args[2] + 16, &v, 4);
            }
        }
        return ret;
    default: {
        const struct kbox_sysent *e = kbox_sysent(req->nr);
        return e && e->ret == KA_PID ? pid_out(p, ret) : ret;
    }
    }
}

/* ---- W^X ------------------------------------------------------------------------------- */

static bool wants_wx(const struct kbox_req *req)
{
    switch (req->nr) {
    case __NR_mmap:            /* (addr, len, prot, ...) */
    case __NR_mprotect:        /* (addr, len, prot) */
    case __NR_pkey_mprotect:   /* (addr, len, prot, pkey) */
        return (req->args[2] & PROT_WRITE) && (req->args[2] & PROT_EXEC);
    default:
        return false;
    }
}

/* ---- the dispatcher ------------------------------------------------------------------ */

bool kbox_dispatch_passthrough(const struct kbox_policy *p, int nr)
{
    if (nr < 0 || nr >= KBOX_NR_MAX || p->trace || p->stats || p->virtual_pid || p->deny_errno[nr])
        return false;
    if (p->root_id ? kbox_ids_touches(nr) : p->root_record && kbox_ids_file_call(nr))
        return false;
    struct kbox_req probe = { .nr = nr, .tier = KBOX_TIER_REWRITE };
    probe.args[2] = PROT_WRITE | PROT_EXEC; /* the one argument-dependent rule: W^X */
    return !(p->enforce_wx && wants_wx(&probe));
}


void kbox_dispatch_enter(const struct kbox_policy *p, const struct kbox_req *req,
                         struct kbox_answer *ans)
{
    ans->verdict = KBOX_RUN;
    ans->value = 0;
    memcpy(ans->args, req->args, sizeof(ans->args));

    if (p->stats && p->shared && req->nr >= 0 && req->nr < KBOX_NR_MAX)
        __atomic_add_fetch(&p->shared->counts[req->nr][req->path], 1, __ATOMIC_RELAXED);

    if (req->nr >= 0 && req->nr < KBOX_NR_MAX && p->deny_errno[req->nr]) {
        ans->verdict = KBOX_FAIL;
        ans->value = p->deny_errno[req->nr];
        return;
    }
    if (p->enforce_wx && in_process(req) && wants_wx(req)) {
        ans->verdict = KBOX_FAIL;
        ans->value = EACCES;
        return;
    }
    if (p->virtual_pid && p->shared)
        vpid_enter(p, req, ans);
    if (p->root_id && p->shared && ans->verdict == KBOX_RUN)
        kbox_ids_enter(&p->shared->ids, req, ans);
}

void kbox_dispatch_trace(const struct kbox_policy *p, const struct kbox_req *req, int64_t ret,
                         enum kbox_ret_state state)
{
    char line[4096];
    struct kbox_buf b;
    kbox_buf_init(&b, line, sizeof(line));
    kbox_trace_format(&b, &p->trace_opts, req, ret, state, kbox_guest_pid(p, req->pid),
                      kbox_guest_pid(p, req->tid));
    if (b.len)
        kbox_write(p->trace_fd, line, b.len);
}

int64_t kbox_dispatch_exit(const struct kbox_policy *p, const struct kbox_req *req,
                           const struct kbox_answer *ans, int64_t ret, enum kbox_ret_state state)
{
    if (state == KBOX_RET_KNOWN && ans->verdict == KBOX_RUN && p->virtual_pid && p->shared &&
        in_process(req))
        ret = vpid_exit(p, req, ret);
    if (p->trace)
        kbox_dispatch_trace(p, req, ret, state);
    return ret;
}
