/* The root view in the seccomp tier: the supervisor serves every call that takes a path.
 *
 * Containment is the point of this tier, so nothing the program could change after a check
 * is handed back to the kernel: the supervisor copies each path once, resolves the copy
 * inside the view (core/view.c, as the in-process tiers do) and makes the call itself, on
 * descriptors of its own: the caller's directory descriptors are reopened through
 * /proc/<tid>/fd/N, results are copied back into the caller's memory, and an opened file
 * is installed in the caller with SECCOMP_IOCTL_NOTIF_ADDFD (with SEND: installed and
 * answered at once).  The supervisor runs as the program's user, with the caller's umask
 * for calls that create files.
 *
 * What the supervisor cannot do from outside has its own arrangement (seccomp-guest.h):
 * the working directory is a descriptor the supervisor keeps in the caller (chdir and
 * fchdir replace it, getcwd reads it, close and dup2 cannot touch it), and execve goes
 * through kbox.  The one call let through on trust, execve of kbox's own
 * "/proc/self/exe" string, is safe only while that string cannot change, so the calls
 * that would remap or unprotect kbox's image are refused, and so is every way to write
 * another process's memory or take its descriptors (ptrace, process_vm_writev,
 * pidfd_getfd, /proc/PID/mem opened for writing).  Calls that would walk paths the
 * supervisor never sees are refused too: io_uring (its requests bypass seccomp), the mount
 * API, open_by_handle_at.
 *
 * The supervisor walks /proc as itself, so the caller's /proc/self, /proc/thread-self,
 * /dev/fd and /dev/std* are rewritten to name the caller, /proc/PID/cwd names the
 * descriptor that is its working directory and /proc/PID/exe the program (kbox_rt's
 * guest_exe in that process), and no walk may reach the supervisor's own /proc entry.
 *
 * A process that made a chroot has its own root (seccomp-chroot.c): the view's root is
 * switched to it while its call is served.
 */
#include "tiers/seccomp-view.h"
#include "tiers/seccomp-chroot.h"
#include "tiers/seccomp-guest.h"
#include "tiers/seccomp-proc.h"
#include "tiers/seccomp-sock.h"
#include "tiers/pathargs.h"
#include "tiers/runtime.h"
#include "core/mem.h"
#include "core/view.h"
#include "core/view-chroot.h"
#include "lib/buf.h"
#include "lib/self.h"
#include "lib/str.h"
#include "lib/sys.h"
#include <linux/errno.h>
#include <linux/fcntl.h>
#include <linux/ioctl.h>
#include <linux/mman.h>
#include <linux/openat2.h>
#include <linux/seccomp.h>
#include <linux/signal.h>
#include <linux/stat.h>
#include <asm/stat.h>
#include <asm/statfs.h>

#ifndef SECCOMP_ADDFD_FLAG_SEND
#define SECCOMP_ADDFD_FLAG_SEND (1UL << 1)
#endif
#ifndef __NR_openat2
#define __NR_openat2 437
#endif
#define PATH_CAP KBOX_VIEW_PATH_MAX
#define XATTR_CAP 65536

extern const char __executable_start[], _end[];

/* One call's copies (the supervisor serves one call at a time). */
static struct {
    char guest[2][PATH_CAP];   /* the paths as the program gave them (what the trace shows) */
    char proc[2][PATH_CAP];    /* the same, naming the caller where they named "self" */
    char host[2][PATH_CAP];    /* resolved in the view */
    char str[2][PATH_CAP];     /* other strings: xattr names, a symlink's contents */
    char link[PATH_CAP];       /* what a /proc link the caller named holds, as it should see it */
    int fds[6];                /* descriptors of the supervisor's to close after the call */
    int nfds;
    union {
        struct stat st;
        struct statx stx;
        struct statfs sfs;
        char bytes[XATTR_CAP];
    } out;
    char in[XATTR_CAP];
} c;

static struct kbox_mem self_mem;

