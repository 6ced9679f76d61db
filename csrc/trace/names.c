/* Names for numbers: syscalls (through the per-arch table), errnos, signals, and the flag and
 * command tables the trace decoder prints (strace's spelling throughout).
 *
 * Constants come from the uapi headers of the build arch wherever the kernel exports them;
 * the few that only libc defines (AF_*, SOCK_*, MSG_*, R_OK ...) are the same on x86_64 and
 * arm64 and are spelled out below with their values. */
#include <linux/fcntl.h>
#include <linux/mman.h>
#include <linux/sched.h>
#include <linux/futex.h>
#include <linux/prctl.h>
#include <linux/time.h>
#include <linux/wait.h>
#include <linux/eventpoll.h>
#include <linux/stat.h>
#include <linux/fs.h>
#include <asm/termbits.h> /* struct termios2, which TCGETS2 takes the size of */
#include <asm/ioctls.h>
#include <asm/poll.h>
#include <asm/resource.h>
#include <asm/signal.h>

#include "trace/names.h"
#include "arch/sysent.h"
#include "trace/errnoent.h"
#include "trace/xlat.h"
#include "lib/str.h"

#define X(v) { (uint64_t)(v), #v }
#define XN(v, n) { (uint64_t)(v), n }
#define XEND { 0, NULL }

/* ---- syscalls ---- */

const char *kbox_syscall_name(int nr)
{
    const struct kbox_sysent *e = kbox_sysent(nr);
    return e ? e->name : NULL;
}

int kbox_syscall_number(const char *name)
{
    if (!name)
        return -1;
    for (int nr = 0; nr < KBOX_NR_MAX; nr++) {
        const struct kbox_sysent *e = kbox_sysent(nr);
        if (e->name && kbox_strcmp(e->name, name) == 0)
            return nr;
    }
    return -1;
}

/* ---- errnos ---- */

const char *kbox_errno_name(int err)
{
    if (err > 0 && err < kbox_errnoent_count)
        return kbox_errnoent[err].name;
    for (const struct kbox_kerrnoent *k = kbox_kerrnoent; k->name; k++)
        if (k->nr == err)
            return k->name;
    return NULL;
}

const char *kbox_errno_message(int err)
{
    if (err > 0 && err < kbox_errnoent_count)
        return kbox_errnoent[err].message;
    for (const struct kbox_kerrnoent *k = kbox_kerrnoent; k->name; k++)
        if (k->nr == err)
            return k->message;
    return NULL;
}

/* Aliases a user may type (--deny open:EWOULDBLOCK); the table holds the primary names. */
static const struct kbox_xlat errno_aliases[] = {
    XN(11, "EWOULDBLOCK"), XN(35, "EDEADLOCK"), XN(95, "ENOTSUP"), XEND,
};

int kbox_errno_number(const char *name)
{
    if (!name)
        return -1;
    for (int e = 1; e < kbox_errnoent_count; e++)
        if (kbox_errnoent[e].name && kbox_strcmp(kbox_errnoent[e].name, name) == 0)
            return e;
    for (const struct kbox_xlat *a = errno_aliases; a->name; a++)
        if (kbox_strcmp(a->name, name) == 0)
            return (int)a->val;
    for (const struct kbox_kerrnoent *k = kbox_kerrnoent; k->name; k++)
        if (kbox_strcmp(k->name, name) == 0)
            return k->nr;
    return -1;
}

/* ---- signals ---- */

