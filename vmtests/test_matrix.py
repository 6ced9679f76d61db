"""The matrix: every guest test program and every real program, under every tier, on each
selected arch x kernel; output and exit status must equal the native run in the same VM."""
from __future__ import annotations

from typing import Any

import pytest

from vmtests.helpers import (OPTIONAL_TIERS, REAL_PROGRAMS, describe, guest_launcher,
                             guest_program_names, guest_tiers, native_run_is_sound, under_tier)

RUN_TIMEOUT = 120.0   # hardware seconds per program (x3 under TCG)


def _native(vm: Any, pool: Any, argv: list[str]) -> Any:
    key = ((vm.image.arch, vm.image.kernel), "native", tuple(argv))
    if key not in pool.cache:
        pool.cache[key] = vm.run(under_tier("native", argv), timeout=RUN_TIMEOUT)
    return pool.cache[key]


def _check(vm: Any, vm_pool: Any, tier: str, argv: list[str], must_succeed: bool,
           direct: bool = False) -> None:
    native = _native(vm, vm_pool, argv)
    if tier == "native":
        if must_succeed:
            assert native.exit_status == 0, describe("native run failed", native)
        else:
            assert native_run_is_sound(native), describe("native run failed", native)
        return
    offered, help_run = guest_tiers(vm, vm_pool)
    assert help_run.exit_status == 0, describe("`kbox run --help` fails in the guest", help_run)
    if tier not in offered:
        if tier in OPTIONAL_TIERS:
            pytest.skip(f"tier {tier} not offered by the guest's `kbox run --help` yet")
        pytest.fail(describe(f"tier {tier} missing from `kbox run --help`", help_run),
                    pytrace=False)
    if direct:
        launcher, resolved = guest_launcher(vm, vm_pool, tier)
        res = vm.run(under_tier(resolved, argv, launcher), timeout=RUN_TIMEOUT)
    else:
        res = vm.run(under_tier(tier, argv), timeout=RUN_TIMEOUT)
    assert (res.exit_status, res.stdout) == (native.exit_status, native.stdout), \
        describe(f"{tier} run differs from the native run", res, native)


@pytest.mark.parametrize("program", guest_program_names())
def test_guest_program_matches_native(vm: Any, vm_pool: Any, tier: str, program: str) -> None:
    argv = [f"{vm.image.guest_programs_dir}/{program}"]
    _check(vm, vm_pool, tier, argv, must_succeed=False, direct=True)


@pytest.mark.parametrize("name", sorted(REAL_PROGRAMS))
def test_real_program_matches_native(vm: Any, vm_pool: Any, tier: str, name: str) -> None:
    _check(vm, vm_pool, tier, REAL_PROGRAMS[name], must_succeed=True)
