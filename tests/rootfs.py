"""A small Debian-style root filesystem built from this host's own programs, for the root view
tests: dash, coreutils, python3, sqlite3 and git with the shared libraries they load, laid out
merged-/usr with an *absolute* /bin symlink (so every path through /bin exercises an absolute
symlink resolved inside the root)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

PROGRAMS = ["/usr/bin/dash", "/usr/bin/ls", "/usr/bin/cat", "/usr/bin/pwd", "/usr/bin/readlink",
            "/usr/bin/mkdir", "/usr/bin/rm", "/usr/bin/ln", "/usr/bin/mv", "/usr/bin/stat",
            "/usr/bin/echo", "/usr/bin/sort", "/usr/bin/head", "/usr/bin/env", "/usr/bin/touch",
            "/usr/bin/python3.11", "/usr/bin/sqlite3", "/usr/bin/git"]
HOSTNAME = "kbox-root\n"


def _libs(prog: str) -> list[str]:
    out = subprocess.run(["ldd", prog], capture_output=True, text=True, timeout=30).stdout
    libs = []
    for line in out.splitlines():
        parts = line.split()
        for p in parts:
            if p.startswith("/"):
                libs.append(p)
    return libs


def _copy(src: str, root: Path) -> None:
    """Copies the file `src` names (its contents, symlinks followed) to the same path in the
    root, /lib and /lib64 folded into /usr as on a merged-/usr system."""
    rel = src.lstrip("/")
    if rel.startswith(("lib/", "lib64/")):
        rel = "usr/" + rel
    dest = root / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        shutil.copy2(os.path.realpath(src), dest)


def build(root: Path) -> Path:
    """Builds the tree at `root` (which must not exist) and returns it."""
    root.mkdir(parents=True)
    for d in ("usr/bin", "usr/lib", "etc", "tmp", "proc", "dev", "sys", "home/user"):
        (root / d).mkdir(parents=True, exist_ok=True)
    os.symlink("/usr/bin", root / "bin")          # absolute: resolved inside the root
    os.symlink("usr/lib", root / "lib")
    os.symlink("usr/lib64", root / "lib64")
    (root / "usr/lib64").mkdir()
    (root / "usr/bin/sh").parent.mkdir(parents=True, exist_ok=True)
    for prog in PROGRAMS:
        if not os.path.exists(prog):
            continue
        _copy(prog, root)
        for lib in _libs(prog):
            _copy(lib, root)
    os.symlink("dash", root / "usr/bin/sh")
    os.symlink("python3.11", root / "usr/bin/python3")
    shutil.copytree("/usr/lib/python3.11", root / "usr/lib/python3.11", symlinks=True,
                    ignore=shutil.ignore_patterns("test", "idlelib", "tkinter", "ensurepip",
                                                  "lib2to3", "site-packages", "dist-packages"))
    if os.geteuid() == 0:  # what the native chroot needs of /dev (under kbox /dev is the host's)
        for name, minor in (("null", 3), ("zero", 5), ("random", 8), ("urandom", 9)):
            os.mknod(root / "dev" / name, 0o666 | 0o020000, os.makedev(1, minor))
            os.chmod(root / "dev" / name, 0o666)
    (root / "etc/hostname").write_text(HOSTNAME)
    (root / "etc/os-release").write_text('NAME="kbox test root"\nID=kbox\n')
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")
    return root
