"""Host-only tests of the image cache and builder logic (no network, no VM)."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kbox.errors import UserError
from kbox.vm import cache, debian, images
from kbox.vm.arch import ARCHES
from kbox.vm.kernel import CpioWriter


@pytest.fixture
def CACHE(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("KBOX_CACHE", str(root))
    return root


# ---- cache keys ---------------------------------------------------------------------------

def test_cache_key_changes_when_any_input_changes(tmp_path: Path) -> None:
    a, b = tmp_path / "a.py", tmp_path / "b.c"
    a.write_text("x = 1\n")
    b.write_text("int x;\n")
    files = [("a.py", a), ("b.c", b)]
    k0 = cache.input_key(files, {"pkg": "1.0"})
    assert cache.input_key(list(reversed(files)), {"pkg": "1.0"}) == k0  # order-independent
    b.write_text("int y;\n")
    k1 = cache.input_key(files, {"pkg": "1.0"})
    assert k1 != k0
    assert cache.input_key(files, {"pkg": "1.1"}) != k1
    b.unlink()
    assert cache.input_key(files, {"pkg": "1.0"}) != k1
    assert cache.input_key([("a.py", a), ("c.c", b)], {"pkg": "1.0"}) != cache.input_key(
        [("a.py", a), ("b.c", b)], {"pkg": "1.0"})  # a rename is a change too


def test_tree_files_skips_build_outputs_and_caches(tmp_path: Path) -> None:
    (tmp_path / "pkg/__pycache__").mkdir(parents=True)
    (tmp_path / "pkg/_bin/x86_64").mkdir(parents=True)
    (tmp_path / "pkg/m.py").write_text("")
    (tmp_path / "pkg/__pycache__/m.cpython-311.pyc").write_text("")
    (tmp_path / "pkg/_bin/x86_64/libkbox.so").write_text("")
    (tmp_path / "pkg/x.o").write_text("")
    assert [p.relative_to(tmp_path).as_posix() for p in cache.tree_files(tmp_path)] == ["pkg/m.py"]


def test_kbox_sources_are_part_of_the_image_key(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    for d in ("kbox", "csrc", "tests/guest", "tests/go"):
        (repo / d).mkdir(parents=True)
        (repo / d / "f").write_text("1")
    monkeypatch.setattr(images, "REPO", repo)
    k0 = cache.input_key(images._kbox_files(), {})
    for d in ("kbox", "csrc", "tests/guest", "tests/go"):
        (repo / d / "f").write_text("2")
        k1 = cache.input_key(images._kbox_files(), {})
        assert k1 != k0, d
        k0 = k1


# ---- manifest, atomicity -------------------------------------------------------------------

def test_a_truncated_cache_file_is_detected(CACHE: Path) -> None:
    entry = CACHE / "images" / "x86_64-6.1-abc"
    with cache.building(entry, {"kind": "test"}) as tmp:
        (tmp / "initrd.img").write_bytes(b"A" * 4096)
        (tmp / "vmlinux").write_bytes(b"B" * 100)
    assert cache.verify(entry) is None
    with (entry / "initrd.img").open("r+b") as f:
        f.truncate(1000)
    assert "initrd.img is 1000 bytes" in (cache.verify(entry) or "")
    (entry / "initrd.img").write_bytes(b"C" * 4096)  # same size, different bytes
    assert "checksum" in (cache.verify(entry) or "")
    assert cache.verify(entry, checksums=False) is None
    (entry / "initrd.img").write_bytes(b"A" * 4096)
    assert cache.verify(entry) is None
    (entry / "vmlinux").unlink()
    assert "missing" in (cache.verify(entry) or "")
    (entry / cache.MANIFEST).write_text("{not json")
    assert "manifest" in (cache.verify(entry) or "")


def test_a_failed_build_leaves_no_entry_and_no_temp_dir(CACHE: Path) -> None:
    entry = CACHE / "base" / "aarch64-6.12-k"
    with pytest.raises(RuntimeError), cache.building(entry, {}) as tmp:
        (tmp / "half").write_bytes(b"x" * 10)
        raise RuntimeError("download failed")
    assert not entry.exists()
    assert list(entry.parent.iterdir()) == []


def test_rebuilding_replaces_a_corrupt_entry(CACHE: Path) -> None:
    entry = CACHE / "base" / "aarch64-6.1-k"
    with cache.building(entry, {}) as tmp:
        (tmp / "f").write_text("old")
    (entry / "f").write_text("corrupted!")
    with cache.building(entry, {}) as tmp:
        (tmp / "f").write_text("new")
    assert (entry / "f").read_text() == "new" and cache.verify(entry) is None


# ---- choices and host checks ----------------------------------------------------------------

def test_unknown_arch_or_kernel_is_a_usage_error_listing_the_choices(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from kbox.vm import kernels
    with pytest.raises(UserError, match="choose from x86_64, aarch64") as e:
        images.ensure_image("riscv64", "6.1")
    assert e.value.exit_code == 2
    monkeypatch.setattr(kernels, "catalogue", lambda a: [
        kernels.DebianKernel("6.1.0-57", "amd64", "6.1.192-3", "bookworm-security"),
        kernels.DebianKernel("6.12.118+deb12", "amd64", "6.12.118-1~deb12u1", "bookworm")])
    with pytest.raises(UserError, match=r"unknown x86_64 kernel '5.10'; available: series "
                                        r"6.1, 6.12 \(newest: 6.1.0-57, 6.12.118\+deb12\)") as e:
        images.ensure_image("x86_64", "5.10")
    assert e.value.exit_code == 2


def test_a_local_kernel_boots_with_the_rootfs_of_its_own_series() -> None:
    assert images.local_host_series("6.1.0-50-arm64") == "6.1"
    assert images.local_host_series("6.12.100+deb12-amd64") == "6.12"
    assert images.local_host_series("6.1-rc3-kbox") == "6.1"
    assert images.local_host_series("6.16.0-rc1") == "6.12"      # not a matrix series: newest


def test_missing_cross_compiler_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real = shutil.which
    monkeypatch.setattr(images, "host_arch", lambda: "x86_64")
    monkeypatch.setattr(shutil, "which",
                        lambda n: None if n == "aarch64-linux-gnu-gcc" else real(n) or "/x")
    with pytest.raises(UserError, match="apt-get install gcc-aarch64-linux-gnu"):
        images.check_host(ARCHES["aarch64"])
    monkeypatch.setattr(shutil, "which",
                        lambda n: None if n == "qemu-system-aarch64" else "/x")
    with pytest.raises(UserError, match="apt-get install qemu-system-arm"):
        images.check_host(ARCHES["aarch64"])


def test_missing_go_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    # tests/go's programs are part of every image.
    monkeypatch.setattr(shutil, "which", lambda n: None if n == "go" else "/x")
    with pytest.raises(UserError, match="go missing: apt-get install golang-go"):
        images.check_host(ARCHES["x86_64"])


# ---- Debian metadata parsing ----------------------------------------------------------------

def test_depends_fields_parse_into_alternative_groups() -> None:
    field = "libc6 (>= 2.34), python3:any, debconf (>= 0.5) | debconf-2.0, libfoo [arm64]"
    assert debian.parse_depends(field) == [["libc6"], ["python3"], ["debconf", "debconf-2.0"],
                                           ["libfoo"]]
    assert debian.parse_depends("") == []


def test_stanzas_parse_with_continuation_lines() -> None:
    text = ("Package: a\nVersion: 1\nDescription: x\n more\n\nPackage: b\nVersion: 2:3-1\n")
    st = debian.parse_stanzas(text)
    assert [s["Package"] for s in st] == ["a", "b"]
    assert st[0]["Description"] == "x\nmore"
    assert debian.Package("b", "2:3-1", "arm64").deb_name == "b_2%3a3-1_arm64.deb"
    assert debian.Package("b", "1", "all").spec == "b=1"
    assert debian.Package("b", "1", "arm64").spec == "b:arm64=1"


def test_kernel_abi_numbers_sort_numerically() -> None:
    names = ["linux-image-6.12.99+deb12-arm64", "linux-image-6.12.117+deb12-arm64",
             "linux-image-6.12.100+deb12-arm64"]
    assert max(names, key=debian._version_key) == "linux-image-6.12.117+deb12-arm64"


# ---- the kbox layer, on a synthetic base ----------------------------------------------------

def _fake_repo(root: Path) -> None:
    (root / "kbox").mkdir(parents=True)
    (root / "kbox/__init__.py").write_text("")
    (root / "kbox/cli.py").write_text("print('kbox cli')\n")
    for d, prog in (("csrc", "kbox-launch"), ("tests/guest", "hello-static"),
                    ("tests/go", "go-hello")):
        (root / d).mkdir(parents=True)
        (root / d / "Makefile").write_text(
            f"all:\n\tmkdir -p $(O)\n\tprintf 'int main(void){{return 0;}}' > $(O)/x.c\n"
            f"\t$(CROSS_COMPILE)gcc -o $(O)/{prog} $(O)/x.c\n\t$(CROSS_COMPILE)gcc -c -o"
            f" $(O)/x.o $(O)/x.c\n\trm $(O)/x.c\n")


def _fake_base(cache_root: Path, arch: str, series: str) -> Path:
    entry = cache_root / "base" / f"{arch}-{series}-basekey"
    with cache.building(entry, {"kind": "base"}) as tmp:
        (tmp / "sysroot/etc").mkdir(parents=True)
        (tmp / "sysroot/etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
        with CpioWriter(tmp / "base.cpio") as w:
            w.add_tree(tmp / "sysroot")
        (tmp / "vmlinuz").write_bytes(b"K" * 64)
        (tmp / "info.json").write_text(json.dumps(
            {"arch": arch, "kernel": series, "kernel_version": "9.9.9-fake",
             "kernel_file": "vmlinuz"}))
    return entry


@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("cpio") is None
                    or shutil.which("dropbearkey") is None, reason="needs gcc, cpio, dropbearkey")
def test_kbox_layer_builds_once_and_rebuilds_when_a_source_changes(
        CACHE: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arch = images.host_arch()
    if arch not in ARCHES:
        pytest.skip(f"host arch {arch} has no guest table entry")
    repo = tmp_path / "repo"
    _fake_repo(repo)
    monkeypatch.setattr(images, "REPO", repo)
    monkeypatch.setitem(ARCHES, arch, dataclasses.replace(ARCHES[arch], initrd_compression=""))
    base = _fake_base(CACHE, arch, "6.1")
    monkeypatch.setattr(images, "_ensure_base", lambda a, s, r, p, *rest, **kw: (base, {}))
    monkeypatch.setattr(images, "check_host", lambda a: None)

    img = images.ensure_image(arch, "6.1", progress=False)
    assert img.kernel_version == "9.9.9-fake" and img.ssh_user == "root"
    assert img.cmdline == images.KERNEL_CMDLINE and "console=" not in img.cmdline
    assert img.ssh_key.exists() and img.sysroot == base / "sysroot"
    assert (img.natives_dir / "kbox-launch").exists()
    listing = subprocess.run(["cpio", "-it", "--quiet"], stdin=img.initrd_path.open("rb"),
                             capture_output=True, text=True, timeout=30,
                             check=False).stdout.split()
    # GNU cpio stops at the first trailer: the base archive comes first, then the kbox one.
    assert "etc/passwd" in listing
    with img.initrd_path.open("rb") as f:
        f.seek((base / "base.cpio").stat().st_size)
        second = subprocess.run(["cpio", "-it", "--quiet"], stdin=f, capture_output=True,
                                text=True, timeout=30, check=False).stdout.split()
    kdir = images.GUEST_KBOX_DIR.lstrip("/")
    assert f"{kdir}/cli.py" in second and f"{kdir}/_bin/{arch}/kbox-launch" in second
    assert f"{kdir}/_bin/{arch}/x.o" not in second  # objects stay out of the image
    assert "opt/kbox/guest/hello-static" in second and "usr/bin/kbox" in second
    assert "opt/kbox/guest/go-hello" in second
    assert "root/.ssh/authorized_keys" in second

    # Warm: same entry, nothing rebuilt.
    mtime = img.initrd_path.stat().st_mtime_ns
    again = images.ensure_image(arch, "6.1", progress=False)
    assert again.initrd_path == img.initrd_path
    assert again.initrd_path.stat().st_mtime_ns == mtime

    # A truncated initrd is detected and rebuilt under the same key.
    with img.initrd_path.open("r+b") as f:
        f.truncate(100)
    fixed = images.ensure_image(arch, "6.1", progress=False)
    assert fixed.initrd_path == img.initrd_path and cache.verify(fixed.cache_dir) is None

    # A kbox source change gives a new entry; the old one, used a moment ago (by another
    # checkout, say), is kept ...
    (repo / "kbox/cli.py").write_text("print('changed')\n")
    new = images.ensure_image(arch, "6.1", progress=False)
    assert new.cache_dir != img.cache_dir and img.cache_dir.exists()
    assert cache.verify(img.cache_dir) is None
    # ... and dropped by the next build once nothing has used it for KEEP_RECENT_S.
    _age(img.cache_dir, cache.KEEP_RECENT_S + 60)
    (repo / "kbox/cli.py").write_text("print('changed again')\n")
    newer = images.ensure_image(arch, "6.1", progress=False)
    assert not img.cache_dir.exists() and new.cache_dir.exists() and newer.cache_dir.exists()
    _age(new.cache_dir, cache.KEEP_RECENT_S + 60)
    (repo / "kbox/cli.py").write_text("print('changed')\n")
    assert images.ensure_image(arch, "6.1", progress=False).cache_dir == new.cache_dir
    cache.remove_entry(newer.cache_dir)

    rows = images.list_images()
    assert {(r["kind"], r["state"]) for r in rows} == {("base", "ok"), ("image", "ok")}
    assert images.clean_images(arch=arch) == 2 and images.list_images() == []


def _age(entry: Path, seconds: float) -> None:
    """Makes the cache entry look last used `seconds` ago."""
    then = time.time() - seconds
    for p in (entry / cache.USED, entry / cache.MANIFEST, entry):
        if p.exists():
            os.utime(p, (then, then))


def test_a_failing_make_is_reported_with_its_output(CACHE: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    arch = images.host_arch()
    if arch not in ARCHES or shutil.which("dropbearkey") is None:
        pytest.skip("needs a supported host arch and dropbearkey")
    repo = tmp_path / "repo"
    _fake_repo(repo)
    (repo / "csrc/Makefile").write_text("all:\n\t@echo 'dispatch.c:1: error: boom' >&2; false\n")
    monkeypatch.setattr(images, "REPO", repo)
    base = _fake_base(CACHE, arch, "6.12")
    monkeypatch.setattr(images, "_ensure_base", lambda a, s, r, p, *rest, **kw: (base, {}))
    monkeypatch.setattr(images, "check_host", lambda a: None)
    with pytest.raises(UserError, match="C core .* failed .*boom"):
        images.ensure_image(arch, "6.12", progress=False)
    assert [p for p in (CACHE / "images").iterdir()] == []  # nothing half-written
    (repo / "csrc/Makefile").unlink()
    with pytest.raises(UserError, match="csrc/Makefile not found"):
        images.ensure_image(arch, "6.12", progress=False)
    assert os.listdir(CACHE / "images") == []


def test_busybox_applet_table_is_read_from_the_binary() -> None:
    blob = b"junk\0\0[\0[[\0ash\0insmod\0ip\0mount\0sh\0zcat\0\x01\x02binary"
    assert images.busybox_applets(blob) == ["[", "[[", "ash", "insmod", "ip", "mount", "sh",
                                            "zcat"]
    with pytest.raises(UserError, match="applet"):
        images.busybox_applets(b"no table here")
    host = shutil.which("busybox")
    if host and Path(host).stat().st_size > 500_000:  # the static multi-call binary
        listed = subprocess.run([host, "--list"], capture_output=True, text=True, timeout=10,
                                check=True).stdout.split()
        assert images.busybox_applets(Path(host).read_bytes()) == sorted(listed)


@pytest.mark.skipif(shutil.which("lz4") is None or shutil.which("gcc") is None
                    or shutil.which("dropbearkey") is None, reason="needs lz4, gcc, dropbearkey")
def test_lz4_initrd_is_a_legacy_frame_holding_both_archives(
        CACHE: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arch = images.host_arch()
    if arch not in ARCHES:
        pytest.skip(f"host arch {arch} has no guest table entry")
    repo = tmp_path / "repo"
    _fake_repo(repo)
    monkeypatch.setattr(images, "REPO", repo)
    monkeypatch.setitem(ARCHES, arch, dataclasses.replace(ARCHES[arch], initrd_compression="lz4"))
    base = _fake_base(CACHE, arch, "6.1")
    monkeypatch.setattr(images, "_ensure_base", lambda a, s, r, p, *rest, **kw: (base, {}))
    monkeypatch.setattr(images, "check_host", lambda a: None)
    img = images.ensure_image(arch, "6.1", progress=False)
    raw = img.initrd_path.read_bytes()
    assert raw[:4] == bytes.fromhex("02214c18")  # LZ4 legacy magic, what the kernel accepts
    plain = subprocess.run(["lz4", "-d", "-c"], input=raw, capture_output=True, timeout=60,
                           check=True).stdout
    assert plain.startswith((base / "base.cpio").read_bytes())
    assert b"root/.ssh/authorized_keys" in plain


# ---- dependency resolution against a canned apt-cache ---------------------------------------

_ARCHIVE = {
    # name -> (Architecture, Depends, Provides)
    "python3": ("arm64", "python3.11 (>= 3.11.2), libc6", ""),
    "python3.11": ("arm64", "libc6, mime-support | media-types, tzdata", ""),
    "media-types": ("all", "", ""),
    "libc6": ("arm64", "libgcc-s1", ""),
    "libgcc-s1": ("arm64", "libc6 (>= 2.35)", ""),  # a cycle, as in Debian
    "tzdata": ("all", "debconf (>= 0.5) | debconf-2.0", ""),
    "python3-cffi": ("all", "python3-cffi-backend-api-min (<= 9729), python3:any", ""),
    "python3-cffi-backend": ("arm64", "libffi8", "python3-cffi-backend-api-min"),
    "libffi8": ("arm64", "", ""),
    "cffi-user": ("all", "python3-cffi-backend-api-min", ""),
}


def _fake_apt(cmd: list[str], timeout: float = 0, check: bool = True):
    class R:
        returncode = 0
        stderr = ""
        stdout = ""
    r = R()
    if cmd[:2] == ["apt-cache", "show"]:
        out = []
        for spec in cmd[3:]:
            name, _, qual = spec.partition(":")
            if name in _ARCHIVE:
                arch, dep, prov = _ARCHIVE[name]
                if (qual == "arm64") == (arch == "arm64"):  # arch:all only unqualified
                    out.append(f"Package: {name}\nVersion: 1.0\nArchitecture: {arch}\n"
                               f"Depends: {dep}\nProvides: {prov}\n")
        r.stdout = "\n".join(out)
    elif cmd[:2] == ["apt-cache", "showpkg"]:
        virt = cmd[2].split(":")[0]
        provs = [n for n, (_, _, p) in _ARCHIVE.items() if virt in p.split(", ")]
        r.stdout = "Package: x\nReverse Provides: \n" + "".join(f"{p}:arm64 1.0\n" for p in provs)
    return r


def test_resolver_follows_depends_picks_alternatives_and_honours_exclusions(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(debian, "_run", _fake_apt)
    pkgs = debian.Resolver("arm64", {"tzdata"}).resolve(["python3", "python3-cffi",
                                                          "python3-cffi-backend"])
    names = {p.name: p.arch for p in pkgs}
    assert names == {"python3": "arm64", "python3.11": "arm64", "media-types": "all",
                     "libc6": "arm64", "libgcc-s1": "arm64", "python3-cffi": "all",
                     "python3-cffi-backend": "arm64", "libffi8": "arm64"}
    # mime-support does not exist: the next alternative was taken; tzdata was excluded, so
    # debconf was never looked at; the virtual -api-min is provided by cffi-backend.
    assert debian.Package("python3-cffi", "1.0", "all").spec == "python3-cffi=1.0"


def test_resolver_finds_a_provider_for_a_bare_virtual_package(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(debian, "_run", _fake_apt)
    pkgs = debian.Resolver("arm64", set()).resolve(["cffi-user"])
    assert "python3-cffi-backend" in {p.name for p in pkgs}


def test_resolver_names_a_missing_root_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(debian, "_run", _fake_apt)
    with pytest.raises(UserError, match="not available for arm64: gdbserver"):
        debian.Resolver("arm64", set()).resolve(["python3", "gdbserver"])


def test_merged_usr_moves_top_level_dirs_and_links_them(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "bin/busybox").write_text("bb")
    (root / "lib64").mkdir()
    (root / "lib64/ld-linux-x86-64.so.2").symlink_to("/lib/x86_64-linux-gnu/ld.so")
    (root / "lib/x86_64-linux-gnu").mkdir(parents=True)
    (root / "lib/x86_64-linux-gnu/ld.so").write_text("ld")
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/git").write_text("git")
    images._merge_usr(root)
    for top in ("bin", "sbin", "lib", "lib64"):
        assert os.readlink(root / top) == f"usr/{top}"
    assert (root / "bin/busybox").read_text() == "bb"
    assert (root / "usr/bin/git").read_text() == "git"
    assert os.readlink(root / "usr/lib64/ld-linux-x86-64.so.2") == "/lib/x86_64-linux-gnu/ld.so"


def test_prune_drops_matching_paths_only(tmp_path: Path) -> None:
    for rel in ("usr/share/doc/git/README", "usr/lib/x86_64-linux-gnu/gconv/UTF-16.so",
                "usr/lib/x86_64-linux-gnu/libc.so.6", "usr/lib/git-core/git-http-push",
                "usr/lib/git-core/git"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    images._prune(tmp_path, ["usr/share/doc", "usr/lib/*/gconv", "usr/lib/git-core/git-http-*"])
    left = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["usr/lib/git-core/git", "usr/lib/x86_64-linux-gnu/libc.so.6"]


_CONCURRENT = r"""
import json, sys
from pathlib import Path
from kbox.vm import images
images.REPO = Path(sys.argv[1])
base = Path(sys.argv[2])
images._ensure_base = lambda a, s, r, p, *rest, **kw: (base, {})
images.check_host = lambda a: None
img = images.ensure_image(sys.argv[3], "6.1", progress=False)
print(img.cache_dir)
"""


@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("dropbearkey") is None,
                    reason="needs gcc and dropbearkey")
def test_concurrent_builders_build_the_kbox_layer_once(CACHE: Path, tmp_path: Path) -> None:
    arch = images.host_arch()
    if arch not in ARCHES or ARCHES[arch].initrd_compression:
        pytest.skip("host arch must be a plain-initrd guest arch")
    repo = tmp_path / "repo"
    _fake_repo(repo)
    # Count C-core builds: every make run appends a line to a file outside the cache.
    counter = tmp_path / "builds"
    mk = (repo / "csrc/Makefile").read_text()
    (repo / "csrc/Makefile").write_text(mk.replace("all:\n", f"all:\n\techo x >> {counter}\n"
                                                   "\tsleep 1\n", 1))
    base = _fake_base(CACHE, arch, "6.1")
    env = dict(os.environ, KBOX_CACHE=str(CACHE),
               PYTHONPATH=str(Path(images.__file__).resolve().parents[2]))
    procs = [subprocess.Popen([sys.executable, "-c", _CONCURRENT, str(repo), str(base), arch],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert len({o[0].strip() for o in outs}) == 1  # all got the same entry
    assert counter.read_text().count("x") == 1


def _bzimage(release: str) -> bytes:
    """A bzImage header with a kernel_version string and an unreadable payload (so the
    builder boots the bzImage itself rather than a PVH vmlinux)."""
    import struct
    img = bytearray(8192)
    img[0x1F1] = 3
    img[0x202:0x206] = b"HdrS"
    struct.pack_into("<HH", img, 0x206, 0x020F, 0)
    struct.pack_into("<H", img, 0x20E, 0x1000)
    struct.pack_into("<II", img, 0x248, 0x10, 64)
    struct.pack_into("<H", img, 0x236, 1)
    version = f"{release} (dev@box) #1 SMP\0".encode()
    img[0x1200:0x1200 + len(version)] = version
    return bytes(img)


@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("cpio") is None
                    or shutil.which("dropbearkey") is None, reason="needs gcc, cpio, dropbearkey")
def test_a_local_kernel_image_carries_its_own_modules_and_module_list(
        CACHE: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if images.host_arch() != "x86_64":
        pytest.skip("the synthetic local kernel is an x86_64 bzImage")
    arch, release = "x86_64", "6.1.0-99-kbox"
    repo = tmp_path / "repo"
    _fake_repo(repo)
    monkeypatch.setattr(images, "REPO", repo)
    monkeypatch.setitem(ARCHES, arch, dataclasses.replace(ARCHES[arch], initrd_compression=""))
    base = _fake_base(CACHE, arch, "6.1")
    monkeypatch.setattr(images, "_ensure_base", lambda a, s, r, p, *rest, **kw: (base, {}))
    monkeypatch.setattr(images, "check_host", lambda a: None)
    kfile = tmp_path / "linux/arch/x86/boot/bzImage"
    kfile.parent.mkdir(parents=True)
    kfile.write_bytes(_bzimage(release))
    tree = tmp_path / "mods/lib/modules" / release
    (tree / "kernel").mkdir(parents=True)
    (tree / "modules.builtin").write_text("kernel/drivers/virtio/virtio_pci.ko\n")
    src = tmp_path / "virtio_net.s"
    src.write_text('.section .modinfo,"a"\n.asciz "depends="\n.asciz "name=virtio_net"\n'
                   f'.asciz "vermagic={release} SMP mod_unload"\n')
    subprocess.run(["gcc", "-c", "-o", str(tree / "kernel/virtio_net.ko"), str(src)],
                   check=True, timeout=60)

    img = images.ensure_local_image(kfile, None, tmp_path / "mods", progress=False)
    host = images.ensure_image(arch, "6.1", progress=False)
    assert (img.arch, img.kernel, img.kernel_version) == (arch, "local", release)
    assert img.kernel_path.read_bytes() == kfile.read_bytes() and img.sysroot == host.sysroot
    with img.initrd_path.open("rb") as f:
        f.seek((base / "base.cpio").stat().st_size)
        second = subprocess.run(["cpio", "-it", "--quiet"], stdin=f, capture_output=True,
                                text=True, timeout=30, check=False).stdout.split()
    assert f"usr/lib/modules/{release}/virtio_net.ko" in second
    assert "root/.ssh/authorized_keys" in second and "usr/bin/kbox" in second
    with img.initrd_path.open("rb") as f:
        f.seek((base / "base.cpio").stat().st_size)
        listed = subprocess.run(["cpio", "-i", "--quiet", "--to-stdout", "etc/kbox/modules"],
                                stdin=f, capture_output=True, timeout=30, check=False).stdout
    assert listed == f"/usr/lib/modules/{release}/virtio_net.ko\n".encode()
    # Warm: the same entry; a rebuilt kernel replaces it.
    assert images.ensure_local_image(kfile, "x86_64", tmp_path / "mods",
                                     progress=False).cache_dir == img.cache_dir
    kfile.write_bytes(_bzimage(release)[:-1] + b"!")
    _age(img.cache_dir, cache.KEEP_RECENT_S + 60)   # unused for long: pruned
    again = images.ensure_local_image(kfile, "x86_64", tmp_path / "mods", progress=False)
    assert again.cache_dir != img.cache_dir and not img.cache_dir.exists()
    assert {r["kernel"] for r in images.list_images() if r["kind"] == "local"} == {"local"}
    assert images.clean_images(kernel="local") == 1
