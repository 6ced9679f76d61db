/* Thread cancellation: pthread_cancel of a thread blocked in read() on an empty pipe (the
 * joiner gets PTHREAD_CANCELED, the cleanup handler runs); a cancel sent while cancellation
 * is disabled stays pending through cancellation points until the thread enables it and
 * calls pthread_testcancel; asynchronous cancellation of a thread spinning without system
 * calls.  Then, as in the reproducer, 200 files open at once and a fork whose child
 * exits 3.
 *
 * libc cancels a thread with a signal whose handler acts only when the thread is inside a
 * cancellable system call of libc's own (or anywhere, for the asynchronous type), so an
 * in-process tier that runs the system call elsewhere must still let that happen.  Every wait
 * is bounded: a join that times out prints FAIL, and the watchdog ends the program within
 * 10 s of a phase that hangs. */
#include "guest.h"
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>

#define JOIN_TIMEOUT_S 4
#define PHASE_TIMEOUT_S 10

static atomic_int cleanups;
static atomic_int ready;
static atomic_int tid_of_blocked;
static int empty_pipe[2], ctrl_pipe[2];

static void cleanup(void *arg)
{
    atomic_fetch_add(&cleanups, 1);
    *(int *)arg = 1;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* Joins with a deadline; a thread that does not end in time is a FAIL (exit 1). */
static void *join_or_fail(pthread_t t, const char *what)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += JOIN_TIMEOUT_S;
    void *ret = NULL;
    int rc = pthread_timedjoin_np(t, &ret, &until);
    if (rc != 0) {
        printf("FAIL %s: join %s after %d s\n", what, rc == ETIMEDOUT ? "timed out" : errname(rc),
               JOIN_TIMEOUT_S);
        exit(1);
    }
    return ret;
}

/* Waits until thread `tid` sleeps in the kernel (state S in /proc), for at most 2 s: the
 * cancel should find it blocked in read(), not on its way there.  Not printed. */
static void wait_until_sleeping(int tid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/self/task/%d/stat", tid);
    for (int i = 0; i < 200; i++) {
        int fd = open(path, O_RDONLY);
        ssize_t n = fd >= 0 ? read(fd, buf, sizeof buf - 1) : -1;
        if (fd >= 0)
            close(fd);
        if (n > 0) {
            buf[n] = 0;
            char *p = strrchr(buf, ')');
            if (p && p[1] == ' ' && p[2] == 'S')
                break;
        }
        sleep_ms(10);
    }
    sleep_ms(20);
}

/* 1: deferred cancellation of a thread blocked in read() on an empty pipe. */
static void *blocked_reader(void *arg)
{
    int *cleaned = arg;
    pthread_cleanup_push(cleanup, cleaned);
    atomic_store(&tid_of_blocked, (int)syscall(SYS_gettid));
    atomic_store(&ready, 1);
    char c;
    ssize_t n = read(empty_pipe[0], &c, 1);
    printf("FAIL blocked read returned %ld instead of being cancelled\n", (long)n);
    pthread_cleanup_pop(0);
    return (void *)1;
}

/* 2: cancellation disabled: the cancel stays pending through read() and write(), both
 * cancellation points, until the thread enables it and calls pthread_testcancel(). */
static atomic_int disabled_read, disabled_write, enable_old_state, past_testcancel;
static void *disabled_thread(void *arg)
{
    int *cleaned = arg;
    int old;
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &old);
    pthread_cleanup_push(cleanup, cleaned);
    atomic_store(&ready, 1);
    char c;
    /* The main thread cancels, then writes one byte here. */
    atomic_store(&disabled_read, (int)read(ctrl_pipe[0], &c, 1));
    int fd = open("/dev/null", O_WRONLY);
    atomic_store(&disabled_write, fd >= 0 ? (int)write(fd, "x", 1) : -1);
    if (fd >= 0)
        close(fd);
    pthread_setcancelstate(PTHREAD_CANCEL_ENABLE, &old);
    atomic_store(&enable_old_state, old == PTHREAD_CANCEL_DISABLE);
    pthread_testcancel();
    atomic_store(&past_testcancel, 1);
    pthread_cleanup_pop(0);
    return (void *)2;
}

/* 3: asynchronous cancellation of a thread spinning in a loop without system calls. */
static atomic_long spins;
static void *spinner(void *arg)
{
    int *cleaned = arg;
    int old;
    pthread_cleanup_push(cleanup, cleaned);
    pthread_setcanceltype(PTHREAD_CANCEL_ASYNCHRONOUS, &old);
    for (;;)
        atomic_fetch_add_explicit(&spins, 1, memory_order_relaxed);
    pthread_cleanup_pop(0);
    return (void *)3;
}

static void wait_ready(const char *what)
{
    for (int i = 0; i < JOIN_TIMEOUT_S * 1000 && !atomic_load(&ready); i++)
        sleep_ms(1);
    if (!atomic_load(&ready)) {
        printf("FAIL %s: the thread did not start within %d s\n", what, JOIN_TIMEOUT_S);
        exit(1);
    }
    atomic_store(&ready, 0);
}

