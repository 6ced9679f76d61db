"""Copying programs into a root filesystem tree with what they load: the dynamic loader and
every shared library, found as the loader finds them (no ldd: the VM images lack it).  Used
by `kbox bench --root` and by the root view tests (tests/rootfs.py)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path


def needed(prog: str) -> list[str]:
    """The dynamic loader and every shared library `prog` needs, transitively, found as the
    loader finds them in the standard directories (no ldd: the VM images lack it)."""
    from elftools.elf.dynamic import DynamicSection
    from elftools.elf.elffile import ELFFile

    triplet = f"{os.uname().machine}-linux-gnu"
    dirs = [f"/lib/{triplet}", f"/usr/lib/{triplet}", "/lib", "/usr/lib"]
    found: list[str] = []
    todo = [prog]
    while todo:
        path = todo.pop()
        with open(path, "rb") as f:
            elf = ELFFile(f)
            for seg in elf.iter_segments():
                if seg.header.p_type == "PT_INTERP" and seg.get_interp_name() not in found:
                    found.append(seg.get_interp_name())
            for sec in elf.iter_sections():
                if not isinstance(sec, DynamicSection):
                    continue
                for tag in sec.iter_tags():
                    if tag.entry.d_tag != "DT_NEEDED":
                        continue
                    for d in dirs:
                        cand = os.path.join(d, tag.needed)
                        if os.path.exists(cand):
                            if cand not in found:
                                found.append(cand)
                                todo.append(cand)
                            break
    return found


def copy_file(src: str, root: Path) -> None:
    """Copies the file `src` names (its contents, symlinks followed) to the same path in the
    root, /lib and /lib64 folded into /usr as on a merged-/usr system."""
    rel = src.lstrip("/")
    if rel.startswith(("lib/", "lib64/")):
        rel = "usr/" + rel
    dest = root / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        shutil.copy2(os.path.realpath(src), dest)


def copy_program(prog: str, root: Path) -> None:
    """`prog` and everything it loads, at the same paths in `root` (merged /usr)."""
    copy_file(prog, root)
    for lib in needed(prog):
        copy_file(lib, root)


def make_layout(root: Path) -> None:
    """The directories of a merged-/usr tree, with relative /lib and /lib64 links."""
    for d in ("usr/bin", "usr/lib", "usr/lib64", "etc", "tmp", "proc", "dev", "sys"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for name, target in (("lib", "usr/lib"), ("lib64", "usr/lib64")):
        if not os.path.lexists(root / name):
            os.symlink(target, root / name)


def make_device_nodes(root: Path) -> None:
    """The /dev nodes a native chroot of the tree needs (under kbox /dev is the host's);
    only root may make them, so others get none."""
    if os.geteuid() != 0:
        return
    for name, minor in (("null", 3), ("zero", 5), ("random", 8), ("urandom", 9)):
        node = root / "dev" / name
        if not os.path.lexists(node):
            os.mknod(node, 0o666 | 0o020000, os.makedev(1, minor))
            os.chmod(node, 0o666)
