/* Printing one value of a traced call: scalars by kind, strings quoted as strace quotes
 * them, and the structures the kernel reads or fills, read from guest memory only through
 * req->mem (an unreadable pointer is printed in hex, as strace does). */

#include <linux/errno.h>
#include <linux/fcntl.h>
#include <linux/futex.h>
#include <linux/prctl.h>
#include <linux/stat.h>
#include <linux/time_types.h>
#include <asm/stat.h>
#include <asm/signal.h>

#include "trace/values.h"
#include "lib/str.h"

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

void kbox_tr_put_ptr(struct kbox_buf *b, uint64_t v)
{
    if (v)
        kbox_buf_hex(b, v);
    else
        kbox_buf_puts(b, "NULL");
}

/* strace's %#lx: 0 is "0", not "0x0". */
void kbox_tr_put_hex(struct kbox_buf *b, uint64_t v)
{
    if (v)
        kbox_buf_hex(b, v);
    else
        kbox_buf_putc(b, '0');
}

/* strace's %#03o for modes: 0644, 022, 000. */
void kbox_tr_put_mode(struct kbox_buf *b, uint64_t v)
{
    if (v)
        kbox_buf_octal(b, v);
    else
        kbox_buf_puts(b, "000");
}


void kbox_tr_put_name_or_dec(struct kbox_buf *b, const struct kbox_xlat *t, uint64_t v)
{
    const char *n = kbox_xlat_name(t, v);
    if (n)
        kbox_buf_puts(b, n);
    else
        kbox_buf_dec(b, as_int(v));
}

void kbox_tr_put_name_or_hex(struct kbox_buf *b, const struct kbox_xlat *t, uint64_t v)
{
    const char *n = kbox_xlat_name(t, v);
    if (n)
        kbox_buf_puts(b, n);
    else
        kbox_tr_put_hex(b, v);
}

void kbox_tr_put_signal(struct kbox_buf *b, int sig)
{
    const char *n = kbox_signal_name(sig);
    if (n)
        kbox_buf_puts(b, n);
    else
        kbox_buf_dec(b, sig);
}

void kbox_tr_put_open_flags(struct kbox_buf *b, uint64_t v)
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

void kbox_tr_put_map_flags(struct kbox_buf *b, uint64_t v)
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

void kbox_tr_put_clone_flags(struct kbox_buf *b, uint64_t v)
{
    int sig = (int)(v & 0xff);  /* CSIGNAL: the exit signal */
    v &= ~(uint64_t)0xff;
    if (v)
        kbox_xlat_flags(b, kbox_xl_clone_flags, v);
    if (sig) {
        if (v)
            kbox_buf_putc(b, '|');
        kbox_tr_put_signal(b, sig);
    }
    if (!v && !sig)
        kbox_buf_putc(b, '0');
}

void kbox_tr_put_sock_type(struct kbox_buf *b, uint64_t v)
{
    uint64_t type = v & 0xf;
    v &= ~(uint64_t)0xf;
    if (type) {
        kbox_tr_put_name_or_dec(b, kbox_xl_sock_type, type);
        if (v)
            kbox_buf_putc(b, '|');
    }
    if (v || !type)
        kbox_xlat_flags(b, kbox_xl_sock_flags, v);
}

void kbox_tr_put_futex_op(struct kbox_buf *b, uint64_t v)
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
void kbox_tr_put_cstr(const struct ctx *c, struct kbox_buf *b, uint64_t addr, size_t max)
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
void kbox_tr_put_bytes(const struct ctx *c, struct kbox_buf *b, uint64_t addr, uint64_t len,
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
void kbox_tr_put_iov(const struct ctx *c, struct kbox_buf *b, uint64_t addr, uint64_t count,
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
        kbox_tr_put_bytes(c, b, iov[0], n, c->strsize);
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
void kbox_tr_put_argv(const struct ctx *c, struct kbox_buf *b, uint64_t addr)
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
        kbox_tr_put_cstr(c, b, ptrs[at], c->strsize);
        if (b->truncated)
            return;
    }
    kbox_buf_putc(b, ']');
}

/* envp: 0x7ffd... followed by how many variables it holds. */
void kbox_tr_put_envp(const struct ctx *c, struct kbox_buf *b, uint64_t addr)
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

