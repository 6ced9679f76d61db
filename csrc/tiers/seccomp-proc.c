/* The caller's /proc and /dev paths as the seccomp supervisor must walk them (seccomp-proc.h). */
#include "tiers/seccomp-proc.h"
#include "tiers/runtime.h"
#include "core/view.h"
#include "lib/proc.h"
#include "lib/self.h"
#include "lib/str.h"
#include "lib/sys.h"
#include <linux/errno.h>
#include <linux/fcntl.h>

#define PATH_CAP KBOX_VIEW_PATH_MAX

void kbox_sview_fd_path(struct kbox_buf *b, int pid, long fd)
{
    kbox_buf_puts(b, "/proc/");
    kbox_buf_dec(b, pid);
    kbox_buf_puts(b, "/fd/");
    kbox_buf_dec(b, fd);
}

long kbox_sview_dir_of(const struct kbox_sview_run *run, int tid, int fd)
{
    if (fd == AT_FDCWD)
        fd = run->cwd_fd;
    else if (fd < 0 || fd == run->cwd_fd || fd == run->cwd_fd - 1 /* a chroot's root */)
        return -EBADF;
    char p[64];
    struct kbox_buf b;
    kbox_buf_init(&b, p, sizeof(p));
    kbox_sview_fd_path(&b, tid, fd);
    long r = kbox_openat(AT_FDCWD, p, O_PATH | O_CLOEXEC, 0);
    return r == -ENOENT ? -EBADF : r;
}

long kbox_sview_file_of(int tgid, int fd)
{
    long pidfd = KSYS2(__NR_pidfd_open, tgid, 0);
    if (pidfd < 0)
        return pidfd;
    long r = KSYS3(__NR_pidfd_getfd, pidfd, fd, 0);
    kbox_close((int)pidfd);
    return r;
}

int kbox_sview_tgid(int tid)
{
    long v;
    return kbox_proc_status_field(tid, "Tgid:", 10, &v) == 0 && v > 0 ? (int)v : tid;
}

void kbox_sview_umask(int tid)
{
    long m;
    if (kbox_proc_status_field(tid, "Umask:", 8, &m) == 0)
        KSYS1(__NR_umask, m & 0777);
}

/* Whether process `pid` runs kbox (one of the run's processes, with kbox_rt in it). */
static bool runs_kbox(const struct kbox_sview_run *sv, const char *pid, size_t len)
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

bool kbox_sview_is_under(const char *p, const char *name)
{
    size_t n = kbox_strlen(name);
    return kbox_strncmp(p, name, n) == 0 && (p[n] == 0 || p[n] == '/');
}

/* A path under /proc or /dev as the caller means it: "self" and the links to it name the
 * caller, /proc/PID/cwd the descriptor of its working directory, /proc/PID/exe (whole)
 * the program, as a path in the view.  `..` and `.` are refused and `//` folded first, so
 * that what is rewritten is what the kernel would walk.  Other paths are copied. */
long kbox_sview_as_caller(const struct kbox_sview_run *sv, int tgid, int tid, const char *in, char *out,
                          size_t cap, char *link, size_t linkcap, bool *exe)
{
    *exe = false;
    link[0] = 0;
    struct kbox_buf b;
    kbox_buf_init(&b, out, cap);
    bool proc = kbox_sview_is_under(in, "/proc"), dev = kbox_sview_is_under(in, "/dev");
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
                else if (kbox_sview_is_under(n, "root") || kbox_sview_is_under(n, "cwd"))
                    checked = !(n[kbox_sview_is_under(n, "root") ? 4 : 3] == '/'); /* the rest, if any */
                after_fd = kbox_sview_is_under(n, "fd");
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
        if (tgid == tid && (kbox_sview_is_under(d, "fd") || kbox_sview_is_under(d, "stdin") || kbox_sview_is_under(d, "stdout") ||
                            kbox_sview_is_under(d, "stderr")))
            tgid = kbox_sview_tgid(tid);
        if (kbox_sview_is_under(d, "fd")) {
            kbox_buf_puts(&b, "/proc/");
            kbox_buf_dec(&b, tgid);
            kbox_buf_puts(&b, "/fd");
            kbox_buf_puts(&b, d + 2);
        } else if (kbox_sview_is_under(d, "stdin") || kbox_sview_is_under(d, "stdout") || kbox_sview_is_under(d, "stderr")) {
            size_t len = d[3] == 'i' ? 5 : 6;
            kbox_sview_fd_path(&b, tgid, d[3] == 'i' ? 0 : d[3] == 'o' ? 1 : 2);
            kbox_buf_puts(&b, d + len);
        } else {
            kbox_buf_puts(&b, norm);
        }
        return b.truncated ? -ENAMETOOLONG : 0;
    }
    const char *q = norm + 5;
    if (*q == '/')
        q++;
    if (tgid == tid && (kbox_sview_is_under(q, "self") || kbox_sview_is_under(q, "mounts") || kbox_sview_is_under(q, "net") ||
                        kbox_sview_is_under(q, "thread-self")))
        tgid = kbox_sview_tgid(tid); /* the caller may be a thread: the trace's cache is not always on */
    kbox_buf_puts(&b, "/proc/");
    char pid[24];
    size_t pidlen;
    if (kbox_sview_is_under(q, "self") || kbox_sview_is_under(q, "mounts") || kbox_sview_is_under(q, "net")) {
        struct kbox_buf pb;
        kbox_buf_init(&pb, pid, sizeof(pid));
        kbox_buf_dec(&pb, tgid);
        pidlen = pb.len;
        kbox_buf_puts(&b, pid);
        rest = kbox_sview_is_under(q, "self") ? q + 4 : q - 1; /* /proc/mounts -> /proc/<tgid>/mounts */
        if (kbox_sview_is_under(q, "self") && !*rest) {
            memcpy(link, pid, pidlen + 1); /* readlink("/proc/self") */
            *exe = true;
        }
    } else if (kbox_sview_is_under(q, "thread-self")) {
        /* /proc/<tid> holds the thread's own files, as /proc/<tgid>/task/<tid> does. */
        struct kbox_buf pb;
        kbox_buf_init(&pb, pid, sizeof(pid));
        kbox_buf_dec(&pb, tid);
        pidlen = pb.len;
        kbox_buf_puts(&b, pid);
        rest = q + 11;
        if (!*rest) {
            struct kbox_buf lb;
            kbox_buf_init(&lb, link, linkcap);
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
    if (kbox_sview_is_under(rest, "/task")) {
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
    if (kbox_sview_is_under(rest, "/cwd") && runs_kbox(sv, pid, pidlen)) {
        kbox_buf_puts(&b, "/fd/");
        kbox_buf_dec(&b, sv->cwd_fd);
        rest += 4;
    } else if (kbox_strcmp(rest, "/exe") == 0 && runs_kbox(sv, pid, pidlen)) {
        long n = guest_exe_of(pid, pidlen, out, cap);
        if (n >= 0) {
            memcpy(link, out, (size_t)n + 1);
            *exe = true;
            return 0;
        }
    }
    kbox_buf_puts(&b, rest);
    return b.truncated ? -ENAMETOOLONG : 0;
}

