"""A minimal Debian 12 tree for `kbox run --root`, built from Debian packages without root.

`kbox rootfs build --arch ARCH` resolves dash, coreutils, python3, git, sqlite3 and
base-files with their Depends closure from apt's lists (the bookworm index the VM images use,
kbox.vm.debian), downloads the .debs into the image cache's debs/ directory, checks each
against the SHA256 the Packages index gives for it, unpacks them with `dpkg-deb -x`, merges
/usr the way the VM images do and adds what a native chroot needs to run those programs
(below). The result is a cache entry `<cache>/roots/<arch>-<key>/` keyed by the package
manifest (name=version and the .deb's sha256, one line each) and this builder's code:

    root/          the tree (read-only by convention: copy it, or use --out, to write in it)
    packages.txt   the manifest
    tree.sha256    checksum of the tree (every path, its type, mode, contents or link target)
    info.json      arch, package count, size, build time

A second build recomputes the tree checksum and returns the entry (a tree edited in the
cache is rebuilt). No maintainer script runs and no ld.so.cache is made: Debian's ld.so
searches the multiarch directories (/usr/lib/<triplet>) without one.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kbox.errors import UserError
from kbox.rootfs import make_device_nodes

# The programs asked for; base-files brings /etc/os-release (a relative symlink into
# /usr/lib) and the FHS skeleton. Their Depends/Pre-Depends are followed.
PACKAGES = ("base-files", "dash", "coreutils", "python3", "git", "sqlite3")
# Not followed: maintainer-script machinery (nothing runs it), perl (git needs it only for
# a few porcelain scripts), git's manual, time zones, and libcurl, which only git's HTTP
# helpers link (they are pruned below) and which would bring gnutls, kerberos and ldap.
EXCLUDE = ("debconf", "dpkg", "perl", "perl-base", "perl-modules-5.36", "liberror-perl",
           "git-man", "tzdata", "adduser", "init-system-helpers", "lsb-base",
           "sensible-utils", "libpam-runtime", "libpam-modules", "libpam0g", "libcurl3-gnutls")
# Paths (fnmatch, after merging /usr) dropped: documentation, translations, glibc's iconv
# modules (Python has its own codecs) and the git programs that need the excluded libcurl.
PRUNE = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
         "usr/share/lintian", "usr/share/bug", "usr/share/bash-completion", "usr/share/gitweb",
         "usr/share/menu", "usr/share/pixmaps", "usr/lib/*/gconv",
         "usr/lib/git-core/git-http-*", "usr/lib/git-core/git-remote-http*",
         "usr/lib/git-core/git-remote-ftp*", "usr/lib/git-core/git-imap-send")
HOSTNAME = "kbox-debian\n"
# What a chroot needs that package maintainer scripts would otherwise have made.
PASSWD = ("root:x:0:0:root:/root:/bin/sh\n"
          "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
GROUP = "root:x:0:\nnogroup:x:65534:\n"
DIRS = {"proc": 0o555, "sys": 0o555, "dev": 0o755, "tmp": 0o1777, "var/tmp": 0o1777,
        "root": 0o700, "home": 0o755, "run": 0o755}
FORMAT = 1   # bump when the entry layout or the tree's configuration changes
RESOLVE_LOCK_TIMEOUT = 600.0


@dataclass(frozen=True)
class DebianRoot:
    arch: str
    path: Path             # the tree
    entry: Path            # its cache entry
    manifest: str          # packages.txt: "name=version arch sha256" lines
    tree_sha256: str
    size: int              # bytes of regular files (hard links counted once)
    built: bool            # built by this call (False: the cache already had it)


def _progress(enabled: bool, msg: str) -> None:
    if enabled:
        print(f"kbox: {msg}", file=sys.stderr, flush=True)


# ---- checksum of a tree ---------------------------------------------------------------------

def tree_checksum(root: Path) -> tuple[str, int]:
    """(sha256, bytes) over every path under `root`, sorted: its type, permission bits and
    contents (regular files), target (symlinks) or device number. Owners and times are left
    out: they depend on who unpacked the tree and when, not on what it holds. Hard links
    are read once."""
    h = hashlib.sha256()
    by_inode: dict[tuple[int, int], str] = {}
    size = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            st = os.lstat(path)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                data = "l " + os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                digest = by_inode.get((st.st_dev, st.st_ino))
                if digest is None:
                    fh = hashlib.sha256()
                    with open(path, "rb") as f:
                        for chunk in iter(lambda: f.read(1 << 20), b""):
                            fh.update(chunk)
                    digest = by_inode[(st.st_dev, st.st_ino)] = fh.hexdigest()
                    size += st.st_size
                data = "f " + digest
            elif stat.S_ISDIR(st.st_mode):
                data = "d"
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                data = f"{'c' if stat.S_ISCHR(st.st_mode) else 'b'} {st.st_rdev}"
            else:
                data = f"other {stat.S_IFMT(st.st_mode)}"
            h.update(f"{rel}\0{mode:o}\0{data}\n".encode())
    return h.hexdigest(), size


# ---- resolution (memoized per apt state) -----------------------------------------------------

def _builder_files() -> list[tuple[str, Path]]:
    here = Path(__file__).resolve().parent
    return [("root_debian.py", here / "root_debian.py"),
            ("vm/debian.py", here / "vm" / "debian.py"),
            ("vm/images.py", here / "vm" / "images.py")]   # _merge_usr, _compile_python


def _resolve(arch: str, debian_arch: str, progress: bool) -> list[dict[str, str]]:
    """The package closure as [{name, version, arch, sha256}], from apt's lists; apt-cache
    takes ~15 s for it, so the answer is kept per apt state, like the images' resolution."""
    from kbox.vm import cache, debian

    # Keyed by the resolver's code alone (not the builder's): editing how a tree is made
    # does not ask apt-cache again.
    key = cache.input_key([f for f in _builder_files() if f[0] == "vm/debian.py"],
                          {"arch": arch, "packages": PACKAGES, "exclude": EXCLUDE,
                           "apt": debian.apt_state()})
    path = cache.cache_root() / "resolved" / f"root-{arch}-{key}.json"
    try:
        return list(json.loads(path.read_text()))
    except (OSError, ValueError):
        pass
    with cache.locked(f"resolve-root-{arch}", timeout=RESOLVE_LOCK_TIMEOUT):
        try:
            return list(json.loads(path.read_text()))
        except (OSError, ValueError):
            pass
        _progress(progress, f"resolving Debian packages for the {arch} tree")
        debian.check_arch_enabled(debian_arch)
        resolver = debian.Resolver(debian_arch, set(EXCLUDE))
        rows = []
        for p in resolver.resolve(list(PACKAGES)):
            st = resolver.stanza(p.name) or {}
            if not st.get("SHA256"):
                raise UserError(f"apt's index gives no SHA256 for {p.spec}; apt-get update?")
            rows.append({"name": p.name, "version": p.version, "arch": p.arch,
                         "sha256": st["SHA256"]})
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(rows, indent=1))
        tmp.rename(path)
        return rows


