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

import dataclasses
import fnmatch
import hashlib
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
from kbox.vm import cache, debian, kernel, kernels, localkernel, timing
from kbox.vm.arch import ARCHES, KERNELS, Arch
from kbox.vm.kernel import CpioWriter
from kbox.vm.kernels import KernelChoice

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
LOCAL_FORMAT = 1  # same for local-kernel entries


def local_host_series(release: str) -> str:
    """The matrix series whose image (rootfs, kbox layer) a local kernel boots with: its own
    series when the matrix has it (6.1.0-50-arm64 -> 6.1), else the newest."""
    return next((s for s in sorted(KERNELS, key=len, reverse=True)
                 if release.startswith((s + ".", s + "-"))), KERNELS[-1])

# Everything that shapes a base entry besides the package versions.
_BUILDER_SOURCES = ("images.py", "debian.py", "kernel.py", "kernels.py", "cache.py")


@dataclass(frozen=True)
class Image:
    arch: str
    kernel: str             # a series ("6.1", "6.12"), a version ("6.1.0-50") or "local"
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

def _check_arch(arch: str) -> Arch:
    if arch not in ARCHES:
        raise UserError(f"unknown architecture {arch!r} (choose from {', '.join(ARCHES)})", 2)
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


def _resolve(a: Arch, choice: KernelChoice, progress: bool) -> dict:
    """Kernel package and the full package closure, memoized per apt state and recipe."""
    key = cache.input_key(_recipe_files() + _builder_files(),
                          {"arch": a.name, "kernel": choice.tag, "package": choice.package,
                           "apt": debian.apt_state()})
    path = cache.cache_root() / "resolved" / f"{a.name}-{choice.tag}-{key}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    # One resolver per (arch, kernel): xdist workers starting together would each spend
    # ~15 s in apt-cache otherwise.
    with cache.locked(f"resolve-{a.name}-{choice.tag}", timeout=600):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return _resolve_now(a, choice, path, progress)


def _resolve_now(a: Arch, choice: KernelChoice, path: Path, progress: bool) -> dict:
    if progress:
        print(f"kbox: resolving Debian packages for {a.name} / {choice.tag}", file=sys.stderr,
              flush=True)
    debian.check_arch_enabled(a.debian)
    package = choice.package
    if package is None:   # a series: its newest kernel
        newest = kernels.newest(kernels.catalogue(a), choice.tag)
        if newest is None:
            raise UserError(f"no Debian {choice.tag} kernel for {a.name} in apt's lists "
                            "(apt-get update?)")
        package = newest.package
    kpkg = debian.package_version(package, a.debian)
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


def _resolve_share_modules(modules_dir: Path) -> tuple[kernel.ResolvedModules | None, list[str]]:
    """The 9p modules of images/modules-9p.txt (with their dependencies) in a kernel's module
    tree, or None and the ones it has neither built in nor as modules."""
    wanted = _recipe_lines("modules-9p.txt")
    try:
        return kernel.resolve_modules(modules_dir, wanted), []
    except kernel.KernelFormatError:
        builtin, index = kernel.builtin_modules(modules_dir), kernel.index_modules(modules_dir)
        return None, [m for m in map(kernel.module_name, wanted)
                      if m not in builtin and m not in index]


def _write_share_modules(root: Path, mod_dir: str, mods: kernel.ResolvedModules | None,
                         loaded: list[str]) -> None:
    """The 9p modules into the tree, listed in /etc/kbox/modules-9p, which /init loads only
    when the VM has a --share (kbox/vm/share.py); an empty list when there are none."""
    order = [m for m in mods.order if m not in loaded] if mods else []
    for name in order:
        assert mods is not None
        (root / mod_dir / f"{name}.ko").write_bytes(mods.files[name])
    (root / "etc/kbox/modules-9p").write_text("".join(f"/{mod_dir}/{m}.ko\n" for m in order))


def _build_base(a: Arch, tag: str, resolved: dict, entry_tmp: Path, progress: bool) -> dict:
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
    share_mods, share_missing = _resolve_share_modules(modules_dir)
    _write_share_modules(root, guest_mod_dir, share_mods, mods.order)

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
    info = {"arch": a.name, "kernel": tag, "kernel_version": release,
            "kernel_package": resolved["kernel_package"], "kernel_file": kernel_file,
            "modules": mods.order, "builtin_modules": mods.builtin,
            "share_modules_missing": share_missing,
            "packages": {p.name: p.version for p in pkgs}, "build_seconds": 0.0}
    info["build_seconds"] = round(time.monotonic() - t0, 1)
    (entry_tmp / "info.json").write_text(json.dumps(info, indent=1))
    return info


