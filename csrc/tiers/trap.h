/* The in-process runtime shared by the trap and rewrite tiers. */
#ifndef KBOX_TIERS_TRAP_H
#define KBOX_TIERS_TRAP_H

#include "arch.h"
#include "core/request.h"
#include "trace/trace.h"

/* Serves one intercepted syscall described by `req`, with the interrupted context `uc`
 * (whose result register receives the outcome).  `si` is the SIGSYS siginfo, whose frame
 * a CLONE_VM child copies. */
void kbox_trap_serve(struct kbox_req *req, const siginfo_t *si, kbox_ucontext_t *uc);

/* Per syscall number: 1 if the call needs nothing but running it (no policy applies, no
 * runtime fix-up, no signal frame): both the SIGSYS handler and the rewrite trampolines
 * then skip the dispatcher after one table lookup. */
extern uint8_t kbox_trap_fast[];
#define KBOX_FAST_ANY 1             /* passthrough */
#define KBOX_FAST_UNLESS_OWN_FD 2   /* passthrough unless the first argument is kbox_own_fd[] */
/* The runtime's own descriptors (trace output, shared state; -1 if none), which the
 * program's close/dup2/close_range must not touch. */
extern int kbox_own_fd[2];

static inline bool kbox_trap_is_fast(int nr, uint64_t arg0)
{
    if ((unsigned)nr >= KBOX_NR_MAX || !kbox_trap_fast[nr])
        return false;
    return kbox_trap_fast[nr] == KBOX_FAST_ANY ||
           ((int)arg0 != kbox_own_fd[0] && (int)arg0 != kbox_own_fd[1]);
}

/* Calls that need the signal frame (served only on the trap path). */
bool kbox_trap_needs_frame(int nr);

/* Serves a call outside any signal handler (from a rewrite trampoline); returns the result. */
int64_t kbox_trap_serve_direct(struct kbox_req *req);

/* The runtime's view of the process's own memory (reads that cannot fault). */
const struct kbox_mem *kbox_trap_mem(void);

/* Builds the sigreturn frame a CLONE_VM child enters the guest from: a copy of the SIGSYS
 * frame on the child's kbox stack, resuming at the program's new stack pointer `newsp`
 * with the kernel's alternate stack set to the child's kbox stack; returns the stack
 * pointer for rt_sigreturn (arch/<arch>/launch/signals-<arch>.c). */
struct kbox_thread;
uint64_t kbox_arch_child_frame(const siginfo_t *si, const kbox_ucontext_t *uc, uint64_t newsp,
                               const struct kbox_thread *child);

/* Gate entry points (arch/<arch>/gate.S). */
void kbox_sigreturn(void);
long kbox_clone_gate(long nr, long a1, long a2, long a3, long a4, long a5, uint64_t child_frame);
__attribute__((noreturn)) void kbox_enter_guest(uint64_t entry, uint64_t sp);

#endif
