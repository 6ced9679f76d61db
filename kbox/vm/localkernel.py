"""A local kernel build as a guest kernel (--kernel-image PATH [--modules DIR]).

What is checked before QEMU starts, each failure one line naming the fix:
- the file is a kernel, of the guest's architecture (from its header: kernel.identify_kernel);
  an x86_64 ELF vmlinux must carry the PVH entry note (QEMU boots no other ELF kernel), and
  an aarch64 kernel must be an Image, Image.gz or EFI zboot file (not the ELF vmlinux);
- its release (`uname -r`: the bzImage's version string, else the linux_banner);
- what the guest needs from it. The guest reaches SSH only through virtio-net-pci, so
  virtio_pci and virtio_net (REQUIRED_MODULES) must be built in or loadable; the other
  modules of images/modules.txt are loaded when the kernel has them (QEMU attaches no
  device for them today). With --modules DIR, "built in" is DIR's modules.builtin and
  "loadable" a .ko under DIR whose vermagic is the kernel's release. Without --modules, the
  kernel's config decides: IKCONFIG inside the image, else a `.config` of the build tree the
  image sits in, else `config-<release>` beside it (Debian's /boot layout). A config also
  lets GUEST_CONFIG be checked (initramfs, devtmpfs, the serial console...).
- No config and no --modules: nothing can be known before boot. The modules are assumed
  built in, a notice says so, and the boot itself is the check: the guest's init reports a
  missing eth0 on the console and the VM fails at once with that (machine.py) rather than
  at the SSH timeout.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from kbox.errors import UserError
from kbox.vm import kernel
from kbox.vm.arch import ARCHES
from kbox.vm.kernel import KernelFormatError

REQUIRED_MODULES = ("virtio_pci", "virtio_net")
# Module name -> the config symbol that builds it.
MODULE_SYMBOLS = {"virtio_pci": "VIRTIO_PCI", "virtio_net": "VIRTIO_NET",
                  "virtio_console": "VIRTIO_CONSOLE", "virtio_rng": "HW_RANDOM_VIRTIO"}
# Built-in features the guest cannot do without, checked when a config is known.
GUEST_CONFIG: dict[str, dict[str, str]] = {
    "*": {"BLK_DEV_INITRD": "the initramfs root", "DEVTMPFS": "/init mounts /dev",
          "TMPFS": "/tmp and /run", "INET": "SSH over TCP", "UNIX": "AF_UNIX sockets",
          "PCI": "virtio-net-pci", "SECCOMP_FILTER": "kbox's seccomp and trap tiers"},
    "x86_64": {"SERIAL_8250_CONSOLE": "the ttyS0 console"},
    "aarch64": {"SERIAL_AMBA_PL011_CONSOLE": "the ttyAMA0 console",
                "RD_LZ4": "the lz4-compressed initramfs", "PCI_HOST_GENERIC": "virt's PCIe host"},
}
_EXAMPLE_PATHS = {"x86_64": "arch/x86/boot/bzImage", "aarch64": "arch/arm64/boot/Image"}


@dataclass
class LocalKernel:
    path: Path
    arch: str
    format: str
    release: str
    boot_image: bytes              # what QEMU's -kernel gets (PVH vmlinux, Image, ...)
    config: dict[str, str] | None = None
    config_source: str = ""
    notes: list[str] = field(default_factory=list)


def _read(path: Path) -> bytes:
    if not path.exists():
        raise UserError(f"--kernel-image {path}: no such file", 2)
    if path.is_dir():
        raise UserError(f"--kernel-image {path} is a directory; give the kernel file (e.g. "
                        f"{_EXAMPLE_PATHS['x86_64']} or {_EXAMPLE_PATHS['aarch64']})", 2)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UserError(f"--kernel-image {path}: {exc.strerror}", 2) from exc


def _find_config(path: Path, release: str, kernel_bytes: bytes) -> tuple[dict[str, str], str] | None:
    text = kernel.extract_ikconfig(kernel_bytes)
    if text is not None:
        return kernel.parse_kconfig(text), "IKCONFIG in the image"
    # A build tree: arch/<a>/boot/<image> or <tree>/vmlinux, with .config at the top.
    for d in list(path.resolve().parents)[:4]:
        if (d / ".config").is_file() and (d / "Makefile").is_file():
            return kernel.parse_kconfig((d / ".config").read_text(errors="replace")), \
                str(d / ".config")
    beside = path.resolve().parent / f"config-{release}"
    if beside.is_file():
        return kernel.parse_kconfig(beside.read_text(errors="replace")), str(beside)
    return None


def inspect(path: Path, want_arch: str | None) -> LocalKernel:
    """Identify `path` and prepare what QEMU boots; UserError (one line) when unusable."""
    data = _read(path)
    try:
        kind = kernel.identify_kernel(data[:kernel.HEAD_BYTES])
    except KernelFormatError as exc:
        raise UserError(f"--kernel-image {path}: {exc}; expected a bzImage or vmlinux "
                        f"(x86_64), an Image or Image.gz (aarch64)", 2) from exc
    if kind.arch not in ARCHES:
        raise UserError(f"--kernel-image {path} is a kernel for {kind.arch} ({kind.format}); "
                        f"kbox boots {' and '.join(ARCHES)} guests", 2)
    if want_arch is not None and kind.arch != want_arch:
        raise UserError(f"--kernel-image {path} is a kernel for {kind.arch} ({kind.format}), "
                        f"not {want_arch}: pass --arch {kind.arch}, or a kernel for {want_arch} "
                        f"({_EXAMPLE_PATHS[want_arch]})", 2)
    try:
        boot, full = _boot_image(path, kind, data)
    except KernelFormatError as exc:
        raise UserError(f"--kernel-image {path}: {exc}", 2) from exc
    release = (kernel.bzimage_release(data) if kind.format == "bzImage" else None) \
        or kernel.banner_release(full)
    if release is None:
        raise UserError(f"--kernel-image {path}: no 'Linux version' string found, cannot "
                        "tell the kernel's release", 2)
    lk = LocalKernel(path, kind.arch, kind.format, release, boot)
    found = _find_config(path, release, full)
    if found is not None:
        lk.config, lk.config_source = found
    return lk


def _boot_image(path: Path, kind: kernel.KernelKind, data: bytes) -> tuple[bytes, bytes]:
    """(what -kernel gets, the uncompressed kernel to read strings from)."""
    if kind.arch == "x86_64":
        if kind.format == "bzImage":
            # PVH boot skips the bzImage decompressing itself under emulation (images.py).
            try:
                full = kernel.decompress_payload(kernel.bzimage_payload(data))
            except KernelFormatError:
                return data, data
            return (full if kernel.has_pvh_note(full) else data), full
        if kind.format == "vmlinux":
            if not kernel.has_pvh_note(data):
                raise KernelFormatError("this vmlinux has no PVH entry note (CONFIG_PVH is off), "
                                        "so QEMU cannot boot it; pass arch/x86/boot/bzImage")
            return data, data
        raise KernelFormatError(f"cannot boot an x86_64 {kind.format}; pass a bzImage or vmlinux")
    if kind.format == "Image":
        return data, data
    if kind.format == "Image.gz":
        import gzip
        # QEMU unpacks a gzipped Image itself; the uncompressed one is read for strings.
        return data, gzip.decompress(data)
    if kind.format.startswith("EFI zboot"):
        image = kernel.unpack_zboot(data)
        return image, image
    raise KernelFormatError(f"cannot boot an aarch64 {kind.format}; pass arch/arm64/boot/Image "
                            "or Image.gz")


# ---- modules ------------------------------------------------------------------------------

def modules_tree(modules: Path, release: str) -> Path:
    """lib/modules/<release> from --modules: that directory, its parent, or a root holding
    lib/modules/ (make modules_install INSTALL_MOD_PATH=DIR, or an unpacked package)."""
    if not modules.is_dir():
        raise UserError(f"--modules {modules}: no such directory", 2)
    for cand in (modules, modules / release, modules / "lib/modules" / release,
                 modules / "usr/lib/modules" / release):
        if (cand / "modules.builtin").exists() or (cand / "modules.dep").exists() \
                or (cand / "kernel").is_dir():
            return cand
    subs = sorted(p.name for base in (modules, modules / "lib/modules")
                  if base.is_dir() for p in base.iterdir() if p.is_dir())
    raise UserError(f"--modules {modules}: no module tree for {release} (no modules.builtin, "
                    f"modules.dep or kernel/ in it, its {release}/ or lib/modules/{release}/; "
                    f"found {', '.join(subs) or 'nothing'})", 2)


@dataclass
class ModulePlan:
    resolved: kernel.ResolvedModules | None   # what the initramfs loads (None: nothing)
    notes: list[str]


def plan_modules(lk: LocalKernel, modules: Path | None, wanted: list[str]) -> ModulePlan:
    """Which of `wanted` to load from where; UserError if a REQUIRED_MODULES one is missing."""
    names = [kernel.module_name(w) for w in wanted]
    notes: list[str] = []
    if modules is None:
        return ModulePlan(None, _plan_from_config(lk, names, notes))
    tree = modules_tree(modules, lk.release)
    builtin = kernel.builtin_modules(tree)
    if lk.config is not None:   # a config that says =y counts too (no modules.builtin there)
        builtin |= {m for m in names if lk.config.get(MODULE_SYMBOLS.get(m, "")) == "y"}
    index = kernel.index_modules(tree)
    missing = [m for m in names if m not in builtin and m not in index]
    hard = [m for m in missing if m in REQUIRED_MODULES]
    if hard:
        raise UserError(f"--modules {modules}: {', '.join(hard)} neither built into "
                        f"{lk.release} (modules.builtin) nor a module under {tree}; the guest "
                        "reaches SSH only through virtio-net-pci", 2)
    notes += [f"{m}: not in this kernel (not loaded)" for m in missing]
    try:
        resolved = kernel.resolve_modules(tree, [m for m in names if m not in missing])
    except KernelFormatError as exc:
        raise UserError(f"--modules {modules}: {exc}", 2) from exc
    for name, ko in resolved.files.items():
        magic = kernel.module_vermagic(kernel.read_modinfo(ko))
        if magic is not None and magic != lk.release:
            raise UserError(f"--modules {modules}: {name}.ko is built for {magic}, the kernel "
                            f"is {lk.release} (insmod would refuse it)", 2)
    _check_config(lk)
    return ModulePlan(resolved, notes)


def _plan_from_config(lk: LocalKernel, names: list[str], notes: list[str]) -> list[str]:
    if lk.config is None:
        notes.append(f"no kernel config found for {lk.path} (no IKCONFIG, no .config of a "
                     f"build tree, no config-{lk.release} beside it): assuming "
                     f"{' and '.join(REQUIRED_MODULES)} are built in; the boot fails at once "
                     "if the guest gets no eth0")
        return notes
    _check_config(lk)
    as_module = [m for m in names if lk.config.get(MODULE_SYMBOLS.get(m, "")) == "m"]
    absent = [m for m in names if MODULE_SYMBOLS.get(m) and m not in as_module
              and lk.config.get(MODULE_SYMBOLS[m]) != "y"]
    hard_mod = [m for m in as_module if m in REQUIRED_MODULES]
    if hard_mod:
        syms = ", ".join(f"CONFIG_{MODULE_SYMBOLS[m]}=m" for m in hard_mod)
        raise UserError(f"{lk.path}: {', '.join(hard_mod)} {_is_are(hard_mod)} a module in this "
                        f"kernel ({syms} "
                        f"in {lk.config_source}): pass --modules DIR (make modules_install "
                        "INSTALL_MOD_PATH=DIR) or build them in", 2)
    hard_absent = [m for m in absent if m in REQUIRED_MODULES]
    if hard_absent:
        syms = ", ".join(f"CONFIG_{MODULE_SYMBOLS[m]}" for m in hard_absent)
        raise UserError(f"{lk.path}: the kernel lacks {', '.join(hard_absent)} ({syms} not set "
                        f"in {lk.config_source}); the guest reaches SSH only through "
                        "virtio-net-pci", 2)
    notes += [f"{m}: a module, not loaded without --modules" for m in as_module]
    return notes


def _is_are(names: list[str]) -> str:
    return "is" if len(names) == 1 else "are each"


def _check_config(lk: LocalKernel) -> None:
    if lk.config is None:
        return
    need = {**GUEST_CONFIG["*"], **GUEST_CONFIG.get(lk.arch, {})}
    missing = [f"CONFIG_{sym} ({why})" for sym, why in need.items() if lk.config.get(sym) != "y"]
    if missing:
        raise UserError(f"{lk.path}: the guest needs built in: {', '.join(missing)} "
                        f"(from {lk.config_source})", 2)


def print_notes(notes: list[str], progress: bool) -> None:
    if progress:
        for n in notes:
            print(f"kbox: {n}", file=sys.stderr)
