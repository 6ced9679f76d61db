/* The root filesystem view in the in-process tiers: every path argument of the program's
 * calls (the syscall table's KA_PATH) is resolved inside the root by core/view.c and the
 * call runs on the result; opens are served from the resolution itself (openat2 returns the
 * program's descriptor); getcwd and readlink of /proc links report guest paths.
 *
 * A path's final symlink is followed unless the call says otherwise (KBOX_SC_NOFOLLOW, or
 * AT_SYMLINK_NOFOLLOW in its flags; linkat follows only with AT_SYMLINK_FOLLOW).  The
 * contents of a new symlink (KA_LINKTARGET) are stored as given: they are resolved inside
 * the view when something follows them.
 *
 * AF_UNIX socket addresses (the calls with KBOX_SC_SOCKADDR) are translated by view-sock.c.
 *
 * chroot is served here (core/view-chroot.h): the view's root in this process's memory
 * moves, so a fork copies it and threads share it; exec.c passes it on to the next image.
 *
 * The in-process tiers translate a cooperative program's paths exactly; a program that races
 * its own path buffers or makes calls from code kbox has not seen is not contained (see
 * docs/tiers.md).
 */
#include "tiers/view-rt.h"
#include "tiers/runtime.h"
#include "tiers/pathargs.h"
#include "core/mem.h"
#include "core/view-chroot.h"
#include "lib/str.h"
#include <linux/errno.h>
#include <linux/fcntl.h>
#include <linux/openat2.h>

bool kbox_view_touches(int nr)
{
    const struct kbox_sysent *e = kbox_sysent(nr);
    if (!e || (e->props & KBOX_SC_EXEC))
        return false; /* execve resolves its program through the view itself (exec.c) */
    if ((e->props & (KBOX_SC_OPEN | KBOX_SC_SOCKADDR)) || e->arg[0] == KA_PATH_OUT || nr == __NR_fchdir)
        return true;
    for (int i = 0; i < e->nargs; i++)
        if (e->arg[i] == KA_PATH)
            return true;
    return false;
}

/* chroot(path): the directory becomes the view's root (view-chroot.h). */
static int64_t view_chroot(const struct kbox_req *req, const char *path)
{
    const struct kbox_policy *p = kbox_rt.policy;
    long fd = kbox_view_chroot_open(AT_FDCWD, path, p->root_id ? &p->shared->ids : NULL, req,
                                    (int)kbox_gettid());
    if (fd < 0)
        return fd;
    int r = kbox_view_use_root((int)fd, true);
    if (r < 0) {
        kbox_close((int)fd);
        return r;
    }
    /* The runtime's own descriptors: the program cannot close the new root. */
    kbox_own_fd[KBOX_OWN_FD_CHROOT] = kbox_view_chrooted() ? kbox_view.root_fd : -1;
    return 0;
}

/* The open family, served: the descriptor comes straight from the confined resolution. */
static int64_t view_open(const struct kbox_req *req, const uint64_t *a, const char *path)
{
    switch (req->nr) {
#ifdef __NR_open
    case __NR_open:
        return kbox_view_openat(AT_FDCWD, path, (int)a[1], (int)a[2]);
#endif
#ifdef __NR_creat
    case __NR_creat:
        return kbox_view_openat(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, (int)a[1]);
#endif
    case __NR_openat:
        return kbox_view_openat((int)a[0], path, (int)a[2], (int)a[3]);
    default: { /* openat2(dirfd, path, how, size) */
        struct open_how how;
        long r = kbox_open_how_read(&kbox_rt.self_mem, a[2], a[3], &how);
        return r < 0 ? r : kbox_view_openat2((int)a[0], path, how.flags, how.mode, how.resolve);
    }
    }
}

