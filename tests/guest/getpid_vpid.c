/* Process identity relations that hold both natively and in a PID namespace view (kbox
 * --virtual-pid).  With --expect-vpid the program also prints its pid, which must be 1. */
#include "guest.h"
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>

static pid_t thread_tid, thread_pid;
static void *thread_fn(void *arg)
{
    thread_tid = syscall(SYS_gettid);
    thread_pid = getpid();
    return NULL;
}

static void *exit_at_once(void *arg)
{
    return arg;
}

int main(int argc, char **argv)
{
    guest_init();
    int expect_vpid = argc > 1 && strcmp(argv[1], "--expect-vpid") == 0;
    pid_t me = getpid();
    if (expect_vpid)
        printf("getpid: %d\n", me);
    printf("gettid==getpid in main thread: %s\n", yesno(syscall(SYS_gettid) == me));
    printf("getppid differs from getpid: %s\n", yesno(getppid() != me));
    printf("kill(getpid(), 0) == 0: %s\n", yesno(kill(me, 0) == 0));
    printf("tgkill(getpid(), gettid(), 0) == 0: %s\n", yesno(syscall(SYS_tgkill, me, syscall(SYS_gettid), 0) == 0));
    printf("getpgid(0) == getpgid(getpid()): %s\n", yesno(getpgid(0) == getpgid(me)));
    printf("getsid(0) == getsid(getpid()): %s\n", yesno(getsid(0) == getsid(me)));

    int p[2];
    CHECK(pipe(p) == 0);
    pid_t child = fork();
    CHECK(child >= 0);
    if (child == 0) {
        pid_t info[3] = {getpid(), getppid(), (pid_t)syscall(SYS_gettid)};
        CHECK(write(p[1], info, sizeof info) == sizeof info);
        _exit(0);
    }
    pid_t info[3];
    CHECK(read(p[0], info, sizeof info) == sizeof info);
    printf("fork child's getpid equals fork's result: %s\n", yesno(info[0] == child));
    printf("fork child's getppid equals parent's getpid: %s\n", yesno(info[1] == me));
    printf("fork child's gettid equals its getpid: %s\n", yesno(info[2] == info[0]));
    if (expect_vpid)
        printf("fork child's pid: %d\n", child);
    int status;
    printf("waitpid returns the fork result: %s\n", yesno(waitpid(child, &status, 0) == child));

    /* kill() addressed by the pid fork returned reaches the right process. */
    child = fork();
    CHECK(child >= 0);
    if (child == 0) {
        pause();
        _exit(0);
    }
    CHECK(kill(child, SIGTERM) == 0);
    CHECK(waitpid(child, &status, 0) == child);
    printf("kill(child, SIGTERM) killed it: %s\n", yesno(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM));
    siginfo_t si;
    child = fork();
    CHECK(child >= 0);
    if (child == 0)
        _exit(4);
    CHECK(waitid(P_PID, child, &si, WEXITED) == 0);
    printf("waitid si_pid equals the fork result: %s, status %d\n", yesno(si.si_pid == child), si.si_status);

    pthread_t t;
    CHECK(pthread_create(&t, NULL, thread_fn, NULL) == 0);
    CHECK(pthread_join(t, NULL) == 0);
    printf("thread: getpid is the process's %s, gettid differs %s\n", yesno(thread_pid == me), yesno(thread_tid != me));
    /* Threads that exit at once: the kernel clears each one's tid word (CLONE_CHILD_CLEARTID)
     * possibly before kbox has put the virtual tid there; pthread_join waits for that 0. */
    int joined = 0;
    for (int i = 0; i < 100; i++) {
        CHECK(pthread_create(&t, NULL, exit_at_once, NULL) == 0);
        joined += pthread_join(t, NULL) == 0;
    }
    printf("short-lived threads joined: %d\n", joined);
    printf("getpid stable: %s\n", yesno(getpid() == me));
    return 0;
}
