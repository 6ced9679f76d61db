"""The trace formatter and the syscall/errno/signal tables of the C core (csrc/trace/,
csrc/arch/*/sysent.c), driven through libkbox.so.

kbox_api_trace_format() formats a call as if this Python process had made it: pointer
arguments are addresses of cffi buffers here, read through the same struct kbox_mem
interface the tiers use (process_vm_readv on ourselves, so bad pointers are safe).  Expected
lines are strace's conventions, written out in full.
"""
from __future__ import annotations

import ctypes
import errno
import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kbox import native

REPO = Path(__file__).resolve().parents[1]
HOST = native.host_arch()

RET_KNOWN, RET_UNKNOWN, RET_NONE = 0, 1, 2
TIER_SECCOMP, TIER_TRAP, TIER_REWRITE = 0, 1, 2
UNMAPPED = 0x10  # below vm.mmap_min_addr: never mapped


@pytest.fixture(scope="module")
def LIB() -> Any:
    return native.lib()


@pytest.fixture(scope="module")
def FFI() -> Any:
    return native.ffi()


class Tracer:
    """Builds argument memory in this process and formats calls with it."""

    def __init__(self, ffi: Any, lib: Any) -> None:
        self.ffi, self.lib = ffi, lib
        self.keep: list[Any] = []

    def mem(self, data: bytes) -> int:
        buf = self.ffi.new("char[]", data)  # cffi appends a NUL
        self.keep.append(buf)
        return int(self.ffi.cast("uintptr_t", buf))

    def ptr_array(self, items: list[int]) -> int:
        arr = self.ffi.new("uint64_t[]", items + [0])
        self.keep.append(arr)
        return int(self.ffi.cast("uintptr_t", arr))

    def nr(self, name: str) -> int:
        nr = self.lib.kbox_api_syscall_number(name.encode())
        assert nr >= 0, name
        return nr

    def raw(self, call: str | int, args: list[Any], ret: int = 0, state: int = RET_KNOWN,
            json_mode: bool = False, strsize: int = 0, cap: int = 4096, show_pid: bool = False,
            pid: int = 10, tid: int = 11, tier: int = TIER_TRAP) -> tuple[int, bytes]:
        nr = call if isinstance(call, int) else self.nr(call)
        vals = [self.mem(a) if isinstance(a, bytes) else a for a in args]
        vals = [v & (2**64 - 1) for v in vals] + [0] * (6 - len(vals))
        argv = self.ffi.new("uint64_t[6]", vals)
        out = self.ffi.new("char[]", cap + 64)
        self.ffi.memmove(out + cap, b"\xaa" * 64, 64)  # guard bytes past the buffer
        n = self.lib.kbox_api_trace_format(out, cap, nr, argv, ret, state, int(json_mode),
                                           int(show_pid), strsize, pid, tid, tier)
        assert self.ffi.buffer(out + cap, 64)[:] == b"\xaa" * 64, "wrote past the buffer"
        return n, self.ffi.string(out)

    def line(self, call: str | int, args: list[Any], ret: int = 0, **kw: Any) -> str:
        n, text = self.raw(call, args, ret, **kw)
        assert n == len(text), (n, text)
        assert text.endswith(b"\n") and text.count(b"\n") == 1
        return text[:-1].decode("ascii")

    def obj(self, call: str | int, args: list[Any], ret: int = 0, **kw: Any) -> dict[str, Any]:
        return json.loads(self.line(call, args, ret, json_mode=True, **kw))


@pytest.fixture()
def T(FFI: Any, LIB: Any) -> Tracer:
    return Tracer(FFI, LIB)


AT_FDCWD = -100


# ---- text mode ----

def test_openat_is_formatted_like_strace(T: Tracer) -> None:
    assert T.line("openat", [AT_FDCWD, b"/etc/hostname", os.O_RDONLY], 3) == \
        'openat(AT_FDCWD, "/etc/hostname", O_RDONLY) = 3'


