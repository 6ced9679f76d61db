/* The rewrite tier: syscall sites patched to branch into the interposer (see rewrite.c). */
#ifndef KBOX_TIERS_REWRITE_H
#define KBOX_TIERS_REWRITE_H

#include "arch/interface.h"
#include <stdbool.h>
#include <stdint.h>

/* Called by the trap handler after serving a trapped call from `site` (never one that
 * needs the signal frame): rewrites the site if it can, so its next execution takes the
 * trampoline. */
void kbox_rewrite_site(uint64_t site);
/* True if a trap at `pc` came from a placeholder of a two-step patch: the caller sets pc
 * back to the instruction start (*restart) and does nothing else. */
bool kbox_rewrite_interim(uint64_t pc, uint64_t *restart);
/* True if `pc` is inside a trampoline (a trap from there must not be rewritten). */
bool kbox_rewrite_owns(uint64_t pc);
/* Enables the tier in this process, with the runtime's passthrough table (KBOX_FAST_*, n
 * entries) and its own descriptors, which the arch's trampolines consult. */
void kbox_rewrite_enable(const uint8_t *fast, int n, const int own_fd[2]);
/* Promotes the calls of a static program's syscall wrapper in [lo, hi) to trampolines
 * (aarch64 musl; see rewrite-aarch64.c); returns how many. */
int kbox_rewrite_promote(uint64_t lo, uint64_t hi);
bool kbox_rewrite_enabled(void);

#endif