def manifest_text(rows: list[dict[str, str]]) -> str:
    return "".join(f"{r['name']}={r['version']} {r['arch']} {r['sha256']}\n" for r in rows)


# ---- building --------------------------------------------------------------------------------

def _fetch(rows: list[dict[str, str]], debs_dir: Path, progress: bool) -> list[Path]:
    """The .debs, downloaded into the image cache where missing (apt-get checks what it
    downloads against the index); every file, cached ones included, must match the index's
    SHA256. A cached file that does not is fetched again, once."""
    from kbox.vm import cache, debian

    pkgs = [debian.Package(r["name"], r["version"], r["arch"]) for r in rows]
    for attempt in (1, 2):
        debs = debian.download(pkgs, debs_dir, progress=progress)
        bad = [(deb, r) for deb, r in zip(debs, rows) if cache.sha256_file(deb) != r["sha256"]]
        if not bad:
            return debs
        for deb, _ in bad:
            deb.unlink()
        if attempt == 2:
            raise UserError(f"{bad[0][0].name}: sha256 differs from apt's index even after "
                            "downloading it again (mirror out of sync? apt-get update)")
        _progress(progress, f"{len(bad)} cached .deb(s) did not match apt's index "
                  f"({bad[0][0].name}, ...): downloading again")
    raise AssertionError("not reached")


