#include "core/view.h"
#include "lib/buf.h"
#include "lib/str.h"
#include "lib/sys.h"
#include <linux/errno.h>
#include <linux/fcntl.h>
#include <linux/openat2.h>

struct kbox_view kbox_view = { .root_fd = -1, .base_fd = -1, .chroot_fd_at = -1 };

int kbox_view_init(const char *root, int fd_at)
{
    size_t n = kbox_strlen(root);
    if (root[0] != '/' || n >= sizeof(kbox_view.root))
        return -EINVAL;
    long fd = kbox_openat(AT_FDCWD, root, O_PATH | O_DIRECTORY | O_CLOEXEC, 0);
    if (fd < 0)
        return (int)fd;
    if (fd_at >= 0 && KSYS3(__NR_dup3, fd, fd_at, O_CLOEXEC) == fd_at) {
        kbox_close((int)fd);
        fd = fd_at;
    }
    while (n > 1 && root[n - 1] == '/')
        n--;
    if (n == 1)
        n = 0; /* the host's own root: every host path is inside */
    memcpy(kbox_view.root, root, n);
    kbox_view.root[n] = 0;
    kbox_view.root_len = n;
    kbox_view.root_fd = (int)fd;
    memcpy(kbox_view.base, root, n);
    kbox_view.base[n] = 0;
    kbox_view.base_len = n;
    kbox_view.base_fd = (int)fd;
    return 0;
}

/* The kernel's VALID_OPEN_FLAGS: what openat2 accepts. */
#define OPEN_FLAGS_KNOWN                                                                        \
    (O_ACCMODE | O_CREAT | O_EXCL | O_NOCTTY | O_TRUNC | O_APPEND | O_NONBLOCK | O_DSYNC |    \
     FASYNC | O_DIRECT | O_LARGEFILE | O_DIRECTORY | O_NOFOLLOW | O_NOATIME | O_CLOEXEC |      \
     __O_SYNC | O_PATH | __O_TMPFILE)

static bool has_prefix_dir(const char *p, const char *dir)
{
    size_t n = kbox_strlen(dir);
    return kbox_strncmp(p, dir, n) == 0 && (p[n] == 0 || p[n] == '/');
}

/* Guest paths that are the host's: the kernel's own filesystems. */
static bool host_passthrough(const char *p)
{
    return has_prefix_dir(p, "/proc") || has_prefix_dir(p, "/dev") || has_prefix_dir(p, "/sys");
}

/* Paths through a process's links in /proc that would walk the host's tree from a point in
 * the view: /proc/P/root[/rest] is the view's root; /proc/P/cwd/rest and /proc/P/fd/N/rest
 * continue from the link's guest path, inside the view (a link outside the view cannot be
 * walked: -EACCES).  Returns the guest path to resolve instead (in buf or inside p), NULL
 * for an ordinary /proc path, or NULL with *err set. */
static const char *proc_translate(const char *p, char *buf, size_t cap, long *err)
{
    if (kbox_strncmp(p, "/proc/", 6) != 0)
        return NULL;
    const char *q = p + 6;
    if (kbox_strncmp(q, "self/", 5) == 0)
        q += 5;
    else if (kbox_strncmp(q, "thread-self/", 12) == 0)
        q += 12;
    else {
        const char *d = q;
        while (*q >= '0' && *q <= '9')
            q++;
        if (q == d || *q != '/')
            return NULL;
        q++;
    }
    if (kbox_strncmp(q, "root", 4) == 0 && (q[4] == 0 || q[4] == '/'))
        return q[4] ? q + 4 : "/";
    const char *rest;
    if (kbox_strncmp(q, "cwd/", 4) == 0) {
        rest = q + 4;
    } else if (kbox_strncmp(q, "fd/", 3) == 0) {
        rest = q + 3;
        while (*rest >= '0' && *rest <= '9')
            rest++;
        if (rest == q + 3 || *rest != '/')
            return NULL;
        rest++;
    } else {
        return NULL;
    }
    if (!*rest)
        return NULL; /* the link itself: opening it walks nothing */
    char link[64], host[KBOX_VIEW_PATH_MAX];
    size_t ln = (size_t)(rest - 1 - p);
    if (ln >= sizeof(link))
        return NULL;
    memcpy(link, p, ln);
    link[ln] = 0;
    long n = KSYS4(__NR_readlinkat, AT_FDCWD, link, host, sizeof(host) - 1);
    if (n < 0) {
        *err = n;
        return NULL;
    }
    host[n] = 0;
    long g = kbox_view_guest_path(host, buf, cap);
    if (g < 0) {
        *err = -EACCES;
        return NULL;
    }
    struct kbox_buf b;
    kbox_buf_init(&b, buf + g, cap - (size_t)g);
    kbox_buf_putc(&b, '/');
    kbox_buf_puts(&b, rest);
    if (b.truncated) {
        *err = -ENAMETOOLONG;
        return NULL;
    }
    return buf;
}

