/* File I/O: open/read/write/lseek/pread/pwrite/stat/fstat/fstatat/unlink/rename/mkdir/rmdir
 * in a private scratch directory (its random name is never printed). */
#include "guest.h"
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/types.h>

int main(void)
{
    guest_init();
    char *dir = guest_tmpdir("fileio");
    CHECK(chdir(dir) == 0);

    int fd = open("a.txt", O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0640);
    CHECK(fd >= 0);
    const char msg[] = "hello, kbox\nsecond line\n";
    CHECK(write(fd, msg, sizeof msg - 1) == (ssize_t)(sizeof msg - 1));
    printf("wrote %zu bytes\n", sizeof msg - 1);

    /* O_EXCL on an existing file must fail with EEXIST. */
    errno = 0;
    CHECK(open("a.txt", O_CREAT | O_EXCL | O_RDWR, 0640) == -1);
    printf("O_EXCL again: %s\n", errname(errno));

    off_t off = lseek(fd, 0, SEEK_CUR);
    printf("lseek cur: %ld\n", (long)off);
    CHECK(lseek(fd, 7, SEEK_SET) == 7);
    char buf[64] = {0};
    ssize_t n = read(fd, buf, 4);
    printf("read after lseek 7: %zd \"%.*s\"\n", n, (int)n, buf);
    printf("lseek end: %ld\n", (long)lseek(fd, 0, SEEK_END));

    memset(buf, 0, sizeof buf);
    n = pread(fd, buf, 6, 12);
    printf("pread(6, 12): %zd \"%.*s\"\n", n, (int)n, buf);
    printf("offset unchanged by pread: %s\n", yesno(lseek(fd, 0, SEEK_CUR) == (off_t)(sizeof msg - 1)));
    CHECK(pwrite(fd, "HELLO", 5, 0) == 5);
    memset(buf, 0, sizeof buf);
    CHECK(pread(fd, buf, 11, 0) == 11);
    printf("after pwrite: \"%s\"\n", buf);

    struct stat st, fst;
    CHECK(fstat(fd, &fst) == 0);
    CHECK(stat("a.txt", &st) == 0);
    printf("size %ld mode %o regular %s\n", (long)st.st_size, st.st_mode & 07777, yesno(S_ISREG(st.st_mode)));
    printf("stat and fstat agree on inode: %s\n", yesno(st.st_ino == fst.st_ino && st.st_dev == fst.st_dev));
    CHECK(ftruncate(fd, 5) == 0);
    CHECK(fstat(fd, &fst) == 0);
    printf("after ftruncate: %ld\n", (long)fst.st_size);
    CHECK(close(fd) == 0);
    SHOW("close twice", close(fd));

    CHECK(mkdir("sub", 0755) == 0);
    SHOW("mkdir again", mkdir("sub", 0755));
    CHECK(rename("a.txt", "sub/b.txt") == 0);
    SHOW("stat old name", stat("a.txt", &st));
    int dfd = open("sub", O_RDONLY | O_DIRECTORY);
    CHECK(dfd >= 0);
    CHECK(fstatat(dfd, "b.txt", &st, 0) == 0);
    printf("fstatat renamed: size %ld\n", (long)st.st_size);
    fd = openat(dfd, "b.txt", O_RDONLY);
    CHECK(fd >= 0);
    memset(buf, 0, sizeof buf);
    n = read(fd, buf, sizeof buf);
    printf("read renamed: %zd \"%s\"\n", n, buf);
    close(fd);

    CHECK(symlink("sub/b.txt", "link") == 0);
    char target[64] = {0};
    n = readlink("link", target, sizeof target - 1);
    printf("readlink: %zd \"%s\"\n", n, target);
    CHECK(lstat("link", &st) == 0);
    printf("lstat is link: %s\n", yesno(S_ISLNK(st.st_mode)));
    CHECK(access("link", R_OK) == 0);
    CHECK(unlink("link") == 0);

    SHOW("rmdir non-empty", rmdir("sub"));
    CHECK(unlinkat(dfd, "b.txt", 0) == 0);
    SHOW("open missing", open("sub/b.txt", O_RDONLY));
    close(dfd);
    CHECK(rmdir("sub") == 0);
    CHECK(chdir("/") == 0);
    CHECK(rmdir(dir) == 0);
    printf("cleanup done\n");
    return 0;
}
