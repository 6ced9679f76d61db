/* Socket addresses in the seccomp supervisor's root view.
 *
 * A CONTINUEd call reads its address from the program's memory after the supervisor
 * answered, so another thread could swap a checked address for a host path.  So the calls
 * given an address are made here, on the program's socket itself (pidfd_getfd: the same
 * open file description) with the supervisor's one copy of the address, translated when it
 * is an AF_UNIX path (core/view-unix.c):
 *  - bind and connect, whatever the address family;
 *  - sendto with an address, and sendmsg with a msg_name or on an AF_UNIX datagram socket
 *    (the only kind whose sends use a name: stream and seqpacket ones ignore or refuse it,
 *    other families refuse an AF_UNIX one), with the data, iovecs and control messages
 *    copied once (SCM_RIGHTS descriptors are the caller's, taken with pidfd_getfd).
 * A call that may block (a connect of a blocking stream socket; a send that a first
 * MSG_DONTWAIT attempt could not queue) is made by a child of the supervisor, which answers
 * the notification itself, so the supervisor never waits for a peer.
 *
 * getsockname and getpeername are served too (their answer is rewritten into the guest's
 * name).  accept, accept4, recvfrom and recvmsg run in the kernel (CONTINUE): the names they
 * report are the kernel's (docs/tiers.md), but a name the supervisor bound, given back as a
 * destination, still reaches the same socket (core/view-unix.c).
 */
#include "tiers/seccomp-sock.h"
#include "tiers/seccomp-proc.h"
#include "core/view-unix.h"
#include "core/view.h"
#include "lib/ksignal.h"
#include "lib/str.h"
#include "lib/sys.h"
#include <linux/errno.h>
#include <linux/fcntl.h>
#include <linux/ioctl.h>
#include <linux/mman.h>
#include <linux/seccomp.h>
#include <linux/signal.h>

#define SOL_SOCKET_ 1
#define SO_TYPE_ 3
#define SO_DOMAIN_ 39
#define SCM_RIGHTS_ 1
#define SOCK_DGRAM_ 2
#define MSG_DONTWAIT_ 0x40
#define AF_UNIX_ 1
#define IOV_MAX_ 1024             /* UIO_MAXIOV */
#define DATA_CAP (1u << 20)       /* one send's bytes; a datagram this large exceeds any sndbuf */
#define CONTROL_CAP 16384         /* above the kernel's optmem_max default (ENOBUFS) */
#define FDS_MAX 253               /* SCM_MAX_FD */

struct iov {
    uint64_t base, len;
};

/* One call's copies (the supervisor serves one call at a time; the trace reads them after
 * the answer). */
static struct {
    _Alignas(8) unsigned char guest[KBOX_SOCKADDR_MAX]; /* the address as the program gave it */
    struct kbox_unix_addr to;
    _Alignas(8) unsigned char name[KBOX_SOCKADDR_MAX];  /* a reported name */
    struct kbox_msghdr msg, shown;
    struct iov iovs[IOV_MAX_], one;
    _Alignas(8) unsigned char control[CONTROL_CAP];
    int fds[FDS_MAX + 8];      /* the passed descriptors and the call's own few */
    int nfds;
    bool child;            /* a child answers the notification */
} k;
static unsigned char *data; /* DATA_CAP bytes, mapped at the first send */

/* Keeps a descriptor of the supervisor's, to close after the call; false (and closed) when
 * there is no room: more descriptors than one message may carry (SCM_MAX_FD). */
static bool keep(long fd)
{
    if (fd < 0)
        return true;
    if (k.nfds == (int)(sizeof(k.fds) / sizeof(k.fds[0]))) {
        kbox_close((int)fd);
        return false;
    }
    k.fds[k.nfds++] = (int)fd;
    return true;
}

static long sockopt(int fd, int opt)
{
    int v = 0;
    uint32_t l = sizeof(v);
    long r = KSYS5(__NR_getsockopt, fd, SOL_SOCKET_, opt, &v, &l);
    return r < 0 ? r : v;
}

static bool read_exact(const struct kbox_req *req, uint64_t addr, void *buf, size_t len)
{
    return req->mem->read(req->mem, addr, buf, len) == (long)len;
}