static const char *const signames[] = {
    [SIGHUP] = "SIGHUP", [SIGINT] = "SIGINT", [SIGQUIT] = "SIGQUIT", [SIGILL] = "SIGILL",
    [SIGTRAP] = "SIGTRAP", [SIGABRT] = "SIGABRT", [SIGBUS] = "SIGBUS", [SIGFPE] = "SIGFPE",
    [SIGKILL] = "SIGKILL", [SIGUSR1] = "SIGUSR1", [SIGSEGV] = "SIGSEGV", [SIGUSR2] = "SIGUSR2",
    [SIGPIPE] = "SIGPIPE", [SIGALRM] = "SIGALRM", [SIGTERM] = "SIGTERM",
    [SIGSTKFLT] = "SIGSTKFLT", [SIGCHLD] = "SIGCHLD", [SIGCONT] = "SIGCONT",
    [SIGSTOP] = "SIGSTOP", [SIGTSTP] = "SIGTSTP", [SIGTTIN] = "SIGTTIN", [SIGTTOU] = "SIGTTOU",
    [SIGURG] = "SIGURG", [SIGXCPU] = "SIGXCPU", [SIGXFSZ] = "SIGXFSZ",
    [SIGVTALRM] = "SIGVTALRM", [SIGPROF] = "SIGPROF", [SIGWINCH] = "SIGWINCH",
    [SIGIO] = "SIGIO", [SIGPWR] = "SIGPWR", [SIGSYS] = "SIGSYS",
    /* The kernel's real-time range starts at 32; glibc reserves 32-33 and calls 34 SIGRTMIN,
     * so strace names them relative to the kernel's base. */
    [32] = "SIGRTMIN",
#define RT(n) [32 + n] = "SIGRT_" #n
    RT(1), RT(2), RT(3), RT(4), RT(5), RT(6), RT(7), RT(8), RT(9), RT(10), RT(11), RT(12),
    RT(13), RT(14), RT(15), RT(16), RT(17), RT(18), RT(19), RT(20), RT(21), RT(22), RT(23),
    RT(24), RT(25), RT(26), RT(27), RT(28), RT(29), RT(30), RT(31), RT(32),
#undef RT
};

const char *kbox_signal_name(int sig)
{
    if (sig <= 0 || sig >= (int)(sizeof(signames) / sizeof(signames[0])))
        return NULL;
    return signames[sig];
}

/* ---- flag and command tables ---- */

const char *kbox_xlat_name(const struct kbox_xlat *t, uint64_t v)
{
    for (; t->name; t++)
        if (t->val == v)
            return t->name;
    return NULL;
}

void kbox_xlat_flags(struct kbox_buf *b, const struct kbox_xlat *t, uint64_t v)
{
    bool first = true;
    if (v == 0) {
        kbox_buf_putc(b, '0');
        return;
    }
    for (; t->name && v; t++) {
        if (t->val && (v & t->val) == t->val) {
            if (!first)
                kbox_buf_putc(b, '|');
            kbox_buf_puts(b, t->name);
            first = false;
            v &= ~t->val;
        }
    }
    if (v) {
        if (!first)
            kbox_buf_putc(b, '|');
        kbox_buf_hex(b, v);
    }
}

/* O_* after the access mode, in strace's order.  O_TMPFILE and O_SYNC include another flag's
 * bit (O_DIRECTORY, O_DSYNC), so they come before it. */
const struct kbox_xlat kbox_xl_open_flags[] = {
    X(O_CREAT), X(O_EXCL), X(O_NOCTTY), X(O_TRUNC), X(O_APPEND), X(O_NONBLOCK), X(O_SYNC),
    X(O_DSYNC), XN(FASYNC, "O_ASYNC"), X(O_DIRECT), X(O_LARGEFILE), X(O_TMPFILE),
    X(O_DIRECTORY), X(O_NOFOLLOW), X(O_NOATIME), X(O_CLOEXEC), X(O_PATH), XEND,
};

const struct kbox_xlat kbox_xl_fd_flags[] = {
    X(O_NONBLOCK), X(O_DIRECT), X(O_CLOEXEC), XEND,
};

const struct kbox_xlat kbox_xl_prot[] = {
    X(PROT_READ), X(PROT_WRITE), X(PROT_EXEC), X(PROT_SEM),
#ifdef PROT_BTI /* arm64 */
    X(PROT_BTI),
#endif
#ifdef PROT_MTE /* arm64 */
    X(PROT_MTE),
#endif
    X(PROT_GROWSDOWN), X(PROT_GROWSUP), XEND,
};