/* The guest path to resolve for `path`: a /proc link's target inside the view, or `path`;
 * NULL with *err set when it cannot be. */
static const char *through_proc(const char *path, char *buf, size_t cap, long *err)
{
    *err = 0;
    const char *t = proc_translate(path, buf, cap, err);
    if (!t && *err)
        return NULL;
    return t ? t : path;
}

static void fd_path(struct kbox_buf *b, long fd);

long kbox_view_fd_host_path(int fd, char *host, size_t cap)
{
    char link[32];
    struct kbox_buf b;
    kbox_buf_init(&b, link, sizeof(link));
    fd_path(&b, fd);
    long n = KSYS4(__NR_readlinkat, AT_FDCWD, link, host, cap - 1);
    if (n >= 0)
        host[n] = 0;
    return n;
}

/* Directory `dirfd` (AT_FDCWD: the working directory) named by `name` (guest or outer path):
 * 0, -EXDEV when it is outside, or -errno. */
static long dir_named(int dirfd, char *out, size_t cap, long (*name)(const char *, char *, size_t))
{
    char host[KBOX_VIEW_PATH_MAX];
    long n = dirfd == AT_FDCWD ? KSYS2(__NR_getcwd, host, sizeof(host))
                               : kbox_view_fd_host_path(dirfd, host, sizeof(host));
    if (n < 0)
        return n;
    return name(host, out, cap) < 0 ? -EXDEV : 0;
}

long kbox_view_guest_dir(int dirfd, char *out, size_t cap)
{
    return dir_named(dirfd, out, cap, kbox_view_guest_path);
}

/* openat2 of a guest path confined to the view: absolute paths from the root; relative ones
 * beneath dirfd, and when they climb above it (or meet an absolute symlink), again from the
 * root with dirfd's guest path in front. */
