/* Names of syscalls, errnos and signals, and the tables that decode flags (names.c). */
#ifndef KBOX_TRACE_NAMES_H
#define KBOX_TRACE_NAMES_H

/* Syscall name, or NULL. */
const char *kbox_syscall_name(int nr);
/* Native number for a name, or -1. */
int kbox_syscall_number(const char *name);
/* errno name ("ENOENT") or NULL; number for a name or -1. */
const char *kbox_errno_name(int err);
int kbox_errno_number(const char *name);
/* Signal name ("SIGTERM") or NULL. */
const char *kbox_signal_name(int sig);
/* glibc's strerror() text for an errno ("No such file or directory") or NULL. */
const char *kbox_errno_message(int err);

#endif