int kbox_sview_init(struct kbox_sview *sv, int listener, int cwd_fd)
{
    sv->listener = listener;
    sv->run.cwd_fd = cwd_fd;
    sv->image_lo = (uint64_t)(uintptr_t)__executable_start;
    sv->image_hi = ((uint64_t)(uintptr_t)_end + 4095) & ~4095ULL;
    long n = KSYS4(__NR_readlinkat, AT_FDCWD, "/proc/self/exe", sv->run.self_exe, sizeof(sv->run.self_exe) - 1);
    if (n <= 0)
        return n < 0 ? (int)n : -ENOENT;
    sv->run.self_exe[n] = 0;
    sv->run.self_exe_len = (size_t)n;
    struct kbox_buf b;
    kbox_buf_init(&b, kbox_view.private_proc, sizeof(kbox_view.private_proc));
    kbox_buf_puts(&b, "/proc/");
    kbox_buf_dec(&b, kbox_getpid());
    kbox_mem_init_self(&self_mem);
    return 0;
}

static void keep_fd(long fd)
{
    if (fd >= 0 && c.nfds < (int)(sizeof(c.fds) / sizeof(c.fds[0])))
        c.fds[c.nfds++] = (int)fd;
}

/* A descriptor of the supervisor's naming what the caller's `fd` names (AT_FDCWD: its
 * working directory); an O_PATH reopen, enough for resolving and for the *at calls. */
static long grab_dir(const struct kbox_sview *sv, int tid, int fd)
{
    long r = kbox_sview_dir_of(&sv->run, tid, fd);
    keep_fd(r);
    return r;
}

/* The caller's open file `fd` itself (the same open file description), for the calls that
 * act on it (inotify_add_watch's instance): pidfd_getfd. */
static long grab_file(int tgid, int fd)
{
    long r = kbox_sview_file_of(tgid, fd);
    keep_fd(r);
    return r;
}

/* The caller's string at `addr` into buf; its length, or -errno. */
static long read_str(const struct kbox_req *req, uint64_t addr, char *buf, size_t cap)
{
    long n = kbox_mem_read_str(req->mem, addr, buf, cap);
    if (n >= 0 && (size_t)n >= cap - 1)
        return -ENAMETOOLONG;
    return n;
}

/* Resolves path argument i of the call into c.host[k] (and *dirfd for the call: the
 * supervisor's descriptor when the path is empty).  *exe: it named a /proc link whose
 * value the caller must see differently (c.link: /proc/self, /proc/PID/exe). */
static long resolve_arg(const struct kbox_sview *sv, const struct kbox_req *req, struct kbox_req *shown,
                        const struct kbox_sysent *e, int i, int k, bool follow, long *dirfd, bool *exe,
                        int *resolved)
{
    const uint64_t *a = req->args;
    int tgid = req->pid, tid = req->tid;
    long n = read_str(req, a[i], c.guest[k], PATH_CAP);
    if (n < 0)
        return n;
    shown->args[i] = (uint64_t)(uintptr_t)c.guest[k];
    long r = kbox_sview_as_caller(&sv->run, tgid, tid, c.guest[k], c.proc[k], PATH_CAP, c.link, sizeof(c.link), exe);
    if (r < 0)
        return r;
    const char *g = c.proc[k];
    *dirfd = AT_FDCWD;
    if (g[0] != '/') {
        *dirfd = grab_dir(sv, tid, kbox_path_dirfd(e, a, i));
        if (*dirfd < 0)
            return *dirfd;
    }
    if (!follow && kbox_path_removes(req->nr) && kbox_view_bind_named((int)*dirfd, g))
        return -EBUSY;
    int tmp = -1;
    r = kbox_view_host_path((int)*dirfd, g, follow, c.host[k], PATH_CAP, &tmp);
    keep_fd(tmp);
    *resolved = tmp;
    return r;
}

