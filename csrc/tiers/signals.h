/* Signals in the in-process tiers (trap and rewrite): kbox's own stack per thread, the
 * guest's virtual alternate stack and handlers, and delivery exactly where the kernel
 * would deliver (see signals.c). */
#ifndef KBOX_TIERS_SIGNALS_H
#define KBOX_TIERS_SIGNALS_H

#include "arch.h"
#include <stdbool.h>
#include <stdint.h>

/* Every thread of the guest gets a kbox stack of KBOX_KSTACK_SIZE bytes, aligned to its
 * size, which the kernel knows as the thread's sigaltstack: the SIGSYS handler and the
 * signal wrapper (both SA_ONSTACK) always run there, never on a stack of the program's
 * (goroutine stacks are a few KiB).  Layout: a guard page, the stack, and this record in
 * the top page, so code running on the stack finds its thread's record from the stack
 * pointer alone (no TLS, no syscall). */
#define KBOX_KSTACK_SIZE (64 * 1024)
#define KBOX_KSTACK_GUARD 4096
#define KBOX_KSTACK_RECORD 4096

struct kbox_thread {
    uint64_t magic;             /* KBOX_THREAD_MAGIC ^ base: proves sp was on a kbox stack */
    uint64_t base;              /* the aligned mapping */
    stack_t guest_ss;           /* the program's own sigaltstack, as the kernel would hold it */
    uint64_t saved_mask;        /* the program's mask while a deferred signal is held blocked */
    uint8_t deferred;           /* a signal arrived inside the runtime and waits for the guest */
    uint8_t restart;            /* ... and it interrupted a call the guest must restart */
    uint8_t sigsys_blocked;     /* the program's view of SIGSYS in its mask (never the kernel's) */
    uint8_t sigsys_pending;     /* a non-trap SIGSYS waiting for the program to unblock it */
    uint8_t free_on_exit;       /* exit(2) of this thread unmaps the stack (not vfork children) */
    siginfo_t sigsys_info;      /* the pending SIGSYS's siginfo */
    /* The rewrite slow path hands a result back through the trap path when a signal was
     * deferred during it (see kbox_rewrite_slow): where to resume, with what. */
    uint64_t resume_site, resume_ret, resume_nr, resume_arg0;
    uint8_t resume_restart;     /* run the program's call again rather than return resume_ret */
};

/* The record of the thread running this code, or NULL when not on a kbox stack. */
struct kbox_thread *kbox_thread_self(void);
/* A new kbox stack and record, initialised from `parent` as clone(flags) would (the
 * alternate stack is kept only for CLONE_VFORK); NULL when out of memory. */
struct kbox_thread *kbox_thread_new(const struct kbox_thread *parent, uint64_t clone_flags);
void kbox_thread_free(struct kbox_thread *t);
/* Drops `t` from the registry of kbox stacks (before its own thread unmaps it at exit). */
void kbox_thread_forget(struct kbox_thread *t);
/* The stack the kernel should hold as this thread's sigaltstack. */
stack_t kbox_thread_kstack(const struct kbox_thread *t);

/* Sets up the calling (first) thread's kbox stack and registers `sigsys_handler` on it;
 * returns 0 or -errno. */
int kbox_signals_init(void (*sigsys_handler)(int, siginfo_t *, void *));

/* The guest's rt_sigaction / sigaltstack, emulated (results are returned values). */
int64_t kbox_sig_action(int sig, uint64_t act_addr, uint64_t oact_addr, uint64_t size);
int64_t kbox_sig_altstack(uint64_t ss_addr, uint64_t old_addr, uint64_t guest_sp);
/* Called before replaying the guest's rt_sigreturn whose frame lies at `sp`: the frame's
 * alternate stack becomes the guest's view again, and the kernel keeps kbox's. */
void kbox_sig_before_sigreturn(uint64_t sp);

/* The program's SIGSYS disposition (served virtually: the kernel's is kbox's handler). */
struct kbox_ksigaction {
    uint64_t handler;
    uint64_t flags;
    uint64_t restorer;
    uint64_t mask;
};
extern struct kbox_ksigaction kbox_guest_sigsys;
/* Delivers a SIGSYS that no trap caused (kill, tgkill) to the program's own handler. */
void kbox_sig_guest_sigsys(siginfo_t *si, kbox_ucontext_t *uc);
/* At the end of every SIGSYS the runtime served: restart the guest's call if a deferred
 * signal interrupted it (and its handler has SA_RESTART), deliver a pending SIGSYS. */
void kbox_sig_leave_runtime(kbox_ucontext_t *uc, int nr, uint64_t arg0, uint64_t site);

#define KBOX_SIGBIT(sig) (1ULL << ((sig) - 1))

/* ---- arch/<arch>/launch/signals-<arch>.c: signal frames as the kernel lays them out ---- */
struct kbox_frame_out {
    uint64_t sp;            /* the handler's stack pointer at entry */
    kbox_ucontext_t *uc;    /* the frame's ucontext (what rt_sigreturn restores) */
    siginfo_t *si;          /* the frame's siginfo */
    uint64_t fp;            /* aarch64: the frame record x29 points at */
};
/* Copies the frame the kernel built (si and uc, with their FP/vector state) to a new frame
 * below `top`, laid out as the kernel would lay it out there. */
void kbox_arch_push_frame(const siginfo_t *si, const kbox_ucontext_t *uc, uint64_t top,
                          struct kbox_frame_out *out);
/* Makes `uc` (about to be returned to) enter `handler` on frame `fr`. */
void kbox_arch_enter_handler(kbox_ucontext_t *uc, const struct kbox_frame_out *fr, uint64_t handler,
                             int sig, uint64_t restorer);
/* The ucontext rt_sigreturn reads when the program calls it with stack pointer `sp`. */
kbox_ucontext_t *kbox_arch_sigreturn_uc(uint64_t sp);
/* A context interrupted inside the rewrite tier's assembly paths is moved to the program's
 * own view: at the syscall site (or just past it) with the program's registers and stack
 * pointer; a restart the kernel set up becomes EINTR when the handler lacks SA_RESTART. */
void kbox_arch_sig_adjust(kbox_ucontext_t *uc, bool sa_restart);
/* True if `uc` stopped at a runtime syscall instruction that the kernel set up to restart. */
bool kbox_arch_at_restarted_syscall(const kbox_ucontext_t *uc);
/* Ends that syscall with -EINTR instead. */
void kbox_arch_end_syscall_eintr(kbox_ucontext_t *uc);
/* Sets `uc` to execute the program's syscall instruction at `site` again (number `nr`,
 * first argument `arg0`), as the kernel's restart does. */
void kbox_arch_restart_at(kbox_ucontext_t *uc, uint64_t site, uint64_t nr, uint64_t arg0);
/* Sets `uc` to continue at `pc` as after a syscall that returned `ret`. */
void kbox_arch_syscall_return(kbox_ucontext_t *uc, uint64_t pc, uint64_t ret);
/* noreturn: blocks every signal, unmaps [stack, stack+len) and exits the thread, touching
 * no memory after the unmap (a thread's last act: its kbox stack is what it runs on). */
__attribute__((noreturn)) void kbox_exit_unmap(uint64_t stack, uint64_t len, int code);

#endif
