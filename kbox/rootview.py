"""The root view from the Python side: checking `kbox run --root DIR` before the launcher
starts, and finding the program inside the root as the view will.

The launcher confines every path itself (openat2 RESOLVE_IN_ROOT, csrc/core/view.c; binds
in csrc/core/view-binds.c); this checks the options and only has to agree with it for the
program's own lookup, so that a missing or non-executable
program gets the shell's one-line error and exit status (127, 126) here.
"""
from __future__ import annotations

import os
import posixpath
from typing import Sequence

from kbox.errors import UserError

EXIT_NOT_FOUND = 127

EXIT_USAGE = 2
MAXSYMLINKS = 40  # the kernel's limit


# The host's files `--host-binds` shows in the view (each one the host has; one whose
# parent directory the root lacks is left out).  /proc, /dev and /sys are the host's anyway.
HOST_BINDS = ("/etc/resolv.conf", "/etc/hosts", "/etc/host.conf", "/etc/nsswitch.conf",
              "/etc/passwd", "/etc/group", "/etc/localtime", "/tmp", "/run")
MAX_BINDS = 16  # csrc/core/view-binds.h
HOST_TREES = ("/proc", "/dev", "/sys")


def parse_bind(spec: str) -> tuple[str, str]:
    """HOST[:GUEST] -> (HOST, GUEST); GUEST defaults to HOST.  The split is at the last ':'
    followed by '/', so a host path with a colon needs its GUEST spelled out."""
    host, sep, guest = spec.rpartition(":")
    if not sep or not guest.startswith("/") or not host:
        host, guest = spec, spec
    return host, guest


