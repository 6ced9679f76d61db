/* strace-style and JSON-lines formatting of one system call, plus the syscall table.
 *
 * Freestanding: runs inside the guest process (trap and rewrite tiers) as well as in the
 * seccomp supervisor, so it reads guest memory only through req->mem and writes only into
 * the caller's buffer. */
#ifndef KBOX_TRACE_TRACE_H
#define KBOX_TRACE_TRACE_H

#include "core/request.h"
#include "lib/buf.h"

/* Argument kinds the decoder knows.  Extend as needed; the table in sysent-<arch>.c says
 * which kind each argument of each syscall has. */
enum kbox_argtype {
    KA_NONE = 0, KA_INT, KA_UINT, KA_HEX, KA_PTR, KA_FD, KA_DIRFD, KA_PATH, KA_STR,
    KA_BUF_IN,    /* buffer written by the guest, length in the next argument (write) */
    KA_BUF_OUT,   /* buffer filled by the kernel, length = return value (read) */
    KA_OPEN_FLAGS, KA_MODE, KA_PROT, KA_MAP_FLAGS, KA_SIGNUM, KA_SIGMASK_HOW, KA_CLONE_FLAGS,
    KA_AT_FLAGS, KA_ACCESS_MODE, KA_FCNTL_CMD, KA_WHENCE, KA_SOCK_DOMAIN, KA_SOCK_TYPE,
    KA_ARGV, KA_ENVP, KA_PID, KA_WAIT_OPTIONS, KA_IOCTL_CMD, KA_FUTEX_OP, KA_PRCTL_OPT,
    KA_ARCH_PRCTL, KA_RLIMIT_RES, KA_CLOCKID, KA_OCT, KA_SIGSET, KA_SIGACTION, KA_STAT_OUT,
    KA_TIMESPEC, KA_POLLFDS, KA_MSG_FLAGS, KA_SOCKADDR, KA_EPOLL_OP, KA_MADV, KA_PIPEFDS,
    KA_COUNT
};

struct kbox_sysent {
    const char *name;          /* NULL for numbers this arch does not define */
    uint8_t nargs;
    uint8_t arg[6];            /* enum kbox_argtype */
    uint8_t ret;               /* KA_INT, KA_HEX (mmap, brk), KA_FD, KA_PID ... */
};

#define KBOX_NR_MAX 512        /* table size; every native number on both arches is below */

/* NULL for out-of-range numbers. */
const struct kbox_sysent *kbox_sysent(int nr);
/* Syscall name, or NULL. */
const char *kbox_syscall_name(int nr);
/* Native number for a name, or -1. */
int kbox_syscall_number(const char *name);
/* errno name ("ENOENT") or NULL; number for a name or -1. */
const char *kbox_errno_name(int err);
int kbox_errno_number(const char *name);
/* Signal name ("SIGTERM") or NULL. */
const char *kbox_signal_name(int sig);

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