def _ensure_base(a: Arch, choice: KernelChoice, rebuild: bool, progress: bool,
                 checksums: bool = True) -> tuple[Path, dict]:
    resolved = _resolve(a, choice, progress)
    tag = choice.tag
    key = cache.input_key(_recipe_files() + _builder_files(),
                          {"format": BASE_FORMAT, "arch": a.name, "kernel": tag,
                           "resolved": resolved})
    entry = cache.cache_root() / "base" / f"{a.name}-{tag}-{key}"
    with cache.locked(f"base-{a.name}-{tag}"):
        problem = None if rebuild else cache.verify(entry, checksums=checksums)
        if rebuild or problem is not None:
            if entry.exists() and problem:
                _progress(progress, f"base image {entry.name}: {problem}; rebuilding")
            _progress(progress, f"building base image {a.name} / {tag}")
            cache.cleanup_stale_temps(entry.parent)
            with cache.building(entry, {"kind": "base", "arch": a.name, "kernel": tag}) as tmp:
                _build_base(a, tag, resolved, tmp, progress)
            _prune_siblings(entry)
        cache.mark_used(entry)
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

    base_info = json.loads((base / "info.json").read_text())
    _write_initrd(a, base, [stage], entry_tmp)
    shutil.copy2(base / base_info["kernel_file"], entry_tmp / base_info["kernel_file"])
    info = dict(base_info, base=base.name, kbox_build_seconds=round(time.monotonic() - t0, 1))
    (entry_tmp / "info.json").write_text(json.dumps(info, indent=1))


def _stage_keys(keys: Path) -> None:
    client, host = _ssh_keys()
    (keys / "root/.ssh").mkdir(parents=True)
    (keys / "etc/dropbear").mkdir(parents=True)
    shutil.copy2(client.with_name("id_ed25519.pub"), keys / "root/.ssh/authorized_keys")
    shutil.copy2(host, keys / "etc/dropbear/dropbear_ed25519_host_key")
    os.chmod(keys / "root/.ssh", 0o700)
    os.chmod(keys / "root/.ssh/authorized_keys", 0o600)
    os.chmod(keys / "etc/dropbear/dropbear_ed25519_host_key", 0o600)


def _write_initrd(a: Arch, base: Path, trees: list[Path], entry_tmp: Path) -> None:
    """entry_tmp/initrd.img: the base archive, then one archive of `trees` and the SSH keys
    (the kernel unpacks both in order, so a later file replaces an earlier one)."""
    keys = entry_tmp / ".keys"
    _stage_keys(keys)
    initrd = entry_tmp / "initrd.img"
    with initrd.open("wb") as out:
        with (base / "base.cpio").open("rb") as f:
            shutil.copyfileobj(f, out, 1 << 20)
        with CpioWriter(out) as w:
            for tree in [*trees, keys]:
                w.add_tree(tree, skip_root=True)
    shutil.rmtree(keys)
    if a.initrd_compression == "lz4":
        # Legacy lz4 frames are the format the kernel's initramfs unpacker reads (lz4 -l).
        packed = entry_tmp / "initrd.img.lz4"
        subprocess.run(["lz4", "-l", "-1", "-q", "-f", str(initrd), str(packed)], check=True,
                       timeout=300, capture_output=True)
        packed.rename(initrd)
    elif a.initrd_compression:
        raise UserError(f"unsupported initrd compression {a.initrd_compression!r}")


def _prune_siblings(entry: Path) -> None:
    """Drop older entries of the same arch/kernel that nothing used lately (another checkout's
    key may be in use beside this one: cache.KEEP_RECENT_S)."""
    prefix = entry.name.rsplit("-", 1)[0] + "-"
    for p in entry.parent.iterdir():
        if p != entry and p.name.startswith(prefix) and p.name.count("-") == entry.name.count("-") \
                and not cache.recently_used(p):
            cache.remove_entry(p)


