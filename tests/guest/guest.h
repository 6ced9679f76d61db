/* Shared helpers for the guest test programs.
 *
 * Every guest program must print the same bytes on every run, natively and under every kbox
 * tier: no pids, addresses, times or random names in the output, only the relations it
 * observed.  A failed expectation prints one FAIL line and exits 1, so a difference shows up
 * both in stdout and in the exit status.
 *
 * stdout is unbuffered: a buffered stdout would be duplicated into fork children and its
 * flushing order would depend on scheduling.
 */
#ifndef KBOX_GUEST_H
#define KBOX_GUEST_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* errno names, as glibc's strerrorname_np() spells them (that one is glibc-only and the
 * programs are also built against musl).  Aliases (EWOULDBLOCK, EDEADLOCK, ENOTSUP) share
 * a value with the name listed.  Linux's values are the same on both architectures. */
#define GUEST_ERRNOS(E_) \
    E_(EPERM) E_(ENOENT) E_(ESRCH) E_(EINTR) E_(EIO) E_(ENXIO) E_(E2BIG) E_(ENOEXEC) \
    E_(EBADF) E_(ECHILD) E_(EAGAIN) E_(ENOMEM) E_(EACCES) E_(EFAULT) E_(ENOTBLK) E_(EBUSY) \
    E_(EEXIST) E_(EXDEV) E_(ENODEV) E_(ENOTDIR) E_(EISDIR) E_(EINVAL) E_(ENFILE) E_(EMFILE) \
    E_(ENOTTY) E_(ETXTBSY) E_(EFBIG) E_(ENOSPC) E_(ESPIPE) E_(EROFS) E_(EMLINK) E_(EPIPE) \
    E_(EDOM) E_(ERANGE) E_(EDEADLK) E_(ENAMETOOLONG) E_(ENOLCK) E_(ENOSYS) E_(ENOTEMPTY) \
    E_(ELOOP) E_(ENOMSG) E_(EIDRM) E_(ECHRNG) E_(EL2NSYNC) E_(EL3HLT) E_(EL3RST) E_(ELNRNG) \
    E_(EUNATCH) E_(ENOCSI) E_(EL2HLT) E_(EBADE) E_(EBADR) E_(EXFULL) E_(ENOANO) E_(EBADRQC) \
    E_(EBADSLT) E_(EBFONT) E_(ENOSTR) E_(ENODATA) E_(ETIME) E_(ENOSR) E_(ENONET) E_(ENOPKG) \
    E_(EREMOTE) E_(ENOLINK) E_(EADV) E_(ESRMNT) E_(ECOMM) E_(EPROTO) E_(EMULTIHOP) \
    E_(EDOTDOT) E_(EBADMSG) E_(EOVERFLOW) E_(ENOTUNIQ) E_(EBADFD) E_(EREMCHG) E_(ELIBACC) \
    E_(ELIBBAD) E_(ELIBSCN) E_(ELIBMAX) E_(ELIBEXEC) E_(EILSEQ) E_(ERESTART) E_(ESTRPIPE) \
    E_(EUSERS) E_(ENOTSOCK) E_(EDESTADDRREQ) E_(EMSGSIZE) E_(EPROTOTYPE) E_(ENOPROTOOPT) \
    E_(EPROTONOSUPPORT) E_(ESOCKTNOSUPPORT) E_(EOPNOTSUPP) E_(EPFNOSUPPORT) E_(EAFNOSUPPORT) \
    E_(EADDRINUSE) E_(EADDRNOTAVAIL) E_(ENETDOWN) E_(ENETUNREACH) E_(ENETRESET) \
    E_(ECONNABORTED) E_(ECONNRESET) E_(ENOBUFS) E_(EISCONN) E_(ENOTCONN) E_(ESHUTDOWN) \
    E_(ETOOMANYREFS) E_(ETIMEDOUT) E_(ECONNREFUSED) E_(EHOSTDOWN) E_(EHOSTUNREACH) \
    E_(EALREADY) E_(EINPROGRESS) E_(ESTALE) E_(EUCLEAN) E_(ENOTNAM) E_(ENAVAIL) E_(EISNAM) \
    E_(EREMOTEIO) E_(EDQUOT) E_(ENOMEDIUM) E_(EMEDIUMTYPE) E_(ECANCELED) E_(ENOKEY) \
    E_(EKEYEXPIRED) E_(EKEYREVOKED) E_(EKEYREJECTED) E_(EOWNERDEAD) E_(ENOTRECOVERABLE) \
    E_(ERFKILL) E_(EHWPOISON)

static inline const char *errname(int e)
{
#define GUEST_ERRNO_CASE_(n) case n: return #n;
    switch (e) {
    GUEST_ERRNOS(GUEST_ERRNO_CASE_)
    default: return "?";
    }
#undef GUEST_ERRNO_CASE_
}

