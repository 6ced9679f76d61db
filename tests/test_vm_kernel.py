"""Host-only tests of kbox.vm.kernel: bzImage parsing, payload extraction, modules, cpio."""
from __future__ import annotations

import lzma
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from kbox.vm import kernel
from kbox.vm.kernel import CpioWriter, KernelFormatError


def make_bzimage(payload: bytes, setup_sects: int = 3, protocol: int = 0x020F,
                 payload_offset: int = 0x100) -> bytes:
    """A synthetic bzImage: boot sector + setup_sects sectors, then protected-mode code."""
    pm_start = (setup_sects + 1) * 512
    img = bytearray(pm_start + payload_offset + len(payload) + 64)
    img[0x1F1] = setup_sects
    img[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", img, 0x206, protocol)
    struct.pack_into("<II", img, 0x248, payload_offset, len(payload))
    img[pm_start + payload_offset:pm_start + payload_offset + len(payload)] = payload
    return bytes(img)


def with_size(stream: bytes, size: int) -> bytes:
    return stream + struct.pack("<I", size)


def test_bzimage_header_fields_are_read_from_the_setup_header() -> None:
    img = make_bzimage(b"P" * 40, setup_sects=5, payload_offset=0x321)
    hdr = kernel.parse_bzimage_header(img)
    assert (hdr.setup_sects, hdr.protocol, hdr.payload_offset, hdr.payload_length) == (
        5, 0x020F, 0x321, 40)
    assert hdr.payload_start == 6 * 512 + 0x321
    assert kernel.bzimage_payload(img) == b"P" * 40


def test_setup_sects_zero_means_four() -> None:
    img = make_bzimage(b"Q" * 16, setup_sects=4)
    img = img[:0x1F1] + b"\0" + img[0x1F2:]
    assert kernel.bzimage_payload(img) == b"Q" * 16


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b[:0x202] + b"XXXX" + b[0x206:], "HdrS"),
    (lambda b: b[:0x206] + struct.pack("<H", 0x0207) + b[0x208:], "2.08"),
    (lambda b: b[:0x24C] + struct.pack("<I", 1 << 30) + b[0x250:], "outside"),
    (lambda b: b[:0x100], "too short"),
])
def test_bad_bzimage_headers_are_rejected(mutate, message) -> None:
    with pytest.raises(KernelFormatError, match=message):
        kernel.parse_bzimage_header(mutate(make_bzimage(b"x" * 32)))


def test_xz_payload_is_decompressed_and_its_size_checked() -> None:
    body = bytes(range(256)) * 1000
    payload = with_size(lzma.compress(body, format=lzma.FORMAT_XZ), len(body))
    assert kernel.decompress_payload(payload) == body
    with pytest.raises(KernelFormatError, match="appended size"):
        kernel.decompress_payload(payload[:-4] + struct.pack("<I", len(body) + 1))


@pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd CLI not installed")
def test_zstd_payload_from_a_bzimage_is_decompressed() -> None:
    body = b"kernel text " * 5000
    stream = subprocess.run(["zstd", "-q", "-c"], input=body, capture_output=True,
                            check=True, timeout=30).stdout
    img = make_bzimage(with_size(stream, len(body)))
    assert kernel.decompress_payload(kernel.bzimage_payload(img)) == body


def test_unknown_compression_is_an_error() -> None:
    with pytest.raises(KernelFormatError, match="unknown payload compression"):
        kernel.decompress_payload(with_size(b"LZ4!" + b"\0" * 20, 20))


def test_a_payload_that_is_not_a_pvh_elf_falls_back_to_none() -> None:
    body = b"\x7fELF" + b"\0" * 100  # ELF magic but garbage: not bootable via PVH
    img = make_bzimage(with_size(lzma.compress(body, format=lzma.FORMAT_XZ), len(body)))
    assert kernel.extract_pvh_vmlinux(img) is None
    assert kernel.extract_pvh_vmlinux(b"not a kernel at all" * 100) is None


