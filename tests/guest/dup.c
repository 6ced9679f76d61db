/* Descriptor duplication: dup, dup2, dup3 (with O_CLOEXEC and its EINVAL case), fcntl
 * F_DUPFD / F_DUPFD_CLOEXEC / F_GETFD / F_SETFD / F_GETFL, shared offsets between dups. */
#include "guest.h"
#include <fcntl.h>

static int cloexec(int fd)
{
    int fl = fcntl(fd, F_GETFD);
    CHECK(fl >= 0);
    return (fl & FD_CLOEXEC) != 0;
}

int main(void)
{
    guest_init();
    char *dir = guest_tmpdir("dup");
    CHECK(chdir(dir) == 0);
    int fd = open("f", O_CREAT | O_RDWR | O_TRUNC, 0600);
    CHECK(fd >= 0);
    CHECK(write(fd, "0123456789", 10) == 10);
    CHECK(lseek(fd, 0, SEEK_SET) == 0);

    int d1 = dup(fd);
    CHECK(d1 >= 0);
    printf("dup gives a new fd: %s, cloexec %s\n", yesno(d1 != fd), yesno(cloexec(d1)));
    char c;
    CHECK(read(fd, &c, 1) == 1);
    CHECK(read(d1, &c, 1) == 1);
    printf("dups share the offset: read '%c', offset %ld\n", c, (long)lseek(fd, 0, SEEK_CUR));

    int d2 = dup2(fd, 100);
    printf("dup2 to 100: %d, cloexec %s\n", d2, yesno(cloexec(d2)));
    printf("dup2 same fd: %d\n", dup2(fd, fd) == fd);
    int d3 = dup3(fd, 101, O_CLOEXEC);
    printf("dup3 O_CLOEXEC to 101: %d, cloexec %s\n", d3, yesno(cloexec(d3)));
    SHOW("dup3 same fd", dup3(fd, fd, 0));
    SHOW("dup2 bad fd", dup2(555, 102));

    int d4 = fcntl(fd, F_DUPFD_CLOEXEC, 200);
    printf("F_DUPFD_CLOEXEC >= 200: %d, cloexec %s\n", d4, yesno(cloexec(d4)));
    int d5 = fcntl(fd, F_DUPFD, 200);
    printf("F_DUPFD >= 200: %d, cloexec %s\n", d5, yesno(cloexec(d5)));
    CHECK(fcntl(d5, F_SETFD, FD_CLOEXEC) == 0);
    printf("F_SETFD then cloexec %s\n", yesno(cloexec(d5)));
    int fl = fcntl(d4, F_GETFL);
    printf("F_GETFL access mode O_RDWR: %s\n", yesno((fl & O_ACCMODE) == O_RDWR));

    /* Closing the original leaves the duplicate usable. */
    CHECK(close(fd) == 0);
    CHECK(lseek(d2, 0, SEEK_SET) == 0);
    char buf[11] = {0};
    printf("read through dup2 after close: %zd \"%s\"\n", read(d2, buf, 10), buf);

    /* Replace stdout by a file with dup2, then restore it. */
    int saved = dup(1);
    CHECK(saved >= 0);
    int out = open("out", O_CREAT | O_RDWR | O_TRUNC, 0600);
    CHECK(out >= 0);
    CHECK(dup2(out, 1) == 1);
    printf("this line goes to the file\n");
    CHECK(dup2(saved, 1) == 1);
    memset(buf, 0, sizeof buf);
    CHECK(pread(out, buf, 10, 0) == 10);
    printf("redirected stdout captured: \"%s\"\n", buf);

    close(out); close(saved); close(d1); close(d2); close(d3); close(d4); close(d5);
    unlink("out"); unlink("f");
    CHECK(chdir("/") == 0);
    CHECK(rmdir(dir) == 0);
    return 0;
}
