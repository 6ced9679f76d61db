/* strace-style and JSON-lines formatting of one system call.
 *
 * Freestanding: runs inside the guest process (trap and rewrite tiers) as well as in the
 * seccomp supervisor, so it reads guest memory only through req->mem and writes only into
 * the caller's buffer. */
#ifndef KBOX_TRACE_TRACE_H
#define KBOX_TRACE_TRACE_H

#include "arch/sysent.h"
#include "core/request.h"
#include "lib/buf.h"
#include "trace/names.h"

struct kbox_trace_opts {
    bool json;
    bool show_pid;       /* prefix "[pid N] " in text mode (set when following children) */
    size_t strsize;      /* max string bytes shown, strace's -s (default 32) */
};

/* Formats one complete line (ending in '\n') describing `req` and its outcome into `out`.
 * `ret` is meaningful for KBOX_RET_KNOWN only.  `pid`/`tid` are what the trace shows
 * (virtual ids under --virtual-pid).  Text mode:
 *   openat(AT_FDCWD, "/etc/hostname", O_RDONLY) = 3
 *   openat(AT_FDCWD, "/nope", O_RDONLY) = -1 ENOENT (No such file or directory)
 *   exit_group(0) = ?
 * JSON mode (one object per line): {"pid":1,"tid":1,"nr":257,"name":"openat",
 *   "args":["AT_FDCWD","\"/etc/hostname\"","O_RDONLY"],"ret":3,"errno":null,"tier":"trap"}
 * with "ret": null when the result is unknown or there is none. */
void kbox_trace_format(struct kbox_buf *out, const struct kbox_trace_opts *opts,
                       const struct kbox_req *req, int64_t ret, enum kbox_ret_state state,
                       int pid, int tid);

#endif