/* The program's address (len bytes at addr), copied into k.guest and translated when it is
 * an AF_UNIX path; *out and *outlen: what the call gets.  0 or -errno. */
static long copy_address(const struct kbox_sview_run *run, const struct kbox_req *req, uint64_t addr, int64_t len,
                         enum kbox_unix_use use, const void **out, uint32_t *outlen)
{
    if (len < 0 || len > KBOX_SOCKADDR_MAX)
        return -EINVAL; /* move_addr_to_kernel */
    if (len && !read_exact(req, addr, k.guest, (size_t)len))
        return -EFAULT;
    *out = k.guest;
    *outlen = (uint32_t)len;
    char path[UNIX_PATH_MAX + 1], proc[KBOX_VIEW_PATH_MAX], link[8];
    if (!kbox_unix_path_of(k.guest, (uint64_t)len, path))
        return 0;
    bool linked;
    long r = kbox_sview_as_caller(run, kbox_sview_tgid(req->tid), req->tid, path, proc, sizeof(proc), link,
                                  sizeof(link), &linked);
    if (r < 0)
        return r;
    long dirfd = AT_FDCWD;
    if (proc[0] != '/') {
        dirfd = kbox_sview_dir_of(run, req->tid, AT_FDCWD);
        if (dirfd < 0)
            return dirfd;
        keep(dirfd);
    }
    r = kbox_unix_to_host((int)dirfd, proc, use, &k.to);
    keep(k.to.tmpfd);
    if (r < 0)
        return r;
    *out = &k.to.sun;
    *outlen = k.to.len;
    return 0;
}

static void on_alarm(int sig)
{
    (void)sig; /* only interrupts the helper's wait */
}

/* A child of the supervisor makes the call and answers the notification (the supervisor
 * goes on) with its result, or `ok` for a success when ok >= 0; -EINPROGRESS, or the
 * clone's error.  The caller may go away while the child waits (a signal, its exit), so a
 * timer interrupts the wait every 200 ms to look (the notification is then no longer
 * valid) and the interrupted call is made again: a unix connect or a datagram that was
 * interrupted did nothing; a TCP connect goes on (EALREADY, then EISCONN when done). */
static long in_child(int listener, uint64_t id, int nr, long a0, long a1, long a2, long ok)
{
    long pid = KSYS5(__NR_clone, SIGCHLD, 0, 0, 0, 0);
    if (pid != 0) {
        k.child = pid > 0;
        return pid < 0 ? pid : -EINPROGRESS;
    }
    kbox_set_handler(SIGALRM, on_alarm, 0); /* no SA_RESTART: the wait ends with EINTR */
    uint64_t alrm = KBOX_SIGBIT(SIGALRM);
    KSYS4(__NR_rt_sigprocmask, SIG_UNBLOCK, &alrm, NULL, 8);
    long tick[4] = { 0, 200000, 0, 200000 }; /* struct itimerval: interval, value */
    KSYS3(__NR_setitimer, 0 /* ITIMER_REAL */, tick, NULL);
    long r;
    bool interrupted = false;
    for (;;) {
        r = KSYS3(nr, a0, a1, a2);
        if (r != -EINTR && r != -EALREADY)
            break;
        interrupted = true;
        if (KSYS3(__NR_ioctl, listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &id) < 0)
            kbox_exit_group(0);
        if (r == -EALREADY) {
            struct { int fd; short events, revents; } p = { (int)a0, 4 /* POLLOUT */, 0 };
            KSYS5(__NR_ppoll, &p, 1, NULL, NULL, 8);
        }
    }
    if (nr == __NR_connect && r == -EISCONN && interrupted)
        r = 0; /* the interrupted connect completed */
    if (r >= 0 && ok >= 0)
        r = ok;
    struct seccomp_notif_resp resp = { .id = id };
    if (r < 0)
        resp.error = (int32_t)r;
    else
        resp.val = r;
    KSYS3(__NR_ioctl, listener, SECCOMP_IOCTL_NOTIF_SEND, &resp);
    kbox_exit_group(0);
}