static long view_open_how(int dirfd, const char *path, uint64_t flags, uint64_t mode, uint64_t resolve)
{
    if (kbox_view_nbinds) {
        char g[KBOX_VIEW_PATH_MAX] = "/";
        /* The walk keeps paths of the run's root (the binds'), from the chroot's root. */
        long r = path[0] == '/' ? 0 : kbox_view_outer_dir(dirfd, g, sizeof(g));
        if (r < 0)
            return r == -EXDEV ? -EACCES : r; /* a directory outside the view: no way up */
        const char *top = kbox_view.root_guest_len ? kbox_view.root_guest : "";
        return kbox_binds_walk(kbox_view.base_fd, kbox_view.root_fd, top, dirfd, g, path, flags, mode, resolve);
    }
    if (path[0] == '/')
        return kbox_openat2(kbox_view.root_fd, path, flags, mode, RESOLVE_IN_ROOT | resolve);
    /* The working directory is always inside the view (chdir is translated, fchdir checked);
     * another directory fd may be one the program inherited from outside. */
    if (dirfd != AT_FDCWD) {
        int in = kbox_view_fd_inside(dirfd);
        if (in <= 0)
            return in < 0 ? in : -EACCES;
    }
    long r = kbox_openat2(dirfd, path, flags, mode, RESOLVE_BENEATH | resolve);
    if (r != -EXDEV || (resolve & RESOLVE_NO_XDEV))
        return r;
    char abs[KBOX_VIEW_PATH_MAX];
    int from = kbox_view.root_fd;
    long g = kbox_view_guest_dir(dirfd, abs, sizeof(abs));
    if (g == -EXDEV && kbox_view_chrooted()) {
        /* A directory left outside a chroot: `..` climbs from it as the kernel's does, but
         * no higher than the run's own root (view-chroot.h). */
        g = kbox_view_outer_dir(dirfd, abs, sizeof(abs));
        from = kbox_view.base_fd;
    }
    if (g < 0)
        return g == -EXDEV ? -EACCES : g; /* a directory outside the view: no way up */
    struct kbox_buf b;
    kbox_buf_init(&b, abs + kbox_strlen(abs), sizeof(abs) - kbox_strlen(abs));
    kbox_buf_putc(&b, '/');
    kbox_buf_puts(&b, path);
    if (b.truncated)
        return -ENAMETOOLONG;
    return kbox_openat2(from, abs, flags, mode, RESOLVE_IN_ROOT | resolve);
}

static long view_open(int dirfd, const char *path, uint64_t flags, uint64_t mode)
{
    return view_open_how(dirfd, path, flags, mode, 0);
}

int kbox_view_fd_inside(int fd)
{
    char guest[KBOX_VIEW_PATH_MAX];
    long r = kbox_view_guest_dir(fd, guest, sizeof(guest));
    if (r == -EXDEV && kbox_view_chrooted())
        r = kbox_view_outer_dir(fd, guest, sizeof(guest)); /* left outside a chroot */
    return r == 0 ? 1 : r == -EXDEV ? 0 : (int)r;
}

int kbox_view_cwd_allowed(int fd)
{
    char host[KBOX_VIEW_PATH_MAX];
    long n = kbox_view_fd_host_path(fd, host, sizeof(host));
    if (n < 0)
        return (int)n;
    if (kbox_view.private_proc[0] && has_prefix_dir(host, kbox_view.private_proc))
        return 0;
    return kbox_view_outer_path(host, host, sizeof(host)) >= 0 || host_passthrough(host);
}

/* Paths the view leaves to the host (/proc, /dev, /sys) are walked by the kernel from the
 * host's root, and `..` (/proc/..), a magic link in the middle (/proc/self/task/T/root/...,
 * /dev/fd/N/...) or a symlink the program made in a writable one (/dev/shm) can take that
 * walk anywhere on the host.  So what the walk reaches is checked first: the directory that
 * holds the final component must still be in those trees or inside the view, and so must
 * the target of a final symlink the call follows, unless that is one of /proc's magic links
 * to a non-directory the process already holds (its descriptors, pipes, its executable).
 * 0, -EACCES, or the walk's own error.  The in-process tiers' promise (a cooperative
 * program): nothing stops another thread from changing the tree between check and call. */
