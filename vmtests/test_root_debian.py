"""kbox run --root in each guest, inside the guest architecture's own Debian tree.

The tree is built on the host from Debian packages (kbox/root_debian.py, cached like the
images) and copied into the guest as a tar stream over SSH, once per VM; the programs of
tests/debian_programs.py run in it natively (chroot, as the guest's root) and under trap
and rewrite, and print the same. The full matrix only: under aarch64 TCG one python3 run
costs ~25 s (conftest.py's --quick keeps, of the tests named test_program_inside_the_root*,
the programs in QUICK_ROOT_PROGRAMS, none of which is named here).
"""
from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kbox import root_debian
from kbox.tiers import IN_PROCESS, SECCOMP
from vmtests.helpers import describe

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from debian_programs import ENV, KNOWN_BUGS, PROGRAMS, masked

GUEST_ROOT = "/tmp/kbox-debian-root"   # the guest's /tmp is a tmpfs (half its 1.5 GB)
COPY_TIMEOUT = 300.0                   # hardware seconds for ~27 MB through SSH


def _tree(vm: Any, pool: Any) -> str:
    """The guest's copy of its architecture's tree, sent once per VM (and again if the
    guest's stamp names another tree checksum)."""
    key = ((vm.image.arch, vm.image.kernel), "debian-tree")
    if key in pool.cache:
        return GUEST_ROOT
    tree = root_debian.ensure_root(vm.image.arch, progress=False)
    stamp = f"{GUEST_ROOT}.sha256"
    if vm.run(f"cat {stamp} 2>/dev/null", timeout=30).stdout.strip() != tree.tree_sha256:
        # tar keeps hard links, modes and the /dev nodes a native chroot needs; the guest
        # (busybox tar, as root) unpacks the stream as it arrives. gzip -1: into an aarch64
        # TCG guest the 80 MB tree unpacked in 12 s compressed (34 MB), 19 s plain.
        tar = subprocess.Popen(["tar", "-C", str(tree.path), "-I", "gzip -1", "-cf", "-", "."],
                               stdout=subprocess.PIPE)
        try:
            assert tar.stdout is not None
            res = vm.run(f"rm -rf {GUEST_ROOT} {stamp} && mkdir {GUEST_ROOT} && "
                         f"tar -xzf - -C {GUEST_ROOT} && echo {tree.tree_sha256} > {stamp}",
                         stdin=tar.stdout, timeout=COPY_TIMEOUT)
        finally:
            if tar.stdout is not None:
                tar.stdout.close()
            tar.wait(timeout=60)
        assert res.exit_status == 0 and tar.returncode == 0, \
            describe(f"copying the {vm.image.arch} tree into the guest failed", res)
    pool.cache[key] = True
    return GUEST_ROOT


def _env() -> str:
    return shlex.join(["env", "-i", *(f"{k}={v}" for k, v in ENV.items())])


@pytest.mark.parametrize("tier", [*IN_PROCESS, SECCOMP])
@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_program_inside_the_root_of_debian_packages_matches_native_chroot(
        vm: Any, vm_pool: Any, name: str, tier: str, request: pytest.FixtureRequest) -> None:
    if name in KNOWN_BUGS:
        request.applymarker(pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[name]))
    root = _tree(vm, vm_pool)
    cmd = shlex.join(PROGRAMS[name])
    key = ((vm.image.arch, vm.image.kernel), "debian-native", name)
    if key not in vm_pool.cache:
        native = vm.run(f"cd / && {_env()} chroot {root} {cmd}", timeout=300)
        assert native.exit_status == 0 and native.stdout.strip(), \
            describe(f"{name}: native chroot", native)
        vm_pool.cache[key] = native
    native = vm_pool.cache[key]
    res = vm.run(f"cd / && {_env()} kbox run --syscall-mode={tier} --root {root} -- {cmd}",
                 timeout=600)
    assert (res.exit_status, masked(name, res.stdout), res.stderr) == \
        (native.exit_status, masked(name, native.stdout), native.stderr), \
        describe(f"{name} under {tier} --root", res, native)
