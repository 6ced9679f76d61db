"""The rewrite tier: sites really are rewritten, and rewritten calls are ABI-exact."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from conftest import run, run_mode  # type: ignore[import-not-found]


def rewritten_count(stats: str, name: str) -> tuple[int, int]:
    """(trapped, rewritten) for syscall `name` from a --stats table."""
    for line in stats.splitlines():
        cols = line.split()
        if cols and cols[0] == name and len(cols) == 5:
            return int(cols[3]), int(cols[4])
    raise AssertionError(f"{name} missing from the stats table:\n{stats}")


def assert_abi_preserved(res: Any) -> None:
    """tests/guest/regs.c's verdicts: every one of them must be yes."""
    for line in ("general registers preserved: yes",
                 "result-side registers as the kernel leaves them: yes",
                 "red zone untouched: yes", "vector registers preserved: yes"):
        assert line in res.stdout.splitlines(), res.describe()


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_a_million_rewritten_syscalls_preserve_every_register_and_the_red_zone(
        kind: str, guest_dir: Path, guest_env: dict[str, str]) -> None:
    prog = str(guest_dir / f"regs-{kind}")
    res = run_mode("rewrite", [prog, "1000000"], env=guest_env, stats=True)
    assert res.returncode == 0, res.describe()
    assert_abi_preserved(res)
    trapped, rewritten = rewritten_count(res.stderr, "getpid")
    # The first call traps and rewrites the site; every later one takes the trampoline.
    assert trapped == 1 and rewritten == 999_999, res.describe()


def test_the_fast_path_preserves_registers_too(guest_dir: Path, guest_env: dict[str, str]) -> None:
    # Without --stats no policy applies to getpid: the trampoline runs it directly.
    res = run_mode("rewrite", [str(guest_dir / "regs-dynamic"), "1000000"], env=guest_env)
    assert res.returncode == 0, res.describe()
    assert_abi_preserved(res)


def test_common_libc_calls_are_served_by_the_rewritten_path(guest_dir: Path,
                                                            guest_env: dict[str, str]) -> None:
    res = run_mode("rewrite", [str(guest_dir / "fileio-dynamic")], env=guest_env, stats=True)
    assert res.returncode == 0, res.describe()
    total = sum(int(c[4]) for c in (ln.split() for ln in res.stderr.splitlines())
                if len(c) == 5 and re.fullmatch(r"\d+", c[4]))
    assert total > 0, res.describe()


@pytest.mark.parametrize("mode", ["trap", "rewrite"])
def test_in_process_tiers_refuse_writable_executable_memory(mode: str, guest_dir: Path,
                                                            guest_env: dict[str, str]) -> None:
    prog = [str(guest_dir / "jit-dynamic"), "wx"]
    res = run_mode(mode, prog, env=guest_env, trace=True)
    assert res.stdout.splitlines() == ["W+X mapping: EACCES", "mprotect to W+X: EACCES"], res.describe()
    # The refusal shows in the trace like any other failed call.
    assert re.search(r"mmap\(NULL, \d+, PROT_READ\|PROT_WRITE\|PROT_EXEC, .*= -1 EACCES", res.stderr), \
        res.describe()
    allowed = run(kbox_argv_with(mode, prog, "--allow-wx"), env=guest_env)
    assert allowed.stdout.splitlines() == ["W+X mapping: granted", "mprotect to W+X: granted"], \
        allowed.describe()


def test_seccomp_tier_does_not_impose_w_xor_x(guest_dir: Path, guest_env: dict[str, str]) -> None:
    res = run_mode("seccomp", [str(guest_dir / "jit-dynamic"), "wx"], env=guest_env)
    assert "W+X mapping: granted" in res.stdout, res.describe()


def test_code_made_executable_after_start_is_interposed(guest_dir: Path,
                                                        guest_env: dict[str, str]) -> None:
    # The JIT page's getppid calls go through kbox: deny getppid and the JIT sees EPERM.
    res = run_mode("rewrite", [str(guest_dir / "jit-static")], env=guest_env, deny=["getppid"])
    assert "JIT getppid matches libc: yes" in res.stdout, res.describe()  # both see -EPERM
    stats = run_mode("rewrite", [str(guest_dir / "jit-static")], env=guest_env, stats=True)
    trapped, rewritten = rewritten_count(stats.stderr, "getppid")
    assert trapped + rewritten >= 1_001, stats.describe()  # 2 x 500 JIT calls + libc's


def kbox_argv_with(mode: str, argv: list[str], *extra: str) -> list[str]:
    from conftest import kbox_argv  # type: ignore[import-not-found]

    cmd = kbox_argv(mode, argv)
    sep = cmd.index("--")
    return [*cmd[:sep], *extra, *cmd[sep:]]