def test_open_flags_are_decoded_like_strace(T: Tracer) -> None:
    creat = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    assert T.line("openat", [AT_FDCWD, b"out", creat, 0o644], 4) == \
        'openat(AT_FDCWD, "out", O_WRONLY|O_CREAT|O_TRUNC, 0644) = 4'
    # Without O_CREAT the mode argument is not shown at all.
    assert T.line("openat", [5, b"d", os.O_RDWR | os.O_CLOEXEC, 0o777], 6) == \
        'openat(5, "d", O_RDWR|O_CLOEXEC) = 6'
    dirflags = os.O_RDONLY | os.O_NONBLOCK | os.O_DIRECTORY | os.O_CLOEXEC
    assert T.line("openat", [AT_FDCWD, b"/etc", dirflags], 3) == \
        'openat(AT_FDCWD, "/etc", O_RDONLY|O_NONBLOCK|O_DIRECTORY|O_CLOEXEC) = 3'
    # Bits no flag names are appended in hex.
    assert T.line("openat", [AT_FDCWD, b"x", os.O_APPEND | 0x40000000], 3) == \
        'openat(AT_FDCWD, "x", O_RDONLY|O_APPEND|0x40000000) = 3'
    # O_TMPFILE includes O_DIRECTORY's bit and shows the mode.
    assert T.line("openat", [AT_FDCWD, b"/tmp", os.O_RDWR | os.O_TMPFILE, 0o600], 3) == \
        'openat(AT_FDCWD, "/tmp", O_RDWR|O_TMPFILE, 0600) = 3'
    assert T.line("pipe2", [T.mem(b"\x03\0\0\0\x04\0\0\0"), os.O_CLOEXEC], 0) == \
        "pipe2([3, 4], O_CLOEXEC) = 0"


def test_errors_show_the_errno_name_and_glibc_message(T: Tracer) -> None:
    assert T.line("openat", [AT_FDCWD, b"/nope", os.O_RDONLY], -errno.ENOENT) == \
        'openat(AT_FDCWD, "/nope", O_RDONLY) = -1 ENOENT (No such file or directory)'
    assert T.line("close", [99], -errno.EBADF) == "close(99) = -1 EBADF (Bad file descriptor)"
    assert T.line("close", [3], -600) == "close(3) = -1 (errno 600)"
    assert T.line("close", [3], -512) == \
        "close(3) = -1 ERESTARTSYS (To be restarted if SA_RESTART is set)"


def test_mmap_prot_and_flags_are_named_and_addresses_are_hex(T: Tracer) -> None:
    anon = 0x20  # MAP_ANONYMOUS on both arches
    assert T.line("mmap", [0, 8192, 3, 0x02 | anon, -1, 0], 0x7F0000001000) == \
        "mmap(NULL, 8192, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = 0x7f0000001000"
    # An int argument arrives with undefined upper bits: -1 in 32 bits is still -1.
    assert T.line("mmap", [0x7F0000000000, 4096, 5, 0x01 | 0x10, 0xFFFFFFFF, 0x2000],
                  0x7F0000000000) == \
        "mmap(0x7f0000000000, 4096, PROT_READ|PROT_EXEC, MAP_SHARED|MAP_FIXED, -1, 0x2000)" \
        " = 0x7f0000000000"
    assert T.line("mmap", [0, 4096, 0, 0x22, -1, 0], -errno.ENOMEM) == \
        "mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = -1 ENOMEM " \
        "(Cannot allocate memory)"
    assert T.line("mprotect", [0x1000, 4096, 1 | 0x100], 0) == \
        "mprotect(0x1000, 4096, PROT_READ|0x100) = 0"
    assert T.line("brk", [0], 0x55555555A000) == "brk(NULL) = 0x55555555a000"


def test_strings_are_escaped_and_cut_at_strsize_like_strace(T: Tracer) -> None:
    data = b'hello\n"q"\\\t\x00\x01\x7f\xff7'
    assert T.line("read", [3, data, 4096], len(data)) == \
        r'read(3, "hello\n\"q\"\\\t\0\1\177\3777", 4096) = 16'
    # An octal escape followed by a digit is written with three digits.
    assert T.line("write", [1, b"\x001", 2], 2) == r'write(1, "\0001", 2) = 2'
    assert T.line("write", [1, b"a" * 100, 100], 100) == \
        'write(1, "' + "a" * 32 + '"..., 100) = 100'
    assert T.line("write", [1, b"abcdefgh", 8], 8, strsize=5) == 'write(1, "abcde"..., 8) = 8'
    # Exactly strsize bytes: no ellipsis.
    assert T.line("write", [1, b"b" * 32, 32], 32) == 'write(1, "' + "b" * 32 + '", 32) = 32'
    # Paths are shown whole (strace does not apply -s to them).
    long_path = b"/" + b"p" * 200
    assert T.line("chdir", [long_path], 0) == f'chdir("{long_path.decode()}") = 0'
    # Plain strings obey strsize.
    assert T.line("memfd_create", [b"n" * 40, 1], 3) == \
        'memfd_create("' + "n" * 32 + '"..., 0x1) = 3'


def test_read_buffer_is_shown_only_for_a_known_success(T: Tracer) -> None:
    buf = T.mem(b"secret")
    assert T.line("read", [0, buf, 64], 6) == 'read(0, "secret", 64) = 6'
    assert T.line("read", [0, buf, 64], 0) == 'read(0, "", 64) = 0'
    assert T.line("read", [0, buf, 64], state=RET_UNKNOWN) == f"read(0, {buf:#x}, 64) = ?"
    assert T.line("read", [0, buf, 64], -errno.EINTR) == \
        f"read(0, {buf:#x}, 64) = -1 EINTR (Interrupted system call)"


