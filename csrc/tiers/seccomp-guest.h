/* The seccomp tier with a root view: the part inside the program's process, and what the
 * supervisor and it agree on.
 *
 * The supervisor serves every path call itself, so the program's files are the view's;
 * what it cannot do from outside is replace a process's image.  The kernel's execve would
 * take the program, its PT_INTERP and its `#!` interpreter from the host, so the filter
 * turns the program's execve into SIGSYS, and a handler here (kbox's, installed before the
 * program starts) makes the one exec the supervisor lets run: execve of kbox itself, by the
 * string kbox_sg_self_exe ("/proc/self/exe") in kbox's read-only image, at the same
 * address in every process.  The relaunched kbox then loads the program through the
 * supervisor, inside the view, as the in-process tiers do (tiers/exec.c).
 *
 * The working directory is the supervisor's too: a directory descriptor at a number kept
 * for it (the run's --cwd-fd), which fork and exec pass on like any descriptor.  The
 * process's own working directory stays where the run started.
 */
#ifndef KBOX_TIERS_SECCOMP_GUEST_H
#define KBOX_TIERS_SECCOMP_GUEST_H

#include "tiers/launch.h"
#include <stdint.h>

/* The only path the supervisor lets an execve run with, by address. */
extern const char kbox_sg_self_exe[];

/* Marker calls from the gate (numbers no kernel defines, answered by the supervisor): the
 * calls between them are kbox's work for the program's execve (loading, checking), which
 * the trace does not show, as strace shows none of the kernel's. */
#define KBOX_NR_SG_QUIET 0x4b0c1    /* kbox works for the program's execve from here */
#define KBOX_NR_SG_START 0x4b0c2    /* the program starts (after a relaunch) */
#define KBOX_NR_SG_FAILED 0x4b0c3   /* the execve failed: arg0 points at a struct kbox_sg_failed */

struct kbox_sg_failed {
    int64_t nr;        /* execve or execveat */
    uint64_t args[6];  /* as the program made it */
    int64_t ret;       /* -errno */
};

/* The calls the filter turns into SIGSYS outside the gate. */
#define KBOX_SG_TRAPPED { __NR_execve, __NR_execveat, __NR_close_range }
#define KBOX_SG_NTRAPPED 3

/* In a relaunched image: loads the program (through the supervisor), installs the SIGSYS
 * handler and starts it.  Does not return. */
__attribute__((noreturn)) void kbox_seccomp_guest(struct kbox_launch *L);

#endif
