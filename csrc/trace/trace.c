/* One system call as one line of text in strace's style, or as one JSON object.
 *
 * Runs in the seccomp supervisor and inside the guest (trap, rewrite tiers), so: no libc, no
 * allocation, small stack frames, guest memory only through req->mem->read (which may return
 * a short count or -EFAULT; an unreadable pointer is printed in hex, as strace does), output
 * only into the caller's buffer, and the line always ends in '\n' even when it was cut. */
#include <linux/errno.h>
#include <linux/fcntl.h>
#include <linux/futex.h>
#include <linux/prctl.h>
#include <linux/stat.h>
#include <linux/time_types.h>
#include <asm/stat.h>
#include <asm/signal.h>

#include "trace/trace.h"
#include "trace/xlat.h"
#include "lib/str.h"

#define STRSIZE_DEFAULT 32
#define PATH_MAX_SHOWN 4096     /* strace prints whole paths, not -s bytes */
#define ENVP_COUNT_MAX 65536    /* stop counting a runaway environment */
#define PAGE_GRAIN 4096         /* reads never straddle this, so a chunk is all-or-nothing */

struct ctx {
    const struct kbox_req *req;
    const struct kbox_sysent *ent;  /* NULL for an unknown number */
    size_t strsize;
    int64_t ret;
    enum kbox_ret_state state;
};

static bool is_error(int64_t ret) { return ret < 0 && ret >= -4095; }
/* The call completed and succeeded, so the kernel's outputs can be shown. */
static bool succeeded(const struct ctx *c) { return c->state == KBOX_RET_KNOWN && !is_error(c->ret); }

/* ---- guest memory ---- */

static long peek(const struct ctx *c, uint64_t addr, void *buf, size_t len)
{
    const struct kbox_mem *m = c->req->mem;
    if (!m || !m->read)
        return -EFAULT;
    return m->read(m, addr, buf, len);
}

/* All of [addr, addr+len) or nothing. */
static bool peek_full(const struct ctx *c, uint64_t addr, void *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        long n = peek(c, addr + got, (char *)buf + got, len - got);
        if (n <= 0)
            return false;
        got += (size_t)n;
    }
    return true;
}

/* A chunk that does not cross a page, so that it reads completely or fails. */
static size_t chunk_len(uint64_t addr, size_t want, size_t cap)
{
    size_t page = PAGE_GRAIN - (size_t)(addr & (PAGE_GRAIN - 1));
    if (want > cap)
        want = cap;
    return want < page ? want : page;
}

/* ---- quoting (strace's rules: \n \t \r \f \v \" \\ named, other non-printables in octal,
 * three digits when an octal digit follows so the escape stays unambiguous) ---- */

struct esc {
    struct kbox_buf *b;
    int pending;    /* the byte not yet printed (its escape depends on the next), or -1 */
};

static void esc_byte(struct kbox_buf *b, unsigned c, int next)
{
    switch (c) {
    case '"': kbox_buf_puts(b, "\\\""); return;
    case '\\': kbox_buf_puts(b, "\\\\"); return;
    case '\n': kbox_buf_puts(b, "\\n"); return;
    case '\t': kbox_buf_puts(b, "\\t"); return;
    case '\r': kbox_buf_puts(b, "\\r"); return;
    case '\f': kbox_buf_puts(b, "\\f"); return;
    case '\v': kbox_buf_puts(b, "\\v"); return;
    }
    if (c >= 0x20 && c < 0x7f) {
        kbox_buf_putc(b, (char)c);
        return;
    }
    kbox_buf_putc(b, '\\');
    if (next >= '0' && next <= '7') {
        kbox_buf_putc(b, (char)('0' + (c >> 6)));
        kbox_buf_putc(b, (char)('0' + ((c >> 3) & 7)));
    } else {
        if (c >> 6)
            kbox_buf_putc(b, (char)('0' + (c >> 6)));
        if (c >> 3)
            kbox_buf_putc(b, (char)('0' + ((c >> 3) & 7)));
    }
    kbox_buf_putc(b, (char)('0' + (c & 7)));
}

static void esc_feed(struct esc *e, unsigned char c)
{
    if (e->pending >= 0)
        esc_byte(e->b, (unsigned)e->pending, c);
    e->pending = c;
}

static void esc_close(struct esc *e, bool more)
{
    if (e->pending >= 0)
        esc_byte(e->b, (unsigned)e->pending, -1);
    e->pending = -1;
    kbox_buf_putc(e->b, '"');
    if (more)
        kbox_buf_puts(e->b, "...");
}

/* ---- scalars ---- */

static void put_ptr(struct kbox_buf *b, uint64_t v)
{
    if (v)
        kbox_buf_hex(b, v);
    else
        kbox_buf_puts(b, "NULL");
}

/* strace's %#lx: 0 is "0", not "0x0". */
static void put_hex(struct kbox_buf *b, uint64_t v)
{
    if (v)
        kbox_buf_hex(b, v);
    else
        kbox_buf_putc(b, '0');
}