def test_execve_shows_argv_and_counts_envp(T: Tracer) -> None:
    argv = T.ptr_array([T.mem(b"ls"), T.mem(b"-la")])
    envp = T.ptr_array([T.mem(b"A=1"), T.mem(b"B=2"), T.mem(b"C=3")])
    assert T.line("execve", [b"/bin/ls", argv, envp], state=RET_NONE) == \
        f'execve("/bin/ls", ["ls", "-la"], {envp:#x} /* 3 vars */) = ?'
    assert T.line("execve", [b"/nope", argv, 0], -errno.ENOENT) == \
        'execve("/nope", ["ls", "-la"], NULL) = -1 ENOENT (No such file or directory)'
    many = T.ptr_array([T.mem(b"x")] * 40)
    assert T.line("execve", [b"/x", many, envp], state=RET_NONE, strsize=3) == \
        f'execve("/x", ["x", "x", "x", ...], {envp:#x} /* 3 vars */) = ?'


def test_unreadable_pointers_are_printed_in_hex(T: Tracer) -> None:
    assert T.line("openat", [AT_FDCWD, UNMAPPED, os.O_RDONLY], -errno.EFAULT) == \
        "openat(AT_FDCWD, 0x10, O_RDONLY) = -1 EFAULT (Bad address)"
    assert T.line("write", [1, UNMAPPED, 5], -errno.EFAULT) == \
        "write(1, 0x10, 5) = -1 EFAULT (Bad address)"
    assert T.line("execve", [b"/bin/true", UNMAPPED, UNMAPPED], -errno.EFAULT) == \
        'execve("/bin/true", 0x10, 0x10) = -1 EFAULT (Bad address)'


def test_results_that_are_unknown_or_never_come_print_a_question_mark(T: Tracer) -> None:
    assert T.line("exit_group", [0], state=RET_NONE) == "exit_group(0) = ?"
    assert T.line("close", [3], state=RET_UNKNOWN) == "close(3) = ?"


def test_signals_are_named(T: Tracer) -> None:
    assert T.line("kill", [42, 15], 0) == "kill(42, SIGTERM) = 0"
    assert T.line("tgkill", [42, 43, 9], 0) == "tgkill(42, 43, SIGKILL) = 0"
    assert T.line("kill", [42, 0], 0) == "kill(42, 0) = 0"
    assert T.line("kill", [42, 99], -errno.EINVAL) == \
        "kill(42, 99) = -1 EINVAL (Invalid argument)"
    sigset = (1 << (2 - 1)) | (1 << (15 - 1))  # SIGINT, SIGTERM
    assert T.line("rt_sigprocmask", [0, T.mem(sigset.to_bytes(8, "little")), 0, 8], 0) == \
        "rt_sigprocmask(SIG_BLOCK, [INT TERM], NULL, 8) = 0"
    full_but_kill = (2**64 - 1) & ~(1 << 8)
    assert T.line("rt_sigprocmask", [2, T.mem(full_but_kill.to_bytes(8, "little")), 0, 8]) == \
        "rt_sigprocmask(SIG_SETMASK, ~[KILL], NULL, 8) = 0"
    # struct sigaction: handler, flags, restorer, mask (the same layout on both arches).
    sa = b"".join(x.to_bytes(8, "little") for x in
                  (0x401000, 0x04000000 | 0x10000000, 0x402000, 1 << (17 - 1)))
    assert T.line("rt_sigaction", [17, T.mem(sa), 0, 8], 0) == \
        "rt_sigaction(SIGCHLD, {sa_handler=0x401000, sa_mask=[CHLD], " \
        "sa_flags=SA_RESTORER|SA_RESTART, sa_restorer=0x402000}, NULL, 8) = 0"
    ign = b"".join(x.to_bytes(8, "little") for x in (1, 0, 0, 0))
    assert T.line("rt_sigaction", [13, T.mem(ign), 0, 8], 0) == \
        "rt_sigaction(SIGPIPE, {sa_handler=SIG_IGN, sa_mask=[], sa_flags=0}, NULL, 8) = 0"


