"""Host directories in the guest: `kbox vm run|shell --share DIR[:GUEST]`.

Transport: virtio 9p (QEMU's `local` fsdev, `security_model=none`; the guest mounts it with
`-t 9p -o trans=virtio,version=9p2000.L`). With security_model=none the guest's writes are
plain host files owned by whoever runs QEMU (chown/chmod in the guest are applied when
QEMU may, ignored otherwise), and files the developer edits on the host are what the guest
reads at its next open: the mount uses 9p's default cache=none, so nothing is stale.

Why not virtiofs: QEMU 7.2 ships its C virtiofsd (/usr/lib/qemu/virtiofsd) and it runs
here (as root), but virtiofs needs the guest's RAM in a shared memory backend
(memory-backend-memfd,share=on), which changes the machine every saved warm-start state
is keyed by, and one more daemon per share to keep from outliving its VM, for 10-25 %
measured under TCG (docs/platform.md). 9p needs neither; Share.describe() names the
transport and the CLI prints it.

How the guest mounts: QEMU gets one `-fsdev local` + `-device virtio-9p-pci` per share
(tags kbox0, kbox1, ...) and the kernel command line `kbox.share=TAG:GUEST` per share.
The image's /init (images/init) loads the 9p modules listed in /etc/kbox/modules-9p (only
when a share is asked for: a normal boot pays nothing) and mounts each share before it
prints the ready marker, printing `kbox-init: share TAG on GUEST` or `... failed: WHY`.
`mounted()` reads those lines from the console, so a kernel without 9p (a module
missing, a local kernel built without CONFIG_9P_FS) is one clear error, not a missing
directory later.

Warm start: a mounted 9p export blocks QEMU migration, but an unmounted 9p device
migrates, and the directory it exports is not in the migration stream (QEMU opens `path=`
at start). So `kbox vm run|shell --share` restores the state saved for its device set
(the snapshot key masks the fsdev's path: one state per number of shares, whatever the
directories), then mounts over SSH with mount_script(): 1.5-2 s wall instead of a 5 s cold boot.
`--cold` boots and lets /init mount them.

Default GUEST: /mnt/<basename of DIR> (`--share .` in /work/main gives /mnt/main): short,
the same for every developer, and never shadowing a guest directory. GUEST is restricted to
[A-Za-z0-9._+@/-] (it travels on the kernel command line, split at spaces).
"""
from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kbox.errors import UserError

TRANSPORT = "virtio 9p"
TAG_PREFIX = "kbox"
# 9p's msize (bytes per request; the kernels' default is 128 KiB): fewer round trips through
# the emulated virtqueue per large read. 512 KiB asked, which both kernels' virtio transport
# caps at 512000 (as /proc/mounts shows); not measured against the default.
MSIZE = 512 * 1024
SHARE_MODULES_LIST = "/etc/kbox/modules-9p"
_GUEST_OK = re.compile(r"^/[A-Za-z0-9._+@/-]*$")
# Guest directories a share must not cover: the guest's own system would vanish under it.
_RESERVED = ("/", "/proc", "/sys", "/dev", "/run", "/tmp", "/usr", "/etc", "/root", "/bin",
             "/sbin", "/lib", "/lib64", "/init")
_SHARE_LINE = re.compile(r"kbox-init: share (\S+) on (\S+)(?: failed: (.*))?$")
_INSMOD_FAILED = re.compile(r"kbox-init: insmod (\S+) failed")


@dataclass(frozen=True)
class Share:
    host: Path        # resolved, an existing directory
    guest: str        # absolute, normalized
    tag: str = ""     # 9p mount tag, given by number()

    def describe(self) -> str:
        return f"{self.host} -> guest:{self.guest} ({TRANSPORT}, read-write)"


def _split(spec: str) -> tuple[str, str | None]:
    """DIR[:GUEST] -> (DIR, GUEST or None). A DIR holding a colon is taken whole when the
    whole spec is an existing directory."""
    if ":" not in spec or os.path.isdir(spec):
        return spec, None
    host, guest = spec.rsplit(":", 1)
    return host, guest