/* strace's %#03o for modes: 0644, 022, 000. */
static void put_mode(struct kbox_buf *b, uint64_t v)
{
    if (v)
        kbox_buf_octal(b, v);
    else
        kbox_buf_puts(b, "000");
}

static int as_int(uint64_t v) { return (int)(uint32_t)v; }

static void put_name_or_dec(struct kbox_buf *b, const struct kbox_xlat *t, uint64_t v)
{
    const char *n = kbox_xlat_name(t, v);
    if (n)
        kbox_buf_puts(b, n);
    else
        kbox_buf_dec(b, as_int(v));
}

static void put_name_or_hex(struct kbox_buf *b, const struct kbox_xlat *t, uint64_t v)
{
    const char *n = kbox_xlat_name(t, v);
    if (n)
        kbox_buf_puts(b, n);
    else
        put_hex(b, v);
}

static void put_signal(struct kbox_buf *b, int sig)
{
    const char *n = kbox_signal_name(sig);
    if (n)
        kbox_buf_puts(b, n);
    else
        kbox_buf_dec(b, sig);
}

static void put_open_flags(struct kbox_buf *b, uint64_t v)
{
    static const char *const acc[] = { "O_RDONLY", "O_WRONLY", "O_RDWR", "O_ACCMODE" };
    v &= 0xffffffffu;
    kbox_buf_puts(b, acc[v & O_ACCMODE]);
    v &= ~(uint64_t)O_ACCMODE;
    if (v) {
        kbox_buf_putc(b, '|');
        kbox_xlat_flags(b, kbox_xl_open_flags, v);
    }
}

static void put_map_flags(struct kbox_buf *b, uint64_t v)
{
    uint64_t type = v & 0xf;    /* MAP_TYPE */
    const char *n = kbox_xlat_name(kbox_xl_map_type, type);
    v &= ~(uint64_t)0xf;
    if (n)
        kbox_buf_puts(b, n);
    else
        kbox_buf_hex(b, type);
    if (v) {
        kbox_buf_putc(b, '|');
        kbox_xlat_flags(b, kbox_xl_map_flags, v);
    }
}

static void put_clone_flags(struct kbox_buf *b, uint64_t v)
{
    int sig = (int)(v & 0xff);  /* CSIGNAL: the exit signal */
    v &= ~(uint64_t)0xff;
    if (v)
        kbox_xlat_flags(b, kbox_xl_clone_flags, v);
    if (sig) {
        if (v)
            kbox_buf_putc(b, '|');
        put_signal(b, sig);
    }
    if (!v && !sig)
        kbox_buf_putc(b, '0');
}

static void put_sock_type(struct kbox_buf *b, uint64_t v)
{
    uint64_t type = v & 0xf;
    v &= ~(uint64_t)0xf;
    if (type) {
        put_name_or_dec(b, kbox_xl_sock_type, type);
        if (v)
            kbox_buf_putc(b, '|');
    }
    if (v || !type)
        kbox_xlat_flags(b, kbox_xl_sock_flags, v);
}

static void put_futex_op(struct kbox_buf *b, uint64_t v)
{
    const char *n = kbox_xlat_name(kbox_xl_futex_cmd, v & FUTEX_CMD_MASK);
    uint64_t rest = v & ~(uint64_t)(FUTEX_CMD_MASK | FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME);
    if (!n) {
        kbox_buf_hex(b, v);
        return;
    }
    kbox_buf_puts(b, n);
    if (v & FUTEX_PRIVATE_FLAG)
        kbox_buf_puts(b, "_PRIVATE");
    if (v & FUTEX_CLOCK_REALTIME)
        kbox_buf_puts(b, "|FUTEX_CLOCK_REALTIME");
    if (rest) {
        kbox_buf_putc(b, '|');
        kbox_buf_hex(b, rest);
    }
}

/* ---- memory-backed arguments ---- */

/* A NUL-terminated string, at most `max` bytes shown, "..." when longer. */
static void put_cstr(const struct ctx *c, struct kbox_buf *b, uint64_t addr, size_t max)
{
    unsigned char chunk[128];
    struct esc e = { b, -1 };
    size_t done = 0;
    bool opened = false;
    if (!addr) {
        kbox_buf_puts(b, "NULL");
        return;
    }
    for (;;) {
        size_t want = chunk_len(addr + done, max + 1 - done, sizeof(chunk));
        long n = peek(c, addr + done, chunk, want);
        if (n <= 0) {
            if (!opened)
                kbox_buf_hex(b, addr);
            else
                esc_close(&e, true);
            return;
        }
        if (!opened) {
            kbox_buf_putc(b, '"');
            opened = true;
        }
        for (long i = 0; i < n; i++) {
            if (chunk[i] == 0) {
                esc_close(&e, false);
                return;
            }
            if (done == max) {
                esc_close(&e, true);
                return;
            }
            esc_feed(&e, chunk[i]);
            done++;
        }
        if (b->truncated)
            return;
    }
}

