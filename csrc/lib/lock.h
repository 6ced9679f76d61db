/* The runtime's one lock: a futex word, 0 free and 1 taken.
 *
 * Used by in-process code that may run in any guest thread (rewriting a site, the vfork
 * slot), so it makes only raw syscalls through the gate and never touches TLS.  Waiters
 * sleep in FUTEX_WAIT; an unlock always wakes one (contention is rare: the holders are
 * short and run with signals blocked where it matters). */
#ifndef KBOX_LIB_LOCK_H
#define KBOX_LIB_LOCK_H

#include "lib/sys.h"
#include <stdbool.h>
#include <stdint.h>
#include <linux/futex.h>

static inline bool kbox_trylock(int32_t *word)
{
    int32_t zero = 0;
    return __atomic_compare_exchange_n(word, &zero, 1, false, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED);
}

/* Sleeps until the word is released; returns when it was (the caller tries again). */
static inline void kbox_lock_wait(int32_t *word)
{
    KSYS6(__NR_futex, word, FUTEX_WAIT, 1, NULL, NULL, 0);
}

static inline void kbox_lock(int32_t *word)
{
    while (!kbox_trylock(word))
        kbox_lock_wait(word);
}

static inline void kbox_unlock(int32_t *word)
{
    __atomic_store_n(word, 0, __ATOMIC_RELEASE);
    KSYS6(__NR_futex, word, FUTEX_WAKE, 1, NULL, NULL, 0);
}

#endif
