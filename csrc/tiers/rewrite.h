/* The rewrite tier: syscall sites patched to branch into the interposer (see rewrite.c). */
#ifndef KBOX_TIERS_REWRITE_H
#define KBOX_TIERS_REWRITE_H

#include <stdbool.h>
#include <stdint.h>

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
void kbox_rewrite_slow(struct kbox_rw_frame *f, uint64_t site);
void kbox_rw_slow(struct kbox_rw_frame *f, uint64_t site);

/* A syscall number no kernel defines: a trampoline raises it (from outside the gate) to
 * hand a served call's result back through the trap path, whose frame restores the
 * program's signal mask, when a signal was deferred during the slow path. */
#define KBOX_NR_RW_RESUME 0x3ff1

/* Called by the trap handler after serving a trapped call from `site`: rewrites the site
 * if it can, so its next execution takes the trampoline. */
void kbox_rewrite_site(uint64_t site, int nr);
/* True if a trap at `pc` came from a placeholder of a two-step patch: the caller sets pc
 * back to the instruction start (*restart) and does nothing else. */
bool kbox_rewrite_interim(uint64_t pc, uint64_t *restart);
/* True if `pc` is inside a trampoline (a trap from there must not be rewritten). */
bool kbox_rewrite_owns(uint64_t pc);
/* Enables the tier in this process. */
struct kbox_policy;
void kbox_rewrite_enable(const struct kbox_policy *p);
/* Promotes the calls of a static program's syscall wrapper in [lo, hi) to trampolines
 * (aarch64 musl; see rewrite-aarch64.c); returns how many. */
int kbox_rewrite_promote(uint64_t lo, uint64_t hi);
bool kbox_rewrite_enabled(void);

/* ---- arch/<arch>/launch/rewrite-<arch>.c ---- */
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

#endif
