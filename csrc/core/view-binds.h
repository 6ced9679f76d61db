/* Binds of the root view (kbox run --bind HOST:GUEST): a host file or directory shown at a
 * guest path, over whatever the root has there (or where it has nothing: the guest path is
 * then made virtually; its parent must exist).
 *
 * The kernel cannot confine a walk that crosses from the root into a bind (they are not
 * mounts), so a path that may meet a bind is walked here, one component at a time from
 * descriptors: `..` is taken on the guest path kbox keeps (a bind's `..` leads back into the
 * view, the root's stays at the root), symlinks are read and spliced in (absolute ones from
 * the view's root), and every step is an openat(2) of one name with O_NOFOLLOW, so no step
 * can leave the view.  Where no bind lies below the walk's position the rest of the path is
 * left to openat2(RESOLVE_BENEATH) in one call; a walk that leaves that directory (`..`, an
 * absolute symlink: -EXDEV) goes on by hand.  Whether a bind lies below a guest directory is
 * one hash lookup per component, whatever the number of binds.
 */
#ifndef KBOX_CORE_VIEW_BINDS_H
#define KBOX_CORE_VIEW_BINDS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KBOX_VIEW_BINDS_MAX 16
#define KBOX_BINDS_PATH_MAX 4096

struct kbox_view_bind {
    int fd;          /* O_PATH of the source */
    int parent_fd;   /* files: O_PATH of the source's directory (calls on the name itself) */
    bool dir;
    uint64_t hash;   /* of guest */
    size_t guest_len, host_len;
    char guest[1024]; /* canonical, absolute, no trailing '/' */
    char host[1024];  /* canonical host path of the source */
    const char *base; /* files: the source's name in its directory (points into host) */
};

extern struct kbox_view_bind kbox_view_binds[KBOX_VIEW_BINDS_MAX];
extern int kbox_view_nbinds;

/* Adds a bind of the canonical host path `host` at the canonical guest path `guest` of the
 * view whose root is `root_fd`; its descriptors go to `fd_at` and `fd_at - 1` when free.
 * 0 or -errno: -EINVAL (a guest path that is "/" or not absolute), -ENOSPC (too many),
 * -EEXIST (a second bind at one guest path), -ENOTDIR/-EISDIR (a file over a directory or
 * the reverse), -ENOENT (the source, or the guest path's parent in the view, is missing). */
int kbox_binds_add(int root_fd, const char *host, const char *guest, int fd_at);

/* openat2-like: `path` resolved in the view of `root_fd` with its binds and opened with
 * flags/mode (a final bind opens its source).  Absolute paths (and absolute symlinks) start
 * at `top_fd`, the directory at guest path `top` ("" for the root; a chroot's root,
 * core/view-chroot.h), and `..` stops there.  A relative path starts at `dirfd`, whose guest
 * path is `dir_guest` ("/" for the root); one outside `top` climbs up to the root.  `resolve`: the program's own RESOLVE_*
 * flags (NO_SYMLINKS, NO_MAGICLINKS, NO_XDEV, CACHED; a bind counts as a mount point).
 * The descriptor or -errno. */
long kbox_binds_walk(int root_fd, int top_fd, const char *top, int dirfd, const char *dir_guest, const char *path,
                     uint64_t flags, uint64_t mode, uint64_t resolve);

/* The bind at the canonical guest path guest[0..n), or NULL. */
const struct kbox_view_bind *kbox_binds_at(const char *guest, size_t n);

/* The bind whose source holds the host path `host` (the longest such source), or NULL. */
const struct kbox_view_bind *kbox_binds_holding(const char *host);

#endif
