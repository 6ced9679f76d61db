/* What the launcher hands a tier: the program, its arguments, and the run's policy. */
#ifndef KBOX_TIERS_LAUNCH_H
#define KBOX_TIERS_LAUNCH_H

#include <stdbool.h>
#include <stdint.h>
#include "core/policy.h"

enum kbox_trap_backend { KBOX_TRAP_SECCOMP = 0, KBOX_TRAP_SUD = 1 };

struct kbox_launch {
    const char *path;           /* file to execute */
    char **argv;                /* its argv (argv[0] may differ from path) */
    char **envp;
    const uint64_t *auxv;       /* the launcher's own auxv, from the kernel */
    const char *self_path;      /* the launcher binary, for re-launching on execve */
    char **launcher_opts;       /* the launcher's own options (re-used on execve) */
    int n_launcher_opts;
    enum kbox_trap_backend trap_backend;
    bool rewrite;               /* the rewrite tier: trap, plus lazy site rewriting */
    bool no_promote;            /* --no-promote: no wrapper-call promotion (rewrite tier) */
    bool relaunch;              /* we are a guest's execve, already inside the sandbox */
    int shared_fd;
    int cwd_fd;                 /* seccomp tier with a root view: the working directory's descriptor */
    struct kbox_policy *policy;
    /* Ends the run with `status` (printing --stats first): the launcher's, so that a tier
     * that must end the run from a signal handler (the supervisor) does not call up into it. */
    __attribute__((noreturn)) void (*finish)(int status);
};

/* Exit status conventions of the launcher itself. */
#define KBOX_EXIT_USAGE 2
#define KBOX_EXIT_CANNOT_EXEC 126
#define KBOX_EXIT_NOT_FOUND 127
#define KBOX_EXIT_INTERNAL 125

/* Monitor side of both tiers: runs as the parent of the guest, waits until every process
 * of the run is gone (the launcher is a child subreaper), and returns the shell-style
 * status of the first child (exit code, or 128+N for signal N). */
int kbox_seccomp_run(struct kbox_launch *L);
int kbox_trap_run(struct kbox_launch *L);
/* Loads the program into this process and starts it without any interposition (debugging
 * the loader); does not return on success. */
int kbox_plain_run(struct kbox_launch *L);

/* Waits until every process of the run is gone (the caller is a child subreaper) while
 * forwarding SIGTERM/SIGHUP to `child` and ignoring the terminal's SIGINT/SIGQUIT (they
 * reach the guest directly); returns the shell-style status of `child`. */
int kbox_monitor_children(int child);
void kbox_monitor_ignore_terminal_signals(int child);
/* Forks the run's first process.  In the parent SIGCHLD stays blocked (the caller unblocks
 * it once its handling is in place) and the launcher is a child subreaper, so every process
 * of the run is reaped here; the child gets the launcher's old mask back and dies with the
 * launcher.  Returns the child's pid, 0 in the child, or -errno (already reported). */
long kbox_fork_monitored(void);
/* Prints "kbox: <msg>\n" to stderr. */
void kbox_err(const char *a, const char *b, const char *c);
/* strerror for the errnos the launcher reports. */
const char *kbox_strerror(int err);
/* Shell-style status for a wait status. */
int kbox_status_to_exit(int wstatus);

#endif
