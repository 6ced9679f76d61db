/* What the seccomp supervisor refuses with a root view, so that the one call it lets run on
 * trust (execve of kbox's "/proc/self/exe") stays what it is, and the program cannot reach
 * around the view (the table in docs/tiers.md, *The root view in the seccomp tier*). */
#include "tiers/seccomp-view.h"
#include "tiers/seccomp-chroot.h"
#include "tiers/seccomp-guest.h"
#include "lib/sys.h"
#include <linux/errno.h>
#include <linux/fcntl.h>
#include <linux/mman.h>
#include <linux/prctl.h>
#include <linux/signal.h>

#ifndef MREMAP_FIXED
#define MREMAP_FIXED 2
#endif
#ifndef SHM_REMAP
#define SHM_REMAP 040000
#endif

static bool overlaps(uint64_t lo, uint64_t len, uint64_t a, uint64_t b)
{
    return len && lo < b && lo + len > a && lo + len > lo;
}

static bool refuse(const struct kbox_sview *sv, const struct kbox_req *req, int64_t *ret)
{
    const uint64_t *a = req->args;
    uint64_t lo = sv->image_lo, hi = sv->image_hi;
    /* The working directory's descriptor and, below it, a chroot's root (seccomp-chroot.h). */
    int cwd = sv->run.cwd_fd, root = kbox_sview_root_slot(&sv->run);
    switch (req->nr) {
    case __NR_close:
        if ((int)a[0] != cwd && (int)a[0] != root)
            return false;
        *ret = 0; /* kept: the program believes it closed it */
        return true;
    case __NR_close_range:
        /* From the gate (seccomp-guest.c splits the program's ranges around them). */
        if ((unsigned)a[0] > (unsigned)cwd || (unsigned)a[1] < (unsigned)root)
            return false;
        *ret = -EPERM;
        return true;
#ifdef __NR_dup2
    case __NR_dup2:
#endif
    case __NR_dup3:
        if ((int)a[1] != cwd && (int)a[1] != root)
            return false;
        *ret = -EBADF;
        return true;
    case __NR_fcntl:
        if (((int)a[0] != cwd && (int)a[0] != root) || (int)a[1] != F_SETFD)
            return false;
        *ret = 0; /* stays open across exec */
        return true;
    case __NR_execve:
        if (a[0] == (uint64_t)(uintptr_t)kbox_sg_self_exe)
            return false;
        *ret = -EACCES;
        return true;
    case __NR_execveat:
        *ret = -EACCES;
        return true;
    case __NR_munmap:
    case __NR_mprotect:
    case __NR_pkey_mprotect:
        if (!overlaps(a[0], a[1], lo, hi))
            return false;
        *ret = -EPERM;
        return true;
    case __NR_mmap:
        if (!(a[3] & (MAP_FIXED | MAP_FIXED_NOREPLACE)) || !overlaps(a[0], a[1], lo, hi))
            return false;
        *ret = -EPERM;
        return true;
    case __NR_mremap:
        if (!overlaps(a[0], a[1], lo, hi) && !((a[3] & MREMAP_FIXED) && overlaps(a[4], a[2], lo, hi)))
            return false;
        *ret = -EPERM;
        return true;
    case __NR_shmat:
        if (!(a[2] & SHM_REMAP))
            return false;
        *ret = -EPERM;
        return true;
    case __NR_prctl:
        if (a[0] != PR_SET_MM)
            return false;
        *ret = -EPERM;
        return true;
    case __NR_ptrace:
    case __NR_process_vm_writev:
    case __NR_pidfd_getfd:
    case __NR_open_by_handle_at:
        *ret = -EPERM;
        return true;
    case __NR_io_uring_setup:
    case __NR_io_uring_enter:
    case __NR_io_uring_register:
        *ret = -ENOSYS;
        return true;
    /* The view has no mounts: the mount API and the calls that take a path for a device or a
     * mount are refused as for a user without privileges. */
    case __NR_fsopen:
    case __NR_fsconfig:
    case __NR_fsmount:
    case __NR_fspick:
    case __NR_open_tree:
    case __NR_move_mount:
    case __NR_mount_setattr:
    case __NR_mount:
    case __NR_umount2:
    case __NR_pivot_root: /* no mount namespace: what an unprivileged caller gets */
    case __NR_swapon:
    case __NR_swapoff:
    case __NR_acct:
    case __NR_quotactl:
        *ret = -EPERM;
        return true;
#ifdef __NR_uselib
    case __NR_uselib:
        *ret = -ENOSYS;
        return true;
#endif
    case __NR_name_to_handle_at:
        *ret = -EOPNOTSUPP;
        return true;
    default:
        return false;
    }
}

/* rt_sigaction of SIGSYS: kbox's handler stays (the program's execve needs it); the
 * program is told its change was made. */
static bool keep_sigsys(const struct kbox_req *req, int64_t *ret)
{
    if (req->nr != __NR_rt_sigaction || (int)req->args[0] != SIGSYS || req->args[3] != 8)
        return false;
    if (req->ip > (uint64_t)(uintptr_t)__start_kbox_gate && req->ip <= (uint64_t)(uintptr_t)__stop_kbox_gate)
        return false; /* kbox's own, installing the handler */
    if (req->args[2]) {
        uint64_t dfl[4] = { 0, 0, 0, 0 };
        if (req->mem->write(req->mem, req->args[2], dfl, sizeof(dfl)) != (long)sizeof(dfl)) {
            *ret = -EFAULT;
            return true;
        }
    }
    *ret = 0;
    return true;
}

bool kbox_sview_refuse(const struct kbox_sview *sv, const struct kbox_req *req, int64_t *ret)
{
    return refuse(sv, req, ret) || keep_sigsys(req, ret);
}
