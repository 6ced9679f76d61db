"""Kernel facts the tiers depend on, probed inside each guest with the same probe that
`kbox doctor` runs on the host (python3 + ctypes)."""
from __future__ import annotations

import errno
import json
import shlex
from typing import Any

from kbox.kernel_caps import FEATURE_PROBE
from kbox.vm.kernels import series_of
from vmtests.helpers import describe


def _features(vm: Any, vm_pool: Any) -> dict[str, Any]:
    key = ((vm.image.arch, vm.image.kernel), "features")
    if key not in vm_pool.cache:
        res = vm.run(f"python3 -c {shlex.quote(FEATURE_PROBE)}", timeout=60)
        assert res.exit_status == 0, describe("feature probe failed", res)
        vm_pool.cache[key] = json.loads(res.stdout)
    return vm_pool.cache[key]


def test_guest_runs_the_requested_kernel_and_arch(vm: Any, vm_pool: Any,
                                                  vm_target: tuple[str, str]) -> None:
    f = _features(vm, vm_pool)
    assert f["machine"] == vm_target[0]
    assert f["release"] == vm.image.kernel_version
    assert f["release"].startswith(series_of(vm_target[1]) + ".")


def test_syscall_user_dispatch_only_on_x86_64(vm: Any, vm_pool: Any,
                                              vm_target: tuple[str, str]) -> None:
    # Debian's arm64 kernels lack CONFIG_GENERIC_ENTRY: prctl answers EINVAL there.
    want = 0 if vm_target[0] == "x86_64" else errno.EINVAL
    assert _features(vm, vm_pool)["sud"] == want


def test_seccomp_user_notify_everywhere(vm: Any, vm_pool: Any) -> None:
    assert _features(vm, vm_pool)["user_notif"] == 0


def test_seccomp_sync_wakeup_only_on_6_12(vm: Any, vm_pool: Any,
                                          vm_target: tuple[str, str]) -> None:
    # SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP arrived in 6.6; 6.1 rejects the ioctl with EINVAL.
    want = 0 if series_of(vm_target[1]) == "6.12" else errno.EINVAL
    assert _features(vm, vm_pool)["sync_wakeup"] == want
