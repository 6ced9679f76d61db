"""Static Go programs (tests/go, built for the guest's architecture into the image as
go-NAME) natively and under every tier in each VM (issue 14: the Go runtime's preemption
signals land while its threads are inside kbox's SIGSYS handler).  Exit status and stdout
must equal the native run in the same VM, as in test_matrix.

go-gostorm is the goroutine/syscall/preemption storm; go-pkgtest is a package's tests
compiled with `go test -c` (t.Parallel subtests doing file I/O, a child process).  Both run
a smaller workload than on the host (emulation is slow; the seccomp tier is slowest), the
same natively and under each tier.  The guest has no go tool: gofmt and `go test` itself run
on the host only (tests/test_go_programs.py)."""
from __future__ import annotations

from typing import Any

import pytest

from kbox.vm.machine import GuestTimeout, VMError
from vmtests.test_matrix import _check

GO_PROGRAMS: dict[str, list[str]] = {
    "go-gostorm": ["-rounds", "3"],
    "go-pkgtest": ["-test.short"],
}


def _kill_leftovers(vm: Any, path: str) -> None:
    """A run that hung (and timed out) is still running in the guest, burning emulated CPU
    that the VM's later tests need: kill every process running `path`."""
    assert "'" not in path
    # Quoted in two parts, so the command line of the shell running this never matches.
    script = (f"p='{path[:-1]}''{path[-1]}'; for d in /proc/[0-9]*; do "
              f'case "$(tr "\\0" " " < $d/cmdline 2>/dev/null)" in *"$p"*) '
              'kill -9 "${d#/proc/}";; esac; done 2>/dev/null; true')
    try:
        vm.run(script, timeout=30)
    except VMError as exc:   # the test's own failure is what matters
        print(f"could not kill what is left of {path}: {exc}")


@pytest.mark.parametrize("program", sorted(GO_PROGRAMS))
def test_go_program_runs_like_native(vm: Any, vm_pool: Any, tier: str, program: str) -> None:
    path = f"{vm.image.guest_programs_dir}/{program}"
    try:
        _check(vm, vm_pool, tier, [path, *GO_PROGRAMS[program]], must_succeed=True,
               direct=True)
    except (AssertionError, GuestTimeout):
        _kill_leftovers(vm, path)
        raise
