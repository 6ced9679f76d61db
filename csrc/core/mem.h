/* Guest-memory accessors for the request's kbox_mem. */
#ifndef KBOX_CORE_MEM_H
#define KBOX_CORE_MEM_H

#include "core/request.h"

/* In-process tiers: the guest is this process.  Reads and writes go through
 * process_vm_readv/writev on ourselves so that a bad guest pointer yields -EFAULT instead
 * of a fault inside the signal handler. */
void kbox_mem_init_self(struct kbox_mem *m);

/* seccomp tier: another process, identified by a notification that must still be valid
 * after every read (SECCOMP_IOCTL_NOTIF_ID_VALID), or the pid may have been recycled. */
void kbox_mem_init_notif(struct kbox_mem *m, int pid, int notify_fd, uint64_t id);


/* Reads a NUL-terminated string of at most cap-1 bytes; returns its length or -errno. */
long kbox_mem_read_str(const struct kbox_mem *m, uint64_t addr, char *buf, size_t cap);

/* openat2's struct open_how at addr (`size` bytes, as the program passed it), checked as
 * the kernel checks it; 0 or -errno. */
struct open_how;
long kbox_open_how_read(const struct kbox_mem *m, uint64_t addr, uint64_t size, struct open_how *how);

#endif
