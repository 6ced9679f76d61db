"""The seccomp tier contains a hostile program: no route to an uninterposed syscall.

The in-process tiers (trap, rewrite) share the program's address space and only interpose a
cooperative program (docs/tiers.md); they are checked here for the routes a cooperative
program might take by accident, not for containment.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run, run_mode  # type: ignore[import-not-found]
from kbox.tiers import TIERS

ROUTES = ["libc getpid", "raw syscall instruction", "run-time generated code",
          "after an allow-all filter", "with SIGSYS blocked", "after process_vm_writev"]


@pytest.mark.parametrize("kind", ["static", "dynamic"])
@pytest.mark.parametrize("mode", TIERS)
def test_every_route_to_getpid_is_interposed(mode: str, kind: str, guest_dir: Path,
                                              guest_env: dict[str, str]) -> None:
    prog = str(guest_dir / f"escape-{kind}")
    native = run([prog], env=guest_env)
    assert all(f"{r}: a pid" in native.stdout for r in ROUTES), native.describe()
    res = run_mode(mode, [prog], env=guest_env, deny=["getpid:EACCES"])
    assert res.returncode == 0, res.describe()
    for route in ROUTES:
        assert f"{route}: EACCES" in res.stdout.splitlines(), f"{route} escaped\n{res.describe()}"
    # The program really did install its own allow-all filter and rewrite its memory.
    assert "own allow-all filter installed: yes" in res.stdout, res.describe()
    assert "process_vm_writev on itself: wrote" in res.stdout, res.describe()
