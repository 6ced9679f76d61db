/* kbox-bench: per-syscall cost, run natively and under each kbox tier by `kbox bench`.
 *
 * An ordinary libc program (it is the guest, not part of the runtime).  Rows follow the
 * seed benchmark (stat, open+close, lseek+read, write to /dev/null, getpid) plus the
 * lazypoline microbenchmark: a non-existent syscall (number 500) in a tight loop, which
 * measures pure interposition cost with no kernel work behind it.
 *
 * Timing uses clock_gettime(CLOCK_MONOTONIC), served by the vDSO without a system call, so
 * the clock itself is not interposed.  Each row runs one untimed warm-up pass (lazy
 * rewriting patches a site on first use; caches warm up), then `repeats` timed passes of
 * `iterations` calls, and reports the best pass: noise only ever adds time.  Every call's
 * result is checked; a failing call aborts the run instead of timing an error path.
 *
 *   kbox-bench [--iterations N] [--repeats R] [--rows a,b,...] [--json]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* A number no Linux architecture assigns (x86_64 and aarch64 tables end well below). */
#define NONEXISTENT_SYSCALL 500

static char file_path[4096];
static int read_fd = -1, null_fd = -1;

static void die(const char *row, const char *what)
{
    fprintf(stderr, "kbox-bench: %s: %s failed: %s\n", row, what, strerror(errno));
    exit(1);
}

static void row_stat(long n)
{
    struct stat st;
    for (long i = 0; i < n; i++)
        if (stat(file_path, &st) != 0)
            die("stat", "stat");
}

static void row_open_close(long n)
{
    for (long i = 0; i < n; i++) {
        int fd = open(file_path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            die("open+close", "open");
        if (close(fd) != 0)
            die("open+close", "close");
    }
}

static void row_lseek_read(long n)
{
    char buf[64];
    for (long i = 0; i < n; i++) {
        if (lseek(read_fd, 0, SEEK_SET) != 0)
            die("lseek+read", "lseek");
        if (read(read_fd, buf, sizeof buf) != (ssize_t)sizeof buf)
            die("lseek+read", "read");
    }
}

static void row_write(long n)
{
    static const char buf[64] = "kbox-bench";
    for (long i = 0; i < n; i++)
        if (write(null_fd, buf, sizeof buf) != (ssize_t)sizeof buf)
            die("write", "write");
}

static void row_getpid(long n)
{
    /* The raw system call: no libc caching of the pid, whatever the libc version. */
    for (long i = 0; i < n; i++)
        if (syscall(SYS_getpid) <= 0)
            die("getpid", "getpid");
}

static void row_syscall500(long n)
{
    for (long i = 0; i < n; i++)
        if (syscall(NONEXISTENT_SYSCALL) != -1 || errno != ENOSYS)
            die("syscall500", "syscall(500) returning ENOSYS");
}

struct row {
    const char *name;
    void (*fn)(long);
};

static const struct row rows[] = {
    {"stat", row_stat},
    {"open+close", row_open_close},
    {"lseek+read", row_lseek_read},
    {"write", row_write},
    {"getpid", row_getpid},
    {"syscall500", row_syscall500},
};
#define NROWS (sizeof rows / sizeof rows[0])

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static int selected(const char *list, const char *name)
{
    if (!list)
        return 1;
    size_t len = strlen(name);
    for (const char *p = list; p && *p;) {
        const char *end = strchr(p, ',');
        size_t l = end ? (size_t)(end - p) : strlen(p);
        if (l == len && strncmp(p, name, len) == 0)
            return 1;
        p = end ? end + 1 : NULL;
    }
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: kbox-bench [--iterations N] [--repeats R] [--rows NAME,...] [--json]\nrows:");
    for (size_t i = 0; i < NROWS; i++)
        fprintf(f, " %s", rows[i].name);
    fprintf(f, "\n");
}

static void setup(void)
{
    const char *tmp = getenv("TMPDIR");
    if (!tmp || !*tmp)
        tmp = "/tmp";
    snprintf(file_path, sizeof file_path, "%s/kbox-bench-XXXXXX", tmp);
    int fd = mkstemp(file_path);
    if (fd < 0)
        die("setup", "mkstemp");
    char block[4096];
    memset(block, 'b', sizeof block);
    if (write(fd, block, sizeof block) != (ssize_t)sizeof block)
        die("setup", "write");
    read_fd = fd;
    null_fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (null_fd < 0)
        die("setup", "open /dev/null");
}

int main(int argc, char **argv)
{
    long iterations = 20000, repeats = 5;
    int json = 0;
    const char *only = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = NULL;
        if ((strcmp(a, "--iterations") == 0 || strcmp(a, "--repeats") == 0 || strcmp(a, "--rows") == 0) && i + 1 < argc)
            val = argv[++i];
        else if (strncmp(a, "--iterations=", 13) == 0)
            val = a + 13, a = "--iterations";
        else if (strncmp(a, "--repeats=", 10) == 0)
            val = a + 10, a = "--repeats";
        else if (strncmp(a, "--rows=", 7) == 0)
            val = a + 7, a = "--rows";
        if (strcmp(a, "--json") == 0) {
            json = 1;
        } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (val && strcmp(a, "--iterations") == 0) {
            iterations = strtol(val, NULL, 10);
        } else if (val && strcmp(a, "--repeats") == 0) {
            repeats = strtol(val, NULL, 10);
        } else if (val && strcmp(a, "--rows") == 0) {
            only = val;
        } else {
            fprintf(stderr, "kbox-bench: unknown argument: %s\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (iterations <= 0 || repeats <= 0) {
        fprintf(stderr, "kbox-bench: --iterations and --repeats must be positive\n");
        return 2;
    }
    for (const char *p = only; p && *p;) {
        const char *end = strchr(p, ',');
        size_t l = end ? (size_t)(end - p) : strlen(p);
        int known = 0;
        for (size_t i = 0; i < NROWS; i++)
            known |= strlen(rows[i].name) == l && strncmp(rows[i].name, p, l) == 0;
        if (!known) {
            fprintf(stderr, "kbox-bench: unknown row: %.*s\n", (int)l, p);
            usage(stderr);
            return 2;
        }
        p = end ? end + 1 : NULL;
    }

    setup();
    double best[NROWS];
    for (size_t r = 0; r < NROWS; r++) {
        if (!selected(only, rows[r].name))
            continue;
        rows[r].fn(iterations / 10 + 1);
        best[r] = -1;
        for (long k = 0; k < repeats; k++) {
            double t0 = now_ns();
            rows[r].fn(iterations);
            double ns = (now_ns() - t0) / iterations;
            if (best[r] < 0 || ns < best[r])
                best[r] = ns;
        }
    }
    unlink(file_path);

    if (json)
        printf("{\"iterations\": %ld, \"repeats\": %ld, \"rows\": [", iterations, repeats);
    int first = 1;
    for (size_t r = 0; r < NROWS; r++) {
        if (!selected(only, rows[r].name))
            continue;
        if (json)
            printf("%s{\"name\": \"%s\", \"ns_per_call\": %.1f}", first ? "" : ", ", rows[r].name, best[r]);
        else
            printf("%-12s %10.1f ns/call\n", rows[r].name, best[r]);
        first = 0;
    }
    if (json)
        printf("]}\n");
    return 0;
}
