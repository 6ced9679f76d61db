"""Kernel facts the image builder needs: bzImage payload extraction and module dependencies.

Everything here is pure (bytes in, bytes/data out) except `zstd_decompress`, which runs the
`zstd` CLI, so it can be unit-tested on synthetic inputs without a network or a kernel.
"""
from __future__ import annotations

import io
import lzma
import os
import re
import shutil
import stat as st
import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Self

from elftools.common.exceptions import ELFError
from elftools.construct import ConstructError
from elftools.elf.elffile import ELFFile
from elftools.elf.segments import NoteSegment

from kbox.errors import UserError

# Boot protocol offsets (Documentation/arch/x86/boot.rst).
_SETUP_SECTS = 0x1F1
_HDRS_MAGIC_OFF = 0x202
_VERSION_OFF = 0x206
_PAYLOAD_OFF = 0x248  # payload_offset (u32), payload_length (u32); protocol >= 2.08

XZ_MAGIC = b"\xfd7zXZ\x00"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"

# XEN_ELFNOTE_PHYS32_ENTRY: the note QEMU looks for to boot an ELF vmlinux via PVH.
_PVH_NOTE_NAME = "Xen"
_PVH_NOTE_TYPE = 18


class KernelFormatError(Exception):
    """The kernel image is not what the boot protocol says it should be."""


@dataclass(frozen=True)
class BzImageHeader:
    setup_sects: int
    protocol: int        # e.g. 0x020f
    payload_offset: int  # relative to the start of the protected-mode code
    payload_length: int

    @property
    def protected_mode_start(self) -> int:
        # The real-mode part is the boot sector plus setup_sects sectors (0 means 4, historically).
        return ((self.setup_sects or 4) + 1) * 512

    @property
    def payload_start(self) -> int:
        return self.protected_mode_start + self.payload_offset


def parse_bzimage_header(data: bytes) -> BzImageHeader:
    if len(data) < _PAYLOAD_OFF + 8:
        raise KernelFormatError("file too short for an x86 boot header")
    if data[_HDRS_MAGIC_OFF:_HDRS_MAGIC_OFF + 4] != b"HdrS":
        raise KernelFormatError("no 'HdrS' magic: not a bzImage")
    (protocol,) = struct.unpack_from("<H", data, _VERSION_OFF)
    if protocol < 0x208:
        raise KernelFormatError(f"boot protocol {protocol:#x} predates payload_offset (2.08)")
    setup_sects = data[_SETUP_SECTS]
    payload_offset, payload_length = struct.unpack_from("<II", data, _PAYLOAD_OFF)
    hdr = BzImageHeader(setup_sects, protocol, payload_offset, payload_length)
    if hdr.payload_start + payload_length > len(data) or payload_length < 8:
        raise KernelFormatError("payload lies outside the file")
    return hdr


def bzimage_payload(data: bytes) -> bytes:
    """The compressed kernel inside a bzImage, including its appended 4-byte size."""
    hdr = parse_bzimage_header(data)
    return data[hdr.payload_start:hdr.payload_start + hdr.payload_length]


