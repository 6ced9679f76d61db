"""Guest images: a Debian kernel and an initramfs per (architecture, kernel series).

Two cache layers (see cache.py):
  base/<arch>-<kernel>-<key>    kernel image, base.cpio (Debian packages, modules, /init),
                                sysroot/ (the unpacked root for gdb). Keyed by package
                                versions + recipes in images/ + this builder's code.
  images/<arch>-<kernel>-<key>  kernel + initrd (= base.cpio followed by a kbox.cpio holding
                                the kbox package, its C core built for the target, the guest
                                test programs (tests/guest, tests/go) and the SSH keys). Keyed
                                by the base key + the sources under kbox/, csrc/, tests/guest/
                                and tests/go/.
Editing kbox rebuilds only the second layer (seconds); the first is downloaded once.
The kernel unpacks concatenated cpio archives in order, so the layers need no merging; for
an arch whose table entry sets initrd_compression (aarch64: lz4) the whole initrd is then
compressed as one legacy lz4 stream.
"""
from __future__ import annotations

import fnmatch
import glob
import json
import os
import platform
import py_compile
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from kbox.errors import UserError
from kbox.vm import cache, debian, kernel
from kbox.vm.arch import ARCHES, KERNELS, Arch
from kbox.vm.kernel import CpioWriter

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "images"

# The runtime adds console=<arch.console>; /init needs nothing else. init_on_alloc=0: Debian
# turns on zeroing of every kernel page allocation (hardening only: pages reaching user
# space are zeroed regardless); off, unpacking the ~100 MB initramfs under TCG took 24% less
# time (1.31 s vs 1.72 s mean of 4 paired x86_64 boots on a loaded host).
KERNEL_CMDLINE = "rdinit=/init panic=-1 quiet init_on_alloc=0"
GUEST_KBOX_DIR = "/usr/lib/python3/dist-packages/kbox"
GUEST_PROGRAMS_DIR = "/opt/kbox/guest"
GUEST_PYTHON_LIB = "usr/lib/python3.11"
MAKE_TIMEOUT = 900.0
BASE_FORMAT = 1   # bump when the layout of a base entry changes
IMAGE_FORMAT = 1  # same for image entries

# Everything that shapes a base entry besides the package versions.
_BUILDER_SOURCES = ("images.py", "debian.py", "kernel.py", "cache.py")


@dataclass(frozen=True)
class Image:
    arch: str
    kernel: str             # series: "6.1" or "6.12"
    kernel_version: str     # `uname -r` in the guest, e.g. "6.1.0-56-arm64"
    kernel_path: Path       # ELF vmlinux (x86_64, PVH boot) or the Debian vmlinuz
    initrd_path: Path
    cmdline: str            # without console=
    ssh_key: Path           # private key accepted by the guest's root account
    ssh_user: str
    cache_dir: Path         # this image's cache entry
    guest_kbox_dir: str     # where the kbox package lives in the guest
    guest_programs_dir: str
    sysroot: Path           # unpacked guest root on the host, for gdb's `set sysroot`
    natives_dir: Path       # host copy of the guest's kbox/_bin/<arch> (symbols for gdb)


# ---- inputs ------------------------------------------------------------------------------

def _check_choice(arch: str, kernel_series: str) -> Arch:
    if arch not in ARCHES:
        raise UserError(f"unknown architecture {arch!r} (choose from {', '.join(ARCHES)})", 2)
    if kernel_series not in KERNELS:
        raise UserError(f"unknown kernel {kernel_series!r} (choose from {', '.join(KERNELS)})", 2)
    return ARCHES[arch]


def _recipe_lines(name: str) -> list[str]:
    path = RECIPES / name
    if not path.exists():
        return []
    return [ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines()
            if ln.split("#", 1)[0].strip()]


def _recipe_files() -> list[tuple[str, Path]]:
    return [(f"images/{p.relative_to(RECIPES)}", p) for p in cache.tree_files(RECIPES)]