/* `len` bytes of a buffer, at most `max` shown, "..." when longer. */
static void put_bytes(const struct ctx *c, struct kbox_buf *b, uint64_t addr, uint64_t len,
                      size_t max)
{
    unsigned char chunk[128];
    struct esc e = { b, -1 };
    size_t show = len < max ? (size_t)len : max, done = 0;
    if (!addr) {
        kbox_buf_puts(b, "NULL");
        return;
    }
    while (done < show) {
        size_t want = chunk_len(addr + done, show - done, sizeof(chunk));
        long n = peek(c, addr + done, chunk, want);
        if (n <= 0) {
            if (done == 0)
                kbox_buf_hex(b, addr);
            else
                esc_close(&e, true);
            return;
        }
        if (done == 0)
            kbox_buf_putc(b, '"');
        for (long i = 0; i < n; i++)
            esc_feed(&e, chunk[i]);
        done += (size_t)n;
        if (b->truncated)
            return;
    }
    if (show == 0)
        kbox_buf_putc(b, '"');
    esc_close(&e, len > show);
}

/* struct iovec[]: [{iov_base="hello", iov_len=5}, ...]; `total` caps the bytes shown across
 * all elements (the return value of readv), UINT64_MAX for writev. */
static void put_iov(const struct ctx *c, struct kbox_buf *b, uint64_t addr, uint64_t count,
                    uint64_t total)
{
    uint64_t iov[2];
    if (!addr) {
        kbox_buf_puts(b, "NULL");
        return;
    }
    for (uint64_t i = 0; i < count; i++) {
        if (!peek_full(c, addr + i * sizeof(iov), iov, sizeof(iov))) {
            if (i == 0) {
                kbox_buf_hex(b, addr);
                return;
            }
            kbox_buf_puts(b, ", ...");
            break;
        }
        kbox_buf_puts(b, i ? ", " : "[");
        if (i >= c->strsize) {
            kbox_buf_puts(b, "...");
            break;
        }
        kbox_buf_puts(b, "{iov_base=");
        uint64_t n = iov[1] < total ? iov[1] : total;
        put_bytes(c, b, iov[0], n, c->strsize);
        total -= n;
        kbox_buf_puts(b, ", iov_len=");
        kbox_buf_udec(b, iov[1]);
        kbox_buf_putc(b, '}');
        if (b->truncated)
            return;
    }
    kbox_buf_puts(b, count ? "]" : "[]");
}

/* argv: ["ls", "-la"], at most strsize elements (strace's rule). */
static void put_argv(const struct ctx *c, struct kbox_buf *b, uint64_t addr)
{
    uint64_t ptrs[16];
    size_t have = 0, at = 0;
    if (!addr) {
        kbox_buf_puts(b, "NULL");
        return;
    }
    for (size_t i = 0;; i++, at++) {
        if (at == have) {
            have = chunk_len(addr + i * 8, sizeof(ptrs), sizeof(ptrs)) / 8;
            have = have ? have : 1;     /* a misaligned array straddling a page */
            if (!peek_full(c, addr + i * 8, ptrs, have * 8)) {
                if (i == 0) {
                    kbox_buf_hex(b, addr);
                    return;
                }
                kbox_buf_puts(b, ", ...]");
                return;
            }
            at = 0;
        }
        if (i == 0)
            kbox_buf_putc(b, '[');
        if (!ptrs[at])
            break;
        if (i)
            kbox_buf_puts(b, ", ");
        if (i >= c->strsize) {
            kbox_buf_puts(b, "...");
            break;
        }
        put_cstr(c, b, ptrs[at], c->strsize);
        if (b->truncated)
            return;
    }
    kbox_buf_putc(b, ']');
}

/* envp: 0x7ffd... followed by how many variables it holds. */
static void put_envp(const struct ctx *c, struct kbox_buf *b, uint64_t addr)
{
    uint64_t ptrs[16];
    size_t count = 0;
    if (!addr) {
        kbox_buf_puts(b, "NULL");
        return;
    }
    kbox_buf_hex(b, addr);
    for (;;) {
        uint64_t at = addr + count * 8;
        size_t n = chunk_len(at, sizeof(ptrs), sizeof(ptrs)) / 8;
        n = n ? n : 1;
        if (!peek_full(c, at, ptrs, n * 8))
            return;     /* unreadable: the pointer alone, as strace */
        for (size_t i = 0; i < n; i++, count++) {
            if (!ptrs[i] || count >= ENVP_COUNT_MAX) {
                kbox_buf_puts(b, " /* ");
                kbox_buf_udec(b, count);
                kbox_buf_puts(b, count == 1 ? " var */" : " vars */");
                return;
            }
        }
    }
}

static void put_sigset_bits(struct kbox_buf *b, uint64_t set)
{
    int n = 0;
    for (int i = 0; i < 64; i++)
        n += (int)((set >> i) & 1);
    if (n > 32) {
        /* Mostly full: strace prints the complement. */
        kbox_buf_putc(b, '~');
        set = ~set;
    }
    kbox_buf_putc(b, '[');
    bool first = true;
    for (int i = 0; i < 64; i++) {
        if (!((set >> i) & 1))
            continue;
        if (!first)
            kbox_buf_putc(b, ' ');
        first = false;
        const char *name = kbox_signal_name(i + 1);
        if (name)
            kbox_buf_puts(b, name + 3);    /* strace drops the "SIG" inside sets */
        else
            kbox_buf_dec(b, i + 1);
    }
    kbox_buf_putc(b, ']');
}

