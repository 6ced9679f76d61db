/* AF_UNIX sockets: socketpair stream and seqpacket, send/recv, sendmsg/recvmsg with an fd
 * passed by SCM_RIGHTS, SO_PEERCRED relations, shutdown, and a named listening socket with
 * accept4/connect between parent and child. */
#include "guest.h"
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

static int send_fd(int sock, int fd)
{
    char byte = 'F';
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(int))];
    } u;
    memset(&u, 0, sizeof u);
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf};
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
    return sendmsg(sock, &msg, 0);
}

static int recv_fd(int sock)
{
    char byte;
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(int))];
    } u;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf};
    if (recvmsg(sock, &msg, MSG_CMSG_CLOEXEC) != 1)
        return -1;
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    if (!c || c->cmsg_type != SCM_RIGHTS)
        return -1;
    int fd;
    memcpy(&fd, CMSG_DATA(c), sizeof fd);
    return fd;
}

int main(void)
{
    guest_init();
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    CHECK(send(sv[0], "ping", 4, 0) == 4);
    char buf[64] = {0};
    printf("stream recv: %zd \"%s\"\n", recv(sv[1], buf, sizeof buf, 0), buf);

    struct ucred cred;
    socklen_t len = sizeof cred;
    CHECK(getsockopt(sv[1], SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0);
    printf("SO_PEERCRED pid is ours %s, uid ours %s\n", yesno(cred.pid == getpid()), yesno(cred.uid == getuid()));

    /* Pass a file descriptor from a child to the parent. */
    char *dir = guest_tmpdir("sockets");
    char path[4200];
    snprintf(path, sizeof path, "%s/passed", dir);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        int fd = open(path, O_CREAT | O_RDWR | O_TRUNC, 0600);
        if (fd < 0 || write(fd, "passed by SCM_RIGHTS", 20) != 20 || send_fd(sv[0], fd) != 1)
            _exit(1);
        _exit(0);
    }
    int got = recv_fd(sv[1]);
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(got >= 0);
    memset(buf, 0, sizeof buf);
    CHECK(pread(got, buf, 20, 0) == 20);
    printf("fd received: \"%s\", cloexec %s, child exit %d\n", buf, yesno(fcntl(got, F_GETFD) & FD_CLOEXEC), WEXITSTATUS(status));
    close(got);
    unlink(path);

    CHECK(shutdown(sv[0], SHUT_WR) == 0);
    printf("recv after peer shutdown: %zd\n", recv(sv[1], buf, sizeof buf, 0));
    close(sv[0]);
    close(sv[1]);

    /* SOCK_SEQPACKET keeps message boundaries. */
    CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) == 0);
    CHECK(send(sv[0], "one", 3, 0) == 3);
    CHECK(send(sv[0], "two!", 4, 0) == 4);
    ssize_t n1 = recv(sv[1], buf, sizeof buf, 0);
    ssize_t n2 = recv(sv[1], buf, sizeof buf, 0);
    printf("seqpacket boundaries: %zd then %zd\n", n1, n2);
    close(sv[0]);
    close(sv[1]);

    /* A listening socket (abstract name, so a long $TMPDIR cannot overflow sun_path; the pid
     * keeps concurrent runs apart and is never printed): the child connects, the parent
     * accepts. */
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path + 1, sizeof addr.sun_path - 1, "kbox-guest-sockets-%d", (int)getpid());
    int ls = socket(AF_UNIX, SOCK_STREAM, 0);
    CHECK(ls >= 0);
    CHECK(bind(ls, (struct sockaddr *)&addr, sizeof addr) == 0);
    CHECK(listen(ls, 4) == 0);
    pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        int c = socket(AF_UNIX, SOCK_STREAM, 0);
        if (c < 0 || connect(c, (struct sockaddr *)&addr, sizeof addr) != 0)
            _exit(1);
        if (write(c, "hello listener", 14) != 14)
            _exit(2);
        char r[8] = {0};
        if (read(c, r, 3) != 3 || strcmp(r, "ack") != 0)
            _exit(3);
        _exit(0);
    }
    int a = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
    CHECK(a >= 0);
    memset(buf, 0, sizeof buf);
    CHECK(read(a, buf, 14) == 14);
    CHECK(write(a, "ack", 3) == 3);
    CHECK(waitpid(pid, &status, 0) == pid);
    printf("accepted: \"%s\", client exit %d\n", buf, WEXITSTATUS(status));
    close(a);
    close(ls);
    SHOW("connect to a missing socket path", ({
        int c = socket(AF_UNIX, SOCK_STREAM, 0);
        struct sockaddr_un m = {.sun_family = AF_UNIX, .sun_path = "/nonexistent/kbox.sock"};
        int r = connect(c, (struct sockaddr *)&m, sizeof m);
        int e = errno;
        close(c);
        errno = e;
        r;
    }));
    rmdir(dir);
    return 0;
}
