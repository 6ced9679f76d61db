/* Shared helpers for the guest test programs.
 *
 * Every guest program must print the same bytes on every run, natively and under every kbox
 * tier: no pids, addresses, times or random names in the output, only the relations it
 * observed.  A failed expectation prints one FAIL line and exits 1, so a difference shows up
 * both in stdout and in the exit status.
 *
 * stdout is unbuffered: a buffered stdout would be duplicated into fork children and its
 * flushing order would depend on scheduling.
 */
#ifndef KBOX_GUEST_H
#define KBOX_GUEST_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHECK(cond)                                                                      \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            int e_ = errno;                                                              \
            printf("FAIL %s:%d: %s (errno %d %s)\n", __FILE__, __LINE__, #cond, e_,      \
                   strerrorname_np(e_) ? strerrorname_np(e_) : "?");                     \
            exit(1);                                                                     \
        }                                                                                \
    } while (0)

static inline const char *errname(int e)
{
    const char *n = strerrorname_np(e);
    return n ? n : "?";
}

/* Evaluates `expr` once (a call returning -1 and setting errno on failure) and prints
 * "label: <result> <errno name or ok>"; the errno is captured before printf can change it. */
#define SHOW(label, expr)                                                                \
    do {                                                                                 \
        errno = 0;                                                                       \
        long r_ = (long)(expr);                                                          \
        int e_ = errno;                                                                  \
        printf("%s: %ld %s\n", (label), r_, r_ < 0 ? errname(e_) : "ok");               \
    } while (0)

static inline void guest_init(void)
{
    setvbuf(stdout, NULL, _IONBF, 0);
}

static inline const char *yesno(int v)
{
    return v ? "yes" : "no";
}

/* The path to execute this program again: argv[0] when it is a path, else its PATH match
 * (the VM tests run the programs by name).  /proc/self/exe is deliberately not used: it is
 * what an in-process loader must get right, not something these tests assume. */
static inline const char *guest_self(const char *argv0)
{
    static char found[4096];
    if (strchr(argv0, '/'))
        return argv0;
    const char *path = getenv("PATH");
    while (path && *path) {
        const char *end = strchr(path, ':');
        size_t len = end ? (size_t)(end - path) : strlen(path);
        snprintf(found, sizeof found, "%.*s/%s", (int)len, path, argv0);
        if (access(found, X_OK) == 0)
            return found;
        path = end ? end + 1 : NULL;
    }
    return argv0;
}

/* A private scratch directory under $TMPDIR (or /tmp).  Its name is random, so callers must
 * never print it; print paths relative to it instead. */
static inline char *guest_tmpdir(const char *tag)
{
    const char *base = getenv("TMPDIR");
    static char path[4096];
    if (!base || !*base)
        base = "/tmp";
    snprintf(path, sizeof path, "%s/kbox-guest-%s-XXXXXX", base, tag);
    CHECK(mkdtemp(path) != NULL);
    return path;
}

#endif
