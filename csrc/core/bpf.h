/* Classic-BPF seccomp programs for the tiers. */
#ifndef KBOX_CORE_BPF_H
#define KBOX_CORE_BPF_H

#include <stdint.h>
#include <linux/filter.h>

#define KBOX_BPF_MAX 64

/* seccomp tier: every native syscall goes to the supervisor (SECCOMP_RET_USER_NOTIF); a
 * syscall of a foreign ABI (x86_64's i386 int 0x80, for instance) kills the process, since
 * the supervisor would misread its number and arguments. */
int kbox_bpf_notify_all(struct sock_filter *out, int max);

/* trap tier: syscalls whose instruction pointer lies in [gate_lo, gate_hi) — the runtime's
 * own gate — run; every other native syscall raises SIGSYS (SECCOMP_RET_TRAP); foreign ABIs
 * kill.  The gate must not cross a 4 GiB boundary (BPF compares 32-bit words). */
int kbox_bpf_trap_outside_gate(struct sock_filter *out, int max, uint64_t gate_lo,
                               uint64_t gate_hi);

/* seccomp tier with a root view: syscalls from the gate go to the supervisor; elsewhere the
 * `trapped` numbers (execve, execveat, close_range) raise SIGSYS, to be made again from the
 * gate in a form the supervisor can check (tiers/seccomp-guest.c), and every other native
 * syscall goes to the supervisor; foreign ABIs kill. */
int kbox_bpf_notify_trap_outside_gate(struct sock_filter *out, int max, uint64_t gate_lo,
                                      uint64_t gate_hi, const int *trapped, int ntrapped);

#endif
