/* This process's own memory, as in-process code must see it: reads that cannot fault
 * (a guest's bad pointer is -EFAULT, not a crash in a signal handler) and /proc/self/maps
 * lookups (cold path: once per patched site). */
#ifndef KBOX_LIB_SELF_H
#define KBOX_LIB_SELF_H

#include <stddef.h>
#include <stdint.h>

/* process_vm_readv/writev (`nr`) of one range of process `pid`; bytes copied or -errno. */
long kbox_vm_rw(int nr, int pid, uint64_t addr, void *buf, size_t len);
/* Copies from this process's own memory without faulting on a bad address (-errno). */
long kbox_mem_read_self(uint64_t addr, void *buf, size_t len);

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
