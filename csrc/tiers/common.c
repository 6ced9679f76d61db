#include "tiers/launch.h"
#include "lib/buf.h"
#include "lib/str.h"
#include "lib/sys.h"
#include "lib/ksignal.h"
#include "trace/errnoent.h"

void kbox_err(const char *a, const char *b, const char *c)
{
    char line[1024];
    struct kbox_buf buf;
    kbox_buf_init(&buf, line, sizeof(line));
    kbox_buf_puts(&buf, "kbox: ");
    if (a)
        kbox_buf_puts(&buf, a);
    if (b)
        kbox_buf_puts(&buf, b);
    if (c)
        kbox_buf_puts(&buf, c);
    kbox_buf_putc(&buf, '\n');
    kbox_write(2, line, buf.len);
}

const char *kbox_strerror(int err)
{
    if (err > 0 && err < kbox_errnoent_count && kbox_errnoent[err].message)
        return kbox_errnoent[err].message;
    return "Unknown error";
}

int kbox_status_to_exit(int wstatus)
{
    int sig = wstatus & 0x7f;
    if (sig == 0)
        return (wstatus >> 8) & 0xff;     /* exited */
    if (sig == 0x7f)
        return KBOX_EXIT_INTERNAL;        /* stopped: not a final status */
    return 128 + sig;                     /* killed by a signal */
}

#include <linux/prctl.h>
#include <linux/wait.h>

static volatile int monitored_child;

long kbox_fork_monitored(void)
{
    uint64_t block = KBOX_SIGBIT(SIGCHLD), orig;
    KSYS4(__NR_rt_sigprocmask, SIG_BLOCK, &block, &orig, 8);
    KSYS2(__NR_prctl, PR_SET_CHILD_SUBREAPER, 1);
    long child = KSYS5(__NR_clone, SIGCHLD, 0, NULL, NULL, 0);
    if (child < 0) {
        kbox_err("fork failed: ", kbox_strerror((int)-child), NULL);
    } else if (child == 0) {
        KSYS4(__NR_rt_sigprocmask, SIG_SETMASK, &orig, NULL, 8);
        KSYS2(__NR_prctl, PR_SET_PDEATHSIG, SIGKILL);
    }
    return child;
}

static void forward_signal(int sig)
{
    if (monitored_child > 0)
        KSYS2(__NR_kill, monitored_child, sig);
}

void kbox_monitor_ignore_terminal_signals(int child)
{
    monitored_child = child;
    struct kbox_ksigaction ign = { (uint64_t)(uintptr_t)SIG_IGN, 0, 0, 0 };
    kbox_rt_sigaction(SIGINT, &ign, NULL);
    kbox_rt_sigaction(SIGQUIT, &ign, NULL);
    kbox_set_handler(SIGTERM, forward_signal, SA_RESTART);
    kbox_set_handler(SIGHUP, forward_signal, SA_RESTART);
}

int kbox_monitor_children(int child)
{
    kbox_monitor_ignore_terminal_signals(child);
    int main_status = 0;
    for (;;) {
        int status;
        long w = KSYS4(__NR_wait4, -1, &status, __WALL, NULL);
        if (w == child)
            main_status = status;
        if (w == -10 /* ECHILD */)
            break;
    }
    return kbox_status_to_exit(main_status);
}
