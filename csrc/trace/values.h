/* The value printers (values.c) trace.c formats a call with, and the call they print from. */
#ifndef KBOX_TRACE_VALUES_H
#define KBOX_TRACE_VALUES_H

#include "arch/sysent.h"
#include "core/request.h"
#include "trace/names.h"
#include "trace/xlat.h"
#include "lib/buf.h"

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

static inline bool is_error(int64_t ret) { return ret < 0 && ret >= -4095; }
/* The call completed and succeeded, so the kernel's outputs can be shown. */
static inline bool succeeded(const struct ctx *c) { return c->state == KBOX_RET_KNOWN && !is_error(c->ret); }

static inline int as_int(uint64_t v) { return (int)(uint32_t)v; }

void kbox_tr_put_ptr(struct kbox_buf *b, uint64_t v);
void kbox_tr_put_hex(struct kbox_buf *b, uint64_t v);
void kbox_tr_put_mode(struct kbox_buf *b, uint64_t v);
void kbox_tr_put_name_or_dec(struct kbox_buf *b, const struct kbox_xlat *t, uint64_t v);
void kbox_tr_put_name_or_hex(struct kbox_buf *b, const struct kbox_xlat *t, uint64_t v);
void kbox_tr_put_signal(struct kbox_buf *b, int sig);
void kbox_tr_put_open_flags(struct kbox_buf *b, uint64_t v);
void kbox_tr_put_map_flags(struct kbox_buf *b, uint64_t v);
void kbox_tr_put_clone_flags(struct kbox_buf *b, uint64_t v);
void kbox_tr_put_sock_type(struct kbox_buf *b, uint64_t v);
void kbox_tr_put_futex_op(struct kbox_buf *b, uint64_t v);
void kbox_tr_put_cstr(const struct ctx *c, struct kbox_buf *b, uint64_t addr, size_t max);
void kbox_tr_put_bytes(const struct ctx *c, struct kbox_buf *b, uint64_t addr, uint64_t len, size_t max);
void kbox_tr_put_iov(const struct ctx *c, struct kbox_buf *b, uint64_t addr, uint64_t count, uint64_t total);
void kbox_tr_put_argv(const struct ctx *c, struct kbox_buf *b, uint64_t addr);
void kbox_tr_put_envp(const struct ctx *c, struct kbox_buf *b, uint64_t addr);
void kbox_tr_put_sigset(const struct ctx *c, struct kbox_buf *b, uint64_t addr);
void kbox_tr_put_sigaction(const struct ctx *c, struct kbox_buf *b, uint64_t addr);
void kbox_tr_put_stat(const struct ctx *c, struct kbox_buf *b, uint64_t addr);
void kbox_tr_put_timespec(const struct ctx *c, struct kbox_buf *b, uint64_t addr, bool output);
void kbox_tr_put_pipefds(const struct ctx *c, struct kbox_buf *b, uint64_t addr);
void kbox_tr_put_wstatus(const struct ctx *c, struct kbox_buf *b, uint64_t addr);
void kbox_tr_put_pollfds(const struct ctx *c, struct kbox_buf *b, uint64_t addr, uint64_t nfds);
void kbox_tr_put_sockaddr(const struct ctx *c, struct kbox_buf *b, uint64_t addr, uint64_t len);

#endif
