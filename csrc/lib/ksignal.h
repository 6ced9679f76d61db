/* The kernel's signal ABI as the raw rt_sigaction(2) sees it, for code without libc.
 *
 * The kernel's struct sigaction is not libc's: the handler, the flags, the restorer and a
 * 64-bit mask, in that order, on both x86_64 and arm64 (the asm-generic layout with
 * SA_RESTORER).  The restorer is where a handler returns: kbox_sigreturn (arch/<arch>/
 * gate.S), which makes rt_sigreturn from inside the gate so that the trap tier's filter
 * lets it through. */
#ifndef KBOX_LIB_KSIGNAL_H
#define KBOX_LIB_KSIGNAL_H

#include "lib/sys.h"
#include <stdint.h>
#include <linux/signal.h>

#ifndef SA_RESTORER
#define SA_RESTORER 0x04000000
#endif

#define KBOX_SIGBIT(sig) (1ULL << ((sig) - 1))

struct kbox_ksigaction {
    uint64_t handler;
    uint64_t flags;
    uint64_t restorer;
    uint64_t mask;
};

/* Gate entry (arch/<arch>/gate.S): rt_sigreturn on the current stack pointer. */
void kbox_sigreturn(void);

static inline long kbox_rt_sigaction(int sig, const struct kbox_ksigaction *act,
                                     struct kbox_ksigaction *old)
{
    return KSYS4(__NR_rt_sigaction, sig, act, old, 8);
}

/* A handler for kbox's own signals (the monitor, the supervisor): SA_RESTORER is ours. */
static inline long kbox_set_handler(int sig, void (*fn)(int), uint64_t flags)
{
    struct kbox_ksigaction act = { (uint64_t)(uintptr_t)fn, flags | SA_RESTORER,
                                   (uint64_t)(uintptr_t)kbox_sigreturn, 0 };
    return kbox_rt_sigaction(sig, &act, NULL);
}

#endif