def test_pvh_note_is_found_in_a_real_elf_with_that_note(tmp_path: Path) -> None:
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    # An ELF note "Xen", type 18 (XEN_ELFNOTE_PHYS32_ENTRY), in its own PT_NOTE segment.
    src = tmp_path / "note.s"
    src.write_text(
        '.section .note.Xen,"a",@note\n.balign 4\n.long 4\n.long 4\n.long 18\n'
        '.asciz "Xen"\n.long 0x1000000\n.text\n.globl _start\n_start: ret\n')
    out = tmp_path / "note.elf"
    subprocess.run(["gcc", "-nostdlib", "-static", "-o", str(out), str(src)], check=True,
                   timeout=60)
    assert kernel.has_pvh_note(out.read_bytes())
    plain = tmp_path / "plain.elf"
    src2 = tmp_path / "plain.s"
    src2.write_text(".text\n.globl _start\n_start: ret\n")
    subprocess.run(["gcc", "-nostdlib", "-static", "-o", str(plain), str(src2)], check=True,
                   timeout=60)
    assert not kernel.has_pvh_note(plain.read_bytes())


def test_modinfo_strings_are_parsed_and_depends_normalised() -> None:
    raw = (b"license=GPL\0depends=net_failover,virtio-ring\0name=virtio_net\0"
           b"alias=virtio:d00000001v*\0alias=other\0\0")
    info = kernel.parse_modinfo(raw)
    assert info["name"] == ["virtio_net"]
    assert info["alias"] == ["virtio:d00000001v*", "other"]
    assert kernel.module_depends(info) == ["net_failover", "virtio_ring"]
    assert kernel.module_depends(kernel.parse_modinfo(b"depends=\0")) == []


def test_module_names_drop_suffixes_and_dashes() -> None:
    assert kernel.module_name("kernel/drivers/net/virtio_net.ko.xz") == "virtio_net"
    assert kernel.module_name("net-failover.ko") == "net_failover"
    assert kernel.module_name("virtio_rng") == "virtio_rng"


def test_load_order_puts_dependencies_first_transitively() -> None:
    deps = {"virtio_net": ["net_failover"], "net_failover": ["failover"], "failover": [],
            "virtio_pci": ["virtio_pci_modern_dev", "virtio_pci_legacy_dev"],
            "virtio_pci_modern_dev": [], "virtio_pci_legacy_dev": [], "virtio_rng": []}
    order = kernel.load_order(["virtio_pci", "virtio_net", "virtio_rng"], deps)
    assert order == ["virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
                     "failover", "net_failover", "virtio_net", "virtio_rng"]
    for mod, ds in deps.items():
        if mod in order:
            assert all(order.index(d) < order.index(mod) for d in ds)


def test_load_order_reports_cycles_and_missing_modules() -> None:
    with pytest.raises(KernelFormatError, match="cycle: a -> b -> a"):
        kernel.load_order(["a"], {"a": ["b"], "b": ["a"]})
    with pytest.raises(KernelFormatError, match="module c not found \\(needed by b\\)"):
        kernel.load_order(["a"], {"a": ["b"], "b": ["c"]})