def _configure(root: Path) -> None:
    """What a chroot of the tree needs to run its programs, which dpkg's maintainer scripts
    (or the system around a chroot) would otherwise have made: accounts, a hostname, the
    mount points, /tmp, /bin/sh and the /dev nodes."""
    for d, mode in DIRS.items():
        (root / d).mkdir(parents=True, exist_ok=True)
        os.chmod(root / d, mode)
    (root / "etc/passwd").write_text(PASSWD)
    (root / "etc/group").write_text(GROUP)
    (root / "etc/hostname").write_text(HOSTNAME)
    # dash's postinst makes /bin/sh through a diversion; bookworm's package does not ship it.
    if not os.path.lexists(root / "usr/bin/sh"):
        os.symlink("dash", root / "usr/bin/sh")
    # /dev/null, zero, random, urandom: git opens /dev/null in a native chroot (under kbox
    # /dev is the host's). Only root can make them; others get a tree without.
    make_device_nodes(root)


def _build(arch: str, rows: list[dict[str, str]], tmp: Path, progress: bool) -> dict[str, Any]:
    from kbox.vm import cache, debian, images
    from kbox.vm.arch import ARCHES

    t0 = time.monotonic()
    debs = _fetch(rows, cache.cache_root() / "debs" / ARCHES[arch].debian, progress)
    root = tmp / "root"
    _progress(progress, f"unpacking {len(debs)} packages into the {arch} tree")
    for deb in debs:
        debian.extract(deb, root)
    images._merge_usr(root)
    images._prune(root, list(PRUNE))
    _configure(root)
    # Debian ships no bytecode (postinst compiles it); made here, a TCG guest's python3
    # does not compile the modules it imports on every run. Hash-based, so reproducible.
    import py_compile
    _progress(progress, "precompiling the tree's Python bytecode")
    images._compile_python(root, ["usr/lib/python3.11", "usr/lib/python3/dist-packages"],
                           py_compile.PycInvalidationMode.UNCHECKED_HASH, progress)
    digest, size = tree_checksum(root)
    (tmp / "packages.txt").write_text(manifest_text(rows))
    (tmp / "tree.sha256").write_text(digest + "\n")
    info = {"arch": arch, "packages": len(rows), "size": size, "tree_sha256": digest,
            "build_seconds": round(time.monotonic() - t0, 1)}
    (tmp / "info.json").write_text(json.dumps(info, indent=1))
    return info


def _problem(entry: Path) -> str | None:
    """None if the entry's tree still has the checksum it was built with."""
    try:
        want = (entry / "tree.sha256").read_text().strip()
        (entry / "packages.txt").read_text()
    except OSError:
        return "missing" if not entry.exists() else "incomplete entry"
    if not (entry / "root").is_dir():
        return "no tree"
    got, _ = tree_checksum(entry / "root")
    return None if got == want else f"tree checksum {got[:12]}… differs from {want[:12]}…"


def ensure_root(arch: str, *, rebuild: bool = False, progress: bool = True) -> DebianRoot:
    """The cached tree for `arch` (x86_64, aarch64), built if missing, stale or altered.
    Safe from many processes at once (a file lock per arch)."""
    from kbox.vm import cache, images
    from kbox.vm.arch import ARCHES

    if arch not in ARCHES:
        raise UserError(f"unknown architecture {arch!r} (choose from {', '.join(ARCHES)})", 2)
    rows = _resolve(arch, ARCHES[arch].debian, progress)
    key = cache.input_key(_builder_files(), {"format": FORMAT, "arch": arch,
                                             "manifest": manifest_text(rows),
                                             "pyc": images._guest_python_compiler() is not None,
                                             "devices": os.geteuid() == 0})
    entry = cache.cache_root() / "roots" / f"{arch}-{key}"
    built = False
    with cache.locked(f"root-{arch}"):
        problem = "rebuild asked for" if rebuild else _problem(entry)
        if problem is not None:
            if problem != "missing":
                _progress(progress, f"cached tree {entry.name}: {problem}; rebuilding")
            _progress(progress, f"building the Debian {arch} tree ({len(rows)} packages)")
            cache.cleanup_stale_temps(entry.parent)
            with cache.building(entry, {"kind": "root", "arch": arch}) as tmp:
                _build(arch, rows, tmp, progress)
            images._prune_siblings(entry)
            built = True
    info = json.loads((entry / "info.json").read_text())
    return DebianRoot(arch=arch, path=entry / "root", entry=entry,
                      manifest=(entry / "packages.txt").read_text(),
                      tree_sha256=info["tree_sha256"], size=info["size"], built=built)


