/* The contract between the tiers (csrc/tiers/) and each architecture's launch code
 * (csrc/arch/<arch>/launch/): what the arch code implements for the in-process tiers, and
 * the little it uses of theirs (the passthrough table its trampolines read, the rewrite
 * slow path they call).  Arch code includes this and lib/ headers, never a tiers/ header,
 * so the architecture sits at the bottom.  Shared with the .S files: constants outside
 * __ASSEMBLER__. */
#ifndef KBOX_ARCH_INTERFACE_H
#define KBOX_ARCH_INTERFACE_H

/* Syscall numbers no kernel defines, raised from outside the gate so that the trap path
 * sees them.  KBOX_NR_VFORK_DONE: from kbox_vfork_marker once a vfork made from
 * kbox_vfork_stub has returned (in the child, and in the parent).  KBOX_NR_RW_RESUME: a
 * trampoline hands a served call's result back through the trap path, whose frame
 * restores the program's signal mask, when a signal was deferred during the slow path. */
#define KBOX_NR_VFORK_DONE 0x3ff0
#define KBOX_NR_RW_RESUME 0x3ff1

/* Values of kbox_trap_fast[nr]: 0 the slow path (the dispatcher or the runtime has work). */
#define KBOX_FAST_ANY 1             /* passthrough */
#define KBOX_FAST_UNLESS_OWN_FD 2   /* passthrough unless the first argument is kbox_own_fd[] */

#include "arch/sysent.h"

#ifndef __ASSEMBLER__
#include "arch.h"
#include <stdbool.h>
#include <stdint.h>

/* ---- provided by the tiers ---------------------------------------------------------- */

/* Per syscall number, KBOX_FAST_*: whether the call needs nothing but running it (no policy
 * applies, no runtime fix-up, no signal frame).  The SIGSYS handler and the trampolines
 * skip the dispatcher after one lookup; aarch64's trampoline entry reads it in assembly. */
extern uint8_t kbox_trap_fast[KBOX_NR_MAX];
/* The runtime's own descriptors (trace output, shared state, the view's root, then two per
 * bind of the view, then a chroot's root; -1 if none), which the program's
 * close/dup2/close_range must not touch.
 * The trampolines compare only the first two: while the third is in use, close never takes
 * the fast path. */
#define KBOX_OWN_FDS (3 + 2 * 16 + 1)
#define KBOX_OWN_FD_CHROOT (KBOX_OWN_FDS - 1)
extern int kbox_own_fd[KBOX_OWN_FDS];

static inline bool kbox_trap_is_fast(int nr, uint64_t arg0)
{
    if ((unsigned)nr >= KBOX_NR_MAX || !kbox_trap_fast[nr])
        return false;
    return kbox_trap_fast[nr] == KBOX_FAST_ANY ||
           ((int)arg0 != kbox_own_fd[0] && (int)arg0 != kbox_own_fd[1]);
}

/* Registers a trampoline saves, in the order the arch template stores them; the
 * dispatcher reads the call from here and writes the result back. */
struct kbox_rw_frame;

/* What the arch code decided about one site. */
struct kbox_rw_plan {
    uint64_t site;          /* address of the syscall instruction */
    uint64_t patch_at;      /* first byte the patch overwrites */
    uint64_t resume;        /* where the guest continues after the call */
    uint8_t reloc[48];      /* instruction bytes the trampoline runs first (x86_64: the
                               relocated instruction; aarch64 promoted calls: the wrapper's
                               register shuffle and return address) */
    uint32_t reloc_len;
    uint64_t reach;         /* the trampoline must lie within +-reach of patch_at */
    uint64_t slot;          /* x86_64 short sites: the padding that holds the long jump */
};

/* The slow path of a trampoline (anything the passthrough table does not let through),
 * entered through kbox_rw_slow (arch/<arch>/launch/sigstack.S) on the thread's kbox stack
 * with the guest's saved registers. */
void kbox_rewrite_slow(struct kbox_rw_frame *f, uint64_t site); /* tiers/trap.c */
void kbox_rw_slow(struct kbox_rw_frame *f, uint64_t site);       /* arch */

