/* /proc/self/maps lookups for the rewrite tier (cold path: once per patched site). */
#ifndef KBOX_TIERS_MAPS_H
#define KBOX_TIERS_MAPS_H

#include <stddef.h>
#include <stdint.h>

struct kbox_map {
    uint64_t lo, hi, offset;
    int prot;            /* PROT_* */
    char path[512];      /* "" for anonymous mappings */
};

/* The mapping containing `addr`; 0, or -1 if none (or maps unreadable). */
int kbox_maps_find(uint64_t addr, struct kbox_map *out);
/* Start of the mapping of `path` at file offset 0 (where its ELF header is), or 0. */
uint64_t kbox_maps_file_start(const char *path);

#endif