/* A host path the kernel wrote (a /proc link's target) as the guest's, in place. */
static long guest_link(char *buf, long len, size_t cap)
{
    char host[PATH_CAP + 1];
    if (len <= 0 || len > PATH_CAP)
        return len;
    memcpy(host, buf, (size_t)len);
    host[len] = 0;
    long g = kbox_view_report_path(host, host, sizeof(host), false);
    if (g < 0)
        return len;
    if ((size_t)g > cap)
        g = (long)cap; /* readlink truncates */
    memcpy(buf, host, (size_t)g);
    return g;
}

/* Sizes of the structures pointer arguments carry, per call: >0 in, <0 out, 0 none. */
static long ptr_size(int nr, int i, const uint64_t *a)
{
    switch (nr) {
#ifdef __NR_statfs
    case __NR_statfs:
        return i == 1 ? -(long)sizeof(struct statfs) : 0;
#endif
#ifdef __NR_utime
    case __NR_utime:
        return i == 1 ? 16 : 0;
#endif
#ifdef __NR_utimes
    case __NR_utimes:
        return i == 1 ? 32 : 0;
#endif
#ifdef __NR_futimesat
    case __NR_futimesat:
        return i == 2 ? 32 : 0;
#endif
    case __NR_utimensat:
        return i == 2 ? 32 : 0;
    case __NR_statx:
        return i == 4 ? -(long)sizeof(struct statx) : 0;
    case __NR_setxattr:
    case __NR_lsetxattr:
        return i == 2 ? (long)(a[3] > XATTR_CAP ? XATTR_CAP : a[3]) : 0;
    case __NR_getxattr:
    case __NR_lgetxattr:
        return i == 2 ? -(long)(a[3] > XATTR_CAP ? XATTR_CAP : a[3]) : 0;
    case __NR_listxattr:
    case __NR_llistxattr:
        return i == 1 ? -(long)(a[2] > XATTR_CAP ? XATTR_CAP : a[2]) : 0;
    default:
        return 0;
    }
}

/* A FIFO opened for blocking would stop the supervisor until a peer comes: a child of the
 * supervisor opens it and answers the call itself. */
static long open_fifo_in_child(const struct kbox_sview *sv, uint64_t id, const char *path, int flags, int mode)
{
    long pid = KSYS5(__NR_clone, SIGCHLD, 0, 0, 0, 0);
    if (pid != 0)
        return pid < 0 ? pid : -EINPROGRESS; /* the parent: the child answers */
    long fd = kbox_openat(AT_FDCWD, path, flags | O_CLOEXEC, mode);
    if (fd < 0) {
        struct seccomp_notif_resp resp = { .id = id, .error = (int32_t)fd };
        KSYS3(__NR_ioctl, sv->listener, SECCOMP_IOCTL_NOTIF_SEND, &resp);
    } else {
        struct seccomp_notif_addfd add = { .id = id, .flags = SECCOMP_ADDFD_FLAG_SEND,
                                           .srcfd = (uint32_t)fd, .newfd_flags = (uint32_t)(flags & O_CLOEXEC) };
        KSYS3(__NR_ioctl, sv->listener, SECCOMP_IOCTL_NOTIF_ADDFD, &add);
    }
    kbox_exit_group(0);
}