def test_process_calls_are_decoded(T: Tracer) -> None:
    exited = (3 << 8).to_bytes(4, "little")
    assert T.line("wait4", [-1, T.mem(exited), 0, 0], 42) == \
        "wait4(-1, [{WIFEXITED(s) && WEXITSTATUS(s) == 3}], 0, NULL) = 42"
    killed = (9 | 0x80).to_bytes(4, "little")
    assert T.line("wait4", [42, T.mem(killed), 1 | 0x40000000, 0], 42) == \
        "wait4(42, [{WIFSIGNALED(s) && WTERMSIG(s) == SIGKILL && WCOREDUMP(s)}], " \
        "WNOHANG|__WALL, NULL) = 42"
    # clone's low byte is the exit signal.
    flags = 0x01000000 | 0x00200000 | 17  # CHILD_SETTID | CHILD_CLEARTID | SIGCHLD
    line = T.line("clone", [flags, 0, 0, 0x7F00, 0], 55)
    assert line.startswith("clone(CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD, NULL, NULL, ")
    assert line.endswith(") = 55")
    assert T.line("exit_group", [3], state=RET_NONE) == "exit_group(3) = ?"
    assert T.line("getpid", [], 7) == "getpid() = 7"


def test_file_calls_are_decoded(T: Tracer) -> None:
    assert T.line("lseek", [3, -5, 2], 95) == "lseek(3, -5, SEEK_END) = 95"
    assert T.line("dup3", [3, 4, os.O_CLOEXEC], 4) == "dup3(3, 4, O_CLOEXEC) = 4"
    assert T.line("unlinkat", [AT_FDCWD, b"d", 0x200], 0) == \
        'unlinkat(AT_FDCWD, "d", AT_REMOVEDIR) = 0'
    assert T.line("faccessat", [AT_FDCWD, b"f", os.R_OK | os.X_OK], 0) == \
        'faccessat(AT_FDCWD, "f", R_OK|X_OK) = 0'
    assert T.line("faccessat", [AT_FDCWD, b"f", os.F_OK], 0) == 'faccessat(AT_FDCWD, "f", F_OK) = 0'
    assert T.line("umask", [0o22], 0o77) == "umask(022) = 077"
    assert T.line("mkdirat", [AT_FDCWD, b"new", 0o755], 0) == 'mkdirat(AT_FDCWD, "new", 0755) = 0'
    cwd = T.mem(b"/home/user\0junk")
    assert T.line("getcwd", [cwd, 4096], 11) == 'getcwd("/home/user", 4096) = 11'
    assert T.line("readlinkat", [AT_FDCWD, b"/proc/self/exe", T.mem(b"/usr/bin/ls"), 4096],
                  11) == 'readlinkat(AT_FDCWD, "/proc/self/exe", "/usr/bin/ls", 4096) = 11'


def test_iovecs_are_shown_like_strace(T: Tracer) -> None:
    vec = T.ptr_array([T.mem(b"hello"), 5, T.mem(b"\n"), 1])
    assert T.line("writev", [1, vec, 2], 6) == \
        'writev(1, [{iov_base="hello", iov_len=5}, {iov_base="\\n", iov_len=1}], 2) = 6'
    # readv shows only what was read: here 3 bytes of the first buffer, none of the second.
    assert T.line("readv", [0, vec, 2], 3) == \
        'readv(0, [{iov_base="hel", iov_len=5}, {iov_base="", iov_len=1}], 2) = 3'
    assert T.line("readv", [0, vec, 2], state=RET_UNKNOWN) == f"readv(0, {vec:#x}, 2) = ?"


def test_fstat_output_is_decoded_from_the_kernels_struct(T: Tracer, tmp_path: Path) -> None:
    path = tmp_path / "six"
    path.write_bytes(b"123456")
    os.chmod(path, 0o640)
    fd = os.open(path, os.O_RDONLY)
    try:
        buf = T.ffi.new("char[]", 256)
        T.keep.append(buf)
        addr = int(T.ffi.cast("uintptr_t", buf))
        nr = T.nr("fstat")
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        assert libc.syscall(ctypes.c_long(nr), ctypes.c_long(fd), ctypes.c_void_p(addr)) == 0
        assert T.line("fstat", [fd, addr], 0) == \
            f"fstat({fd}, {{st_mode=S_IFREG|0640, st_size=6, ...}}) = 0"
        assert T.line("fstat", [fd, addr], state=RET_UNKNOWN) == f"fstat({fd}, {addr:#x}) = ?"
    finally:
        os.close(fd)