static void put_sigset(const struct ctx *c, struct kbox_buf *b, uint64_t addr)
{
    uint64_t set;
    if (!addr)
        kbox_buf_puts(b, "NULL");
    else if (!peek_full(c, addr, &set, sizeof(set)))
        kbox_buf_hex(b, addr);
    else
        put_sigset_bits(b, set);
}

/* The kernel's struct sigaction: handler, flags, restorer, mask on x86_64, and on arm64 too
 * (asm-generic layout with SA_RESTORER defined). */
static void put_sigaction(const struct ctx *c, struct kbox_buf *b, uint64_t addr)
{
    uint64_t sa[4];
    if (!addr) {
        kbox_buf_puts(b, "NULL");
        return;
    }
    if (!peek_full(c, addr, sa, sizeof(sa))) {
        kbox_buf_hex(b, addr);
        return;
    }
    kbox_buf_puts(b, "{sa_handler=");
    if (sa[0] == 0)
        kbox_buf_puts(b, "SIG_DFL");
    else if (sa[0] == 1)
        kbox_buf_puts(b, "SIG_IGN");
    else
        kbox_buf_hex(b, sa[0]);
    kbox_buf_puts(b, ", sa_mask=");
    put_sigset_bits(b, sa[3]);
    kbox_buf_puts(b, ", sa_flags=");
    kbox_xlat_flags(b, kbox_xl_sa_flags, sa[1]);
    if (sa[1] & SA_RESTORER) {
        kbox_buf_puts(b, ", sa_restorer=");
        put_ptr(b, sa[2]);
    }
    kbox_buf_putc(b, '}');
}

static void put_stat(const struct ctx *c, struct kbox_buf *b, uint64_t addr)
{
    struct stat st;
    if (!addr || !succeeded(c) || !peek_full(c, addr, &st, sizeof(st))) {
        put_ptr(b, addr);
        return;
    }
    uint64_t mode = st.st_mode;
    const char *type = kbox_xlat_name(kbox_xl_file_type, mode & S_IFMT);
    kbox_buf_puts(b, "{st_mode=");
    if (type) {
        kbox_buf_puts(b, type);
        kbox_buf_putc(b, '|');
    }
    put_mode(b, mode & ~(uint64_t)S_IFMT);
    if (S_ISCHR(mode) || S_ISBLK(mode)) {
        uint64_t dev = st.st_rdev;
        kbox_buf_puts(b, ", st_rdev=makedev(");
        put_hex(b, ((dev >> 8) & 0xfff) | ((dev >> 32) & ~0xfffULL));
        kbox_buf_puts(b, ", ");
        put_hex(b, (dev & 0xff) | ((dev >> 12) & ~0xffULL));
        kbox_buf_putc(b, ')');
    } else {
        kbox_buf_puts(b, ", st_size=");
        kbox_buf_dec(b, st.st_size);
    }
    kbox_buf_puts(b, ", ...}");
}

static void put_timespec(const struct ctx *c, struct kbox_buf *b, uint64_t addr, bool output)
{
    struct __kernel_timespec ts;
    if (!addr || (output && !succeeded(c)) || !peek_full(c, addr, &ts, sizeof(ts))) {
        put_ptr(b, addr);
        return;
    }
    kbox_buf_puts(b, "{tv_sec=");
    kbox_buf_dec(b, ts.tv_sec);
    kbox_buf_puts(b, ", tv_nsec=");
    kbox_buf_dec(b, ts.tv_nsec);
    kbox_buf_putc(b, '}');
}

static void put_pipefds(const struct ctx *c, struct kbox_buf *b, uint64_t addr)
{
    int32_t fds[2];
    if (!addr || !succeeded(c) || !peek_full(c, addr, fds, sizeof(fds))) {
        put_ptr(b, addr);
        return;
    }
    kbox_buf_putc(b, '[');
    kbox_buf_dec(b, fds[0]);
    kbox_buf_puts(b, ", ");
    kbox_buf_dec(b, fds[1]);
    kbox_buf_putc(b, ']');
}

static void put_wstatus(const struct ctx *c, struct kbox_buf *b, uint64_t addr)
{
    int32_t s;
    if (!addr || !succeeded(c) || c->ret == 0 || !peek_full(c, addr, &s, sizeof(s))) {
        put_ptr(b, addr);
        return;
    }
    int sig = s & 0x7f;
    kbox_buf_puts(b, "[{");
    if (sig == 0) {
        kbox_buf_puts(b, "WIFEXITED(s) && WEXITSTATUS(s) == ");
        kbox_buf_dec(b, (s >> 8) & 0xff);
    } else if (sig == 0x7f) {
        kbox_buf_puts(b, "WIFSTOPPED(s) && WSTOPSIG(s) == ");
        put_signal(b, (s >> 8) & 0xff);
    } else {
        kbox_buf_puts(b, "WIFSIGNALED(s) && WTERMSIG(s) == ");
        put_signal(b, sig);
        if (s & 0x80)
            kbox_buf_puts(b, " && WCOREDUMP(s)");
    }
    kbox_buf_puts(b, "}]");
}