def copy_tree(src: Path, dest: Path) -> None:
    """A writable copy of a tree at `dest` (which must not exist): cp -a keeps hard links,
    modes and symlinks as they are."""
    if os.path.lexists(dest):
        raise UserError(f"{dest} already exists: give a new directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["cp", "-a", str(src), str(dest)], capture_output=True, text=True,
                          timeout=600, check=False)
    if proc.returncode != 0:
        raise UserError(f"copying the tree to {dest} failed: {proc.stderr.strip()}")


# ---- CLI -------------------------------------------------------------------------------------

def add_rootfs_command(subparsers: Any) -> argparse.ArgumentParser:
    from kbox.vm.arch import ARCHES

    p = subparsers.add_parser(
        "rootfs", help="build a minimal Debian tree to run programs in with --root",
        description="Root filesystem trees for `kbox run --root`.")
    sub = p.add_subparsers(dest="rootfs_command", metavar="COMMAND")
    b = sub.add_parser(
        "build", help="build (or find in the cache) a minimal Debian 12 tree",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Build a minimal Debian 12 (bookworm) tree for ARCH from Debian packages\n"
        f"({', '.join(PACKAGES)} and their dependencies,\n"
        "resolved from apt's lists), without root: the .debs are downloaded into the kbox\n"
        "cache (~/.cache/kbox, or $KBOX_CACHE) and checked against the SHA256 of apt's\n"
        "index, unpacked with dpkg-deb -x and /usr merged; accounts, /etc/hostname and\n"
        "/tmp are made for a chroot. The tree is cached, keyed by its package manifest: a\n"
        "second build only verifies its checksum. Prints the tree's path on stdout,\n"
        "progress on stderr.",
        epilog="examples:\n"
        "  kbox rootfs build --arch x86_64                 the cached tree's path (read-only)\n"
        "  kbox rootfs build --arch x86_64 --out /tmp/r    a writable copy at /tmp/r\n"
        "  kbox run --root /tmp/r -- sh -c 'cat /etc/os-release'\n"
        "foreign architectures need `dpkg --add-architecture arm64 && apt-get update` once.")
    b.add_argument("--arch", required=True, choices=list(ARCHES), help="the tree's architecture")
    b.add_argument("--out", metavar="DIR", type=Path, default=None,
                   help="copy the tree to DIR (must not exist) and print DIR; without it the "
                        "cached tree's path is printed: copy it before writing in it")
    b.add_argument("--rebuild", action="store_true", help="build again even if cached")
    b.add_argument("--quiet", action="store_true", help="no progress on stderr")
    b.set_defaults(func=cmd_rootfs_build)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    return b


def cmd_rootfs_build(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    if args.out is not None and os.path.lexists(args.out):
        raise UserError(f"--out {args.out}: already exists; give a new directory", 2)
    r = ensure_root(args.arch, rebuild=args.rebuild, progress=not args.quiet)
    path = r.path
    if args.out is not None:
        copy_tree(r.path, args.out)
        path = args.out
    n = len(r.manifest.splitlines())
    _progress(not args.quiet, f"{r.arch} tree: {n} packages, {r.size / 1e6:.0f} MB, "
              f"sha256 {r.tree_sha256[:16]}, {'built' if r.built else 'cached'} "
              f"({time.monotonic() - t0:.1f} s); manifest {r.entry / 'packages.txt'}")
    print(path)
    return 0
