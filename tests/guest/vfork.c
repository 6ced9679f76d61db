/* vfork: the parent is suspended until the child calls _exit or execve, and the child
 * shares the parent's memory meanwhile; posix_spawn (glibc: clone CLONE_VM|CLONE_VFORK)
 * reports exec failures through that shared memory. */
#include "guest.h"
#include <spawn.h>
#include <sys/wait.h>

int main(int argc, char **argv)
{
    guest_init();
    if (argc > 1 && strcmp(argv[1], "exec") == 0) {
        printf("vfork+execve: the new image runs, argc %d\n", argc);
        return 17;
    }

    char *self = (char *)guest_self(argv[0]);
    static volatile int shared_var;
    int status;
    pid_t pid = vfork();
    CHECK(pid >= 0);
    if (pid == 0) {
        shared_var = 1234;
        _exit(9);
    }
    CHECK(waitpid(pid, &status, 0) == pid);
    printf("vfork+_exit: exit %d, child's write visible %s\n", WEXITSTATUS(status), yesno(shared_var == 1234));

    pid = vfork();
    CHECK(pid >= 0);
    if (pid == 0) {
        char *args[] = {self, "exec", "x", NULL};
        execv(self, args);
        _exit(127);
    }
    CHECK(waitpid(pid, &status, 0) == pid);
    printf("vfork+execve: exit %d\n", WEXITSTATUS(status));

    /* vfork child failing to exec. */
    pid = vfork();
    CHECK(pid >= 0);
    if (pid == 0) {
        char *args[] = {"missing", NULL};
        execv("/nonexistent/kbox", args);
        _exit(errno == ENOENT ? 33 : 34);
    }
    CHECK(waitpid(pid, &status, 0) == pid);
    printf("vfork+failed execve: exit %d\n", WEXITSTATUS(status));

    char *spawn_args[] = {self, "exec", NULL};
    pid_t sp;
    int rc = posix_spawn(&sp, self, NULL, NULL, spawn_args, environ);
    /* The spawned program prints concurrently with us: report only after reaping it. */
    CHECK(rc == 0 && waitpid(sp, &status, 0) == sp);
    printf("posix_spawn self: rc %d\n", rc);
    printf("posix_spawn self: exit %d\n", WEXITSTATUS(status));
    char *missing[] = {"missing", NULL};
    rc = posix_spawn(&sp, "/nonexistent/kbox", NULL, NULL, missing, environ);
    printf("posix_spawn missing: %s\n", rc ? errname(rc) : "ok");
    if (rc == 0)
        waitpid(sp, &status, 0);
    return 0;
}