def _builder_files() -> list[tuple[str, Path]]:
    here = Path(__file__).resolve().parent
    return [(f"builder/{n}", here / n) for n in _BUILDER_SOURCES]


def _apt_state() -> list[tuple[str, int, int]]:
    """What apt would answer depends on its package lists; their stats stand for them."""
    lists = sorted(glob.glob("/var/lib/apt/lists/*_Packages*"))
    return [(p, int(os.stat(p).st_size), int(os.stat(p).st_mtime)) for p in lists]


def _resolve(a: Arch, series: str, progress: bool) -> dict:
    """Kernel package and the full package closure, memoized per apt state and recipe."""
    key = cache.input_key(_recipe_files() + _builder_files(),
                          {"arch": a.name, "kernel": series, "apt": _apt_state()})
    path = cache.cache_root() / "resolved" / f"{a.name}-{series}-{key}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    # One resolver per (arch, kernel): xdist workers starting together would each spend
    # ~15 s in apt-cache otherwise.
    with cache.locked(f"resolve-{a.name}-{series}", timeout=600):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return _resolve_now(a, series, path, progress)


def _resolve_now(a: Arch, series: str, path: Path, progress: bool) -> dict:
    if progress:
        print(f"kbox: resolving Debian packages for {a.name} / {series}", file=sys.stderr,
              flush=True)
    debian.check_arch_enabled(a.debian)
    kpkg = debian.package_version(debian.newest_kernel_package(series, a.kernel_flavour), a.debian)
    roots = _recipe_lines("packages.txt") + _recipe_lines(f"packages-{a.name}.txt")
    pkgs = debian.Resolver(a.debian, set(_recipe_lines("exclude-packages.txt"))).resolve(roots)
    data = {"kernel_package": asdict(kpkg), "packages": [asdict(p) for p in pkgs]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.rename(path)
    return data


def _kbox_files() -> list[tuple[str, Path]]:
    files: list[tuple[str, Path]] = []
    for top in ("kbox", "csrc", "tests/guest", "tests/go"):
        root = REPO / top
        if root.is_dir():
            files += [(str(p.relative_to(REPO)), p) for p in cache.tree_files(root)]
    return files


# ---- host prerequisites --------------------------------------------------------------------

def host_arch() -> str:
    return platform.machine()


def cross_prefix(a: Arch) -> str:
    return "" if a.name == host_arch() else a.cross_prefix


def check_host(a: Arch) -> None:
    """Raise UserError naming exactly what to install for building and booting `a`."""
    if shutil.which(a.qemu) is None:
        raise UserError(f"{a.qemu} missing: apt-get install {a.qemu_package}")
    cc = cross_prefix(a) + "gcc"
    if shutil.which(cc) is None:
        pkg = f"gcc-{a.cross_prefix.rstrip('-').replace('_', '-')}" if cross_prefix(a) else "gcc"
        raise UserError(f"{a.name} {'cross ' if cross_prefix(a) else ''}compiler missing: "
                        f"apt-get install {pkg}")
    if a.initrd_compression and shutil.which(a.initrd_compression) is None:
        raise UserError(f"{a.initrd_compression} missing (compresses the {a.name} initrd): "
                        f"apt-get install {a.initrd_compression}")
    for tool, pkg in (("dropbearkey", "dropbear-bin"), ("ssh-keygen", "openssh-client"),
                      ("dpkg-deb", "dpkg"), ("apt-get", "apt"), ("zstd", "zstd"),
                      ("make", "make"), ("go", "golang-go")):
        if shutil.which(tool) is None:
            raise UserError(f"{tool} missing: apt-get install {pkg}")


# ---- SSH keys (one set per cache) ----------------------------------------------------------

def _ssh_keys() -> tuple[Path, Path]:
    """(client private key, dropbear host key), generated once per cache directory."""
    d = cache.cache_root() / "ssh"
    client, host = d / "id_ed25519", d / "dropbear_ed25519_host_key"
    if client.exists() and host.exists() and (d / "id_ed25519.pub").exists():
        return client, host
    with cache.locked("ssh-keys", timeout=60):
        d.mkdir(parents=True, exist_ok=True)
        if not (client.exists() and (d / "id_ed25519.pub").exists()):
            for p in (client, d / "id_ed25519.pub"):
                p.unlink(missing_ok=True)
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kbox-vm",
                            "-f", str(client)], check=True, timeout=30, capture_output=True)
        if not host.exists():
            tmp = host.with_suffix(".tmp")
            tmp.unlink(missing_ok=True)
            subprocess.run(["dropbearkey", "-t", "ed25519", "-f", str(tmp)], check=True,
                           timeout=30, capture_output=True)
            tmp.rename(host)
    return client, host


