"""kbox run --root inside each VM: both architectures, both kernels, the in-process tiers.

The root is built in the guest from the guest's own programs (tests/rootfs.py: dash,
coreutils, python3, sqlite3, git with their libraries, /bin an absolute symlink), so on
aarch64 the dynamic loader and libc come from an aarch64 tree; outputs are compared with a
native chroot of the same tree in the guest."""
from __future__ import annotations

import importlib.util
import shlex
from pathlib import Path
from typing import Any

import pytest

from kbox.tiers import AUTO, IN_PROCESS, SECCOMP
from vmtests.helpers import describe

ROOT = "/tmp/kbox-view-root"
SECRET = "HOST-SECRET-not-in-the-root"
ROOTFS_PY = Path(__file__).resolve().parent.parent / "tests" / "rootfs.py"
CASES_PY = Path(__file__).resolve().parent.parent / "tests" / "rootescape_cases.py"

PROGRAMS = {
    "ls": "ls -a /",
    "os-release": "cat /etc/os-release",
    "cd-and-up": "sh -c 'cd /usr/lib && pwd && ls .. && cd ../.. && pwd'",
    "python": "python3 -c 'import os, sys; print(os.getcwd(), sys.prefix, open(\"/etc/hostname\").read())'",
    "python-subprocess": "python3 -c 'import subprocess as s; print(s.run([\"ls\", \"/etc\"], capture_output=True, text=True).stdout)'",
    "sqlite3": "sqlite3 :memory: 'select 40 + 2;'",
    "files": "sh -c 'mkdir -p /tmp/d && echo x > /tmp/d/f && ln -s /tmp/d/f /tmp/d/l && cat /tmp/d/l && readlink /tmp/d/l && rm -r /tmp/d'",
}
ESCAPES = ["cat /../secret", "cat /proc/self/root/../secret", "cd / && cat /proc/self/cwd/../secret",
           "ln -s / /tmp/abs && cat /tmp/abs/../secret; rm -f /tmp/abs"]


def _root(vm: Any) -> str:
    """Builds the root in this guest once."""
    if vm.run(f"test -x {ROOT}/usr/bin/dash", timeout=60).exit_status != 0:
        vm.put(ROOTFS_PY, "/tmp/kbox_rootfs.py")
        res = vm.run(f"rm -rf {ROOT} && cd /tmp && python3 -c 'import pathlib, kbox_rootfs; "
                     f"kbox_rootfs.build(pathlib.Path(\"{ROOT}\"))' && echo {SECRET} > {ROOT}/../secret",
                     timeout=600)
        assert res.exit_status == 0, describe("building the root in the guest failed", res)
    return ROOT


@pytest.mark.parametrize("tier", [*IN_PROCESS, AUTO, SECCOMP])
@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_program_inside_the_root_matches_native_chroot(vm: Any, name: str, tier: str) -> None:
    root = _root(vm)
    cmd = PROGRAMS[name]
    native = vm.run(f"chroot {root} {cmd}", timeout=300)
    assert native.exit_status == 0, describe(f"{name} natively in a chroot of the root", native)
    res = vm.run(f"cd / && kbox run --syscall-mode={tier} --root {root} -- {cmd}", timeout=600)
    assert (res.exit_status, res.stdout) == (native.exit_status, native.stdout), \
        describe(f"{name} under {tier} --root", res, native)


@pytest.mark.parametrize("tier", [*IN_PROCESS, SECCOMP])
def test_escape_attempts_stay_inside_the_root(vm: Any, tier: str) -> None:
    root = _root(vm)
    for case in ESCAPES:
        res = vm.run(f"kbox run --syscall-mode={tier} --root {root} -- sh -c "
                     f"{shlex.quote(case + '; echo the-shell-ran')}", timeout=300)
        assert SECRET not in res.stdout + res.stderr, describe(f"escape: {case}", res)
        assert "the-shell-ran" in res.stdout, describe(f"escape: {case}: the shell did not run", res)


# Binds (--bind): a directory and a file from beside the root; with any bind kbox walks every
# path itself (csrc/core/view-binds.c), so this is also that walk on each arch and kernel.
BIND_SCRIPT = ("cat /srv/a; cd /srv/sub && pwd && cat ../a && cd ../.. && pwd && "
               "cat /srv/../../../secret 2>/dev/null; cat /etc/hostname; rm /etc/hostname 2>/dev/null; "
               "echo rm=$?; echo w > /srv/sub/w && cat /srv/sub/w")
BIND_EXPECT = ["host a", "/srv/sub", "host a", "/", "bound file", "rm=1", "w"]