def test_ops_of_ioctl_fcntl_prctl_futex_are_named(T: Tracer) -> None:
    import termios
    assert T.line("ioctl", [1, termios.TCGETS, 0x7FFD0000], 0) == \
        "ioctl(1, TCGETS, 0x7ffd0000) = 0"
    assert T.line("ioctl", [1, termios.TIOCGWINSZ, 0x7FFD0000], -errno.ENOTTY) == \
        "ioctl(1, TIOCGWINSZ, 0x7ffd0000) = -1 ENOTTY (Inappropriate ioctl for device)"
    assert T.line("ioctl", [1, 0xDEAD, 0], -errno.ENOTTY).startswith("ioctl(1, 0xdead, 0) =")
    assert T.line("fcntl", [3, 1], 1) == "fcntl(3, F_GETFD) = 1"
    assert T.line("fcntl", [3, 4, os.O_RDWR | os.O_NONBLOCK], 0) == \
        "fcntl(3, F_SETFL, O_RDWR|O_NONBLOCK) = 0"
    assert T.line("fcntl", [3, 1030, 10], 10) == "fcntl(3, F_DUPFD_CLOEXEC, 10) = 10"
    assert T.line("fcntl", [3, 2, 1], 0) == "fcntl(3, F_SETFD, FD_CLOEXEC) = 0"
    assert T.line("prctl", [15, b"worker", 0, 0, 0], 0) == 'prctl(PR_SET_NAME, "worker") = 0'
    assert T.line("prctl", [38, 1, 0, 0, 0], 0) == "prctl(PR_SET_NO_NEW_PRIVS, 0x1, 0, 0, 0) = 0"
    assert T.line("futex", [0x1000, 1 | 128, 1, 0, 0, 0], 0) == \
        "futex(0x1000, FUTEX_WAKE_PRIVATE, 1) = 0"
    assert T.line("futex", [0x1000, 0 | 128, 2, 0, 0, 0], -errno.EAGAIN) == \
        "futex(0x1000, FUTEX_WAIT_PRIVATE, 2, NULL) = -1 EAGAIN (Resource temporarily unavailable)"
    assert T.line("futex", [0x1000, 9 | 128 | 256, 0, 0, 0, 0xFFFFFFFF], 0) == \
        "futex(0x1000, FUTEX_WAIT_BITSET_PRIVATE|FUTEX_CLOCK_REALTIME, 0, NULL, NULL, " \
        "0xffffffff) = 0"
    if HOST == "x86_64":
        assert T.line("arch_prctl", [0x1002, 0x7F0000000740], 0) == \
            "arch_prctl(ARCH_SET_FS, 0x7f0000000740) = 0"


def test_network_and_time_structs_are_decoded(T: Tracer) -> None:
    sun = (1).to_bytes(2, "little") + b"/run/x.sock\0"
    assert T.line("connect", [3, T.mem(sun), len(sun)], 0) == \
        'connect(3, {sa_family=AF_UNIX, sun_path="/run/x.sock"}, 14) = 0'
    sin = (2).to_bytes(2, "little") + (80).to_bytes(2, "big") + bytes([127, 0, 0, 1]) + b"\0" * 8
    assert T.line("bind", [3, T.mem(sin), 16], 0) == \
        'bind(3, {sa_family=AF_INET, sin_port=htons(80), sin_addr=inet_addr("127.0.0.1")}, 16) = 0'
    assert T.line("socket", [1, 1 | 0o2000000 | 0o4000, 0], 3) == \
        "socket(AF_UNIX, SOCK_STREAM|SOCK_CLOEXEC|SOCK_NONBLOCK, 0) = 3"
    assert T.line("sendto", [3, b"hi", 2, 0x4000, 0, 0], 2) == \
        'sendto(3, "hi", 2, MSG_NOSIGNAL, NULL, 0) = 2'
    ts = (1).to_bytes(8, "little") + (500).to_bytes(8, "little")
    assert T.line("clock_gettime", [1, T.mem(ts)], 0) == \
        "clock_gettime(CLOCK_MONOTONIC, {tv_sec=1, tv_nsec=500}) = 0"
    assert T.line("nanosleep", [T.mem(ts), 0], 0) == "nanosleep({tv_sec=1, tv_nsec=500}, NULL) = 0"
    pfd = (3).to_bytes(4, "little") + (1 | 4).to_bytes(2, "little") + b"\0\0"
    assert T.line("ppoll", [T.mem(pfd), 1, 0, 0, 8], 1) == \
        "ppoll([{fd=3, events=POLLIN|POLLOUT}], 1, NULL, NULL, 8) = 1"
    assert T.line("prlimit64", [0, 7, 0, 0x7FFD0000], 0) == \
        "prlimit64(0, RLIMIT_NOFILE, NULL, 0x7ffd0000) = 0"


def test_unknown_syscall_numbers_print_their_number_and_six_arguments(T: Tracer) -> None:
    assert T.line(500, [1, 2, 0x7FFF], -errno.ENOSYS) == \
        "syscall_0x1f4(0x1, 0x2, 0x7fff, 0, 0, 0) = -1 ENOSYS (Function not implemented)"
    obj = T.obj(500, [1], -errno.ENOSYS)
    assert obj["name"] == "syscall_0x1f4" and obj["nr"] == 500 and obj["errno"] == "ENOSYS"


def test_show_pid_prefixes_the_thread_id(T: Tracer) -> None:
    assert T.line("getpid", [], 10, show_pid=True, pid=10, tid=12) == "[pid 12] getpid() = 10"


