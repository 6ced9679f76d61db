"""The rewrite tier inside each VM: sites really are rewritten, and a rewritten call keeps
every register (and, on x86_64, the red zone and zmm/xmm; on aarch64 v0-v31) intact."""
from __future__ import annotations

from typing import Any

from vmtests.helpers import describe


def _getpid_row(stats: str) -> tuple[int, int]:
    for line in stats.splitlines():
        cols = line.split()
        if cols[:1] == ["getpid"] and len(cols) == 5:
            return int(cols[3]), int(cols[4])
    raise AssertionError(f"no getpid row in:\n{stats}")


def test_rewritten_calls_are_served_and_preserve_registers(vm: Any) -> None:
    prog = f"{vm.image.guest_programs_dir}/regs-static"
    res = vm.run(f"kbox run --syscall-mode=rewrite --stats -- {prog} 2000", timeout=300)
    assert res.exit_status == 0, describe("regs under rewrite failed", res)
    for line in ("general registers preserved: yes",
                 "result-side registers as the kernel leaves them: yes",
                 "red zone untouched: yes", "vector registers preserved: yes"):
        assert line in res.stdout.splitlines(), describe(f"missing {line!r}", res)
    trapped, rewritten = _getpid_row(res.stderr)
    assert (trapped, rewritten) == (1, 1999), describe("the site was not rewritten", res)


def test_jit_code_is_rewritten_too(vm: Any) -> None:
    prog = f"{vm.image.guest_programs_dir}/jit-static"
    res = vm.run(f"kbox run --syscall-mode=rewrite --deny=getppid -- {prog}", timeout=300)
    # Denied everywhere alike: libc's getppid and the JIT page's both see EPERM.
    assert "JIT getppid matches libc: yes" in res.stdout, describe("JIT call escaped", res)


def _trapped(stats: str) -> dict[str, int]:
    """Per syscall, how many calls trapped (the --stats table)."""
    out = {}
    for line in stats.splitlines():
        cols = line.split()
        if len(cols) == 5 and cols[1].isdigit() and cols[0] != "total":
            out[cols[0]] = int(cols[3])
    return out


def test_musl_wrapper_calls_are_promoted_on_aarch64(vm: Any, vm_pool: Any) -> None:
    """aarch64: static musl's `bl __syscall_cp` calls go to trampolines from the start: no
    call through musl's wrapper ever traps (without promotion the first one does, when it
    rewrites the wrapper's svc); x86_64 says why it does not promote."""
    from vmtests.helpers import guest_launcher

    prog = f"{vm.image.guest_programs_dir}/fileio-musl"
    res = vm.run(f"kbox analyze {prog}", timeout=300)
    assert res.exit_status == 0, describe("kbox analyze failed", res)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("wrapper-call promotion")), "")
    launcher, _ = guest_launcher(vm, vm_pool, "rewrite")
    on = vm.run(f"{launcher} --syscall-mode=rewrite --stats -- {prog}", timeout=300)
    off = vm.run(f"{launcher} --syscall-mode=rewrite --stats --no-promote -- {prog}", timeout=300)
    assert on.exit_status == 0 and off.exit_status == 0, describe("fileio-musl failed", on)
    assert on.stdout == off.stdout, describe("promotion changed the output", on, off)
    t_on, t_off = _trapped(on.stderr), _trapped(off.stderr)
    if vm.image.arch == "aarch64":
        assert "call site(s) promoted" in line, describe("no promotion reported", res)
        # open, close, read and write go through __syscall_cp in musl.
        cp_calls = ("openat", "close", "read", "write")
        assert sum(t_on.get(c, 0) for c in cp_calls) == 0, describe("a promoted call trapped", on)
        assert sum(t_off.get(c, 0) for c in cp_calls) == 1, describe("expected one first trap", off)
    else:
        assert "not done on x86_64" in line, describe("x86_64 promotion verdict", res)
        assert t_on == t_off, describe("x86_64 is not promoted", on, off)
