/* The in-process runtime's per-process state, shared by the files of the trap and rewrite
 * tiers: trap.c serves calls, clone.c starts tasks, exec.c runs execve, fixups.c adjusts
 * the calls the runtime must see through.  Written before the program starts (and the
 * SUD selector by the runtime itself); threads share it, fork copies it, exec rebuilds it. */
#ifndef KBOX_TIERS_RUNTIME_H
#define KBOX_TIERS_RUNTIME_H

#include "arch.h"
#include "arch/interface.h"
#include "core/policy.h"
#include "core/request.h"
#include "tiers/launch.h"
#include "lib/sys.h"

struct kbox_runtime {
    struct kbox_policy *policy;
    struct kbox_mem self_mem;       /* the program's memory: this process, reads that cannot fault */
    const struct kbox_launch *launch;
    char guest_exe[4096];           /* what /proc/self/exe should name: the program, not kbox */
    volatile uint8_t sud_selector;  /* Syscall User Dispatch's selector byte */
};
extern struct kbox_runtime kbox_rt;

static inline bool kbox_is_own_fd(long fd)
{
    for (int i = 0; i < KBOX_OWN_FDS; i++)
        if (fd >= 0 && fd == kbox_own_fd[i])
            return true;
    return false;
}

/* Runs `nr` with the (dispatcher's) arguments `a` through the gate. */
static inline int64_t kbox_rt_run(long nr, const uint64_t *a)
{
    return kbox_syscall6(nr, (long)a[0], (long)a[1], (long)a[2], (long)a[3], (long)a[4], (long)a[5]);
}

/* Calls that need the interrupted context: served on the trap path only. */
static inline bool kbox_trap_needs_frame(int nr) { return kbox_sc_props(nr) & KBOX_SC_FRAME; }

#endif