static long passthrough_check(const char *path, bool follow)
{
    size_t end = kbox_strlen(path), start;
    if (path[end - 1] == '/')
        follow = true; /* a trailing slash follows a final symlink */
    while (end > 0 && path[end - 1] == '/')
        end--;
    for (start = end; start > 0 && path[start - 1] != '/'; start--)
        ;
    char parent[KBOX_VIEW_PATH_MAX], last[256];
    if (start <= 1 || end >= sizeof(parent) || end - start >= sizeof(last))
        return 0; /* /proc, /dev or /sys itself; or a name the kernel refuses (ENAMETOOLONG) */
    memcpy(parent, path, start);
    parent[start] = 0;
    memcpy(last, path + start, end - start);
    last[end - start] = 0;
    long pfd = kbox_openat(AT_FDCWD, parent, O_PATH | O_DIRECTORY | O_CLOEXEC, 0);
    if (pfd < 0)
        return pfd;
    bool dots = !kbox_strcmp(last, ".") || !kbox_strcmp(last, "..");
    long r = 0, ofd = -1;
    char c;
    if (kbox_view_cwd_allowed((int)pfd) != 1) {
        r = -EACCES;
    } else if (dots || (follow && KSYS4(__NR_readlinkat, pfd, last, &c, 1) >= 0)) {
        ofd = kbox_openat((int)pfd, last, O_PATH | O_CLOEXEC, 0);
        if (ofd < 0) {
            r = -EACCES; /* a dangling symlink: an O_CREAT would create its host target */
        } else if (kbox_view_cwd_allowed((int)ofd) != 1) {
            long m = kbox_openat2((int)pfd, last, O_PATH | O_CLOEXEC, 0, RESOLVE_NO_MAGICLINKS);
            long d = kbox_openat((int)ofd, ".", O_PATH | O_DIRECTORY | O_CLOEXEC, 0);
            if (m >= 0)
                kbox_close((int)m);
            if (d >= 0)
                kbox_close((int)d);
            r = m == -ELOOP && d < 0 ? 0 : -EACCES;
        }
    }
    if (ofd >= 0)
        kbox_close((int)ofd);
    kbox_close((int)pfd);
    return r;
}

long kbox_view_openat2(int dirfd, const char *path, uint64_t flags, uint64_t mode, uint64_t resolve)
{
    if (!kbox_view_on())
        return kbox_openat2(dirfd, path, flags, mode, resolve);
    if (resolve & (RESOLVE_BENEATH | RESOLVE_IN_ROOT)) {
        /* The program confines the walk itself, to a directory it holds: one inside the
         * view (or in the host's /proc, /dev, /sys, as a working directory may be), so the
         * kernel keeps it there.  (It does not see binds below that directory.) */
        if (dirfd != AT_FDCWD) {
            int ok = kbox_view_cwd_allowed(dirfd);
            if (ok <= 0)
                return ok < 0 ? ok : -EACCES;
        }
        return kbox_openat2(dirfd, path, flags, mode, resolve);
    }
    char buf[KBOX_VIEW_PATH_MAX];
    long err = 0;
    const char *t = through_proc(path, buf, sizeof(buf), &err);
    if (!t)
        return err;
    if (t == path && host_passthrough(path)) {
        long c = passthrough_check(path, !(flags & O_NOFOLLOW) &&
                                             (flags & (O_CREAT | O_EXCL)) != (O_CREAT | O_EXCL));
        return c < 0 ? c : kbox_openat2(dirfd, path, flags, mode, resolve);
    }
    return view_open_how(dirfd, t, flags, mode, resolve);
}

long kbox_view_openat(int dirfd, const char *path, int flags, int mode)
{
    if (!kbox_view_on())
        return kbox_openat(dirfd, path, flags, mode);
    /* openat's arguments as openat2 takes them: openat ignores a mode without O_CREAT or
     * O_TMPFILE, flags it does not know, and with O_PATH every flag but O_CLOEXEC,
     * O_DIRECTORY and O_NOFOLLOW (musl's open passes O_LARGEFILE with O_PATH); openat2
     * refuses them.  openat forces O_LARGEFILE on 64-bit. */
    if (!(flags & (O_CREAT | __O_TMPFILE)))
        mode = 0;
    uint64_t f = (uint64_t)(unsigned)flags & OPEN_FLAGS_KNOWN;
    if (f & O_PATH)
        f &= O_PATH | O_CLOEXEC | O_DIRECTORY | O_NOFOLLOW;
    else
        f |= O_LARGEFILE;
    return kbox_view_openat2(dirfd, path, f, (uint64_t)(unsigned)mode & 07777, 0);
}