def parse_share(spec: str, option: str = "--share") -> Share:
    """One --share value, checked: DIR exists and is a directory, GUEST is absolute, plain
    and not a system directory of the guest. UserError (exit status 2) otherwise."""
    if not spec:
        raise UserError(f"{option}: empty; give DIR or DIR:GUEST", 2)
    host_s, guest = _split(spec)
    if not host_s:
        raise UserError(f"{option} {spec}: no host directory before ':'", 2)
    host = Path(host_s).expanduser()
    if not host.exists():
        raise UserError(f"{option} {spec}: {host}: no such directory", 2)
    if not host.is_dir():
        raise UserError(f"{option} {spec}: {host} is not a directory (share a directory; "
                        "the guest mounts it)", 2)
    if not os.access(host, os.R_OK | os.X_OK):
        raise UserError(f"{option} {spec}: {host}: permission denied", 2)
    host = host.resolve()
    if guest is None:
        guest = default_guest_path(host)
    elif not guest.startswith("/"):
        raise UserError(f"{option} {spec}: the guest path {guest!r} is not absolute "
                        f"(e.g. {host_s}:/mnt/{host.name or 'host'})", 2)
    if not _GUEST_OK.match(guest):
        raise UserError(f"{option} {spec}: the guest path {guest!r} may hold only letters, "
                        "digits and . _ + @ / - (it goes on the kernel command line)", 2)
    norm = os.path.normpath(guest)
    if ".." in guest.split("/"):
        raise UserError(f"{option} {spec}: the guest path {guest!r} has '..'", 2)
    if norm in _RESERVED:
        raise UserError(f"{option} {spec}: the guest path {norm} is the guest's own "
                        f"(choose e.g. /mnt/{host.name or 'host'})", 2)
    return Share(host, norm)


def default_guest_path(host: Path) -> str:
    """/mnt/<basename>; / itself is /mnt/host."""
    name = host.name or "host"
    safe = re.sub(r"[^A-Za-z0-9._+@-]", "_", name)
    return f"/mnt/{safe}"


def parse_shares(specs: Sequence[str] | None, option: str = "--share") -> list[Share]:
    """Every --share, checked and numbered (see numbered())."""
    return numbered([(parse_share(spec, option), f"{option} {spec}") for spec in specs or []])


def numbered(shares: Sequence[tuple[Share, str]]) -> list[Share]:
    """(share, what the user called it) -> shares with their tags (kbox0, kbox1, ...); two
    on one guest path are a UserError (exit status 2) naming both."""
    out: list[Share] = []
    seen: dict[str, str] = {}
    for i, (s, label) in enumerate(shares):
        if s.guest in seen:
            raise UserError(f"{label}: guest path {s.guest} is already taken by "
                            f"{seen[s.guest]}; give one of them DIR:GUEST", 2)
        seen[s.guest] = label
        out.append(Share(s.host, s.guest, f"{TAG_PREFIX}{i}"))
    return out


def _qemu_escape(value: str) -> str:
    # QEMU's option syntax: a comma inside a value is written twice.
    return value.replace(",", ",,")


def qemu_args(shares: Sequence[Share]) -> list[str]:
    args: list[str] = []
    for s in shares:
        fs = f"fs{s.tag}"
        path = _qemu_escape(str(s.host))
        args += ["-fsdev", f"local,id={fs},path={path},security_model=none",
                 "-device", f"virtio-9p-pci,fsdev={fs},mount_tag={s.tag}"]
    return args


def cmdline(shares: Sequence[Share]) -> str:
    """What /init reads from /proc/cmdline (dotted: the kernel keeps it from init's env)."""
    return " ".join(f"kbox.share={s.tag}:{s.guest}" for s in shares)


def vm_options(shares: Sequence[Share], warm: bool = False) -> dict[str, object]:
    """Keyword arguments for VM(...) (and snapshot.start) that attach `shares`: cold, /init
    mounts them (kbox.share= on the kernel command line); `warm`, the devices only, so a
    saved state of this device set is restored and mount_script() mounts them over SSH."""
    if not shares:
        return {}
    opts: dict[str, object] = {"extra_qemu_args": qemu_args(shares)}
    if not warm:
        opts["extra_cmdline"] = cmdline(shares)
    return opts


