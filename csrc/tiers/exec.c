/* execve in the in-process tiers.
 *
 * A SIGSYS handler does not survive exec, so the new program is started through the
 * launcher again (--relaunch), which loads it into the fresh process and arms the runtime;
 * the seccomp filter does survive, and it still matches the launcher's gate because the
 * launcher is linked at a fixed address.  Everything that would make the kernel's execve
 * fail is checked first, so the caller still gets the right errno (shells try each PATH
 * entry in turn) instead of a launcher that starts and then cannot load the program.
 */
#include "tiers/exec.h"
#include "tiers/runtime.h"
#include "core/mem.h"
#include "core/view.h"
#include "core/view-chroot.h"
#include "loader/loader.h"
#include "lib/buf.h"
#include "lib/str.h"
#include <linux/errno.h>
#include <linux/fcntl.h>
#include <linux/mman.h>
#include <linux/stat.h>
#include <asm/stat.h>

#ifndef X_OK
#define X_OK 1
#endif

/* access(path, X_OK), with the path inside the root view when there is one. */
static long access_x(const char *path)
{
    if (!kbox_view_on())
        return KSYS4(__NR_faccessat, AT_FDCWD, path, X_OK, 0);
    long fd = kbox_view_openat(AT_FDCWD, path, O_PATH | O_CLOEXEC, 0);
    if (fd < 0)
        return fd;
    long r = KSYS4(__NR_faccessat2, fd, "", X_OK, AT_EMPTY_PATH);
    kbox_close((int)fd);
    return r;
}

/* What the kernel's execve would say about `path` before it replaces the image; 0 if the
 * program would start.  Mirrors the loader's checks without mapping anything. */
static int exec_precheck(const char *path, int depth)
{
    if (depth > KBOX_SCRIPT_MAX_DEPTH)
        return -ELOOP;
    long r = access_x(path);
    if (r < 0)
        return (int)r;
    long fd = kbox_view_openat(AT_FDCWD, path, O_RDONLY | O_CLOEXEC, 0);
    if (fd < 0)
        return (int)fd;
    /* Map the whole file (nothing is read until touched): the ELF checks compare offsets
     * against the real file size. */
    struct stat st;
    long r2 = KSYS2(__NR_fstat, fd, &st);
    if (r2 < 0 || (st.st_mode & S_IFMT) != S_IFREG) {
        kbox_close((int)fd);
        return r2 < 0 ? (int)r2 : -EACCES;
    }
    size_t size = (size_t)st.st_size;
    if (size == 0) {
        kbox_close((int)fd);
        return -ENOEXEC;
    }
    long m = kbox_mmap(NULL, size, PROT_READ, MAP_PRIVATE, (int)fd, 0);
    kbox_close((int)fd);
    if (kbox_is_err(m))
        return (int)m;
    const char *buf = (const char *)m;
    long n = (long)size;
    int rc = 0;
    if (n >= 2 && buf[0] == '#' && buf[1] == '!') {
        char line[KBOX_BINPRM_BUF + 1];
        const char *interp, *arg;
        size_t head = size < KBOX_BINPRM_BUF ? size : KBOX_BINPRM_BUF;
        rc = kbox_parse_shebang((const unsigned char *)buf, head, line, &interp, &arg);
        if (rc == 0)
            rc = exec_precheck(interp, depth + 1);
    } else {
        struct kbox_elf_info info;
        char msg[256];
        struct kbox_buf err;
        kbox_buf_init(&err, msg, sizeof(msg));
        rc = kbox_elf_check(buf, size, &info, &err);
        if (rc == 0 && info.is_dynamic && info.interp[0]) {
            rc = (int)access_x(info.interp);
            if (rc == -EACCES)
                rc = -ELIBBAD;
        }
    }
    kbox_munmap((void *)buf, size);
    return rc;
}

