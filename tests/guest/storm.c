/* Concurrency while sites are being rewritten: 16 threads start at once and hammer a mix
 * of syscalls (each site is patched while others execute it), then 100 children are forked
 * at once, each making syscalls and exiting with its index; every status is checked.
 * Each thread stops after 20000 rounds or 1.5 s, whichever comes first, so an emulated
 * guest (where a trapped syscall costs ~50 us) finishes in seconds; the output does not
 * depend on how many rounds ran. */
#include "guest.h"
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static atomic_int go;
static atomic_long bad;

static void *worker(void *arg)
{
    (void)arg;
    pid_t pid = getpid();
    uid_t uid = getuid();
    while (!atomic_load(&go))
        ;
    double t0 = now();
    for (int i = 0; i < 20000; i++) {
        if ((i & 63) == 0 && now() - t0 > 1.5)
            break;
        struct stat st;
        if (getpid() != pid || getuid() != uid || syscall(SYS_getppid) != getppid() ||
            fstat(1, &st) != 0 || syscall(SYS_gettid) <= 0)
            atomic_fetch_add(&bad, 1);
        if ((i & 255) == 0) {
            int fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
            if (fd < 0 || write(fd, "x", 1) != 1 || close(fd) != 0)
                atomic_fetch_add(&bad, 1);
        }
    }
    return NULL;
}

int main(void)
{
    pthread_t t[16];
    for (int i = 0; i < 16; i++)
        CHECK(pthread_create(&t[i], NULL, worker, NULL) == 0);
    atomic_store(&go, 1);
    for (int i = 0; i < 16; i++)
        CHECK(pthread_join(t[i], NULL) == 0);
    printf("thread storm: 16 threads, mismatches %ld\n", atomic_load(&bad));

    pid_t kids[100];
    for (int i = 0; i < 100; i++) {
        kids[i] = fork();
        CHECK(kids[i] >= 0);
        if (kids[i] == 0) {
            for (int j = 0; j < 200; j++)
                if (getppid() <= 0)
                    _exit(255);
            _exit(i);
        }
    }
    int ok = 0;
    for (int i = 0; i < 100; i++) {
        int st;
        CHECK(waitpid(kids[i], &st, 0) == kids[i]);
        ok += WIFEXITED(st) && WEXITSTATUS(st) == i;
    }
    printf("100 concurrent forks: %d exited with their index\n", ok);
    return atomic_load(&bad) == 0 && ok == 100 ? 0 : 1;
}
