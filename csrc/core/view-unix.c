#include "core/view-unix.h"
#include "core/view.h"
#include "lib/buf.h"
#include "lib/str.h"
#include "lib/sys.h"
#include <linux/errno.h>
#include <linux/fcntl.h>
#include <asm/stat.h>

#define UNIX_FAMILY 1 /* AF_UNIX (a libc header's name) */

/* The directories the seccomp supervisor keeps for the names it bound (KBOX_UNIX_BIND_KEPT):
 * the kernel holds "/proc/<pid>/fd/K/name", and K must keep naming the same directory for as
 * long as such a socket may be asked its name, so a slot is never reused.  When all are
 * taken a bind goes through a descriptor closed after the call (its name is then reported
 * as the kernel holds it). */
#define KEPT_MAX 256
static struct {
    uint64_t dev, ino;
    int fd;
} kept[KEPT_MAX];
static int nkept;
static char kept_prefix[32]; /* "/proc/<pid>/fd/" of the process that keeps them */

bool kbox_unix_path_of(const void *addr, uint64_t len, char *path)
{
    const struct sockaddr_un *s = addr;
    if (len <= KBOX_SUN_OFF || len > KBOX_SUN_MAX || s->sun_family != UNIX_FAMILY || !s->sun_path[0])
        return false;
    /* The kernel reads at most len - 2 bytes and ends the string there (unix_mkname_bsd). */
    size_t n = kbox_strnlen(s->sun_path, (size_t)len - KBOX_SUN_OFF);
    memcpy(path, s->sun_path, n);
    path[n] = 0;
    return true;
}

/* The kept descriptor for the directory `fd` names; -errno when none can be kept. */
static int keep_dir(int fd)
{
    struct stat st;
    long r = KSYS2(__NR_fstat, fd, &st);
    if (r < 0)
        return (int)r;
    for (int i = 0; i < nkept; i++)
        if (kept[i].dev == st.st_dev && kept[i].ino == st.st_ino)
            return kept[i].fd;
    if (nkept == KEPT_MAX)
        return -ENFILE;
    r = KSYS3(__NR_fcntl, fd, F_DUPFD_CLOEXEC, 0);
    if (r < 0)
        return (int)r;
    if (!kept_prefix[0]) {
        struct kbox_buf b;
        kbox_buf_init(&b, kept_prefix, sizeof(kept_prefix));
        kbox_buf_puts(&b, "/proc/");
        kbox_buf_dec(&b, kbox_getpid());
        kbox_buf_puts(&b, "/fd/");
    }
    kept[nkept].dev = st.st_dev;
    kept[nkept].ino = st.st_ino;
    kept[nkept].fd = (int)r;
    nkept++;
    return (int)r;
}

/* A name bound through a kept directory ("/proc/<pid>/fd/K/name"), as the guest path it
 * names now (the directory's guest path and the name) into out: true; false otherwise. */
static bool kept_name(const char *p, char *out, size_t cap)
{
    size_t pl = kbox_strlen(kept_prefix);
    if (!nkept || kbox_strncmp(p, kept_prefix, pl) != 0)
        return false;
    const char *q = p + pl;
    long k = 0;
    while (*q >= '0' && *q <= '9')
        k = k * 10 + (*q++ - '0');
    if (q == p + pl || *q != '/' || kbox_strchr(q + 1, '/'))
        return false;
    int i;
    for (i = 0; i < nkept && kept[i].fd != k; i++)
        ;
    if (i == nkept)
        return false;
    char host[KBOX_VIEW_PATH_MAX];
    long g = kbox_view_fd_host_path((int)k, host, sizeof(host));
    if (g < 0 || (g = kbox_view_guest_path(host, out, cap)) < 0)
        return false;
    struct kbox_buf b;
    kbox_buf_init(&b, out + g, cap - (size_t)g);
    if (g != 1)
        kbox_buf_putc(&b, '/');
    kbox_buf_puts(&b, q + 1);
    return !b.truncated;
}

/* In "/proc/self/fd/N/name" (N = fd: kbox_view_host_path's form for a final component in
 * its resolved parent), the name; NULL for its other forms. */