# ---- base layer ---------------------------------------------------------------------------

def _progress(enabled: bool, msg: str) -> None:
    if enabled:
        print(f"kbox: {msg}", file=sys.stderr, flush=True)


def _merge_usr(root: Path) -> None:
    """Move /bin, /sbin, /lib* into /usr and leave symlinks, like a merged-/usr Debian."""
    for top in ("bin", "sbin", "lib", "lib64"):
        src, dst = root / top, root / "usr" / top
        if src.is_dir() and not src.is_symlink():
            dst.mkdir(parents=True, exist_ok=True)
            for dirpath, dirnames, filenames in os.walk(src):
                rel = Path(dirpath).relative_to(src)
                (dst / rel).mkdir(parents=True, exist_ok=True)
                for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
                    target = dst / rel / name
                    if target.exists() or target.is_symlink():
                        target.unlink()
                    os.rename(Path(dirpath) / name, target)
            shutil.rmtree(src)
        if not src.is_symlink() and (dst.exists() or top in ("bin", "sbin", "lib")):
            dst.mkdir(parents=True, exist_ok=True)
            src.symlink_to(f"usr/{top}")


def _prune(root: Path, patterns: list[str]) -> None:
    for dirpath, dirnames, filenames in os.walk(root, topdown=True):
        rel_dir = Path(dirpath).relative_to(root)
        for name in list(dirnames) + filenames:
            rel = str(rel_dir / name) if str(rel_dir) != "." else name
            if any(fnmatch.fnmatch(rel, pat) for pat in patterns):
                p = Path(dirpath) / name
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                    dirnames.remove(name)
                else:
                    p.unlink()


def _guest_python_compiler() -> str | None:
    """A host interpreter of the guest's Python version (3.11), whose bytecode the guest reads."""
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    return shutil.which("python3.11")


def _compile_python(root: Path, dirs: list[str], mode: py_compile.PycInvalidationMode,
                    progress: bool = True) -> None:
    """Precompile bytecode on the host: Debian ships none (postinst makes it), and compiling
    the stdlib at every guest boot costs seconds under TCG. Any 3.11 writes the bytecode
    format (magic 3495) the guest's 3.11 reads."""
    py = _guest_python_compiler()
    if py is None:
        _progress(progress, "no host python3.11: the guest will compile Python modules at "
                  "import (slower); apt-get install python3.11")
        return
    for d in dirs:
        if (root / d).is_dir():
            # -d: tracebacks in the guest name the guest's paths; errors (e.g. lib2to3's
            # Python 2 test data) are not fatal, those modules are simply compiled at import.
            subprocess.run([py, "-m", "compileall", "-q", "-j0", "-d", "/" + d,
                            "--invalidation-mode", mode.name.lower().replace("_", "-"),
                            str(root / d)], capture_output=True, timeout=600, check=False)


def busybox_applets(binary: bytes) -> list[str]:
    """Applet names from a busybox binary: its sorted, NUL-separated name table ("[", "[[", …).

    Read from the binary rather than by running it, because the guest's busybox is usually
    of another architecture; equivalent to `busybox --list`.
    """
    start = binary.find(b"\0[\0[[\0")
    if start < 0:
        raise UserError("busybox binary has no applet name table; cannot create applet links")
    names: list[str] = []
    pos = start + 1
    while True:
        end = binary.find(b"\0", pos)
        name = binary[pos:end] if end > 0 else b""
        if not name or not all(0x20 < c < 0x7F for c in name):
            break
        names.append(name.decode())
        pos = end + 1
    if names != sorted(names) or not {"sh", "insmod", "ip", "mount"} <= set(names):
        raise UserError("unexpected busybox applet table (not sorted or missing sh/insmod/ip)")
    return names


