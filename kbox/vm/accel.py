"""Pick QEMU's accelerator: KVM only when a guest has been seen to run under it.

`/dev/kvm` existing proves nothing: on the development machine it is there, yet QEMU
aborts ("failed to set MSR 0x10a") or the guest hangs in early boot. So `auto` boots a
tiny probe under KVM with a 3 s budget: the real kernel without an initramfs when one is
known (under working KVM it reaches "VFS: Unable to mount root fs" and, with panic=-1
and -no-reboot, QEMU exits in well under a second), else a 64 KiB firmware image whose
reset vector writes one byte to the serial port. The verdict is cached per host boot
(keyed by /proc/sys/kernel/random/boot_id), so only the first VM of a boot pays for it.
"""
from __future__ import annotations

import json
import os
import platform
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from kbox.errors import UserError
from kbox.vm.arch import Arch
from kbox.vm.cache import cache_root

ACCELS = ("auto", "kvm", "tcg")
PROBE_BUDGET_S = 3.0
# Emulated guests are slower at everything; timeouts that assume hardware speed are
# multiplied by this under TCG (syzkaller uses the same factor).
TCG_TIMEOUT_FACTOR = 3.0


@dataclass(frozen=True)
class Accel:
    name: str      # "kvm" or "tcg"
    reason: str    # one line: why this accelerator was chosen

    @property
    def timeout_factor(self) -> float:
        return 1.0 if self.name == "kvm" else TCG_TIMEOUT_FACTOR

    def qemu_args(self) -> list[str]:
        # thread=multi: one host thread per vCPU; a 2-vCPU guest then boots on 2 cores.
        return ["-accel", "kvm"] if self.name == "kvm" else ["-accel", "tcg,thread=multi"]

    def notice(self, arch: Arch) -> str:
        return f"kbox: {arch.name} guest uses {self.name.upper()} ({self.reason})"


def cache_dir() -> Path:
    """The same root the image cache uses ($KBOX_CACHE, else ~/.cache/kbox)."""
    return cache_root()


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown-boot"


def _firmware_probe_image(path: Path) -> None:
    """A 64 KiB x86 BIOS whose reset vector (offset 0xfff0) prints 'K' on COM1 and halts."""
    code = bytes([
        0xBA, 0xF8, 0x03,   # mov $0x3f8, %dx      COM1 data port
        0xB0, 0x4B,         # mov $'K', %al
        0xEE,               # out %al, (%dx)
        0xF4,               # hlt
        0xEB, 0xFD,         # jmp .-1 (back to hlt)
    ])
    img = bytearray(b"\xf4" * 65536)
    img[0xFFF0:0xFFF0 + len(code)] = code
    path.write_bytes(bytes(img))


def host_can_kvm(arch: Arch) -> str | None:
    """None if KVM is worth probing for `arch`, else the reason it is not."""
    if platform.machine() != arch.name:
        return f"host is {platform.machine()}, KVM cannot run {arch.name} guests"
    if not os.path.exists("/dev/kvm"):
        return "/dev/kvm does not exist"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is not accessible to this user (add it to the kvm group)"
    return None


def probe_kvm(arch: Arch, kernel: Path | None, budget: float = PROBE_BUDGET_S) -> str | None:
    """Boot a probe under KVM; None if a guest ran, else why not (one line)."""
    qemu = shutil.which(arch.qemu)
    if qemu is None:
        return f"{arch.qemu} not found"
    with tempfile.TemporaryDirectory(prefix="kbox-kvm-probe-") as tmp:
        cmd = [qemu, "-accel", "kvm", "-M", arch.machine, "-cpu", arch.cpu_kvm, "-m", "256",
               "-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot",
               "-nodefaults"]
        if kernel is not None:
            cmd += ["-kernel", str(kernel),
                    "-append", f"console={arch.console} panic=-1 earlyprintk=serial"]
            expect = (b"Unable to mount root", b"No working init", b"Kernel panic")
        elif arch.name == "x86_64":
            fw = Path(tmp) / "probe.bin"
            _firmware_probe_image(fw)
            cmd += ["-bios", str(fw)]
            expect = (b"K",)
        else:
            return "no kernel to probe KVM with"
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        out = b""
        deadline = time.monotonic() + budget
        try:
            assert proc.stdout is not None
            while time.monotonic() < deadline:
                ready, _, _ = select.select([proc.stdout], [], [], 0.1)
                if ready:
                    chunk = os.read(proc.stdout.fileno(), 65536)
                    out += chunk
                    if any(e in out for e in expect):
                        return None
                    if not chunk:
                        break
            err = proc.stderr.read(4096).decode(errors="replace") if proc.poll() is not None \
                and proc.stderr else ""
        finally:
            proc.kill()
            proc.wait(timeout=5)
        first_err = next((ln for ln in err.splitlines() if ln.strip()), "")
        if first_err:
            return f"KVM probe failed: {first_err.strip()}"
        return f"a KVM guest made no progress within {budget:g} s"


def resolve_accel(requested: str, arch: Arch, kernel: Path | None = None,
                  use_cache: bool = True) -> Accel:
    """Turn --accel auto|kvm|tcg into the accelerator to use, with the reason."""
    if requested not in ACCELS:
        raise UserError(f"unknown accelerator {requested!r} (choose from {', '.join(ACCELS)})", 2)
    if requested == "tcg":
        return Accel("tcg", "requested with --accel tcg")
    unusable = host_can_kvm(arch)
    if unusable is None:
        unusable = _cached_probe(arch, kernel) if use_cache else probe_kvm(arch, kernel)
    if requested == "kvm":
        if unusable is not None:
            raise UserError(f"--accel kvm: {unusable}; use --accel tcg or auto", 2)
        return Accel("kvm", "requested with --accel kvm; probe guest ran")
    if unusable is None:
        return Accel("kvm", "probe guest ran under KVM")
    return Accel("tcg", unusable)


def _cached_probe(arch: Arch, kernel: Path | None) -> str | None:
    d = cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"kvm-probe-{arch.name}.json"
    key = {"boot_id": _boot_id(), "kernel": str(kernel) if kernel else None}
    # The lock makes parallel xdist workers wait for one probe instead of each running it.
    with FileLock(str(path) + ".lock", timeout=60):
        try:
            cached = json.loads(path.read_text())
            if cached.get("key") == key:
                return cached.get("unusable")
        except (OSError, ValueError):
            pass
        verdict = probe_kvm(arch, kernel)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "unusable": verdict}))
        tmp.replace(path)
        return verdict
