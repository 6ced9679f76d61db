/* Pipes: pipe2 with flags, parent -> child -> parent through two pipes, EOF on close, EPIPE
 * with SIGPIPE ignored, O_NONBLOCK EAGAIN, and a large transfer bigger than the pipe buffer. */
#include "guest.h"
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>

int main(void)
{
    guest_init();
    int up[2], down[2];
    CHECK(pipe2(up, O_CLOEXEC) == 0);
    CHECK(pipe2(down, 0) == 0);
    printf("pipe2 O_CLOEXEC sets cloexec: %s\n", yesno(fcntl(up[0], F_GETFD) & FD_CLOEXEC));

    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        close(down[1]);
        close(up[0]);
        char buf[128];
        ssize_t n, total = 0;
        /* Echo uppercased until EOF. */
        while ((n = read(down[0], buf, sizeof buf)) > 0) {
            for (ssize_t i = 0; i < n; i++)
                if (buf[i] >= 'a' && buf[i] <= 'z')
                    buf[i] -= 32;
            if (write(up[1], buf, n) != n)
                _exit(3);
            total += n;
        }
        _exit(n == 0 && total == 12 ? 0 : 4);
    }
    close(down[0]);
    close(up[1]);
    CHECK(write(down[1], "hello ", 6) == 6);
    CHECK(write(down[1], "pipes\n", 6) == 6);
    close(down[1]);
    char buf[64] = {0};
    size_t got = 0;
    ssize_t n;
    while ((n = read(up[0], buf + got, sizeof buf - 1 - got)) > 0)
        got += n;
    printf("child echoed: %s", buf);
    printf("EOF after child closed: %s\n", yesno(n == 0));
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    printf("child exit: %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    close(up[0]);

    /* Writing to a pipe without readers: EPIPE once SIGPIPE is ignored. */
    int p[2];
    CHECK(pipe(p) == 0);
    close(p[0]);
    signal(SIGPIPE, SIG_IGN);
    SHOW("write without reader", write(p[1], "x", 1));
    close(p[1]);

    /* Non-blocking read on an empty pipe. */
    CHECK(pipe2(p, O_NONBLOCK) == 0);
    SHOW("nonblocking empty read", read(p[0], buf, 1));

    /* 1 MiB through a pipe: the writer must block and be woken many times. */
    pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        CHECK(fcntl(p[1], F_SETFL, 0) == 0);
        static char chunk[4096];
        for (int i = 0; i < 256; i++) {
            memset(chunk, 'a' + i % 26, sizeof chunk);
            size_t off = 0;
            while (off < sizeof chunk) {
                ssize_t w = write(p[1], chunk + off, sizeof chunk - off);
                if (w <= 0)
                    _exit(5);
                off += w;
            }
        }
        _exit(0);
    }
    close(p[1]);
    CHECK(fcntl(p[0], F_SETFL, 0) == 0);
    unsigned long sum = 0, total = 0;
    static char big[65536];
    while ((n = read(p[0], big, sizeof big)) > 0) {
        for (ssize_t i = 0; i < n; i++)
            sum += (unsigned char)big[i];
        total += n;
    }
    CHECK(waitpid(pid, &status, 0) == pid);
    printf("bulk transfer: %lu bytes, checksum %lu, child exit %d\n", total, sum, WEXITSTATUS(status));
    close(p[0]);
    return 0;
}