/* sendmsg's msghdr as the supervisor sends it: the data gathered into one buffer, the
 * control messages copied with SCM_RIGHTS descriptors taken from the caller. */
static long copy_message(const struct kbox_req *req, int tgid, bool dgram, bool read_iovs)
{
    struct kbox_msghdr *m = &k.msg;
    if (m->iovlen > IOV_MAX_)
        return -EMSGSIZE;
    if (read_iovs && m->iovlen && !read_exact(req, m->iov, k.iovs, m->iovlen * sizeof(struct iov)))
        return -EFAULT;
    if (!data) {
        long p = kbox_mmap(NULL, DATA_CAP, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (kbox_is_err(p))
            return -ENOMEM;
        data = (unsigned char *)p;
    }
    uint64_t total = 0;
    for (uint64_t i = 0; i < m->iovlen; i++) {
        uint64_t n = k.iovs[i].len;
        if (n > DATA_CAP - total) {
            if (dgram)
                return -EMSGSIZE;
            n = DATA_CAP - total; /* a stream socket may send part */
        }
        if (n && !read_exact(req, k.iovs[i].base, data + total, n))
            return -EFAULT;
        total += n;
    }
    k.one.base = (uint64_t)(uintptr_t)data;
    k.one.len = total;
    m->iov = (uint64_t)(uintptr_t)&k.one;
    m->iovlen = 1;
    if (!m->controllen) {
        m->control = 0;
        return 0;
    }
    if (m->controllen > CONTROL_CAP)
        return -ENOBUFS;
    if (!read_exact(req, m->control, k.control, m->controllen))
        return -EFAULT;
    m->control = (uint64_t)(uintptr_t)k.control;
    /* struct cmsghdr { size_t len; int level, type; } and 8-byte alignment (CMSG_ALIGN). */
    for (uint64_t off = 0; off + 16 <= m->controllen;) {
        uint64_t clen;
        int level, type;
        memcpy(&clen, k.control + off, 8);
        memcpy(&level, k.control + off + 8, 4);
        memcpy(&type, k.control + off + 12, 4);
        if (clen < 16 || clen > m->controllen - off)
            break; /* the kernel's EINVAL */
        if (level == SOL_SOCKET_ && type == SCM_RIGHTS_) {
            for (uint64_t p = off + 16; p + 4 <= off + clen; p += 4) {
                int fd;
                memcpy(&fd, k.control + p, 4);
                long mine = kbox_sview_file_of(tgid, fd);
                if (mine < 0)
                    return mine == -ESRCH ? -EBADF : mine;
                if (!keep(mine))
                    return -ETOOMANYREFS;
                fd = (int)mine;
                memcpy(k.control + p, &fd, 4);
            }
        }
        off += (clen + 7) & ~7ULL;
    }
    return 0;
}

/* k.msg, the program's msghdr (or sendto's arguments as one, its iovec in k.iovs[0]), made
 * sendable by the supervisor: the name translated, data and control copied.  0 or -errno. */
static long prepare(const struct kbox_sview_run *run, const struct kbox_req *req, int tgid, bool dgram,
                    bool read_iovs)
{
    uint64_t name = k.msg.name;
    int32_t namelen = k.msg.namelen;
    const void *to = NULL;
    uint32_t tolen = 0;
    if (name && namelen) {
        long r = copy_address(run, req, name, namelen, KBOX_UNIX_CONNECT, &to, &tolen);
        if (r < 0)
            return r;
    }
    long r = copy_message(req, tgid, dgram, read_iovs);
    if (r < 0)
        return r;
    k.msg.name = (uint64_t)(uintptr_t)to;
    k.msg.namelen = (int32_t)tolen;
    k.shown = k.msg;
    k.shown.name = to ? (uint64_t)(uintptr_t)k.guest : 0;
    k.shown.namelen = namelen;
    return 0;
}

static bool would_wait(int sock, int flags)
{
    long fl = KSYS2(__NR_fcntl, sock, F_GETFL);
    return !(flags & MSG_DONTWAIT_) && fl >= 0 && !(fl & O_NONBLOCK);
}

/* Sends the prepared k.msg: here if it can be queued at once, else (the caller would wait
 * for room) by a child, which answers `ok` for a success when ok >= 0. */
static long send_prepared(int listener, uint64_t id, int sock, int flags, long ok)
{
    long r = KSYS3(__NR_sendmsg, sock, &k.msg, flags | MSG_DONTWAIT_);
    if (r == -EAGAIN && would_wait(sock, flags))
        r = in_child(listener, id, __NR_sendmsg, sock, (long)(uintptr_t)&k.msg, flags, ok);
    return r;
}

/* sendto with an address, sendmsg (k.msg read already). */
static int64_t serve_send(const struct kbox_sview_run *run, int listener, const struct kbox_req *req, uint64_t id,
                          int sock, struct kbox_req *shown)
{
    const uint64_t *a = req->args;
    bool dgram = sockopt(sock, SO_TYPE_) == SOCK_DGRAM_;
    bool to = req->nr == __NR_sendto;
    if (to) {
        k.msg = (struct kbox_msghdr){ .name = a[4], .namelen = (int32_t)a[5], .iovlen = 1 };
        k.iovs[0] = (struct iov){ a[1], a[2] };
    }
    long r = prepare(run, req, kbox_sview_tgid(req->tid), dgram, !to);
    if (r < 0)
        return r;
    if (to) {
        shown->args[1] = (uint64_t)(uintptr_t)data;
        shown->args[4] = (uint64_t)(uintptr_t)k.guest;
    } else {
        shown->args[1] = (uint64_t)(uintptr_t)&k.shown;
    }
    return send_prepared(listener, id, sock, (int)(to ? a[3] : a[2]), -1);
}

static void release_from(int n)
{
    while (k.nfds > n)
        kbox_close(k.fds[--k.nfds]);
}

/* sendmmsg on an AF_UNIX datagram socket: each message as sendmsg, msg_len reported; a
 * first message that must wait is sent by a child (its msg_len written before: a datagram
 * is queued whole or not at all), later ones that would wait are left to the caller (a
 * short count, as for a signal). */
static int64_t serve_sendmmsg(const struct kbox_sview_run *run, int listener, const struct kbox_req *req,
                              uint64_t id, int sock)
{
    const uint64_t *a = req->args;
    uint64_t vlen = a[2] > IOV_MAX_ ? IOV_MAX_ : a[2];
    int flags = (int)a[3], tgid = kbox_sview_tgid(req->tid), base = k.nfds;
    long r = 0;
    uint32_t sent = 0;
    for (uint64_t i = 0; i < vlen; i++) {
        uint64_t at = a[1] + i * 64; /* struct mmsghdr { struct msghdr; unsigned msg_len; } */
        if (!read_exact(req, at, &k.msg, sizeof(k.msg))) {
            r = -EFAULT;
            break;
        }
        r = prepare(run, req, tgid, true, true);
        uint32_t len = (uint32_t)k.one.len;
        if (r >= 0) {
            r = KSYS3(__NR_sendmsg, sock, &k.msg, flags | MSG_DONTWAIT_);
            if (r == -EAGAIN && !sent && would_wait(sock, flags)) {
                if (req->mem->write(req->mem, at + 56, &len, 4) != 4)
                    r = -EFAULT;
                else
                    r = in_child(listener, id, __NR_sendmsg, sock, (long)(uintptr_t)&k.msg, flags, 1);
                release_from(base);
                return r;
            }
        }
        release_from(base);
        if (r < 0)
            break;
        len = (uint32_t)r;
        if (req->mem->write(req->mem, at + 56, &len, 4) != 4) {
            r = -EFAULT;
            break;
        }
        sent++;
    }
    return sent ? sent : r;
}

/* getsockname, getpeername: the name the kernel reports, as the guest's. */
static int64_t serve_name(const struct kbox_req *req, int sock)
{
    const uint64_t *a = req->args;
    int32_t cap;
    if (!read_exact(req, a[2], &cap, sizeof(cap)))
        return -EFAULT;
    if (cap < 0)
        return -EINVAL;
    uint32_t len = KBOX_SOCKADDR_MAX;
    long r = KSYS3(req->nr, sock, k.name, &len);
    if (r < 0)
        return r;
    len = kbox_unix_to_guest(k.name, len > KBOX_SOCKADDR_MAX ? KBOX_SOCKADDR_MAX : len);
    size_t copy = len < (uint32_t)cap ? len : (size_t)cap;
    if (copy && req->mem->write(req->mem, a[1], k.name, copy) != (long)copy)
        return -EFAULT;
    if (req->mem->write(req->mem, a[2], &len, 4) != 4)
        return -EFAULT;
    return r;
}

static bool serve(const struct kbox_sview_run *run, int listener, const struct kbox_req *req, uint64_t id,
                  int64_t *ret, struct kbox_req *shown)
{
    const uint64_t *a = req->args;
    int nr = req->nr;
    bool has_name = false;
    if (nr == __NR_sendto) {
        has_name = a[4] && (uint32_t)a[5];
        if (!has_name)
            return false; /* no address (its pointer is a register): nothing to translate */
    } else if (nr == __NR_sendmsg) {
        if (!read_exact(req, a[1], &k.msg, sizeof(k.msg)))
            return false; /* the kernel's EFAULT */
        has_name = k.msg.name && k.msg.namelen;
    } else if (nr != __NR_bind && nr != __NR_connect && nr != __NR_getsockname && nr != __NR_getpeername &&
               nr != __NR_sendmmsg) {
        return false;
    }
    long sock = kbox_sview_file_of(kbox_sview_tgid(req->tid), (int)a[0]);
    if (sock < 0) {
        *ret = sock == -ESRCH ? -EBADF : sock;
        return true;
    }
    keep(sock);
    if ((nr == __NR_sendmsg && !has_name) || nr == __NR_sendmmsg) {
        if (sockopt((int)sock, SO_DOMAIN_) != AF_UNIX_ || sockopt((int)sock, SO_TYPE_) != SOCK_DGRAM_)
            return false;
        if (nr == __NR_sendmmsg) {
            *ret = serve_sendmmsg(run, listener, req, id, (int)sock);
            return true;
        }
    }
    if (nr == __NR_sendto || nr == __NR_sendmsg) {
        *ret = serve_send(run, listener, req, id, (int)sock, shown);
        return true;
    }
    if (nr == __NR_getsockname || nr == __NR_getpeername) {
        *ret = serve_name(req, (int)sock);
        return true;
    }
    const void *to;
    uint32_t tolen;
    long r = copy_address(run, req, a[1], (int32_t)a[2], nr == __NR_bind ? KBOX_UNIX_BIND_KEPT : KBOX_UNIX_CONNECT,
                          &to, &tolen);
    shown->args[1] = (uint64_t)(uintptr_t)k.guest;
    if (r < 0) {
        *ret = r;
        return true;
    }
    if (nr == __NR_bind) {
        kbox_sview_umask(req->tid); /* the socket file takes the caller's umask */
        *ret = KSYS3(__NR_bind, sock, to, tolen);
        return true;
    }
    /* A blocking stream connect waits while the listener's backlog is full (or for the
     * network): a child makes it. */
    long fl = KSYS2(__NR_fcntl, sock, F_GETFL);
    if (sockopt((int)sock, SO_TYPE_) != SOCK_DGRAM_ && fl >= 0 && !(fl & O_NONBLOCK))
        *ret = in_child(listener, id, __NR_connect, sock, (long)(uintptr_t)to, tolen, -1);
    else
        *ret = KSYS3(__NR_connect, sock, to, tolen);
    return true;
}

bool kbox_sview_sock_serve(const struct kbox_sview_run *run, int listener, const struct kbox_req *req, uint64_t id,
                           int64_t *ret, bool *answered, struct kbox_req *shown)
{
    k.nfds = 0;
    k.to.tmpfd = -1;
    k.child = false;
    bool served = serve(run, listener, req, id, ret, shown);
    for (int i = 0; i < k.nfds; i++)
        kbox_close(k.fds[i]);
    k.nfds = 0;
    *answered = served && k.child;
    return served;
}
