/* Signals: SA_SIGINFO handlers for raise/kill/sigqueue (si_code, si_pid, si_value), a handler
 * that makes system calls, sigprocmask block/pending/unblock, sigwaitinfo, sigaltstack with a
 * handler running on the alternate stack, a SIGSEGV handler that siglongjmps out, EINTR from
 * a blocking read without SA_RESTART, SA_RESETHAND, and the program's own SIGSYS handler
 * (installed, queried back, invoked by raise(SIGSYS)). */
#include "guest.h"
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/time.h>

static volatile sig_atomic_t hits[65];
static volatile int last_code, last_pid_is_self, last_value;

static void info_handler(int sig, siginfo_t *si, void *uc)
{
    hits[sig]++;
    last_code = si->si_code;
    last_pid_is_self = si->si_pid == getpid();
    if (si->si_code == SI_QUEUE)
        last_value = si->si_value.sival_int;
}

/* A handler that itself makes system calls (each one is interposed while in the handler). */
static void syscall_handler(int sig)
{
    static const char msg[] = "handler: write from inside the handler\n";
    int ok = write(1, msg, sizeof msg - 1) == (ssize_t)(sizeof msg - 1);
    int fd = open("/dev/null", O_WRONLY);
    ok &= fd >= 0 && write(fd, "x", 1) == 1 && close(fd) == 0;
    ok &= syscall(SYS_getpid) == getpid();
    hits[sig] += ok ? 1 : 100;
}

static char *alt_base;
static size_t alt_size;
static volatile int on_alt, ss_flag_onstack;
static void alt_handler(int sig)
{
    char local;
    on_alt = (uintptr_t)&local >= (uintptr_t)alt_base && (uintptr_t)&local < (uintptr_t)alt_base + alt_size;
    stack_t cur;
    ss_flag_onstack = sigaltstack(NULL, &cur) == 0 && (cur.ss_flags & SS_ONSTACK);
    hits[sig]++;
}

static sigjmp_buf segv_env;
static void *volatile fault_addr;
static void segv_handler(int sig, siginfo_t *si, void *uc)
{
    fault_addr = si->si_addr;
    hits[sig]++;
    siglongjmp(segv_env, 1);
}

static volatile int sigsys_code, sigsys_pid_is_self;
static void sigsys_handler(int sig, siginfo_t *si, void *uc)
{
    hits[sig]++;
    sigsys_code = si->si_code;
    sigsys_pid_is_self = si->si_pid == getpid();
}

static void noop_handler(int sig)
{
    hits[sig]++;
}

static const char *code_name(int code)
{
    switch (code) {
    case SI_USER: return "SI_USER";
    case SI_TKILL: return "SI_TKILL";
    case SI_QUEUE: return "SI_QUEUE";
    case SI_KERNEL: return "SI_KERNEL";
    default: return "other";
    }
}

static void install(int sig, void (*h)(int), int flags)
{
    struct sigaction sa = {0};
    sa.sa_handler = h;
    sa.sa_flags = flags;
    sigemptyset(&sa.sa_mask);
    CHECK(sigaction(sig, &sa, NULL) == 0);
}

static void install_info(int sig, void (*h)(int, siginfo_t *, void *), int flags)
{
    struct sigaction sa = {0};
    sa.sa_sigaction = h;
    sa.sa_flags = SA_SIGINFO | flags;
    sigemptyset(&sa.sa_mask);
    CHECK(sigaction(sig, &sa, NULL) == 0);
}

