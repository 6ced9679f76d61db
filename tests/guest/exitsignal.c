/* Death by signal: a forked child killed by SIGTERM is reported as WTERMSIG 15, then the
 * program kills itself with SIGTERM (default action), so a shell or kbox reports 128+15. */
#include "guest.h"
#include <signal.h>
#include <sys/wait.h>

int main(int argc, char **argv)
{
    guest_init();
    int sig = argc > 1 ? atoi(argv[1]) : SIGTERM;
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        kill(getpid(), sig);
        _exit(0);
    }
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    printf("child: signaled %s, signal %d\n", yesno(WIFSIGNALED(status)), WIFSIGNALED(status) ? WTERMSIG(status) : -1);

    /* Make sure the default action applies even if the parent ignored the signal. */
    signal(sig, SIG_DFL);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, sig);
    sigprocmask(SIG_UNBLOCK, &set, NULL);
    printf("now killing myself with signal %d\n", sig);
    kill(getpid(), sig);
    printf("FAIL still alive after signal %d\n", sig);
    return 1;
}
