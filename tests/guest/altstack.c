/* Alternate signal stacks, per thread, under a storm of system calls.  Four threads each
 * install their own sigaltstack and loop over getpid, write/read on a pipe, stat and
 * nanosleep while another thread sends them SIGUSR1, SIGUSR2, SIGURG (SA_ONSTACK handlers)
 * and SIGVTALRM (a handler without SA_ONSTACK), alternately by tgkill and pthread_kill, one
 * signal at a time.  Every handler checks what the kernel promises:
 *   - SA_ONSTACK handlers run on this thread's alternate stack; sigaltstack(NULL, &old)
 *     inside says SS_ONSTACK; ucontext's uc_stack is the thread's sigaltstack (ss_sp,
 *     ss_size, and ss_flags as sigaltstack reports them outside a handler);
 *   - the interrupted context (uc_mcontext's stack pointer) of a first-level signal is on the
 *     thread's own stack, not on the alternate stack; uc_sigmask is the thread's mask (so
 *     no SIGSYS); the mask inside the handler is that plus the signal;
 *   - SIGUSR1's handler raises SIGWINCH, whose SA_ONSTACK handler runs nested on the same
 *     alternate stack below the first frame, interrupted on the alternate stack;
 *   - the SIGVTALRM handler runs on the thread's normal stack, outside SS_ONSTACK.
 * Then: a read() blocked on a pipe and interrupted by a handler without SA_RESTART fails with
 * EINTR, and with SA_RESTART it is restarted and returns the byte a helper thread writes
 * after the handler ran.  Only counts and verdicts are printed; a signal that is not handled
 * in time is a FAIL, and the watchdog ends the program within 60 s of a phase that hangs. */
#include "guest.h"
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <ucontext.h>

#define NTHREADS 4
#define ROUNDS 40               /* signals per thread, cycling through SENT below */
#define ALT_SIZE (256 * 1024)   /* room for the largest signal frames (aarch64 SVE/SME) */
#define STACK_SIZE (512 * 1024)
#define WAIT_S 4
#define PHASE_TIMEOUT_S 60      /* generous: the seccomp tier in a loaded TCG guest is slow */

static const int SENT[] = {SIGUSR1, SIGUSR2, SIGURG, SIGVTALRM};
#define NSENT 4

enum {
    C_FIRST,            /* first-level SA_ONSTACK handler runs */
    C_ON_ALT,           /* ... on this thread's alternate stack */
    C_UC_STACK,         /* ... uc_stack == the thread's sigaltstack */
    C_SS_ONSTACK,       /* ... sigaltstack(NULL) reports SS_ONSTACK and the same stack */
    C_INT_OFF_ALT,      /* ... interrupted sp not on the alternate stack */
    C_INT_ON_STACK,     /* ... interrupted sp on the thread's own stack */
    C_NO_SIGSYS,        /* ... uc_sigmask without SIGSYS */
    C_UC_MASK,          /* ... uc_sigmask == the thread's mask */
    C_MASK_INSIDE,      /* ... mask inside == thread's mask + the signal */
    C_NESTED,           /* nested SIGWINCH handler runs */
    C_NEST_ON_ALT,      /* ... on the same alternate stack, below the first frame */
    C_NEST_INT_ALT,     /* ... interrupted on the alternate stack */
    C_NEST_UC,          /* ... uc_stack matches, SS_ONSTACK inside, SIGSYS not in uc_sigmask */
    C_NEST_MASK,        /* ... uc_sigmask has SIGUSR1 (interrupted inside its handler) */
    C_PLAIN,            /* SIGVTALRM handler (no SA_ONSTACK) runs */
    C_PLAIN_ON_STACK,   /* ... on the thread's own stack, not the alternate stack */
    C_PLAIN_NOT_ONSTACK,/* ... sigaltstack(NULL) reports no SS_ONSTACK */
    C_N
};

struct target {
    int index;
    pthread_t thread;
    atomic_int tid;
    char *alt;                  /* the alternate stack */
    char *stack;                /* the thread's own stack (pthread_attr_setstack) */
    int alt_flags;              /* ss_flags sigaltstack reports outside a handler */
    uint64_t mask;              /* the thread's signal mask (kernel word) */
    atomic_int handled;         /* first-level handlers completed (all four signals) */
    atomic_int acked;           /* `handled` as the storm loop last saw it (outside handlers) */
    atomic_int stop;
    int per_sig[NSENT];
    uintptr_t outer_local;      /* the SIGUSR1 frame's local, for the nested handler */
    int counts[C_N];
    long storm_errors, storm_rounds;
    int kept_after;             /* altstack unchanged and not SS_ONSTACK after the storm */
};