static void fd_path(struct kbox_buf *b, long fd)
{
    kbox_buf_puts(b, "/proc/self/fd/");
    kbox_buf_dec(b, fd);
}

/* `path` resolved in the view to a descriptor, named /proc/self/fd/N for the call.  A call
 * that does not follow its final component would act on that magic link itself (lstat sees
 * a symlink, readlink the host path), so it gets N/. instead: here the object is always a
 * directory (the root, "." or "..", or a trailing slash's symlink to one). */
static int resolved_path(int dirfd, const char *path, bool follow, struct kbox_buf *b, int *tmpfd)
{
    long fd = view_open(dirfd, path, O_PATH | O_CLOEXEC, 0);
    if (fd < 0)
        return (int)fd;
    *tmpfd = (int)fd;
    fd_path(b, fd);
    if (!follow)
        kbox_buf_puts(b, "/.");
    return b->truncated ? -ENAMETOOLONG : 0;
}

int kbox_view_host_path(int dirfd, const char *path, bool follow, char *out, size_t cap, int *tmpfd)
{
    struct kbox_buf b;
    kbox_buf_init(&b, out, cap);
    *tmpfd = -1;
    char buf[KBOX_VIEW_PATH_MAX];
    long err = 0;
    const char *t = path[0] ? through_proc(path, buf, sizeof(buf), &err) : path;
    if (!t)
        return (int)err;
    if (!path[0] || (t == path && host_passthrough(path))) {
        long c = path[0] ? passthrough_check(path, follow) : 0;
        if (c < 0)
            return (int)c;
        kbox_buf_puts(&b, path);
        return b.truncated ? -ENAMETOOLONG : 0;
    }
    path = t;
    /* The final component, unless the call follows it or it is "", "." or "..". */
    size_t n = kbox_strlen(path), end = n;
    while (end > 0 && path[end - 1] == '/')
        end--;
    size_t start = end;
    while (start > 0 && path[start - 1] != '/')
        start--;
    bool dots = (end - start == 1 && path[start] == '.') ||
                (end - start == 2 && path[start] == '.' && path[start + 1] == '.');
    if (follow || end == 0 || dots)
        return resolved_path(dirfd, path, follow, &b, tmpfd);
    const struct kbox_view_bind *bind = kbox_view_bind_named(dirfd, path);
    if (bind) {
        /* The call acts on the bind itself: its source, named in a way that does not make
         * it act on a /proc magic link (a directory's "." or a file's name in its own
         * directory).  Removing or renaming it is refused by the callers (EBUSY). */
        fd_path(&b, bind->dir ? bind->fd : bind->parent_fd);
        kbox_buf_putc(&b, '/');
        kbox_buf_puts(&b, bind->dir ? "." : bind->base);
        return b.truncated ? -ENAMETOOLONG : 0;
    }
    char parent[KBOX_VIEW_PATH_MAX], last[KBOX_VIEW_PATH_MAX];
    if (start >= sizeof(parent))
        return -ENAMETOOLONG;
    memcpy(parent, path, start);
    parent[start] = 0;
    if (start == 0) {
        parent[0] = '.';
        parent[1] = 0;
    }
    long fd = view_open(dirfd, parent, O_PATH | O_DIRECTORY | O_CLOEXEC, 0);
    if (fd < 0)
        return (int)fd;
    if (end != n) {
        /* "last/" follows a final symlink: that one is resolved in the view.  Anything else
         * keeps its slash, which the kernel checks (mkdir("d/") creates d, rmdir("d/")
         * removes it, lstat("f/") is ENOTDIR). */
        char c;
        memcpy(last, path + start, end - start);
        last[end - start] = 0;
        if (KSYS4(__NR_readlinkat, fd, last, &c, 1) >= 0) {
            kbox_close((int)fd);
            return resolved_path(dirfd, path, false, &b, tmpfd);
        }
    }
    *tmpfd = (int)fd;
    fd_path(&b, fd);
    kbox_buf_putc(&b, '/');
    kbox_buf_puts(&b, path + start);
    return b.truncated ? -ENAMETOOLONG : 0;
}