#define CHECK(cond)                                                                      \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            int e_ = errno;                                                              \
            printf("FAIL %s:%d: %s (errno %d %s)\n", __FILE__, __LINE__, #cond, e_,      \
                   errname(e_));                                                         \
            exit(1);                                                                     \
        }                                                                                \
    } while (0)

/* Evaluates `expr` once (a call returning -1 and setting errno on failure) and prints
 * "label: <result> <errno name or ok>"; the errno is captured before printf can change it. */
#define SHOW(label, expr)                                                                \
    do {                                                                                 \
        errno = 0;                                                                       \
        long r_ = (long)(expr);                                                          \
        int e_ = errno;                                                                  \
        printf("%s: %ld %s\n", (label), r_, r_ < 0 ? errname(e_) : "ok");               \
    } while (0)

static inline void guest_init(void)
{
    setvbuf(stdout, NULL, _IONBF, 0);
}

static inline const char *yesno(int v)
{
    return v ? "yes" : "no";
}

/* The path to execute this program again: argv[0] when it is a path, else its PATH match
 * (the VM tests run the programs by name).  /proc/self/exe is deliberately not used: it is
 * what an in-process loader must get right, not something these tests assume. */
static inline const char *guest_self(const char *argv0)
{
    static char found[4096];
    if (strchr(argv0, '/'))
        return argv0;
    const char *path = getenv("PATH");
    while (path && *path) {
        const char *end = strchr(path, ':');
        size_t len = end ? (size_t)(end - path) : strlen(path);
        snprintf(found, sizeof found, "%.*s/%s", (int)len, path, argv0);
        if (access(found, X_OK) == 0)
            return found;
        path = end ? end + 1 : NULL;
    }
    return argv0;
}

/* A private scratch directory under $TMPDIR (or /tmp).  Its name is random, so callers must
 * never print it; print paths relative to it instead. */
static inline char *guest_tmpdir(const char *tag)
{
    const char *base = getenv("TMPDIR");
    static char path[4096];
    if (!base || !*base)
        base = "/tmp";
    snprintf(path, sizeof path, "%s/kbox-guest-%s-XXXXXX", base, tag);
    CHECK(mkdtemp(path) != NULL);
    return path;
}

/* A watchdog for programs whose failure mode is a hang (a signal or a cancellation that
 * never arrives): a thread with every signal blocked sleeps until the current phase's
 * deadline and, if the phase is still running then, prints "FAIL watchdog: PHASE ..." and
 * ends the process with status 1.  It needs no signal delivery, only clock_nanosleep and
 * write.  guest_watchdog(name, seconds) starts it on first use and names the next phase;
 * guest_watchdog(NULL, 0) disarms it. */
struct guest_watchdog_state {
    pthread_mutex_t lock;
    int started;
    const char *phase;
    struct timespec deadline;
    int seconds;
};

static inline struct guest_watchdog_state *guest_watchdog_state(void)
{
    static struct guest_watchdog_state st = {.lock = PTHREAD_MUTEX_INITIALIZER};
    return &st;
}

static inline void *guest_watchdog_thread(void *arg)
{
    struct guest_watchdog_state *st = arg;
    for (;;) {
        pthread_mutex_lock(&st->lock);
        struct timespec until = st->deadline;
        const char *phase = st->phase;
        int seconds = st->seconds;
        pthread_mutex_unlock(&st->lock);
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (phase && (now.tv_sec > until.tv_sec ||
                      (now.tv_sec == until.tv_sec && now.tv_nsec >= until.tv_nsec))) {
            char msg[256];
            int n = snprintf(msg, sizeof msg, "FAIL watchdog: %s did not finish within %d s\n",
                             phase, seconds);
            if (write(1, msg, (size_t)n) < 0) {
            }
            _exit(1);
        }
        if (!phase) {          /* disarmed: look again in a second */
            until = now;
            until.tv_sec += 1;
        }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL);
    }
    return NULL;
}

static inline void guest_watchdog(const char *phase, int seconds)
{
    struct guest_watchdog_state *st = guest_watchdog_state();
    pthread_mutex_lock(&st->lock);
    st->phase = phase;
    st->seconds = seconds;
    clock_gettime(CLOCK_MONOTONIC, &st->deadline);
    st->deadline.tv_sec += seconds;
    int start = !st->started;
    st->started = 1;
    pthread_mutex_unlock(&st->lock);
    if (start) {
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);   /* inherited by the new thread */
        pthread_t t;
        int rc = pthread_create(&t, NULL, guest_watchdog_thread, st);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        errno = rc;
        CHECK(rc == 0);
        pthread_detach(t);
    }
}

#endif
