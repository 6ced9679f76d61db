"""kbox run --root R --bind HOST[:GUEST] and --host-binds: a host file or directory shown at a
guest path of the view, in every tier.

The root is tests/rootfs.py's tree (dash, coreutils, python3 ... copied from the host, /bin
an absolute symlink); the binds are directories and files made beside it.  Each case says
exactly what is reached: the bind's source, the root's own file under it, or the root again
through a bind's `..`, and the host files beside the root never.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import rootfs  # noqa: E402

TIERS = ["seccomp", "trap", "rewrite"]
SECRET = "HOST-SECRET-beside-the-root"


@pytest.fixture(scope="module")
def R(tmp_path_factory):
    base = tmp_path_factory.mktemp("binds")
    root = rootfs.build(base / "root")
    (root / "etc" / "motd").write_text("the root's motd\n")
    (root / "etc" / "hostname").write_text("the-root\n")
    (root / "srv").mkdir()
    (root / "opt").mkdir(exist_ok=True)
    (root / "srv" / "under").write_text("the root's file under the bind\n")
    os.symlink("/srv/a", root / "to-bind")          # a symlink of the root into a bind
    (base / "secret").write_text(SECRET + "\n")
    src = base / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a").write_text("host a\n")
    (src / "sub" / "b").write_text("host b\n")
    os.symlink("/etc/motd", src / "abs-link")         # absolute: resolves in the view
    os.symlink("../../../../secret", src / "up-link")  # climbs out of the bind: into the view
    (base / "file").write_text("a bound file\n")
    if os.path.exists("/bin/busybox"):
        shutil.copy("/bin/busybox", root / "usr" / "bin" / "busybox")
    return root


def kbox(root: Path, *cmd: str, tier: str, binds=(), host_binds=False, workdir=None, timeout=60):
    argv = [sys.executable, "-m", "kbox", "run", f"--syscall-mode={tier}", "--root", str(root)]
    for b in binds:
        argv += ["--bind", b]
    if host_binds:
        argv.append("--host-binds")
    if workdir:
        argv += ["--workdir", workdir]
    return subprocess.run(argv + ["--", *cmd], capture_output=True, text=True, timeout=timeout)


def sh(R: Path, script: str, tier: str, **kw):
    return kbox(R, "sh", "-c", script, tier=tier, **kw)


def src_bind(R: Path) -> str:
    return f"{R.parent / 'src'}:/srv"


@pytest.mark.parametrize("tier", TIERS)
def test_a_directory_bind_shows_the_host_tree_over_the_root(R, tier):
    got = sh(R, "cat /srv/a /srv/sub/b; ls /srv; cat /srv/under 2>/dev/null || echo absent", tier,
             binds=[src_bind(R)])
    assert got.returncode == 0, got.stderr
    assert got.stdout.splitlines() == ["host a", "host b", "a", "abs-link", "sub", "up-link", "absent"]


@pytest.mark.parametrize("tier", TIERS)
def test_working_directory_in_a_bind_is_a_guest_path_and_its_dotdot_is_the_view(R, tier):
    got = sh(R, "cd /srv/sub && pwd && /bin/pwd && readlink /proc/self/cwd && cat ../a && "
                "cd ../.. && pwd && cat etc/motd && ls -d /srv/../etc && "
                "python3 -c 'import os; os.chdir(\"/srv/sub\"); print(os.getcwd())'",
             tier, binds=[src_bind(R)])
    assert got.returncode == 0, got.stderr
    assert got.stdout.splitlines() == ["/srv/sub", "/srv/sub", "/srv/sub", "host a", "/",
                                       "the root's motd", "/srv/../etc", "/srv/sub"]


@pytest.mark.parametrize("tier", TIERS)
def test_symlinks_cross_into_and_out_of_binds_inside_the_view(R, tier):
    got = sh(R, "cat /to-bind; cat /srv/abs-link; cat /srv/up-link 2>&1; readlink /srv/abs-link",
             tier, binds=[src_bind(R)])
    # /srv/up-link climbs four levels from /srv: the view's root, where ../secret is absent.
    assert SECRET not in got.stdout + got.stderr
    lines = got.stdout.splitlines()
    assert lines[0] == "host a" and lines[1] == "the root's motd", got.stdout
    assert "No such file" in lines[2] and lines[3] == "/etc/motd", got.stdout


@pytest.mark.parametrize("tier", TIERS)
def test_dotdot_chains_from_a_bind_never_reach_the_host(R, tier):
    got = sh(R, "cat /srv/../../../../secret; cd /srv/sub && cat ../../../../../secret; "
                "cat /srv/sub/../../../etc/hostname", tier, binds=[src_bind(R)])
    assert SECRET not in got.stdout + got.stderr
    assert got.stdout.splitlines() == ["the-root"], got.stdout + got.stderr


@pytest.mark.parametrize("tier", TIERS)
def test_writes_in_a_bind_land_in_its_host_source(R, tier, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    got = sh(R, "echo made > /w/new && mkdir /w/d && mv /w/new /w/d/moved && ln -s d/moved /w/l "
                "&& cat /w/l && rm /w/l && ls /w/d", tier, binds=[f"{work}:/w"])
    assert got.returncode == 0, got.stderr
    assert got.stdout.splitlines() == ["made", "moved"]
    assert (work / "d" / "moved").read_text() == "made\n"
    assert not (R / "w").exists()


@pytest.mark.parametrize("tier", TIERS)
def test_a_file_bind_covers_the_roots_file_and_cannot_be_removed(R, tier):
    f = R.parent / "file"
    got = sh(R, "cat /etc/hostname; stat -c '%s %F' /etc/hostname; stat -L -c %h /etc/hostname; "
                "rm /etc/hostname; echo rm=$?; mv /etc/hostname /etc/x; echo mv=$?; "
                "echo more >> /etc/hostname; cat /etc/hostname", tier,
             binds=[f"{f}:/etc/hostname"])
    lines = got.stdout.splitlines()
    assert lines[:3] == ["a bound file", f"{len('a bound file') + 1} regular file", "1"], got.stdout
    assert lines[3:5] == ["rm=1", "mv=1"], got.stdout + got.stderr
    assert got.stderr.count("busy") == 2, got.stderr
    assert lines[5:] == ["a bound file", "more"]
    assert f.read_text() == "a bound file\nmore\n"
    f.write_text("a bound file\n")
    assert (R / "etc" / "hostname").read_text() == "the-root\n"


@pytest.mark.parametrize("tier", TIERS)
def test_a_missing_guest_path_is_made_virtually(R, tier):
    got = sh(R, "cat /opt/tool/a; ls -d /opt/tool; rm -d /opt/tool; echo rmdir=$?", tier,
             binds=[f"{R.parent / 'src'}:/opt/tool"])
    assert got.stdout.splitlines() == ["host a", "/opt/tool", "rmdir=1"], got.stdout + got.stderr
    assert not (R / "opt" / "tool").exists()


@pytest.mark.parametrize("tier", TIERS)
def test_the_program_itself_may_come_from_a_bind(R, tier, tmp_path):
    tools = tmp_path / "tools"
    tools.mkdir()
    script = tools / "hello"
    script.write_text("#!/bin/sh\necho hello from $0 in $(cat /etc/hostname)\n")
    script.chmod(0o755)
    got = kbox(R, "/opt/t/hello", tier=tier, binds=[f"{tools}:/opt/t"])
    assert (got.returncode, got.stdout) == (0, "hello from /opt/t/hello in the-root\n"), got.stderr


@pytest.mark.parametrize("tier", TIERS)
def test_host_binds_show_the_hosts_files(R, tier, tmp_path):
    marker = Path("/tmp") / f"kbox-host-binds-{os.getpid()}-{tier}"
    marker.write_text("host tmp\n")
    try:
        got = sh(R, f"cat /etc/resolv.conf; cat {marker}; cat /etc/passwd | head -1", tier,
                 host_binds=True)
    finally:
        marker.unlink()
    assert got.returncode == 0, got.stderr
    expect = ""
    if os.path.exists("/etc/resolv.conf"):
        expect += Path("/etc/resolv.conf").read_text()
    expect += "host tmp\n" + Path("/etc/passwd").read_text().splitlines()[0] + "\n"
    assert got.stdout == expect


@pytest.mark.parametrize("tier", TIERS)
def test_busybox_applets_reexecute_their_own_program_inside_the_root(R, tier):
    """busybox's shell runs an applet by execve("/proc/self/exe"): the program's own
    executable inside the root, not kbox's launcher."""
    if not (R / "usr" / "bin" / "busybox").exists():
        pytest.skip("busybox-static is not installed (scripts/setup-host installs it)")
    got = kbox(R, "/usr/bin/busybox", "sh", "-c", "cat /etc/motd; wc -l /etc/motd", tier=tier)
    assert (got.returncode, got.stdout) == (0, "the root's motd\n1 /etc/motd\n"), got.stderr


