/* Where a call's path arguments start and whether they follow a final symlink, from the
 * syscall table: shared by the root view of the in-process tiers (view-rt.c) and of the
 * seccomp supervisor (seccomp-view.c). */
#ifndef KBOX_TIERS_PATHARGS_H
#define KBOX_TIERS_PATHARGS_H

#include "arch.h"
#include "lib/sys.h"
#include "arch/sysent.h"
#include <stdbool.h>
#include <linux/fcntl.h>

/* The call's AT_* flags argument, or 0. */
static inline int kbox_path_flags(const struct kbox_sysent *e, const uint64_t *a)
{
    for (int i = 0; i < e->nargs; i++)
        if (e->arg[i] == KA_AT_FLAGS)
            return (int)a[i];
    return 0;
}

/* Whether path argument i follows a final symlink: unless the call says otherwise
 * (KBOX_SC_NOFOLLOW, or AT_SYMLINK_NOFOLLOW); linkat follows only with AT_SYMLINK_FOLLOW. */
static inline bool kbox_path_follows(int nr, const struct kbox_sysent *e, const uint64_t *a, int i)
{
    if (nr == __NR_linkat)
        return i == 1 && (a[4] & AT_SYMLINK_FOLLOW);
    if (e->props & KBOX_SC_NOFOLLOW)
        return false;
    return !(kbox_path_flags(e, a) & AT_SYMLINK_NOFOLLOW);
}

/* The directory path argument i is relative to: the DIRFD before it, else AT_FDCWD. */
static inline int kbox_path_dirfd(const struct kbox_sysent *e, const uint64_t *a, int i)
{
    return i > 0 && e->arg[i - 1] == KA_DIRFD ? (int)a[i - 1] : AT_FDCWD;
}

/* The index of the call's AT_* flags argument, or -1. */
static inline int kbox_path_flags_index(const struct kbox_sysent *e)
{
    for (int i = 0; i < e->nargs; i++)
        if (e->arg[i] == KA_AT_FLAGS)
            return i;
    return -1;
}

/* *at calls whose AT_FLAGS take AT_EMPTY_PATH to mean "the descriptor itself": the stat
 * family and fchownat can name a resolved object by its descriptor, without a walk through
 * /proc/self/fd. */
static inline bool kbox_path_takes_empty(int nr)
{
    return nr == __NR_newfstatat || nr == __NR_statx || nr == __NR_fchownat;
}

/* readlink and readlinkat: the path is followed by (buf, bufsiz). */
static inline bool kbox_path_is_readlink(int nr)
{
#ifdef __NR_readlink
    if (nr == __NR_readlink)
        return true;
#endif
    return nr == __NR_readlinkat;
}

/* Calls that remove or rename the object their path names: on a bind of the root view they
 * fail with EBUSY, as on a mount point. */
static inline bool kbox_path_removes(int nr)
{
    switch (nr) {
#ifdef __NR_unlink
    case __NR_unlink:
    case __NR_rmdir:
    case __NR_rename:
#endif
#ifdef __NR_renameat
    case __NR_renameat:
#endif
    case __NR_unlinkat:
    case __NR_renameat2:
        return true;
    default:
        return false;
    }
}

#endif
