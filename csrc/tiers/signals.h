/* Signals in the in-process tiers (trap and rewrite): kbox's own stack per thread, the
 * guest's virtual alternate stack and handlers, and delivery exactly where the kernel
 * would deliver (see signals.c). */
#ifndef KBOX_TIERS_SIGNALS_H
#define KBOX_TIERS_SIGNALS_H

#include "arch.h"
#include "arch/interface.h"
#include "lib/ksignal.h"
#include <stdbool.h>
#include <stdint.h>

/* Every thread of the guest gets a kbox stack of KBOX_KSTACK_SIZE bytes, aligned to its
 * size, which the kernel knows as the thread's sigaltstack: the SIGSYS handler and the
 * signal wrapper (both SA_ONSTACK) always run there, never on a stack of the program's
 * (goroutine stacks are a few KiB).  Layout: a guard page, the stack, and this record in
 * the top page, so code running on the stack finds its thread's record from the stack
 * pointer alone (no TLS, no syscall).  256 KiB: the root view's path work nests several
 * PATH_MAX buffers (an AF_UNIX bind through a bind of the view: ~60 KiB deep, past what
 * 64 KiB held); only the pages touched cost memory. */
#define KBOX_KSTACK_SIZE (256 * 1024)
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
extern struct kbox_ksigaction kbox_guest_sigsys;
/* Delivers a SIGSYS that no trap caused (kill, tgkill) to the program's own handler. */
void kbox_sig_guest_sigsys(siginfo_t *si, kbox_ucontext_t *uc);
/* At the end of every SIGSYS the runtime served: restart the guest's call if a deferred
 * signal interrupted it (and its handler has SA_RESTART), deliver a pending SIGSYS. */
void kbox_sig_leave_runtime(kbox_ucontext_t *uc, int nr, uint64_t arg0, uint64_t site);

#endif
