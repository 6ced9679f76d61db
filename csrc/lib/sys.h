/* Raw system calls for code that runs without libc (inside the guest process, and in the
 * launcher before and after it becomes the guest).
 *
 * Every system call kbox itself makes goes through kbox_syscall6(), whose single syscall
 * instruction lives in the "kbox_gate" section.  The trap tier's seccomp filter allows
 * exactly that section and traps everything else, so this funnel is what keeps the
 * runtime's own calls from recursing into its handler.
 *
 * Error convention (nolibc's sys_* layer): functions return -errno and never touch errno;
 * there is no errno in the freestanding runtime at all.
 */
#ifndef KBOX_LIB_SYS_H
#define KBOX_LIB_SYS_H

#include <stddef.h>
#include <stdint.h>
#include <asm/unistd.h>
#include <linux/errno.h>
#include <linux/openat2.h>

long kbox_syscall6(long nr, long a1, long a2, long a3, long a4, long a5, long a6);

/* The gate section's bounds, provided by the linker for the section named kbox_gate. */
extern const char __start_kbox_gate[], __stop_kbox_gate[];

#define KSYS0(nr) kbox_syscall6((nr), 0, 0, 0, 0, 0, 0)
#define KSYS1(nr, a) kbox_syscall6((nr), (long)(a), 0, 0, 0, 0, 0)
#define KSYS2(nr, a, b) kbox_syscall6((nr), (long)(a), (long)(b), 0, 0, 0, 0)
#define KSYS3(nr, a, b, c) kbox_syscall6((nr), (long)(a), (long)(b), (long)(c), 0, 0, 0)
#define KSYS4(nr, a, b, c, d) kbox_syscall6((nr), (long)(a), (long)(b), (long)(c), (long)(d), 0, 0)
#define KSYS5(nr, a, b, c, d, e) \
    kbox_syscall6((nr), (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), 0)
#define KSYS6(nr, a, b, c, d, e, f) \
    kbox_syscall6((nr), (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), (long)(f))

static inline int kbox_is_err(long r) { return (unsigned long)r > (unsigned long)-4096L; }

#ifndef __NR_openat2
#define __NR_openat2 437
#endif

/* openat2(2) with struct open_how's three fields.  A RESOLVE_IN_ROOT/RESOLVE_BENEATH walk
 * through ".." fails with EAGAIN when any rename or mount anywhere on the system raced it
 * (the kernel cannot then prove it stayed inside); that is retried, a bounded number of
 * times so that a program renaming in a loop gets EAGAIN rather than a livelock. */
static inline long kbox_openat2(int dirfd, const char *path, uint64_t flags, uint64_t mode,
                                uint64_t resolve)
{
    struct open_how how = { .flags = flags, .mode = mode, .resolve = resolve };
    long r;
    for (int tries = 0; tries < 64; tries++)
        if ((r = KSYS4(__NR_openat2, dirfd, path, &how, sizeof(how))) != -EAGAIN)
            break;
    return r;
}

static inline long kbox_write(int fd, const void *buf, size_t n) { return KSYS3(__NR_write, fd, buf, n); }
static inline long kbox_read(int fd, void *buf, size_t n) { return KSYS3(__NR_read, fd, buf, n); }
static inline long kbox_pread(int fd, void *buf, size_t n, long off) { return KSYS4(__NR_pread64, fd, buf, n, off); }
static inline long kbox_close(int fd) { return KSYS1(__NR_close, fd); }
static inline long kbox_openat(int dirfd, const char *path, int flags, int mode) { return KSYS4(__NR_openat, dirfd, path, flags, mode); }
static inline long kbox_getpid(void) { return KSYS0(__NR_getpid); }
static inline long kbox_gettid(void) { return KSYS0(__NR_gettid); }
static inline long kbox_mmap(void *addr, size_t len, int prot, int flags, int fd, long off)
{
    return KSYS6(__NR_mmap, addr, len, prot, flags, fd, off);
}
static inline long kbox_munmap(void *addr, size_t len) { return KSYS2(__NR_munmap, addr, len); }
static inline long kbox_mprotect(void *addr, size_t len, int prot) { return KSYS3(__NR_mprotect, addr, len, prot); }
static inline __attribute__((noreturn)) void kbox_exit_group(int code)
{
    for (;;)
        KSYS1(__NR_exit_group, code);
}

#endif