const struct kbox_xlat kbox_xl_map_type[] = {
    X(MAP_SHARED), X(MAP_PRIVATE), X(MAP_SHARED_VALIDATE), XEND,
};

const struct kbox_xlat kbox_xl_map_flags[] = {
    X(MAP_FIXED), X(MAP_ANONYMOUS),
#ifdef MAP_32BIT /* x86_64 */
    X(MAP_32BIT),
#endif
    X(MAP_GROWSDOWN), X(MAP_DENYWRITE), X(MAP_EXECUTABLE), X(MAP_LOCKED), X(MAP_NORESERVE),
    X(MAP_POPULATE), X(MAP_NONBLOCK), X(MAP_STACK), X(MAP_HUGETLB), X(MAP_SYNC),
    X(MAP_FIXED_NOREPLACE), X(MAP_UNINITIALIZED), XEND,
};

/* The low byte of clone's flags is the exit signal; the caller prints it. */
const struct kbox_xlat kbox_xl_clone_flags[] = {
    X(CLONE_VM), X(CLONE_FS), X(CLONE_FILES), X(CLONE_SIGHAND), X(CLONE_PIDFD),
    X(CLONE_PTRACE), X(CLONE_VFORK), X(CLONE_PARENT), X(CLONE_THREAD), X(CLONE_NEWNS),
    X(CLONE_SYSVSEM), X(CLONE_SETTLS), X(CLONE_PARENT_SETTID), X(CLONE_CHILD_CLEARTID),
    X(CLONE_DETACHED), X(CLONE_UNTRACED), X(CLONE_CHILD_SETTID), X(CLONE_NEWCGROUP),
    X(CLONE_NEWUTS), X(CLONE_NEWIPC), X(CLONE_NEWUSER), X(CLONE_NEWPID), X(CLONE_NEWNET),
    X(CLONE_IO), XEND,
};

/* AT_EACCESS shares 0x200 with AT_REMOVEDIR; only faccessat2 means the former. */
const struct kbox_xlat kbox_xl_at_flags[] = {
    X(AT_SYMLINK_NOFOLLOW), X(AT_REMOVEDIR), X(AT_SYMLINK_FOLLOW),
    X(AT_NO_AUTOMOUNT), X(AT_EMPTY_PATH), X(AT_STATX_FORCE_SYNC), X(AT_STATX_DONT_SYNC),
    X(AT_RECURSIVE), XEND,
};

/* unistd.h's values (libc only). */
const struct kbox_xlat kbox_xl_access[] = {
    XN(4, "R_OK"), XN(2, "W_OK"), XN(1, "X_OK"), XEND,
};

const struct kbox_xlat kbox_xl_fcntl_cmd[] = {
    X(F_DUPFD), X(F_GETFD), X(F_SETFD), X(F_GETFL), X(F_SETFL), X(F_GETLK), X(F_SETLK),
    X(F_SETLKW), X(F_SETOWN), X(F_GETOWN), X(F_SETSIG), X(F_GETSIG), X(F_SETOWN_EX),
    X(F_GETOWN_EX), X(F_OFD_GETLK), X(F_OFD_SETLK), X(F_OFD_SETLKW), X(F_SETLEASE),
    X(F_GETLEASE), X(F_NOTIFY), X(F_DUPFD_CLOEXEC), X(F_SETPIPE_SZ), X(F_GETPIPE_SZ),
    X(F_ADD_SEALS), X(F_GET_SEALS), XEND,
};

const struct kbox_xlat kbox_xl_whence[] = {
    X(SEEK_SET), X(SEEK_CUR), X(SEEK_END), X(SEEK_DATA), X(SEEK_HOLE), XEND,
};

/* sys/socket.h's address families (libc only; identical on both arches). */
const struct kbox_xlat kbox_xl_af[] = {
    XN(0, "AF_UNSPEC"), XN(1, "AF_UNIX"), XN(2, "AF_INET"), XN(10, "AF_INET6"),
    XN(16, "AF_NETLINK"), XN(17, "AF_PACKET"), XN(38, "AF_ALG"), XN(40, "AF_VSOCK"), XEND,
};

