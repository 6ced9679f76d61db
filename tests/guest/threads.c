/* pthreads: 8 threads each making system calls (gettid, getpid, open/read/close, write to a
 * shared pipe) and meeting on a mutex/condvar; results are collected and printed in thread
 * order after join, so the output does not depend on scheduling. */
#include "guest.h"
#include <fcntl.h>
#include <pthread.h>
#include <sys/syscall.h>

#define NTHREADS 8
#define ROUNDS 200

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int arrived, go, counter;
static pid_t main_pid;
static int pipefd[2];

struct result {
    int index;
    int tid_differs, pid_same, reads_ok, writes_ok;
    pid_t tid;
};

static void *worker(void *arg)
{
    struct result *r = arg;
    r->tid = syscall(SYS_gettid);
    r->tid_differs = r->tid != main_pid;
    r->pid_same = getpid() == main_pid;

    pthread_mutex_lock(&lock);
    arrived++;
    pthread_cond_broadcast(&cond);
    while (!go)
        pthread_cond_wait(&cond, &lock);
    pthread_mutex_unlock(&lock);

    for (int i = 0; i < ROUNDS; i++) {
        int fd = open("/proc/self/stat", O_RDONLY);
        char buf[64];
        if (fd >= 0 && read(fd, buf, sizeof buf) > 0)
            r->reads_ok++;
        if (fd >= 0)
            close(fd);
        pthread_mutex_lock(&lock);
        counter++;
        pthread_mutex_unlock(&lock);
    }
    char c = 'a' + r->index;
    r->writes_ok = write(pipefd[1], &c, 1) == 1;
    return (void *)(long)(r->index * 10);
}

int main(void)
{
    guest_init();
    main_pid = getpid();
    printf("main: gettid == getpid: %s\n", yesno(syscall(SYS_gettid) == main_pid));
    CHECK(pipe(pipefd) == 0);

    pthread_t th[NTHREADS];
    struct result res[NTHREADS] = {0};
    for (int i = 0; i < NTHREADS; i++) {
        res[i].index = i;
        CHECK(pthread_create(&th[i], NULL, worker, &res[i]) == 0);
    }
    /* Release all threads at once, only after every one has arrived. */
    pthread_mutex_lock(&lock);
    while (arrived < NTHREADS)
        pthread_cond_wait(&cond, &lock);
    go = 1;
    pthread_cond_broadcast(&cond);
    pthread_mutex_unlock(&lock);

    for (int i = 0; i < NTHREADS; i++) {
        void *ret;
        CHECK(pthread_join(th[i], &ret) == 0);
        printf("thread %d: returned %ld, tid differs from pid %s, same pid %s, reads %d, write %s\n", i, (long)ret,
               yesno(res[i].tid_differs), yesno(res[i].pid_same), res[i].reads_ok, yesno(res[i].writes_ok));
    }
    int distinct = 1;
    for (int i = 0; i < NTHREADS; i++)
        for (int j = i + 1; j < NTHREADS; j++)
            if (res[i].tid == res[j].tid)
                distinct = 0;
    printf("all tids distinct: %s\n", yesno(distinct));
    printf("counter: %d (expected %d)\n", counter, NTHREADS * ROUNDS);
    char letters[NTHREADS + 1] = {0};
    CHECK(read(pipefd[0], letters, NTHREADS) == NTHREADS);
    int seen = 0;
    for (int i = 0; i < NTHREADS; i++)
        seen |= 1 << (letters[i] - 'a');
    printf("pipe got one byte from every thread: %s\n", yesno(seen == (1 << NTHREADS) - 1));

    /* A detached thread and thread exit through pthread_exit. */
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    pthread_t t;
    res[0].index = 0;
    CHECK(pthread_create(&t, &attr, worker, &res[0]) == 0);
    void *ret;
    CHECK(pthread_join(t, &ret) == 0);
    printf("thread with a custom stack size: returned %ld\n", (long)ret);
    return 0;
}
