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
