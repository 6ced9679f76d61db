"""A small Debian-style root filesystem built from this host's own programs, for the root view
tests: dash (or, where there is none, the host's /bin/sh), coreutils, python3, sqlite3 and git with the shared libraries they load, laid out
merged-/usr with an *absolute* /bin symlink (so every path through /bin exercises an absolute
symlink resolved inside the root)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from kbox.rootfs import copy_program, make_device_nodes, make_layout

PROGRAMS = ["/usr/bin/dash", "/usr/bin/ls", "/usr/bin/cat", "/usr/bin/pwd", "/usr/bin/readlink",
            "/usr/bin/mkdir", "/usr/bin/rm", "/usr/bin/ln", "/usr/bin/mv", "/usr/bin/stat",
            "/usr/bin/echo", "/usr/bin/sort", "/usr/bin/head", "/usr/bin/env", "/usr/bin/touch",
            "/usr/bin/python3.11", "/usr/bin/sqlite3", "/usr/bin/git"]
HOSTNAME = "kbox-root\n"


def build(root: Path) -> Path:
    """Builds the tree at `root` (which must not exist) and returns it."""
    root.mkdir(parents=True)
    make_layout(root)
    (root / "home/user").mkdir(parents=True)
    os.symlink("/usr/bin", root / "bin")          # absolute: resolved inside the root
    for prog in PROGRAMS:
        if os.path.exists(prog):
            copy_program(prog, root)
    if os.path.exists("/usr/bin/dash"):
        os.symlink("dash", root / "usr/bin/sh")
    else:
        # The VM images' /bin/sh is busybox (no dash package): the tree's shell is too.
        shell = os.path.realpath("/bin/sh")
        copy_program(shell, root)
        if os.path.basename(shell) != "sh":
            os.symlink(os.path.basename(shell), root / "usr/bin/sh")
    os.symlink("python3.11", root / "usr/bin/python3")
    shutil.copytree("/usr/lib/python3.11", root / "usr/lib/python3.11", symlinks=True,
                    ignore=shutil.ignore_patterns("test", "idlelib", "tkinter", "ensurepip",
                                                  "lib2to3", "site-packages", "dist-packages"))
    make_device_nodes(root)
    (root / "etc/hostname").write_text(HOSTNAME)
    (root / "etc/os-release").write_text('NAME="kbox test root"\nID=kbox\n')
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")
    return root
