"""Host-only tests of kbox.vm.localkernel: what --kernel-image and --modules accept, on
synthetic kernels and module trees (the real boots are in tests/test_vm_faults.py)."""
from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import pytest

from kbox.errors import UserError
from kbox.vm import localkernel

WANTED = ["virtio_pci", "virtio_net", "virtio_console", "virtio_rng"]
RELEASE = "6.13.0-kbox"
GOOD_CONFIG = "\n".join(f"CONFIG_{s}=y" for s in (
    "BLK_DEV_INITRD", "DEVTMPFS", "TMPFS", "INET", "UNIX", "PCI", "SECCOMP_FILTER",
    "SERIAL_AMBA_PL011_CONSOLE", "RD_LZ4", "PCI_HOST_GENERIC")) + "\n"


def arm64_image(release: str = RELEASE) -> bytes:
    img = bytearray(0x40)
    img[0:2], img[0x38:0x3C] = b"MZ", b"ARM\x64"
    return bytes(img) + f"\0Linux version {release} (dev@box) (gcc 12) #1 SMP\0".encode()


def ko(tmp: Path, name: str, depends: str = "", vermagic: str = RELEASE) -> bytes:
    """A relocatable ELF with the .modinfo a real module has."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    src = tmp / f"{name}.s"
    src.write_text(f'.section .modinfo,"a"\n.asciz "depends={depends}"\n.asciz "name={name}"\n'
                   f'.asciz "vermagic={vermagic} SMP mod_unload aarch64"\n')
    out = tmp / f"{name}.ko"
    subprocess.run(["gcc", "-c", "-o", str(out), str(src)], check=True, timeout=60)
    return out.read_bytes()


def modules_root(tmp: Path, names: list[str], builtin: list[str] = (), **kw: str) -> Path:
    """make modules_install INSTALL_MOD_PATH=<root> leaves <root>/lib/modules/<release>."""
    root = tmp / "mods"
    tree = root / "lib/modules" / RELEASE
    (tree / "kernel").mkdir(parents=True)
    (tmp / "build").mkdir(exist_ok=True)
    for n in names:
        (tree / "kernel" / f"{n}.ko").write_bytes(ko(tmp / "build", n, **kw))
    (tree / "modules.builtin").write_text("".join(f"kernel/drivers/{b}.ko\n" for b in builtin))
    return root


def test_an_arm64_image_is_inspected_for_arch_and_release(tmp_path: Path) -> None:
    p = tmp_path / "Image"
    p.write_bytes(arm64_image())
    lk = localkernel.inspect(p, "aarch64")
    assert (lk.arch, lk.format, lk.release, lk.config) == ("aarch64", "Image", RELEASE, None)
    assert lk.boot_image == p.read_bytes()
    gz = tmp_path / "Image.gz"
    gz.write_bytes(gzip.compress(arm64_image()))
    lk = localkernel.inspect(gz, None)          # no --arch: the image says which
    assert (lk.arch, lk.format, lk.release) == ("aarch64", "Image.gz", RELEASE)


@pytest.mark.parametrize("make, want, message", [
    (None, "x86_64", "no such file"),
    (lambda p: p.mkdir(), "x86_64", "is a directory; give the kernel file"),
    (lambda p: p.write_text("not a kernel\n" * 100), "x86_64", "not a kernel image"),
    (lambda p: p.write_bytes(arm64_image()), "x86_64",
     r"is a kernel for aarch64 \(Image\), not x86_64: pass --arch aarch64"),
    (lambda p: p.write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 9 + b"\x02\x00\xb7\x00"
                             + b"\0" * 44), "aarch64", "cannot boot an aarch64 vmlinux"),
    (lambda p: p.write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 9 + b"\x02\x00\x3e\x00"
                             + b"\0" * 44), "x86_64", "no PVH entry note"),
    (lambda p: p.write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 9 + b"\x02\x00\xf3\x00"
                             + b"\0" * 44), None, "kernel for riscv64"),
    (lambda p: p.write_bytes(bytes(0x40) + b"no banner"), None, "not a kernel image"),
])
def test_unusable_kernel_files_are_one_line_errors(tmp_path: Path, make, want, message) -> None:
    p = tmp_path / "kernel"
    if make is not None:
        make(p)
    with pytest.raises(UserError, match=message) as ei:
        localkernel.inspect(p, want)
    assert ei.value.exit_code == 2 and "\n" not in str(ei.value)


def test_a_kernel_without_a_banner_has_no_release(tmp_path: Path) -> None:
    p = tmp_path / "Image"
    p.write_bytes(arm64_image().split(b"\0Linux")[0])
    with pytest.raises(UserError, match="cannot tell the kernel's release"):
        localkernel.inspect(p, "aarch64")


def test_modules_are_taken_from_the_tree_and_built_ins_skipped(tmp_path: Path) -> None:
    p = tmp_path / "Image"
    p.write_bytes(arm64_image())
    lk = localkernel.inspect(p, "aarch64")
    root = modules_root(tmp_path, ["virtio_net"], builtin=["virtio/virtio_pci"])
    for given in (root, root / "lib/modules", root / "lib/modules" / RELEASE):
        plan = localkernel.plan_modules(lk, given, WANTED)
        assert plan.resolved is not None and plan.resolved.order == ["virtio_net"]
        assert plan.resolved.builtin == ["virtio_pci"]
        assert plan.notes == ["virtio_console: not in this kernel (not loaded)",
                              "virtio_rng: not in this kernel (not loaded)"]


def test_a_modules_dir_without_the_needed_modules_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "Image"
    p.write_bytes(arm64_image())
    lk = localkernel.inspect(p, "aarch64")
    root = modules_root(tmp_path, ["virtio_rng"])
    with pytest.raises(UserError, match=r"virtio_pci, virtio_net neither built into "
                                        r"6\.13\.0-kbox .* nor a module under"):
        localkernel.plan_modules(lk, root, WANTED)
    with pytest.raises(UserError, match="no module tree for 6.13.0-kbox .*found 9.9"):
        (tmp_path / "other/9.9").mkdir(parents=True)
        localkernel.plan_modules(lk, tmp_path / "other", WANTED)
    with pytest.raises(UserError, match="no such directory"):
        localkernel.plan_modules(lk, tmp_path / "missing", WANTED)


def test_modules_of_another_release_are_refused(tmp_path: Path) -> None:
    p = tmp_path / "Image"
    p.write_bytes(arm64_image())
    lk = localkernel.inspect(p, "aarch64")
    root = modules_root(tmp_path, ["virtio_pci", "virtio_net"], vermagic="6.1.0-50-arm64")
    with pytest.raises(UserError, match="built for 6.1.0-50-arm64, the kernel is 6.13.0-kbox"):
        localkernel.plan_modules(lk, root, WANTED)


def _tree_kernel(tmp_path: Path, config: str) -> localkernel.LocalKernel:
    """arch/arm64/boot/Image inside a build tree with a .config."""
    tree = tmp_path / "linux"
    (tree / "arch/arm64/boot").mkdir(parents=True)
    (tree / "Makefile").write_text("# kernel\n")
    (tree / ".config").write_text(config)
    (tree / "arch/arm64/boot/Image").write_bytes(arm64_image())
    return localkernel.inspect(tree / "arch/arm64/boot/Image", "aarch64")


def test_without_modules_the_build_trees_config_decides(tmp_path: Path) -> None:
    lk = _tree_kernel(tmp_path, GOOD_CONFIG + "CONFIG_VIRTIO_PCI=y\nCONFIG_VIRTIO_NET=y\n"
                      "CONFIG_VIRTIO_CONSOLE=m\n")
    assert lk.config_source == str(tmp_path / "linux/.config")
    plan = localkernel.plan_modules(lk, None, WANTED)
    assert plan.resolved is None
    assert plan.notes == ["virtio_console: a module, not loaded without --modules"]


def test_a_needed_module_that_is_m_or_missing_in_the_config_is_refused(tmp_path: Path) -> None:
    lk = _tree_kernel(tmp_path, GOOD_CONFIG + "CONFIG_VIRTIO_PCI=y\nCONFIG_VIRTIO_NET=m\n")
    with pytest.raises(UserError, match=r"virtio_net is a module in this kernel "
                                        r"\(CONFIG_VIRTIO_NET=m .*pass --modules DIR"):
        localkernel.plan_modules(lk, None, WANTED)
    lk = _tree_kernel(tmp_path / "b", GOOD_CONFIG + "CONFIG_VIRTIO_PCI=y\n")
    with pytest.raises(UserError, match=r"lacks virtio_net \(CONFIG_VIRTIO_NET not set"):
        localkernel.plan_modules(lk, None, WANTED)


def test_the_config_must_have_what_the_guest_cannot_do_without(tmp_path: Path) -> None:
    lk = _tree_kernel(tmp_path, GOOD_CONFIG.replace("CONFIG_RD_LZ4=y\n", "")
                      + "CONFIG_VIRTIO_PCI=y\nCONFIG_VIRTIO_NET=y\n")
    with pytest.raises(UserError, match=r"needs built in: CONFIG_RD_LZ4 \(the lz4-compressed "
                                        r"initramfs\)"):
        localkernel.plan_modules(lk, None, WANTED)


def test_no_config_and_no_modules_boots_on_trust_and_says_so(tmp_path: Path) -> None:
    p = tmp_path / "Image"
    p.write_bytes(arm64_image())
    plan = localkernel.plan_modules(localkernel.inspect(p, "aarch64"), None, WANTED)
    assert plan.resolved is None and len(plan.notes) == 1
    assert "no kernel config found" in plan.notes[0] and "fails at once" in plan.notes[0]


def test_a_config_beside_the_image_is_found_debian_style(tmp_path: Path) -> None:
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot" / f"vmlinuz-{RELEASE}").write_bytes(arm64_image())
    (tmp_path / "boot" / f"config-{RELEASE}").write_text(GOOD_CONFIG)
    lk = localkernel.inspect(tmp_path / "boot" / f"vmlinuz-{RELEASE}", "aarch64")
    assert lk.config_source.endswith(f"config-{RELEASE}") and lk.config["RD_LZ4"] == "y"
