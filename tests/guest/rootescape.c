/* Tries every route out of a root filesystem view (kbox run --root R) and prints, one line a
 * case, exactly what the route reached.
 *
 *   rootescape MARKER HOSTFD [ITERATIONS]
 *
 * MARKER is the absolute host path of a file outside the root whose contents begin with
 * "kbox-rootescape-marker host"; the root holds a file at the same path (R/MARKER) that
 * reads "kbox-rootescape-marker root".  So a route that names MARKER, however it gets
 * there, shows which one it reached: "inside (marker=root)" when the view served it,
 * "HOST (marker=host)" when the host's file was opened.  HOSTFD is a descriptor of
 * MARKER's host directory, opened before kbox started (a shell's `exec 7<DIR`, Python's
 * pass_fds).  ITERATIONS bounds the two racing cases (default 2000).
 *
 * The program only makes sense inside such a view (natively every route reaches the host,
 * and the racing counts vary), so the guest-program matrix leaves it out; the root view's
 * tests (tests/test_root_escapes.py, vmtests/test_root_view.py) run it.  Its scratch files
 * are under /tmp/rootescape-XXXXXX, a guest path, removed at the end.
 */
#include "guest.h"
#include <fcntl.h>
#include <stdarg.h>
#include <ftw.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <linux/openat2.h>

#ifndef SYS_openat2
#define SYS_openat2 437
#endif

#define ROOT_MARK "kbox-rootescape-marker root"
#define HOST_MARK "kbox-rootescape-marker host"
/* More `..` than any test directory is deep. */
#define UP "../../../../../../../../../../../../../../../../../../../../../../../../"

static const char *marker;  /* absolute host path */
static const char *mrel;    /* the same without its leading '/' */
static const char *mname;   /* its last component */
static char mdir[4096];     /* its directory */
static int hostfd;
static char scratch[64];
static long iterations = 2000;

static const char *at(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static const char *at(const char *fmt, ...)
{
    static char bufs[4][8192];
    static int next;
    char *b = bufs[next++ % 4];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b, sizeof bufs[0], fmt, ap);
    va_end(ap);
    return b;
}

enum reached { R_ERROR, R_ROOT, R_HOST, R_OTHER };

/* What an open's result names: -1 (errno set) or a descriptor, which it closes. */
static enum reached classify(int fd, int *err)
{
    if (fd < 0) {
        *err = errno;
        return R_ERROR;
    }
    char buf[64] = { 0 };
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    *err = n < 0 ? errno : 0;
    close(fd);
    if (n < 0)
        return R_ERROR;
    if (!strncmp(buf, ROOT_MARK, strlen(ROOT_MARK)))
        return R_ROOT;
    if (!strncmp(buf, HOST_MARK, strlen(HOST_MARK)))
        return R_HOST;
    return R_OTHER;
}

static const char *reached_text(int fd)
{
    int err;
    switch (classify(fd, &err)) {
    case R_ROOT:
        return "inside (marker=root)";
    case R_HOST:
        return "HOST (marker=host)";
    case R_OTHER:
        return "another file (not a marker)";
    default:
        return errname(err);
    }
}

static void show(const char *name, int fd)
{
    printf("%s: %s\n", name, reached_text(fd));
}

static void show_open(const char *name, const char *path)
{
    show(name, open(path, O_RDONLY | O_CLOEXEC));
}

static long openat2_call(int dirfd, const char *path, uint64_t resolve)
{
    struct open_how how = { .flags = O_RDONLY | O_CLOEXEC, .resolve = resolve };
    return syscall(SYS_openat2, dirfd, path, &how, sizeof how);
}

/* ---- .. chains, symlinks, /proc links -------------------------------------------------- */

