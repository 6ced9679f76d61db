/* threads DIR NTHREADS NFILES: NTHREADS threads at once, each writing NFILES files
 * DIR/t<thread>-<file> of its own (contents "thread T file F\n" repeated F+1 times), then
 * appending to and renaming every second one, so the run's tree holds what many writers
 * left at the same time.  Built static (the image root has no libc of its own to spare);
 * tests/test_root_writable.py reads the files back out of the image with debugfs. */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *dir;
static int nfiles;
static pthread_barrier_t start;

static void *writer(void *arg)
{
    long t = (long)arg;
    char path[4096], to[4096], line[64];
    pthread_barrier_wait(&start);   /* every thread writes at the same time */
    for (int f = 0; f < nfiles; f++) {
        snprintf(path, sizeof path, "%s/t%ld-%d", dir, t, f);
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0) {
            perror(path);
            exit(1);
        }
        int n = snprintf(line, sizeof line, "thread %ld file %d\n", t, f);
        for (int i = 0; i <= f; i++)
            if (write(fd, line, (size_t)n) != n) {
                perror(path);
                exit(1);
            }
        close(fd);
    }
    for (int f = 0; f < nfiles; f += 2) {
        snprintf(path, sizeof path, "%s/t%ld-%d", dir, t, f);
        snprintf(to, sizeof to, "%s/t%ld-%d.done", dir, t, f);
        int fd = open(path, O_WRONLY | O_APPEND);
        if (fd < 0 || write(fd, "appended\n", 9) != 9 || close(fd) != 0 || rename(path, to) != 0) {
            perror(path);
            exit(1);
        }
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: threads DIR NTHREADS NFILES\n");
        return 2;
    }
    dir = argv[1];
    int nthreads = atoi(argv[2]);
    nfiles = atoi(argv[3]);
    pthread_t th[64];
    if (nthreads < 1 || nthreads > 64)
        return 2;
    pthread_barrier_init(&start, NULL, (unsigned)nthreads);
    for (long t = 0; t < nthreads; t++)
        if (pthread_create(&th[t], NULL, writer, (void *)t) != 0)
            return 1;
    for (int t = 0; t < nthreads; t++)
        pthread_join(th[t], NULL);
    printf("%d threads wrote %d files each\n", nthreads, nfiles);
    return 0;
}
