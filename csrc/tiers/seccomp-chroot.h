/* chroot inside the root view in the seccomp tier (seccomp-chroot.c, core/view-chroot.h). */
#ifndef KBOX_TIERS_SECCOMP_CHROOT_H
#define KBOX_TIERS_SECCOMP_CHROOT_H

#include "core/ids.h"
#include "core/request.h"
#include "tiers/seccomp-proc.h"
#include <stdint.h>

/* The descriptor number of a process's chroot root in every guest: just below its working
 * directory's. */
static inline int kbox_sview_root_slot(const struct kbox_sview_run *run) { return run->cwd_fd - 1; }

/* Before serving a call of thread `tid`: the view's root becomes its process's chroot root,
 * if it has one.  *fd receives the supervisor's descriptor of it (-1: none), for
 * kbox_schroot_leave.  0, or -errno to fail the call with. */
int kbox_schroot_enter(const struct kbox_sview_run *run, int tid, int *fd);
void kbox_schroot_leave(int fd);

/* chroot(path) of the caller, `path` as the supervisor walks it, relative to the
 * supervisor's `dirfd` (AT_FDCWD for an absolute one): the directory becomes the root of
 * the caller's process (installed at the slot with ADDFD on `listener`, notification `id`);
 * `ids`: the --root-id record or NULL.  0 or -errno. */
int64_t kbox_schroot_serve(int listener, const struct kbox_sview_run *run, struct kbox_ids_table *ids,
                           const struct kbox_req *req, uint64_t id, long dirfd, const char *path);

#endif
