"""`kbox vm run --kbox-from DIR`: the guest runs the kbox of a checkout on the host.

The image's own kbox (its kbox layer, built from this tree when the image was made) stays
in place; instead, for one run:
- the checkout's C core is cross-built on the host for the guest's arch with its own
  Makefile (`make -C DIR/csrc ARCH=… CROSS_COMPILE=… O=<cache>/kbox-from/<dir digest>-<arch>`).
  The O= directory persists between runs, so make recompiles only the sources (and
  headers' dependants) that changed since the last run: nothing at all when nothing did;
- the checkout and that build directory are shared into the guest read-write over virtio
  9p (kbox/vm/share.py) at GUEST_SRC and GUEST_NATIVE;
- the checkout's kbox/__pycache__ is brought up to date by a host Python 3.11 (the
  guest's version), as running kbox on the host does;
- the guest command runs with PYTHONPATH=GUEST_SRC (its kbox package comes first, before
  the image's in dist-packages), KBOX_NATIVE_DIR=GUEST_NATIVE (kbox.native loads the C core
  from there) and PYTHONDONTWRITEBYTECODE (the guest writes nothing into the checkout).
So `kbox ...` in the guest command is the checkout's, Python and C alike; an edit on the
host is in the next run after an incremental rebuild, with no image rebuild.
"""
from __future__ import annotations

import hashlib
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from kbox.errors import UserError
from kbox.vm import cache
from kbox.vm.arch import Arch
from kbox.vm.share import Share

GUEST_SRC = "/mnt/kbox-from"
GUEST_NATIVE = "/mnt/kbox-native"
MAKE_TIMEOUT_S = 900.0
# A compile or link line of csrc/Makefile's recipes: "<cc> ... -o <target>".
_BUILD_LINE = re.compile(r"gcc\b.*\s-o\s+(\S+)")


@dataclass(frozen=True)
class KboxFrom:
    checkout: Path
    build_dir: Path
    rebuilt: tuple[str, ...]     # targets make (re)built this time, relative to build_dir
    seconds: float

    @property
    def shares(self) -> list[Share]:
        return [Share(self.checkout, GUEST_SRC), Share(self.build_dir, GUEST_NATIVE)]

    def env(self) -> dict[str, str]:
        # No PYTHONPYCACHEPREFIX: with it the guest would ignore every __pycache__, the
        # image's precompiled standard library included (6 s more per run under TCG).
        return {"PYTHONPATH": GUEST_SRC, "KBOX_NATIVE_DIR": GUEST_NATIVE,
                "PYTHONDONTWRITEBYTECODE": "1"}

    def wrap(self, command: str) -> str:
        """The guest shell command with the checkout's kbox first."""
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env().items())
        return f"export {exports}; {command}"

    def summary(self) -> str:
        objs = [t for t in self.rebuilt if t.endswith(".o")]
        outs = [t for t in self.rebuilt if not t.endswith(".o")]
        what = (f"{len(objs)} object(s) compiled, {', '.join(outs) or 'nothing'} linked"
                if self.rebuilt else "nothing to rebuild")
        return (f"kbox: the guest runs kbox from {self.checkout} (guest:{GUEST_SRC}); its C "
                f"core in {self.build_dir}: {what} ({self.seconds:.1f} s)")


def check_checkout(path: Path) -> Path:
    """DIR, resolved, if it is a kbox checkout (a kbox package and csrc/Makefile); else a
    UserError with exit status 2."""
    if not path.exists():
        raise UserError(f"--kbox-from {path}: no such directory", 2)
    if not path.is_dir():
        raise UserError(f"--kbox-from {path}: not a directory (give the checkout's top)", 2)
    root = path.resolve()
    missing = [p for p in ("kbox/__init__.py", "kbox/cli.py", "csrc/Makefile")
               if not (root / p).is_file()]
    if missing:
        raise UserError(f"--kbox-from {path}: not a kbox checkout (no {', '.join(missing)})",
                        2)
    return root


def build_dir_for(checkout: Path, arch: Arch) -> Path:
    digest = hashlib.sha256(str(checkout).encode()).hexdigest()[:12]
    return cache.cache_root() / "kbox-from" / f"{digest}-{arch.name}"


def build(checkout: Path, arch: Arch, cross_prefix: str, progress: bool = True) -> KboxFrom:
    """Bring the checkout's C core for `arch` up to date (incrementally) and say what make
    did. A failing build is a UserError (exit status 1) with make's last lines."""
    out = build_dir_for(checkout, arch)
    out.mkdir(parents=True, exist_ok=True)
    cmd = ["make", "-C", str(checkout / "csrc"), f"ARCH={arch.name}",
           f"CROSS_COMPILE={cross_prefix}", f"O={out}", f"-j{os.cpu_count() or 1}"]
    t0 = time.monotonic()
    with cache.locked(f"kbox-from-{out.name}", timeout=MAKE_TIMEOUT_S):
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True,
                                  timeout=MAKE_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired as exc:
            raise UserError(f"--kbox-from: building the C core for {arch.name} timed out "
                            f"({MAKE_TIMEOUT_S:.0f} s)") from exc
        except FileNotFoundError as exc:
            raise UserError("--kbox-from: make not found: apt-get install make", 3) from exc
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise UserError(f"--kbox-from: building {checkout}/csrc for {arch.name} failed "
                        f"({shlex.join(cmd)}): {tail}")
    # make echoes a recipe line continued with a backslash as two lines: join them first.
    echoed = proc.stdout.replace("\\\n", " ")
    rebuilt = tuple(_rel(m.group(1), out) for line in echoed.splitlines()
                    if (m := _BUILD_LINE.search(line)))
    _compile_python(checkout)
    kf = KboxFrom(checkout, out, rebuilt, time.monotonic() - t0)
    if progress:
        print(kf.summary(), file=sys.stderr, flush=True)
    return kf


def _compile_python(checkout: Path) -> None:
    """Bring the checkout's own kbox/__pycache__ up to date with a host Python of the
    guest's version (3.11: same bytecode magic), as running kbox on the host would:
    timestamp-checked, so the guest (PYTHONDONTWRITEBYTECODE, 9p reports the host's mtimes)
    uses what is fresh and compiles the rest in memory. Without such a Python, the guest
    compiles the package at every run (seconds under TCG)."""
    from kbox.vm.images import _guest_python_compiler
    py = _guest_python_compiler()
    if py is not None:
        subprocess.run([py, "-m", "compileall", "-q", "-j0", str(checkout / "kbox")],
                       capture_output=True, timeout=300, check=False)


def _rel(target: str, out: Path) -> str:
    try:
        return str(Path(target).resolve().relative_to(out.resolve()))
    except ValueError:
        return target
