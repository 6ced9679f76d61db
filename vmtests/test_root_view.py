"""kbox run --root inside each VM: both architectures, both kernels, the in-process tiers.

The root is built in the guest from the guest's own programs (tests/rootfs.py: dash,
coreutils, python3, sqlite3, git with their libraries, /bin an absolute symlink), so on
aarch64 the dynamic loader and libc come from an aarch64 tree; outputs are compared with a
native chroot of the same tree in the guest."""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest

from kbox.tiers import AUTO, IN_PROCESS
from vmtests.helpers import describe

ROOT = "/tmp/kbox-view-root"
SECRET = "HOST-SECRET-not-in-the-root"
ROOTFS_PY = Path(__file__).resolve().parent.parent / "tests" / "rootfs.py"

PROGRAMS = {
    "ls": "ls -a /",
    "os-release": "cat /etc/os-release",
    "cd-and-up": "sh -c 'cd /usr/lib && pwd && ls .. && cd ../.. && pwd'",
    "python": "python3 -c 'import os, sys; print(os.getcwd(), sys.prefix, open(\"/etc/hostname\").read())'",
    "python-subprocess": "python3 -c 'import subprocess as s; print(s.run([\"ls\", \"/etc\"], capture_output=True, text=True).stdout)'",
    "sqlite3": "sqlite3 :memory: 'select 40 + 2;'",
    "files": "sh -c 'mkdir -p /tmp/d && echo x > /tmp/d/f && ln -s /tmp/d/f /tmp/d/l && cat /tmp/d/l && readlink /tmp/d/l && rm -r /tmp/d'",
}
ESCAPES = ["cat /../secret", "cat /proc/self/root/../secret", "cd / && cat /proc/self/cwd/../secret",
           "ln -s / /tmp/abs && cat /tmp/abs/../secret; rm -f /tmp/abs"]


def _root(vm: Any) -> str:
    """Builds the root in this guest once."""
    if vm.run(f"test -x {ROOT}/usr/bin/dash", timeout=60).exit_status != 0:
        vm.put(ROOTFS_PY, "/tmp/kbox_rootfs.py")
        res = vm.run(f"rm -rf {ROOT} && cd /tmp && python3 -c 'import pathlib, kbox_rootfs; "
                     f"kbox_rootfs.build(pathlib.Path(\"{ROOT}\"))' && echo {SECRET} > {ROOT}/../secret",
                     timeout=600)
        assert res.exit_status == 0, describe("building the root in the guest failed", res)
    return ROOT


@pytest.mark.parametrize("tier", [*IN_PROCESS, AUTO])
@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_program_inside_the_root_matches_native_chroot(vm: Any, name: str, tier: str) -> None:
    root = _root(vm)
    cmd = PROGRAMS[name]
    native = vm.run(f"chroot {root} {cmd}", timeout=300)
    res = vm.run(f"cd / && kbox run --syscall-mode={tier} --root {root} -- {cmd}", timeout=600)
    assert (res.exit_status, res.stdout) == (native.exit_status, native.stdout), \
        describe(f"{name} under {tier} --root", res, native)


@pytest.mark.parametrize("tier", IN_PROCESS)
def test_escape_attempts_stay_inside_the_root(vm: Any, tier: str) -> None:
    root = _root(vm)
    for case in ESCAPES:
        res = vm.run(f"kbox run --syscall-mode={tier} --root {root} -- sh -c {shlex.quote(case)}",
                     timeout=300)
        assert SECRET not in res.stdout + res.stderr, describe(f"escape: {case}", res)


def test_libc_and_loader_come_from_the_root(vm: Any) -> None:
    root = _root(vm)
    res = vm.run(f"kbox run --root {root} -- python3 -c 'print(open(\"/proc/self/maps\").read())'",
                 timeout=300)
    assert res.exit_status == 0, describe("maps", res)
    libs = [ln.split()[-1] for ln in res.stdout.splitlines() if "libc.so" in ln or "ld-linux" in ln]
    assert libs and all(p.startswith(root + "/") for p in libs), describe("libs from the host", res)