def mount_script(shares: Sequence[Share]) -> str:
    """What /init does for kbox.share=, as one guest shell command printing the same lines
    (for a restored guest: its state was saved before anything was mounted)."""
    mounts = " ".join(f"{s.tag}:{s.guest}" for s in shares)
    return (f"while read -r ko; do n=${{ko##*/}}; grep -q \"^${{n%.ko}} \" /proc/modules || "
            f"insmod \"$ko\" || echo \"kbox-init: insmod $ko failed\"; done "
            f"<{SHARE_MODULES_LIST}; for s in {mounts}; do tag=${{s%%:*}} dir=${{s#*:}}; "
            f"mkdir -p \"$dir\"; if err=$(mount -t 9p -o trans=virtio,version=9p2000.L,"
            f"msize={MSIZE} \"$tag\" \"$dir\" 2>&1); then echo \"kbox-init: share $tag on "
            f"$dir\"; else echo \"kbox-init: share $tag on $dir failed: $err\"; fi; done")


def mount_failures(console: str, shares: Sequence[Share], kernel: str = "") -> list[str]:
    """One line per share the console does not show mounted; empty when all are."""
    done: dict[str, str | None] = {}
    for line in console.splitlines():
        m = _SHARE_LINE.search(line.strip())
        if m:
            done[m.group(1)] = m.group(3)
    insmod = [Path(p).name for p in _INSMOD_FAILED.findall(console)
              if re.search(r"9p|netfs|fscache", Path(p).name)]
    out = []
    for s in shares:
        if s.tag in done and done[s.tag] is None:
            continue
        why = done.get(s.tag) or "the guest's init did not mount it (an image without share " \
                                 "support? rebuild it: kbox vm images --build)"
        if insmod or re.search(r"No such device|unknown filesystem", why):
            why = (f"kernel {kernel or '?'} has no 9p filesystem"
                   + (f" (insmod failed: {', '.join(insmod)})" if insmod else "")
                   + f": {why}; the guest needs 9p, 9pnet, 9pnet_virtio (CONFIG_9P_FS, "
                     "CONFIG_NET_9P_VIRTIO) built in or as modules")
        out.append(f"--share {s.host}:{s.guest}: not mounted in the guest: {why}")
    return out


def check_image_supports_shares(image: object) -> None:
    """Before booting: refuse a matrix image whose kernel was found to lack 9p at build time
    (info.json's share_modules_missing), so no QEMU starts for nothing."""
    import json
    try:
        info = json.loads((Path(image.cache_dir) / "info.json").read_text())  # type: ignore[attr-defined]
    except (OSError, ValueError):
        return
    missing = info.get("share_modules_missing")
    if missing:
        raise UserError(f"--share: kernel {info.get('kernel_version', '?')} has no 9p support "
                        f"({', '.join(missing)} neither built in nor modules); the guest needs "
                        "CONFIG_9P_FS and CONFIG_NET_9P_VIRTIO", 2)


class ShareNotMounted(UserError):
    """A share the guest's init did not mount: one line, exit status 4 (a VM failure)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 4)


@contextlib.contextmanager
def mounted(vm_cm: contextlib.AbstractContextManager[Any], shares: Sequence[Share],
            over_ssh: bool = False) -> Iterator[Any]:
    """`with mounted(ready_vm(...), shares) as vm:` — the VM, once every share is mounted
    (by /init, read from the console; `over_ssh`: by mount_script() now), ShareNotMounted
    otherwise; the VM is killed on the way out either way."""
    with vm_cm as vm:
        if shares:
            text = vm.run(mount_script(shares), timeout=60).stdout if over_ssh \
                else vm.console_tail(400)
            failures = mount_failures(text, shares, getattr(vm.image, "kernel_version", ""))
            if failures:
                raise ShareNotMounted(failures[0])
        yield vm