int64_t kbox_run_execve(const struct kbox_req *req, const uint64_t *a)
{
    /* "--exec-path=" followed by the path: the launcher option is built in place. */
    static const char opt[] = "--exec-path=";
    char optbuf[sizeof(opt) - 1 + 4096];
    char *path = optbuf + sizeof(opt) - 1;
    memcpy(optbuf, opt, sizeof(opt) - 1);
    uint64_t argv_addr, envp_addr;
    long n;
    if (req->nr == __NR_execve) {
        n = kbox_mem_read_str(&kbox_rt.self_mem, a[0], path, 4096);
        argv_addr = a[1];
        envp_addr = a[2];
    } else { /* execveat(dirfd, path, argv, envp, flags) */
        char rel[4096];
        n = kbox_mem_read_str(&kbox_rt.self_mem, a[1], rel, sizeof(rel));
        argv_addr = a[2];
        envp_addr = a[3];
        if (n >= 0) {
            struct kbox_buf b;
            kbox_buf_init(&b, path, 4096);
            int dirfd = (int)a[0];
            if (rel[0] == '/' ) {
                kbox_buf_puts(&b, rel);
            } else if (rel[0] == 0 && (a[4] & AT_EMPTY_PATH)) {
                kbox_buf_puts(&b, "/proc/self/fd/");
                kbox_buf_dec(&b, dirfd);
            } else if (dirfd == AT_FDCWD) {
                kbox_buf_puts(&b, rel);
            } else {
                kbox_buf_puts(&b, "/proc/self/fd/");
                kbox_buf_dec(&b, dirfd);
                kbox_buf_putc(&b, '/');
                kbox_buf_puts(&b, rel);
            }
            if (b.truncated)
                return -ENAMETOOLONG;
            n = (long)b.len;
        }
    }
    if (n < 0)
        return n;
    if (n == 0)
        return -ENOENT;
    if (kbox_strcmp(path, "/proc/self/exe") == 0) {
        /* The program's own executable (busybox's applets re-execute it so).  guest_exe is
         * a host path; in a root view the path to resolve is its guest path. */
        memcpy(path, kbox_rt.guest_exe, kbox_strlen(kbox_rt.guest_exe) + 1);
        if (kbox_view_on() && kbox_view_guest_path(path, path, 4096) < 0)
            return -ENOENT;
    }

    int rc = exec_precheck(path, 0);
    if (rc < 0)
        return rc;

    /* Count the guest's argv (reading through the safe accessor: it is guest memory). */
    long argc = 0;
    for (;; argc++) {
        uint64_t p;
        if (!argv_addr)
            break;
        if (kbox_rt.self_mem.read(&kbox_rt.self_mem, argv_addr + 8 * (uint64_t)argc, &p, 8) != 8)
            return -EFAULT;
        if (!p)
            break;
        if (argc > 1 << 20)
            return -E2BIG;
    }
    const struct kbox_launch *L = kbox_rt.launch;
    size_t slots = (size_t)L->n_launcher_opts + (size_t)argc + 8;
    size_t bytes = (slots * sizeof(char *) + 4095) & ~(size_t)4095;
    long m = kbox_mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (kbox_is_err(m))
        return -ENOMEM;
    char **nargv = (char **)m;
    size_t k = 0;
    nargv[k++] = (char *)L->self_path;
    for (int i = 0; i < L->n_launcher_opts; i++)
        nargv[k++] = L->launcher_opts[i];
    nargv[k++] = "--relaunch";
    nargv[k++] = optbuf;
    char chroot_opt[sizeof("--chroot=") + 4096];
    long co = kbox_view_chroot_opt(chroot_opt, sizeof(chroot_opt));
    if (co < 0) {
        kbox_munmap(nargv, bytes);
        return co;
    }
    if (co > 0)
        nargv[k++] = chroot_opt; /* the chroot this process is in (core/view-chroot.h) */
    nargv[k++] = "--";
    if (argc == 0)
        nargv[k++] = path; /* execve with an empty argv: give the program its path */
    for (long i = 0; i < argc; i++)
        nargv[k++] = *(char **)(uintptr_t)(argv_addr + 8 * (uint64_t)i);
    nargv[k] = NULL;
    long r = KSYS3(__NR_execve, L->self_path, nargv, envp_addr);
    kbox_munmap(nargv, bytes);
    return r;
}
