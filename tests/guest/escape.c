/* Attempts to make a syscall without kbox seeing it.  Each line says what getpid (or the
 * attempt) returned: "a pid" natively; under --deny getpid:EACCES every route must say
 * EACCES in a tier that contains the program (tests/test_containment.py).
 * Routes: libc; a raw syscall instruction of our own; code made executable at run time; a
 * second seccomp filter that allows everything (filters stack, the strictest wins);
 * SIGSYS blocked; the program's own memory rewritten through process_vm_writev.
 */
#include "guest.h"
#include <signal.h>
#include <stdint.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <linux/filter.h>
#include <linux/seccomp.h>

static void show(const char *route, long r)
{
    /* glibc's getpid cannot fail, so a denied one returns the raw -errno. */
    printf("%s: %s\n", route, r > 0 ? "a pid" : r == -1 ? errname(errno) : r > -4096 ? errname((int)-r) : "odd");
}

static long raw_getpid(void)
{
    long r;
#if defined(__x86_64__)
    __asm__ volatile("syscall" : "=a"(r) : "0"((long)SYS_getpid) : "rcx", "r11", "memory");
#else
    register long x8 __asm__("x8") = SYS_getpid;
    register long x0 __asm__("x0");
    __asm__ volatile("svc #0" : "=r"(x0) : "r"(x8) : "memory");
    r = x0;
#endif
    if (r < 0 && r > -4096) {
        errno = (int)-r;
        return -1;
    }
    return r;
}

int main(void)
{
    show("libc getpid", getpid());
    show("raw syscall instruction", raw_getpid());

#if defined(__x86_64__)
    static const uint8_t code[] = { 0xb8, 39, 0, 0, 0, 0x0f, 0x05, 0xc3 };
#else
    static const uint32_t code[] = { 0xd2801588, 0xd4000001, 0xd65f03c0 };
#endif
    long page = sysconf(_SC_PAGESIZE);
    uint8_t *jit = mmap(NULL, (size_t)page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(jit != MAP_FAILED);
    memcpy(jit, code, sizeof(code));
    CHECK(mprotect(jit, (size_t)page, PROT_READ | PROT_EXEC) == 0);
    __builtin___clear_cache((char *)jit, (char *)jit + sizeof(code));
    long r = ((long (*)(void))(uintptr_t)jit)();
    if (r < 0 && r > -4096)
        errno = (int)-r, r = -1;
    show("run-time generated code", r);

    struct sock_filter allow[] = { BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW) };
    struct sock_fprog prog = { 1, allow };
    int installed = prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 &&
                    syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) == 0;
    printf("own allow-all filter installed: %s\n", installed ? "yes" : errname(errno));
    show("after an allow-all filter", getpid());

    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGSYS);
    sigprocmask(SIG_BLOCK, &s, NULL);
    show("with SIGSYS blocked", raw_getpid());
    sigprocmask(SIG_UNBLOCK, &s, NULL);

    /* Overwrite one of our own bytes through process_vm_writev (the way a program could
     * patch an in-process interposer); kbox must still see the next call. */
    static volatile uint8_t scratch = 1;
    uint8_t v = 2;
    struct iovec l = { &v, 1 }, rem = { (void *)&scratch, 1 };
    long w = syscall(SYS_process_vm_writev, getppid() > 0 ? syscall(SYS_gettid) : 0, &l, 1, &rem, 1, 0);
    printf("process_vm_writev on itself: %s\n", w == 1 ? "wrote" : errname(errno));
    show("after process_vm_writev", raw_getpid());
    return 0;
}