const struct kbox_xlat kbox_xl_sock_type[] = {
    XN(1, "SOCK_STREAM"), XN(2, "SOCK_DGRAM"), XN(3, "SOCK_RAW"), XN(4, "SOCK_RDM"),
    XN(5, "SOCK_SEQPACKET"), XN(6, "SOCK_DCCP"), XN(10, "SOCK_PACKET"), XEND,
};

/* SOCK_CLOEXEC and SOCK_NONBLOCK are O_CLOEXEC and O_NONBLOCK on both arches. */
const struct kbox_xlat kbox_xl_sock_flags[] = {
    XN(O_CLOEXEC, "SOCK_CLOEXEC"), XN(O_NONBLOCK, "SOCK_NONBLOCK"), XEND,
};

const struct kbox_xlat kbox_xl_msg_flags[] = {
    XN(0x1, "MSG_OOB"), XN(0x2, "MSG_PEEK"), XN(0x4, "MSG_DONTROUTE"), XN(0x8, "MSG_CTRUNC"),
    XN(0x10, "MSG_PROXY"), XN(0x20, "MSG_TRUNC"), XN(0x40, "MSG_DONTWAIT"), XN(0x80, "MSG_EOR"),
    XN(0x100, "MSG_WAITALL"), XN(0x200, "MSG_FIN"), XN(0x400, "MSG_SYN"),
    XN(0x800, "MSG_CONFIRM"), XN(0x1000, "MSG_RST"), XN(0x2000, "MSG_ERRQUEUE"),
    XN(0x4000, "MSG_NOSIGNAL"), XN(0x8000, "MSG_MORE"), XN(0x10000, "MSG_WAITFORONE"),
    XN(0x4000000, "MSG_ZEROCOPY"), XN(0x20000000, "MSG_FASTOPEN"),
    XN(0x40000000, "MSG_CMSG_CLOEXEC"), XEND,
};

const struct kbox_xlat kbox_xl_wait_options[] = {
    X(WNOHANG), X(WUNTRACED), X(WEXITED), X(WCONTINUED), X(WNOWAIT), X(__WNOTHREAD),
    X(__WALL), X(__WCLONE), XEND,
};

const struct kbox_xlat kbox_xl_ioctl[] = {
    X(TCGETS), X(TCSETS), X(TCSETSW), X(TCSETSF), X(TCGETA), X(TCSETA), X(TCSETAW),
    X(TCSETAF), X(TCSBRK), X(TCXONC), X(TCFLSH), X(TIOCEXCL), X(TIOCNXCL), X(TIOCSCTTY),
    X(TIOCGPGRP), X(TIOCSPGRP), X(TIOCOUTQ), X(TIOCSTI), X(TIOCGWINSZ), X(TIOCSWINSZ),
    X(TIOCMGET), X(TIOCMSET), X(TIOCGSOFTCAR), X(TIOCSSOFTCAR), X(FIONREAD), X(TIOCLINUX),
    X(TIOCCONS), X(FIONBIO), X(TIOCNOTTY), X(TIOCSETD), X(TIOCGETD), X(TIOCSBRK),
    X(TIOCCBRK), X(TIOCGSID), X(TCGETS2), X(TCSETS2), X(TIOCGPTN), X(TIOCSPTLCK),
    X(TIOCGDEV), X(TIOCGPKT), X(TIOCGPTLCK), X(TIOCGEXCL), X(TIOCGPTPEER), X(FIONCLEX),
    X(FIOCLEX), X(FIOASYNC), X(TIOCSERGETLSR), X(FIOQSIZE), XEND,
};

const struct kbox_xlat kbox_xl_futex_cmd[] = {
    X(FUTEX_WAIT), X(FUTEX_WAKE), X(FUTEX_FD), X(FUTEX_REQUEUE), X(FUTEX_CMP_REQUEUE),
    X(FUTEX_WAKE_OP), X(FUTEX_LOCK_PI), X(FUTEX_UNLOCK_PI), X(FUTEX_TRYLOCK_PI),
    X(FUTEX_WAIT_BITSET), X(FUTEX_WAKE_BITSET), X(FUTEX_WAIT_REQUEUE_PI),
    X(FUTEX_CMP_REQUEUE_PI), X(FUTEX_LOCK_PI2), XEND,
};

