/* Directory listing: getdents64 directly and through readdir, over a directory of files,
 * subdirectories and a symlink it creates; names are sorted before printing. */
#include "guest.h"
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>

struct linux_dirent64 {
    unsigned long long d_ino;
    long long d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

static int cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(void)
{
    guest_init();
    char *dir = guest_tmpdir("getdents");
    CHECK(chdir(dir) == 0);
    char name[32];
    for (int i = 0; i < 40; i++) {
        snprintf(name, sizeof name, "file-%02d-with-a-longer-name", i);
        int fd = open(name, O_CREAT | O_WRONLY, 0644);
        CHECK(fd >= 0);
        close(fd);
    }
    CHECK(mkdir("subdir", 0755) == 0);
    CHECK(symlink("file-00-with-a-longer-name", "link") == 0);

    /* Small buffer: forces many getdents64 calls. */
    int dfd = open(".", O_RDONLY | O_DIRECTORY);
    CHECK(dfd >= 0);
    char *names[64];
    int count = 0, calls = 0, regs = 0, dirs = 0, links = 0;
    char buf[256];
    for (;;) {
        long n = syscall(SYS_getdents64, dfd, buf, sizeof buf);
        CHECK(n >= 0);
        if (n == 0)
            break;
        calls++;
        for (long off = 0; off < n;) {
            struct linux_dirent64 *d = (struct linux_dirent64 *)(buf + off);
            if (count < 64)
                names[count++] = strdup(d->d_name);
            regs += d->d_type == DT_REG;
            dirs += d->d_type == DT_DIR;
            links += d->d_type == DT_LNK;
            off += d->d_reclen;
        }
    }
    qsort(names, count, sizeof names[0], cmp);
    printf("getdents64: %d entries, more than one call %s, regular %d, dirs %d, links %d\n", count, yesno(calls > 1), regs, dirs, links);
    for (int i = 0; i < count; i++)
        printf("  %s\n", names[i]);
    SHOW("getdents64 on a regular file", ({
        int f = open("file-01-with-a-longer-name", O_RDONLY);
        long r = syscall(SYS_getdents64, f, buf, sizeof buf);
        int e = errno;
        close(f);
        errno = e;
        r;
    }));
    SHOW("getdents64 with a tiny buffer", ({
        lseek(dfd, 0, SEEK_SET);
        syscall(SYS_getdents64, dfd, buf, 8);
    }));
    close(dfd);

    DIR *d = opendir(".");
    CHECK(d != NULL);
    int seen = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        seen++;
    closedir(d);
    printf("readdir sees the same count: %s\n", yesno(seen == count));

    for (int i = 0; i < 40; i++) {
        snprintf(name, sizeof name, "file-%02d-with-a-longer-name", i);
        CHECK(unlink(name) == 0);
    }
    CHECK(unlink("link") == 0);
    CHECK(rmdir("subdir") == 0);
    CHECK(chdir("/") == 0);
    CHECK(rmdir(dir) == 0);
    return 0;
}
