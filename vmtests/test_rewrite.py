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
