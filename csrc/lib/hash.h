/* The runtime's one hash: open addressing with linear probing over a power-of-two table;
 * the start slot is Fibonacci hashing (the top bits of key * 2^64/phi), which spreads keys
 * that share their low bits (page-aligned stack bases, 4-byte-aligned sites).
 *
 * kbox_u64set is a lock-free set of nonzero 64-bit keys (rewritten sites, kbox stack
 * bases): 0 marks a slot never used, KBOX_U64SET_FREED one whose key was removed (probing
 * goes on past it; an insert may reuse it).  The virtual-pid map (core/shared.c) probes
 * the same way over its own pair slots. */
#ifndef KBOX_LIB_HASH_H
#define KBOX_LIB_HASH_H

#include <stdbool.h>
#include <stdint.h>

/* Start slot of `key` in a table of `size` (a power of two) slots. */
static inline uint32_t kbox_hash_slot(uint64_t key, uint32_t size)
{
    if (size < 2)
        return 0;
    return (uint32_t)((key * 0x9e3779b97f4a7c15ULL) >> (64 - __builtin_ctz(size)));
}

#define KBOX_U64SET_FREED 1ULL

/* The slot holding `key`, or (insert) the slot it now occupies; NULL if absent (or, on
 * insert, the table is full).  Keys are nonzero and never KBOX_U64SET_FREED. */
static inline uint64_t *kbox_u64set_slot(uint64_t *table, uint32_t size, uint64_t key, bool insert)
{
    uint32_t h = kbox_hash_slot(key, size);
    for (uint32_t n = 0; n < size; n++, h = (h + 1) & (size - 1)) {
        uint64_t v = __atomic_load_n(&table[h], __ATOMIC_ACQUIRE);
        if (v == key)
            return &table[h];
        if (v == 0 || (insert && v == KBOX_U64SET_FREED)) {
            if (!insert)
                return NULL;
            if (__atomic_compare_exchange_n(&table[h], &v, key, false, __ATOMIC_ACQ_REL,
                                            __ATOMIC_ACQUIRE))
                return &table[h];
            if (v == key)
                return &table[h];
        }
    }
    return NULL;
}

static inline void kbox_u64set_remove(uint64_t *slot)
{
    __atomic_store_n(slot, KBOX_U64SET_FREED, __ATOMIC_RELEASE);
}

#endif