class RootView:
    def __init__(self, root: str, workdir: str = "/", binds: Sequence[str] = (),
                 host_binds: bool = False, display: str | None = None):
        """display: what messages call the root (an image's name for its overlay's tree)."""
        if not os.path.isdir(root):
            what = "does not exist" if not os.path.lexists(root) else "is not a directory"
            raise UserError(f"kbox run: --root {root}: {what}", EXIT_USAGE)
        self.root = os.path.realpath(root)
        self.name = display or self.root
        # (guest, host) pairs, canonical, parents before what they hold (the launcher checks
        # each guest path's parent in the view as it stands with the binds before it).
        self.binds: list[tuple[str, str]] = []
        wanted = [(h, h, True) for h in HOST_BINDS] if host_binds else []
        wanted += [(*parse_bind(b), False) for b in binds]
        for host, guest, optional in sorted(wanted, key=lambda w: posixpath.normpath(w[1]).count("/")):
            self._add_bind(host, guest, optional)
        if not workdir.startswith("/"):
            raise UserError(f"kbox run: --workdir {workdir}: must be absolute (a path in the root)",
                            EXIT_USAGE)
        self.workdir = workdir
        host = self.host_path(workdir)
        if host is None or not os.path.isdir(host):
            raise UserError(f"kbox run: --workdir {workdir}: no such directory in the root {root}",
                            EXIT_USAGE)

    def _add_bind(self, host: str, guest: str, optional: bool) -> None:
        what = f"kbox run: --bind {host}:{guest}" if not optional else None
        if not os.path.exists(host):
            if optional:
                return
            raise UserError(f"{what}: no such file or directory on the host", EXIT_USAGE)
        if not guest.startswith("/"):
            raise UserError(f"{what}: the guest path must be absolute", EXIT_USAGE)
        g = posixpath.normpath(guest).replace("//", "/")
        if g == "/":
            raise UserError(f"{what}: a bind cannot cover the whole root (that is --root)", EXIT_USAGE)
        if any(g == t or g.startswith(t + "/") for t in HOST_TREES):
            if optional:
                return
            raise UserError(f"{what}: /proc, /dev and /sys are the host's already", EXIT_USAGE)
        if any(g == b for b, _ in self.binds):
            if optional:
                return
            raise UserError(f"{what}: a second bind at {g}", EXIT_USAGE)
        parent = self.host_path(posixpath.dirname(g), cwd="/")
        if parent is None or not os.path.isdir(parent):
            if optional:
                return
            raise UserError(f"{what}: its parent {posixpath.dirname(g)} is not a directory in the root",
                            EXIT_USAGE)
        src = os.path.realpath(host)
        there = self.host_path(g, cwd="/")
        if there is not None and os.path.exists(there) and os.path.isdir(there) != os.path.isdir(src):
            if optional:
                return
            kind = "directory" if os.path.isdir(src) else "file"
            raise UserError(f"{what}: a {kind} cannot cover what the root has at {g}", EXIT_USAGE)
        if len(self.binds) == MAX_BINDS:
            raise UserError(f"{what or 'kbox run: --host-binds'}: too many binds (the most is "
                            f"{MAX_BINDS}, --host-binds included)", EXIT_USAGE)
        self.binds.append((g, src))

    def _host_of(self, done: list[str]) -> str:
        """The host path of the guest directory components `done` (a bind's source when one
        covers them, else the root's)."""
        guest = "/" + "/".join(done)
        best = None
        for g, h in self.binds:
            if (guest == g or guest.startswith(g + "/")) and (best is None or len(g) > len(best[0])):
                best = (g, h)
        if best is None:
            return os.path.join(self.root, *done)
        rest = guest[len(best[0]):].lstrip("/")
        return os.path.join(best[1], rest) if rest else best[1]

    def host_path(self, guest: str, cwd: str | None = None) -> str | None:
        """The host path `guest` names inside the root (symlinks followed within it, `..`
        stopping at it), or None for a symlink loop."""
        if not guest.startswith("/"):
            guest = posixpath.join(cwd or self.workdir, guest)
        todo = [c for c in guest.split("/") if c]
        done: list[str] = []
        links = 0
        while todo:
            c = todo.pop(0)
            if c == ".":
                continue
            if c == "..":
                if done:
                    done.pop()
                continue
            host = self._host_of([*done, c])
            if os.path.islink(host) and not any(b == "/" + "/".join([*done, c]) for b, _ in self.binds):
                links += 1
                if links > MAXSYMLINKS:
                    return None
                target = os.readlink(host)
                if target.startswith("/"):
                    done = []
                todo = [t for t in target.split("/") if t] + todo
                continue
            done.append(c)
        return self._host_of(done)

    def find_program(self, name: str, path_env: str | None = None) -> tuple[str, str]:
        """(guest path, host path) of the program `name` as a shell in the root finds it."""
        if "/" in name:
            guest = name if name.startswith("/") else posixpath.join(self.workdir, name)
            host = self.host_path(guest)
            if host is None or not os.path.lexists(host):
                raise UserError(f"kbox: {name}: No such file or directory (in the root {self.name})",
                                EXIT_NOT_FOUND)
            return guest, host
        if path_env is None:
            path_env = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
        for d in path_env.split(":"):
            if not d.startswith("/"):
                continue  # a relative PATH entry names the host's working directory
            guest = posixpath.join(d, name)
            host = self.host_path(guest)
            if host and os.path.isfile(host) and os.access(host, os.X_OK):
                return guest, host
        raise UserError(f"kbox: {name}: command not found (in the root {self.name})", EXIT_NOT_FOUND)

    def record_path(self, root_id: str | bool) -> str:
        """The --root-id record: FILE as given, or DIR.kbox-ids beside the root; checked to be
        writable where it will be written (FILE.tmp beside it, then renamed over it)."""
        if not isinstance(root_id, str) and self.root == "/":
            raise UserError("kbox run: --root-id: the root / has nothing beside it; give --root-id=FILE",
                            EXIT_USAGE)
        path = os.path.abspath(root_id) if isinstance(root_id, str) else self.root + ".kbox-ids"
        where = os.path.dirname(path) or "/"
        given = "--root-id" if isinstance(root_id, str) else "--root-id (beside the root; give --root-id=FILE)"
        if os.path.isdir(path):
            raise UserError(f"kbox run: {given}: {path} is a directory", EXIT_USAGE)
        if not os.path.isdir(where):
            raise UserError(f"kbox run: {given}: {where} does not exist", EXIT_USAGE)
        if not os.access(where, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.R_OK)):
            raise UserError(f"kbox run: {given}: cannot write the record {path} ({where} is not writable)",
                            EXIT_USAGE)
        return path

    def launcher_options(self, root_id: str | bool | None = None, root_record: str | None = None) -> list[str]:
        """root_record: an image root's record (its owners and modes, stat only), unless
        root_id names the same file (then fake root ids too)."""
        opts = [f"--root={self.root}"]
        for guest, host in self.binds:
            opts += [f"--bind={host}", f"--bind-at={guest}"]
        opts.append(f"--workdir={self.workdir}")
        if root_id is not None:
            opts.append(f"--root-id={self.record_path(root_id)}")
        elif root_record is not None:
            opts.append(f"--root-record={root_record}")
        return opts