def zstd_decompress(data: bytes, *, timeout: float = 120.0) -> bytes:
    if shutil.which("zstd") is None:
        raise UserError("zstd missing (needed to unpack the 6.12 kernel): apt-get install zstd")
    # The kernel's ZSTD stream has no content size in some builds; -c streams it anyway.
    proc = subprocess.run(["zstd", "-d", "-q", "-c"], input=data, capture_output=True,
                          timeout=timeout, check=False)
    if proc.returncode != 0:
        raise KernelFormatError(f"zstd -d failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def decompress_payload(payload: bytes) -> bytes:
    """Decompress a kernel payload (XZ or ZSTD or gzip) and check the appended size.

    Kbuild's `size_append` puts the uncompressed size (little-endian u32) after the
    compressed stream; the decompressors reject it as trailing garbage, so it is stripped.
    """
    if len(payload) < 8:
        raise KernelFormatError("payload too short")
    stream, (expected,) = payload[:-4], struct.unpack("<I", payload[-4:])
    if stream.startswith(XZ_MAGIC):
        try:
            out = lzma.decompress(stream, format=lzma.FORMAT_XZ)
        except lzma.LZMAError as exc:
            raise KernelFormatError(f"bad XZ payload: {exc}") from exc
    elif stream.startswith(ZSTD_MAGIC):
        out = zstd_decompress(stream)
    elif stream.startswith(GZIP_MAGIC):
        import gzip
        out = gzip.decompress(stream)
    else:
        raise KernelFormatError(f"unknown payload compression (magic {stream[:6].hex()})")
    if len(out) & 0xFFFFFFFF != expected:
        raise KernelFormatError(
            f"decompressed {len(out)} bytes but the appended size says {expected}")
    return out


def has_pvh_note(elf_bytes: bytes) -> bool:
    """True if `elf_bytes` is an ELF with XEN_ELFNOTE_PHYS32_ENTRY (bootable by QEMU via PVH)."""
    if not elf_bytes.startswith(b"\x7fELF"):
        return False
    try:
        elf = ELFFile(io.BytesIO(elf_bytes))
        for seg in elf.iter_segments():
            if not isinstance(seg, NoteSegment):
                continue
            for note in seg.iter_notes():
                if note["n_name"] == _PVH_NOTE_NAME and note["n_type"] in (_PVH_NOTE_TYPE,
                                                                         "XEN_ELFNOTE_PHYS32_ENTRY"):
                    return True
    except (ELFError, ConstructError, ValueError, struct.error):
        return False  # a malformed ELF is simply "not PVH-bootable"; the caller falls back
    return False


def extract_pvh_vmlinux(bzimage: bytes) -> bytes | None:
    """The ELF vmlinux inside a bzImage if it is PVH-bootable, else None (boot the bzImage)."""
    try:
        vmlinux = decompress_payload(bzimage_payload(bzimage))
    except KernelFormatError:
        return None
    return vmlinux if has_pvh_note(vmlinux) else None


# ---- what a kernel file is (for --kernel-image) -------------------------------------------

# Machine numbers of the ELF header (e_machine) and the PE header of an EFI zboot image.
_ELF_MACHINES = {62: "x86_64", 183: "aarch64", 3: "i386", 40: "arm", 243: "riscv64",
                 21: "ppc64", 22: "s390x"}
_PE_MACHINES = {0x8664: "x86_64", 0xAA64: "aarch64", 0x014C: "i386", 0x01C2: "arm",
                0x01C4: "arm", 0x5064: "riscv64"}
_XLOADFLAGS_OFF = 0x236   # boot protocol >= 2.12; bit 0: XLF_KERNEL_64
_KERNEL_VERSION_OFF = 0x20E
_ARM64_MAGIC_OFF = 0x38   # Documentation/arch/arm64/booting.rst: "ARM\x64"
_RISCV_MAGIC2_OFF = 0x38  # "RSC\x05" (Documentation/arch/riscv/boot-image-header.rst)
_ARM_ZIMAGE_MAGIC_OFF = 0x24
HEAD_BYTES = 1 << 16      # enough of a file to identify it (a gzip file: its first 64 KiB)


@dataclass(frozen=True)
class KernelKind:
    arch: str     # kbox's arch name when it is one of those, else a plain name ("i386", "arm")
    format: str   # "bzImage", "vmlinux", "Image", "Image.gz", "EFI zboot (gzip)"


def _gunzip_head(data: bytes, limit: int = 4096) -> bytes:
    d = zlib.decompressobj(wbits=31)
    try:
        return d.decompress(data, limit)
    except zlib.error as exc:
        raise KernelFormatError(f"bad gzip stream: {exc}") from exc


def identify_kernel(head: bytes) -> KernelKind:
    """The architecture and format of a kernel file from its first bytes (HEAD_BYTES).

    bzImage: "HdrS" at 0x202 (64-bit unless xloadflags says otherwise); arm64 Image:
    "ARM\\x64" at 0x38; ELF: e_machine; EFI zboot ("MZ" + "zimg"): the PE machine; gzip:
    the header of what it decompresses to.
    """
    if head.startswith(GZIP_MAGIC):
        inner = identify_kernel(_gunzip_head(head))
        fmt = "Image.gz" if inner.format == "Image" else f"{inner.format} (gzip)"
        return KernelKind(inner.arch, fmt)
    if head.startswith(b"\x7fELF") and len(head) >= 20:
        (machine,) = struct.unpack_from("<H", head, 18)
        return KernelKind(_ELF_MACHINES.get(machine, f"ELF machine {machine}"), "vmlinux")
    if head[:2] == b"MZ" and head[4:8] == b"zimg" and len(head) >= 0x40:
        (pe,) = struct.unpack_from("<I", head, 0x3C)
        machine = struct.unpack_from("<H", head, pe + 4)[0] if pe + 6 <= len(head) else -1
        comp = head[0x18:0x38].split(b"\0")[0].decode(errors="replace")
        return KernelKind(_PE_MACHINES.get(machine, f"PE machine {machine:#x}"),
                          f"EFI zboot ({comp})")
    if head[_ARM64_MAGIC_OFF:_ARM64_MAGIC_OFF + 4] == b"ARM\x64":
        return KernelKind("aarch64", "Image")
    if head[_HDRS_MAGIC_OFF:_HDRS_MAGIC_OFF + 4] == b"HdrS" and len(head) > _XLOADFLAGS_OFF + 2:
        (protocol,) = struct.unpack_from("<H", head, _VERSION_OFF)
        (xload,) = struct.unpack_from("<H", head, _XLOADFLAGS_OFF)
        return KernelKind("i386" if protocol >= 0x20C and not xload & 1 else "x86_64", "bzImage")
    if head[_RISCV_MAGIC2_OFF:_RISCV_MAGIC2_OFF + 4] == b"RSC\x05":
        return KernelKind("riscv64", "Image")
    if len(head) >= 0x28 and struct.unpack_from("<I", head, _ARM_ZIMAGE_MAGIC_OFF)[0] == 0x016F2818:
        return KernelKind("arm", "zImage")
    raise KernelFormatError("not a kernel image (no bzImage, arm64 Image, ELF or EFI zboot "
                            "header)")


def bzimage_release(data: bytes) -> str | None:
    """`uname -r` from a bzImage's kernel_version string (setup header, protocol >= 2.0)."""
    if len(data) < _KERNEL_VERSION_OFF + 2:
        return None
    (ptr,) = struct.unpack_from("<H", data, _KERNEL_VERSION_OFF)
    start = ptr + 0x200
    if not ptr or start >= len(data):
        return None
    text = data[start:start + 256].split(b"\0")[0].decode(errors="replace").split()
    return text[0] if text else None


_BANNER_RE = re.compile(rb"Linux version (\d[^\s\0]*) \(")


def banner_release(kernel_bytes: bytes) -> str | None:
    """`uname -r` from the linux_banner string of an uncompressed kernel (Image, vmlinux)."""
    m = _BANNER_RE.search(kernel_bytes)
    return m.group(1).decode(errors="replace") if m else None


def unpack_zboot(data: bytes) -> bytes:
    """The Image inside an EFI zboot file (CONFIG_EFI_ZBOOT's vmlinuz.efi): QEMU 7.2 cannot
    boot one directly. Header (drivers/firmware/efi/libstub/zboot-header.S): payload offset
    and size at 0x08 and 0x0c, the compression's name at 0x18."""
    off, size = struct.unpack_from("<II", data, 0x08)
    comp = data[0x18:0x38].split(b"\0")[0].decode(errors="replace")
    payload = data[off:off + size]
    if comp == "gzip":
        import gzip
        return gzip.decompress(payload)
    if comp == "zstd":
        return zstd_decompress(payload)
    if comp in ("xzkern", "lzma"):
        return lzma.decompress(payload)
    raise KernelFormatError(f"EFI zboot image compressed with {comp}, which kbox cannot unpack")


_IKCFG_START, _IKCFG_END = b"IKCFG_ST", b"IKCFG_ED"


def extract_ikconfig(kernel_bytes: bytes) -> str | None:
    """The .config embedded by CONFIG_IKCONFIG (a gzip stream between IKCFG_ST/IKCFG_ED) in an
    uncompressed kernel, or None."""
    start = kernel_bytes.find(_IKCFG_START)
    if start < 0:
        return None
    end = kernel_bytes.find(_IKCFG_END, start)
    if end < 0:
        return None
    import gzip
    try:
        return gzip.decompress(kernel_bytes[start + len(_IKCFG_START):end]).decode(
            errors="replace")
    except (OSError, EOFError, zlib.error):
        return None


def parse_kconfig(text: str) -> dict[str, str]:
    """CONFIG_FOO=y lines -> {"FOO": "y"}; '# CONFIG_FOO is not set' simply leaves FOO out."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("CONFIG_") and "=" in line:
            key, _, value = line.partition("=")
            out[key[len("CONFIG_"):]] = value.strip().strip('"')
    return out


def module_vermagic(modinfo: dict[str, list[str]]) -> str | None:
    """The kernel release a module was built for (first word of its vermagic)."""
    values = modinfo.get("vermagic", [])
    return values[0].split()[0] if values and values[0].split() else None


# ---- modules -----------------------------------------------------------------------------

MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


def module_name(path_or_name: str) -> str:
    """Canonical module name: basename without .ko*, dashes as underscores (as modinfo does)."""
    name = Path(path_or_name).name
    for suffix in MODULE_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace("-", "_")


def decompress_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".zst"):
        return zstd_decompress(data)
    if path.name.endswith(".gz"):
        import gzip
        return gzip.decompress(data)
    return data


def parse_modinfo(raw: bytes) -> dict[str, list[str]]:
    """Parse a .modinfo section: NUL-separated `key=value` strings (keys may repeat)."""
    info: dict[str, list[str]] = {}
    for entry in raw.split(b"\0"):
        if b"=" not in entry:
            continue
        key, _, value = entry.partition(b"=")
        info.setdefault(key.decode(errors="replace"), []).append(value.decode(errors="replace"))
    return info


def module_depends(modinfo: dict[str, list[str]]) -> list[str]:
    deps: list[str] = []
    for value in modinfo.get("depends", []):
        deps.extend(module_name(d) for d in value.split(",") if d.strip())
    return deps


def read_modinfo(ko_bytes: bytes) -> dict[str, list[str]]:
    elf = ELFFile(io.BytesIO(ko_bytes))
    sec = elf.get_section_by_name(".modinfo")
    if sec is None:
        raise KernelFormatError("module has no .modinfo section")
    return parse_modinfo(sec.data())


def load_order(wanted: list[str], depends: dict[str, list[str]]) -> list[str]:
    """Every module in `wanted` plus its transitive dependencies, dependencies first.

    `depends` maps a module to its direct dependencies. Deterministic: dependencies are
    visited in the order modinfo lists them. A module missing from `depends` or a cycle is
    an error, since insmod would fail at boot with a far less useful message.
    """
    order: list[str] = []
    state: dict[str, str] = {}  # "visiting" | "done"

    def visit(mod: str, chain: tuple[str, ...]) -> None:
        if state.get(mod) == "done":
            return
        if state.get(mod) == "visiting":
            raise KernelFormatError("module dependency cycle: " + " -> ".join(chain + (mod,)))
        if mod not in depends:
            via = f" (needed by {chain[-1]})" if chain else ""
            raise KernelFormatError(f"module {mod} not found{via}")
        state[mod] = "visiting"
        for dep in depends[mod]:
            visit(dep, chain + (mod,))
        state[mod] = "done"
        order.append(mod)

    for mod in wanted:
        visit(module_name(mod), ())
    return order


def builtin_modules(modules_dir: Path) -> set[str]:
    """Names of modules compiled into the kernel (from modules.builtin)."""
    path = modules_dir / "modules.builtin"
    if not path.exists():
        return set()
    return {module_name(line.strip()) for line in path.read_text().splitlines() if line.strip()}


def index_modules(modules_dir: Path) -> dict[str, Path]:
    """Map module name -> file for every loadable module under lib/modules/<version>/."""
    return {module_name(p.name): p for p in modules_dir.rglob("*.ko*")
            if re.search(r"\.ko(\.(xz|zst|gz))?$", p.name)}


@dataclass(frozen=True)
class ResolvedModules:
    order: list[str]              # load order (dependencies first), loadable modules only
    files: dict[str, bytes]       # name -> uncompressed .ko contents
    builtin: list[str]            # wanted modules that are built in (nothing to load)


def resolve_modules(modules_dir: Path, wanted: list[str]) -> ResolvedModules:
    """Collect `wanted` modules and their dependencies from an extracted kernel package."""
    builtin = builtin_modules(modules_dir)
    index = index_modules(modules_dir)
    depends: dict[str, list[str]] = {}
    files: dict[str, bytes] = {}
    todo = [module_name(w) for w in wanted if module_name(w) not in builtin]
    missing = [w for w in todo if w not in index]
    if missing:
        raise KernelFormatError(f"modules neither loadable nor built in: {', '.join(missing)}")
    while todo:
        mod = todo.pop()
        if mod in depends:
            continue
        ko = decompress_module(index[mod])
        files[mod] = ko
        deps = [d for d in module_depends(read_modinfo(ko)) if d not in builtin]
        depends[mod] = deps
        todo.extend(d for d in deps if d in index and d not in depends)
    loadable = [module_name(w) for w in wanted if module_name(w) not in builtin]
    order = load_order(loadable, depends)
    return ResolvedModules(order, {m: files[m] for m in order},
                           sorted(module_name(w) for w in wanted if module_name(w) in builtin))


# ---- initramfs (newc cpio), the other format the kernel consumes -------------------------

class CpioWriter:
    """Write a newc cpio archive as the kernel's initramfs unpacker expects it.

    Written here rather than with cpio(1) so that every entry is owned by root without
    needing root (CI runs unprivileged), device nodes can be added without mknod, and hard
    links stay links: the first entry of an inode carries the data, later ones have size 0
    and the kernel links them to the first (init/initramfs.c, find_link).
    """

    def __init__(self, out: Path | BinaryIO) -> None:
        self._f: BinaryIO
        if isinstance(out, Path):
            self._f, self._own = open(out, "wb"), True  # noqa: SIM115 (closed by close())
        else:
            self._f, self._own = out, False
        self._ino = 1
        self._links: dict[tuple[int, int], int] = {}
        self._pos = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        elif self._own:
            self._f.close()

    def _write(self, data: bytes) -> None:
        self._f.write(data)
        self._pos += len(data)

    def _pad(self) -> None:
        if self._pos % 4:
            self._write(b"\0" * (4 - self._pos % 4))

    def _entry(self, name: str, mode: int, *, ino: int | None = None, nlink: int = 1,
               mtime: int = 0, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        if ino is None:
            ino, self._ino = self._ino, self._ino + 1
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, nlink, mtime, len(data), 0, 0, rdev[0], rdev[1],
                  len(encoded), 0)
        self._write(b"070701" + b"".join(b"%08X" % v for v in fields) + encoded)
        self._pad()
        self._write(data)
        self._pad()

    def add_node(self, name: str, mode: int, major: int, minor: int) -> None:
        self._entry(name, mode, rdev=(major, minor))

    def add_dir(self, name: str, mode: int = 0o040755) -> None:
        self._entry(name, mode)

    def add_file(self, name: str, data: bytes, mode: int = 0o100644, mtime: int = 0) -> None:
        self._entry(name, mode, data=data, mtime=mtime)

    def add_tree(self, root: Path, *, skip_root: bool = True) -> None:
        """Add everything under `root` (its own entry is skipped: '.' exists already)."""
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            base = Path(dirpath)
            rel_base = base.relative_to(root)
            if str(rel_base) != "." or not skip_root:
                self._add_path(base, str(rel_base))
            for name in sorted(filenames) + [d for d in dirnames if (base / d).is_symlink()]:
                self._add_path(base / name, str(rel_base / name) if str(rel_base) != "."
                               else name)
            dirnames[:] = [d for d in dirnames if not (base / d).is_symlink()]

    def _add_path(self, path: Path, name: str) -> None:
        s = os.lstat(path)
        mtime = int(s.st_mtime)
        if st.S_ISLNK(s.st_mode):
            self._entry(name, s.st_mode, data=os.readlink(path).encode(), mtime=mtime)
        elif st.S_ISDIR(s.st_mode):
            self._entry(name, s.st_mode, mtime=mtime)
        elif st.S_ISREG(s.st_mode):
            if s.st_nlink > 1:
                key = (s.st_dev, s.st_ino)
                if key in self._links:
                    self._entry(name, s.st_mode, ino=self._links[key], nlink=2, mtime=mtime)
                    return
                ino, self._ino = self._ino, self._ino + 1
                self._links[key] = ino
                self._entry(name, s.st_mode, ino=ino, nlink=2, mtime=mtime,
                            data=path.read_bytes())
            else:
                self._entry(name, s.st_mode, data=path.read_bytes(), mtime=mtime)
        # sockets/fifos/devices in a package tree are not expected; skip them.

    def close(self) -> None:
        self._entry("TRAILER!!!", 0, ino=0)
        # Concatenated archives must each start on a 4-byte boundary; also round to 512 so
        # `cat a.cpio b.cpio` of separately written archives stays aligned.
        if self._pos % 512:
            self._write(b"\0" * (512 - self._pos % 512))
        self._f.flush()
        if self._own:
            self._f.close()
