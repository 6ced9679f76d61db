#!/usr/bin/env python3
"""Generates the C core's syscall tables and errno table from the kernel uapi headers.

    python3 scripts/gen-sysent.py            # rewrite the generated files
    python3 scripts/gen-sysent.py --check    # exit 1 if they are out of date

Outputs (committed, so building never needs this script):
  csrc/arch/x86_64/sysent.c   every x86_64 syscall number (asm/unistd_64.h)
  csrc/arch/aarch64/sysent.c  every aarch64 syscall number (asm-generic/unistd.h, evaluated
                              by the preprocessor with arm64's __ARCH_WANT_* switches)
  csrc/trace/errnoent.c       errno names (asm-generic/errno*.h) and glibc's messages
  kbox/sysnames.py            the same syscall names by number for Python (kbox analyze
                              names sites in foreign-architecture files too, which the
                              host's libkbox.so cannot answer for)

Numbers and names come from the headers; the argument kinds of the common syscalls are
written by hand below (SIGNATURES), and the argument counts of the rest (NARGS) are the
kernel's SYSCALL_DEFINEn arities, so that an undecoded call still prints the right number of
arguments, as strace does.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The headers installed here are 6.1-level; the VMs also boot 6.12.  Syscalls added up to
# 6.12 have the same number on x86_64 and in the generic table, so they are appended here
# (source: the kernel's syscall_64.tbl / asm-generic/unistd.h of 6.12).
NEWER_SYSCALLS = {
    451: "cachestat",          # 6.5
    452: "fchmodat2",          # 6.6
    453: "map_shadow_stack",   # 6.6
    454: "futex_wake",         # 6.7
    455: "futex_wait",         # 6.7
    456: "futex_requeue",      # 6.7
    457: "statmount",          # 6.8
    458: "listmount",          # 6.8
    459: "lsm_get_self_attr",  # 6.8
    460: "lsm_set_self_attr",  # 6.8
    461: "lsm_list_modules",   # 6.8
    462: "mseal",              # 6.10
}

ARCHES = {
    "x86_64": {
        "include": ["/usr/include/x86_64-linux-gnu", "/usr/include"],
        "defines": ["__x86_64__"],
        "header": "asm/unistd.h",
        "source": "/usr/include/x86_64-linux-gnu/asm/unistd_64.h",
    },
    "aarch64": {
        "include": ["/usr/aarch64-linux-gnu/include"],
        "defines": ["__aarch64__"],
        "header": "asm/unistd.h",
        "source": "/usr/aarch64-linux-gnu/include/asm-generic/unistd.h",
    },
}

# Argument kinds by syscall name: `name RET ARG...` (kinds are enum kbox_argtype without
# the KA_ prefix).  Per-arch lines override these where the ABI differs.
SIGNATURES = """
read            INT  FD BUF_OUT UINT
write           INT  FD BUF_IN UINT
open            FD   PATH OPEN_FLAGS MODE
close           INT  FD
stat            INT  PATH STAT_OUT
fstat           INT  FD STAT_OUT
lstat           INT  PATH STAT_OUT
newfstatat      INT  DIRFD PATH STAT_OUT AT_FLAGS
statx           INT  DIRFD PATH AT_FLAGS HEX PTR
poll            INT  POLLFDS UINT INT
ppoll           INT  POLLFDS UINT TIMESPEC SIGSET UINT
lseek           OFF  FD OFF WHENCE
mmap            HEX  PTR UINT PROT MAP_FLAGS FD HEX
mprotect        INT  PTR UINT PROT
munmap          INT  PTR UINT
mremap          HEX  PTR UINT UINT HEX PTR
msync           INT  PTR UINT HEX
madvise         INT  PTR UINT MADV
brk             HEX  PTR
rt_sigaction    INT  SIGNUM SIGACTION PTR UINT
rt_sigprocmask  INT  SIGMASK_HOW SIGSET PTR UINT
rt_sigsuspend   INT  SIGSET UINT
rt_sigtimedwait INT  SIGSET PTR TIMESPEC UINT
rt_sigqueueinfo INT  PID SIGNUM PTR
rt_sigreturn    INT
sigaltstack     INT  PTR PTR
ioctl           INT  FD IOCTL_CMD HEX
pread64         INT  FD BUF_OUT UINT OFF
pwrite64        INT  FD BUF_IN UINT OFF
readv           INT  FD IOV_OUT INT
writev          INT  FD IOV_IN INT
access          INT  PATH ACCESS_MODE
faccessat       INT  DIRFD PATH ACCESS_MODE
faccessat2      INT  DIRFD PATH ACCESS_MODE AT_FLAGS
pipe            INT  PIPEFDS
pipe2           INT  PIPEFDS FD_FLAGS
select          INT  INT PTR PTR PTR PTR
pselect6        INT  INT PTR PTR PTR TIMESPEC PTR
sched_yield     INT
dup             FD   FD
dup2            FD   FD FD
dup3            FD   FD FD FD_FLAGS
nanosleep       INT  TIMESPEC PTR
clock_nanosleep INT  CLOCKID HEX TIMESPEC PTR
clock_gettime   INT  CLOCKID TIMESPEC_OUT
clock_getres    INT  CLOCKID TIMESPEC_OUT
gettimeofday    INT  PTR PTR
getpid          PID
getppid         PID
gettid          PID
getuid          INT
geteuid         INT
getgid          INT
getegid         INT
setuid          INT  INT
setgid          INT  INT
getpgrp         PID
getpgid         PID  PID
setpgid         INT  PID PID
getsid          PID  PID
setsid          PID
socket          FD   SOCK_DOMAIN SOCK_TYPE INT
socketpair      INT  SOCK_DOMAIN SOCK_TYPE INT PIPEFDS
connect         INT  FD SOCKADDR UINT
bind            INT  FD SOCKADDR UINT
listen          INT  FD INT
accept          FD   FD PTR PTR
accept4         FD   FD PTR PTR SOCK_TYPE
sendto          INT  FD BUF_IN UINT MSG_FLAGS SOCKADDR UINT
recvfrom        INT  FD BUF_OUT UINT MSG_FLAGS PTR PTR
sendmsg         INT  FD PTR MSG_FLAGS
recvmsg         INT  FD PTR MSG_FLAGS
shutdown        INT  FD INT
getsockname     INT  FD PTR PTR
getpeername     INT  FD PTR PTR
setsockopt      INT  FD INT INT PTR UINT
getsockopt      INT  FD INT INT PTR PTR
fork            PID
vfork           PID
clone3          PID  PTR UINT
execve          INT  PATH ARGV ENVP
execveat        INT  DIRFD PATH ARGV ENVP AT_FLAGS
exit            INT  INT
exit_group      INT  INT
wait4           PID  PIDSPEC WSTATUS WAIT_OPTIONS PTR
waitid          INT  INT PID PTR WAIT_OPTIONS PTR
kill            INT  PIDSPEC SIGNUM
tkill           INT  PID SIGNUM
tgkill          INT  PID PID SIGNUM
uname           INT  PTR
fcntl           INT  FD FCNTL_CMD HEX
flock           INT  FD INT
fsync           INT  FD
fdatasync       INT  FD
truncate        INT  PATH OFF
ftruncate       INT  FD OFF
fallocate       INT  FD INT OFF OFF
fadvise64       INT  FD OFF OFF INT
getdents64      INT  FD PTR UINT
getcwd          INT  PATH_OUT UINT
chdir           INT  PATH
fchdir          INT  FD
chroot          INT  PATH
rename          INT  PATH PATH
renameat        INT  DIRFD PATH DIRFD PATH
renameat2       INT  DIRFD PATH DIRFD PATH HEX
mkdir           INT  PATH MODE
mkdirat         INT  DIRFD PATH MODE
mknodat         INT  DIRFD PATH MODE HEX
rmdir           INT  PATH
creat           FD   PATH MODE
link            INT  PATH PATH
linkat          INT  DIRFD PATH DIRFD PATH AT_FLAGS
unlink          INT  PATH
unlinkat        INT  DIRFD PATH AT_FLAGS
symlink         INT  LINKTARGET PATH
symlinkat       INT  LINKTARGET DIRFD PATH
readlink        INT  PATH BUF_OUT UINT
readlinkat      INT  DIRFD PATH BUF_OUT UINT
chmod           INT  PATH MODE
fchmod          INT  FD MODE
fchmodat        INT  DIRFD PATH MODE
chown           INT  PATH INT INT
fchown          INT  FD INT INT
lchown          INT  PATH INT INT
fchownat        INT  DIRFD PATH INT INT AT_FLAGS
utimensat       INT  DIRFD PATH PTR AT_FLAGS
umask           OCT  OCT
getrlimit       INT  RLIMIT_RES PTR
setrlimit       INT  RLIMIT_RES PTR
prlimit64       INT  PID RLIMIT_RES PTR PTR
getrusage       INT  INT PTR
sysinfo         INT  PTR
times           INT  PTR
statfs          INT  PATH PTR
fstatfs         INT  FD PTR
sched_getaffinity INT PID UINT PTR
sched_setaffinity INT PID UINT PTR
arch_prctl      INT  ARCH_PRCTL HEX
prctl           INT  PRCTL_OPT HEX HEX HEX HEX
futex           INT  PTR FUTEX_OP INT PTR PTR INT
set_tid_address PID  PTR
set_robust_list INT  PTR UINT
epoll_create1   FD   FD_FLAGS
epoll_ctl       INT  FD EPOLL_OP FD PTR
epoll_wait      INT  FD PTR INT INT
epoll_pwait     INT  FD PTR INT INT SIGSET UINT
eventfd2        FD   UINT FD_FLAGS
getrandom       INT  BUF_OUT UINT HEX
memfd_create    FD   STR HEX
rseq            INT  PTR UINT HEX HEX
close_range     INT  FD FD HEX
pidfd_open      FD   PID HEX
pidfd_send_signal INT FD SIGNUM PTR HEX
sendfile        INT  FD FD PTR UINT
copy_file_range INT  FD PTR FD PTR UINT HEX
seccomp         INT  INT HEX PTR
mount           INT  STR PATH STR HEX PTR
umount2         INT  PATH HEX
openat          FD   DIRFD PATH OPEN_FLAGS MODE
getgroups       INT  INT PTR
setgroups       INT  INT PTR
alarm           INT  UINT
pause           INT
process_vm_readv INT PID PTR UINT PTR UINT HEX
preadv          INT  FD IOV_OUT INT OFF
pwritev         INT  FD IOV_IN INT OFF
membarrier      INT  INT HEX INT
sched_setscheduler INT PID INT PTR
sched_getscheduler INT PID
sched_setparam  INT  PID PTR
sched_getparam  INT  PID PTR
sched_rr_get_interval INT PID TIMESPEC_OUT
sched_setattr   INT  PID PTR HEX
sched_getattr   INT  PID PTR UINT HEX
get_robust_list INT  PID PTR PTR
process_vm_writev INT PID PTR UINT PTR UINT HEX
migrate_pages   INT  PID UINT PTR PTR
move_pages      INT  PID UINT PTR PTR PTR HEX
kcmp            INT  PID PID INT HEX HEX
rt_tgsigqueueinfo INT PID PID SIGNUM PTR
openat2         FD   DIRFD PATH PTR UINT
fchmodat2       INT  DIRFD PATH MODE AT_FLAGS
mknod           INT  PATH MODE HEX
utime           INT  PATH PTR
utimes          INT  PATH PTR
futimesat       INT  DIRFD PATH PTR
inotify_add_watch INT FD PATH HEX
getxattr        INT  PATH STR PTR UINT
lgetxattr       INT  PATH STR PTR UINT
setxattr        INT  PATH STR PTR UINT HEX
lsetxattr       INT  PATH STR PTR UINT HEX
listxattr       INT  PATH PTR UINT
llistxattr      INT  PATH PTR UINT
removexattr     INT  PATH STR
lremovexattr    INT  PATH STR
name_to_handle_at INT DIRFD PATH PTR PTR HEX
fanotify_mark   INT  FD HEX HEX DIRFD PATH
pivot_root      INT  PATH PATH
acct            INT  PATH
swapon          INT  PATH HEX
swapoff         INT  PATH
uselib          INT  PATH
open_tree       FD   DIRFD PATH HEX
fspick          FD   DIRFD PATH HEX
mount_setattr   INT  DIRFD PATH HEX PTR UINT
move_mount      INT  DIRFD PATH DIRFD PATH HEX
"""

ARCH_SIGNATURES = {
    # x86_64 clone(flags, stack, parent_tid, child_tid, tls); arm64 has CLONE_BACKWARDS:
    # clone(flags, stack, parent_tid, tls, child_tid).
    "x86_64": "clone PID CLONE_FLAGS PTR PTR PTR HEX",
    "aarch64": "clone PID CLONE_FLAGS PTR PTR HEX PTR",
}

# What the tiers and the dispatcher need to know of a call beyond its arguments (flag names
# are KBOX_SC_* in csrc/arch/sysent.h without the prefix).  Names an arch lacks are skipped.
PROPERTIES = """
FRAME    rt_sigreturn exit exit_group execve execveat clone clone3 fork vfork
         rt_sigprocmask sigaltstack rt_sigpending
