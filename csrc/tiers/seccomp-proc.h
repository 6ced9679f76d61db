/* The caller's /proc and /dev paths as the seccomp supervisor must walk them (it walks them
 * as itself), and the facts about a caller the supervisor reads from /proc. */
#ifndef KBOX_TIERS_SECCOMP_PROC_H
#define KBOX_TIERS_SECCOMP_PROC_H

#include "lib/buf.h"
#include <stdbool.h>
#include <stddef.h>

/* What tells the run's processes apart from others. */
struct kbox_sview_run {
    int cwd_fd;             /* the working directory's descriptor number in every guest */
    char self_exe[4096];    /* kbox's host path: a process running it is one of the run's */
    size_t self_exe_len;
};

/* A path under /proc or /dev as the caller means it: "self" and the links to it name the
 * caller, /proc/PID/cwd the descriptor of its working directory, /proc/PID/exe (whole) the
 * program, as a path in the view.  `..` and `.` are refused (-EACCES) and `//` folded in
 * the part of the path the kernel walks in /proc, so that what is rewritten is what the
 * kernel would walk.  Other paths are copied.  *linked: the path names a /proc link whose
 * value the caller must see differently (readlink's answer, in link: /proc/self,
 * /proc/thread-self, /proc/PID/exe).  0 or -errno. */
long kbox_sview_as_caller(const struct kbox_sview_run *sv, int tgid, int tid, const char *in, char *out,
                          size_t cap, char *link, size_t linkcap, bool *linked);

/* Whether path p is `name` or lies under it. */
bool kbox_sview_is_under(const char *p, const char *name);

/* "/proc/<pid>/fd/<fd>" into b. */
void kbox_sview_fd_path(struct kbox_buf *b, int pid, long fd);

/* The caller's directory descriptor `fd` (AT_FDCWD: its working directory, the run's
 * cwd_fd) reopened by the supervisor (O_PATH, close-on-exec); -EBADF if it names none. */
long kbox_sview_dir_of(const struct kbox_sview_run *run, int tid, int fd);

/* The caller's open file `fd` itself, the same open file description (pidfd_getfd; thread
 * group `tgid`); -errno. */
long kbox_sview_file_of(int tgid, int fd);

/* The thread group of thread `tid` (itself if unknown). */
int kbox_sview_tgid(int tid);

/* Takes the umask of thread `tid` (for the calls that create files). */
void kbox_sview_umask(int tid);

#endif
