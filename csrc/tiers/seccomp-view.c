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
 */
#include "tiers/seccomp-view.h"
#include "tiers/seccomp-guest.h"
#include "tiers/pathargs.h"
#include "tiers/runtime.h"
#include "core/mem.h"
#include "core/view.h"
#include "lib/buf.h"
#include "lib/self.h"
#include "lib/str.h"
#include "lib/sys.h"
#include <linux/errno.h>
#include <linux/fcntl.h>
#include <linux/ioctl.h>
#include <linux/mman.h>
#include <linux/prctl.h>
#include <linux/seccomp.h>
#include <linux/signal.h>
#include <linux/stat.h>
#include <asm/stat.h>
#include <asm/statfs.h>

#ifndef SECCOMP_ADDFD_FLAG_SEND
#define SECCOMP_ADDFD_FLAG_SEND (1UL << 1)
#endif
#ifndef MREMAP_FIXED
#define MREMAP_FIXED 2
#endif
#ifndef SHM_REMAP
#define SHM_REMAP 040000
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
    sv->cwd_fd = cwd_fd;
    sv->image_lo = (uint64_t)(uintptr_t)__executable_start;
    sv->image_hi = ((uint64_t)(uintptr_t)_end + 4095) & ~4095ULL;
    long n = KSYS4(__NR_readlinkat, AT_FDCWD, "/proc/self/exe", sv->self_exe, sizeof(sv->self_exe) - 1);
    if (n <= 0)
        return n < 0 ? (int)n : -ENOENT;
    sv->self_exe[n] = 0;
    sv->self_exe_len = (size_t)n;
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

static void proc_fd_path(struct kbox_buf *b, int pid, long fd)
{
    kbox_buf_puts(b, "/proc/");
    kbox_buf_dec(b, pid);
    kbox_buf_puts(b, "/fd/");
    kbox_buf_dec(b, fd);
}

/* A descriptor of the supervisor's naming what the caller's `fd` names (AT_FDCWD: its
 * working directory); an O_PATH reopen, enough for resolving and for the *at calls. */
static long grab_dir(const struct kbox_sview *sv, int tid, int fd)
{
    if (fd == AT_FDCWD)
        fd = sv->cwd_fd;
    else if (fd < 0 || fd == sv->cwd_fd)
        return -EBADF;
    char p[64];
    struct kbox_buf b;
    kbox_buf_init(&b, p, sizeof(p));
    proc_fd_path(&b, tid, fd);
    long r = kbox_openat(AT_FDCWD, p, O_PATH | O_CLOEXEC, 0);
    if (r == -ENOENT)
        return -EBADF;
    keep_fd(r);
    return r;
}

/* The caller's open file `fd` itself (the same open file description), for the calls that
 * act on it (inotify_add_watch's instance): pidfd_getfd. */
static long grab_file(int tgid, int fd)
{
    long pidfd = KSYS2(__NR_pidfd_open, tgid, 0);
    if (pidfd < 0)
        return pidfd;
    long r = KSYS3(__NR_pidfd_getfd, pidfd, fd, 0);
    kbox_close((int)pidfd);
    keep_fd(r);
    return r;
}

static long read_status_field(int tid, const char *field, int base, long *out)
{
    char p[48], buf[2048];
    struct kbox_buf b;
    kbox_buf_init(&b, p, sizeof(p));
    kbox_buf_puts(&b, "/proc/");
    kbox_buf_dec(&b, tid);
    kbox_buf_puts(&b, "/status");
    long fd = kbox_openat(AT_FDCWD, p, O_RDONLY | O_CLOEXEC, 0);
    if (fd < 0)
        return fd;
    long n = kbox_read((int)fd, buf, sizeof(buf) - 1);
    kbox_close((int)fd);
    if (n <= 0)
        return -EIO;
    buf[n] = 0;
    size_t fl = kbox_strlen(field);
    for (long i = 0; i + (long)fl < n; i++) {
        if ((i == 0 || buf[i - 1] == '\n') && kbox_strncmp(buf + i, field, fl) == 0) {
            long v = 0;
            for (long j = i + (long)fl; j < n && buf[j] != '\n'; j++)
                if (buf[j] >= '0' && buf[j] < '0' + base)
                    v = v * base + (buf[j] - '0');
            *out = v;
            return 0;
        }
    }
    return -ENOENT;
}

