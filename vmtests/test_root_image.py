"""kbox run --root IMAGE inside each VM: an ext4 image made in the guest (mke2fs -d) from
tests/rootfs.py's tree, read with the guest's own libext2fs (so on aarch64 through the
aarch64 library, by the same ctypes code), and the root view's shell programs run from it
under every tier, compared with a native chroot of the tree.  Small on purpose: CI runs it
under TCG on two cores."""
from __future__ import annotations

from typing import Any

import pytest

from kbox.tiers import AUTO, IN_PROCESS, SECCOMP
from vmtests.helpers import describe
from vmtests.test_root_view import _root

TREE = "/tmp/kbox-image-tree"
IMAGE = "/tmp/kbox-image-root.ext4"

PROGRAMS = {
    "ls": "ls -a /",
    "cd-and-up": "sh -c 'cd /usr/lib && pwd && ls .. && cd ../.. && pwd'",
    "python": "python3 -c 'import os, sys; print(os.getcwd(), sys.prefix, open(\"/etc/hostname\").read())'",
    "files": "sh -c 'mkdir -p /tmp/d && echo x > /tmp/d/f && ln -s /tmp/d/f /tmp/d/l && cat /tmp/d/l && readlink /tmp/d/l && rm -r /tmp/d'",
    "owners": "stat -c '%A %u %g %s %n' /srv/theirs /srv/suid",
}


def _image(vm: Any) -> str:
    """A copy of the root view's tree (tests/rootfs.py's, built in this guest) with a file of
    another owner and a set-user-ID one, and its image, made once; the copy gets the image's
    lost+found so that chroot sees the same."""
    if vm.run(f"test -s {IMAGE}", timeout=60).exit_status != 0:
        root = _root(vm)
        res = vm.run(
            f"rm -rf {TREE} {IMAGE} && cp -a {root} {TREE} && mkdir {TREE}/srv && echo x > {TREE}/srv/theirs && "
            f"chown 1234:5678 {TREE}/srv/theirs && cp {TREE}/usr/bin/echo {TREE}/srv/suid && "
            f"chmod 4755 {TREE}/srv/suid && kbox image from-dir {TREE} {IMAGE} && mkdir -m 700 {TREE}/lost+found",
            timeout=900)
        assert res.exit_status == 0, describe("building the image in the guest failed", res)
    return IMAGE


@pytest.mark.parametrize("tier", [*IN_PROCESS, AUTO, SECCOMP])
@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_program_from_the_image_matches_native_chroot(vm: Any, name: str, tier: str) -> None:
    image = _image(vm)
    cmd = PROGRAMS[name]
    native = vm.run(f"chroot {TREE} {cmd}", timeout=300)
    assert native.exit_status == 0, describe(f"{name} natively in a chroot of the tree", native)
    # One overlay per tier, reused by the tier's later programs (the first one materializes).
    res = vm.run(f"cd / && kbox run --syscall-mode={tier} --root {image} --overlay /tmp/kbox-image-{tier} "
                 f"-- {cmd}", timeout=600)
    assert (res.exit_status, res.stdout) == (native.exit_status, native.stdout), \
        describe(f"{name} under {tier} --root IMAGE", res, native)
