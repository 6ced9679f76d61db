"""The root view's escape corpus (tests/guest/rootescape.c) under every tier: each route out of
the root prints what it reached, and each line must be exactly the contained one.

The root holds the program and, at the host marker's own path, a marker of its own; the host
marker sits beside the root with unique contents; a descriptor of its directory is passed
in from outside the view (fd N in argv), and a host socket listens beside it.  So every line
says "inside (marker=root)", an errno, or "HOST ..." when the host's file was reached.

trap and rewrite translate a cooperative program exactly and are documented as not
containing a hostile one (docs/tiers.md); their racing cases still cannot reach the host
through a call the runtime serves, because the runtime reads the path once into its own
buffer before resolving it, so that is asserted too.  The seccomp tier is where the races
are the real test (a supervisor that CONTINUEd a checked path would lose them).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kbox.rootfs import copy_program, make_layout

sys.path.insert(0, os.path.dirname(__file__))
from rootescape_cases import HOST_MARK, KNOWN_ESCAPES, ROOT_MARK, expected

ITERATIONS = 2000


class Corpus:
    """The root, the host marker beside it, and the corpus's output per (mode, build)."""

    def __init__(self, base: Path, guest_dir: Path) -> None:
        self.root = base / "root"
        self.hostdir = base / "host"
        self.marker = self.hostdir / "marker"
        self.hostdir.mkdir()
        self.bound = base / "bound"
        self.bound.mkdir()
        self.marker.write_text(f"{HOST_MARK} {uuid.uuid4()}\n")
        make_layout(self.root)
        mirror = self.root / str(self.marker).lstrip("/")
        mirror.parent.mkdir(parents=True)
        mirror.write_text(ROOT_MARK + "\n")
        self.progs = {}
        for kind in ("static", "dynamic", "musl"):
            prog = guest_dir / f"rootescape-{kind}"
            copy_program(str(prog), self.root)   # at the same path inside the root
            self.progs[kind] = str(prog)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(self.hostdir / "rootescape-host.sock"))
        self.listener.listen(16)
        self.runs: dict[tuple[str, str], tuple[subprocess.CompletedProcess[str], dict[str, str]]] = {}
        self.bound_on_host: dict[tuple[str, str], bool] = {}

    def run(self, mode: str, kind: str, bind: bool = False) -> dict[str, str]:
        """Case -> what it reached (the part after "case: "), running the corpus once; with
        `bind`, the view also has a bind (of a directory beside the root), which makes every
        path go through kbox's own walk (csrc/core/view-binds.c) instead of the kernel's."""
        key = (mode, kind + ("+bind" if bind else ""))
        if key not in self.runs:
            (self.hostdir / "rootescape.sock").unlink(missing_ok=True)   # an earlier escape's
            fd = os.open(self.hostdir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                got = subprocess.run(
                    [sys.executable, "-m", "kbox", "run", f"--syscall-mode={mode}", "--root",
                     str(self.root), *(["--bind", f"{self.bound}:/bound"] if bind else []),
                     "--", self.progs[kind], str(self.marker), str(fd),
                     str(ITERATIONS)],
                    capture_output=True, text=True, timeout=300, pass_fds=(fd,), check=False)
            finally:
                os.close(fd)
            lines = dict(ln.split(": ", 1) for ln in got.stdout.splitlines() if ": " in ln)
            self.bound_on_host[key] = (self.hostdir / "rootescape.sock").exists()
            self.runs[key] = (got, lines)
        got, lines = self.runs[key]
        assert got.returncode == 0 and "FAIL" not in got.stdout, (
            f"rootescape-{kind} under {mode}: exit {got.returncode}\n{got.stdout}\n{got.stderr}")
        return lines

    def close(self) -> None:
        self.listener.close()


@pytest.fixture(scope="module")
def CORPUS(tmp_path_factory: pytest.TempPathFactory, guest_dir: Path) -> Iterator[Corpus]:
    corpus = Corpus(tmp_path_factory.mktemp("escapes"), guest_dir)
    yield corpus
    corpus.close()


def _params(modes: list[str], cases: list[str]) -> list[Any]:
    out = []
    for mode in modes:
        for case in cases:
            marks = []
            if (mode, case) in KNOWN_ESCAPES:
                marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_ESCAPES[(mode, case)]))
            out.append(pytest.param(mode, case, marks=marks, id=f"{mode}-{case}"))
    return out