static void put_pollfds(const struct ctx *c, struct kbox_buf *b, uint64_t addr, uint64_t nfds)
{
    struct { int32_t fd; int16_t events, revents; } p;
    if (!addr) {
        kbox_buf_puts(b, "NULL");
        return;
    }
    for (uint64_t i = 0; i < nfds; i++) {
        if (!peek_full(c, addr + i * sizeof(p), &p, sizeof(p))) {
            if (i == 0) {
                kbox_buf_hex(b, addr);
                return;
            }
            kbox_buf_puts(b, ", ...");
            break;
        }
        kbox_buf_puts(b, i ? ", " : "[");
        if (i >= c->strsize) {
            kbox_buf_puts(b, "...");
            break;
        }
        kbox_buf_puts(b, "{fd=");
        kbox_buf_dec(b, p.fd);
        kbox_buf_puts(b, ", events=");
        kbox_xlat_flags(b, kbox_xl_poll_events, (uint16_t)p.events);
        kbox_buf_putc(b, '}');
    }
    kbox_buf_puts(b, nfds ? "]" : "[]");
}

static void put_sockaddr(const struct ctx *c, struct kbox_buf *b, uint64_t addr, uint64_t len)
{
    unsigned char sa[112];  /* sockaddr_un is the largest we decode (110) */
    size_t n = len < sizeof(sa) ? (size_t)len : sizeof(sa);
    if (!addr) {
        kbox_buf_puts(b, "NULL");
        return;
    }
    if (n < 2 || !peek_full(c, addr, sa, n)) {
        kbox_buf_hex(b, addr);
        return;
    }
    unsigned family = sa[0] | (unsigned)sa[1] << 8;
    kbox_buf_puts(b, "{sa_family=");
    put_name_or_dec(b, kbox_xl_af, family);
    if (family == 1) {              /* AF_UNIX */
        kbox_buf_puts(b, ", sun_path=");
        struct esc e = { b, -1 };
        size_t i = 2;
        if (n > 2 && sa[2] == 0) {  /* abstract socket: strace marks it with @ */
            kbox_buf_putc(b, '@');
            i = 3;
            kbox_buf_putc(b, '"');
            for (; i < n; i++)
                esc_feed(&e, sa[i]);
        } else {
            kbox_buf_putc(b, '"');
            for (; i < n && sa[i]; i++)
                esc_feed(&e, sa[i]);
        }
        esc_close(&e, false);
    } else if (family == 2 && n >= 8) {   /* AF_INET: port and address in network order */
        kbox_buf_puts(b, ", sin_port=htons(");
        kbox_buf_udec(b, (unsigned)sa[2] << 8 | sa[3]);
        kbox_buf_puts(b, "), sin_addr=inet_addr(\"");
        for (int i = 0; i < 4; i++) {
            if (i)
                kbox_buf_putc(b, '.');
            kbox_buf_udec(b, sa[4 + i]);
        }
        kbox_buf_puts(b, "\")");
    } else if (family == 10 && n >= 4) {  /* AF_INET6 */
        kbox_buf_puts(b, ", sin6_port=htons(");
        kbox_buf_udec(b, (unsigned)sa[2] << 8 | sa[3]);
        kbox_buf_puts(b, "), ...");
    } else {
        kbox_buf_puts(b, ", ...");
    }
    kbox_buf_putc(b, '}');
}

/* ---- one argument ---- */