def _link_applets(root: Path) -> None:
    """Symlink every busybox applet that no real package provides (done at build time: at
    boot, `busybox --install -s` costs ~0.2 s of TCG time)."""
    bindir = root / "usr/bin"
    for name in busybox_applets((bindir / "busybox").read_bytes()):
        if not any(os.path.lexists(root / d / name) for d in ("usr/bin", "usr/sbin")):
            (bindir / name).symlink_to("busybox")


def _extract_kernel(a: Arch, kdir: Path, out_dir: Path, progress: bool) -> tuple[str, str, Path]:
    """(uname -r, kernel file name, modules dir) from an unpacked linux-image package."""
    vmlinuz = sorted((kdir / "boot").glob("vmlinuz-*"))
    if len(vmlinuz) != 1:
        raise UserError(f"kernel package has {len(vmlinuz)} vmlinuz files, expected 1")
    release = vmlinuz[0].name[len("vmlinuz-"):]
    modules = next(p for p in (kdir / "lib/modules" / release, kdir / "usr/lib/modules" / release)
                   if p.is_dir())
    data = vmlinuz[0].read_bytes()
    if a.name == "x86_64":
        # PVH boot skips the bzImage decompressing itself under emulation (3 s of TCG time).
        elf = kernel.extract_pvh_vmlinux(data)
        if elf is not None:
            (out_dir / "vmlinux").write_bytes(elf)
            _progress(progress, f"extracted PVH vmlinux ({len(elf) >> 20} MiB) from {release}")
            return release, "vmlinux", modules
        _progress(progress, f"{release}: no PVH-bootable ELF inside the bzImage; using bzImage")
    (out_dir / "vmlinuz").write_bytes(data)
    return release, "vmlinuz", modules


def _build_base(a: Arch, series: str, resolved: dict, entry_tmp: Path, progress: bool) -> dict:
    t0 = time.monotonic()
    kpkg = debian.Package(**resolved["kernel_package"])
    pkgs = [debian.Package(**p) for p in resolved["packages"]]
    debs_dir = cache.cache_root() / "debs" / a.debian
    debs = debian.download([kpkg] + pkgs, debs_dir, progress=progress)
    work = entry_tmp / ".work"
    kdir = work / "kernel"
    debian.extract(debs[0], kdir)
    release, kernel_file, modules_dir = _extract_kernel(a, kdir, entry_tmp, progress)

    root = entry_tmp / "sysroot"
    _progress(progress, f"unpacking {len(pkgs)} packages for {a.name}")
    for deb in debs[1:]:
        debian.extract(deb, root)
    _merge_usr(root)
    _prune(root, _recipe_lines("exclude-paths.txt"))

    mods = kernel.resolve_modules(modules_dir, _recipe_lines("modules.txt"))
    guest_mod_dir = f"usr/lib/modules/{release}"
    (root / guest_mod_dir).mkdir(parents=True, exist_ok=True)
    for name in mods.order:
        (root / guest_mod_dir / f"{name}.ko").write_bytes(mods.files[name])
    (root / "etc/kbox").mkdir(parents=True, exist_ok=True)
    (root / "etc/kbox/modules").write_text(
        "".join(f"/{guest_mod_dir}/{m}.ko\n" for m in mods.order))

    for src in cache.tree_files(RECIPES / "rootfs"):
        dst = root / src.relative_to(RECIPES / "rootfs")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    shutil.copy2(RECIPES / "init", root / "init")
    os.chmod(root / "init", 0o755)
    (root / "etc/hostname").write_text(f"kbox-{a.name}\n")
    for d in ("proc", "sys", "dev", "tmp", "run", "root/.ssh", "etc/dropbear", "mnt",
              "var/tmp", "opt/kbox"):
        (root / d).mkdir(parents=True, exist_ok=True)
    _link_applets(root)

    _progress(progress, "precompiling the guest's Python bytecode")
    _compile_python(root, [GUEST_PYTHON_LIB, "usr/lib/python3/dist-packages"],
                    py_compile.PycInvalidationMode.UNCHECKED_HASH, progress)

    with CpioWriter(entry_tmp / "base.cpio") as w:
        w.add_tree(root)
        w.add_node("dev/console", 0o020600, 5, 1)  # the kernel opens it before /init runs
    shutil.rmtree(work)
    info = {"arch": a.name, "kernel": series, "kernel_version": release,
            "kernel_package": resolved["kernel_package"], "kernel_file": kernel_file,
            "modules": mods.order, "builtin_modules": mods.builtin,
            "packages": {p.name: p.version for p in pkgs}, "build_seconds": 0.0}
    info["build_seconds"] = round(time.monotonic() - t0, 1)
    (entry_tmp / "info.json").write_text(json.dumps(info, indent=1))
    return info