static int tgid_of(int tid)
{
    long v;
    return read_status_field(tid, "Tgid:", 10, &v) == 0 && v > 0 ? (int)v : tid;
}

/* Calls that create files get the caller's umask. */
static void take_umask(int tid)
{
    long m;
    if (read_status_field(tid, "Umask:", 8, &m) == 0)
        KSYS1(__NR_umask, m & 0777);
}

/* Whether process `pid` runs kbox (one of the run's processes, with kbox_rt in it). */
static bool runs_kbox(const struct kbox_sview *sv, const char *pid, size_t len)
{
    char p[64], exe[4096];
    if (len > 20)
        return false;
    memcpy(p, "/proc/", 6);
    memcpy(p + 6, pid, len);
    memcpy(p + 6 + len, "/exe", 5);
    long n = KSYS4(__NR_readlinkat, AT_FDCWD, p, exe, sizeof(exe));
    return n == (long)sv->self_exe_len && kbox_strncmp(exe, sv->self_exe, (size_t)n) == 0;
}

/* The program process `pid` runs (its guest_exe, read from its memory). */
static long guest_exe_of(const char *pid, size_t len, char *out, size_t cap)
{
    long v = 0;
    for (size_t i = 0; i < len; i++)
        v = v * 10 + (pid[i] - '0');
    long n = kbox_vm_rw(__NR_process_vm_readv, (int)v, (uint64_t)(uintptr_t)kbox_rt.guest_exe, out, cap - 1);
    if (n <= 0)
        return -ENOENT;
    out[n] = 0;
    n = (long)kbox_strlen(out);
    return n > 0 && out[0] == '/' ? n : -ENOENT;
}

static bool comp_is(const char *p, const char *name)
{
    size_t n = kbox_strlen(name);
    return kbox_strncmp(p, name, n) == 0 && (p[n] == 0 || p[n] == '/');
}

/* A path under /proc or /dev as the caller means it: "self" and the links to it name the
 * caller, /proc/PID/cwd the descriptor of its working directory, /proc/PID/exe (whole)
 * the program, as a path in the view.  `..` and `.` are refused and `//` folded first, so
 * that what is rewritten is what the kernel would walk.  Other paths are copied. */