static void put_arg(const struct ctx *c, struct kbox_buf *b, int i, int kind)
{
    const uint64_t *a = c->req->args;
    uint64_t v = a[i];
    uint64_t next = i < 5 ? a[i + 1] : 0;

    switch (kind) {
    case KA_INT: kbox_buf_dec(b, as_int(v)); break;
    case KA_OFF: kbox_buf_dec(b, (int64_t)v); break;
    case KA_UINT: kbox_buf_udec(b, v); break;
    case KA_FD:
    case KA_PID:
    case KA_PIDSPEC: kbox_buf_dec(b, as_int(v)); break;
    case KA_DIRFD:
        if (as_int(v) == AT_FDCWD)
            kbox_buf_puts(b, "AT_FDCWD");
        else
            kbox_buf_dec(b, as_int(v));
        break;
    case KA_PTR: put_ptr(b, v); break;
    case KA_PATH: put_cstr(c, b, v, PATH_MAX_SHOWN); break;
    case KA_STR: put_cstr(c, b, v, c->strsize); break;
    case KA_BUF_IN: put_bytes(c, b, v, next, c->strsize); break;
    case KA_BUF_OUT:
        if (succeeded(c) && v)
            put_bytes(c, b, v, (uint64_t)c->ret, c->strsize);
        else
            put_ptr(b, v);
        break;
    case KA_PATH_OUT:
        if (succeeded(c) && c->ret > 0 && v)
            put_cstr(c, b, v, (size_t)c->ret);
        else
            put_ptr(b, v);
        break;
    case KA_IOV_IN: put_iov(c, b, v, next & 0xffffffffu, UINT64_MAX); break;
    case KA_IOV_OUT:
        if (succeeded(c))
            put_iov(c, b, v, next & 0xffffffffu, (uint64_t)c->ret);
        else
            put_ptr(b, v);
        break;
    case KA_OPEN_FLAGS: put_open_flags(b, v); break;
    case KA_FD_FLAGS: kbox_xlat_flags(b, kbox_xl_fd_flags, v & 0xffffffffu); break;
    case KA_MODE:
    case KA_OCT: put_mode(b, v & 0xffffffffu); break;
    case KA_PROT:
        if (v == 0)
            kbox_buf_puts(b, "PROT_NONE");
        else
            kbox_xlat_flags(b, kbox_xl_prot, v);
        break;
    case KA_MAP_FLAGS: put_map_flags(b, v & 0xffffffffu); break;
    case KA_SIGNUM: put_signal(b, as_int(v)); break;
    case KA_SIGMASK_HOW: put_name_or_dec(b, kbox_xl_sigprocmask_how, v); break;
    case KA_CLONE_FLAGS: put_clone_flags(b, v); break;
    case KA_AT_FLAGS: kbox_xlat_flags(b, kbox_xl_at_flags, v & 0xffffffffu); break;
    case KA_ACCESS_MODE:
        if ((v & 0xffffffffu) == 0)
            kbox_buf_puts(b, "F_OK");
        else
            kbox_xlat_flags(b, kbox_xl_access, v & 0xffffffffu);
        break;
    case KA_FCNTL_CMD: put_name_or_dec(b, kbox_xl_fcntl_cmd, as_int(v)); break;
    case KA_WHENCE: put_name_or_dec(b, kbox_xl_whence, as_int(v)); break;
    case KA_SOCK_DOMAIN: put_name_or_dec(b, kbox_xl_af, as_int(v)); break;
    case KA_SOCK_TYPE: put_sock_type(b, v & 0xffffffffu); break;
    case KA_ARGV: put_argv(c, b, v); break;
    case KA_ENVP: put_envp(c, b, v); break;
    case KA_WAIT_OPTIONS: kbox_xlat_flags(b, kbox_xl_wait_options, v & 0xffffffffu); break;
    case KA_WSTATUS: put_wstatus(c, b, v); break;
    case KA_IOCTL_CMD: put_name_or_hex(b, kbox_xl_ioctl, v & 0xffffffffu); break;
    case KA_FUTEX_OP: put_futex_op(b, v & 0xffffffffu); break;
    case KA_PRCTL_OPT: put_name_or_dec(b, kbox_xl_prctl, as_int(v)); break;
    case KA_ARCH_PRCTL: put_name_or_hex(b, kbox_xl_arch_prctl, as_int(v)); break;
    case KA_RLIMIT_RES: put_name_or_dec(b, kbox_xl_rlimit, as_int(v)); break;
    case KA_CLOCKID: put_name_or_dec(b, kbox_xl_clock, as_int(v)); break;
    case KA_SIGSET: put_sigset(c, b, v); break;
    case KA_SIGACTION: put_sigaction(c, b, v); break;
    case KA_STAT_OUT: put_stat(c, b, v); break;
    case KA_TIMESPEC: put_timespec(c, b, v, false); break;
    case KA_TIMESPEC_OUT: put_timespec(c, b, v, true); break;
    case KA_POLLFDS: put_pollfds(c, b, v, next & 0xffffffffu); break;
    case KA_MSG_FLAGS: kbox_xlat_flags(b, kbox_xl_msg_flags, v & 0xffffffffu); break;
    case KA_SOCKADDR: put_sockaddr(c, b, v, next & 0xffffffffu); break;
    case KA_EPOLL_OP: put_name_or_dec(b, kbox_xl_epoll_op, as_int(v)); break;
    case KA_MADV: put_name_or_dec(b, kbox_xl_madv, as_int(v)); break;
    case KA_PIPEFDS: put_pipefds(c, b, v); break;
    case KA_FD_CLOEXEC:
        if (v == FD_CLOEXEC)
            kbox_buf_puts(b, "FD_CLOEXEC");
        else
            kbox_buf_dec(b, as_int(v));
        break;
    case KA_HEX:
    default: put_hex(b, v); break;
    }
}

/* Arguments whose meaning depends on another argument (fcntl's third by its command,
 * open's mode only with O_CREAT, futex and prctl by their operation).  Returns the kind to
 * print argument i as, or -1 to leave it out. */