/* The open family: opened here, installed in the caller. */
static enum kbox_sview_action serve_open(const struct kbox_sview *sv, const struct kbox_req *req, uint64_t id,
                                         int64_t *ret)
{
    const uint64_t *a = req->args;
    int pi = req->nr == __NR_openat || req->nr == __NR_openat2 ? 1 : 0;
    int flags, mode;
    struct open_how how = { 0 };
#ifdef __NR_creat
    if (req->nr == __NR_creat) {
        flags = O_CREAT | O_WRONLY | O_TRUNC;
        mode = (int)a[1];
    } else
#endif
    if (req->nr == __NR_openat2) {
        /* Its open_how, copied once; what the kernel would refuse is refused here, since
         * the calls below pass mode and flags on as openat would. */
        long h = kbox_open_how_read(req->mem, a[2], a[3], &how);
        if (h == 0 && ((how.flags >> 32) || (how.mode & ~07777ULL) ||
                       (how.mode && !(how.flags & (O_CREAT | __O_TMPFILE)))))
            h = -EINVAL;
        if (h < 0) {
            *ret = h;
            return KBOX_SV_RESULT;
        }
        flags = (int)how.flags;
        mode = (int)how.mode;
    } else {
        flags = (int)a[pi + 1];
        mode = (int)a[pi + 2];
    }
    /* RESOLVE_BENEATH/IN_ROOT: the program's own confinement, to its directory, walks the
     * path as given (no /proc translation: it cannot leave that directory). */
    bool scoped = how.resolve & (RESOLVE_BENEATH | RESOLVE_IN_ROOT);
    long r = read_str(req, a[pi], c.guest[0], PATH_CAP);
    bool exe;
    if (r >= 0 && scoped)
        memcpy(c.proc[0], c.guest[0], (size_t)r + 1);
    else if (r >= 0)
        r = kbox_sview_as_caller(&sv->run, req->pid, req->tid, c.guest[0], c.proc[0], PATH_CAP, c.link, sizeof(c.link), &exe);
    long dirfd = AT_FDCWD;
    if (r >= 0 && (c.proc[0][0] != '/' || scoped)) {
        dirfd = grab_dir(sv, req->tid, pi ? (int)a[0] : AT_FDCWD);
        r = dirfd < 0 ? dirfd : 0;
    }
    if (r < 0) {
        *ret = r;
        return KBOX_SV_RESULT;
    }
    if (flags & (O_CREAT | __O_TMPFILE))
        kbox_sview_umask(req->tid);
    if (flags & O_PATH) {
        /* ADDFD passes only real open files: the program gets one open for reading
         * (docs/tiers.md: a symlink itself, or a file it may not read, cannot be had). */
        flags = (flags & (O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)) | O_RDONLY;
    }
    /* A FIFO's blocking open goes to a child (open_fifo_in_child), so the type is looked at
     * before anything is opened: resolved to an O_PATH descriptor first, then reopened.
     * (Opening non-blocking to look would itself be a FIFO's reader or writer for a moment
     * and wake, or fail, the other end.) */
    bool probe = !(flags & (O_NONBLOCK | O_PATH | O_DIRECTORY)) && (flags & (O_CREAT | O_EXCL)) != (O_CREAT | O_EXCL);
    long fd = -ENOENT;
    if (probe) {
        long pfd = kbox_view_openat2((int)dirfd, c.proc[0], O_PATH | O_CLOEXEC | (flags & O_NOFOLLOW), 0,
                                     how.resolve);
        if (pfd < 0 && (pfd != -ENOENT || !(flags & O_CREAT))) {
            *ret = pfd;
            return KBOX_SV_RESULT;
        }
        if (pfd >= 0) {
            keep_fd(pfd);
            struct stat st;
            long r2 = KSYS2(__NR_fstat, pfd, &st);
            unsigned type = r2 < 0 ? 0 : st.st_mode & S_IFMT;
            char self[32];
            struct kbox_buf b;
            kbox_buf_init(&b, self, sizeof(self));
            kbox_buf_puts(&b, "/proc/self/fd/");
            kbox_buf_dec(&b, pfd);
            if (type == S_IFLNK) {
                *ret = -ELOOP; /* O_NOFOLLOW on a symlink */
                return KBOX_SV_RESULT;
            }
            if (type == S_IFIFO) {
                *ret = open_fifo_in_child(sv, id, self, flags & ~O_NOFOLLOW, mode);
                return *ret == -EINPROGRESS ? KBOX_SV_ANSWERED : KBOX_SV_RESULT;
            }
            fd = kbox_openat(AT_FDCWD, self, (flags & ~O_NOFOLLOW) | O_CLOEXEC, mode);
        }
    }
    if (fd == -ENOENT)
        fd = req->nr == __NR_openat2
                 ? kbox_view_openat2((int)dirfd, c.proc[0], (unsigned)flags | O_CLOEXEC, (unsigned)mode, how.resolve)
                 : kbox_view_openat((int)dirfd, c.proc[0], flags | O_CLOEXEC, mode);
    if (fd < 0) {
        *ret = fd;
        return KBOX_SV_RESULT;
    }
    bool passthrough = c.proc[0][0] == '/' && (kbox_sview_is_under(c.proc[0], "/proc") || kbox_sview_is_under(c.proc[0], "/dev") ||
                                               kbox_sview_is_under(c.proc[0], "/sys"));
    if (passthrough && (flags & O_ACCMODE) != O_RDONLY) {
        /* No writing into a process's memory (kbox's image in it is what keeps execve
         * inside the view). */
        char host[128];
        long n = kbox_view_fd_host_path((int)fd, host, sizeof(host));
        size_t l = n > 4 ? (size_t)n : 0;
        if (l && kbox_sview_is_under(host, "/proc") && kbox_strcmp(host + l - 4, "/mem") == 0) {
            kbox_close((int)fd);
            *ret = -EACCES;
            return KBOX_SV_RESULT;
        }
    }
    struct seccomp_notif_addfd add = { .id = id, .flags = SECCOMP_ADDFD_FLAG_SEND, .srcfd = (uint32_t)fd,
                                       .newfd_flags = (uint32_t)(flags & O_CLOEXEC) };
    r = KSYS3(__NR_ioctl, sv->listener, SECCOMP_IOCTL_NOTIF_ADDFD, &add);
    kbox_close((int)fd);
    *ret = r;
    /* -ENOENT: the caller is gone (or its call was interrupted); -EMFILE and the like: the
     * call is still waiting and fails with that. */
    return r >= 0 || r == -ENOENT ? KBOX_SV_ANSWERED : KBOX_SV_RESULT;
}