/* The launcher's C entry point (launch/main.c), which _start (launch/entry.S) calls with
 * the kernel's initial stack. */
__attribute__((noreturn)) void kbox_main(uint64_t *sp);

/* ---- provided by arch/<arch>/: the rewrite tier ------------------------------------ */
/* Hands the arch code the passthrough table (kbox_trap_fast: 1 = the dispatcher has
 * nothing to do for this number), for trampolines that serve such calls without C. */
void kbox_arch_rw_enable(const uint8_t *fast, int n, const int own_fd[2]);
int kbox_arch_rw_plan(uint64_t site, struct kbox_rw_plan *plan);
/* Wrapper calls that can branch to a trampoline themselves: the code [lo, lo+len) is a copy
 * of what is mapped at `at`; fills up to `max` plans, returns how many (0 where the arch
 * has none). */
int kbox_arch_rw_promotions(const uint8_t *code, uint64_t at, uint64_t len,
                            struct kbox_rw_plan *plans, int max);
/* Size of one trampoline, and writing it at `dst` (which will execute at `at`). */
uint64_t kbox_arch_rw_tramp_size(const struct kbox_rw_plan *plan);
void kbox_arch_rw_emit(uint8_t *dst, uint64_t at, const struct kbox_rw_plan *plan);
/* The stores that turn the site into a branch to `tramp`, applied in order; each is an
 * aligned window [win, win+len) stored atomically.  *interim is set when the first store
 * leaves a trapping placeholder at plan->patch_at (see rewrite-x86_64.c): a trap from there
 * must simply be restarted.  Returns the number of steps, or -1. */
struct kbox_rw_step { uint64_t win; uint8_t bytes[16]; uint32_t len; };
int kbox_arch_rw_patch(const struct kbox_rw_plan *plan, uint64_t tramp,
                       struct kbox_rw_step steps[3], bool *interim);
/* Address after the placeholder instruction of a two-step patch at `patch_at`. */
uint64_t kbox_arch_rw_interim_resume(uint64_t patch_at);
/* Atomic store of a window of len (4, 8 or 16) bytes. */
void kbox_arch_rw_store(uint64_t win, const uint8_t *bytes, uint32_t len);
/* The syscall number, arguments and result slots of a frame. */
int kbox_arch_rw_nr(const struct kbox_rw_frame *f);
uint64_t kbox_arch_rw_arg(const struct kbox_rw_frame *f, int i);
void kbox_arch_rw_set_result(struct kbox_rw_frame *f, uint64_t site_resume, int64_t ret);
void kbox_arch_rw_set_trap(struct kbox_rw_frame *f);
void kbox_arch_rw_set_nr(struct kbox_rw_frame *f, int nr);

/* ---- provided by arch/<arch>/: signal frames as the kernel lays them out --------------- */
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

/* Builds the sigreturn frame a CLONE_VM child enters the guest from: a copy of the SIGSYS
 * frame on the child's kbox stack `kstack`, resuming at the program's new stack pointer
 * `newsp` with the kernel's alternate stack set to `kstack`; returns the stack pointer for
 * rt_sigreturn. */
uint64_t kbox_arch_child_frame(const siginfo_t *si, const kbox_ucontext_t *uc, uint64_t newsp,
                               stack_t kstack);
/* The restorer for a program handler installed without SA_RESTORER (sigstack.S). */
void kbox_guest_restorer(void);

/* ---- provided by arch/<arch>/: gate and vfork entry points --------------------------- */
long kbox_clone_gate(long nr, long a1, long a2, long a3, long a4, long a5, uint64_t child_frame);
__attribute__((noreturn)) void kbox_enter_guest(uint64_t entry, uint64_t sp);
/* vfork.S: the stub makes a prepared vfork from the gate; the marker reports its return
 * (the result: kbox_uc_vfork_result, arch.h). */
void kbox_vfork_stub(void);
void kbox_vfork_marker(void);
extern const char kbox_vfork_marker_end[];
#endif /* __ASSEMBLER__ */

#endif