def _ensure_base(a: Arch, series: str, rebuild: bool, progress: bool) -> tuple[Path, dict]:
    resolved = _resolve(a, series, progress)
    key = cache.input_key(_recipe_files() + _builder_files(),
                          {"format": BASE_FORMAT, "arch": a.name, "kernel": series,
                           "resolved": resolved})
    entry = cache.cache_root() / "base" / f"{a.name}-{series}-{key}"
    with cache.locked(f"base-{a.name}-{series}"):
        problem = None if rebuild else cache.verify(entry)
        if rebuild or problem is not None:
            if entry.exists() and problem:
                _progress(progress, f"base image {entry.name}: {problem}; rebuilding")
            _progress(progress, f"building base image {a.name} / {series}")
            cache.cleanup_stale_temps(entry.parent)
            with cache.building(entry, {"kind": "base", "arch": a.name, "kernel": series}) as tmp:
                _build_base(a, series, resolved, tmp, progress)
            _prune_siblings(entry)
    return entry, json.loads((entry / "info.json").read_text())


# ---- kbox layer -----------------------------------------------------------------------------

def _make(target_dir: Path, a: Arch, out: Path, what: str, *make_vars: str) -> None:
    if not (target_dir / "Makefile").exists():
        raise UserError(f"{target_dir.relative_to(REPO)}/Makefile not found: cannot build "
                        f"{what} for {a.name}")
    out.mkdir(parents=True, exist_ok=True)
    cmd = ["make", "-C", str(target_dir), f"ARCH={a.name}", f"CROSS_COMPILE={cross_prefix(a)}",
           f"O={out}", f"-j{os.cpu_count() or 1}", *make_vars]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=MAKE_TIMEOUT,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        raise UserError(f"building {what} for {a.name} timed out ({MAKE_TIMEOUT:.0f} s)") from exc
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise UserError(f"building {what} for {a.name} failed ({' '.join(cmd)}): {tail}")


def _copy_outputs(build: Path, dest: Path) -> int:
    """Copy the products a make O= directory holds at its top level; subdirectories and
    objects/dependency files are the Makefile's intermediates (e.g. csrc's pic/, static/)."""
    n = 0
    dest.mkdir(parents=True, exist_ok=True)
    for p in sorted(build.iterdir()):
        if p.is_file() and not p.name.endswith((".o", ".d", ".a", ".tmp", ".cmd")):
            shutil.copy2(p, dest / p.name)
            n += 1
    return n


