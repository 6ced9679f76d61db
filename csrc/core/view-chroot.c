/* chroot(2) inside the root view (view-chroot.h). */
#include "core/view-chroot.h"
#include "core/view.h"
#include "lib/buf.h"
#include "lib/proc.h"
#include "lib/str.h"
#include "lib/sys.h"
#include <linux/errno.h>
#include <linux/fcntl.h>

#define CAP_SYS_CHROOT 18

long kbox_view_report_path(const char *host, char *out, size_t cap, bool cwd)
{
    char in[KBOX_VIEW_PATH_MAX];
    size_t hn = kbox_strlen(host);
    if (hn >= sizeof(in))
        return -1;
    memcpy(in, host, hn + 1); /* out may be host */
    long g = kbox_view_guest_path(in, out, cap);
    if (g >= 0 || !kbox_view_chrooted())
        return g;
    static const char unreachable[] = "(unreachable)";
    size_t pre = cwd ? sizeof(unreachable) - 1 : 0;
    if (cap <= pre)
        return -1;
    g = kbox_view_outer_path(in, out + pre, cap - pre);
    if (g < 0)
        return -1;
    memcpy(out, unreachable, pre);
    return g + (long)pre;
}

bool kbox_view_root_link(const char *path)
{
    if (kbox_strncmp(path, "/proc/", 6) != 0)
        return false;
    const char *q = path + 6;
    if (kbox_strncmp(q, "self/", 5) == 0) {
        q += 5;
    } else if (kbox_strncmp(q, "thread-self/", 12) == 0) {
        q += 12;
    } else {
        const char *d = q;
        while (*q >= '0' && *q <= '9')
            q++;
        if (q == d || *q++ != '/')
            return false;
    }
    return kbox_strcmp(q, "root") == 0;
}

/* CAP_SYS_CHROOT, or fake root under --root-id (its effective uid 0). */
static bool may_chroot(struct kbox_ids_table *ids, const struct kbox_req *req, int tid)
{
    long caps;
    if (kbox_proc_status_field(tid, "CapEff:", 16, &caps) == 0 && ((caps >> CAP_SYS_CHROOT) & 1))
        return true;
    if (!ids)
        return false;
    struct kbox_req q = *req;
    q.nr = __NR_geteuid;
    struct kbox_answer ans;
    ans.verdict = KBOX_RUN;
    kbox_ids_enter(ids, &q, &ans);
    return ans.verdict == KBOX_RETURN && ans.value == 0;
}

long kbox_view_chroot_open(int dirfd, const char *path, struct kbox_ids_table *ids, const struct kbox_req *req,
                           int tid)
{
    long fd = kbox_view_openat(dirfd, path, O_PATH | O_DIRECTORY | O_CLOEXEC, 0);
    if (fd < 0)
        return fd;
    char g[KBOX_VIEW_PATH_MAX];
    long r = kbox_view_outer_dir((int)fd, g, sizeof(g));
    if (r == -EXDEV)
        r = -EACCES; /* the host's /proc, /dev or /sys: not a tree the view can be rooted in */
    if (r == 0)
        r = KSYS4(__NR_faccessat2, fd, "", 1 /* X_OK */, AT_EMPTY_PATH);
    if (r == 0 && !may_chroot(ids, req, tid))
        r = -EPERM;
    if (r < 0) {
        kbox_close((int)fd);
        return r;
    }
    return fd;
}

void kbox_view_use_base(void)
{
    kbox_view.root_fd = kbox_view.base_fd;
    memcpy(kbox_view.root, kbox_view.base, kbox_view.base_len + 1);
    kbox_view.root_len = kbox_view.base_len;
    kbox_view.root_guest[0] = 0;
    kbox_view.root_guest_len = 0;
}

int kbox_view_use_root(int fd, bool own)
{
    char host[KBOX_VIEW_PATH_MAX];
    long n = kbox_view_fd_host_path(fd, host, sizeof(host));
    if (n < 0)
        return (int)n;
    char g[KBOX_VIEW_PATH_MAX];
    long gl = kbox_view_outer_path(host, g, sizeof(g));
    if (gl < 0)
        return -EACCES;
    int old = kbox_view.root_fd;
    if (own && gl == 1) {
        /* chroot("/"): the run's own root again */
        kbox_close(fd);
        kbox_view_use_base();
        if (old != kbox_view.base_fd)
            kbox_close(old);
        return 0;
    }
    int at = kbox_view.chroot_fd_at;
    if (own && at >= 0 && fd != at && (old == at || KSYS2(__NR_fcntl, at, F_GETFD) == -EBADF) &&
        KSYS3(__NR_dup3, fd, at, O_CLOEXEC) == at) {
        kbox_close(fd);
        fd = at;
    }
    if (own && old != kbox_view.base_fd && old != fd)
        kbox_close(old);
    memcpy(kbox_view.root, host, (size_t)n + 1);
    kbox_view.root_len = (size_t)n;
    kbox_view.root_fd = fd;
    if (gl == 1)
        gl = 0; /* the run's root itself (a process's chroot("/") under seccomp) */
    memcpy(kbox_view.root_guest, g, (size_t)gl);
    kbox_view.root_guest[gl] = 0;
    kbox_view.root_guest_len = (size_t)gl;
    return 0;
}

int kbox_view_chroot_to(const char *dir)
{
    long fd = kbox_view_openat(AT_FDCWD, dir, O_PATH | O_DIRECTORY | O_CLOEXEC, 0);
    if (fd < 0)
        return (int)fd;
    int r = kbox_view_use_root((int)fd, true);
    if (r < 0)
        kbox_close((int)fd);
    return r;
}

long kbox_view_chroot_opt(char *out, size_t cap)
{
    if (!kbox_view_chrooted())
        return 0;
    static const char opt[] = "--chroot=";
    if (cap <= sizeof(opt))
        return -ENAMETOOLONG;
    memcpy(out, opt, sizeof(opt) - 1);
    size_t n = kbox_view.root_guest_len ? kbox_view.root_guest_len : 1;
    if (sizeof(opt) + n > cap)
        return -ENAMETOOLONG;
    memcpy(out + sizeof(opt) - 1, kbox_view.root_guest_len ? kbox_view.root_guest : "/", n);
    out[sizeof(opt) - 1 + n] = 0;
    return (long)(sizeof(opt) - 1 + n);
}