static int arg_kind(const struct ctx *c, int i)
{
    const struct kbox_sysent *e = c->ent;
    const uint64_t *a = c->req->args;
    int kind = e->arg[i];
    if (i == 0)
        return kind;
    int prev = e->arg[i - 1];
    uint64_t pv = a[i - 1];

    if (kind == KA_MODE && prev == KA_OPEN_FLAGS)
        return (pv & O_CREAT) || (pv & __O_TMPFILE) == __O_TMPFILE ? KA_MODE : -1;
    if (prev == KA_FCNTL_CMD) {
        switch (as_int(pv)) {
        case F_GETFD: case F_GETFL: case F_GETOWN: case F_GETSIG: case F_GETLEASE:
        case F_GETPIPE_SZ: case F_GET_SEALS:
            return -1;
        case F_SETFL: return KA_OPEN_FLAGS;
        case F_SETFD: return KA_FD_CLOEXEC;
        case F_DUPFD: case F_DUPFD_CLOEXEC: case F_SETOWN: case F_SETSIG:
        case F_SETLEASE: case F_NOTIFY: case F_SETPIPE_SZ: case F_ADD_SEALS:
            return KA_INT;
        default:
            return KA_PTR;
        }
    }
    if (e->arg[0] == KA_PRCTL_OPT) {
        int op = as_int(a[0]);
        if (op == PR_SET_NAME)
            return i == 1 ? KA_STR : -1;
        if (op == PR_GET_NAME)
            return i == 1 ? KA_PTR : -1;
        return kind;
    }
    if (i >= 2 && e->arg[1] == KA_FUTEX_OP) {
        /* Only the arguments the operation uses, as strace shows them. */
        int cmd = as_int(a[1]) & FUTEX_CMD_MASK, n = 6;
        if (cmd == FUTEX_WAKE || cmd == FUTEX_UNLOCK_PI || cmd == FUTEX_TRYLOCK_PI)
            n = 3;
        else if (cmd == FUTEX_WAIT || cmd == FUTEX_LOCK_PI || cmd == FUTEX_LOCK_PI2)
            n = 4;
        else if (cmd == FUTEX_REQUEUE)
            n = 5;
        if (i >= n)
            return -1;
        if (i == 3 && (cmd == FUTEX_WAIT || cmd == FUTEX_WAIT_BITSET || cmd == FUTEX_LOCK_PI))
            return KA_TIMESPEC;
        if (i == 5 && (cmd == FUTEX_WAIT_BITSET || cmd == FUTEX_WAKE_BITSET))
            return KA_HEX;      /* the bitset */
        return kind;
    }
    return kind;
}

/* The syscall's name; unknown numbers as strace spells them (syscall_0x1f4). */
static void put_name(const struct ctx *c, struct kbox_buf *b)
{
    if (c->ent && c->ent->name) {
        kbox_buf_puts(b, c->ent->name);
    } else {
        kbox_buf_puts(b, "syscall_");
        kbox_buf_hex(b, (uint64_t)(uint32_t)c->req->nr);
    }
}

static int nargs(const struct ctx *c) { return c->ent ? c->ent->nargs : 6; }

static int kind_of(const struct ctx *c, int i) { return c->ent ? arg_kind(c, i) : KA_HEX; }

static void put_ret_text(const struct ctx *c, struct kbox_buf *b)
{
    kbox_buf_puts(b, " = ");
    if (c->state != KBOX_RET_KNOWN) {
        kbox_buf_putc(b, '?');
        return;
    }
    if (is_error(c->ret)) {
        int err = (int)-c->ret;
        const char *name = kbox_errno_name(err), *msg = kbox_errno_message(err);
        kbox_buf_puts(b, "-1 ");
        if (name) {
            kbox_buf_puts(b, name);
            kbox_buf_puts(b, " (");
            kbox_buf_puts(b, msg);
            kbox_buf_putc(b, ')');
        } else {
            kbox_buf_puts(b, "(errno ");
            kbox_buf_dec(b, err);
            kbox_buf_putc(b, ')');
        }
        return;
    }
    switch (c->ent && c->ent->name ? c->ent->ret : KA_INT) {
    case KA_HEX: put_hex(b, (uint64_t)c->ret); break;
    case KA_OCT: put_mode(b, (uint64_t)c->ret); break;
    default: kbox_buf_dec(b, c->ret); break;
    }
}

static void format_text(const struct ctx *c, struct kbox_buf *b, int tid, bool show_pid)
{
    if (show_pid) {
        /* strace -f labels each line with the thread that made the call. */
        kbox_buf_puts(b, "[pid ");
        kbox_buf_dec(b, tid);
        kbox_buf_puts(b, "] ");
    }
    put_name(c, b);
    kbox_buf_putc(b, '(');
    bool first = true;
    for (int i = 0; i < nargs(c); i++) {
        int kind = kind_of(c, i);
        if (kind < 0)
            continue;
        if (!first)
            kbox_buf_puts(b, ", ");
        first = false;
        put_arg(c, b, i, kind);
    }
    kbox_buf_putc(b, ')');
    put_ret_text(c, b);
}

/* JSON string escaping of b->p[start..len), in place: the text was rendered straight into the
 * line buffer and is now expanded backwards, so no second buffer is needed.  Fails (marks
 * the buffer truncated) when the escaped text would not fit. */
static unsigned jlen(unsigned char ch)
{
    if (ch == '"' || ch == '\\' || ch == '\n')
        return 2;
    if (ch < 0x20 || ch >= 0x7f)
        return 6;
    return 1;
}