RUNTIME  rt_sigaction rt_sigprocmask rt_sigsuspend ppoll epoll_pwait epoll_pwait2 pselect6
         close dup2 dup3 close_range readlink readlinkat sigaltstack rt_sigpending
NEWTASK  clone clone3 fork vfork
EXEC     execve execveat
NORETURN exit exit_group
OPEN     open openat creat openat2
NOFOLLOW lstat lchown unlink unlinkat rmdir mkdir mkdirat mknod mknodat rename renameat
         renameat2 link linkat symlink symlinkat readlink readlinkat lgetxattr lsetxattr
         llistxattr lremovexattr
SOCKADDR bind connect sendto sendmsg sendmmsg accept accept4 getsockname getpeername recvfrom
         recvmsg
"""
KNOWN_PROPERTIES = ("FRAME", "RUNTIME", "NEWTASK", "EXEC", "NORETURN", "OPEN", "NOFOLLOW", "SOCKADDR")

# SYSCALL_DEFINEn arities of every syscall without a hand-written signature.
NARGS_BY_COUNT = {
    0: """restart_syscall getuid getgid munlockall vhangup sync inotify_init""",
    1: """shmdt personality mlockall _sysctl adjtimex iopl
          get_kernel_syms set_thread_area io_destroy get_thread_area epoll_create
          timer_getoverrun timer_delete mq_unlink unshare eventfd inotify_init1 syncfs
          userfaultfd pkey_free memfd_secret setfsuid setfsgid time
          sched_get_priority_max sched_get_priority_min""",
    2: """getitimer setreuid setregid capget capset rt_sigpending ustat getpriority
          mlock munlock
          settimeofday sethostname setdomainname create_module delete_module
          fremovexattr io_setup timer_gettime clock_settime
          mq_notify ioprio_get inotify_rm_watch timerfd_create timerfd_gettime fanotify_init
          clock_adjtime setns pkey_alloc msgget io_uring_setup fsopen
          landlock_restrict_self process_mrelease""",
    3: """mincore shmget shmat shmctl setitimer semget semop msgctl getdents syslog
          setresuid getresuid setresgid getresgid sysfs setpriority
          modify_ldt init_module nfsservctl tuxcall security readahead
          flistxattr io_submit io_cancel lookup_dcookie timer_create set_mempolicy
          mq_getsetattr ioprio_set signalfd
          getcpu finit_module bpf mlock2 fsmount pidfd_getfd
          landlock_create_ruleset lsm_list_modules mseal map_shadow_stack open_by_handle_at
          ioperm""",
    4: """semctl msgsnd ptrace reboot quotactl fgetxattr epoll_ctl_old
          epoll_wait_old semtimedop timer_settime mq_open kexec_load request_key
          tee sync_file_range vmsplice timerfd_settime signalfd4
          sendmmsg pkey_mprotect io_uring_register
          quotactl_fd landlock_add_rule set_mempolicy_home_node cachestat
          futex_wake futex_requeue statmount listmount lsm_get_self_attr lsm_set_self_attr""",
    5: """msgrcv query_module getpmsg putpmsg afs_syscall fsetxattr
          io_getevents remap_file_pages get_mempolicy mq_timedsend mq_timedreceive add_key
          keyctl perf_event_open recvmmsg
          kexec_file_load fsconfig process_madvise futex_waitv
          vserver""",
    6: """mbind splice preadv2 pwritev2 io_pgetevents
          io_uring_enter epoll_pwait2 futex_wait""",
}

KNOWN_KINDS = {
    "NONE", "INT", "UINT", "HEX", "PTR", "FD", "DIRFD", "PATH", "STR", "BUF_IN", "BUF_OUT",
    "OPEN_FLAGS", "MODE", "PROT", "MAP_FLAGS", "SIGNUM", "SIGMASK_HOW", "CLONE_FLAGS",
    "AT_FLAGS", "ACCESS_MODE", "FCNTL_CMD", "WHENCE", "SOCK_DOMAIN", "SOCK_TYPE", "ARGV",
    "ENVP", "PID", "WAIT_OPTIONS", "IOCTL_CMD", "FUTEX_OP", "PRCTL_OPT", "ARCH_PRCTL",
    "RLIMIT_RES", "CLOCKID", "OCT", "SIGSET", "SIGACTION", "STAT_OUT", "TIMESPEC", "POLLFDS",
    "MSG_FLAGS", "SOCKADDR", "EPOLL_OP", "MADV", "PIPEFDS", "FD_FLAGS", "TIMESPEC_OUT",
    "WSTATUS", "PATH_OUT", "OFF", "IOV_IN", "IOV_OUT", "PIDSPEC", "LINKTARGET",
}

NR_MAX = 512  # KBOX_NR_MAX in csrc/trace/trace.h


def parse_signatures(text: str) -> dict[str, tuple[str, list[str]]]:
    sigs: dict[str, tuple[str, list[str]]] = {}
    for line in text.strip().splitlines():
        name, ret, *args = line.split()
        for kind in (ret, *args):
            if kind not in KNOWN_KINDS:
                raise SystemExit(f"gen-sysent: unknown kind {kind} for {name}")
        if len(args) > 6:
            raise SystemExit(f"gen-sysent: {name} has more than 6 arguments")
        sigs[name] = (ret, args)
    return sigs


def properties_table() -> dict[str, list[str]]:
    props: dict[str, list[str]] = {}
    flag = None
    for word in PROPERTIES.split():
        if word.isupper():
            if word not in KNOWN_PROPERTIES:
                raise SystemExit(f"gen-sysent: unknown property {word}")
            flag = word
        else:
            props.setdefault(word, []).append(flag)
    return props


def nargs_table() -> dict[str, int]:
    table: dict[str, int] = {}
    for n, names in NARGS_BY_COUNT.items():
        for name in names.split():
            table[name] = n
    return table


def syscall_numbers(arch: str) -> dict[int, str]:
    """Every __NR_x of `arch`, as the preprocessor sees the uapi headers (so the generic
    table's #ifdef __ARCH_WANT_* and __NR3264_* indirections resolve as on arm64)."""
    cfg = ARCHES[arch]
    cmd = ["cpp", "-undef", "-dM", "-nostdinc"]
    for inc in cfg["include"]:
        cmd += ["-isystem", inc]
    cmd += [f"-D{d}" for d in cfg["defines"]]
    cmd += ["-include", cfg["header"], "-"]
    out = subprocess.run(cmd, input="", capture_output=True, text=True, check=True,
                         timeout=60).stdout
    macros: dict[str, str] = {}
    for m in re.finditer(r"^#define (__NR\w*) (.+)$", out, re.M):
        macros[m.group(1)] = m.group(2).strip()

    def value(name: str, depth: int = 0) -> int | None:
        v = macros.get(name)
        if v is None or depth > 8:
            return None
        if re.fullmatch(r"\d+", v):
            return int(v)
        if re.fullmatch(r"__NR\w+", v):
            return value(v, depth + 1)
        return None  # expressions such as (__NR_SYSCALL_BASE + n) do not occur on 64-bit

    numbers: dict[int, str] = {}
    for macro in macros:
        if not macro.startswith("__NR_"):
            continue
        name = macro[len("__NR_"):]
        # Markers, not syscalls: the table size and the start of the per-arch range.
        if name in ("syscalls", "arch_specific_syscall"):
            continue
        nr = value(macro)
        if nr is None:
            raise SystemExit(f"gen-sysent: cannot evaluate {macro} = {macros[macro]}")
        if nr in numbers and numbers[nr] != name:
            raise SystemExit(f"gen-sysent: {arch}: {nr} is both {numbers[nr]} and {name}")
        numbers[nr] = name
    return numbers


def render_sysent(arch: str) -> str:
    numbers = syscall_numbers(arch)
    from_header = dict(numbers)
    for nr, name in NEWER_SYSCALLS.items():
        if nr in numbers and numbers[nr] != name:
            raise SystemExit(f"gen-sysent: {arch}: {nr} is {numbers[nr]} in the header")
        numbers.setdefault(nr, name)
    sigs = parse_signatures(SIGNATURES)
    sigs.update(parse_signatures(ARCH_SIGNATURES[arch]))
    nargs = nargs_table()
    props = properties_table()
    for name in props:
        if name not in sigs and name not in nargs:
            raise SystemExit(f"gen-sysent: property of an unknown syscall {name}")
    lines = []
    for nr in sorted(numbers):
        if nr >= NR_MAX:
            raise SystemExit(f"gen-sysent: {arch}: {numbers[nr]} = {nr} >= KBOX_NR_MAX")
        name = numbers[nr]
        if name in sigs:
            ret, args = sigs[name]
        elif name in nargs:
            ret, args = "INT", ["HEX"] * nargs[name]
        else:
            raise SystemExit(f"gen-sysent: {arch}: no signature or arity for {name}")
        arglist = ", ".join(f"KA_{a}" for a in args)
        flags = " | ".join(f"KBOX_SC_{f}" for f in props.get(name, [])) or "0"
        lines.append(f'    [{nr}] = {{ "{name}", {len(args)}, {{ {arglist} }}, KA_{ret}, {flags} }},')
    asserts = [f"_Static_assert(__NR_{numbers[nr]} == {nr}, \"{numbers[nr]}\");"
               for nr in sorted(from_header)]
    decoded = sum(1 for name in numbers.values() if name in sigs)
    src = ARCHES[arch]["source"]
    return "\n".join([
        f"/* {arch} syscall table: every native syscall number with its name, argument kinds",
        " * and properties (csrc/arch/sysent.h).  GENERATED by scripts/gen-sysent.py from",
        f" * {src} (plus the syscalls added up to Linux 6.12);",
        " * do not edit: change the script and rerun it.",
        f" * {len(numbers)} syscalls, {decoded} with hand-written argument kinds. */",
        '#include "arch/sysent.h"',
        "",
        "#include <asm/unistd.h>",
        "",
        "/* The build's own uapi headers must agree with the generated numbers. */",
        *asserts,
        "",
        "static const struct kbox_sysent sysent[KBOX_NR_MAX] = {",
        *lines,
        "};",
        "",
        "const struct kbox_sysent *kbox_sysent(int nr)",
        "{",
        "    if (nr < 0 || nr >= KBOX_NR_MAX)",
        "        return NULL;",
        "    return &sysent[nr];",
        "}",
        "",
    ])


def all_numbers(arch: str) -> dict[int, str]:
    """Every syscall of `arch` the generated tables name: the header's and NEWER_SYSCALLS."""
    return {**NEWER_SYSCALLS, **syscall_numbers(arch)}


def render_sysnames() -> str:
    rows = []
    for arch in ARCHES:
        rows.append(f'    "{arch}": {{')
        line = "       "
        for nr, name in sorted(all_numbers(arch).items()):
            item = f' {nr}: "{name}",'
            if len(line) + len(item) > 99:
                rows.append(line)
                line = "       "
            line += item
        rows += [line, "    },"]
    return "\n".join([
        '"""Syscall names by number, per architecture: the names of csrc/arch/*/sysent.c.',
        "",
        "GENERATED by scripts/gen-sysent.py from the same uapi headers; do not edit: change the",
        'script and rerun it.  tests/test_sysnames.py checks it against the C tables."""',
        "from __future__ import annotations",
        "",
        "SYSCALL_NAMES: dict[str, dict[int, str]] = {",
        *rows,
        "}",
        "",
    ])


# Kernel-internal restart codes that can surface in a trace (strace prints them too).
KERNEL_ERRNOS = [
    (512, "ERESTARTSYS", "To be restarted if SA_RESTART is set"),
    (513, "ERESTARTNOINTR", "To be restarted"),
    (514, "ERESTARTNOHAND", "To be restarted if no handler"),
    (515, "ENOIOCTLCMD", "No ioctl command"),
    (516, "ERESTART_RESTARTBLOCK", "Interrupted by signal"),
]


def render_errnoent() -> str:
    entries: dict[int, str] = {}
    for header in ("errno-base.h", "errno.h"):
        text = (Path("/usr/include/asm-generic") / header).read_text()
        for m in re.finditer(r"^#define\s+(E\w+)\s+(\d+)", text, re.M):
            entries.setdefault(int(m.group(2)), m.group(1))
    rows = []
    for nr in sorted(entries):
        # glibc's strerror text, which is what strace prints in parentheses.
        msg = os.strerror(nr).replace("\\", "\\\\").replace('"', '\\"')
        rows.append(f'    [{nr}] = {{ "{entries[nr]}", "{msg}" }},')
    top = max(entries)
    krows = [f'    {{ {nr}, "{name}", "{msg}" }},' for nr, name, msg in KERNEL_ERRNOS]
    return "\n".join([
        "/* errno names and messages.  GENERATED by scripts/gen-sysent.py from",
        " * asm-generic/errno-base.h and errno.h (x86_64 and arm64 share them) with glibc's",
        " * strerror() texts; do not edit. */",
        '#include "trace/errnoent.h"',
        "",
        f"const struct kbox_errnoent kbox_errnoent[{top + 1}] = {{",
        *rows,
        "};",
        f"const int kbox_errnoent_count = {top + 1};",
        "",
        "const struct kbox_kerrnoent kbox_kerrnoent[] = {",
        *krows,
        "    { 0, NULL, NULL },",
        "};",
        "",
    ])


def outputs() -> dict[Path, str]:
    return {
        ROOT / "csrc/arch/x86_64/sysent.c": render_sysent("x86_64"),
        ROOT / "csrc/arch/aarch64/sysent.c": render_sysent("aarch64"),
        ROOT / "csrc/trace/errnoent.c": render_errnoent(),
        ROOT / "kbox/sysnames.py": render_sysnames(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if a generated file is stale")
    opts = ap.parse_args()
    stale = []
    for path, text in outputs().items():
        if opts.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path)
        else:
            path.write_text(text)
    if stale:
        print("gen-sysent: out of date: " + ", ".join(str(p) for p in stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