def _build_kbox_layer(a: Arch, base: Path, entry_tmp: Path, progress: bool) -> None:
    t0 = time.monotonic()
    stage = entry_tmp / "overlay"
    pkg = stage / GUEST_KBOX_DIR.lstrip("/")
    shutil.copytree(REPO / "kbox", pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc",
                                                                       "_bin"))
    work = entry_tmp / ".work"
    _progress(progress, f"building the kbox C core for {a.name}")
    _make(REPO / "csrc", a, work / "csrc", "the kbox C core (csrc)")
    if _copy_outputs(work / "csrc", pkg / "_bin" / a.name) == 0:
        raise UserError(f"make -C csrc for {a.name} produced no files")
    _progress(progress, f"building the guest test programs for {a.name}")
    _make(REPO / "tests/guest", a, work / "guest", "the guest test programs (tests/guest)")
    _copy_outputs(work / "guest", stage / GUEST_PROGRAMS_DIR.lstrip("/"))
    # Static Go programs (go-NAME).  One Go build cache for every image: its entries are
    # content-addressed, so sharing it changes no output and spares recompiling the
    # standard library (-trimpath) for each kernel series.
    _progress(progress, f"building the Go test programs for {a.name}")
    _make(REPO / "tests/go", a, work / "go", "the Go test programs (tests/go)",
          f"GO_BUILD_CACHE={cache.cache_root() / 'go-build'}")
    _copy_outputs(work / "go", stage / GUEST_PROGRAMS_DIR.lstrip("/"))
    shutil.rmtree(work)
    _compile_python(stage, [GUEST_KBOX_DIR.lstrip("/")],
                    py_compile.PycInvalidationMode.CHECKED_HASH, progress)

    wrapper = '#!/bin/sh\nexec python3 -m kbox.cli "$@"\n'
    for d in ("usr/bin", "usr/local/bin"):
        (stage / d).mkdir(parents=True, exist_ok=True)
        (stage / d / "kbox").write_text(wrapper)
        os.chmod(stage / d / "kbox", 0o755)

    client, host = _ssh_keys()
    keys = entry_tmp / ".keys"
    (keys / "root/.ssh").mkdir(parents=True)
    (keys / "etc/dropbear").mkdir(parents=True)
    shutil.copy2(client.with_name("id_ed25519.pub"), keys / "root/.ssh/authorized_keys")
    shutil.copy2(host, keys / "etc/dropbear/dropbear_ed25519_host_key")
    os.chmod(keys / "root/.ssh", 0o700)
    os.chmod(keys / "root/.ssh/authorized_keys", 0o600)
    os.chmod(keys / "etc/dropbear/dropbear_ed25519_host_key", 0o600)

    base_info = json.loads((base / "info.json").read_text())
    # The initrd is the base archive followed by the kbox archive (the kernel unpacks both).
    initrd = entry_tmp / "initrd.img"
    with initrd.open("wb") as out:
        with (base / "base.cpio").open("rb") as f:
            shutil.copyfileobj(f, out, 1 << 20)
        with CpioWriter(out) as w:
            w.add_tree(stage, skip_root=True)
            w.add_tree(keys, skip_root=True)
    if a.initrd_compression == "lz4":
        # Legacy lz4 frames are the format the kernel's initramfs unpacker reads (lz4 -l).
        packed = entry_tmp / "initrd.img.lz4"
        subprocess.run(["lz4", "-l", "-1", "-q", "-f", str(initrd), str(packed)], check=True,
                       timeout=300, capture_output=True)
        packed.rename(initrd)
    elif a.initrd_compression:
        raise UserError(f"unsupported initrd compression {a.initrd_compression!r}")
    shutil.copy2(base / base_info["kernel_file"], entry_tmp / base_info["kernel_file"])
    shutil.rmtree(keys)
    info = dict(base_info, base=base.name, kbox_build_seconds=round(time.monotonic() - t0, 1))
    (entry_tmp / "info.json").write_text(json.dumps(info, indent=1))


def _prune_siblings(entry: Path) -> None:
    """Drop older entries of the same arch/kernel: only the newest inputs are worth keeping."""
    prefix = entry.name.rsplit("-", 1)[0] + "-"
    for p in entry.parent.iterdir():
        if p != entry and p.name.startswith(prefix) and p.name.count("-") == entry.name.count("-"):
            cache.remove_entry(p)


