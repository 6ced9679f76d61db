/* kbox-bench: per-syscall cost, run natively and under each kbox tier by `kbox bench`.
 *
 * An ordinary libc program (it is the guest, not part of the runtime).  Rows follow the
 * seed benchmark (stat, open+close, lseek+read, write to /dev/null, getpid) plus the
 * lazypoline microbenchmark: a non-existent syscall (number 500) in a tight loop, which
 * measures pure interposition cost with no kernel work behind it.
 *
 * Timing uses clock_gettime(CLOCK_MONOTONIC), served by the vDSO without a system call, so
 * the clock itself is not interposed.  Each row runs one untimed warm-up pass (lazy
 * rewriting patches a site on first use; caches warm up), then `repeats` timed passes of
 * `iterations` calls, and reports the best pass: noise only ever adds time.  Every call's
 * result is checked; a failing call aborts the run instead of timing an error path.
 *
 * --max-seconds S bounds the time one row may take: the warm-up pass doubles its length
 * until it has run long enough to estimate the cost of a call, and the timed passes then
 * use fewer calls if `repeats` passes of `iterations` would exceed S; a pass that still
 * runs past S stops there (the clock is read between chunks of calls).  A call can cost
 * milliseconds (a notified call under emulation waiting for its supervisor's vCPU), and a
 * benchmark that takes minutes for one cell is not run.  The calls actually timed are
 * reported.
 *
 *   kbox-bench [--iterations N] [--repeats R] [--max-seconds S] [--rows a,b,...] [--json]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <ucontext.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* A number no Linux architecture assigns (x86_64 and aarch64 tables end well below). */
#define NONEXISTENT_SYSCALL 500

static char file_path[4096];
static int read_fd = -1, null_fd = -1;

static void die(const char *row, const char *what)
{
    fprintf(stderr, "kbox-bench: %s: %s failed: %s\n", row, what, strerror(errno));
    exit(1);
}

static void row_stat(long n)
{
    struct stat st;
    for (long i = 0; i < n; i++)
        if (stat(file_path, &st) != 0)
            die("stat", "stat");
}

static void row_open_close(long n)
{
    for (long i = 0; i < n; i++) {
        int fd = open(file_path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            die("open+close", "open");
        if (close(fd) != 0)
            die("open+close", "close");
    }
}

static void row_lseek_read(long n)
{
    char buf[64];
    for (long i = 0; i < n; i++) {
        if (lseek(read_fd, 0, SEEK_SET) != 0)
            die("lseek+read", "lseek");
        if (read(read_fd, buf, sizeof buf) != (ssize_t)sizeof buf)
            die("lseek+read", "read");
    }
}

static void row_write(long n)
{
    static const char buf[64] = "kbox-bench";
    for (long i = 0; i < n; i++)
        if (write(null_fd, buf, sizeof buf) != (ssize_t)sizeof buf)
            die("write", "write");
}

static void row_getpid(long n)
{
    /* The raw system call: no libc caching of the pid, whatever the libc version. */
    for (long i = 0; i < n; i++)
        if (syscall(SYS_getpid) <= 0)
            die("getpid", "getpid");
}

static void row_syscall500(long n)
{
    for (long i = 0; i < n; i++)
        if (syscall(NONEXISTENT_SYSCALL) != -1 || errno != ENOSYS)
            die("syscall500", "syscall(500) returning ENOSYS");
}

struct row {
    const char *name;
    void (*fn)(long);
};

static const struct row rows[] = {
    {"stat", row_stat},
    {"open+close", row_open_close},
    {"lseek+read", row_lseek_read},
    {"write", row_write},
    {"getpid", row_getpid},
    {"syscall500", row_syscall500},
};
#define NROWS (sizeof rows / sizeof rows[0])

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

/* Warm up, then time `repeats` passes; returns the calls in the best timed pass, *best =
 * its ns/call.  With a bound, passes are sized from the warm-up's estimate and also run in
 * chunks with the clock read between them, because the cost of a call can change by 100x
 * within a run (a notified call that finds its supervisor awake, or has to wake it): a pass
 * stops at the bound and counts the calls it made.  One pass always runs to at least one
 * chunk, so every row reports a figure. */
static long measure(void (*fn)(long), long iterations, long repeats, double max_seconds,
                    double *best)
{
    double budget = max_seconds > 0 ? max_seconds * 1e9 : 0, row_start = now_ns();
    long warm = iterations / 10 + 1, done = 0;
    double spent = 0;
    for (long n = 1; done < warm; n *= 2) {
        if (n > warm - done)
            n = warm - done;
        fn(n);
        done += n;
        spent = now_ns() - row_start;
        if (budget > 0 && spent > budget / 10)
            break;
    }
    long per_pass = iterations;
    if (budget > 0) {
        double fit = budget / (double)repeats / (spent / (double)done);
        if (fit < (double)per_pass)
            per_pass = fit < 10 ? 10 : (long)fit;
    }
    long chunk = budget > 0 ? (per_pass + 15) / 16 : per_pass, best_calls = 0;
    *best = -1;
    for (long k = 0; k < repeats; k++) {
        double t = now_ns();
        long calls = 0;
        bool over = false;
        while (calls < per_pass && !over) {
            long n = per_pass - calls < chunk ? per_pass - calls : chunk;
            fn(n);
            calls += n;
            over = budget > 0 && now_ns() - row_start > budget;
        }
        double ns = (now_ns() - t) / (double)calls;
        if (*best < 0 || ns < *best) {
            *best = ns;
            best_calls = calls;
        }
        if (over)
            break;
    }
    return best_calls;
}

static int selected(const char *list, const char *name)
{
    if (!list)
        return 1;
    size_t len = strlen(name);
    for (const char *p = list; p && *p;) {
        const char *end = strchr(p, ',');
        size_t l = end ? (size_t)(end - p) : strlen(p);
        if (l == len && strncmp(p, name, len) == 0)
            return 1;
        p = end ? end + 1 : NULL;
    }
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: kbox-bench [--iterations N] [--repeats R] [--max-seconds S] [--rows NAME,...] [--json]\n"
              "                  [--floor trap|notify|filter|sud]\nrows:");
    for (size_t i = 0; i < NROWS; i++)
        fprintf(f, " %s", rows[i].name);
    fprintf(f, "\n");
}