const struct kbox_xlat kbox_xl_prctl[] = {
    X(PR_SET_PDEATHSIG), X(PR_GET_PDEATHSIG), X(PR_GET_DUMPABLE), X(PR_SET_DUMPABLE),
    X(PR_GET_KEEPCAPS), X(PR_SET_KEEPCAPS), X(PR_SET_NAME), X(PR_GET_NAME),
    X(PR_GET_SECCOMP), X(PR_SET_SECCOMP), X(PR_CAPBSET_READ), X(PR_CAPBSET_DROP),
    X(PR_GET_TSC), X(PR_SET_TSC), X(PR_GET_SECUREBITS), X(PR_SET_SECUREBITS),
    X(PR_SET_TIMERSLACK), X(PR_GET_TIMERSLACK), X(PR_MCE_KILL), X(PR_MCE_KILL_GET),
    X(PR_SET_MM), X(PR_SET_PTRACER), X(PR_SET_CHILD_SUBREAPER), X(PR_GET_CHILD_SUBREAPER),
    X(PR_SET_NO_NEW_PRIVS), X(PR_GET_NO_NEW_PRIVS), X(PR_GET_TID_ADDRESS),
    X(PR_SET_THP_DISABLE), X(PR_GET_THP_DISABLE), X(PR_CAP_AMBIENT), X(PR_SVE_SET_VL),
    X(PR_SVE_GET_VL), X(PR_GET_SPECULATION_CTRL), X(PR_SET_SPECULATION_CTRL),
    X(PR_PAC_RESET_KEYS), X(PR_SET_TAGGED_ADDR_CTRL), X(PR_GET_TAGGED_ADDR_CTRL),
    X(PR_SET_IO_FLUSHER), X(PR_GET_IO_FLUSHER), X(PR_SET_SYSCALL_USER_DISPATCH),
    X(PR_PAC_SET_ENABLED_KEYS), X(PR_PAC_GET_ENABLED_KEYS), X(PR_SCHED_CORE),
    X(PR_SME_SET_VL), X(PR_SME_GET_VL), X(PR_SET_VMA), XEND,
};

/* asm/prctl.h exists only on x86_64 (arch_prctl does too); values from there. */
const struct kbox_xlat kbox_xl_arch_prctl[] = {
    XN(0x1001, "ARCH_SET_GS"), XN(0x1002, "ARCH_SET_FS"), XN(0x1003, "ARCH_GET_FS"),
    XN(0x1004, "ARCH_GET_GS"), XN(0x1011, "ARCH_GET_CPUID"), XN(0x1012, "ARCH_SET_CPUID"),
    XN(0x1021, "ARCH_GET_XCOMP_SUPP"), XN(0x1022, "ARCH_GET_XCOMP_PERM"),
    XN(0x1023, "ARCH_REQ_XCOMP_PERM"), XN(0x1024, "ARCH_GET_XCOMP_GUEST_PERM"),
    XN(0x1025, "ARCH_REQ_XCOMP_GUEST_PERM"), XN(0x2001, "ARCH_MAP_VDSO_X32"),
    XN(0x2002, "ARCH_MAP_VDSO_32"), XN(0x2003, "ARCH_MAP_VDSO_64"),
    XN(0x4001, "ARCH_GET_UNTAG_MASK"), XN(0x4002, "ARCH_ENABLE_TAGGED_ADDR"),
    XN(0x4003, "ARCH_GET_MAX_TAG_BITS"), XN(0x4004, "ARCH_FORCE_TAGGED_SVA"),
    XN(0x5001, "ARCH_SHSTK_ENABLE"), XN(0x5002, "ARCH_SHSTK_DISABLE"),
    XN(0x5003, "ARCH_SHSTK_LOCK"), XN(0x5004, "ARCH_SHSTK_UNLOCK"),
    XN(0x5005, "ARCH_SHSTK_STATUS"), XEND,
};