/* Path p with the directory prefix[0..pl) taken off ("/" for the directory itself) into out
 * (which may be p): its length, or -1 if p is not under it. */
static long rest_under(const char *p, const char *prefix, size_t pl, char *out, size_t cap)
{
    if (kbox_strncmp(p, prefix, pl) != 0 || (p[pl] != 0 && p[pl] != '/'))
        return -1;
    const char *rest = p[pl] ? p + pl : "/";
    size_t n = kbox_strlen(rest);
    if (n + 1 > cap)
        return -1;
    memmove(out, rest, n + 1);
    return (long)n;
}

long kbox_view_outer_path(const char *host, char *out, size_t cap)
{
    size_t rl = kbox_view.base_len;
    bool in_root = kbox_strncmp(host, kbox_view.base, rl) == 0 && (host[rl] == 0 || host[rl] == '/');
    const struct kbox_view_bind *bind = kbox_view_nbinds ? kbox_binds_holding(host) : NULL;
    if (bind && (!in_root || bind->host_len > rl)) {
        /* The source nearest to it: a bind of a directory inside the root, or a root
         * inside a bind's source, names it from the deeper one. */
        const char *rest = host + bind->host_len;
        size_t n = kbox_strlen(rest);
        if (bind->guest_len + n + 1 > cap)
            return -1;
        memmove(out + bind->guest_len, rest, n + 1);
        memcpy(out, bind->guest, bind->guest_len);
        return (long)(bind->guest_len + n);
    }
    return in_root ? rest_under(host, kbox_view.base, rl, out, cap) : -1;
}

long kbox_view_outer_dir(int dirfd, char *out, size_t cap)
{
    return dir_named(dirfd, out, cap, kbox_view_outer_path);
}

long kbox_view_guest_path(const char *host, char *out, size_t cap)
{
    size_t pl = kbox_view.root_guest_len;
    if (!pl)
        return kbox_view_outer_path(host, out, cap);
    /* Under a chroot: its path in the run's root, less the chroot's own. */
    char g[KBOX_VIEW_PATH_MAX];
    long n = kbox_view_outer_path(host, g, sizeof(g));
    return n < 0 ? -1 : rest_under(g, kbox_view.root_guest, pl, out, cap);
}

const struct kbox_view_bind *kbox_view_bind_named(int dirfd, const char *path)
{
    if (!kbox_view_nbinds)
        return NULL;
    size_t end = kbox_strlen(path), start;
    while (end > 0 && path[end - 1] == '/')
        end--;
    for (start = end; start > 0 && path[start - 1] != '/'; start--)
        ;
    char parent[KBOX_VIEW_PATH_MAX], g[KBOX_VIEW_PATH_MAX];
    if (end == start || start + 2 >= sizeof(parent))
        return NULL;
    memcpy(parent, path, start);
    parent[start] = 0;
    if (!start) {
        parent[0] = '.';
        parent[1] = 0;
    }
    long fd = view_open(dirfd, parent, O_PATH | O_DIRECTORY | O_CLOEXEC, 0);
    if (fd < 0)
        return NULL;
    long r = kbox_view_outer_dir((int)fd, g, sizeof(g)); /* binds are named in the run's root */
    kbox_close((int)fd);
    if (r < 0)
        return NULL;
    size_t gl = g[1] ? kbox_strlen(g) : 0, n = end - start;
    if (gl + 1 + n >= sizeof(g))
        return NULL;
    g[gl] = '/';
    memcpy(g + gl + 1, path + start, n);
    return kbox_binds_at(g, gl + 1 + n);
}

int kbox_view_add_bind(const char *host, const char *guest, int fd_at)
{
    if (!kbox_view_on() || host_passthrough(guest))
        return -EINVAL;
    return kbox_binds_add(kbox_view.root_fd, host, guest, fd_at);
}