# ---- JSON mode ----

def test_json_line_has_the_documented_fields(T: Tracer) -> None:
    obj = T.obj("openat", [AT_FDCWD, b"/etc/hostname", os.O_RDONLY], 3, pid=1, tid=2,
                tier=TIER_SECCOMP)
    assert obj == {"pid": 1, "tid": 2, "nr": T.nr("openat"), "name": "openat",
                   "args": ["AT_FDCWD", '"/etc/hostname"', "O_RDONLY"], "ret": 3,
                   "errno": None, "tier": "seccomp"}
    err = T.obj("openat", [AT_FDCWD, b"/nope", os.O_RDONLY], -errno.ENOENT, tier=TIER_REWRITE)
    assert (err["ret"], err["errno"], err["tier"]) == (-1, "ENOENT", "rewrite")
    for state in (RET_UNKNOWN, RET_NONE):
        o = T.obj("exit_group", [0], state=state)
        assert (o["ret"], o["errno"], o["args"]) == (None, None, ["0"])
    assert T.obj("close", [3], -600)["errno"] == 600


def test_json_args_are_the_text_renderings(T: Tracer) -> None:
    argv = T.ptr_array([T.mem(b"ls"), T.mem(b"-l")])
    envp = T.ptr_array([T.mem(b"A=1")])
    cases: list[tuple[str, list[Any], int, int]] = [
        ("execve", [b"/bin/ls", argv, envp], 0, RET_NONE),
        ("mmap", [0, 4096, 3, 0x22, -1, 0], 0x7F0000000000, RET_KNOWN),
        ("read", [3, b'q"\\\n\x01\xff', 6], 6, RET_KNOWN),
    ]
    for name, args, ret, state in cases:
        text = T.line(name, args, ret, state=state)
        obj = T.obj(name, args, ret, state=state)
        assert text.startswith(name + "(" + ", ".join(obj["args"]) + ")"), (text, obj)


def test_json_survives_every_byte_value_in_strings(T: Tracer) -> None:
    every = bytes(range(256))
    for i in range(0, 256, 16):
        chunk = every[i:i + 16]
        obj = T.obj("write", [1, chunk, len(chunk)], len(chunk))
        text = T.line("write", [1, chunk, len(chunk)], len(chunk))
        assert obj["args"][1] == text[len("write(1, "):-len(", 16) = 16")]
    path = bytes(range(1, 256))
    obj = T.obj("chdir", [path], 0)
    assert obj["args"][0].startswith('"\\1\\2\\3') and obj["args"][0].endswith('\\376\\377"')
    json.dumps(obj)  # round-trips


def test_output_never_exceeds_the_buffer_and_always_ends_in_a_newline(T: Tracer) -> None:
    argv = T.ptr_array([T.mem(b"a" * 20)] * 10)
    call = ("execve", [b"/bin/" + b"x" * 100, argv, 0])
    full_text = T.raw(*call, state=RET_NONE)[1]
    for cap in list(range(2, 300)) + [512, 1024]:
        for json_mode in (False, True):
            n, out = T.raw(*call, state=RET_NONE, json_mode=json_mode, cap=cap)
            assert len(out) <= cap - 1
            assert out.endswith(b"\n"), (cap, json_mode, out)
            if not json_mode and len(full_text) <= cap - 1:
                assert out == full_text and n == len(out)
            if json_mode and cap >= 160:
                obj = json.loads(out)
                assert obj["name"] == "execve"
                if n < 0:
                    assert obj["truncated"] is True and obj["args"] == []
    assert T.raw(*call, state=RET_NONE, cap=1)[1] == b""


# ---- tables ----

def test_every_syscall_in_the_table_round_trips_between_name_and_number(LIB: Any,
                                                                        FFI: Any) -> None:
    names = {}
    for nr in range(LIB.kbox_api_nr_max()):
        p = LIB.kbox_api_syscall_name(nr)
        if p == FFI.NULL:
            continue
        name = FFI.string(p).decode()
        assert LIB.kbox_api_syscall_number(name.encode()) == nr, name
        assert 0 <= LIB.kbox_api_syscall_nargs(nr) <= 6
        names[name] = nr
    assert LIB.kbox_api_syscall_number(b"no_such_call") == -1
    assert LIB.kbox_api_syscall_name(-1) == FFI.NULL
    assert LIB.kbox_api_syscall_name(100000) == FFI.NULL
    assert len(names) > 300
    for name, nargs in [("read", 3), ("openat", 4), ("mmap", 6), ("getpid", 0),
                        ("exit_group", 1), ("process_vm_writev", 6), ("io_uring_enter", 6)]:
        assert LIB.kbox_api_syscall_nargs(names[name]) == nargs, name