BAD = {
    "missing-source": (["/nonexistent-src:/srv"], "no such file or directory on the host"),
    "relative-guest": (["/tmp:srv"], "no such file or directory on the host"),
    "whole-root": (["/tmp:/"], "cannot cover the whole root"),
    "host-tree": (["/tmp:/proc/x"], "/proc, /dev and /sys are the host's already"),
    "missing-parent": (["/tmp:/no/such/dir"], "its parent /no/such is not a directory in the root"),
    "dir-over-file": (["/tmp:/etc/motd"], "a directory cannot cover what the root has at /etc/motd"),
    "twice": (["/tmp:/srv", "/etc:/srv"], "a second bind at /srv"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_binds_are_one_line_and_exit_2(R, case):
    binds, expect = BAD[case]
    got = kbox(R, "true", tier="trap", binds=binds)
    assert got.returncode == 2 and got.stdout == "", got.stderr
    assert got.stderr.count("\n") == 1 and expect in got.stderr and "Traceback" not in got.stderr, \
        got.stderr


def test_bind_without_root_is_a_usage_error():
    got = subprocess.run([sys.executable, "-m", "kbox", "run", "--bind", "/tmp:/t", "--", "true"],
                         capture_output=True, text=True, timeout=60)
    assert got.returncode == 2 and got.stderr.strip() == "kbox run: --bind applies with --root only"


def test_the_launcher_refuses_what_kbox_run_would_have_caught(R, tmp_path):
    """kbox-launch checks again (it is also run by hand and by the VM tests)."""
    from kbox import native
    launch = native.launcher_path()
    got = subprocess.run([str(launch), "--syscall-mode=trap", f"--root={R}", "--bind=/tmp",
                          "--bind-at=/no/such/dir", "--", "/bin/true"],
                         capture_output=True, text=True, timeout=60)
    assert got.returncode == 2 and "No such file or directory" in got.stderr, got.stderr
