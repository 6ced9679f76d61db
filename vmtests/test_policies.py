"""Policies on top of the tiers, inside each VM: they must behave the same on both
architectures (the host suite only runs x86_64).  --virtual-pid rewrites ids in clone's
memory arguments, whose order differs between x86_64 and aarch64."""
from __future__ import annotations

from typing import Any

import pytest

from kbox.tiers import IN_PROCESS
from vmtests.helpers import describe


@pytest.mark.parametrize("tier", IN_PROCESS)
def test_virtual_pid_makes_the_program_pid_1(vm: Any, tier: str) -> None:
    prog = f"{vm.image.guest_programs_dir}/getpid_vpid-static"
    native = vm.run(prog, timeout=120)
    assert native.exit_status == 0, describe("native run failed", native)
    res = vm.run(f"kbox run --syscall-mode={tier} --virtual-pid -- {prog} --expect-vpid",
                 timeout=300)
    assert res.exit_status == 0, describe(f"--virtual-pid under {tier} failed", res, native)
    lines = res.stdout.splitlines()
    assert "getpid: 1" in lines and "fork child's pid: 2" in lines, describe("ids", res)
    relations = [ln for ln in lines if not ln.startswith(("getpid: ", "fork child's pid: "))]
    # Includes 100 short-lived threads joined: the virtual tid must not outlive the thread.
    assert relations == native.stdout.splitlines(), describe("relations differ", res, native)


def test_seccomp_tier_refuses_virtual_pid(vm: Any) -> None:
    prog = f"{vm.image.guest_programs_dir}/getpid_vpid-static"
    res = vm.run(f"kbox run --syscall-mode=seccomp --virtual-pid -- {prog}", timeout=120)
    assert res.exit_status == 2 and "needs an in-process tier" in res.stderr, \
        describe("seccomp should refuse --virtual-pid", res)
