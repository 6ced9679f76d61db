/* The one request type every tier hands to the one dispatcher.
 *
 * A tier turns whatever the kernel gave it (a seccomp notification, a SIGSYS ucontext, a
 * rewritten call site's saved registers) into a kbox_req, asks the dispatcher for an
 * answer, carries the answer out, and reports the result back so the dispatcher can finish
 * (translate results, trace, count).  Nothing policy-specific lives in a tier.
 */
#ifndef KBOX_CORE_REQUEST_H
#define KBOX_CORE_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum kbox_tier {
    KBOX_TIER_SECCOMP = 0,   /* supervisor process, seccomp user notification */
    KBOX_TIER_TRAP = 1,      /* in-process SIGSYS handler (seccomp RET_TRAP or SUD) */
    KBOX_TIER_REWRITE = 2,   /* in-process, patched syscall site */
};

/* Which path served a call, for --stats. */
enum kbox_path {
    KBOX_PATH_NOTIFIED = 0,
    KBOX_PATH_TRAPPED = 1,
    KBOX_PATH_REWRITTEN = 2,
    KBOX_PATH_COUNT
};

/* How to reach the guest's memory.  In-process tiers read their own address space (through
 * process_vm_readv on themselves, so a bad guest pointer is an -EFAULT and not a crash in
 * the handler); the seccomp tier reads the target with process_vm_readv and re-checks
 * SECCOMP_IOCTL_NOTIF_ID_VALID after every read so a recycled pid is never trusted. */
struct kbox_mem {
    /* Both return the number of bytes copied (may be short at an unmapped page) or -errno. */
    long (*read)(const struct kbox_mem *m, uint64_t addr, void *buf, size_t len);
    long (*write)(const struct kbox_mem *m, uint64_t addr, const void *buf, size_t len);
    /* Replaces the aligned 32-bit word at addr with `desired` only if it still holds
     * `expect`, atomically: 1 if replaced, 0 if not, -errno.  NULL where the memory is
     * another process's (the seccomp tier), which cannot be updated atomically. */
    long (*swap32)(const struct kbox_mem *m, uint64_t addr, uint32_t expect, uint32_t desired);
    int pid;            /* target process (the caller's tgid for in-process tiers) */
    int notify_fd;      /* seccomp tier: listener fd, for ID_VALID */
    uint64_t notify_id; /* seccomp tier: notification id */
};

struct kbox_req {
    int nr;                 /* syscall number (native numbering of the build arch) */
    uint64_t args[6];
    uint64_t ip;            /* address just after the syscall instruction */
    enum kbox_tier tier;
    enum kbox_path path;
    int pid, tid;           /* real (host) ids of the caller */
    const struct kbox_mem *mem;
};

/* The one way a tier fills a request: the path follows from the tier, and the caller's ids
 * are left 0 for the tier to fill only when a policy needs them (a syscall each). */
static inline void kbox_req_init(struct kbox_req *r, int nr, const uint64_t args[6], uint64_t ip,
                                 enum kbox_tier tier, const struct kbox_mem *mem)
{
    r->nr = nr;
    for (int i = 0; i < 6; i++)
        r->args[i] = args[i];
    r->ip = ip;
    r->tier = tier;
    r->path = tier == KBOX_TIER_SECCOMP ? KBOX_PATH_NOTIFIED
              : tier == KBOX_TIER_TRAP  ? KBOX_PATH_TRAPPED
                                        : KBOX_PATH_REWRITTEN;
    r->pid = r->tid = 0;
    r->mem = mem;
}

enum kbox_verdict {
    KBOX_RUN = 0,      /* run the syscall (with args[] possibly rewritten, in-process tiers) */
    KBOX_RETURN = 1,   /* do not run it; the call returns `value` */
    KBOX_FAIL = 2,     /* do not run it; the call fails with errno `value` */
};

struct kbox_answer {
    enum kbox_verdict verdict;
    int64_t value;
    /* In-process tiers run the call with these arguments.  The dispatcher copies req->args
     * here and may change them (virtual pid translation, keeping SIGSYS unblockable); the
     * seccomp tier cannot change a CONTINUEd call's arguments, so the dispatcher never
     * relies on that there. */
    uint64_t args[6];
    /* Scratch the dispatcher may point args[] into (e.g. a sanitized sigset). */
    uint64_t scratch[16];
};

/* What the tier learned about the result. */
enum kbox_ret_state {
    KBOX_RET_KNOWN = 0,     /* `ret` is the raw kernel result (>= 0 or -errno) */
    KBOX_RET_UNKNOWN = 1,   /* the kernel ran it after we answered (seccomp CONTINUE) */
    KBOX_RET_NONE = 2,      /* it does not return (exit, exit_group, successful execve) */
};

#endif