def ensure_image(arch: str, kernel: str, *, rebuild: bool = False,
                 progress: bool = True, checksums: bool = True) -> Image:
    """Return a bootable image for (arch, kernel), building what is missing or stale.

    `kernel` is a series of the matrix ("6.1", "6.12": its newest kernel) or any Debian
    kernel version apt's suites carry (kernels.py: "6.1.0-50", "6.12.100"); an unknown one
    is a UserError listing what is available. Safe to call from many processes at once
    (file locks); a warm call only hashes inputs and verifies the entry's manifest.
    checksums=False checks the manifest's file sizes only (~0.25 s less): for a caller that
    restores a saved VM state made from this entry and reads none of its files.
    """
    t0 = time.monotonic()
    a = _check_arch(arch)
    choice = kernels.choose(a, kernel)
    check_host(a)
    base, _ = _ensure_base(a, choice, rebuild, progress, checksums)
    client, host_key = _ssh_keys()
    tag = choice.tag
    key = cache.input_key(_kbox_files() + _builder_files()
                          + [("ssh/client.pub", client.with_name("id_ed25519.pub")),
                             ("ssh/host", host_key)],
                          {"format": IMAGE_FORMAT, "base": base.name, "cross": cross_prefix(a)})
    entry = cache.cache_root() / "images" / f"{a.name}-{tag}-{key}"
    built = False
    with cache.locked(f"image-{a.name}-{tag}"):
        problem = None if rebuild else cache.verify(entry, checksums=checksums)
        if rebuild or problem is not None:
            if entry.exists() and problem:
                _progress(progress, f"image {entry.name}: {problem}; rebuilding")
            _progress(progress, f"building the kbox layer for {a.name} / {tag}")
            cache.cleanup_stale_temps(entry.parent)
            with cache.building(entry, {"kind": "image", "arch": a.name, "kernel": tag}) as tmp:
                _build_kbox_layer(a, base, tmp, progress)
            _prune_siblings(entry)
            built = True
        cache.mark_used(entry)
    info = json.loads((entry / "info.json").read_text())
    timing.record("image", arch=a.name, kernel=tag, seconds=time.monotonic() - t0, built=built)
    return Image(
        arch=a.name, kernel=tag, kernel_version=info["kernel_version"],
        kernel_path=entry / info["kernel_file"], initrd_path=entry / "initrd.img",
        cmdline=KERNEL_CMDLINE, ssh_key=client, ssh_user="root", cache_dir=entry,
        guest_kbox_dir=GUEST_KBOX_DIR, guest_programs_dir=GUEST_PROGRAMS_DIR,
        sysroot=base / "sysroot", natives_dir=entry / "overlay" / GUEST_KBOX_DIR.lstrip("/")
        / "_bin" / a.name)


# ---- a local kernel build -------------------------------------------------------------------

def ensure_local_image(kernel_image: Path, arch: str | None = None,
                       modules: Path | None = None, *, progress: bool = True) -> Image:
    """A bootable image for a kernel file of the developer's own (--kernel-image PATH
    [--modules DIR]): localkernel.py checks it before anything is built or booted.

    It boots with the rootfs and kbox layer of a matrix image (local_host_series); a third
    archive in the initramfs holds the kernel's own modules (when DIR is given) and replaces
    the list /init loads. Entries are keyed by the kernel's and the modules' contents, so a
    rebuilt kernel gets a new one; the previous one of the same path is dropped.
    """
    if arch is not None:
        _check_arch(arch)
    lk = localkernel.inspect(Path(kernel_image), arch)
    a = ARCHES[lk.arch]
    plan = localkernel.plan_modules(lk, Path(modules) if modules else None,
                                    _recipe_lines("modules.txt"))
    localkernel.print_notes(lk.notes + plan.notes, progress)
    host = ensure_image(a.name, local_host_series(lk.release), progress=progress)
    t0 = time.monotonic()
    mods = plan.resolved
    # --share's 9p modules come from --modules too (without it: built in, or none).
    share_mods, share_missing = (
        _resolve_share_modules(localkernel.modules_tree(Path(modules), lk.release))
        if modules else (None, []))
    key = cache.input_key([], {
        "share_modules": {m: hashlib.sha256(b).hexdigest() for m, b in
                          (share_mods.files.items() if share_mods else [])},
        "share_missing": share_missing,
        "format": LOCAL_FORMAT, "host": host.cache_dir.name, "release": lk.release,
        "kernel": hashlib.sha256(lk.boot_image).hexdigest(),
        "modules": {m: hashlib.sha256(b).hexdigest() for m, b in
                    (mods.files.items() if mods else [])},
        "order": mods.order if mods else None})
    where = hashlib.sha256(str(Path(kernel_image).resolve()).encode()).hexdigest()[:8]
    entry = cache.cache_root() / "local" / f"{a.name}-{where}-{key}"
    kernel_file = "vmlinux" if lk.boot_image.startswith(b"\x7fELF") else "vmlinuz"
    with cache.locked(f"local-{a.name}-{where}"):
        if cache.verify(entry) is not None:
            _progress(progress, f"assembling an image for {lk.path} ({lk.release})")
            cache.cleanup_stale_temps(entry.parent)
            with cache.building(entry, {"kind": "local", "arch": a.name,
                                        "kernel": str(lk.path)}) as tmp:
                _build_local(a, lk, mods, host, tmp, kernel_file, share_mods,
                             share_missing)
            _prune_siblings(entry)
        cache.mark_used(entry)
    timing.record("image", arch=a.name, kernel="local", seconds=time.monotonic() - t0,
                  built=False)
    return dataclasses.replace(host, kernel="local", kernel_version=lk.release,
                               kernel_path=entry / kernel_file,
                               initrd_path=entry / "initrd.img", cache_dir=entry)


