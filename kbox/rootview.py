"""The root view from the Python side: checking `kbox run --root DIR` before the launcher
starts, and finding the program inside the root as the view will.

The launcher confines every path itself (openat2 RESOLVE_IN_ROOT, csrc/core/view.c); this
only has to agree with it for the program's own lookup, so that a missing or non-executable
program gets the shell's one-line error and exit status (127, 126) here.
"""
from __future__ import annotations

import os
import posixpath

from kbox.errors import UserError

EXIT_NOT_FOUND = 127

EXIT_USAGE = 2
MAXSYMLINKS = 40  # the kernel's limit


class RootView:
    def __init__(self, root: str, workdir: str = "/"):
        if not os.path.isdir(root):
            what = "does not exist" if not os.path.lexists(root) else "is not a directory"
            raise UserError(f"kbox run: --root {root}: {what}", EXIT_USAGE)
        self.root = os.path.realpath(root)
        if not workdir.startswith("/"):
            raise UserError(f"kbox run: --workdir {workdir}: must be absolute (a path in the root)",
                            EXIT_USAGE)
        self.workdir = workdir
        host = self.host_path(workdir)
        if host is None or not os.path.isdir(host):
            raise UserError(f"kbox run: --workdir {workdir}: no such directory in the root {root}",
                            EXIT_USAGE)

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
            host = os.path.join(self.root, *done, c)
            if os.path.islink(host):
                links += 1
                if links > MAXSYMLINKS:
                    return None
                target = os.readlink(host)
                if target.startswith("/"):
                    done = []
                todo = [t for t in target.split("/") if t] + todo
                continue
            done.append(c)
        return os.path.join(self.root, *done)

    def find_program(self, name: str, path_env: str | None = None) -> tuple[str, str]:
        """(guest path, host path) of the program `name` as a shell in the root finds it."""
        if "/" in name:
            guest = name if name.startswith("/") else posixpath.join(self.workdir, name)
            host = self.host_path(guest)
            if host is None or not os.path.lexists(host):
                raise UserError(f"kbox: {name}: No such file or directory (in the root {self.root})",
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
        raise UserError(f"kbox: {name}: command not found (in the root {self.root})", EXIT_NOT_FOUND)

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

    def launcher_options(self, root_id: str | bool | None = None) -> list[str]:
        opts = [f"--root={self.root}", f"--workdir={self.workdir}"]
        if root_id is not None:
            opts.append(f"--root-id={self.record_path(root_id)}")
        return opts