static void setup(void)
{
    const char *tmp = getenv("TMPDIR");
    if (!tmp || !*tmp)
        tmp = "/tmp";
    snprintf(file_path, sizeof file_path, "%s/kbox-bench-XXXXXX", tmp);
    int fd = mkstemp(file_path);
    if (fd < 0)
        die("setup", "mkstemp");
    char block[4096];
    memset(block, 'b', sizeof block);
    if (write(fd, block, sizeof block) != (ssize_t)sizeof block)
        die("setup", "write");
    read_fd = fd;
    null_fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (null_fd < 0)
        die("setup", "open /dev/null");
}

/* --floor: the bare mechanism a tier is built on, installed on this process, so kbox bench
 * can print the floor beside each tier from the same run.
 *   trap:   SECCOMP_RET_TRAP for syscall 500 and an empty SIGSYS handler returning -ENOSYS
 *   notify: SECCOMP_RET_USER_NOTIF for syscall 500 served by a bare RECV/SEND loop in a
 *           forked helper, with SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP when the kernel has it
 *   filter: a filter of the trap and rewrite tiers' shape (arch check, then the instruction
 *           pointer compared with a range) that allows every call: the price every syscall
 *           pays while the safety net is installed, interposer's own included
 *   sud:    Syscall User Dispatch armed with its selector on ALLOW, so every call takes the
 *           kernel's dispatch check and goes on: the other safety net's price */
#ifndef SECCOMP_IOCTL_NOTIF_SET_FLAGS
#define SECCOMP_IOCTL_NOTIF_SET_FLAGS SECCOMP_IOW(4, __u64)
#endif

static void floor_sigsys(int sig, siginfo_t *si, void *ctx)
{
    ucontext_t *uc = ctx;
    (void)sig, (void)si;
#if defined(__x86_64__)
    uc->uc_mcontext.gregs[REG_RAX] = -ENOSYS;
#elif defined(__aarch64__)
    uc->uc_mcontext.regs[0] = (unsigned long)-ENOSYS;
#endif
}

static pid_t floor_helper;

static int install_filter_floor(void)
{
    /* Both outcomes of every comparison lead to ALLOW, so the kernel runs all of it: it
     * cannot precompute the result, because the program reads instruction_pointer. */
    enum { IP = offsetof(struct seccomp_data, instruction_pointer) };
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 0),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, IP + 4),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0x30, 0, 0),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, IP),
        BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x2000, 0, 0),
        BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x1000, 0, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { sizeof f / sizeof f[0], f };
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return -1;
    return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) == 0 ? 0 : -1;
}

#ifndef PR_SET_SYSCALL_USER_DISPATCH
#define PR_SET_SYSCALL_USER_DISPATCH 59
#define PR_SYS_DISPATCH_ON 1
#endif
static volatile char sud_selector; /* 0: SYSCALL_DISPATCH_FILTER_ALLOW */