static void dotdot_cases(void)
{
    CHECK(chdir("/") == 0);
    show_open("dotdot-chain-from-root", at(UP "%s", mrel));
    show_open("dotdot-chain-absolute", at("/" UP "%s", mrel));
    CHECK(chdir(at("%s/a/b/c", scratch)) == 0);
    show_open("dotdot-chain-from-subdir", at(UP "%s", mrel));
    int d = open(at("%s/a/b", scratch), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    CHECK(d >= 0);
    show("dotdot-chain-openat-subdir", openat(d, at(UP "%s", mrel), O_RDONLY | O_CLOEXEC));
    close(d);
    CHECK(chdir("/") == 0);
}

static void symlink_cases(void)
{
    CHECK(symlink(at("%s/loop-b", scratch), at("%s/loop-a", scratch)) == 0);
    CHECK(symlink(at("%s/loop-a", scratch), at("%s/loop-b", scratch)) == 0);
    show_open("symlink-loop-absolute", at("%s/loop-a", scratch));
    CHECK(symlink("loop-d", at("%s/loop-c", scratch)) == 0);
    CHECK(symlink("./loop-c", at("%s/loop-d", scratch)) == 0);
    show_open("symlink-loop-relative", at("%s/loop-c", scratch));
    CHECK(symlink("/", at("%s/slash", scratch)) == 0);
    show_open("symlink-to-slash", at("%s/slash/%s", scratch, mrel));
    show_open("symlink-to-slash-then-dotdot", at("%s/slash/../../%s", scratch, mrel));
    CHECK(symlink("../../..", at("%s/a/b/c/up3", scratch)) == 0);
    show_open("symlink-to-dotdot-dotdot-dotdot", at("%s/a/b/c/up3/../../../../%s", scratch, mrel));
    CHECK(symlink(UP, at("%s/a/b/c/up", scratch)) == 0);
    show_open("symlink-to-dotdot-chain", at("%s/a/b/c/up/%s", scratch, mrel));
}

static void proc_cases(void)
{
    show_open("proc-self-root", at("/proc/self/root/%s", mrel));
    show_open("proc-self-root-dotdot", at("/proc/self/root/../../%s", mrel));
    show_open("proc-thread-self-root", at("/proc/thread-self/root/../%s", mrel));
    show_open("proc-pid-root", at("/proc/%d/root/../%s", (int)getpid(), mrel));
    show_open("proc-self-task-root", at("/proc/self/task/%ld/root/%s", (long)syscall(SYS_gettid), mrel));
    show_open("proc-dot-self-root", at("/proc/./self/root/%s", mrel));
    show_open("proc-double-slash-self-root", at("/proc//self/root/%s", mrel));
    CHECK(chdir("/") == 0);
    show_open("proc-self-cwd-dotdot", at("/proc/self/cwd/../%s", mrel));
    CHECK(chdir(at("%s/a/b/c", scratch)) == 0);
    show_open("proc-self-cwd-dotdot-from-subdir", at("/proc/self/cwd/" UP "%s", mrel));
    CHECK(chdir("/") == 0);
    /* /proc, /dev and /sys are the host's: their `..` must not lead to the host's root. */
    show_open("proc-dotdot", at("/proc/../%s", mrel));
    show_open("dev-dotdot", at("/dev/../%s", mrel));
    show_open("sys-dotdot", at("/sys/../%s", mrel));
    /* /dev/shm is a host directory the program can write: its symlinks' targets are guest
     * paths too, and a kernel that followed them from the host's root would reach the host. */
    const char *f = at("/dev/shm/rootescape-%d-file", (int)getpid());
    const char *d = at("/dev/shm/rootescape-%d-dir", (int)getpid());
    errno = 0;
    if (symlink(marker, f) == 0 && symlink(mdir, d) == 0) {
        show_open("dev-shm-symlink-to-marker", f);
        show_open("dev-shm-symlink-to-marker-dir", at("%s/%s", d, mname));
    } else {
        printf("dev-shm-symlinks: %s\n", errname(errno));
    }
    unlink(f);
    unlink(d);
}

/* ---- the host directory descriptor inherited from outside the view --------------------- */

static void host_fd_cases(void)
{
    show_open("proc-self-fd-host-dir", at("/proc/self/fd/%d/%s", hostfd, mname));
    show_open("proc-self-fd-host-dir-dotdot", at("/proc/self/fd/%d/../%s", hostfd, mrel));
    /* /dev/fd, or where the system has none (a bare VM's devtmpfs) the same symlink to
     * /proc/self/fd made in /dev/shm: the same walk through a magic link. */
    const char *devfd = "/dev/fd", *made = at("/dev/shm/rootescape-%d-fd", (int)getpid());
    char c;
    if (readlink(devfd, &c, 1) < 0 && symlink("/proc/self/fd", made) == 0)
        devfd = made;
    show_open("dev-fd-host-dir", at("%s/%d/%s", devfd, hostfd, mname));
    unlink(made);
    show("openat-host-dir", openat(hostfd, mname, O_RDONLY | O_CLOEXEC));
    errno = 0;
    if (fchdir(hostfd) == 0) {
        printf("fchdir-host-dir: allowed, then %s: %s\n", mname, reached_text(open(mname, O_RDONLY)));
        CHECK(chdir("/") == 0);
    } else {
        printf("fchdir-host-dir: %s\n", errname(errno));
    }
    errno = 0;
    if (chdir(at("/proc/self/fd/%d", hostfd)) == 0) {
        printf("chdir-proc-self-fd-host-dir: allowed, then %s: %s\n", mname,
               reached_text(open(mname, O_RDONLY)));
        CHECK(chdir("/") == 0);
    } else {
        printf("chdir-proc-self-fd-host-dir: %s\n", errname(errno));
    }
}

/* ---- openat2, the program's own call ---------------------------------------------------- */

static void openat2_cases(void)
{
    show("openat2-no-resolve-flags", (int)openat2_call(AT_FDCWD, marker, 0));
    show("openat2-dotdot-chain-no-resolve-flags", (int)openat2_call(AT_FDCWD, at("/" UP "%s", mrel), 0));
    show("openat2-resolve-no-symlinks", (int)openat2_call(AT_FDCWD, marker, RESOLVE_NO_SYMLINKS));
    show("openat2-resolve-beneath-host-dir", (int)openat2_call(hostfd, mname, RESOLVE_BENEATH));
    show("openat2-resolve-in-root-host-dir", (int)openat2_call(hostfd, mname, RESOLVE_IN_ROOT));
    /* The program's own confinement to the view's root (a directory inside the view): the
     * kernel's, and `..` chains and absolute paths stay under it. */
    int rootfd = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
    show("openat2-resolve-in-root-view-root", (int)openat2_call(rootfd, at("/" UP "%s", mrel), RESOLVE_IN_ROOT));
    show("openat2-resolve-beneath-view-root", (int)openat2_call(rootfd, at(UP "%s", mrel), RESOLVE_BENEATH));
    show("openat2-resolve-beneath-absolute", (int)openat2_call(AT_FDCWD, marker, RESOLVE_BENEATH));
    close(rootfd);
}

/* ---- hard links ------------------------------------------------------------------------- */

static void link_cases(void)
{
    const char *l1 = at("%s/hard-1", scratch), *l2 = at("%s/hard-2", scratch),
               *l3 = at("%s/hard-3", scratch);
    errno = 0;
    printf("hardlink-marker-path: %s\n",
           linkat(AT_FDCWD, marker, AT_FDCWD, l1, 0) == 0 ? reached_text(open(l1, O_RDONLY))
                                                          : errname(errno));
    errno = 0;
    printf("hardlink-from-host-dir-fd: %s\n",
           linkat(hostfd, mname, AT_FDCWD, l2, 0) == 0 ? reached_text(open(l2, O_RDONLY))
                                                       : errname(errno));
    errno = 0;
    printf("hardlink-through-proc-self-fd: %s\n",
           linkat(AT_FDCWD, at("/proc/self/fd/%d/%s", hostfd, mname), AT_FDCWD, l3,
                  AT_SYMLINK_FOLLOW) == 0 ? reached_text(open(l3, O_RDONLY)) : errname(errno));
}

/* ---- AF_UNIX path sockets ---------------------------------------------------------------- */

static int unix_socket(const char *path, struct sockaddr_un *a)
{
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    CHECK(strlen(path) < sizeof a->sun_path);
    strcpy(a->sun_path, path);
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(s >= 0);
    return s;
}

/* An errno from a datagram send; EPROTOTYPE means it found the host's stream socket. */
static const char *host_errname(int e)
{
    return e == EPROTOTYPE ? "HOST (found the host's socket: EPROTOTYPE)" : errname(e);
}

/* The socket files are named beside MARKER, whose directory exists both in the root (the
 * marker's copy) and on the host, so a bind that the view did not serve succeeds too, on the
 * host (the test looks there).  rootescape-host.sock is a host socket the test listens on. */
static void unix_cases(void)
{
    struct sockaddr_un a;
    struct stat st;
    const char *bound = at("%s/rootescape.sock", mdir);
    int s = unix_socket(bound, &a);
    errno = 0;
    if (bind(s, (struct sockaddr *)&a, sizeof a) == 0) {
        int in = stat(bound, &st) == 0 && S_ISSOCK(st.st_mode);
        printf("unix-bind-absolute: bound, the socket file is in the root: %s\n", yesno(in));
    } else {
        printf("unix-bind-absolute: %s\n", errname(errno));
    }
    CHECK(listen(s, 4) == 0 || errno == EINVAL);
    int c = unix_socket(bound, &a);
    errno = 0;
    printf("unix-connect-own-socket: %s\n",
           connect(c, (struct sockaddr *)&a, sizeof a) == 0 ? "connected" : errname(errno));
    close(c);
    close(s);
    unlink(bound);

    c = unix_socket(at("%s/rootescape-host.sock", mdir), &a);
    errno = 0;
    printf("unix-connect-host-socket: %s\n",
           connect(c, (struct sockaddr *)&a, sizeof a) == 0 ? "HOST (connected to the host's socket)"
                                                            : errname(errno));
    close(c);

    /* Datagrams to the host socket's path: finding it (a stream socket) fails EPROTOTYPE,
     * which only the host's path can give; inside the root there is nothing (ENOENT). */
    int d = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    CHECK(d >= 0);
    char byte = 'x';
    struct iovec iov = { &byte, 1 };
    struct msghdr m = { .msg_name = &a, .msg_namelen = sizeof a, .msg_iov = &iov, .msg_iovlen = 1 };
    struct mmsghdr mm = { .msg_hdr = m };
    errno = 0;
    printf("unix-sendto-host-socket: %s\n",
           sendto(d, &byte, 1, 0, (struct sockaddr *)&a, sizeof a) == 1 ? "HOST (sent)" : host_errname(errno));
    errno = 0;
    printf("unix-sendmsg-host-socket: %s\n", sendmsg(d, &m, 0) == 1 ? "HOST (sent)" : host_errname(errno));
    errno = 0;
    printf("unix-sendmmsg-host-socket: %s\n", sendmmsg(d, &mm, 1, 0) == 1 ? "HOST (sent)" : host_errname(errno));
    close(d);
}

/* ---- races ------------------------------------------------------------------------------- */

static volatile int stop;

static void *renamer(void *arg)
{
    const char *from = at("%s/race/one/dir", scratch), *to = at("%s/race/dir", scratch);
    char f[512], t[512];
    snprintf(f, sizeof f, "%s", from);
    snprintf(t, sizeof t, "%s", to);
    while (!stop) {
        if (rename(f, t) == 0 && !stop)
            rename(t, f);
    }
    return arg;
}

/* One thread walks `..` out of a directory (by its descriptor) while another moves the
 * directory between two depths. */
static void rename_race(void)
{
    CHECK(mkdir(at("%s/race", scratch), 0755) == 0);
    CHECK(mkdir(at("%s/race/one", scratch), 0755) == 0);
    CHECK(mkdir(at("%s/race/one/dir", scratch), 0755) == 0);
    CHECK(mkdir(at("%s/race/one/dir/sub", scratch), 0755) == 0);
    int d = open(at("%s/race/one/dir/sub", scratch), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    CHECK(d >= 0);
    char path[4096];
    snprintf(path, sizeof path, UP "%s", mrel);
    stop = 0;
    pthread_t t;
    CHECK(pthread_create(&t, NULL, renamer, NULL) == 0);
    long host = 0, inside = 0;
    for (long i = 0; i < iterations; i++) {
        int err;
        enum reached r = classify(openat(d, path, O_RDONLY | O_CLOEXEC), &err);
        host += r == R_HOST;
        inside += r == R_ROOT;
    }
    stop = 1;
    pthread_join(t, NULL);
    close(d);
    printf("rename-race: host reached %ld times in %ld walks, inside reached: %s\n", host,
           iterations, yesno(inside > 0));
}

static char swap_buf[4096];
static size_t swap_at;
static char swap_in_c, swap_host_c;

/* Flips one byte, so that the buffer always holds one path or the other, never a mix. */
static void *swapper(void *arg)
{
    volatile char *p = &swap_buf[swap_at];
    while (!stop) {
        *p = swap_host_c;
        *p = swap_in_c;
    }
    return arg;
}

/* One thread opens and stats a path buffer that another flips between MARKER's host path and
 * a file of the root whose name differs in its last byte; since the root has its own MARKER,
 * only a call that read the buffer after the view checked it could reach the host's file.  A
 * stat counts as reaching the host when it names neither of the root's two files. */
static void toctou_swap(void)
{
    snprintf(swap_buf, sizeof swap_buf, "%s", marker);
    swap_at = strlen(swap_buf) - 1;
    swap_host_c = swap_buf[swap_at];
    swap_in_c = swap_host_c == 'x' ? 'y' : 'x';
    char inside[4096];
    snprintf(inside, sizeof inside, "%.*s%c", (int)swap_at, marker, swap_in_c);
    int fd = open(inside, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    CHECK(fd >= 0 && write(fd, ROOT_MARK "\n", sizeof ROOT_MARK) == (ssize_t)sizeof ROOT_MARK);
    close(fd);
    struct stat a, b, st;
    CHECK(stat(inside, &a) == 0 && stat(marker, &b) == 0);
    swap_buf[swap_at] = swap_in_c;
    stop = 0;
    pthread_t t;
    CHECK(pthread_create(&t, NULL, swapper, NULL) == 0);
    long host = 0, inside_n = 0;
    for (long i = 0; i < iterations; i++) {
        int err;
        enum reached r = classify(open(swap_buf, O_RDONLY | O_CLOEXEC), &err);
        host += r == R_HOST;
        inside_n += r == R_ROOT;
        if (stat(swap_buf, &st) == 0) {
            int ours = (st.st_dev == a.st_dev && st.st_ino == a.st_ino) ||
                       (st.st_dev == b.st_dev && st.st_ino == b.st_ino);
            host += !ours;
            inside_n += ours;
        }
    }
    stop = 1;
    pthread_join(t, NULL);
    CHECK(unlink(inside) == 0);
    printf("toctou-swap: host reached %ld times in %ld opens and %ld stats, inside reached: %s\n",
           host, iterations, iterations, yesno(inside_n > 0));
}

static int remove_one(const char *p, const struct stat *st, int type, struct FTW *f)
{
    return remove(p);
}

int main(int argc, char **argv)
{
    guest_init();
    if (argc < 3 || argv[1][0] != '/') {
        fprintf(stderr, "usage: rootescape MARKER HOSTFD [ITERATIONS] (run inside a root view)\n");
        return 2;
    }
    marker = argv[1];
    mrel = marker + 1;
    mname = strrchr(marker, '/') + 1;
    snprintf(mdir, sizeof mdir, "%.*s", (int)(mname - 1 - marker), marker);
    hostfd = atoi(argv[2]);
    if (argc > 3)
        iterations = atol(argv[3]);
    guest_watchdog("rootescape", 300);

    snprintf(scratch, sizeof scratch, "/tmp/rootescape-XXXXXX");
    CHECK(mkdtemp(scratch) != NULL);
    CHECK(mkdir(at("%s/a", scratch), 0755) == 0);
    CHECK(mkdir(at("%s/a/b", scratch), 0755) == 0);
    CHECK(mkdir(at("%s/a/b/c", scratch), 0755) == 0);

    dotdot_cases();
    symlink_cases();
    proc_cases();
    host_fd_cases();
    openat2_cases();
    link_cases();
    unix_cases();
    rename_race();
    toctou_swap();

    CHECK(chdir("/") == 0);
    CHECK(nftw(scratch, remove_one, 16, FTW_DEPTH | FTW_PHYS) == 0);
    guest_watchdog(NULL, 0);
    return 0;
}