@pytest.mark.parametrize("tier", [*IN_PROCESS, SECCOMP])
def test_binds_show_host_files_inside_the_root(vm: Any, tier: str) -> None:
    root = _root(vm)
    src = "/tmp/kbox-bind-src"
    res = vm.run(f"rm -rf {src} && mkdir -p {src}/sub {root}/srv && echo 'host a' > {src}/a && "
                 f"echo 'bound file' > {src}.file", timeout=60)
    assert res.exit_status == 0, describe("making the bind sources failed", res)
    res = vm.run(f"cd / && kbox run --syscall-mode={tier} --root {root} --bind {src}:/srv "
                 f"--bind {src}.file:/etc/hostname -- sh -c {shlex.quote(BIND_SCRIPT)}", timeout=300)
    assert res.stdout.splitlines() == BIND_EXPECT and SECRET not in res.stdout, \
        describe(f"binds under {tier}", res)
    check = vm.run(f"cat {src}/sub/w {root}/etc/hostname", timeout=60)
    assert check.stdout.splitlines()[0] == "w" and "kbox-root" in check.stdout, describe("after", check)


# --root-id: the ids the program sees and the ownership it sets, recorded and seen again by
# a second run; the real files stay the guest root's.  The tree's shell is the guest's busybox
# (tests/rootfs.py), whose applets do the chown and mknod.
ROOT_ID_SCRIPT = ("busybox id -u; busybox touch /tmp/owned && busybox chown 42:43 /tmp/owned && "
                  "busybox stat -c %u:%g /tmp/owned; busybox rm -f /tmp/cdev; "
                  "busybox mknod /tmp/cdev c 4 5 && busybox stat -c '%F %t:%T' /tmp/cdev")


@pytest.mark.parametrize("tier", [*IN_PROCESS, SECCOMP])
def test_root_id_records_ownership_and_a_second_run_sees_it(vm: Any, tier: str) -> None:
    root = _root(vm)
    ids = f"/tmp/kbox-ids-{tier}"
    res = vm.run(f"rm -f {ids} {root}/tmp/owned && cd / && kbox run --syscall-mode={tier} --root {root} "
                 f"--root-id={ids} -- sh -c {shlex.quote(ROOT_ID_SCRIPT)}", timeout=300)
    assert res.stdout.splitlines() == ["0", "42:43", "character special file 4:5"], \
        describe(f"--root-id under {tier}", res)
    again = vm.run(f"cd / && kbox run --syscall-mode={tier} --root {root} --root-id={ids} -- "
                   "busybox stat -c %u:%g /tmp/owned", timeout=300)
    real = vm.run(f"stat -c %u:%g {root}/tmp/owned", timeout=60)
    assert (again.stdout, real.stdout) == ("42:43\n", "0:0\n"), describe("the second run", again, real)


@pytest.mark.parametrize("tier", [*IN_PROCESS, SECCOMP])
def test_chroot_inside_the_root_view(vm: Any, tier: str) -> None:
    """chroot(2) to a subdirectory of the view, mount-free (busybox's applet; the guest's
    busybox is static): the inner tree's files, `..` and absolute paths stay in it."""
    root = _root(vm)
    inner = f"{root}/srv/inner"
    res = vm.run(f"rm -rf {inner} && mkdir -p {inner}/etc {inner}/bin && cp /usr/bin/busybox "
                 f"{inner}/bin/ && echo inner-tree > {inner}/etc/hostname", timeout=60)
    assert res.exit_status == 0, describe("making the inner tree failed", res)
    script = ("busybox chroot /srv/inner /bin/busybox sh -c "
              "'cat /etc/hostname; cat /../../../etc/hostname; cd /..; pwd; ls /'")
    res = vm.run(f"cd / && kbox run --syscall-mode={tier} --root {root} -- sh -c {shlex.quote(script)}",
                 timeout=300)
    assert res.stdout.splitlines() == ["inner-tree", "inner-tree", "/", "bin", "etc"], \
        describe(f"chroot under {tier}", res)


def test_libc_and_loader_come_from_the_root(vm: Any) -> None:
    root = _root(vm)
    res = vm.run(f"kbox run --root {root} -- python3 -c 'print(open(\"/proc/self/maps\").read())'",
                 timeout=300)
    assert res.exit_status == 0, describe("maps", res)
    libs = [ln.split()[-1] for ln in res.stdout.splitlines() if "libc.so" in ln or "ld-linux" in ln]
    assert libs and all(p.startswith(root + "/") for p in libs), describe("libs from the host", res)


