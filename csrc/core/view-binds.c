#include "core/view-binds.h"
#include "lib/buf.h"
#include "lib/hash.h"
#include "lib/str.h"
#include "lib/sys.h"
#include <linux/errno.h>
#include <linux/fcntl.h>
#include <linux/openat2.h>
#include <linux/stat.h>

struct kbox_view_bind kbox_view_binds[KBOX_VIEW_BINDS_MAX];
int kbox_view_nbinds;

/* Hashes of the binds' guest paths, and of every directory above one (the root excepted:
 * with any bind, one lies below it).  Keys are never 0 or KBOX_U64SET_FREED. */
#define SET_SIZE 512
static uint64_t bind_points[SET_SIZE], bind_above[SET_SIZE];

#define FNV_START 0xcbf29ce484222325ULL

static uint64_t fnv(uint64_t h, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)s[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static uint64_t key(uint64_t h) { return h < 2 ? h + 2 : h; }

/* The bind at guest path g[0..n) with hash h, or NULL. */
static const struct kbox_view_bind *bind_at(const char *g, size_t n, uint64_t h)
{
    if (!kbox_u64set_slot(bind_points, SET_SIZE, key(h), false))
        return NULL;
    for (int i = 0; i < kbox_view_nbinds; i++) {
        const struct kbox_view_bind *b = &kbox_view_binds[i];
        if (b->hash == h && b->guest_len == n && kbox_strncmp(b->guest, g, n) == 0)
            return b;
    }
    return NULL;
}

/* A walk's position: the directory `fd` (owned unless it is the root's or a bind's) and its
 * guest path g[0..glen) ("" for the root), with g's hash. */
struct walk {
    int root_fd;
    int top_fd;       /* where absolute paths start and `..` stops: the root, or a chroot's */
    const char *top;  /* its guest path ("" for the root) */
    size_t top_len;
    uint64_t resolve; /* the program's own RESOLVE_* flags (openat2), for every kernel walk */
    int fd;
    bool owned;
    size_t glen;
    uint64_t h;
    int links;
    char g[KBOX_BINDS_PATH_MAX];
};

static void walk_set(struct walk *w, int fd, bool owned)
{
    if (w->owned)
        kbox_close(w->fd);
    w->fd = fd;
    w->owned = owned;
}

static void walk_base(struct walk *w)
{
    walk_set(w, w->root_fd, false);
    w->glen = 0;
    w->h = FNV_START;
}

/* Where an absolute path starts: the root, or a chroot's root. */
static void walk_root(struct walk *w)
{
    walk_set(w, w->top_fd, false);
    memcpy(w->g, w->top, w->top_len + 1);
    w->glen = w->top_len;
    w->h = fnv(FNV_START, w->top, w->top_len);
}

/* Steps into the directory `name` (one component, not "." or ".."), which is a bind or a
 * real directory of the tree: 0, 1 if it is a symlink (nothing done), or -errno. */
static long walk_into(struct walk *w, const char *name, size_t n)
{
    if (w->glen + 1 + n >= sizeof(w->g))
        return -ENAMETOOLONG;
    uint64_t h = fnv(fnv(w->h, "/", 1), name, n);
    char *g = w->g;
    g[w->glen] = '/';
    memcpy(g + w->glen + 1, name, n);
    const struct kbox_view_bind *b = bind_at(g, w->glen + 1 + n, h);
    if (b) {
        if (!b->dir)
            return -ENOTDIR;
        if (w->resolve & RESOLVE_NO_XDEV)
            return -EXDEV; /* a bind is a mount point to the program */
        walk_set(w, b->fd, false);
    } else {
        char one[256];
        if (n >= sizeof(one))
            return -ENAMETOOLONG;
        memcpy(one, name, n);
        one[n] = 0;
        long fd = kbox_openat(w->fd, one, O_PATH | O_NOFOLLOW | O_DIRECTORY | O_CLOEXEC, 0);
        if (fd == -ENOTDIR) {
            char c;
            return KSYS4(__NR_readlinkat, w->fd, one, &c, 1) >= 0 ? 1 : -ENOTDIR;
        }
        if (fd < 0)
            return fd;
        walk_set(w, (int)fd, true);
    }
    w->glen += 1 + n;
    w->g[w->glen] = 0;
    w->h = h;
    return 0;
}

/* `..`: the guest path's parent, walked again from the root (its components are
 * directories and binds; one that has changed into anything else ends the walk). */
static long walk_up(struct walk *w)
{
    size_t n = w->glen;
    while (n > 0 && w->g[n - 1] != '/')
        n--;
    if (n == 0 && w->glen == 0)
        return 0; /* `..` of the root is the root */
    if (w->glen == w->top_len && kbox_strncmp(w->g, w->top, w->top_len) == 0)
        return 0; /* and of a chroot's root, that root */
    if ((w->resolve & RESOLVE_NO_XDEV) && bind_at(w->g, w->glen, w->h))
        return -EXDEV; /* out of a bind's top: across its mount point */
    char g[KBOX_BINDS_PATH_MAX];
    size_t len = n ? n - 1 : 0;
    memcpy(g, w->g, len);
    uint64_t resolve = w->resolve;
    w->resolve &= ~(uint64_t)RESOLVE_NO_XDEV; /* walking back down to where `..` leads */
    walk_base(w);
    for (size_t i = 0; i < len;) {
        size_t j = i + 1;
        while (j < len && g[j] != '/')
            j++;
        long r = walk_into(w, g + i + 1, j - i - 1);
        if (r != 0) {
            w->resolve = resolve;
            return r > 0 ? -ENOENT : r;
        }
        i = j;
    }
    w->resolve = resolve;
    return 0;
}

/* Replaces the symlink `name` (in w's directory) by its contents in front of `rest`. */
static long splice_link(struct walk *w, const char *name, size_t n, char *path, size_t *pos,
                        size_t cap)
{
    char one[256], target[KBOX_BINDS_PATH_MAX];
    if (++w->links > 40)
        return -ELOOP;
    memcpy(one, name, n);
    one[n] = 0;
    long t = KSYS4(__NR_readlinkat, w->fd, one, target, sizeof(target) - 1);
    if (t < 0)
        return t;
    if (t == 0)
        return -ENOENT;
    size_t rest = kbox_strlen(path + *pos);
    if ((size_t)t + 1 + rest >= cap)
        return -ENAMETOOLONG;
    /* path becomes target + "/" + rest, moved to the end so it can grow in place */
    char *dst = path + cap - 1 - rest - 1 - (size_t)t;
    memmove(dst + t + 1, path + *pos, rest + 1);
    dst[t] = rest ? '/' : 0;
    if (!rest)
        dst[t + 1] = 0;
    memcpy(dst, target, (size_t)t);
    size_t len = kbox_strlen(dst);
    memmove(path, dst, len + 1);
    *pos = 0;
    if (path[0] == '/')
        walk_root(w);
    return 0;
}

/* The final step, on `name` (NUL-terminated, possibly with a trailing '/') in w's
 * directory: 1 when it was a symlink to follow (spliced in), else the descriptor or -errno. */
static long walk_last(struct walk *w, const char *name, size_t n, uint64_t flags, uint64_t mode,
                      char *path, size_t *pos, size_t cap)
{
    bool slash = name[n] == '/';
    if (w->glen + 1 + n < sizeof(w->g)) {
        char *g = w->g;
        g[w->glen] = '/';
        memcpy(g + w->glen + 1, name, n);
        const struct kbox_view_bind *b = bind_at(g, w->glen + 1 + n, fnv(fnv(w->h, "/", 1), name, n));
        g[w->glen] = 0;
        if (b) {
            if ((flags & (O_CREAT | O_EXCL)) == (O_CREAT | O_EXCL))
                return -EEXIST;
            if (w->resolve & RESOLVE_NO_XDEV)
                return -EXDEV;
            if (b->dir)
                return kbox_openat2(b->fd, ".", flags & ~(uint64_t)(O_CREAT | O_NOFOLLOW), 0,
                                    RESOLVE_BENEATH | w->resolve);
            if (slash)
                return -ENOTDIR;
            char self[32];
            struct kbox_buf bb;
            kbox_buf_init(&bb, self, sizeof(self));
            kbox_buf_puts(&bb, "/proc/self/fd/");
            kbox_buf_dec(&bb, b->fd);
            /* Reopening an O_PATH descriptor through its /proc link is how the kernel
             * gives it an access mode. */
            return kbox_openat(AT_FDCWD, self, (int)(flags & ~(uint64_t)(O_CREAT | O_NOFOLLOW)), 0);
        }
    }
    long fd = kbox_openat2(w->fd, name, flags, (flags & (O_CREAT | __O_TMPFILE)) ? mode : 0,
                         RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | w->resolve);
    if (fd != -ELOOP || ((flags & O_NOFOLLOW) && !slash) || (w->resolve & RESOLVE_NO_SYMLINKS))
        return fd;
    char one[256];
    if (n >= sizeof(one))
        return -ENAMETOOLONG;
    memcpy(one, name, n);
    one[n] = 0;
    char c;
    if (KSYS4(__NR_readlinkat, w->fd, one, &c, 1) < 0)
        return -ELOOP; /* a loop in the rest of the walk the kernel refused */
    long r = splice_link(w, name, n, path, pos, cap);
    return r < 0 ? r : 1;
}

/* Whether a bind lies below w's directory (the root always has one). */
static bool binds_below(const struct walk *w)
{
    return w->glen == 0 || kbox_u64set_slot(bind_above, SET_SIZE, key(w->h), false);
}

static long walk_from(struct walk *w, char *path, size_t cap, uint64_t flags, uint64_t mode)
{
    size_t pos = 0;
    for (;;) {
        while (path[pos] == '/')
            pos++;
        if (!binds_below(w)) {
            /* Nothing to cross: the kernel walks the rest beneath here, unless it leaves. */
            long r = kbox_openat2(w->fd, path[pos] ? path + pos : ".", flags,
                                (flags & (O_CREAT | __O_TMPFILE)) ? mode : 0,
                                RESOLVE_BENEATH | w->resolve);
            if (r != -EXDEV)
                return r;
        }
        if (!path[pos])
            return kbox_openat2(w->fd, ".", flags, 0, RESOLVE_BENEATH | w->resolve);
        size_t end = pos;
        while (path[end] && path[end] != '/')
            end++;
        size_t n = end - pos;
        size_t after = end;
        while (path[after] == '/')
            after++;
        bool last = !path[after];
        const char *name = path + pos;
        if (n == 1 && name[0] == '.') {
            if (last)
                return kbox_openat2(w->fd, ".", flags, 0, RESOLVE_BENEATH | w->resolve);
            pos = after;
            continue;
        }
        if (n == 2 && name[0] == '.' && name[1] == '.') {
            long r = walk_up(w);
            if (r < 0)
                return r;
            if (last)
                return kbox_openat2(w->fd, ".", flags, 0, RESOLVE_BENEATH | w->resolve);
            pos = after;
            continue;
        }
        if (last) {
            size_t p = end; /* what follows a symlink here: its trailing slashes */
            long r = walk_last(w, name, n, flags, mode, path, &p, cap);
            if (r != 1)
                return r;
            pos = p;
            continue;
        }
        long r = walk_into(w, name, n);
        if (r < 0)
            return r;
        pos = after;
        if (r == 1) {
            if (w->resolve & RESOLVE_NO_SYMLINKS)
                return -ELOOP;
            pos = end; /* rest starts at the '/' after the link */
            r = splice_link(w, name, n, path, &pos, cap);
            if (r < 0)
                return r;
        }
    }
}

long kbox_binds_walk(int root_fd, int top_fd, const char *top, int dirfd, const char *dir_guest, const char *path,
                     uint64_t flags, uint64_t mode, uint64_t resolve)
{
    struct walk w = { .root_fd = root_fd, .top_fd = top_fd, .top = top, .top_len = kbox_strlen(top),
                      .resolve = resolve, .fd = -1 };
    if (w.top_len >= sizeof(w.g))
        return -ENAMETOOLONG;
    char buf[KBOX_BINDS_PATH_MAX];
    size_t n = kbox_strlen(path);
    if (n >= sizeof(buf))
        return -ENAMETOOLONG;
    memcpy(buf, path, n + 1);
    if (path[0] == '/') {
        walk_root(&w);
    } else {
        w.fd = dirfd;
        w.glen = kbox_strlen(dir_guest);
        if (w.glen >= sizeof(w.g))
            return -ENAMETOOLONG;
        memcpy(w.g, dir_guest, w.glen + 1);
        if (w.glen == 1)
            w.glen = 0; /* "/" is the root: "" */
        w.g[w.glen] = 0;
        w.h = fnv(FNV_START, w.g, w.glen);
    }
    long r = walk_from(&w, buf, sizeof(buf), flags, mode);
    walk_set(&w, -1, false);
    return r;
}

const struct kbox_view_bind *kbox_binds_at(const char *guest, size_t n)
{
    if (n == 1 && guest[0] == '/')
        return NULL;
    return bind_at(guest, n, fnv(FNV_START, guest, n));
}

const struct kbox_view_bind *kbox_binds_holding(const char *host)
{
    const struct kbox_view_bind *best = NULL;
    for (int i = 0; i < kbox_view_nbinds; i++) {
        const struct kbox_view_bind *b = &kbox_view_binds[i];
        if (kbox_strncmp(host, b->host, b->host_len) == 0 &&
            (host[b->host_len] == 0 || (b->dir && host[b->host_len] == '/')) &&
            (!best || b->host_len > best->host_len))
            best = b;
    }
    return best;
}

static int keep_at(long fd, int at)
{
    if (at >= 0 && KSYS3(__NR_dup3, fd, at, O_CLOEXEC) == at) {
        kbox_close((int)fd);
        return at;
    }
    return (int)fd;
}

int kbox_binds_add(int root_fd, const char *host, const char *guest, int fd_at)
{
    size_t gl = kbox_strlen(guest), hl = kbox_strlen(host);
    struct kbox_view_bind *b = &kbox_view_binds[kbox_view_nbinds];
    if (guest[0] != '/' || gl < 2 || guest[gl - 1] == '/' || host[0] != '/')
        return -EINVAL;
    if (kbox_view_nbinds == KBOX_VIEW_BINDS_MAX)
        return -ENOSPC;
    if (gl >= sizeof(b->guest) || hl >= sizeof(b->host))
        return -ENAMETOOLONG;
    uint64_t h = fnv(FNV_START, guest, gl);
    if (bind_at(guest, gl, h))
        return -EEXIST;
    long fd = kbox_openat(AT_FDCWD, host, O_PATH | O_CLOEXEC, 0);
    if (fd < 0)
        return (int)fd;
    struct statx st;
    long r = KSYS5(__NR_statx, fd, "", AT_EMPTY_PATH, STATX_TYPE, &st);
    /* What the view has at the guest path now (nothing is fine: the bind makes it). */
    long at = r < 0 ? r : kbox_binds_walk(root_fd, root_fd, "", -1, "/", guest, O_PATH | O_CLOEXEC, 0, 0);
    struct statx ast;
    if (at >= 0) {
        r = KSYS5(__NR_statx, at, "", AT_EMPTY_PATH, STATX_TYPE, &ast);
        kbox_close((int)at);
        if (r == 0 && S_ISDIR(ast.stx_mode) != S_ISDIR(st.stx_mode))
            r = S_ISDIR(st.stx_mode) ? -ENOTDIR : -EISDIR;
    } else if (at != -ENOENT) {
        r = at;
    } else {
        /* Missing: its parent must be there. */
        char parent[sizeof(b->guest)];
        size_t p = gl;
        while (p > 0 && guest[p - 1] != '/')
            p--;
        memcpy(parent, guest, p);
        parent[p] = 0;
        long pfd = kbox_binds_walk(root_fd, root_fd, "", -1, "/", parent, O_PATH | O_DIRECTORY | O_CLOEXEC, 0, 0);
        if (pfd < 0)
            r = pfd;
        else
            kbox_close((int)pfd);
    }
    if (r < 0) {
        kbox_close((int)fd);
        return (int)r;
    }
    b->dir = S_ISDIR(st.stx_mode);
    b->parent_fd = -1;
    memcpy(b->guest, guest, gl + 1);
    memcpy(b->host, host, hl + 1);
    b->guest_len = gl;
    b->host_len = hl;
    b->hash = h;
    if (!b->dir) {
        size_t s = hl;
        while (s > 0 && host[s - 1] != '/')
            s--;
        char dir[sizeof(b->host)];
        memcpy(dir, host, s ? s : 1);
        dir[s > 1 ? s - 1 : 1] = 0;
        long pfd = kbox_openat(AT_FDCWD, dir, O_PATH | O_DIRECTORY | O_CLOEXEC, 0);
        if (pfd < 0) {
            kbox_close((int)fd);
            return (int)pfd;
        }
        b->parent_fd = keep_at(pfd, fd_at - 1);
        b->base = b->host + s;
    }
    b->fd = keep_at(fd, fd_at);
    kbox_u64set_slot(bind_points, SET_SIZE, key(h), true);
    for (size_t i = 1; i < gl; i++)
        if (guest[i] == '/')
            kbox_u64set_slot(bind_above, SET_SIZE, key(fnv(FNV_START, guest, i)), true);
    kbox_view_nbinds++;
    return 0;
}
