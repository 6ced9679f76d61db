/* Memory mappings: anonymous and file-backed (shared and private) mmap, msync, mprotect,
 * mremap growth, munmap, MAP_FIXED replacement, shared anonymous memory across fork, brk. */
#include "guest.h"
#include <fcntl.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>

int main(void)
{
    guest_init();
    long pg = sysconf(_SC_PAGESIZE);
    char *a = mmap(NULL, 4 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(a != MAP_FAILED);
    printf("anonymous mapping page aligned: %s, zero filled: %s\n", yesno(((uintptr_t)a % pg) == 0), yesno(a[0] == 0 && a[4 * pg - 1] == 0));
    memset(a, 'k', 4 * pg);
    char *b = mremap(a, 4 * pg, 16 * pg, MREMAP_MAYMOVE);
    CHECK(b != MAP_FAILED);
    printf("mremap keeps contents: %s, new tail zero: %s\n", yesno(b[4 * pg - 1] == 'k'), yesno(b[16 * pg - 1] == 0));
    CHECK(mprotect(b, pg, PROT_READ) == 0);
    CHECK(munmap(b + 8 * pg, 8 * pg) == 0);
    char *f = mmap(b + 4 * pg, pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    printf("MAP_FIXED lands at the requested address: %s, replaced contents zero: %s\n", yesno(f == b + 4 * pg), yesno(f[0] == 0));
    CHECK(munmap(b, 8 * pg) == 0);
    SHOW("mprotect of an unmapped range", mprotect(b, pg, PROT_READ));
    SHOW("mmap with a bad fd", (long)mmap(NULL, pg, PROT_READ, MAP_PRIVATE, 555, 0));

    char *dir = guest_tmpdir("mmap");
    char path[4200];
    snprintf(path, sizeof path, "%s/data", dir);
    int fd = open(path, O_CREAT | O_RDWR | O_TRUNC, 0600);
    CHECK(fd >= 0);
    CHECK(ftruncate(fd, 2 * pg) == 0);
    char *s = mmap(NULL, 2 * pg, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    CHECK(s != MAP_FAILED);
    memcpy(s + pg, "through a shared mapping", 24);
    CHECK(msync(s, 2 * pg, MS_SYNC) == 0);
    char buf[32] = {0};
    CHECK(pread(fd, buf, 24, pg) == 24);
    printf("read back: \"%s\"\n", buf);
    char *p = mmap(NULL, 2 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    CHECK(p != MAP_FAILED);
    p[pg] = 'T';
    printf("private copy-on-write: private '%c', shared '%c'\n", p[pg], s[pg]);
    munmap(p, 2 * pg);
    munmap(s, 2 * pg);
    close(fd);
    unlink(path);
    rmdir(dir);

    /* MAP_SHARED|MAP_ANONYMOUS memory is shared with a fork child; MAP_PRIVATE is not. */
    volatile int *shared = mmap(NULL, pg, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    volatile int *priv = mmap(NULL, pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(shared != MAP_FAILED && priv != MAP_FAILED);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        *shared = 11;
        *priv = 22;
        _exit(0);
    }
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    printf("after fork: shared %d, private %d\n", *shared, *priv);

    /* The brk system call itself: musl's sbrk() only answers sbrk(0).  Nothing allocates
     * between growing and restoring the break (a malloc may move it too). */
    long cur = syscall(SYS_brk, 0);
    CHECK(cur > 0);
    long grown = syscall(SYS_brk, cur + pg);
    if (grown == cur + pg)
        memset((void *)cur, 1, pg);
    long restored = syscall(SYS_brk, cur);
    printf("brk grows: %s\n", yesno(grown == cur + pg));
    CHECK(restored == cur);
    printf("malloc of 64 MiB works: %s\n", yesno(malloc(64 << 20) != NULL));
    return 0;
}