static long as_caller(const struct kbox_sview *sv, int tgid, int tid, const char *in, char *out,
                      size_t cap, bool *exe)
{
    *exe = false;
    c.link[0] = 0;
    struct kbox_buf b;
    kbox_buf_init(&b, out, cap);
    bool proc = comp_is(in, "/proc"), dev = comp_is(in, "/dev");
    if (!proc && !dev) {
        kbox_buf_puts(&b, in);
        return b.truncated ? -ENAMETOOLONG : 0;
    }
    /* Fold "//" and refuse "." / ".." components, up to where a process's root, cwd or fd/N
     * link leads into the view (core/view.c walks the rest there, `..` included). */
    char norm[PATH_CAP];
    size_t k = 0;
    int comp = 0;
    bool checked = true, after_fd = false;
    for (const char *p = in; *p;) {
        if (checked && *p == '/') {
            while (p[1] == '/')
                p++;
            const char *n = p + 1;
            if (n[0] == '.' && (n[1] == '/' || n[1] == 0 || (n[1] == '.' && (n[2] == '/' || n[2] == 0))))
                return -EACCES;
            if (proc && ++comp >= 3) {
                if (after_fd)
                    checked = false; /* fd/N: what follows is in the view */
                else if (comp_is(n, "root") || comp_is(n, "cwd"))
                    checked = !(n[comp_is(n, "root") ? 4 : 3] == '/'); /* the rest, if any */
                after_fd = comp_is(n, "fd");
            }
        }
        if (k + 1 >= sizeof(norm))
            return -ENAMETOOLONG;
        norm[k++] = *p++;
    }
    norm[k] = 0;
    const char *rest;
    if (dev) {
        const char *d = norm + 5;
        if (tgid == tid && (comp_is(d, "fd") || comp_is(d, "stdin") || comp_is(d, "stdout") ||
                            comp_is(d, "stderr")))
            tgid = tgid_of(tid);
        if (comp_is(d, "fd")) {
            kbox_buf_puts(&b, "/proc/");
            kbox_buf_dec(&b, tgid);
            kbox_buf_puts(&b, "/fd");
            kbox_buf_puts(&b, d + 2);
        } else if (comp_is(d, "stdin") || comp_is(d, "stdout") || comp_is(d, "stderr")) {
            size_t len = d[3] == 'i' ? 5 : 6;
            proc_fd_path(&b, tgid, d[3] == 'i' ? 0 : d[3] == 'o' ? 1 : 2);
            kbox_buf_puts(&b, d + len);
        } else {
            kbox_buf_puts(&b, norm);
        }
        return b.truncated ? -ENAMETOOLONG : 0;
    }
    const char *q = norm + 5;
    if (*q == '/')
        q++;
    if (tgid == tid && (comp_is(q, "self") || comp_is(q, "mounts") || comp_is(q, "net") ||
                        comp_is(q, "thread-self")))
        tgid = tgid_of(tid); /* the caller may be a thread: the trace's cache is not always on */
    kbox_buf_puts(&b, "/proc/");
    char pid[24];
    size_t pidlen;
    if (comp_is(q, "self") || comp_is(q, "mounts") || comp_is(q, "net")) {
        struct kbox_buf pb;
        kbox_buf_init(&pb, pid, sizeof(pid));
        kbox_buf_dec(&pb, tgid);
        pidlen = pb.len;
        kbox_buf_puts(&b, pid);
        rest = comp_is(q, "self") ? q + 4 : q - 1; /* /proc/mounts -> /proc/<tgid>/mounts */
        if (comp_is(q, "self") && !*rest) {
            memcpy(c.link, pid, pidlen + 1); /* readlink("/proc/self") */
            *exe = true;
        }
    } else if (comp_is(q, "thread-self")) {
        /* /proc/<tid> holds the thread's own files, as /proc/<tgid>/task/<tid> does. */
        struct kbox_buf pb;
        kbox_buf_init(&pb, pid, sizeof(pid));
        kbox_buf_dec(&pb, tid);
        pidlen = pb.len;
        kbox_buf_puts(&b, pid);
        rest = q + 11;
        if (!*rest) {
            struct kbox_buf lb;
            kbox_buf_init(&lb, c.link, sizeof(c.link));
            kbox_buf_dec(&lb, tgid);
            kbox_buf_puts(&lb, "/task/");
            kbox_buf_puts(&lb, pid);
            *exe = true;
        }
    } else {
        const char *d = q;
        while (*q >= '0' && *q <= '9')
            q++;
        pidlen = (size_t)(q - d);
        if (pidlen == 0 || pidlen >= sizeof(pid) || (*q != '/' && *q != 0)) {
            kbox_buf_puts(&b, d);
            return b.truncated ? -ENAMETOOLONG : 0;
        }
        memcpy(pid, d, pidlen);
        pid[pidlen] = 0;
        kbox_buf_puts(&b, pid);
        rest = q;
    }
    /* rest: "" or "/..." after the process (or task) directory. */
    if (comp_is(rest, "/task")) {
        /* /proc/P/task/T/...: the same links, per thread. */
        const char *t = rest + 5;
        if (*t == '/') {
            const char *d = ++t;
            while (*t >= '0' && *t <= '9')
                t++;
            kbox_buf_puts(&b, "/task/");
            struct kbox_buf tb;
            char tmp[24];
            kbox_buf_init(&tb, tmp, sizeof(tmp));
            for (const char *x = d; x < t; x++)
                kbox_buf_putc(&tb, *x);
            kbox_buf_puts(&b, tmp);
            rest = t;
        } else {
            kbox_buf_puts(&b, "/task");
            rest = t;
        }
    }
    if (comp_is(rest, "/cwd") && runs_kbox(sv, pid, pidlen)) {
        kbox_buf_puts(&b, "/fd/");
        kbox_buf_dec(&b, sv->cwd_fd);
        rest += 4;
    } else if (kbox_strcmp(rest, "/exe") == 0 && runs_kbox(sv, pid, pidlen)) {
        long n = guest_exe_of(pid, pidlen, out, cap);
        if (n >= 0) {
            memcpy(c.link, out, (size_t)n + 1);
            *exe = true;
            return 0;
        }
    }
    kbox_buf_puts(&b, rest);
    return b.truncated ? -ENAMETOOLONG : 0;
}

static bool overlaps(uint64_t lo, uint64_t len, uint64_t a, uint64_t b)
{
    return len && lo < b && lo + len > a && lo + len > lo;
}

/* Calls refused for containment, and the working directory's descriptor kept; true if
 * answered (*ret). */