def _fake_module(tmp: Path, name: str, depends: str) -> Path:
    """A relocatable ELF with a .modinfo section, as modpost leaves in every .ko."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    src = tmp / f"{name}.s"
    src.write_text(f'.section .modinfo,"a"\n.asciz "depends={depends}"\n.asciz "name={name}"\n')
    out = tmp / f"{name}.ko"
    subprocess.run(["gcc", "-c", "-o", str(out), str(src)], check=True, timeout=60)
    return out


def test_resolve_modules_reads_depends_from_ko_and_ko_xz(tmp_path: Path) -> None:
    mods = tmp_path / "lib/modules/9.9.9"
    (mods / "kernel").mkdir(parents=True)
    build = tmp_path / "build"
    build.mkdir()
    (mods / "kernel" / "virtio_net.ko.xz").write_bytes(
        lzma.compress(_fake_module(build, "virtio_net", "net_failover").read_bytes()))
    (mods / "kernel" / "net_failover.ko.xz").write_bytes(
        lzma.compress(_fake_module(build, "net_failover", "failover").read_bytes()))
    shutil.copy(_fake_module(build, "failover", ""), mods / "kernel" / "failover.ko")
    (mods / "modules.builtin").write_text("kernel/drivers/virtio/virtio_pci.ko\n")
    res = kernel.resolve_modules(mods, ["virtio_pci", "virtio_net"])
    assert res.order == ["failover", "net_failover", "virtio_net"]
    assert res.builtin == ["virtio_pci"]
    assert res.files["virtio_net"].startswith(b"\x7fELF")  # decompressed
    with pytest.raises(KernelFormatError, match="virtio_gpu"):
        kernel.resolve_modules(mods, ["virtio_gpu"])


def test_cpio_archive_round_trips_through_gnu_cpio(tmp_path: Path) -> None:
    if shutil.which("cpio") is None:
        pytest.skip("cpio not installed")
    src = tmp_path / "src"
    (src / "usr/bin").mkdir(parents=True)
    (src / "usr/bin/prog").write_bytes(b"#!/bin/sh\necho hi\n")
    (src / "usr/bin/prog").chmod(0o755)
    (src / "bin").symlink_to("usr/bin")
    (src / "usr/bin/a").write_bytes(b"shared")
    (src / "usr/bin/b").hardlink_to(src / "usr/bin/a")
    arc = tmp_path / "x.cpio"
    with CpioWriter(arc) as w:
        w.add_tree(src)
        w.add_node("dev/console", 0o020600, 5, 1)
    assert arc.stat().st_size % 512 == 0
    listing = subprocess.run(["cpio", "-itv", "--quiet"], stdin=arc.open("rb"),
                             capture_output=True, text=True, timeout=30, check=True).stdout
    assert "bin -> usr/bin" in listing
    assert "dev/console" in listing and listing.count(" root ") >= 5
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"], cwd=out,
                   stdin=arc.open("rb"), capture_output=True, timeout=30, check=False)
    assert (out / "usr/bin/prog").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (out / "usr/bin/prog").stat().st_mode & 0o111
    assert (out / "usr/bin/a").read_bytes() == (out / "usr/bin/b").read_bytes() == b"shared"


# ---- identifying a kernel file (--kernel-image) ------------------------------------------

def arm64_image(body: bytes = b"") -> bytes:
    img = bytearray(0x40 + len(body))
    img[0:2] = b"MZ"                      # the EFI stub's DOS header, as Debian's Image has
    img[0x38:0x3C] = b"ARM\x64"
    img[0x40:] = body
    return bytes(img)


def elf_header(machine: int) -> bytes:
    return b"\x7fELF\x02\x01\x01" + b"\0" * 9 + struct.pack("<HH", 2, machine) + b"\0" * 44


def zboot_image(payload: bytes, comp: bytes = b"gzip", pe_machine: int = 0xAA64) -> bytes:
    img = bytearray(0x100)
    img[0:2], img[4:8] = b"MZ", b"zimg"
    struct.pack_into("<II", img, 0x08, len(img), len(payload))
    img[0x18:0x18 + len(comp)] = comp
    struct.pack_into("<I", img, 0x3C, 0x80)
    img[0x80:0x84] = b"PE\0\0"
    struct.pack_into("<H", img, 0x84, pe_machine)
    return bytes(img) + payload


def test_kernel_files_are_identified_by_their_headers() -> None:
    import gzip
    bz = bytearray(make_bzimage(b"x" * 32))       # protocol 2.15
    struct.pack_into("<H", bz, 0x236, 1)          # xloadflags: XLF_KERNEL_64
    assert kernel.identify_kernel(bytes(bz)) == kernel.KernelKind("x86_64", "bzImage")
    struct.pack_into("<H", bz, 0x236, 0)          # a 32-bit kernel
    assert kernel.identify_kernel(bytes(bz)).arch == "i386"
    struct.pack_into("<H", bz, 0x206, 0x020B)     # before 2.12 xloadflags did not exist
    assert kernel.identify_kernel(bytes(bz)).arch == "x86_64"
    assert kernel.identify_kernel(arm64_image()) == kernel.KernelKind("aarch64", "Image")
    assert kernel.identify_kernel(gzip.compress(arm64_image(b"k" * 5000))) == \
        kernel.KernelKind("aarch64", "Image.gz")
    assert kernel.identify_kernel(elf_header(62)) == kernel.KernelKind("x86_64", "vmlinux")
    assert kernel.identify_kernel(elf_header(183)).arch == "aarch64"
    assert kernel.identify_kernel(elf_header(243)).arch == "riscv64"
    assert kernel.identify_kernel(zboot_image(b"")) == kernel.KernelKind("aarch64",
                                                                         "EFI zboot (gzip)")
    riscv = bytearray(0x40)
    riscv[0x38:0x3C] = b"RSC\x05"
    assert kernel.identify_kernel(bytes(riscv)).arch == "riscv64"
    with pytest.raises(KernelFormatError, match="not a kernel image"):
        kernel.identify_kernel(b"root:x:0:0:root:/root:/bin/sh\n" * 10)


def test_release_comes_from_the_setup_header_or_the_linux_banner() -> None:
    bz = bytearray(make_bzimage(b"x" * 32) + b"\0" * 0x400)
    version = b"6.12.100+deb12-amd64 (debian-kernel@lists.debian.org) #1 SMP\0"
    struct.pack_into("<H", bz, 0x20E, 0x300)
    bz[0x500:0x500 + len(version)] = version
    assert kernel.bzimage_release(bytes(bz)) == "6.12.100+deb12-amd64"
    body = b"\0junk\0Linux version 6.1.0-50-arm64 (debian-kernel@lists.debian.org) (gcc)\0"
    assert kernel.banner_release(arm64_image(body)) == "6.1.0-50-arm64"
    assert kernel.banner_release(b"Linux version %s (%s@%s)") is None


def test_zboot_payload_is_unpacked_into_the_image() -> None:
    import gzip
    inner = arm64_image(b"Linux version 6.13.0 (me@here) (gcc)")
    assert kernel.unpack_zboot(zboot_image(gzip.compress(inner))) == inner
    with pytest.raises(KernelFormatError, match="lz4"):
        kernel.unpack_zboot(zboot_image(b"??", comp=b"lz4"))


def test_embedded_config_and_config_files_parse_into_symbols() -> None:
    import gzip
    text = "CONFIG_VIRTIO_NET=m\n# CONFIG_PVH is not set\nCONFIG_SERIAL_8250_CONSOLE=y\n" \
           'CONFIG_LOCALVERSION="-kbox"\n'
    blob = b"head" + b"IKCFG_ST" + gzip.compress(text.encode()) + b"IKCFG_ED" + b"tail"
    cfg = kernel.parse_kconfig(kernel.extract_ikconfig(blob) or "")
    assert cfg == {"VIRTIO_NET": "m", "SERIAL_8250_CONSOLE": "y", "LOCALVERSION": "-kbox"}
    assert kernel.extract_ikconfig(b"no config here") is None


def test_vermagic_names_the_release_a_module_was_built_for() -> None:
    info = kernel.parse_modinfo(b"vermagic=6.1.0-50-arm64 SMP mod_unload aarch64\0name=x\0")
    assert kernel.module_vermagic(info) == "6.1.0-50-arm64"
    assert kernel.module_vermagic({}) is None