# ---- the escape corpus (tests/guest/rootescape.c; what each line must say is in
# tests/rootescape_cases.py, shared with the host tests) -------------------------------------

_spec = importlib.util.spec_from_file_location("rootescape_cases", CASES_PY)
assert _spec is not None and _spec.loader is not None
CASES: Any = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(CASES)

ESCAPE_DIR = "/tmp/kbox-escape"            # the root, and beside it the host's marker
ESCAPE_ITERATIONS = 200                    # per racing case: one short run per tier
# Binds a listening socket beside the marker (the corpus connects to it by its host path) and
# execs the rest of argv with it still open.
LISTEN_AND_EXEC = ("import os, socket, sys; s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); "
                   "s.listen(16); s.set_inheritable(True); os.execvp(sys.argv[2], sys.argv[2:])")
_escape_runs: dict[tuple[str, str, str, str], tuple[Any, dict[str, str]]] = {}


def _escape_run(vm: Any, tier: str, program: str) -> dict[str, str]:
    """The corpus's lines (plus `bound-on-host`: whether a socket file appeared beside the
    root) for `program` from the image, run once per VM, tier and build in a fresh root."""
    key = (vm.image.arch, vm.image.kernel, tier, program)
    if key not in _escape_runs:
        root, host = f"{ESCAPE_DIR}/root", f"{ESCAPE_DIR}/host"
        marker, prog = f"{host}/marker", f"{vm.image.guest_programs_dir}/{program}"
        setup = (f"rm -rf {ESCAPE_DIR} && mkdir -p {host} {root}{host} && "
                 f"echo \"{CASES.HOST_MARK} $(cat /proc/sys/kernel/random/uuid)\" > {marker} && "
                 f"echo '{CASES.ROOT_MARK}' > {root}{marker} && cd /tmp && python3 -c "
                 f"'import pathlib, sys; from kbox.rootfs import copy_program, make_layout; "
                 f"r = pathlib.Path(sys.argv[2]); make_layout(r); copy_program(sys.argv[1], r)' "
                 f"{prog} {root}")
        res = vm.run(setup, timeout=300)
        assert res.exit_status == 0, describe("building the escape root failed", res)
        run = shlex.join(["python3", "-c", LISTEN_AND_EXEC, f"{host}/rootescape-host.sock",
                          "kbox", "run", f"--syscall-mode={tier}", "--root", root, "--", prog,
                          marker, "7", str(ESCAPE_ITERATIONS)])
        res = vm.run(f"cd / && exec 7<{host} && {run}; st=$?; "
                     f"test -S {host}/rootescape.sock && echo bound-on-host: yes || "
                     "echo bound-on-host: no; exit $st", timeout=600)
        lines = dict(ln.split(": ", 1) for ln in res.stdout.splitlines() if ": " in ln)
        _escape_runs[key] = (res, lines)
    res, lines = _escape_runs[key]
    assert res.exit_status == 0 and "FAIL" not in res.stdout, describe(f"rootescape under {tier}", res)
    return lines


def _known(tier: str) -> set[str]:
    return {c for (t, c) in CASES.KNOWN_ESCAPES if t == (IN_PROCESS[0] if tier == AUTO else tier)}


@pytest.mark.parametrize("tier", [*IN_PROCESS, AUTO, SECCOMP])
@pytest.mark.parametrize("program", ["rootescape-static", "rootescape-dynamic", "rootescape-musl"])
def test_escape_corpus_reaches_only_what_the_root_holds(vm: Any, tier: str, program: str) -> None:
    """Every route of the corpus prints its contained line (the known escapes apart)."""
    lines = _escape_run(vm, tier, program)
    want = CASES.expected(tier, ESCAPE_ITERATIONS)
    known = _known(tier)
    got = {c: v for c, v in lines.items() if c in want and c not in known}
    assert got == {c: v for c, v in want.items() if c not in known}, \
        "\n".join(f"{c}: {lines.get(c)!r}, want {v!r}" for c, v in want.items()
                  if c not in known and lines.get(c) != v)


@pytest.mark.parametrize("tier", [*IN_PROCESS, SECCOMP])
def test_escape_corpus_af_unix_paths_stay_inside_the_root(vm: Any, tier: str) -> None:
    lines = _escape_run(vm, tier, "rootescape-static")
    want = CASES.expected(tier, ESCAPE_ITERATIONS)
    assert ({c: lines.get(c) for c in CASES.AF_UNIX_CASES}, lines.get("bound-on-host")) == \
        ({c: want[c] for c in CASES.AF_UNIX_CASES}, "no")