static struct target targets[NTHREADS];
static __thread struct target *me;
static pid_t pid;
static atomic_int started;

static int in(uintptr_t p, const char *base, size_t size)
{
    return p >= (uintptr_t)base && p < (uintptr_t)base + size;
}

static uint64_t mask_word(const sigset_t *s)
{
    uint64_t w;     /* the kernel's sigset: 64 bits on both arches */
    memcpy(&w, s, sizeof w);
    return w;
}

static uint64_t bit(int sig)
{
    return 1ull << (sig - 1);
}

static uint64_t current_mask(void)
{
    sigset_t s;
    pthread_sigmask(SIG_BLOCK, NULL, &s);
    return mask_word(&s);
}

static uintptr_t interrupted_sp(const ucontext_t *uc)
{
#if defined(__x86_64__)
    return (uintptr_t)uc->uc_mcontext.gregs[REG_RSP];
#elif defined(__aarch64__)
    return (uintptr_t)uc->uc_mcontext.sp;
#else
#error "unsupported architecture"
#endif
}

static int sig_index(int sig)
{
    for (int i = 0; i < NSENT; i++)
        if (SENT[i] == sig)
            return i;
    return -1;
}

static int uc_stack_matches(const ucontext_t *uc, struct target *t)
{
    return uc->uc_stack.ss_sp == t->alt && uc->uc_stack.ss_size == ALT_SIZE &&
           uc->uc_stack.ss_flags == t->alt_flags;
}

static int reports_onstack(struct target *t)
{
    stack_t cur;
    return sigaltstack(NULL, &cur) == 0 && (cur.ss_flags & SS_ONSTACK) && cur.ss_sp == t->alt &&
           cur.ss_size == ALT_SIZE;
}

static void nested_handler(int sig, siginfo_t *si, void *ucv)
{
    char local;
    struct target *t = me;
    const ucontext_t *uc = ucv;
    uintptr_t sp = interrupted_sp(uc);
    uint64_t ucmask = mask_word(&uc->uc_sigmask);
    t->counts[C_NESTED]++;
    t->counts[C_NEST_ON_ALT] += in((uintptr_t)&local, t->alt, ALT_SIZE) && (uintptr_t)&local < t->outer_local;
    t->counts[C_NEST_INT_ALT] += in(sp, t->alt, ALT_SIZE);
    t->counts[C_NEST_UC] += uc_stack_matches(uc, t) && reports_onstack(t) && !(ucmask & bit(SIGSYS));
    t->counts[C_NEST_MASK] += (ucmask & bit(SIGUSR1)) != 0;
}

static void onstack_handler(int sig, siginfo_t *si, void *ucv)
{
    char local;
    struct target *t = me;
    const ucontext_t *uc = ucv;
    uintptr_t sp = interrupted_sp(uc);
    uint64_t ucmask = mask_word(&uc->uc_sigmask);
    t->counts[C_FIRST]++;
    t->counts[C_ON_ALT] += in((uintptr_t)&local, t->alt, ALT_SIZE);
    t->counts[C_UC_STACK] += uc_stack_matches(uc, t);
    t->counts[C_SS_ONSTACK] += reports_onstack(t);
    t->counts[C_INT_OFF_ALT] += !in(sp, t->alt, ALT_SIZE);
    t->counts[C_INT_ON_STACK] += in(sp, t->stack, STACK_SIZE);
    t->counts[C_NO_SIGSYS] += !(ucmask & bit(SIGSYS));
    t->counts[C_UC_MASK] += ucmask == t->mask;
    t->counts[C_MASK_INSIDE] += current_mask() == (t->mask | bit(sig));
    if (sig == SIGUSR1) {
        t->outer_local = (uintptr_t)&local;
        raise(SIGWINCH);
    }
    t->per_sig[sig_index(sig)]++;
    atomic_fetch_add(&t->handled, 1);
}