def header_numbers(cc: str, include_dirs: list[str], defines: list[str]) -> dict[str, int]:
    """__NR_* as the given compiler's preprocessor sees asm/unistd.h."""
    cmd = [cc, "-E", "-dM", "-x", "c", "-"]
    for d in include_dirs:
        cmd[1:1] = ["-isystem", d]
    cmd[1:1] = [f"-D{d}" for d in defines]
    out = subprocess.run(cmd, input="#include <asm/unistd.h>\n", capture_output=True,
                         text=True, check=True, timeout=60).stdout
    macros = dict(re.findall(r"^#define (__NR\w*) (\S+)$", out, re.M))
    result = {}
    for macro, val in macros.items():
        if not macro.startswith("__NR_") or macro in ("__NR_syscalls",
                                                       "__NR_arch_specific_syscall"):
            continue
        while val in macros:
            val = macros[val]
        result[macro[5:]] = int(val)
    return result


def gen_module() -> Any:
    spec = importlib.util.spec_from_file_location("gen_sysent", REPO / "scripts/gen-sysent.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def table_source(arch: str) -> dict[str, int]:
    text = (REPO / f"csrc/arch/{arch}/sysent.c").read_text()
    return {name: int(nr) for nr, name in re.findall(r'^\s+\[(\d+)\] = \{ "(\w+)"', text, re.M)}


@pytest.mark.skipif(HOST != "x86_64", reason="compares with the x86_64 host's uapi header")
def test_host_table_matches_the_uapi_header(LIB: Any, FFI: Any) -> None:
    header = header_numbers("gcc", [], [])
    newer = {name: nr for nr, name in gen_module().NEWER_SYSCALLS.items()}
    assert len(header) > 350
    for name, nr in {**header, **newer}.items():
        assert LIB.kbox_api_syscall_number(name.encode()) == nr, name
    named = sum(LIB.kbox_api_syscall_name(nr) != FFI.NULL
                for nr in range(LIB.kbox_api_nr_max()))
    assert named == len(header) + len(set(newer) - set(header))


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None,
                    reason="needs the aarch64 cross compiler (gcc-aarch64-linux-gnu)")
def test_aarch64_table_matches_the_cross_compilers_headers(tmp_path: Path) -> None:
    header = header_numbers("aarch64-linux-gnu-gcc", [], [])
    newer = {name: nr for nr, name in gen_module().NEWER_SYSCALLS.items()}
    assert table_source("aarch64") == {**header, **newer}
    # Spot checks of numbers that differ from x86_64 (the generic table).
    assert (header["openat"], header["read"], header["mmap"], header["clone"]) == (56, 63, 222, 220)
    assert "open" not in header and "fork" not in header
    # The table's _Static_asserts compare every number with the cross headers at build time.
    subprocess.run(["aarch64-linux-gnu-gcc", "-std=gnu11", "-ffreestanding", "-c",
                    "-I", str(REPO / "csrc"), "-I", str(REPO / "csrc/arch/aarch64"),
                    str(REPO / "csrc/arch/aarch64/sysent.c"), "-o", str(tmp_path / "s.o")],
                   check=True, timeout=120)


QEMU_AARCH64 = shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static")


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None or QEMU_AARCH64 is None,
                    reason="needs aarch64-linux-gnu-gcc and qemu-user")