static void json_quote_tail(struct kbox_buf *b, size_t start)
{
    static const char hex[] = "0123456789abcdef";
    size_t grown = b->len + 2;
    if (b->truncated)
        return;
    for (size_t i = start; i < b->len; i++)
        grown += jlen((unsigned char)b->p[i]) - 1;
    if (grown + 1 > b->cap) {
        b->truncated = true;
        return;
    }
    size_t w = grown;
    b->p[w] = 0;
    b->p[--w] = '"';
    for (size_t i = b->len; i-- > start;) {
        unsigned char ch = (unsigned char)b->p[i];
        unsigned n = jlen(ch);
        if (n == 1) {
            b->p[--w] = (char)ch;
        } else if (n == 2) {
            b->p[--w] = ch == '\n' ? 'n' : (char)ch;
            b->p[--w] = '\\';
        } else {
            b->p[--w] = hex[ch & 15];
            b->p[--w] = hex[ch >> 4];
            b->p[--w] = '0';
            b->p[--w] = '0';
            b->p[--w] = 'u';
            b->p[--w] = '\\';
        }
    }
    b->p[--w] = '"';
    b->len = grown;
}

static const char *tier_name(enum kbox_tier t)
{
    switch (t) {
    case KBOX_TIER_SECCOMP: return "seccomp";
    case KBOX_TIER_TRAP: return "trap";
    case KBOX_TIER_REWRITE: return "rewrite";
    }
    return "unknown";
}

static void json_head(const struct ctx *c, struct kbox_buf *b, int pid, int tid)
{
    kbox_buf_puts(b, "{\"pid\":");
    kbox_buf_dec(b, pid);
    kbox_buf_puts(b, ",\"tid\":");
    kbox_buf_dec(b, tid);
    kbox_buf_puts(b, ",\"nr\":");
    kbox_buf_dec(b, c->req->nr);
    kbox_buf_puts(b, ",\"name\":");
    size_t at = b->len;
    put_name(c, b);
    json_quote_tail(b, at);
    kbox_buf_puts(b, ",\"args\":[");
}

static void json_tail(const struct ctx *c, struct kbox_buf *b)
{
    kbox_buf_puts(b, "],\"ret\":");
    if (c->state != KBOX_RET_KNOWN) {
        kbox_buf_puts(b, "null,\"errno\":null");
    } else if (is_error(c->ret)) {
        const char *name = kbox_errno_name((int)-c->ret);
        kbox_buf_puts(b, "-1,\"errno\":");
        if (name) {
            kbox_buf_putc(b, '"');
            kbox_buf_puts(b, name);
            kbox_buf_putc(b, '"');
        } else {
            kbox_buf_dec(b, -c->ret);
        }
    } else {
        kbox_buf_dec(b, c->ret);
        kbox_buf_puts(b, ",\"errno\":null");
    }
    kbox_buf_puts(b, ",\"tier\":\"");
    kbox_buf_puts(b, tier_name(c->req->tier));
    kbox_buf_puts(b, "\"}");
}

static void format_json(const struct ctx *c, struct kbox_buf *b, int pid, int tid)
{
    json_head(c, b, pid, tid);
    bool first = true;
    for (int i = 0; i < nargs(c) && !b->truncated; i++) {
        int kind = kind_of(c, i);
        if (kind < 0)
            continue;
        if (!first)
            kbox_buf_putc(b, ',');
        first = false;
        size_t at = b->len;
        put_arg(c, b, i, kind);
        json_quote_tail(b, at);
    }
    json_tail(c, b);
}

void kbox_trace_format(struct kbox_buf *out, const struct kbox_trace_opts *opts,
                       const struct kbox_req *req, int64_t ret, enum kbox_ret_state state,
                       int pid, int tid)
{
    struct ctx c = {
        .req = req,
        .ent = kbox_sysent(req->nr),
        .strsize = opts->strsize ? opts->strsize : STRSIZE_DEFAULT,
        .ret = ret,
        .state = state,
    };
    if (c.ent && !c.ent->name)
        c.ent = NULL;
    if (out->cap < out->len + 2) {
        out->truncated = true;
        return;
    }
    /* Format into a view one byte shorter, so the '\n' always fits afterwards. */
    size_t start = out->len;
    struct kbox_buf b = *out;
    b.cap = out->cap - 1;
    if (opts->json) {
        format_json(&c, &b, pid, tid);
        if (b.truncated) {
            /* A cut JSON object is useless to a consumer: drop the arguments instead. */
            b.len = start;
            b.p[start] = 0;
            b.truncated = false;
            json_head(&c, &b, pid, tid);
            json_tail(&c, &b);
            static const char mark[] = ",\"truncated\":true}";
            if (!b.truncated && b.len > start && b.len + sizeof(mark) - 1 <= b.cap) {
                /* ... and say so: the closing '}' becomes ',"truncated":true}'. */
                b.len--;
                b.p[b.len] = 0;
                kbox_buf_puts(&b, mark);
            }
            b.truncated = true;
        }
    } else {
        format_text(&c, &b, tid, opts->show_pid);
    }
    out->len = b.len;
    out->truncated = out->truncated || b.truncated;
    kbox_buf_putc(out, '\n');
}
