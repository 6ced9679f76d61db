/* chroot inside the root view in the seccomp tier.
 *
 * The supervisor serves every process's path calls with one view (core/view.c), so each
 * process's root is a directory descriptor the supervisor keeps in that process, at the slot
 * just below its working directory's, and the view's root is switched to it while one of
 * the process's calls is served.  Being a descriptor, it follows the process as the kernel's
 * root does: fork copies it, threads share it (the kernel shares the root through CLONE_FS,
 * which threads have as they have CLONE_FILES), execve keeps it (it is not close-on-exec), and
 * it is gone with the process.  The program cannot close it or put another file there
 * (seccomp-refuse.c, and seccomp-guest.c's close_range), and whatever the slot holds must
 * lie inside the run's root or the call fails (EACCES): no chroot widens the view.
 *
 * Until the run's first chroot nothing is looked up, so only a run that chroots pays (one
 * openat and readlink of /proc/<tid>/fd/<slot> per path call).
 */
#include "tiers/seccomp-chroot.h"
#include "core/view.h"
#include "core/view-chroot.h"
#include "lib/buf.h"
#include "lib/sys.h"
#include <linux/errno.h>
#include <linux/fcntl.h>
#include <linux/ioctl.h>
#include <linux/seccomp.h>

static bool any_chroot; /* the supervisor's: a chroot was made in this run */

int kbox_schroot_enter(const struct kbox_sview_run *run, int tid, int *fd)
{
    *fd = -1;
    if (!any_chroot)
        return 0;
    char p[64];
    struct kbox_buf b;
    kbox_buf_init(&b, p, sizeof(p));
    kbox_sview_fd_path(&b, tid, kbox_sview_root_slot(run));
    long r = kbox_openat(AT_FDCWD, p, O_PATH | O_DIRECTORY | O_CLOEXEC, 0);
    if (r == -ENOENT)
        return 0; /* no chroot in this process */
    if (r < 0)
        return r == -ENOTDIR ? -EACCES : (int)r;
    int u = kbox_view_use_root((int)r, false);
    if (u < 0) {
        kbox_close((int)r);
        return u;
    }
    *fd = (int)r;
    return 0;
}

void kbox_schroot_leave(int fd)
{
    if (fd < 0)
        return;
    kbox_view_use_base();
    kbox_close(fd);
}

int64_t kbox_schroot_serve(int listener, const struct kbox_sview_run *run, struct kbox_ids_table *ids,
                           const struct kbox_req *req, uint64_t id, long dirfd, const char *path)
{
    long fd = kbox_view_chroot_open((int)dirfd, path, ids, req, req->tid);
    if (fd < 0)
        return fd;
    /* ADDFD passes only real open files: the directory is opened for reading, so one the
     * program may enter but not read (mode 0711) cannot become its root here. */
    long rd = kbox_openat((int)fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
    kbox_close((int)fd);
    if (rd < 0)
        return rd;
    struct seccomp_notif_addfd add = { .id = id, .flags = SECCOMP_ADDFD_FLAG_SETFD, .srcfd = (uint32_t)rd,
                                       .newfd = (uint32_t)kbox_sview_root_slot(run), .newfd_flags = 0 };
    long r = KSYS3(__NR_ioctl, listener, SECCOMP_IOCTL_NOTIF_ADDFD, &add);
    kbox_close((int)rd);
    if (r < 0)
        return r;
    any_chroot = true;
    return 0;
}
