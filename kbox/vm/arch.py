"""Per-architecture QEMU and Debian facts, in one table (cf. virtme-ng's architectures.py).

Everything that differs between x86_64 and aarch64 guests lives here; the rest of the VM
platform looks facts up by `ARCHES[name]` and never tests the architecture by name.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Arch:
    name: str                 # kbox's name, = `uname -m` in the guest
    debian: str               # Debian architecture name (dpkg --print-architecture)
    qemu: str                 # qemu-system binary
    qemu_package: str         # Debian package providing it
    machine: str              # -M
    cpu_tcg: str              # -cpu under TCG (chosen by measurement, see docs/platform.md)
    cpu_kvm: str              # -cpu under KVM
    console: str              # kernel console device
    cross_prefix: str         # gcc prefix when the host is not this arch ("" = native gcc)
    kernel_flavour: str       # suffix of Debian's linux-image package
    initrd_compression: str = ""  # "" (plain cpio) or "lz4" (legacy frame), by measurement
    extra_qemu_args: tuple[str, ...] = field(default_factory=tuple)


ARCHES: dict[str, Arch] = {
    "x86_64": Arch(
        name="x86_64",
        debian="amd64",
        qemu="qemu-system-x86_64",
        qemu_package="qemu-system-x86",
        machine="q35",
        # TCG: "max" gives the guest every feature TCG emulates (SSE4, AVX2 on recent QEMU).
        cpu_tcg="max",
        cpu_kvm="host",
        console="ttyS0",
        cross_prefix="x86_64-linux-gnu-",
        kernel_flavour="amd64",
    ),
    "aarch64": Arch(
        name="aarch64",
        debian="arm64",
        qemu="qemu-system-aarch64",
        qemu_package="qemu-system-arm",
        machine="virt",
        # Plain "-cpu max" boots in 7.7 s here because pointer authentication is emulated
        # with the architected (slow) algorithm; cortex-a72 reached userspace in 1.6 s.
        cpu_tcg="cortex-a72",
        cpu_kvm="host",
        console="ttyAMA0",
        cross_prefix="aarch64-linux-gnu-",
        kernel_flavour="arm64",
        # lz4 halves the initrd; boot-to-ready was lower in 4 of 4 paired runs (3.8 s vs
        # 4.6 s median, loaded host). On x86_64 it was a wash, so that initrd stays plain.
        initrd_compression="lz4",
    ),
}

# Debian 12 kernels the platform boots; "6.1" is bookworm's own, "6.12" its backport.
KERNELS: tuple[str, ...] = ("6.1", "6.12")


def get_arch(name: str) -> Arch:
    try:
        return ARCHES[name]
    except KeyError:
        raise KeyError(f"unknown architecture {name!r} (choose from {', '.join(ARCHES)})") from None
