/* The root filesystem view (kbox run --root DIR): the program's paths name files inside DIR.
 *
 * Resolution is the kernel's, confined: openat2(2) with RESOLVE_IN_ROOT from a descriptor
 * of the root, so `..` at the root stays there and absolute symlinks resolve inside it, on
 * both kernels of the matrix (Linux >= 5.6).  A call then runs on what was resolved, named
 * through its descriptor ("/proc/self/fd/N", or "/proc/self/fd/N/name" for calls that act
 * on a final symlink itself), so the kernel never walks the program's path from the host's
 * root.  /proc, /dev and /sys are the host's (guest paths under them pass unchanged), except
 * /proc/<pid>/root, which names the view's root.
 *
 * Binds (--bind) are walked by core/view-binds.c.  This is the part every tier shares;
 * tiers/view-rt.c applies it in the in-process tiers, tiers/seccomp-view.c in the seccomp
 * supervisor.
 */
#ifndef KBOX_CORE_VIEW_H
#define KBOX_CORE_VIEW_H

#include "core/view-binds.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KBOX_VIEW_PATH_MAX 4096

struct kbox_view {
    int root_fd;                 /* O_PATH directory of the root; -1: no view */
    char root[KBOX_VIEW_PATH_MAX]; /* its canonical host path, no trailing '/' ("" for "/") */
    size_t root_len;
    /* The root the run was started with (--root).  A chroot inside the view
     * (core/view-chroot.h) moves root_fd/root to a directory inside it; this one still
     * bounds every walk. */
    int base_fd;
    char base[KBOX_VIEW_PATH_MAX];
    size_t base_len;
    int chroot_fd_at;            /* where the in-process tiers keep a chroot's root (-1: anywhere) */
    /* The root's path in the run's root ("" without a chroot): the binds' guest paths, and
     * every path the view reports, are the run's root's paths with this taken off. */
    char root_guest[KBOX_VIEW_PATH_MAX];
    size_t root_guest_len;
    /* A host /proc directory no walk may reach or pass through: the seccomp supervisor's
     * own ("/proc/<pid>"), since it walks the program's /proc paths as itself. */
    char private_proc[24];
};
extern struct kbox_view kbox_view;

static inline bool kbox_view_on(void) { return kbox_view.root_fd >= 0; }

/* Whether a chroot inside the view moved the root below the run's own. */
static inline bool kbox_view_chrooted(void) { return kbox_view_on() && kbox_view.root_fd != kbox_view.base_fd; }

/* Opens the root (a canonical absolute host path) and keeps its descriptor at `fd_at` if
 * that number is free; 0 or -errno. */
int kbox_view_init(const char *root, int fd_at);

/* openat(2) of a guest path inside the view (plain openat when there is none). */
long kbox_view_openat(int dirfd, const char *path, int flags, int mode);

/* openat2(2) of a guest path with the program's own open_how: RESOLVE_BENEATH/IN_ROOT walks
 * are the kernel's from a directory inside the view; the other RESOLVE_* flags apply to the
 * view's own confined walk.  Flags and mode reach the kernel's openat2 as given (it checks
 * them as it would have). */
long kbox_view_openat2(int dirfd, const char *path, uint64_t flags, uint64_t mode, uint64_t resolve);

/* A host path for the guest path `path` (relative to `dirfd`), written to out[cap]:
 * "/proc/self/fd/N" naming the resolved object (follow: the final symlink is followed), or
 * "/proc/self/fd/N/last" naming the final component inside its resolved parent (the call
 * acts on a final symlink itself), or the path unchanged (host /proc, /dev, /sys; an empty
 * path).  *tmpfd receives N, to close once the call has run (-1 if none).  0 or -errno. */
int kbox_view_host_path(int dirfd, const char *path, bool follow, char *out, size_t cap, int *tmpfd);

/* The host path descriptor `fd` names (readlink of /proc/self/fd/N); its length or -errno. */
long kbox_view_fd_host_path(int fd, char *host, size_t cap);

/* 1 if descriptor `fd` names something inside the view, 0 if outside, or -errno (EBADF). */
int kbox_view_fd_inside(int fd);

/* 1 if the directory `fd` may become the working directory (inside the view, or in the
 * host's /proc, /dev, /sys, where relative paths stay beneath it), 0 if not, or -errno. */
int kbox_view_cwd_allowed(int fd);

/* The guest path of directory `dirfd` (AT_FDCWD: the working directory) into out: 0,
 * -EXDEV when it is outside the view, or -errno. */
long kbox_view_guest_dir(int dirfd, char *out, size_t cap);

/* The guest path for a host path (inside a bind: the bind's guest path in front): the part after the root, "/" for the root itself; the
 * length written, or -1 if `host` is outside the root (left unchanged). */
long kbox_view_guest_path(const char *host, char *out, size_t cap);

/* After a chroot inside the view (core/view-chroot.h) the run's own root still bounds
 * everything.  The path of host path `host` in it ("/" for the root itself; inside a bind:
 * the bind's guest path in front), written to out (which may be host); its length, or -1 if
 * outside (left unchanged).  Without a chroot this is kbox_view_guest_path. */
long kbox_view_outer_path(const char *host, char *out, size_t cap);

/* The same for directory `dirfd`: 0, -EXDEV outside the run's root, or -errno. */
long kbox_view_outer_dir(int dirfd, char *out, size_t cap);

/* Binds (core/view-binds.h): adds one, HOST shown at GUEST (canonical paths); 0 or -errno
 * (-EINVAL also for a guest path in /proc, /dev or /sys, which are the host's already). */
int kbox_view_add_bind(const char *host, const char *guest, int fd_at);

/* The bind the final component of `path` (relative to dirfd) names, or NULL: calls that
 * remove or rename it fail with EBUSY, as on a mount point. */
const struct kbox_view_bind *kbox_view_bind_named(int dirfd, const char *path);

#endif