def test_aarch64_build_names_and_formats_calls_under_qemu_user(tmp_path: Path) -> None:
    """Builds the trace code for aarch64 and runs it: arm64's own numbering and flag bits
    (O_DIRECTORY is 040000 there, 0200000 on x86_64)."""
    main = tmp_path / "main.c"
    main.write_text(r"""
#include <stdio.h>
#include <stdint.h>
#include "trace/trace.h"
static long rd(const struct kbox_mem *m, uint64_t a, void *b, size_t n)
{ for (size_t i = 0; i < n; i++) ((char *)b)[i] = ((const char *)(uintptr_t)a)[i]; return (long)n; }
int main(void)
{
    for (int nr = 0; nr < KBOX_NR_MAX; nr++) {
        const char *n = kbox_syscall_name(nr);
        if (n && kbox_syscall_number(n) != nr) { printf("MISMATCH %d %s\n", nr, n); return 1; }
    }
    struct kbox_mem mem = { .read = rd };
    struct kbox_req req = { .nr = 56, .args = { (uint64_t)-100, (uintptr_t)"/etc", 040000 | 02000000 },
                            .tier = KBOX_TIER_TRAP, .mem = &mem };
    struct kbox_trace_opts o = { 0 };
    char line[256]; struct kbox_buf b; kbox_buf_init(&b, line, sizeof line);
    kbox_trace_format(&b, &o, &req, 3, KBOX_RET_KNOWN, 1, 1);
    fputs(line, stdout);
    printf("%d %d %s\n", kbox_syscall_number("openat"), kbox_syscall_number("clone3"),
           kbox_syscall_name(222));
    return 0;
}
""")
    c = REPO / "csrc"
    free = ["-ffreestanding", "-fno-stack-protector", "-mgeneral-regs-only", "-fno-builtin",
            "-fno-tree-loop-distribute-patterns", "-std=gnu11", "-O2", "-I", str(c),
            "-I", str(c / "arch/aarch64"), "-D_GNU_SOURCE"]
    objs = []
    for src in ["trace/trace.c", "trace/values.c", "trace/names.c", "trace/errnoent.c", "arch/aarch64/sysent.c",
                "lib/buf.c"]:
        obj = tmp_path / (Path(src).stem + ".o")
        subprocess.run(["aarch64-linux-gnu-gcc", *free, "-c", str(c / src), "-o", str(obj)],
                       check=True, timeout=120)
        objs.append(str(obj))
    # kbox_str* from lib/str.c, without its memcpy/memset (libc provides those here).
    shim = tmp_path / "str.c"
    text = (c / "lib/str.c").read_text()
    shim.write_text('#include "lib/str.h"\n' + text[text.index("size_t kbox_strlen"):])
    subprocess.run(["aarch64-linux-gnu-gcc", *free, "-c", str(shim), "-o",
                    str(tmp_path / "str.o")], check=True, timeout=120)
    exe = tmp_path / "t"
    subprocess.run(["aarch64-linux-gnu-gcc", "-static", "-O1", "-I", str(c), "-I",
                    str(c / "arch/aarch64"), str(main), *objs, str(tmp_path / "str.o"), "-o",
                    str(exe)], check=True, timeout=120)
    out = subprocess.run([QEMU_AARCH64, str(exe)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines() == [
        'openat(AT_FDCWD, "/etc", O_RDONLY|O_DIRECTORY|O_CLOEXEC) = 3',
        "56 435 mmap",
    ]


def test_generated_tables_are_up_to_date_with_the_generator() -> None:
    if shutil.which("cpp") is None:
        pytest.skip("needs cpp to evaluate the uapi headers")
    if not Path("/usr/aarch64-linux-gnu/include/asm-generic/unistd.h").exists():
        pytest.skip("needs libc6-dev-arm64-cross for the aarch64 headers")
    r = subprocess.run(["python3", str(REPO / "scripts/gen-sysent.py"), "--check"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_at_least_80_common_syscalls_have_decoded_arguments(arch: str) -> None:
    gen = gen_module()
    decoded = set(gen.parse_signatures(gen.SIGNATURES)) | set(
        gen.parse_signatures(gen.ARCH_SIGNATURES[arch]))
    present = decoded & set(table_source(arch))
    assert len(present) >= 80, len(present)
    for must in ["openat", "read", "write", "close", "mmap", "execve", "clone", "futex",
                 "newfstatat", "rt_sigaction", "ioctl", "fcntl", "wait4", "prctl"]:
        assert must in present


def test_errno_names_and_messages_match_glibc(LIB: Any, FFI: Any) -> None:
    for e in range(1, 134):
        p = LIB.kbox_api_errno_name(e)
        if p == FFI.NULL:
            continue  # unassigned numbers (41, 58)
        name = FFI.string(p).decode()
        assert LIB.kbox_api_errno_number(name.encode()) == e
        assert getattr(errno, name, e) == e  # (Python lacks EHWPOISON)
        assert FFI.string(LIB.kbox_api_errno_message(e)).decode() == os.strerror(e)
    assert LIB.kbox_api_errno_number(b"EWOULDBLOCK") == errno.EAGAIN
    assert LIB.kbox_api_errno_number(b"ENOTSUP") == errno.EOPNOTSUPP
    assert LIB.kbox_api_errno_number(b"EBOGUS") == -1
    assert LIB.kbox_api_errno_name(0) == FFI.NULL


def test_signal_names(LIB: Any, FFI: Any) -> None:
    import signal
    for sig in (signal.SIGHUP, signal.SIGKILL, signal.SIGSEGV, signal.SIGCHLD, signal.SIGSYS):
        assert FFI.string(LIB.kbox_api_signal_name(sig)).decode() == sig.name
    assert FFI.string(LIB.kbox_api_signal_name(32)) == b"SIGRTMIN"
    assert FFI.string(LIB.kbox_api_signal_name(34)) == b"SIGRT_2"
    assert FFI.string(LIB.kbox_api_signal_name(64)) == b"SIGRT_32"
    assert LIB.kbox_api_signal_name(0) == FFI.NULL
    assert LIB.kbox_api_signal_name(65) == FFI.NULL