const struct kbox_xlat kbox_xl_rlimit[] = {
    X(RLIMIT_CPU), X(RLIMIT_FSIZE), X(RLIMIT_DATA), X(RLIMIT_STACK), X(RLIMIT_CORE),
    X(RLIMIT_RSS), X(RLIMIT_NPROC), X(RLIMIT_NOFILE), X(RLIMIT_MEMLOCK), X(RLIMIT_AS),
    X(RLIMIT_LOCKS), X(RLIMIT_SIGPENDING), X(RLIMIT_MSGQUEUE), X(RLIMIT_NICE),
    X(RLIMIT_RTPRIO), X(RLIMIT_RTTIME), XEND,
};

const struct kbox_xlat kbox_xl_clock[] = {
    X(CLOCK_REALTIME), X(CLOCK_MONOTONIC), X(CLOCK_PROCESS_CPUTIME_ID),
    X(CLOCK_THREAD_CPUTIME_ID), X(CLOCK_MONOTONIC_RAW), X(CLOCK_REALTIME_COARSE),
    X(CLOCK_MONOTONIC_COARSE), X(CLOCK_BOOTTIME), X(CLOCK_REALTIME_ALARM),
    X(CLOCK_BOOTTIME_ALARM), X(CLOCK_TAI), XEND,
};

const struct kbox_xlat kbox_xl_epoll_op[] = {
    X(EPOLL_CTL_ADD), X(EPOLL_CTL_DEL), X(EPOLL_CTL_MOD), XEND,
};

const struct kbox_xlat kbox_xl_madv[] = {
    X(MADV_NORMAL), X(MADV_RANDOM), X(MADV_SEQUENTIAL), X(MADV_WILLNEED), X(MADV_DONTNEED),
    X(MADV_FREE), X(MADV_REMOVE), X(MADV_DONTFORK), X(MADV_DOFORK), X(MADV_MERGEABLE),
    X(MADV_UNMERGEABLE), X(MADV_HUGEPAGE), X(MADV_NOHUGEPAGE), X(MADV_DONTDUMP),
    X(MADV_DODUMP), X(MADV_WIPEONFORK), X(MADV_KEEPONFORK), X(MADV_COLD), X(MADV_PAGEOUT),
    X(MADV_POPULATE_READ), X(MADV_POPULATE_WRITE), X(MADV_DONTNEED_LOCKED),
    X(MADV_COLLAPSE), X(MADV_HWPOISON), X(MADV_SOFT_OFFLINE), XEND,
};

const struct kbox_xlat kbox_xl_poll_events[] = {
    X(POLLIN), X(POLLPRI), X(POLLOUT), X(POLLERR), X(POLLHUP), X(POLLNVAL), X(POLLRDNORM),
    X(POLLRDBAND), X(POLLWRNORM), X(POLLWRBAND), X(POLLMSG), X(POLLRDHUP), XEND,
};

const struct kbox_xlat kbox_xl_sigprocmask_how[] = {
    X(SIG_BLOCK), X(SIG_UNBLOCK), X(SIG_SETMASK), XEND,
};

const struct kbox_xlat kbox_xl_sa_flags[] = {
    X(SA_NOCLDSTOP), X(SA_NOCLDWAIT), X(SA_SIGINFO), XN(0x400, "SA_UNSUPPORTED"),
    XN(0x800, "SA_EXPOSE_TAGBITS"), X(SA_RESTORER), X(SA_ONSTACK), X(SA_RESTART),
    X(SA_NODEFER), X(SA_RESETHAND), XEND,
};

const struct kbox_xlat kbox_xl_file_type[] = {
    X(S_IFREG), X(S_IFDIR), X(S_IFCHR), X(S_IFBLK), X(S_IFIFO), X(S_IFLNK), X(S_IFSOCK), XEND,
};