def _build_local(a: Arch, lk: localkernel.LocalKernel, mods: kernel.ResolvedModules | None,
                 host: Image, entry_tmp: Path, kernel_file: str,
                 share_mods: kernel.ResolvedModules | None = None,
                 share_missing: list[str] | None = None) -> None:
    (entry_tmp / kernel_file).write_bytes(lk.boot_image)
    layer = entry_tmp / ".modules"
    mod_dir = f"usr/lib/modules/{lk.release}"
    (layer / mod_dir).mkdir(parents=True)
    (layer / "etc/kbox").mkdir(parents=True)
    order = mods.order if mods else []
    for name in order:
        assert mods is not None
        (layer / mod_dir / f"{name}.ko").write_bytes(mods.files[name])
    # Replaces the Debian kernel's list in the base archive: /init loads exactly these.
    (layer / "etc/kbox/modules").write_text("".join(f"/{mod_dir}/{m}.ko\n" for m in order))
    # Its own 9p modules when --modules has them; else none (built in, or --share fails).
    _write_share_modules(layer, mod_dir, share_mods, order)
    base = cache.cache_root() / "base" / json.loads(
        (host.cache_dir / "info.json").read_text())["base"]
    _write_initrd(a, base, [host.cache_dir / "overlay", layer], entry_tmp)
    shutil.rmtree(layer)
    info = {"arch": a.name, "kernel": "local", "kernel_version": lk.release,
            "kernel_file": kernel_file, "source": str(lk.path), "format": lk.format,
            "config": lk.config_source, "modules": order, "host_image": host.cache_dir.name,
            "share_modules_missing": share_missing or []}
    (entry_tmp / "info.json").write_text(json.dumps(info, indent=1))


def _dir_size(p: Path) -> int:
    return sum(f.lstat().st_size for f in p.rglob("*") if f.is_file() and not f.is_symlink())


def list_images() -> list[dict]:
    """Every cache entry (base layers, bootable images, local kernels) with its state."""
    rows: list[dict] = []
    for kind, label in (("base", "base"), ("images", "image"), ("local", "local")):
        d = cache.cache_root() / kind
        if not d.is_dir():
            continue
        for p in sorted(d.iterdir()):
            if p.name.startswith("."):
                continue
            man = cache.read_manifest(p)
            problem = cache.verify(p, checksums=False)
            try:
                info = json.loads((p / "info.json").read_text())
            except (OSError, ValueError):
                info = {}
            # Names are <arch>-<kernel>-<key>; the kernel may hold dashes (6.1.0-50).
            arch = info.get("arch") or p.name.split("-", 1)[0]
            tag = info.get("kernel") or (p.name.split("-", 1)[1].rsplit("-", 1)[0]
                                         if p.name.count("-") >= 2 else "")
            rows.append({"kind": label, "arch": arch, "kernel": tag,
                         "kernel_version": info.get("kernel_version", ""),
                         "key": p.name.rsplit("-", 1)[-1], "path": str(p),
                         "size": _dir_size(p), "built": (man or {}).get("built"),
                         "state": "ok" if problem is None else f"corrupt: {problem}"})
    return rows


def clean_images(arch: str | None = None, kernel: str | None = None) -> int:
    """Remove cache entries matching arch/kernel (a tag as list_images() shows it, or
    "local"); returns how many."""
    if arch is not None:
        _check_arch(arch)
    n = 0
    for row in list_images():
        if (arch is None or row["arch"] == arch) and (kernel is None or row["kernel"] == kernel):
            cache.remove_entry(Path(row["path"]))
            n += 1
    if arch is None and kernel is None:
        shutil.rmtree(cache.cache_root() / "resolved", ignore_errors=True)
        shutil.rmtree(cache.cache_root() / "go-build", ignore_errors=True)
    return n