static const char *last_in_parent(const char *host, int fd)
{
    char pre[40];
    struct kbox_buf b;
    kbox_buf_init(&b, pre, sizeof(pre));
    kbox_buf_puts(&b, "/proc/self/fd/");
    kbox_buf_dec(&b, fd);
    kbox_buf_putc(&b, '/');
    size_t n = kbox_strlen(pre);
    if (fd < 0 || kbox_strncmp(host, pre, n) != 0 || kbox_strchr(host + n, '/') || !kbox_strcmp(host + n, "."))
        return NULL;
    return host + n;
}

int kbox_unix_to_host(int dirfd, const char *guest, enum kbox_unix_use use, struct kbox_unix_addr *out)
{
    char alias[KBOX_VIEW_PATH_MAX], host[KBOX_VIEW_PATH_MAX], parent[KBOX_VIEW_PATH_MAX];
    out->tmpfd = -1;
    /* A name the supervisor bound, as a recvfrom it did not rewrite reported it. */
    if (kept_name(guest, alias, sizeof(alias)))
        guest = alias;
    int r = kbox_view_host_path(dirfd, guest, use == KBOX_UNIX_CONNECT, host, sizeof(host), &out->tmpfd);
    if (r < 0)
        return r;
    const char *name = use == KBOX_UNIX_CONNECT ? NULL : last_in_parent(host, out->tmpfd);
    struct kbox_buf b;
    kbox_buf_init(&b, parent, sizeof(parent));
    if (name && use == KBOX_UNIX_BIND) {
        long n = kbox_view_fd_host_path(out->tmpfd, parent, sizeof(parent));
        if (n > 0) {
            kbox_buf_init(&b, parent + n, sizeof(parent) - (size_t)n);
            if (n != 1)
                kbox_buf_putc(&b, '/');
            kbox_buf_puts(&b, name);
            if (!b.truncated && kbox_strlen(parent) < UNIX_PATH_MAX)
                memcpy(host, parent, kbox_strlen(parent) + 1);
        }
    } else if (name && use == KBOX_UNIX_BIND_KEPT) {
        int k = keep_dir(out->tmpfd);
        if (k >= 0) {
            kbox_buf_puts(&b, kept_prefix);
            kbox_buf_dec(&b, k);
            kbox_buf_putc(&b, '/');
            kbox_buf_puts(&b, name);
            if (!b.truncated)
                memcpy(host, parent, kbox_strlen(parent) + 1);
        }
    }
    size_t n = kbox_strlen(host);
    if (n >= UNIX_PATH_MAX)
        return -ENAMETOOLONG;
    out->sun.sun_family = UNIX_FAMILY;
    memcpy(out->sun.sun_path, host, n + 1);
    out->len = (uint32_t)(KBOX_SUN_OFF + n + 1);
    return 0;
}

uint32_t kbox_unix_to_guest(void *a, uint32_t len)
{
    char host[UNIX_PATH_MAX + 1], guest[KBOX_VIEW_PATH_MAX];
    if (!kbox_unix_path_of(a, len, host))
        return len;
    if (!kept_name(host, guest, sizeof(guest)) && kbox_view_guest_path(host, guest, sizeof(guest)) < 0)
        return len;
    size_t n = kbox_strlen(guest);
    if (n > UNIX_PATH_MAX)
        return len;
    struct sockaddr_un *s = a;
    memcpy(s->sun_path, guest, n);
    if (n < UNIX_PATH_MAX)
        s->sun_path[n] = 0;
    return (uint32_t)(KBOX_SUN_OFF + n + (n < UNIX_PATH_MAX ? 1 : 0));
}

bool kbox_unix_args(int nr, struct kbox_unix_args *out)
{
    *out = (struct kbox_unix_args){ .addr = 1, .len = 2, .msg = -1, .given = true, .use = KBOX_UNIX_CONNECT };
    switch (nr) {
    case __NR_bind:
        out->use = KBOX_UNIX_BIND;
        return true;
    case __NR_connect:
        return true;
    case __NR_sendto:
        out->addr = 4;
        out->len = 5;
        return true;
    case __NR_sendmsg:
        out->addr = out->len = -1;
        out->msg = 1;
        return true;
    case __NR_getsockname:
    case __NR_getpeername:
    case __NR_accept:
    case __NR_accept4:
        out->given = false;
        return true;
    case __NR_recvfrom:
        out->addr = 4;
        out->len = 5;
        out->given = false;
        return true;
    case __NR_recvmsg:
        out->addr = out->len = -1;
        out->msg = 1;
        out->given = false;
        return true;
    default:
        return false;
    }
}
