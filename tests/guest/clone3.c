/* Raw clone3: a child process (exit_signal SIGCHLD, returns 0 on the same stack) and a thread
 * (CLONE_VM|CLONE_THREAD|..., its own stack, CLONE_CHILD_CLEARTID to join it through a
 * futex), plus CLONE_PIDFD, an invalid clone3 (EINVAL for a too-small size).  The thread runs
 * on a fresh stack, so its entry is written in assembly per architecture: after the system
 * call the child has no return address to go back to. */
#include "guest.h"
#include <linux/futex.h>
#include <linux/sched.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#ifndef SYS_clone3
#define SYS_clone3 435
#endif

/* Runs fn(arg) in the child on the stack given in args and exits the thread with its result;
 * the parent gets the child's tid (or -errno). */
static long clone3_run(struct clone_args *args, long (*fn)(void *), void *arg)
{
#if defined(__x86_64__)
    register long rax __asm__("rax") = SYS_clone3;
    register long rdi __asm__("rdi") = (long)args;
    register long rsi __asm__("rsi") = sizeof *args;
    register long r12 __asm__("r12") = (long)fn;
    register long r13 __asm__("r13") = (long)arg;
    __asm__ volatile("syscall\n\t"
                     "test %%rax, %%rax\n\t"
                     "jnz 1f\n\t"
                     "xor %%ebp, %%ebp\n\t"
                     "and $-16, %%rsp\n\t"
                     "mov %%r13, %%rdi\n\t"
                     "call *%%r12\n\t"
                     "mov %%rax, %%rdi\n\t"
                     "mov $60, %%eax\n\t" /* exit: this thread only */
                     "syscall\n\t"
                     "ud2\n"
                     "1:"
                     : "+r"(rax)
                     : "r"(rdi), "r"(rsi), "r"(r12), "r"(r13)
                     : "rcx", "r11", "memory");
    return rax;
#elif defined(__aarch64__)
    register long x8 __asm__("x8") = SYS_clone3;
    register long x0 __asm__("x0") = (long)args;
    register long x1 __asm__("x1") = sizeof *args;
    register long x19 __asm__("x19") = (long)fn;
    register long x20 __asm__("x20") = (long)arg;
    __asm__ volatile("svc #0\n\t"
                     "cbnz x0, 1f\n\t"
                     "mov x29, xzr\n\t"
                     "mov x0, x20\n\t"
                     "blr x19\n\t"
                     "mov x8, #93\n\t" /* exit: this thread only */
                     "svc #0\n\t"
                     "brk #0\n"
                     "1:"
                     : "+r"(x0)
                     : "r"(x8), "r"(x1), "r"(x19), "r"(x20)
                     : "x30", "memory");
    return x0;
#else
#error "clone3.c: add the thread entry for this architecture"
#endif
}

struct shared {
    long tid_seen, pid_seen, ppid_seen;
    volatile int done;
};

/* Thread body: only raw system calls (it shares the creator's TLS, so no errno use). */
static long thread_fn(void *p)
{
    struct shared *s = p;
    s->tid_seen = syscall(SYS_gettid);
    s->pid_seen = syscall(SYS_getpid);
    s->ppid_seen = syscall(SYS_getppid);
    s->done = 1;
    return 0;
}

int main(void)
{
    guest_init();
    pid_t me = getpid();

    /* A child process: no stack given, it continues on a copy of ours. */
    struct clone_args ca = {0};
    ca.exit_signal = SIGCHLD;
    long pid = syscall(SYS_clone3, &ca, sizeof ca);
    CHECK(pid >= 0);
    if (pid == 0)
        _exit(getppid() == me ? 21 : 22);
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    printf("clone3 process: exit %d (21 = its getppid is our pid)\n", WEXITSTATUS(status));

    /* CLONE_PIDFD: the pidfd becomes readable when the child exits. */
    int pidfd = -1;
    memset(&ca, 0, sizeof ca);
    ca.flags = CLONE_PIDFD;
    ca.pidfd = (uintptr_t)&pidfd;
    ca.exit_signal = SIGCHLD;
    pid = syscall(SYS_clone3, &ca, sizeof ca);
    CHECK(pid >= 0);
    if (pid == 0)
        _exit(23);
    struct pollfd pfd = {.fd = pidfd, .events = POLLIN};
    printf("clone3 CLONE_PIDFD: pidfd valid %s, poll %d\n", yesno(pidfd >= 0), poll(&pfd, 1, 10000));
    CHECK(waitpid(pid, &status, 0) == pid);
    printf("clone3 CLONE_PIDFD child exit %d\n", WEXITSTATUS(status));
    close(pidfd);

    /* A thread with its own stack. */
    size_t stack_size = 256 * 1024;
    char *stack = mmap(NULL, stack_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    CHECK(stack != MAP_FAILED);
    static struct shared s;
    static volatile pid_t ctid = -1;
    memset(&ca, 0, sizeof ca);
    ca.flags = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM |
               CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID;
    ca.stack = (uintptr_t)stack;
    ca.stack_size = stack_size;
    ca.child_tid = (uintptr_t)&ctid;
    long tid = clone3_run(&ca, thread_fn, &s);
    CHECK(tid > 0);
    /* CLONE_CHILD_CLEARTID: the kernel zeroes ctid and wakes the futex when the thread exits. */
    while (ctid != 0) {
        pid_t v = ctid;
        if (v != 0)
            syscall(SYS_futex, &ctid, FUTEX_WAIT, v, NULL, NULL, 0);
    }
    printf("clone3 thread: ran %s, its gettid is the returned tid %s, getpid is ours %s, getppid is ours %s\n",
           yesno(s.done), yesno(s.tid_seen == tid), yesno(s.pid_seen == me), yesno(s.ppid_seen == getppid()));
    munmap(stack, stack_size);

    /* The kernel rejects a struct smaller than the first published version. */
    SHOW("clone3 with size 8", syscall(SYS_clone3, &ca, 8));
    return 0;
}