static bool refuse(const struct kbox_sview *sv, const struct kbox_req *req, int64_t *ret)
{
    const uint64_t *a = req->args;
    uint64_t lo = sv->image_lo, hi = sv->image_hi;
    int cwd = sv->cwd_fd;
    switch (req->nr) {
    case __NR_close:
        if ((int)a[0] != cwd)
            return false;
        *ret = 0; /* kept: the program believes it closed it */
        return true;
    case __NR_close_range:
        /* From the gate (seccomp-guest.c splits the program's ranges around it). */
        if ((unsigned)a[0] > (unsigned)cwd || (unsigned)a[1] < (unsigned)cwd)
            return false;
        *ret = -EPERM;
        return true;
#ifdef __NR_dup2
    case __NR_dup2:
#endif
    case __NR_dup3:
        if ((int)a[1] != cwd)
            return false;
        *ret = -EBADF;
        return true;
    case __NR_fcntl:
        if ((int)a[0] != cwd || (int)a[1] != F_SETFD)
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
    case __NR_pivot_root:
    case __NR_chroot:
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
static long resolve_arg(const struct kbox_sview *sv, const struct kbox_req *req, const struct kbox_sysent *e,
                        int i, int k, bool follow, long *dirfd, bool *exe)
{
    const uint64_t *a = req->args;
    int tgid = req->pid, tid = req->tid;
    long n = read_str(req, a[i], c.guest[k], PATH_CAP);
    if (n < 0)
        return n;
    long r = as_caller(sv, tgid, tid, c.guest[k], c.proc[k], PATH_CAP, exe);
    if (r < 0)
        return r;
    const char *g = c.proc[k];
    *dirfd = AT_FDCWD;
    if (g[0] != '/') {
        *dirfd = grab_dir(sv, tid, kbox_path_dirfd(e, a, i));
        if (*dirfd < 0)
            return *dirfd;
    }
    int tmp = -1;
    r = kbox_view_host_path((int)*dirfd, g, follow, c.host[k], PATH_CAP, &tmp);
    keep_fd(tmp);
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
    long g = kbox_view_guest_path(host, host, sizeof(host));
    if (g < 0 || (size_t)g > cap)
        return len;
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
static void open_fifo_in_child(const struct kbox_sview *sv, uint64_t id, int dirfd, const char *path,
                               int flags, int mode)
{
    long pid = KSYS5(__NR_clone, SIGCHLD, 0, 0, 0, 0);
    if (pid != 0)
        return; /* the parent (or a failed fork: the caller waits until it is killed) */
    long fd = kbox_view_openat(dirfd, path, flags | O_CLOEXEC, mode);
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
#ifdef __NR_creat
    if (req->nr == __NR_creat) {
        flags = O_CREAT | O_WRONLY | O_TRUNC;
        mode = (int)a[1];
    } else
#endif
    if (req->nr == __NR_openat2) {
        /* With its own RESOLVE_* flags it would need both confinements at once; the
         * program's libc falls back to openat (as in the in-process tiers). */
        *ret = -ENOSYS;
        return KBOX_SV_RESULT;
    } else {
        flags = (int)a[pi + 1];
        mode = (int)a[pi + 2];
    }
    long r = read_str(req, a[pi], c.guest[0], PATH_CAP);
    bool exe;
    if (r >= 0)
        r = as_caller(sv, req->pid, req->tid, c.guest[0], c.proc[0], PATH_CAP, &exe);
    long dirfd = AT_FDCWD;
    if (r >= 0 && c.proc[0][0] != '/') {
        dirfd = grab_dir(sv, req->tid, pi ? (int)a[0] : AT_FDCWD);
        r = dirfd < 0 ? dirfd : 0;
    }
    if (r < 0) {
        *ret = r;
        return KBOX_SV_RESULT;
    }
    if (flags & (O_CREAT | __O_TMPFILE))
        take_umask(req->tid);
    if (flags & O_PATH) {
        /* ADDFD passes only real open files: the program gets one open for reading
         * (docs/tiers.md: a symlink itself, or a file it may not read, cannot be had). */
        flags = (flags & (O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)) | O_RDONLY;
    }
    /* Opened non-blocking first: a FIFO goes to a child (open_fifo_in_child). */
    bool probe = !(flags & (O_NONBLOCK | O_PATH | O_DIRECTORY)) && (flags & (O_CREAT | O_EXCL)) != (O_CREAT | O_EXCL);
    long fd = kbox_view_openat((int)dirfd, c.proc[0], flags | O_CLOEXEC | (probe ? O_NONBLOCK : 0), mode);
    if (fd == -ENXIO && probe && (flags & O_ACCMODE) == O_WRONLY) {
        /* A FIFO with no reader yet (or a device without its driver: the child's blocking
         * open gets the same error then). */
        open_fifo_in_child(sv, id, (int)dirfd, c.proc[0], flags, mode);
        *ret = -EINPROGRESS;
        return KBOX_SV_ANSWERED;
    }
    if (fd < 0) {
        *ret = fd;
        return KBOX_SV_RESULT;
    }
    struct stat st;
    bool passthrough = c.proc[0][0] == '/' && (comp_is(c.proc[0], "/proc") || comp_is(c.proc[0], "/dev") ||
                                               comp_is(c.proc[0], "/sys"));
    if (probe || passthrough) {
        if (KSYS2(__NR_fstat, fd, &st) < 0)
            st.st_mode = 0;
    }
    if (passthrough && (flags & O_ACCMODE) != O_RDONLY) {
        /* No writing into a process's memory (kbox's image in it is what keeps execve
         * inside the view). */
        char host[128];
        long n = kbox_view_fd_host_path((int)fd, host, sizeof(host));
        size_t l = n > 4 ? (size_t)n : 0;
        if (l && comp_is(host, "/proc") && kbox_strcmp(host + l - 4, "/mem") == 0) {
            kbox_close((int)fd);
            *ret = -EACCES;
            return KBOX_SV_RESULT;
        }
    }
    if (probe && (st.st_mode & S_IFMT) == S_IFIFO) {
        kbox_close((int)fd);
        open_fifo_in_child(sv, id, (int)dirfd, c.proc[0], flags, mode);
        *ret = -EINPROGRESS;
        return KBOX_SV_ANSWERED;
    }
    if (probe) {
        long fl = KSYS2(__NR_fcntl, fd, F_GETFL);
        if (fl >= 0)
            KSYS3(__NR_fcntl, fd, F_SETFL, fl & ~O_NONBLOCK);
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
                                       .newfd = (uint32_t)sv->cwd_fd, .newfd_flags = 0 };
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
    long g = kbox_view_guest_path(host, host, PATH_CAP);
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
            long r = resolve_arg(sv, req, e, i, k, follow, &dirfd, &exe);
            if (r < 0)
                return r;
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
            if (comp_is(c.proc[k], "/proc"))
                proc_link = true;
            la[i] = (uint64_t)(uintptr_t)c.host[k];
            if (i > 0 && e->arg[i - 1] == KA_DIRFD)
                la[i - 1] = c.host[k][0] ? (uint64_t)AT_FDCWD : (uint64_t)dirfd;
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
            long fd = grab_file(tgid_of(req->tid), (int)a[i]);
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
        take_umask(req->tid);
    int64_t r = kbox_syscall6(nr, (long)la[0], (long)la[1], (long)la[2], (long)la[3], (long)la[4], (long)la[5]);
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

static bool is_path_call(int nr, const struct kbox_sysent *e)
{
    if ((e->props & KBOX_SC_OPEN) || e->arg[0] == KA_PATH_OUT || nr == __NR_fchdir)
        return true;
    for (int i = 0; i < e->nargs; i++)
        if (e->arg[i] == KA_PATH)
            return true;
    return false;
}

enum kbox_sview_action kbox_sview_serve(struct kbox_sview *sv, const struct kbox_req *req, uint64_t id,
                                        int64_t *ret, struct kbox_req *shown)
{
    *shown = *req;
    if (refuse(sv, req, ret) || keep_sigsys(req, ret))
        return KBOX_SV_RESULT;
    const struct kbox_sysent *e = kbox_sysent(req->nr);
    if (!e || !e->name || !is_path_call(req->nr, e) || (e->props & KBOX_SC_EXEC))
        return KBOX_SV_CONTINUE;
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
    } else if (req->nr == __NR_chdir) {
        bool exe;
        long r = read_str(req, req->args[0], c.guest[0], PATH_CAP);
        if (r >= 0)
            r = as_caller(sv, req->pid, req->tid, c.guest[0], c.proc[0], PATH_CAP, &exe);
        long dirfd = AT_FDCWD;
        if (r >= 0 && c.proc[0][0] != '/')
            r = dirfd = grab_dir(sv, req->tid, AT_FDCWD);
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
