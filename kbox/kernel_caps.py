"""What the running kernel offers the tiers: one probe for `kbox doctor`, `kbox analyze`, the
auto decision and the VM tests (which run FEATURE_PROBE inside every guest).

Two costs, for two kinds of caller:
- `tier_support()` reads /proc only (microseconds): what `kbox run --syscall-mode=auto`
  needs to decide on every start.
- `probe_kernel_caps()` adds what only trying can tell (Syscall User Dispatch, a
  user-notification listener's sync wake-up flag) by running FEATURE_PROBE in a throwaway
  interpreter, so that nothing a probe turns on (a dispatch setting, a seccomp filter)
  stays on in the caller.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from functools import cache
from typing import Any

from kbox import native
from kbox.elfinfo import host_machine

SECCOMP_ACTIONS = "/proc/sys/kernel/seccomp/actions_avail"

# Self-contained (python3 + ctypes, no kbox import): it runs on the host and inside every
# guest, so both report the same facts the same way. Each probe runs in a forked child: a
# filter or a dispatch setting must not stay on in the prober. Prints one JSON object;
# values are 0 (works) or the errno the kernel answered.
FEATURE_PROBE = r'''
import ctypes, errno, json, os, platform, struct
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
SECCOMP_NR = {"x86_64": 317, "aarch64": 277}.get(platform.machine())
PR_SET_NO_NEW_PRIVS, PR_SET_SYSCALL_USER_DISPATCH = 38, 59
SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER = 1, 1 << 3
SECCOMP_IOCTL_NOTIF_SET_FLAGS = 0x40082104   # _IOW('!', 4, __u64)
SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP = 1

def in_child(fn):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            res = fn()
        except BaseException:
            res = -1
        os.write(w, str(res).encode()); os._exit(0)
    os.close(w)
    out = os.read(r, 64).decode(); os.close(r); os.waitpid(pid, 0)
    return int(out) if out else -1

def sud():
    sel = ctypes.c_char(b"\0")   # SYSCALL_DISPATCH_FILTER_ALLOW: nothing is diverted
    if libc.prctl(PR_SET_SYSCALL_USER_DISPATCH, 1, 0, 0, ctypes.addressof(sel)) != 0:
        return ctypes.get_errno()
    libc.prctl(PR_SET_SYSCALL_USER_DISPATCH, 0, 0, 0, 0)
    return 0

def listener():
    if SECCOMP_NR is None:
        return -errno.ENOSYS
    ins = struct.pack("HBBI", 0x06, 0, 0, 0x7FFF0000)          # ret SECCOMP_RET_ALLOW
    buf = ctypes.create_string_buffer(ins)
    prog = struct.pack("HxxxxxxQ", 1, ctypes.addressof(buf))   # struct sock_fprog
    pbuf = ctypes.create_string_buffer(prog)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return -ctypes.get_errno()
    fd = libc.syscall(SECCOMP_NR, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER,
                      pbuf)
    return fd if fd >= 0 else -ctypes.get_errno()

def user_notif():
    fd = listener()
    return 0 if fd >= 0 else -fd

def sync_wakeup():
    fd = listener()
    if fd < 0:
        return -fd
    libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong]
    if libc.ioctl(fd, SECCOMP_IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP) != 0:
        return ctypes.get_errno()
    return 0

print(json.dumps({"machine": platform.machine(), "release": platform.release(),
                  "sud": in_child(sud), "user_notif": in_child(user_notif),
                  "sync_wakeup": in_child(sync_wakeup)}))
'''


class FeatureProbeFailed(Exception):
    """FEATURE_PROBE did not answer (timed out, or printed no JSON)."""


def run_feature_probe(timeout: float) -> dict[str, Any]:
    """FEATURE_PROBE's answer on this host, within `timeout` seconds."""
    try:
        r = subprocess.run([sys.executable, "-c", FEATURE_PROBE], timeout=timeout,
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
        out = json.loads(r.stdout)
    except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
        raise FeatureProbeFailed(str(exc)) from exc
    if not isinstance(out, dict):
        raise FeatureProbeFailed(f"unexpected answer {r.stdout.strip()!r}")
    return out


@cache
def _seccomp_actions() -> frozenset[str]:
    try:
        with open(SECCOMP_ACTIONS) as f:
            return frozenset(f.read().split())
    except OSError:
        return frozenset()


def _has_seccomp() -> bool:
    try:
        with open("/proc/self/status") as f:
            return any(line.startswith("Seccomp:") for line in f)
    except OSError:
        return False


@dataclass(frozen=True)
class TierSupport:
    """What the tiers need from this kernel, from /proc alone."""

    machine: str
    seccomp_filter: bool          # SECCOMP_MODE_FILTER usable at all
    seccomp_trap: bool            # SECCOMP_RET_TRAP: the trap tier's source on both arches
    seccomp_user_notif: bool      # SECCOMP_RET_USER_NOTIF: the seccomp tier
    # The rewrite tier is trap plus lazy patching: available wherever trap is, with the C
    # core built for this machine.
    rewrite_available: bool


def tier_support() -> TierSupport:
    actions = _seccomp_actions()
    return TierSupport(
        machine=host_machine(),
        seccomp_filter=_has_seccomp() and bool(actions),
        seccomp_trap="trap" in actions,
        seccomp_user_notif="user_notif" in actions,
        rewrite_available="trap" in actions and (native.native_dir() / "kbox-launch").exists(),
    )


@dataclass(frozen=True)
class KernelCaps(TierSupport):
    """TierSupport plus what FEATURE_PROBE finds by trying."""

    release: str
    sud: bool                     # Syscall User Dispatch (needs CONFIG_GENERIC_ENTRY)
    # SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP accepted on a real listener; None = probe failed.
    notify_sync_wakeup: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def probe_kernel_caps(timeout: float = 10.0) -> KernelCaps:
    """Facts about the running kernel that the tiers depend on; never raises."""
    try:
        probed = run_feature_probe(timeout)
    except FeatureProbeFailed:
        probed = {}
    wakeup = probed.get("sync_wakeup")
    return KernelCaps(
        **asdict(tier_support()),
        release=os.uname().release,
        # SUD exists only on x86_64 among our targets (Debian arm64 kernels lack GENERIC_ENTRY).
        sud=probed.get("sud") == 0,
        notify_sync_wakeup=None if wakeup is None else wakeup == 0,
    )
