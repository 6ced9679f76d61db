/* The program blocks SIGSYS itself.  Natively a raised SIGSYS then stays pending until it is
 * unblocked, and the mask reads back with SIGSYS in it.  An in-process interposer that needs
 * SIGSYS for itself must keep that view intact. */
#include "guest.h"
#include <signal.h>

static volatile int hits;
static void handler(int sig)
{
    hits++;
}

int main(void)
{
    guest_init();
    struct sigaction sa = {0};
    sa.sa_handler = handler;
    CHECK(sigaction(SIGSYS, &sa, NULL) == 0);

    sigset_t set, cur, pend;
    sigemptyset(&set);
    sigaddset(&set, SIGSYS);
    CHECK(sigprocmask(SIG_BLOCK, &set, NULL) == 0);
    CHECK(sigprocmask(SIG_BLOCK, NULL, &cur) == 0);
    printf("SIGSYS reads back as blocked: %s\n", yesno(sigismember(&cur, SIGSYS)));
    /* System calls keep working while the program believes SIGSYS is blocked. */
    printf("getppid works while blocked: %s\n", yesno(getppid() > 0));
    raise(SIGSYS);
    CHECK(sigpending(&pend) == 0);
    printf("while blocked: handled %d, pending %s\n", hits, yesno(sigismember(&pend, SIGSYS)));
    CHECK(sigprocmask(SIG_UNBLOCK, &set, NULL) == 0);
    printf("after unblock: handled %d\n", hits);
    CHECK(sigprocmask(SIG_BLOCK, NULL, &cur) == 0);
    printf("SIGSYS reads back as unblocked: %s\n", yesno(!sigismember(&cur, SIGSYS)));
    return 0;
}