int main(void)
{
    guest_init();

    install_info(SIGUSR1, info_handler, 0);
    CHECK(raise(SIGUSR1) == 0);
    printf("raise: handled %d, si_code %s, si_pid is self %s\n", hits[SIGUSR1], code_name(last_code), yesno(last_pid_is_self));
    CHECK(kill(getpid(), SIGUSR1) == 0);
    printf("kill self: handled %d, si_code %s, si_pid is self %s\n", hits[SIGUSR1], code_name(last_code), yesno(last_pid_is_self));
    union sigval v = {.sival_int = 42};
    CHECK(sigqueue(getpid(), SIGUSR1, v) == 0);
    printf("sigqueue: handled %d, si_code %s, value %d\n", hits[SIGUSR1], code_name(last_code), last_value);

    install(SIGUSR2, syscall_handler, 0);
    CHECK(raise(SIGUSR2) == 0);
    printf("handler making syscalls ran ok: %s\n", yesno(hits[SIGUSR2] == 1));

    /* Block, raise, observe pending, unblock: delivered exactly once, at unblock. */
    sigset_t set, old, pend;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    CHECK(sigprocmask(SIG_BLOCK, &set, &old) == 0);
    printf("SIGUSR1 blocked before: %s\n", yesno(sigismember(&old, SIGUSR1)));
    int before = hits[SIGUSR1];
    raise(SIGUSR1);
    raise(SIGUSR1);
    CHECK(sigpending(&pend) == 0);
    printf("while blocked: handled %d more, pending %s\n", hits[SIGUSR1] - before, yesno(sigismember(&pend, SIGUSR1)));
    CHECK(sigprocmask(SIG_SETMASK, &old, NULL) == 0);
    printf("after unblock: handled %d more (standard signals coalesce)\n", hits[SIGUSR1] - before);
    CHECK(sigprocmask(SIG_BLOCK, NULL, &old) == 0);
    printf("SIGUSR1 blocked after: %s\n", yesno(sigismember(&old, SIGUSR1)));

    /* sigwaitinfo consumes a blocked signal without running the handler. */
    sigemptyset(&set);
    sigaddset(&set, SIGUSR2);
    CHECK(sigprocmask(SIG_BLOCK, &set, NULL) == 0);
    CHECK(kill(getpid(), SIGUSR2) == 0);
    siginfo_t si;
    int got = sigwaitinfo(&set, &si);
    printf("sigwaitinfo: %s, si_code %s, handler ran %s\n", got == SIGUSR2 ? "SIGUSR2" : "other", code_name(si.si_code), yesno(hits[SIGUSR2] != 1));
    CHECK(sigprocmask(SIG_UNBLOCK, &set, NULL) == 0);

    /* Real-time signals queue instead of coalescing. */
    install(SIGRTMIN + 1, noop_handler, 0);
    sigemptyset(&set);
    sigaddset(&set, SIGRTMIN + 1);
    CHECK(sigprocmask(SIG_BLOCK, &set, NULL) == 0);
    for (int i = 0; i < 3; i++)
        raise(SIGRTMIN + 1);
    CHECK(sigprocmask(SIG_UNBLOCK, &set, NULL) == 0);
    printf("real-time signal raised 3 times while blocked: handled %d\n", hits[SIGRTMIN + 1]);

    /* sigaltstack: the handler runs on the alternate stack. */
    alt_size = 64 * 1024;
    alt_base = malloc(alt_size);
    CHECK(alt_base != NULL);
    stack_t ss = {.ss_sp = alt_base, .ss_size = alt_size, .ss_flags = 0};
    CHECK(sigaltstack(&ss, NULL) == 0);
    install(SIGURG, alt_handler, SA_ONSTACK);
    raise(SIGURG);
    printf("sigaltstack: handled %d, on alt stack %s, SS_ONSTACK inside %s\n", hits[SIGURG], yesno(on_alt), yesno(ss_flag_onstack));
    stack_t cur;
    CHECK(sigaltstack(NULL, &cur) == 0);
    printf("after handler: SS_ONSTACK %s, size kept %s\n", yesno(cur.ss_flags & SS_ONSTACK), yesno(cur.ss_size == alt_size));

    /* A fault handled by siglongjmp, on the alternate stack; the mask is restored. */
    install_info(SIGSEGV, segv_handler, SA_ONSTACK);
    char *page = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(page != MAP_FAILED);
    for (int i = 0; i < 2; i++) {
        if (sigsetjmp(segv_env, 1) == 0) {
            ((volatile char *)page)[100] = 1;
            printf("write to read-only page did not fault\n");
        } else {
            printf("SIGSEGV %d caught, si_addr is the faulting address %s\n", i + 1, yesno(fault_addr == page + 100));
        }
    }
    CHECK(sigprocmask(SIG_BLOCK, NULL, &old) == 0);
    printf("SIGSEGV unblocked after siglongjmp: %s\n", yesno(!sigismember(&old, SIGSEGV)));
    CHECK(mprotect(page, 4096, PROT_READ | PROT_WRITE) == 0);
    page[100] = 7;
    printf("after mprotect write works: %d\n", page[100]);
    munmap(page, 4096);

    /* A blocking read interrupted by a timer signal without SA_RESTART fails with EINTR. */
    install(SIGALRM, noop_handler, 0);
    int p[2];
    CHECK(pipe(p) == 0);
    /* Repeating: a first tick that lands before the read blocks (a loaded host, the rewrite
     * tier patching this read's site) must not leave the read blocked forever. */
    struct itimerval it = {.it_value = {.tv_usec = 20000}, .it_interval = {.tv_usec = 20000}};
    CHECK(setitimer(ITIMER_REAL, &it, NULL) == 0);
    char c;
    SHOW("read interrupted without SA_RESTART", read(p[0], &c, 1));
    /* A last tick may interrupt the disarming call itself where kbox serves it (the seccomp
     * tier waits for its supervisor, and the handler has no SA_RESTART): try again. */
    struct itimerval off = {0};
    int r;
    while ((r = setitimer(ITIMER_REAL, &off, NULL)) != 0 && errno == EINTR)
        ;
    CHECK(r == 0);
    printf("SIGALRM handled: %s\n", yesno(hits[SIGALRM] >= 1));
    close(p[0]);
    close(p[1]);

    /* SA_RESETHAND: the disposition returns to SIG_DFL after the first delivery. */
    install(SIGWINCH, noop_handler, SA_RESETHAND);
    raise(SIGWINCH);
    struct sigaction q;
    CHECK(sigaction(SIGWINCH, NULL, &q) == 0);
    printf("SA_RESETHAND: handled %d, now SIG_DFL %s\n", hits[SIGWINCH], yesno(q.sa_handler == SIG_DFL));

    /* The program's own SIGSYS handler: installed, read back, invoked by raise. */
    install_info(SIGSYS, sigsys_handler, 0);
    CHECK(sigaction(SIGSYS, NULL, &q) == 0);
    printf("own SIGSYS handler reads back: %s, SA_SIGINFO %s\n", yesno(q.sa_sigaction == sigsys_handler), yesno(q.sa_flags & SA_SIGINFO));
    raise(SIGSYS);
    printf("raise(SIGSYS): handled %d, si_code %s, si_pid is self %s\n", hits[SIGSYS], code_name(sigsys_code), yesno(sigsys_pid_is_self));
    kill(getpid(), SIGSYS);
    printf("kill(self, SIGSYS): handled %d, si_code %s\n", hits[SIGSYS], code_name(sigsys_code));
    install(SIGSYS, SIG_DFL, 0);
    CHECK(sigaction(SIGSYS, NULL, &q) == 0);
    printf("SIGSYS back to SIG_DFL reads back: %s\n", yesno(q.sa_handler == SIG_DFL));

    /* Ignored signals are discarded. */
    install(SIGUSR1, SIG_IGN, 0);
    before = hits[SIGUSR1];
    raise(SIGUSR1);
    printf("ignored SIGUSR1: handled %d more\n", hits[SIGUSR1] - before);
    return 0;
}