def ensure_image(arch: str, kernel: str, *, rebuild: bool = False,
                 progress: bool = True) -> Image:
    """Return a bootable image for (arch, kernel series), building what is missing or stale.

    Safe to call from many processes at once (file locks); a warm call only hashes inputs
    and verifies the entry's manifest.
    """
    a = _check_choice(arch, kernel)
    check_host(a)
    base, _ = _ensure_base(a, kernel, rebuild, progress)
    client, host_key = _ssh_keys()
    key = cache.input_key(_kbox_files() + _builder_files()
                          + [("ssh/client.pub", client.with_name("id_ed25519.pub")),
                             ("ssh/host", host_key)],
                          {"format": IMAGE_FORMAT, "base": base.name, "cross": cross_prefix(a)})
    entry = cache.cache_root() / "images" / f"{a.name}-{kernel}-{key}"
    with cache.locked(f"image-{a.name}-{kernel}"):
        problem = None if rebuild else cache.verify(entry)
        if rebuild or problem is not None:
            if entry.exists() and problem:
                _progress(progress, f"image {entry.name}: {problem}; rebuilding")
            _progress(progress, f"building the kbox layer for {a.name} / {kernel}")
            cache.cleanup_stale_temps(entry.parent)
            with cache.building(entry, {"kind": "image", "arch": a.name, "kernel": kernel}) as tmp:
                _build_kbox_layer(a, base, tmp, progress)
            _prune_siblings(entry)
    info = json.loads((entry / "info.json").read_text())
    return Image(
        arch=a.name, kernel=kernel, kernel_version=info["kernel_version"],
        kernel_path=entry / info["kernel_file"], initrd_path=entry / "initrd.img",
        cmdline=KERNEL_CMDLINE, ssh_key=client, ssh_user="root", cache_dir=entry,
        guest_kbox_dir=GUEST_KBOX_DIR, guest_programs_dir=GUEST_PROGRAMS_DIR,
        sysroot=base / "sysroot", natives_dir=entry / "overlay" / GUEST_KBOX_DIR.lstrip("/")
        / "_bin" / a.name)


def _dir_size(p: Path) -> int:
    return sum(f.lstat().st_size for f in p.rglob("*") if f.is_file() and not f.is_symlink())


def list_images() -> list[dict]:
    """Every cache entry (base layers and bootable images) with its state."""
    rows: list[dict] = []
    for kind in ("base", "images"):
        d = cache.cache_root() / kind
        if not d.is_dir():
            continue
        for p in sorted(d.iterdir()):
            if p.name.startswith("."):
                continue
            arch, series, key = p.name.rsplit("-", 2) if p.name.count("-") >= 2 else (p.name, "", "")
            man = cache.read_manifest(p)
            problem = cache.verify(p, checksums=False)
            try:
                kver = json.loads((p / "info.json").read_text()).get("kernel_version", "")
            except (OSError, ValueError):
                kver = ""
            rows.append({"kind": "base" if kind == "base" else "image", "arch": arch,
                         "kernel": series, "kernel_version": kver, "key": key, "path": str(p),
                         "size": _dir_size(p),
                         "built": (man or {}).get("built"),
                         "state": "ok" if problem is None else f"corrupt: {problem}"})
    return rows


def clean_images(arch: str | None = None, kernel: str | None = None) -> int:
    """Remove cache entries (both layers) matching arch/kernel; returns how many."""
    if arch is not None or kernel is not None:
        _check_choice(arch or next(iter(ARCHES)), kernel or KERNELS[0])
    n = 0
    for row in list_images():
        if (arch is None or row["arch"] == arch) and (kernel is None or row["kernel"] == kernel):
            cache.remove_entry(Path(row["path"]))
            n += 1
    if arch is None and kernel is None:
        shutil.rmtree(cache.cache_root() / "resolved", ignore_errors=True)
        shutil.rmtree(cache.cache_root() / "go-build", ignore_errors=True)
    return n