int main(void)
{
    guest_init();
    CHECK(pipe(empty_pipe) == 0);
    CHECK(pipe(ctrl_pipe) == 0);
    pthread_t t;
    void *ret;

    guest_watchdog("cancel of a blocked read", PHASE_TIMEOUT_S);
    int cleaned1 = 0;
    CHECK(pthread_create(&t, NULL, blocked_reader, &cleaned1) == 0);
    wait_ready("blocked read");
    wait_until_sleeping(atomic_load(&tid_of_blocked));
    CHECK(pthread_cancel(t) == 0);
    ret = join_or_fail(t, "cancel of a blocked read");
    printf("blocked read: joined PTHREAD_CANCELED %s, cleanup ran %s\n",
           yesno(ret == PTHREAD_CANCELED), yesno(cleaned1));
    CHECK(ret == PTHREAD_CANCELED && cleaned1);
    /* The pipe still works after its reader was cancelled. */
    char c = 0;
    CHECK(write(empty_pipe[1], "p", 1) == 1 && read(empty_pipe[0], &c, 1) == 1);
    printf("pipe after the cancel: read back '%c'\n", c);

    guest_watchdog("cancel while disabled", PHASE_TIMEOUT_S);
    int cleaned2 = 0;
    CHECK(pthread_create(&t, NULL, disabled_thread, &cleaned2) == 0);
    wait_ready("cancel while disabled");
    CHECK(pthread_cancel(t) == 0);
    CHECK(write(ctrl_pipe[1], "c", 1) == 1);
    ret = join_or_fail(t, "cancel while disabled");
    printf("disabled: read %d and write %d went through the pending cancel, enable saw DISABLE %s, "
           "acted at testcancel %s\n", atomic_load(&disabled_read), atomic_load(&disabled_write),
           yesno(atomic_load(&enable_old_state)), yesno(!atomic_load(&past_testcancel)));
    printf("disabled: joined PTHREAD_CANCELED %s, cleanup ran %s\n",
           yesno(ret == PTHREAD_CANCELED), yesno(cleaned2));
    CHECK(ret == PTHREAD_CANCELED && cleaned2 && atomic_load(&disabled_read) == 1 &&
          atomic_load(&disabled_write) == 1 && atomic_load(&enable_old_state) &&
          !atomic_load(&past_testcancel));

    guest_watchdog("asynchronous cancel", PHASE_TIMEOUT_S);
    int cleaned3 = 0;
    CHECK(pthread_create(&t, NULL, spinner, &cleaned3) == 0);
    for (int i = 0; i < JOIN_TIMEOUT_S * 1000 && atomic_load(&spins) < 1000; i++)
        sleep_ms(1);
    CHECK(atomic_load(&spins) >= 1000);
    CHECK(pthread_cancel(t) == 0);
    ret = join_or_fail(t, "asynchronous cancel");
    long after = atomic_load(&spins);
    sleep_ms(20);
    printf("asynchronous: joined PTHREAD_CANCELED %s, cleanup ran %s, stopped spinning %s\n",
           yesno(ret == PTHREAD_CANCELED), yesno(cleaned3), yesno(atomic_load(&spins) == after));
    CHECK(ret == PTHREAD_CANCELED && cleaned3);
    printf("cleanup handlers run in all: %d\n", atomic_load(&cleanups));

    guest_watchdog("200 open files", PHASE_TIMEOUT_S);
    char *dir = guest_tmpdir("cancel");
    char path[4200];
    snprintf(path, sizeof path, "%s/f", dir);
    int fds[200], opened = 0, distinct = 1;
    for (int i = 0; i < 200; i++) {
        fds[i] = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (fds[i] >= 0)
            opened++;
        for (int j = 0; j < i; j++)
            if (fds[j] == fds[i])
                distinct = 0;
    }
    printf("open 200 times: %d opened, all descriptors distinct %s\n", opened, yesno(distinct));
    int closed = 0;
    for (int i = 0; i < 200; i++)
        closed += fds[i] >= 0 && close(fds[i]) == 0;
    printf("closed: %d\n", closed);
    CHECK(opened == 200 && distinct && closed == 200);
    CHECK(unlink(path) == 0 && rmdir(dir) == 0);

    guest_watchdog("fork", PHASE_TIMEOUT_S);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0)
        _exit(3);
    int status = 0;
    pid_t got = 0;
    for (int i = 0; i < JOIN_TIMEOUT_S * 1000 && got == 0; i++) {
        got = waitpid(pid, &status, WNOHANG);
        if (got == 0)
            sleep_ms(1);
    }
    if (got != pid) {
        printf("FAIL fork: child not reaped within %d s (waitpid %d %s)\n", JOIN_TIMEOUT_S,
               (int)got, got < 0 ? errname(errno) : "");
        return 1;
    }
    printf("fork: child exited %s, status %d\n", yesno(WIFEXITED(status)), WEXITSTATUS(status));
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 3);
    guest_watchdog(NULL, 0);
    return 0;
}