@pytest.mark.parametrize("mode, case", _params(["trap", "rewrite", "seccomp"],
                                               list(expected("seccomp", ITERATIONS))))
def test_escape_route_reaches_only_what_the_root_holds(CORPUS: Corpus, mode: str, case: str) -> None:
    lines = CORPUS.run(mode, "static")
    want = expected(mode, ITERATIONS)[case]
    assert lines.get(case) == want, f"{case} under {mode}: {lines.get(case)!r}"


@pytest.mark.parametrize("mode", ["trap", "rewrite", "seccomp"])
def test_a_bind_never_creates_its_socket_file_on_the_host(CORPUS: Corpus, mode: str) -> None:
    """What the bind of unix-bind-absolute made, seen from the host: nothing beside the root."""
    CORPUS.run(mode, "static")
    assert not CORPUS.bound_on_host[(mode, "static")]


@pytest.mark.parametrize("mode", ["trap", "rewrite", "seccomp"])
def test_every_route_holds_when_a_bind_makes_kbox_walk_the_paths(CORPUS: Corpus, mode: str) -> None:
    """With any --bind, paths are walked component by component by kbox (the kernel cannot
    confine a walk that crosses into a bind): the corpus must print the same lines."""
    lines = CORPUS.run(mode, "static", bind=True)
    want = expected(mode, ITERATIONS)
    known = {c for (m, c) in KNOWN_ESCAPES if m == mode}
    assert {c: v for c, v in lines.items() if c not in known} == \
        {c: v for c, v in want.items() if c not in known}


@pytest.mark.parametrize("mode, kind", [
    pytest.param(m, k, id=f"{m}-{k}")
    for m in ("trap", "rewrite", "auto", "seccomp") for k in ("static", "dynamic", "musl")
    if (m, k) not in (("trap", "static"), ("rewrite", "static"), ("seccomp", "static"))])
def test_every_build_and_auto_print_the_expected_lines(CORPUS: Corpus, mode: str, kind: str) -> None:
    """glibc dynamic (the root's own loader and libc), musl, and auto's pick: the same lines
    (the known escapes apart: their own tests above hold them)."""
    lines = CORPUS.run(mode, kind)
    want = expected(mode, ITERATIONS)
    known = {c for (m, c) in KNOWN_ESCAPES if m == ("trap" if mode == "auto" else mode)}
    got = {c: v for c, v in lines.items() if c not in known}
    assert got == {c: v for c, v in want.items() if c not in known}


# ---- what the check on the host's /proc, /dev and /sys must leave working ---------------

@pytest.fixture(scope="module")
def SHELL_ROOT(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shell-root") / "root"
    make_layout(root)
    for prog in ("/usr/bin/dash", "/usr/bin/cat", "/usr/bin/ls", "/usr/bin/readlink"):
        copy_program(prog, root)
    (root / "etc/hostname").write_text("kbox-root\n")
    return root


HOST_TREE_SCRIPT = """
echo to-null > /dev/null && echo null
echo piped | cat /dev/stdin
echo piped-fd | cat /proc/self/fd/0
cat /dev/fd/3 3</etc/hostname
cat /proc/self/fd/3 3</etc/hostname
ls /proc/self/fd/ > /dev/null && echo fd-list
cd /etc && readlink /proc/self/cwd && cd /
cat /proc/self/mounts > /dev/null && echo mounts
cat /sys/class/net/lo/address
cat /proc/../etc/hostname 2>/dev/null || echo dotdot-refused
"""


@pytest.mark.parametrize("mode", ["trap", "rewrite"])
def test_the_hosts_proc_dev_and_sys_still_work_inside_the_root(SHELL_ROOT: Path, mode: str) -> None:
    """Pipes and root files through /dev/stdin, /dev/fd/N and /proc/self/fd/N (magic links to
    what the process holds), /sys through its relative symlinks, /proc/self/mounts."""
    got = subprocess.run([sys.executable, "-m", "kbox", "run", f"--syscall-mode={mode}", "--root",
                          str(SHELL_ROOT), "--", "/usr/bin/dash", "-c", HOST_TREE_SCRIPT],
                         capture_output=True, text=True, timeout=60, check=False)
    assert got.stdout.split("\n") == ["null", "piped", "piped-fd", "kbox-root", "kbox-root",
                                      "fd-list", "/etc", "mounts", "00:00:00:00:00:00",
                                      "dotdot-refused", ""], got.stderr
