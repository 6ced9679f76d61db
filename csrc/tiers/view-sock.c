/* AF_UNIX socket paths in the in-process tiers' root view: the calls with the syscall
 * table's KBOX_SC_SOCKADDR property.  A path address given to bind, connect, sendto or
 * sendmsg (msg_name) is read once and the call gets its translation (core/view-unix.c); a
 * name the kernel reports (getsockname, getpeername, accept, accept4, recvfrom, recvmsg) is
 * written into kbox's room first, then turned into the guest's and copied out with the
 * length the kernel would report (the program's room may be too small for the host's name
 * but not for the guest's).  The program's msghdr is copied, never written, except for
 * the fields recvmsg reports (msg_namelen, msg_controllen, msg_flags).  sendmmsg is served
 * here, one sendmsg a message.  recvmmsg's names are the kernel's.
 */
#include "tiers/view-sock.h"
#include "arch.h"
#include "lib/str.h"
#include "lib/sys.h"
#include <linux/errno.h>
#include <linux/fcntl.h>

static bool read_exact(const struct kbox_req *req, uint64_t addr, void *buf, size_t len)
{
    return addr && req->mem->read(req->mem, addr, buf, len) == (long)len;
}

/* The program's address at `addr` (len bytes) translated into s->to; 1 if translated, 0 if
 * it passes unchanged, -errno. */
static int given(const struct kbox_req *req, uint64_t addr, uint64_t len, enum kbox_unix_use use,
                 struct kbox_view_sock *s)
{
    unsigned char raw[KBOX_SUN_MAX];
    char path[UNIX_PATH_MAX + 1];
    if (!addr || len <= KBOX_SUN_OFF || len > KBOX_SUN_MAX || !read_exact(req, addr, raw, (size_t)len) ||
        !kbox_unix_path_of(raw, len, path))
        return 0; /* the kernel decides (and reads the program's memory itself) */
    int r = kbox_unix_to_host(AT_FDCWD, path, use, &s->to);
    return r < 0 ? r : 1;
}

/* sendmmsg, served as one sendmsg per message (each name translated on its way), with the
 * kernel's answer: the count sent, or the first message's error. */
static int64_t sendmmsg_each(const struct kbox_req *req, const uint64_t *a, struct kbox_view_sock *s)
{
    uint64_t vlen = a[2] > 1024 ? 1024 : a[2]; /* UIO_MAXIOV, as the kernel caps it */
    uint32_t sent = 0;
    int64_t r = 0;
    for (uint64_t i = 0; i < vlen; i++) {
        uint64_t at = a[1] + i * 64; /* struct mmsghdr { struct msghdr; unsigned msg_len; } */
        if (!read_exact(req, at, &s->msg, sizeof(s->msg))) {
            r = -EFAULT;
            break;
        }
        r = s->msg.name && s->msg.namelen > 0 ? given(req, s->msg.name, (uint64_t)s->msg.namelen, KBOX_UNIX_CONNECT, s) : 0;
        if (r > 0) {
            s->msg.name = (uint64_t)(uintptr_t)&s->to.sun;
            s->msg.namelen = (int32_t)s->to.len;
        }
        if (r >= 0)
            r = KSYS3(__NR_sendmsg, a[0], &s->msg, a[3]);
        if (s->to.tmpfd >= 0)
            kbox_close(s->to.tmpfd);
        s->to.tmpfd = -1;
        uint32_t len = (uint32_t)r;
        if (r >= 0 && req->mem->write(req->mem, at + 56, &len, 4) != 4)
            r = -EFAULT;
        if (r < 0)
            break;
        sent++;
    }
    return sent ? sent : r;
}

bool kbox_view_sock_enter(const struct kbox_req *req, uint64_t *a, struct kbox_view_sock *s, int64_t *ret)
{
    struct kbox_unix_args u;
    s->to.tmpfd = -1;
    s->out = false;
    if (req->nr == __NR_sendmmsg) {
        *ret = sendmmsg_each(req, a, s);
        return true;
    }
    if (!kbox_unix_args(req->nr, &u))
        return false;
    if (u.msg >= 0) {
        if (!read_exact(req, a[u.msg], &s->msg, sizeof(s->msg)) || !s->msg.name || s->msg.namelen <= 0)
            return false;
        if (u.given) {
            int r = given(req, s->msg.name, (uint64_t)s->msg.namelen, u.use, s);
            if (r <= 0) {
                *ret = r;
                return r < 0;
            }
            s->msg.name = (uint64_t)(uintptr_t)&s->to.sun;
            s->msg.namelen = (int32_t)s->to.len;
        } else {
            s->msg_addr = a[u.msg];
            s->name_addr = s->msg.name;
            s->cap = s->msg.namelen;
            s->msg.name = (uint64_t)(uintptr_t)s->name;
            s->msg.namelen = KBOX_SOCKADDR_MAX;
            s->out = true;
        }
        a[u.msg] = (uint64_t)(uintptr_t)&s->msg;
        return false;
    }
    if (u.given) {
        int r = given(req, a[u.addr], (uint32_t)a[u.len], u.use, s);
        if (r <= 0) {
            *ret = r;
            return r < 0;
        }
        a[u.addr] = (uint64_t)(uintptr_t)&s->to.sun;
        a[u.len] = s->to.len;
        return false;
    }
    /* A reported name: the kernel reads the room from *len (negative: EINVAL, its own). */
    if (!a[u.addr] || !read_exact(req, a[u.len], &s->cap, sizeof(s->cap)) || s->cap < 0)
        return false;
    s->name_addr = a[u.addr];
    s->len_addr = a[u.len];
    s->len = KBOX_SOCKADDR_MAX;
    a[u.addr] = (uint64_t)(uintptr_t)s->name;
    a[u.len] = (uint64_t)(uintptr_t)&s->len;
    s->out = true;
    return false;
}

void kbox_view_sock_leave(const struct kbox_req *req, struct kbox_view_sock *s, int64_t *ret)
{
    if (s->to.tmpfd >= 0)
        kbox_close(s->to.tmpfd);
    s->to.tmpfd = -1;
    if (!s->out || *ret < 0)
        return;
    s->out = false;
    bool msg = req->nr == __NR_recvmsg;
    uint32_t len = msg ? (uint32_t)s->msg.namelen : s->len;
    len = kbox_unix_to_guest(s->name, len > KBOX_SOCKADDR_MAX ? KBOX_SOCKADDR_MAX : len);
    /* As the kernel's move_addr_to_user: min(room, length) bytes, the whole length reported. */
    size_t copy = len < (uint32_t)s->cap ? len : (size_t)s->cap;
    int32_t l = (int32_t)len;
    const struct kbox_mem *m = req->mem;
    bool ok = !copy || m->write(m, s->name_addr, s->name, copy) == (long)copy;
    if (msg) {
        /* recvmsg reports msg_namelen, msg_controllen and msg_flags in the msghdr. */
        ok = ok && m->write(m, s->msg_addr + __builtin_offsetof(struct kbox_msghdr, namelen), &l, 4) == 4 &&
             m->write(m, s->msg_addr + __builtin_offsetof(struct kbox_msghdr, controllen), &s->msg.controllen, 8) == 8 &&
             m->write(m, s->msg_addr + __builtin_offsetof(struct kbox_msghdr, flags), &s->msg.flags, 4) == 4;
    } else {
        ok = ok && m->write(m, s->len_addr, &l, 4) == 4;
    }
    if (!ok) {
        if (req->nr == __NR_accept || req->nr == __NR_accept4)
            kbox_close((int)*ret); /* the kernel installs no descriptor it cannot report */
        *ret = -EFAULT;
    }
}
