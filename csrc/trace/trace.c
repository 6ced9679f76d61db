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
#include "trace/values.h"
#include "lib/str.h"

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
    case KA_PTR: kbox_tr_put_ptr(b, v); break;
    case KA_PATH:
    case KA_LINKTARGET: kbox_tr_put_cstr(c, b, v, PATH_MAX_SHOWN); break;
    case KA_STR: kbox_tr_put_cstr(c, b, v, c->strsize); break;
    case KA_BUF_IN: kbox_tr_put_bytes(c, b, v, next, c->strsize); break;
    case KA_BUF_OUT:
        if (succeeded(c) && v)
            kbox_tr_put_bytes(c, b, v, (uint64_t)c->ret, c->strsize);
        else
            kbox_tr_put_ptr(b, v);
        break;
    case KA_PATH_OUT:
        if (succeeded(c) && c->ret > 0 && v)
            kbox_tr_put_cstr(c, b, v, (size_t)c->ret);
        else
            kbox_tr_put_ptr(b, v);
        break;
    case KA_IOV_IN: kbox_tr_put_iov(c, b, v, next & 0xffffffffu, UINT64_MAX); break;
    case KA_IOV_OUT:
        if (succeeded(c))
            kbox_tr_put_iov(c, b, v, next & 0xffffffffu, (uint64_t)c->ret);
        else
            kbox_tr_put_ptr(b, v);
        break;
    case KA_OPEN_FLAGS: kbox_tr_put_open_flags(b, v); break;
    case KA_FD_FLAGS: kbox_xlat_flags(b, kbox_xl_fd_flags, v & 0xffffffffu); break;
    case KA_MODE:
    case KA_OCT: kbox_tr_put_mode(b, v & 0xffffffffu); break;
    case KA_PROT:
        if (v == 0)
            kbox_buf_puts(b, "PROT_NONE");
        else
            kbox_xlat_flags(b, kbox_xl_prot, v);
        break;
    case KA_MAP_FLAGS: kbox_tr_put_map_flags(b, v & 0xffffffffu); break;
    case KA_SIGNUM: kbox_tr_put_signal(b, as_int(v)); break;
    case KA_SIGMASK_HOW: kbox_tr_put_name_or_dec(b, kbox_xl_sigprocmask_how, v); break;
    case KA_CLONE_FLAGS: kbox_tr_put_clone_flags(b, v); break;
    case KA_AT_FLAGS: kbox_xlat_flags(b, kbox_xl_at_flags, v & 0xffffffffu); break;
    case KA_ACCESS_MODE:
        if ((v & 0xffffffffu) == 0)
            kbox_buf_puts(b, "F_OK");
        else
            kbox_xlat_flags(b, kbox_xl_access, v & 0xffffffffu);
        break;
    case KA_FCNTL_CMD: kbox_tr_put_name_or_dec(b, kbox_xl_fcntl_cmd, as_int(v)); break;
    case KA_WHENCE: kbox_tr_put_name_or_dec(b, kbox_xl_whence, as_int(v)); break;
    case KA_SOCK_DOMAIN: kbox_tr_put_name_or_dec(b, kbox_xl_af, as_int(v)); break;
    case KA_SOCK_TYPE: kbox_tr_put_sock_type(b, v & 0xffffffffu); break;
    case KA_ARGV: kbox_tr_put_argv(c, b, v); break;
    case KA_ENVP: kbox_tr_put_envp(c, b, v); break;
    case KA_WAIT_OPTIONS: kbox_xlat_flags(b, kbox_xl_wait_options, v & 0xffffffffu); break;
    case KA_WSTATUS: kbox_tr_put_wstatus(c, b, v); break;
    case KA_IOCTL_CMD: kbox_tr_put_name_or_hex(b, kbox_xl_ioctl, v & 0xffffffffu); break;
    case KA_FUTEX_OP: kbox_tr_put_futex_op(b, v & 0xffffffffu); break;
    case KA_PRCTL_OPT: kbox_tr_put_name_or_dec(b, kbox_xl_prctl, as_int(v)); break;
    case KA_ARCH_PRCTL: kbox_tr_put_name_or_hex(b, kbox_xl_arch_prctl, as_int(v)); break;
    case KA_RLIMIT_RES: kbox_tr_put_name_or_dec(b, kbox_xl_rlimit, as_int(v)); break;
    case KA_CLOCKID: kbox_tr_put_name_or_dec(b, kbox_xl_clock, as_int(v)); break;
    case KA_SIGSET: kbox_tr_put_sigset(c, b, v); break;
    case KA_SIGACTION: kbox_tr_put_sigaction(c, b, v); break;
    case KA_STAT_OUT: kbox_tr_put_stat(c, b, v); break;
    case KA_TIMESPEC: kbox_tr_put_timespec(c, b, v, false); break;
    case KA_TIMESPEC_OUT: kbox_tr_put_timespec(c, b, v, true); break;
    case KA_POLLFDS: kbox_tr_put_pollfds(c, b, v, next & 0xffffffffu); break;
    case KA_MSG_FLAGS: kbox_xlat_flags(b, kbox_xl_msg_flags, v & 0xffffffffu); break;
    case KA_SOCKADDR: kbox_tr_put_sockaddr(c, b, v, next & 0xffffffffu); break;
    case KA_EPOLL_OP: kbox_tr_put_name_or_dec(b, kbox_xl_epoll_op, as_int(v)); break;
    case KA_MADV: kbox_tr_put_name_or_dec(b, kbox_xl_madv, as_int(v)); break;
    case KA_PIPEFDS: kbox_tr_put_pipefds(c, b, v); break;
    case KA_FD_CLOEXEC:
        if (v == FD_CLOEXEC)
            kbox_buf_puts(b, "FD_CLOEXEC");
        else
            kbox_buf_dec(b, as_int(v));
        break;
    case KA_HEX:
    default: kbox_tr_put_hex(b, v); break;
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
    case KA_HEX: kbox_tr_put_hex(b, (uint64_t)c->ret); break;
    case KA_OCT: kbox_tr_put_mode(b, (uint64_t)c->ret); break;
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
