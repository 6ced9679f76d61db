/* The one per-syscall table of the build's architecture (arch/<arch>/sysent.c, generated
 * by scripts/gen-sysent.py): name, argument kinds (which arguments are paths, fds, pids,
 * buffers the kernel fills) and the properties the tiers and the dispatcher act on.  The
 * tracer decodes with it, the dispatcher finds pid arguments and results in it, the
 * in-process runtime decides from it which calls need the signal frame or its own
 * adjustments; nothing keeps a list of syscall numbers by hand beside it. */
#ifndef KBOX_ARCH_SYSENT_H
#define KBOX_ARCH_SYSENT_H

#define KBOX_NR_MAX 512        /* table size; every native number on both arches is below */

#ifndef __ASSEMBLER__
#include <stddef.h>
#include <stdint.h>

/* Argument kinds the decoder knows.  Extend as needed; the table in arch/<arch>/sysent.c
 * says which kind each argument of each syscall has. */
enum kbox_argtype {
    KA_NONE = 0, KA_INT, KA_UINT, KA_HEX, KA_PTR, KA_FD, KA_DIRFD, KA_PATH, KA_STR,
    KA_BUF_IN,    /* buffer written by the guest, length in the next argument (write) */
    KA_BUF_OUT,   /* buffer filled by the kernel, length = return value (read) */
    KA_OPEN_FLAGS, KA_MODE, KA_PROT, KA_MAP_FLAGS, KA_SIGNUM, KA_SIGMASK_HOW, KA_CLONE_FLAGS,
    KA_AT_FLAGS, KA_ACCESS_MODE, KA_FCNTL_CMD, KA_WHENCE, KA_SOCK_DOMAIN, KA_SOCK_TYPE,
    KA_ARGV, KA_ENVP, KA_PID, KA_WAIT_OPTIONS, KA_IOCTL_CMD, KA_FUTEX_OP, KA_PRCTL_OPT,
    KA_ARCH_PRCTL, KA_RLIMIT_RES, KA_CLOCKID, KA_OCT, KA_SIGSET, KA_SIGACTION, KA_STAT_OUT,
    KA_TIMESPEC, KA_POLLFDS, KA_MSG_FLAGS, KA_SOCKADDR, KA_EPOLL_OP, KA_MADV, KA_PIPEFDS,
    KA_FD_FLAGS,      /* O_CLOEXEC|O_NONBLOCK without an access mode (pipe2, dup3, eventfd2) */
    KA_TIMESPEC_OUT,  /* struct timespec filled by the kernel, shown when the call succeeded */
    KA_WSTATUS,       /* int *wstatus of wait4, shown as strace's [{WIFEXITED(s) && ...}] */
    KA_PATH_OUT,      /* string filled by the kernel, length = return value (getcwd) */
    KA_OFF,           /* 64-bit signed (off_t, loff_t); KA_INT is a C int (low 32 bits) */
    KA_IOV_IN,        /* struct iovec[], count in the next argument (writev) */
    KA_IOV_OUT,       /* struct iovec[] filled by the kernel, total = return value (readv) */
    KA_FD_CLOEXEC,    /* fcntl F_SETFD's argument (chosen by the decoder, not the table) */
    KA_PIDSPEC,       /* kill(2)/wait4(2)'s pid: >0 a process, <-1 a process group, 0 and -1 special */
    KA_LINKTARGET,    /* a symlink's contents (symlink(2)'s target): a string, not a path to resolve */
    KA_COUNT
};

struct kbox_sysent {
    const char *name;          /* NULL for numbers this arch does not define */
    uint8_t nargs;
    uint8_t arg[6];            /* enum kbox_argtype */
    uint8_t ret;               /* KA_INT, KA_HEX (mmap, brk), KA_FD, KA_PID ... */
    uint8_t props;             /* KBOX_SC_* */
};


/* Properties (KBOX_SC_*), from gen-sysent.py's PROPERTIES. */
#define KBOX_SC_FRAME 0x01     /* in-process: needs the interrupted context (the SIGSYS frame):
                                  served on the trap path only, never from a trampoline */
#define KBOX_SC_RUNTIME 0x02   /* in-process: the runtime adjusts or emulates it (tiers/fixups.c) */
#define KBOX_SC_NEWTASK 0x04   /* creates a process or thread (clone, clone3, fork, vfork) */
#define KBOX_SC_EXEC 0x08      /* replaces the program (execve, execveat) */
#define KBOX_SC_NORETURN 0x10  /* does not return to the caller (exit, exit_group) */
#define KBOX_SC_OPEN 0x20      /* opens a path (open, openat, creat, openat2) */
#define KBOX_SC_NOFOLLOW 0x40  /* its paths name a final symlink itself, never its target */
#define KBOX_SC_SOCKADDR 0x80  /* takes or returns a socket address (the root view translates
                                  AF_UNIX paths: core/view-unix.h) */

/* NULL for out-of-range numbers. */
const struct kbox_sysent *kbox_sysent(int nr);

/* The properties of `nr` (0 for numbers outside the table). */
static inline unsigned kbox_sc_props(int nr)
{
    const struct kbox_sysent *e = kbox_sysent(nr);
    return e ? e->props : 0;
}
#endif /* __ASSEMBLER__ */

#endif