@pytest.mark.parametrize("offset,rewritten", [
    (13, True),    # crosses a 16-byte boundary: one locked unaligned store inside the line
    (15, True),    # glibc's tcgetattr has its `mov $16,%eax` here
    (61, True),    # crosses the cache line: two steps through a trapping placeholder
    (63, False),   # even the 2-byte placeholder would cross the line: stays on the trap path
])
def test_sites_at_awkward_offsets_are_patched_atomically_or_left_alone(
        offset: int, rewritten: bool, tmp_path: Path, guest_env: dict[str, str]) -> None:
    import platform
    import subprocess

    if platform.machine() != "x86_64":
        pytest.skip("x86_64's patch windows (aarch64 patches one aligned word)")
    guest_src = Path(__file__).parent / "guest"
    prog = tmp_path / f"regs-at-{offset}"
    subprocess.run(["gcc", "-O2", "-D_GNU_SOURCE", f"-DPROBE_SITE_OFFSET={offset}", "-I",
                    str(guest_src), "-o", str(prog), str(guest_src / "regs.c")], check=True)
    dis = subprocess.run(["objdump", "-d", str(prog)], capture_output=True, text=True).stdout
    site = [int(ln.split(":")[0], 16) for ln in dis.splitlines() if "b8 27 00 00 00" in ln]
    assert site and (site[0] & 63) == offset, "the probe's mov is not where the test wants it"
    res = run_mode("rewrite", [str(prog), "100000"], env=guest_env, stats=True)
    assert res.returncode == 0, res.describe()
    assert_abi_preserved(res)
    trapped, done = rewritten_count(res.stderr, "getpid")
    if rewritten:
        assert trapped == 1 and done == 99_999, res.describe()
    else:
        assert trapped == 100_000 and done == 0, res.describe()


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_short_sites_are_rewritten_only_through_dead_padding(
        kind: str, guest_dir: Path, guest_env: dict[str, str]) -> None:
    """x86_64 sites after a 2-4 byte instruction take `jmp rel8` into nearby padding, but
    only padding that provably never runs (tests/guest/shortsite.c)."""
    res = run_mode("rewrite", [str(guest_dir / f"shortsite-{kind}")], env=guest_env, stats=True)
    assert res.returncode == 0, res.describe()
    assert res.stdout.splitlines() == ["plain short site: ok",
                                       "padding that is a branch target: ok",
                                       "function with an indirect jump: ok",
                                       "padding of the function before: ok"], res.describe()
    # ss_plain's site (getppid) is rewritten after its first call; the other two functions'
    # sites (getpid, getuid) stay on the trap path for every one of their 200 calls.
    trapped, rewritten = rewritten_count(res.stderr, "getppid")
    assert trapped <= 2 and rewritten >= 199, res.describe()
    for name in ("getpid", "getuid"):
        trapped, rewritten = rewritten_count(res.stderr, name)
        assert trapped >= 200, (name, res.describe())
    # ss_prev borrows the previous function's trailing padding, which only .eh_frame_hdr's
    # table locates; static executables have none (gcc links them without it).
    trapped, rewritten = rewritten_count(res.stderr, "getegid")
    if kind == "dynamic":
        assert trapped <= 2 and rewritten >= 199, res.describe()
    else:
        assert trapped >= 200, res.describe()


def test_glibc_read_with_its_two_byte_xor_is_rewritten(guest_env: dict[str, str]) -> None:
    # glibc's read is `xor %eax,%eax; syscall`: a short site.  dd reads one byte at a time.
    import shutil

    dd = shutil.which("dd")
    assert dd, "coreutils dd is part of every Debian system"
    res = run_mode("rewrite", [dd, "if=/dev/zero", "of=/dev/null", "bs=1", "count=5000"],
                   env=guest_env, stats=True)
    assert res.returncode == 0, res.describe()
    trapped, rewritten = rewritten_count(res.stderr, "read")
    assert trapped <= 3 and rewritten >= 4990, res.describe()


DLOPEN_LIB = r"""
long raw_getppid(void)
{
    long r;
#if defined(__x86_64__)
    __asm__ volatile("mov $110, %%eax\n\tsyscall" : "=a"(r) : : "rcx", "r11", "memory");
#else
    register long x8 __asm__("x8") = 173;
    register long x0 __asm__("x0");
    __asm__ volatile("svc #0" : "=r"(x0) : "r"(x8) : "memory");
    r = x0;
#endif
    return r;
}
"""

DLOPEN_MAIN = r"""
#include <dlfcn.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv)
{
    void *h = dlopen(argv[1], RTLD_NOW);
    if (!h) { printf("dlopen: %s\n", dlerror()); return 1; }
    long (*f)(void) = (long (*)(void))dlsym(h, "raw_getppid");
    long want = getppid(), same = 1;
    for (int i = 0; i < 5000; i++)
        same &= f() == want;
    printf("raw syscalls from a dlopened library: %s\n", same ? "match" : "differ");
    return 0;
}
"""


def test_a_dlopened_library_with_raw_syscalls_is_interposed(tmp_path: Path,
                                                            guest_env: dict[str, str]) -> None:
    import subprocess

    (tmp_path / "lib.c").write_text(DLOPEN_LIB)
    (tmp_path / "main.c").write_text(DLOPEN_MAIN)
    lib, prog = tmp_path / "libraw.so", tmp_path / "dlmain"
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(lib), str(tmp_path / "lib.c")],
                   check=True)
    subprocess.run(["gcc", "-O2", "-o", str(prog), str(tmp_path / "main.c"), "-ldl"], check=True)
    res = run_mode("rewrite", [str(prog), str(lib)], env=guest_env, stats=True)
    assert "raw syscalls from a dlopened library: match" in res.stdout, res.describe()
    trapped, rewritten = rewritten_count(res.stderr, "getppid")
    # libc's getppid plus the library's 5000; the library's site is rewritten after its
    # first call (it was loaded after start, so only lazy rewriting can reach it).
    assert trapped + rewritten == 5001 and rewritten >= 4990, res.describe()
    denied = run_mode("rewrite", [str(prog), str(lib)], env=guest_env, deny=["getppid"])
    assert "raw syscalls from a dlopened library: match" in denied.stdout, denied.describe()