bool kbox_view_enter(const struct kbox_req *req, struct kbox_answer *ans, struct kbox_view_call *vc,
                     int64_t *ret)
{
    const struct kbox_sysent *e = kbox_sysent(req->nr);
    uint64_t *a = ans->args;
    vc->tmpfd[0] = vc->tmpfd[1] = -1;
    vc->active = true;
    vc->sock.to.tmpfd = -1;
    vc->sock.out = false;
    if (e && (e->props & KBOX_SC_SOCKADDR))
        return kbox_view_sock_enter(req, a, &vc->sock, ret);
    if (req->nr == __NR_fchdir) {
        /* The working directory stays inside the view: relative paths resolve beneath it. */
        int in = kbox_view_cwd_allowed((int)a[0]);
        if (in <= 0) {
            *ret = in < 0 ? in : -EACCES;
            return true;
        }
        return false;
    }
    /* utimensat(fd, NULL, ...) acts on the descriptor (futimens): no path (as seccomp-view.c). */
    if (req->nr == __NR_utimensat && !a[1])
        return false;
    int k = 0;
    for (int i = 0; e && i < e->nargs && k < 2; i++) {
        if (e->arg[i] != KA_PATH)
            continue;
        char guest[KBOX_VIEW_PATH_MAX];
        long n = kbox_mem_read_str(&kbox_rt.self_mem, a[i], guest, sizeof(guest));
        if (n < 0 || n >= (long)sizeof(guest) - 1) {
            *ret = n < 0 ? n : -ENAMETOOLONG;
            return true;
        }
        if (e->props & KBOX_SC_OPEN) {
            *ret = view_open(req, a, guest);
            return true;
        }
        if (req->nr == __NR_chroot) {
            *ret = view_chroot(req, guest);
            return true;
        }
        if (req->nr == __NR_pivot_root) {
            /* The view has no mounts to move (as seccomp-refuse.c). */
            *ret = -EPERM;
            return true;
        }
        if (kbox_path_is_readlink(req->nr) && kbox_view_root_link(guest)) {
            /* The view's root, as the process sees its root. */
            if ((int)a[i + 2] <= 0) {
                *ret = -EINVAL;
                return true;
            }
            uint64_t len = 1;
            *ret = kbox_rt.self_mem.write(&kbox_rt.self_mem, a[i + 1], "/", len) == (long)len ? (int64_t)len : -EFAULT;
            return true;
        }
        bool follow = kbox_path_follows(req->nr, e, a, i);
        if (!follow && kbox_path_removes(req->nr) && kbox_view_bind_named(kbox_path_dirfd(e, a, i), guest)) {
            *ret = -EBUSY;
            return true;
        }
        int r = kbox_view_host_path(kbox_path_dirfd(e, a, i), guest, follow, vc->path[k],
                                    sizeof(vc->path[k]), &vc->tmpfd[k]);
        if (r < 0) {
            *ret = r;
            return true;
        }
        a[i] = (uint64_t)(uintptr_t)vc->path[k];
        if (vc->tmpfd[k] >= 0 && kbox_path_takes_empty(req->nr) && kbox_path_follows(req->nr, e, a, i) &&
            i > 0 && e->arg[i - 1] == KA_DIRFD && kbox_path_flags_index(e) > i) {
            /* The call can name the resolved object by its descriptor: no walk through
             * /proc/self/fd (the stat family's hot path). */
            a[i - 1] = (uint64_t)vc->tmpfd[k];
            vc->path[k][0] = 0;
            a[kbox_path_flags_index(e)] |= AT_EMPTY_PATH;
        }
        k++;
    }
    if (req->nr == __NR_chdir) {
        /* As fchdir: a /proc link may name a directory outside the view. */
        long fd = kbox_openat(AT_FDCWD, vc->path[0], O_PATH | O_DIRECTORY | O_CLOEXEC, 0);
        int in = fd < 0 ? (int)fd : kbox_view_cwd_allowed((int)fd);
        if (fd >= 0)
            kbox_close((int)fd);
        if (in <= 0) {
            *ret = in < 0 ? in : -EACCES;
            return true;
        }
    }
    return false;
}

/* Rewrites the host path the kernel wrote at `addr` (`len` bytes, NUL included when `nul`:
 * getcwd's) into a guest path; returns the new length (as the call reports it), or `len`
 * unchanged.  A guest path can be longer than the host one (getcwd's "(unreachable)" outside
 * a chroot): getcwd then fails with ERANGE and readlink truncates at `cap`, as the kernel's. */
static int64_t guest_result(uint64_t addr, int64_t len, bool nul, uint64_t cap)
{
    char host[KBOX_VIEW_PATH_MAX + 1];
    if (len <= 0 || len > KBOX_VIEW_PATH_MAX)
        return len;
    if (kbox_rt.self_mem.read(&kbox_rt.self_mem, addr, host, (size_t)len) != len)
        return len;
    host[len] = 0;
    long g = kbox_view_report_path(host, host, sizeof(host), nul /* getcwd */);
    if (g < 0)
        return len;
    size_t out = (size_t)g + (nul ? 1 : 0);
    if (out > cap) {
        if (nul)
            return -ERANGE;
        out = (size_t)cap;
    }
    if (kbox_rt.self_mem.write(&kbox_rt.self_mem, addr, host, out) != (long)out)
        return len;
    return (int64_t)out;
}

void kbox_view_leave(const struct kbox_req *req, const struct kbox_answer *ans,
                     struct kbox_view_call *vc, int64_t *ret)
{
    if (!vc->active)
        return;
    for (int k = 0; k < 2; k++)
        if (vc->tmpfd[k] >= 0)
            kbox_close(vc->tmpfd[k]);
    kbox_view_sock_leave(req, &vc->sock, ret);
    if (*ret < 0)
        return;
    if (req->nr == __NR_getcwd) {
        *ret = guest_result(req->args[0], *ret, true, req->args[1]);
        return;
    }
    int pi = -1;
#ifdef __NR_readlink
    if (req->nr == __NR_readlink)
        pi = 0;
#endif
    if (req->nr == __NR_readlinkat)
        pi = 1;
    if (pi >= 0) {
        /* Links under /proc (fd/N, cwd, exe of other processes) hold host paths. */
        char p[8];
        if (kbox_mem_read_str(&kbox_rt.self_mem, req->args[pi], p, sizeof(p)) >= 6 &&
            kbox_strncmp(p, "/proc/", 6) == 0)
            *ret = guest_result(ans->args[pi + 1], *ret, false, ans->args[pi + 2]);
    }
}
