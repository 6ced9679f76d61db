/* fork and execve: exit codes and signal deaths through waitpid/waitid/wait4, WNOHANG, an
 * execve of this program with arguments and environment, a chain of 3 execs that ends in a
 * chosen exit code, close-on-exec across execve, and execve failures (ENOENT, EACCES).
 * The program re-executes itself (argv[0], or its PATH match when run by name). */
#include "guest.h"
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>

static char *self;

static void describe(const char *what, int status)
{
    if (WIFEXITED(status))
        printf("%s: exited %d\n", what, WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        printf("%s: killed by signal %d\n", what, WTERMSIG(status));
    else
        printf("%s: other status\n", what);
}

static int chain(int argc, char **argv)
{
    int n = atoi(argv[2]);
    printf("chain %d: argc %d, env KBOX_CHAIN=%s\n", n, argc, getenv("KBOX_CHAIN") ? getenv("KBOX_CHAIN") : "(unset)");
    if (n <= 1)
        return 42;
    char next[16];
    snprintf(next, sizeof next, "%d", n - 1);
    char *args[] = {self, "chain", next, NULL};
    char *env[] = {"KBOX_CHAIN=set-by-exec", NULL};
    execve(self, args, env);
    printf("FAIL execve in chain: %s\n", errname(errno));
    return 1;
}

static int fds(char **argv)
{
    int keep = atoi(argv[2]), gone = atoi(argv[3]);
    SHOW("after exec, the inherited fd", fcntl(keep, F_GETFD));
    SHOW("after exec, the O_CLOEXEC fd", fcntl(gone, F_GETFD));
    char buf[8] = {0};
    CHECK(read(keep, buf, 5) == 5);
    printf("after exec, read from inherited pipe: %s\n", buf);
    return 0;
}

int main(int argc, char **argv)
{
    guest_init();
    self = (char *)guest_self(argv[0]);
    if (argc >= 3 && strcmp(argv[1], "chain") == 0)
        return chain(argc, argv);
    if (argc >= 4 && strcmp(argv[1], "fds") == 0)
        return fds(argv);

    int status;
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0)
        _exit(7);
    CHECK(waitpid(pid, &status, 0) == pid);
    describe("fork child", status);

    pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        raise(SIGKILL);
        _exit(99);
    }
    CHECK(waitpid(pid, &status, 0) == pid);
    describe("child raising SIGKILL", status);

    /* WNOHANG while the child is still blocked, then waitid and wait4. */
    int p[2];
    CHECK(pipe(p) == 0);
    pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        char c;
        close(p[1]);
        _exit(read(p[0], &c, 1) == 0 ? 3 : 4);
    }
    close(p[0]);
    printf("WNOHANG on a running child: %d\n", waitpid(pid, &status, WNOHANG));
    close(p[1]);
    siginfo_t si = {0};
    CHECK(waitid(P_PID, pid, &si, WEXITED | WNOWAIT) == 0);
    printf("waitid: pid matches %s, CLD_EXITED %s, status %d\n", yesno(si.si_pid == pid), yesno(si.si_code == CLD_EXITED), si.si_status);
    struct rusage ru;
    CHECK(wait4(pid, &status, 0, &ru) == pid);
    describe("wait4 after WNOWAIT", status);
    SHOW("wait with no children left", wait(&status));

    /* execve of this program, then two more execs; the last one exits 42. */
    pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        char *args[] = {self, "chain", "3", NULL};
        char *env[] = {"KBOX_CHAIN=first", NULL};
        execve(self, args, env);
        _exit(120);
    }
    CHECK(waitpid(pid, &status, 0) == pid);
    describe("exec chain", status);

    /* close-on-exec across execve. */
    int keep[2];
    CHECK(pipe(keep) == 0);
    int gone = open("/dev/null", O_RDONLY | O_CLOEXEC);
    CHECK(gone >= 0);
    CHECK(write(keep[1], "piped", 5) == 5);
    pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        char a[16], b[16];
        snprintf(a, sizeof a, "%d", keep[0]);
        snprintf(b, sizeof b, "%d", gone);
        char *args[] = {self, "fds", a, b, NULL};
        execv(self, args);
        _exit(121);
    }
    CHECK(waitpid(pid, &status, 0) == pid);
    describe("exec with fds", status);
    close(keep[0]);
    close(keep[1]);
    close(gone);

    /* execve failures return to the caller. */
    char *args[] = {"nope", NULL};
    SHOW("execve of a missing file", execve("/nonexistent/kbox-guest", args, environ));
    char *dir = guest_tmpdir("forkexec");
    char path[4200];
    snprintf(path, sizeof path, "%s/plain", dir);
    int fd = open(path, O_CREAT | O_WRONLY, 0644);
    CHECK(fd >= 0 && write(fd, "#!/bin/sh\n", 10) == 10);
    close(fd);
    SHOW("execve of a non-executable file", execve(path, args, environ));
    unlink(path);
    rmdir(dir);

    /* A grandchild's exit is reaped by its own parent, not by us. */
    pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        pid_t g = fork();
        if (g == 0)
            _exit(5);
        int st;
        if (waitpid(g, &st, 0) != g)
            _exit(100);
        _exit(WEXITSTATUS(st) + 10);
    }
    CHECK(waitpid(pid, &status, 0) == pid);
    describe("child reaping its own child", status);
    return 0;
}
