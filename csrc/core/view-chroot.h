/* chroot(2) inside the root view, without privileges and without a mount: the directory
 * becomes the view's root (core/view.h root_fd/root), and the run's own root (--root, the
 * view's base_fd/base) still bounds every walk.
 *
 * As the kernel's: the working directory does not move, and one left outside the new root
 * stays usable, `..` from it climbing as the kernel's does, but never above the run's own
 * root (nothing a chroot does can widen the view).  Absolute paths, `..` at the new root,
 * absolute symlinks and /proc/self/root resolve in the new root; getcwd of a directory
 * outside it reports "(unreachable)" and the directory's path in the run's root, as the
 * kernel's getcwd does; readlink of /proc links to things outside it reports their path in
 * the run's root (the kernel reports them from its global root).
 *
 * Where the state lives is the tier's: the in-process tiers keep it in kbox_view (so a fork
 * copies it, threads share it, and an execve passes it on as --chroot), the seccomp
 * supervisor in a descriptor it keeps in each process (tiers/seccomp-chroot.c).
 *
 * Binds (--bind) keep their guest paths in the run's root: kbox's walk (core/view-binds.c)
 * starts absolute paths, and stops `..`, at the chroot's root (kbox_view.root_guest), and the
 * paths the view reports are those of the run's root less root_guest.
 */
#ifndef KBOX_CORE_VIEW_CHROOT_H
#define KBOX_CORE_VIEW_CHROOT_H

#include "core/ids.h"
#include "core/request.h"
#include <stdbool.h>
#include <stddef.h>

/* What getcwd (`cwd`) or readlink of a /proc link shows for host path `host`: its guest path;
 * outside a chroot's root but inside the run's, its path in the run's root, after
 * "(unreachable)" for getcwd.  The length written, or -1 (outside everything: left as is). */
long kbox_view_report_path(const char *host, char *out, size_t cap, bool cwd);

/* Whether `path` is the link /proc/<self|thread-self|N>/root itself: readlink of it shows "/",
 * the view's root (the tiers answer it; the kernel's answer would be the host's root). */
bool kbox_view_root_link(const char *path);

/* chroot's checks of the guest path `path` (relative to dirfd), in the kernel's order: the
 * walk (ENOENT, ENOTDIR, EACCES, ...), search permission on the directory (EACCES), then
 * CAP_SYS_CHROOT (EPERM): thread `tid` has it in its effective set, or (with `ids`, the
 * --root-id record) its fake effective uid is 0; `req` is the call (for the record's lookup).
 * EACCES for a directory outside the run's root (the host's /proc, /dev, /sys).  An O_PATH descriptor of the directory, or -errno. */
long kbox_view_chroot_open(int dirfd, const char *path, struct kbox_ids_table *ids, const struct kbox_req *req,
                           int tid);

/* Makes directory `fd` (inside the run's root) the view's root: 0, or -EACCES if it is not
 * inside (nothing changes).  With `own` the view keeps fd (moved to kbox_view.chroot_fd_at
 * when that is free) and closes a chroot's root it replaces; without, the caller keeps fd
 * and puts the run's root back with kbox_view_use_base once its call is served (the seccomp
 * supervisor switches roots per process). */
int kbox_view_use_root(int fd, bool own);
void kbox_view_use_base(void);

/* The launcher's --chroot=DIR (an execve in the in-process tiers): DIR, a path in the run's
 * root, becomes the root.  0 or -errno. */
int kbox_view_chroot_to(const char *dir);

/* "--chroot=DIR" for the launcher an execve starts, DIR the root's path in the run's root:
 * its length, 0 without a chroot, or -ENAMETOOLONG. */
long kbox_view_chroot_opt(char *out, size_t cap);

#endif