static void plain_handler(int sig, siginfo_t *si, void *ucv)
{
    char local;
    struct target *t = me;
    stack_t cur;
    t->counts[C_PLAIN]++;
    t->counts[C_PLAIN_ON_STACK] += in((uintptr_t)&local, t->stack, STACK_SIZE) &&
                                   !in((uintptr_t)&local, t->alt, ALT_SIZE);
    t->counts[C_PLAIN_NOT_ONSTACK] += sigaltstack(NULL, &cur) == 0 && !(cur.ss_flags & SS_ONSTACK);
    t->per_sig[sig_index(sig)]++;
    atomic_fetch_add(&t->handled, 1);
}

static void install(int sig, void (*h)(int, siginfo_t *, void *), int flags)
{
    struct sigaction sa = {0};
    sa.sa_sigaction = h;
    sa.sa_flags = SA_SIGINFO | flags;
    sigemptyset(&sa.sa_mask);
    CHECK(sigaction(sig, &sa, NULL) == 0);
}

static void *storm(void *arg)
{
    struct target *t = arg;
    me = t;
    stack_t ss = {.ss_sp = t->alt, .ss_size = ALT_SIZE, .ss_flags = 0};
    CHECK(sigaltstack(&ss, NULL) == 0);
    stack_t cur;
    CHECK(sigaltstack(NULL, &cur) == 0);
    t->alt_flags = cur.ss_flags;
    t->mask = current_mask();
    int p[2];
    CHECK(pipe(p) == 0);
    atomic_store(&t->tid, (int)syscall(SYS_gettid));
    atomic_fetch_add(&started, 1);
    struct timespec nap = {0, 1000};
    while (!atomic_load(&t->stop)) {
        char c = 'a' + (char)(t->storm_rounds % 26), back = 0;
        struct stat st;
        if (getpid() != pid)
            t->storm_errors++;
        if (write(p[1], &c, 1) != 1 || read(p[0], &back, 1) != 1 || back != c)
            t->storm_errors++;
        if (stat("/", &st) != 0 || !S_ISDIR(st.st_mode))
            t->storm_errors++;
        if (nanosleep(&nap, NULL) != 0 && errno != EINTR)   /* never restarted after a handler */
            t->storm_errors++;
        t->storm_rounds++;
        atomic_store(&t->acked, atomic_load(&t->handled));
    }
    CHECK(sigaltstack(NULL, &cur) == 0);
    t->kept_after = cur.ss_sp == t->alt && cur.ss_size == ALT_SIZE && !(cur.ss_flags & SS_ONSTACK);
    close(p[0]);
    close(p[1]);
    return NULL;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static void sleep_us(int us)
{
    struct timespec ts = {0, (long)us * 1000};
    nanosleep(&ts, NULL);
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static const char *signame(int sig)
{
    switch (sig) {
    case SIGUSR1: return "SIGUSR1";
    case SIGUSR2: return "SIGUSR2";
    case SIGURG: return "SIGURG";
    case SIGVTALRM: return "SIGVTALRM";
    default: return "?";
    }
}

/* ---- EINTR and SA_RESTART on a blocking read ----------------------------------------- */

static atomic_int eintr_hits;
static void eintr_handler(int sig)
{
    atomic_fetch_add(&eintr_hits, 1);
}

static int rpipe[2];
static atomic_int reader_tid, about_to_read, read_done;
static atomic_int helper_mode;      /* 0: signal only; 1: signal, then write after the handler */

static int sleeping(int tid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/self/task/%d/stat", tid);
    int fd = open(path, O_RDONLY);
    ssize_t n = fd >= 0 ? read(fd, buf, sizeof buf - 1) : -1;
    if (fd >= 0)
        close(fd);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    return p && p[1] == ' ' && p[2] == 'S';
}

/* Waits (at most 2 s) until the reader sleeps in read(), then a little longer. */
static void wait_reader_blocked(void)
{
    for (int i = 0; i < 200 && !atomic_load(&about_to_read); i++)
        sleep_ms(10);
    for (int i = 0; i < 200 && !sleeping(atomic_load(&reader_tid)); i++)
        sleep_ms(10);
    sleep_ms(30);
}

static void *helper(void *arg)
{
    pthread_t reader = *(pthread_t *)arg;
    wait_reader_blocked();
    int before = atomic_load(&eintr_hits);
    pthread_kill(reader, SIGUSR2);
    /* Wait for the handler (at most WAIT_S); with SA_RESTART, write once the reader is
     * blocked again; without, write only if the read has not returned WAIT_S later, so a
     * read that was not interrupted still ends (and reports 1 instead of EINTR). */
    double t0 = now();
    while (atomic_load(&eintr_hits) == before && now() - t0 < WAIT_S)
        sleep_ms(1);
    if (atomic_load(&helper_mode) == 1) {
        for (int i = 0; i < 200 && !sleeping(atomic_load(&reader_tid)); i++)
            sleep_ms(10);
        sleep_ms(30);
    } else {
        while (!atomic_load(&read_done) && now() - t0 < WAIT_S)
            sleep_ms(1);
        if (atomic_load(&read_done))
            return NULL;
    }
    if (write(rpipe[1], "r", 1) != 1)
        printf("FAIL helper: write to the pipe\n");
    return NULL;
}

static void blocking_read(const char *label, int flags)
{
    struct sigaction sa = {0};
    sa.sa_handler = eintr_handler;
    sa.sa_flags = flags;
    sigemptyset(&sa.sa_mask);
    CHECK(sigaction(SIGUSR2, &sa, NULL) == 0);
    CHECK(pipe(rpipe) == 0);
    atomic_store(&eintr_hits, 0);
    atomic_store(&about_to_read, 0);
    atomic_store(&read_done, 0);
    atomic_store(&reader_tid, (int)syscall(SYS_gettid));
    atomic_store(&helper_mode, (flags & SA_RESTART) ? 1 : 0);
    pthread_t self = pthread_self(), h;
    CHECK(pthread_create(&h, NULL, helper, &self) == 0);
    char c = 0;
    atomic_store(&about_to_read, 1);
    errno = 0;
    ssize_t n = read(rpipe[0], &c, 1);
    int e = errno;
    atomic_store(&read_done, 1);
    CHECK(pthread_join(h, NULL) == 0);
    char got[16] = "";
    if (n == 1)
        snprintf(got, sizeof got, ", byte '%c'", c);
    printf("%s: %ld %s%s, handler ran %d\n", label, (long)n, n < 0 ? errname(e) : "ok", got,
           atomic_load(&eintr_hits));
    if (flags & SA_RESTART)
        CHECK(n == 1 && c == 'r' && atomic_load(&eintr_hits) == 1);
    else
        CHECK(n == -1 && e == EINTR && atomic_load(&eintr_hits) == 1);
    close(rpipe[0]);
    close(rpipe[1]);
}

int main(void)
{
    guest_init();
    pid = getpid();
    guest_watchdog("starting the storm threads", PHASE_TIMEOUT_S);
    install(SIGUSR1, onstack_handler, SA_ONSTACK | SA_RESTART);
    install(SIGUSR2, onstack_handler, SA_ONSTACK | SA_RESTART);
    install(SIGURG, onstack_handler, SA_ONSTACK | SA_RESTART);
    install(SIGWINCH, nested_handler, SA_ONSTACK | SA_RESTART);
    install(SIGVTALRM, plain_handler, SA_RESTART);

    for (int i = 0; i < NTHREADS; i++) {
        struct target *t = &targets[i];
        t->index = i;
        t->alt = malloc(ALT_SIZE);
        t->stack = mmap(NULL, STACK_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        CHECK(t->alt != NULL && t->stack != MAP_FAILED);
        pthread_attr_t attr;
        CHECK(pthread_attr_init(&attr) == 0);
        CHECK(pthread_attr_setstack(&attr, t->stack, STACK_SIZE) == 0);
        CHECK(pthread_create(&t->thread, &attr, storm, t) == 0);
        pthread_attr_destroy(&attr);
    }
    double t0 = now();
    while (atomic_load(&started) < NTHREADS && now() - t0 < WAIT_S)
        sleep_ms(1);
    CHECK(atomic_load(&started) == NTHREADS);

    guest_watchdog("the signal storm", PHASE_TIMEOUT_S);
    for (int r = 0; r < ROUNDS; r++) {
        int sig = SENT[r % NSENT];
        for (int i = 0; i < NTHREADS; i++) {
            struct target *t = &targets[i];
            int want = atomic_load(&t->handled) + 1;
            if ((r + i) % 2)
                CHECK(syscall(SYS_tgkill, pid, atomic_load(&t->tid), sig) == 0);
            else
                CHECK(pthread_kill(t->thread, sig) == 0);
            /* Next signal only once the storm loop has seen this one handled: the handler
             * has returned, so the next one interrupts the loop, not the handler. */
            t0 = now();
            for (int spin = 0; atomic_load(&t->acked) < want && now() - t0 < WAIT_S; spin++)
                if (spin > 100)
                    sleep_us(50);
            if (atomic_load(&t->acked) < want) {
                printf("FAIL thread %d: %s (signal %d of %d) not handled within %d s\n", i,
                       signame(sig), r + 1, ROUNDS, WAIT_S);
                exit(1);
            }
        }
    }
    for (int i = 0; i < NTHREADS; i++)
        atomic_store(&targets[i].stop, 1);
    for (int i = 0; i < NTHREADS; i++)
        CHECK(pthread_join(targets[i].thread, NULL) == 0);

    static const char *names[C_N] = {
        [C_FIRST] = "SA_ONSTACK handlers",
        [C_ON_ALT] = "on the thread's alternate stack",
        [C_UC_STACK] = "uc_stack is the thread's sigaltstack",
        [C_SS_ONSTACK] = "sigaltstack inside says SS_ONSTACK",
        [C_INT_OFF_ALT] = "interrupted sp not on the alternate stack",
        [C_INT_ON_STACK] = "interrupted sp on the thread's stack",
        [C_NO_SIGSYS] = "uc_sigmask without SIGSYS",
        [C_UC_MASK] = "uc_sigmask is the thread's mask",
        [C_MASK_INSIDE] = "mask inside is the thread's mask plus the signal",
        [C_NESTED] = "nested SIGWINCH handlers",
        [C_NEST_ON_ALT] = "nested on the same alternate stack below the first frame",
        [C_NEST_INT_ALT] = "nested interrupted on the alternate stack",
        [C_NEST_UC] = "nested uc_stack, SS_ONSTACK, no SIGSYS",
        [C_NEST_MASK] = "nested uc_sigmask has SIGUSR1",
        [C_PLAIN] = "handlers without SA_ONSTACK",
        [C_PLAIN_ON_STACK] = "plain on the thread's normal stack",
        [C_PLAIN_NOT_ONSTACK] = "plain sigaltstack says not SS_ONSTACK",
    };
    /* The totals each count must reach: every first-level SA_ONSTACK signal, every SIGUSR1
     * (nested), every SIGVTALRM (plain). */
    int per_thread_sig = ROUNDS / NSENT;
    int expect[C_N];
    for (int c = 0; c < C_N; c++)
        expect[c] = c < C_NESTED ? 3 * per_thread_sig : per_thread_sig;
    int ok = 1;
    long errors = 0;
    printf("threads: %d, each with its own alternate stack; %d signals each\n", NTHREADS, ROUNDS);
    for (int i = 0; i < NTHREADS; i++) {
        struct target *t = &targets[i];
        printf("thread %d: %s %d, %s %d, %s %d, %s %d; altstack kept after %s\n", i,
               signame(SENT[0]), t->per_sig[0], signame(SENT[1]), t->per_sig[1],
               signame(SENT[2]), t->per_sig[2], signame(SENT[3]), t->per_sig[3],
               yesno(t->kept_after));
        for (int s = 0; s < NSENT; s++)
            ok &= t->per_sig[s] == per_thread_sig;
        ok &= t->kept_after;
        errors += t->storm_errors;
    }
    for (int c = 0; c < C_N; c++) {
        int sum = 0;
        for (int i = 0; i < NTHREADS; i++)
            sum += targets[i].counts[c];
        printf("%s: %d of %d\n", names[c], sum, NTHREADS * expect[c]);
        ok &= sum == NTHREADS * expect[c];
    }
    printf("storm syscall errors: %ld\n", errors);
    ok &= errors == 0;
    if (!ok) {
        printf("FAIL altstack: a handler saw a wrong stack, context or mask (counts above)\n");
        return 1;
    }

    guest_watchdog("read interrupted without SA_RESTART", PHASE_TIMEOUT_S);
    blocking_read("read interrupted without SA_RESTART", 0);
    guest_watchdog("read with SA_RESTART", PHASE_TIMEOUT_S);
    blocking_read("read with SA_RESTART", SA_RESTART);
    guest_watchdog(NULL, 0);
    return 0;
}
