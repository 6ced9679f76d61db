"""kbox run --syscall-mode=seccomp --root: what the supervisor refuses so that the one execve
it lets run (kbox's own "/proc/self/exe") stays inside the view, tried by a hostile program.

The program is the Debian tree's python3 inside the root making raw calls through ctypes; each line says what
one route reached.  Under seccomp every route must be refused (docs/tiers.md, *The root view
in the seccomp tier*), and the program's own uses of what kbox keeps for itself (a SIGSYS
handler, closing every descriptor, its working directory) must still work.
"""
from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from kbox import root_debian

SECRET = "HOST-SECRET-not-in-the-root"

HOSTILE = r'''
import ctypes, errno, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NR = {"x86_64": dict(mprotect=10, munmap=11, ptrace=101, prctl=157, io_uring_setup=425,
                     pidfd_open=434, pidfd_getfd=438, process_vm_writev=311, open_by_handle_at=304,
                     execve=59, close_range=436),
      "aarch64": dict(mprotect=226, munmap=215, ptrace=117, prctl=167, io_uring_setup=425,
                      pidfd_open=434, pidfd_getfd=438, process_vm_writev=271, open_by_handle_at=265,
                      execve=221, close_range=436)}[os.uname().machine]

def raw(name, *args):
    r = libc.syscall(NR[name], *[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
    return "ok" if r >= 0 else errno.errorcode[ctypes.get_errno()]

def report(case, what):
    print(f"{case}: {what}", flush=True)

# kbox's image, at the same address in every process of the run.
lo = hi = None
for line in open("/proc/self/maps"):
    f = line.split()
    if len(f) >= 6 and "kbox-launch" in f[5]:
        a, b = (int(x, 16) for x in f[0].split("-"))
        lo = a if lo is None else min(lo, a)
        hi = b if hi is None else max(hi, b)
report("kbox-image-found", "yes" if lo else "no")
report("mprotect-kbox-image", raw("mprotect", lo, 4096, 3))
report("munmap-kbox-image", raw("munmap", lo, hi - lo))
try:
    os.open("/proc/self/mem", os.O_RDWR)
    report("proc-self-mem-write", "opened")
except OSError as e:
    report("proc-self-mem-write", errno.errorcode[e.errno])
report("prctl-set-mm", raw("prctl", 35, 13, 0, 0, 0))           # PR_SET_MM, PR_SET_MM_EXE_FILE
report("ptrace-parent", raw("ptrace", 16, os.getppid(), 0, 0))  # PTRACE_ATTACH
pidfd = libc.syscall(NR["pidfd_open"], ctypes.c_long(os.getppid()), ctypes.c_long(0))
report("pidfd-getfd-parent", raw("pidfd_getfd", pidfd, 0, 0) if pidfd >= 0 else "no pidfd")
buf = ctypes.create_string_buffer(8)
iov = (ctypes.c_void_p * 2)(ctypes.addressof(buf), 8)
report("process-vm-writev-parent", raw("process_vm_writev", os.getppid(), ctypes.addressof(iov), 1,
                                       ctypes.addressof(iov), 1, 0))
params = ctypes.create_string_buffer(120)
report("io-uring-setup", raw("io_uring_setup", 4, ctypes.addressof(params)))
report("open-by-handle-at", raw("open_by_handle_at", -100, ctypes.addressof(buf), 0))
host_prog = sys.argv[1]
report("raw-execve-host-program", raw("execve", ctypes.c_char_p(host_prog.encode()),
                                      ctypes.c_void_p(0), ctypes.c_void_p(0)))
# What kbox keeps must not break the program's own use of it.
signal.signal(signal.SIGSYS, lambda *a: None)
report("exec-after-own-sigsys-handler", "ok" if os.system("/bin/true") == 0 else "failed")
pid = os.fork()
if pid == 0:
    raw("close_range", 3, 0xFFFFFFFF, 0)
    os.chdir("/etc")
    os._exit(0 if open("hostname").read() else 1)
report("close-all-then-relative-open", "ok" if os.waitpid(pid, 0)[1] == 0 else "failed")
print("done", flush=True)
'''

WANT = {
    "kbox-image-found": "yes",
    "mprotect-kbox-image": "EPERM",
    "munmap-kbox-image": "EPERM",
    "proc-self-mem-write": "EACCES",
    "prctl-set-mm": "EPERM",
    "ptrace-parent": "EPERM",
    "pidfd-getfd-parent": "EPERM",
    "process-vm-writev-parent": "EPERM",
    "io-uring-setup": "ENOSYS",
    "open-by-handle-at": "EPERM",
    "raw-execve-host-program": "ENOENT",   # looked up in the view, where it is not
    "exec-after-own-sigsys-handler": "ok",
    "close-all-then-relative-open": "ok",
}


@pytest.fixture(scope="module")
def ROOT(tmp_path_factory):
    """A copy of the Debian tree (python3 with ctypes) and a program beside it on the host."""
    arch = platform.machine()
    if arch not in ("x86_64", "aarch64"):
        pytest.skip(f"no Debian tree for a {arch} host")
    base = tmp_path_factory.mktemp("seccomp-view")
    root = base / "root"
    root_debian.copy_tree(root_debian.ensure_root(arch, progress=False).path, root)
    host_prog = base / "host-only-program"
    host_prog.write_text(f"#!/bin/sh\necho {SECRET}\n")
    host_prog.chmod(0o755)
    return root, host_prog


def test_a_hostile_program_cannot_reach_around_the_supervisor(ROOT):
    root, host_prog = ROOT
    got = subprocess.run([sys.executable, "-m", "kbox", "run", "--syscall-mode=seccomp", "--root", str(root),
                          "--", "python3", "-c", HOSTILE, str(host_prog)],
                         capture_output=True, text=True, timeout=120)
    assert SECRET not in got.stdout + got.stderr
    assert got.returncode == 0 and got.stdout.endswith("done\n"), got.stdout + got.stderr
    lines = dict(ln.split(": ", 1) for ln in got.stdout.splitlines() if ": " in ln)
    assert lines == WANT, got.stdout + got.stderr


def test_fifo_between_two_programs_in_the_root(ROOT):
    """A blocking FIFO open is answered by a child of the supervisor: the two ends meet."""
    root, _ = ROOT
    script = "rm -f /tmp/f; mkfifo /tmp/f; (echo through-the-fifo > /tmp/f &); cat /tmp/f; rm /tmp/f"
    got = subprocess.run([sys.executable, "-m", "kbox", "run", "--syscall-mode=seccomp", "--root", str(root),
                          "--", "sh", "-c", script], capture_output=True, text=True, timeout=60)
    assert (got.returncode, got.stdout) == (0, "through-the-fifo\n"), got.stderr