/* chdir and fchdir: the directory's descriptor replaces the caller's working directory.
 * ADDFD takes only real open files (not O_PATH ones), so the directory is opened for
 * reading: a directory the program may enter but not read (mode 0711) is refused. */
static int64_t set_cwd(const struct kbox_sview *sv, uint64_t id, long dirfd)
{
    if (dirfd < 0)
        return dirfd;
    struct stat st;
    long r = KSYS2(__NR_fstat, dirfd, &st);
    if (r < 0)
        return r;
    if ((st.st_mode & S_IFMT) != S_IFDIR)
        return -ENOTDIR;
    if (kbox_view_cwd_allowed((int)dirfd) != 1)
        return -EACCES;
    r = KSYS4(__NR_faccessat2, dirfd, "", 1 /* X_OK */, AT_EMPTY_PATH);
    if (r < 0)
        return r;
    dirfd = kbox_openat((int)dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
    if (dirfd < 0)
        return dirfd;
    keep_fd(dirfd);
    struct seccomp_notif_addfd add = { .id = id, .flags = SECCOMP_ADDFD_FLAG_SETFD, .srcfd = (uint32_t)dirfd,
                                       .newfd = (uint32_t)sv->run.cwd_fd, .newfd_flags = 0 };
    r = KSYS3(__NR_ioctl, sv->listener, SECCOMP_IOCTL_NOTIF_ADDFD, &add);
    return r < 0 ? r : 0;
}

static int64_t serve_getcwd(const struct kbox_sview *sv, const struct kbox_req *req, struct kbox_req *shown)
{
    long fd = grab_dir(sv, req->tid, AT_FDCWD);
    if (fd < 0)
        return fd;
    char *host = c.out.bytes;
    long n = kbox_view_fd_host_path((int)fd, host, PATH_CAP);
    if (n < 0)
        return n;
    long g = kbox_view_report_path(host, host, PATH_CAP, true);
    if (g >= 0)
        n = g;
    if ((uint64_t)n + 1 > req->args[1])
        return -ERANGE;
    if (req->mem->write(req->mem, req->args[0], host, (size_t)n + 1) != n + 1)
        return -EFAULT;
    shown->args[0] = (uint64_t)(uintptr_t)host;
    return n + 1;
}

/* Every other call with a path: made here with the supervisor's copies. */
static int64_t serve_path_call(const struct kbox_sview *sv, const struct kbox_req *req, const struct kbox_sysent *e,
                               struct kbox_req *shown)
{
    const uint64_t *a = req->args;
    uint64_t la[6];
    for (int i = 0; i < 6; i++)
        la[i] = a[i];
    uint64_t out_addr = 0;
    long out_len = 0;
    int k = 0;
    bool proc_link = false, exe = false;
    for (int i = 0; i < e->nargs; i++) {
        switch (e->arg[i]) {
        case KA_PATH: {
            if (k >= 2)
                return -ENOSYS;
            bool follow = kbox_path_follows(req->nr, e, a, i);
            long dirfd;
            int resolved;
            long r = resolve_arg(sv, req, shown, e, i, k, follow, &dirfd, &exe, &resolved);
            if (r < 0)
                return r;
            if (kbox_path_is_readlink(req->nr) && kbox_view_root_link(c.guest[k])) {
                /* The view's root, as the process sees its root. */
                size_t len = 1;
                if ((int)a[i + 2] <= 0)
                    return -EINVAL;
                if (req->mem->write(req->mem, a[i + 1], "/", len) != (long)len)
                    return -EFAULT;
                return (int64_t)len;
            }
            if (exe) {
                if (req->nr == __NR_readlinkat
#ifdef __NR_readlink
                    || req->nr == __NR_readlink
#endif
                ) {
                    /* The link names the program: its path in the view is the answer. */
                    size_t len = kbox_strlen(c.link), cap = (size_t)a[i + 2];
                    if (len > cap)
                        len = cap;
                    if (req->mem->write(req->mem, a[i + 1], c.link, len) != (long)len)
                        return -EFAULT;
                    shown->args[i] = (uint64_t)(uintptr_t)c.guest[k];
                    shown->args[i + 1] = (uint64_t)(uintptr_t)c.link;
                    return (int64_t)len;
                }
            }
            if (kbox_sview_is_under(c.proc[k], "/proc"))
                proc_link = true;
            la[i] = (uint64_t)(uintptr_t)c.host[k];
            if (i > 0 && e->arg[i - 1] == KA_DIRFD)
                la[i - 1] = c.host[k][0] ? (uint64_t)AT_FDCWD : (uint64_t)dirfd;
            int fl = kbox_path_flags_index(e);
            if (resolved >= 0 && follow && kbox_path_takes_empty(req->nr) && fl > i && i > 0 &&
                e->arg[i - 1] == KA_DIRFD) {
                /* The stat family names the resolved object by its descriptor: no walk
                 * through /proc/self/fd (as view-rt.c does). */
                la[i - 1] = (uint64_t)resolved;
                la[i] = (uint64_t)(uintptr_t)"";
                la[fl] |= AT_EMPTY_PATH;
            }
            shown->args[i] = (uint64_t)(uintptr_t)c.guest[k];
            k++;
            break;
        }
        case KA_STR:
        case KA_LINKTARGET: {
            int s = k < 2 ? k : 1;
            long r = a[i] ? read_str(req, a[i], c.str[s], PATH_CAP) : 0;
            if (r < 0)
                return r;
            if (a[i])
                la[i] = shown->args[i] = (uint64_t)(uintptr_t)c.str[s];
            break;
        }
        case KA_FD: {
            long fd = grab_file(kbox_sview_tgid(req->tid), (int)a[i]);
            if (fd < 0)
                return fd == -ESRCH ? -EBADF : fd;
            la[i] = (uint64_t)fd;
            break;
        }
        case KA_STAT_OUT:
            out_addr = a[i];
            out_len = -(long)sizeof(struct stat);
            la[i] = shown->args[i] = (uint64_t)(uintptr_t)&c.out;
            break;
        case KA_BUF_OUT:
            out_addr = a[i];
            out_len = -(long)(a[i + 1] > XATTR_CAP ? XATTR_CAP : a[i + 1]);
            la[i] = shown->args[i] = (uint64_t)(uintptr_t)&c.out;
            if (i + 1 < 6)
                la[i + 1] = (uint64_t)-out_len;
            break;
        case KA_PTR: {
            long size = ptr_size(req->nr, i, a);
            if (!a[i] || !size)
                break;
            if (size > 0) {
                if (req->mem->read(req->mem, a[i], c.in, (size_t)size) != size)
                    return -EFAULT;
                la[i] = shown->args[i] = (uint64_t)(uintptr_t)c.in;
            } else {
                out_addr = a[i];
                out_len = size;
                la[i] = shown->args[i] = (uint64_t)(uintptr_t)&c.out;
            }
            break;
        }
        default:
            break;
        }
    }
    int nr = req->nr;
    /* The xattr calls' sizes, as the kernel caps them (XATTR_SIZE_MAX, XATTR_LIST_MAX). */
    if (nr == __NR_setxattr || nr == __NR_lsetxattr) {
        if (a[3] > XATTR_CAP)
            return -E2BIG;
    } else if (nr == __NR_getxattr || nr == __NR_lgetxattr) {
        la[3] = a[3] > XATTR_CAP ? XATTR_CAP : a[3];
    } else if (nr == __NR_listxattr || nr == __NR_llistxattr) {
        la[2] = a[2] > XATTR_CAP ? XATTR_CAP : a[2];
    }
    if (nr == __NR_mkdirat || nr == __NR_mknodat
#ifdef __NR_mkdir
        || nr == __NR_mkdir || nr == __NR_mknod
#endif
    )
        kbox_sview_umask(req->tid);
    int64_t r = sv->ids && kbox_ids_file_call(nr)
                    ? kbox_ids_syscall(sv->ids, &self_mem, nr, la)
                    : kbox_syscall6(nr, (long)la[0], (long)la[1], (long)la[2], (long)la[3], (long)la[4], (long)la[5]);
    if (r < 0 || !out_addr)
        return r;
    long len = -out_len;
    if (e->ret == KA_INT && (nr == __NR_readlinkat || nr == __NR_getxattr || nr == __NR_lgetxattr ||
                             nr == __NR_listxattr || nr == __NR_llistxattr
#ifdef __NR_readlink
                             || nr == __NR_readlink
#endif
                             )) {
        len = (long)r;
        if (proc_link && (nr == __NR_readlinkat
#ifdef __NR_readlink
                          || nr == __NR_readlink
#endif
                          ))
            r = len = guest_link(c.out.bytes, len, (size_t)-out_len);
    }
    if (len > 0 && req->mem->write(req->mem, out_addr, &c.out, (size_t)len) != len)
        return -EFAULT;
    return r;
}

/* chdir's and chroot's path: read into c.guest[0], as the supervisor walks it into c.proc[0],
 * with *dirfd the caller's working directory for a relative one (else AT_FDCWD); 0 or -errno. */
static long dir_arg(const struct kbox_sview *sv, const struct kbox_req *req, long *dirfd)
{
    bool exe;
    *dirfd = AT_FDCWD;
    long r = read_str(req, req->args[0], c.guest[0], PATH_CAP);
    if (r >= 0)
        r = kbox_sview_as_caller(&sv->run, req->pid, req->tid, c.guest[0], c.proc[0], PATH_CAP, c.link, sizeof(c.link), &exe);
    if (r >= 0 && c.proc[0][0] != '/')
        r = *dirfd = grab_dir(sv, req->tid, AT_FDCWD);
    return r < 0 ? r : 0;
}

static bool is_path_call(const struct kbox_sview *sv, int nr, const struct kbox_sysent *e)
{
    /* --root-id: fstat, fchown and fchmod are served too (their results are the record's). */
    if ((e->props & KBOX_SC_OPEN) || e->arg[0] == KA_PATH_OUT || nr == __NR_fchdir || (sv->ids && kbox_ids_file_call(nr)))
        return true;
    for (int i = 0; i < e->nargs; i++)
        if (e->arg[i] == KA_PATH)
            return true;
    return false;
}

static enum kbox_sview_action serve(struct kbox_sview *sv, const struct kbox_req *req, uint64_t id,
                                    int64_t *ret, struct kbox_req *shown);

enum kbox_sview_action kbox_sview_serve(struct kbox_sview *sv, const struct kbox_req *req, uint64_t id,
                                        int64_t *ret, struct kbox_req *shown)
{
    *shown = *req;
    if (kbox_sview_refuse(sv, req, ret))
        return KBOX_SV_RESULT;
    const struct kbox_sysent *e = kbox_sysent(req->nr);
    if (!(e && (e->props & KBOX_SC_SOCKADDR)) &&
        (!e || !e->name || !is_path_call(sv, req->nr, e) || (e->props & KBOX_SC_EXEC)))
        return KBOX_SV_CONTINUE;
    int root;
    int r = kbox_schroot_enter(&sv->run, req->tid, &root);
    if (r < 0) {
        *ret = r;
        return KBOX_SV_RESULT;
    }
    enum kbox_sview_action act = serve(sv, req, id, ret, shown);
    kbox_schroot_leave(root);
    return act;
}

/* A call with a path or a socket address, in the caller's root. */
static enum kbox_sview_action serve(struct kbox_sview *sv, const struct kbox_req *req, uint64_t id,
                                    int64_t *ret, struct kbox_req *shown)
{
    const struct kbox_sysent *e = kbox_sysent(req->nr);
    if (e && (e->props & KBOX_SC_SOCKADDR)) {
        /* Socket addresses (AF_UNIX paths inside the view): seccomp-sock.c. */
        bool answered;
        shown->mem = &self_mem;
        if (!kbox_sview_sock_serve(&sv->run, sv->listener, req, id, ret, &answered, shown)) {
            *shown = *req;
            return KBOX_SV_CONTINUE;
        }
        return answered ? KBOX_SV_ANSWERED : KBOX_SV_RESULT;
    }
    /* utimensat(fd, NULL, ...) acts on the descriptor: no path to race. */
    if (req->nr == __NR_utimensat && !req->args[1])
        return KBOX_SV_CONTINUE;
    shown->mem = &self_mem;
    c.nfds = 0;
    enum kbox_sview_action act = KBOX_SV_RESULT;
    if (e->props & KBOX_SC_OPEN) {
        act = serve_open(sv, req, id, ret);
        shown->args[req->nr == __NR_openat || req->nr == __NR_openat2 ? 1 : 0] = (uint64_t)(uintptr_t)c.guest[0];
    } else if (req->nr == __NR_getcwd) {
        *ret = serve_getcwd(sv, req, shown);
    } else if (req->nr == __NR_fchdir) {
        *ret = set_cwd(sv, id, (int)req->args[0] < 0 ? -EBADF : grab_dir(sv, req->tid, (int)req->args[0]));
    } else if (req->nr == __NR_chroot) {
        long dirfd;
        long r = dir_arg(sv, req, &dirfd);
        *ret = r < 0 ? r : kbox_schroot_serve(sv->listener, &sv->run, sv->ids, req, id, dirfd, c.proc[0]);
        shown->args[0] = (uint64_t)(uintptr_t)c.guest[0];
    } else if (req->nr == __NR_chdir) {
        long dirfd;
        long r = dir_arg(sv, req, &dirfd);
        if (r >= 0) {
            r = kbox_view_openat((int)dirfd, c.proc[0], O_PATH | O_DIRECTORY | O_CLOEXEC, 0);
            keep_fd(r);
        }
        *ret = r < 0 ? r : set_cwd(sv, id, r);
        shown->args[0] = (uint64_t)(uintptr_t)c.guest[0];
    } else {
        *ret = serve_path_call(sv, req, e, shown);
    }
    for (int i = 0; i < c.nfds; i++)
        kbox_close(c.fds[i]);
    c.nfds = 0;
    return act;
}