void kbox_tr_put_sigset(const struct ctx *c, struct kbox_buf *b, uint64_t addr)
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
void kbox_tr_put_sigaction(const struct ctx *c, struct kbox_buf *b, uint64_t addr)
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
        kbox_tr_put_ptr(b, sa[2]);
    }
    kbox_buf_putc(b, '}');
}

void kbox_tr_put_stat(const struct ctx *c, struct kbox_buf *b, uint64_t addr)
{
    struct stat st;
    if (!addr || !succeeded(c) || !peek_full(c, addr, &st, sizeof(st))) {
        kbox_tr_put_ptr(b, addr);
        return;
    }
    uint64_t mode = st.st_mode;
    const char *type = kbox_xlat_name(kbox_xl_file_type, mode & S_IFMT);
    kbox_buf_puts(b, "{st_mode=");
    if (type) {
        kbox_buf_puts(b, type);
        kbox_buf_putc(b, '|');
    }
    kbox_tr_put_mode(b, mode & ~(uint64_t)S_IFMT);
    if (S_ISCHR(mode) || S_ISBLK(mode)) {
        uint64_t dev = st.st_rdev;
        kbox_buf_puts(b, ", st_rdev=makedev(");
        kbox_tr_put_hex(b, ((dev >> 8) & 0xfff) | ((dev >> 32) & ~0xfffULL));
        kbox_buf_puts(b, ", ");
        kbox_tr_put_hex(b, (dev & 0xff) | ((dev >> 12) & ~0xffULL));
        kbox_buf_putc(b, ')');
    } else {
        kbox_buf_puts(b, ", st_size=");
        kbox_buf_dec(b, st.st_size);
    }
    kbox_buf_puts(b, ", ...}");
}

void kbox_tr_put_timespec(const struct ctx *c, struct kbox_buf *b, uint64_t addr, bool output)
{
    struct __kernel_timespec ts;
    if (!addr || (output && !succeeded(c)) || !peek_full(c, addr, &ts, sizeof(ts))) {
        kbox_tr_put_ptr(b, addr);
        return;
    }
    kbox_buf_puts(b, "{tv_sec=");
    kbox_buf_dec(b, ts.tv_sec);
    kbox_buf_puts(b, ", tv_nsec=");
    kbox_buf_dec(b, ts.tv_nsec);
    kbox_buf_putc(b, '}');
}

void kbox_tr_put_pipefds(const struct ctx *c, struct kbox_buf *b, uint64_t addr)
{
    int32_t fds[2];
    if (!addr || !succeeded(c) || !peek_full(c, addr, fds, sizeof(fds))) {
        kbox_tr_put_ptr(b, addr);
        return;
    }
    kbox_buf_putc(b, '[');
    kbox_buf_dec(b, fds[0]);
    kbox_buf_puts(b, ", ");
    kbox_buf_dec(b, fds[1]);
    kbox_buf_putc(b, ']');
}

void kbox_tr_put_wstatus(const struct ctx *c, struct kbox_buf *b, uint64_t addr)
{
    int32_t s;
    if (!addr || !succeeded(c) || c->ret == 0 || !peek_full(c, addr, &s, sizeof(s))) {
        kbox_tr_put_ptr(b, addr);
        return;
    }
    int sig = s & 0x7f;
    kbox_buf_puts(b, "[{");
    if (sig == 0) {
        kbox_buf_puts(b, "WIFEXITED(s) && WEXITSTATUS(s) == ");
        kbox_buf_dec(b, (s >> 8) & 0xff);
    } else if (sig == 0x7f) {
        kbox_buf_puts(b, "WIFSTOPPED(s) && WSTOPSIG(s) == ");
        kbox_tr_put_signal(b, (s >> 8) & 0xff);
    } else {
        kbox_buf_puts(b, "WIFSIGNALED(s) && WTERMSIG(s) == ");
        kbox_tr_put_signal(b, sig);
        if (s & 0x80)
            kbox_buf_puts(b, " && WCOREDUMP(s)");
    }
    kbox_buf_puts(b, "}]");
}

void kbox_tr_put_pollfds(const struct ctx *c, struct kbox_buf *b, uint64_t addr, uint64_t nfds)
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

void kbox_tr_put_sockaddr(const struct ctx *c, struct kbox_buf *b, uint64_t addr, uint64_t len)
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
    kbox_tr_put_name_or_dec(b, kbox_xl_af, family);
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