static int install_floor(const char *kind)
{
    if (strcmp(kind, "filter") == 0)
        return install_filter_floor();
    if (strcmp(kind, "sud") == 0) /* empty allowed range: the selector is read on every call */
        return prctl(PR_SET_SYSCALL_USER_DISPATCH, PR_SYS_DISPATCH_ON, 0, 0, &sud_selector);
    int notify = strcmp(kind, "notify") == 0;
    if (!notify && strcmp(kind, "trap") != 0)
        return -1;
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 500, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, notify ? SECCOMP_RET_USER_NOTIF : SECCOMP_RET_TRAP),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { 4, f };
    if (!notify) {
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_sigaction = floor_sigsys;
        sa.sa_flags = SA_SIGINFO | SA_NODEFER;
        sigaction(SIGSYS, &sa, NULL);
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return -1;
    long fd = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
                      notify ? SECCOMP_FILTER_FLAG_NEW_LISTENER : 0, &prog);
    if (fd < 0)
        return -1;
    if (!notify)
        return 0;
    floor_helper = fork();
    if (floor_helper < 0)
        return -1;
    if (floor_helper == 0) {
        ioctl((int)fd, SECCOMP_IOCTL_NOTIF_SET_FLAGS, 1UL); /* refused before Linux 6.6 */
        for (;;) {
            struct seccomp_notif req;
            struct seccomp_notif_resp resp;
            memset(&req, 0, sizeof(req));
            if (ioctl((int)fd, SECCOMP_IOCTL_NOTIF_RECV, &req) != 0) {
                if (errno == EINTR || errno == ENOENT)
                    continue;
                _exit(0);
            }
            memset(&resp, 0, sizeof(resp));
            resp.id = req.id;
            resp.error = -ENOSYS;
            ioctl((int)fd, SECCOMP_IOCTL_NOTIF_SEND, &resp);
        }
    }
    close((int)fd);
    return 0;
}

int main(int argc, char **argv)
{
    const char *floor_kind = NULL;
    long iterations = 20000, repeats = 5;
    double max_seconds = 0; /* 0: no bound */
    int json = 0;
    const char *only = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = NULL;
        if ((strcmp(a, "--iterations") == 0 || strcmp(a, "--repeats") == 0 || strcmp(a, "--rows") == 0 ||
             strcmp(a, "--floor") == 0 || strcmp(a, "--max-seconds") == 0) && i + 1 < argc)
            val = argv[++i];
        else if (strncmp(a, "--iterations=", 13) == 0)
            val = a + 13, a = "--iterations";
        else if (strncmp(a, "--repeats=", 10) == 0)
            val = a + 10, a = "--repeats";
        else if (strncmp(a, "--max-seconds=", 14) == 0)
            val = a + 14, a = "--max-seconds";
        else if (strncmp(a, "--rows=", 7) == 0)
            val = a + 7, a = "--rows";
        if (strcmp(a, "--json") == 0) {
            json = 1;
        } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (val && strcmp(a, "--iterations") == 0) {
            iterations = strtol(val, NULL, 10);
        } else if (val && strcmp(a, "--repeats") == 0) {
            repeats = strtol(val, NULL, 10);
        } else if (val && strcmp(a, "--max-seconds") == 0) {
            char *end;
            max_seconds = strtod(val, &end);
            if (*end || max_seconds <= 0) {
                fprintf(stderr, "kbox-bench: --max-seconds needs a positive number, not %s\n", val);
                return 2;
            }
        } else if (val && strcmp(a, "--rows") == 0) {
            only = val;
        } else if (val && strcmp(a, "--floor") == 0) {
            floor_kind = val;
        } else {
            fprintf(stderr, "kbox-bench: unknown argument: %s\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (floor_kind && install_floor(floor_kind) != 0) {
        fprintf(stderr, "kbox-bench: cannot install --floor %s: %s\n", floor_kind, strerror(errno));
        return 2;
    }
    if (iterations <= 0 || repeats <= 0) {
        fprintf(stderr, "kbox-bench: --iterations and --repeats must be positive\n");
        return 2;
    }
    for (const char *p = only; p && *p;) {
        const char *end = strchr(p, ',');
        size_t l = end ? (size_t)(end - p) : strlen(p);
        int known = 0;
        for (size_t i = 0; i < NROWS; i++)
            known |= strlen(rows[i].name) == l && strncmp(rows[i].name, p, l) == 0;
        if (!known) {
            fprintf(stderr, "kbox-bench: unknown row: %.*s\n", (int)l, p);
            usage(stderr);
            return 2;
        }
        p = end ? end + 1 : NULL;
    }

    setup();
    double best[NROWS];
    long calls[NROWS];
    for (size_t r = 0; r < NROWS; r++) {
        if (!selected(only, rows[r].name))
            continue;
        calls[r] = measure(rows[r].fn, iterations, repeats, max_seconds, &best[r]);
    }
    unlink(file_path);

    if (json)
        printf("{\"iterations\": %ld, \"repeats\": %ld, \"max_seconds\": %g, \"rows\": [",
               iterations, repeats, max_seconds);
    int first = 1;
    for (size_t r = 0; r < NROWS; r++) {
        if (!selected(only, rows[r].name))
            continue;
        if (json)
            printf("%s{\"name\": \"%s\", \"ns_per_call\": %.1f, \"calls\": %ld}", first ? "" : ", ",
                   rows[r].name, best[r], calls[r]);
        else
            printf("%-12s %10.1f ns/call  (%ld calls per pass)\n", rows[r].name, best[r], calls[r]);
        first = 0;
    }
    if (json)
        printf("]}\n");
    if (floor_helper > 0) {
        kill(floor_helper, SIGKILL);
        waitpid(floor_helper, NULL, 0);
    }
    return 0;
}
