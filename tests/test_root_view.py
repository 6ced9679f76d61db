"""kbox run --root DIR: the program's files come from DIR, confined, in every tier (seccomp, trap, rewrite).

Real programs (dash, coreutils, python3, sqlite3, git, copied with their libraries into a
merged-/usr tree whose /bin is an absolute symlink) run inside the root and print what a
native chroot of the same tree prints; an escape corpus checks that nothing outside the
root is reached; errors are one line with the documented status.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import rootfs  # noqa: E402

TIERS = ["trap", "rewrite", "auto", "seccomp"]
SECRET = "HOST-SECRET-not-in-the-root"


@pytest.fixture(scope="module")
def ROOT(tmp_path_factory):
    base = tmp_path_factory.mktemp("view")
    root = rootfs.build(base / "root")
    (base / "secret").write_text(SECRET + "\n")  # beside the root: ../secret natively
    return root


def kbox(root, *cmd, tier="rewrite", workdir=None, timeout=60, **kw):
    argv = [sys.executable, "-m", "kbox", "run", f"--syscall-mode={tier}", "--root", str(root)]
    if workdir:
        argv += ["--workdir", workdir]
    return subprocess.run(argv + ["--", *cmd], capture_output=True, text=True, timeout=timeout, **kw)


def chroot(root, *cmd, workdir="/"):
    if os.geteuid() != 0:
        pytest.skip("the native comparison runs chroot(8), which needs root")
    return subprocess.run(["chroot", str(root), "/bin/sh", "-c", f'cd "{workdir}" && exec "$@"', "sh", *cmd],
                          capture_output=True, text=True, timeout=60)


PROGRAMS = {
    "ls-root": ["ls", "-a", "/"],
    "os-release": ["cat", "/etc/os-release"],
    "cd-and-up": ["sh", "-c", "cd /usr/lib && pwd && ls .. && cd ../.. && pwd"],
    "dotdot-at-root": ["sh", "-c", "cd / && cat ../../../etc/hostname && ls /.."],
    "bin-is-absolute-link": ["sh", "-c", "readlink /bin; ls /bin/ls; stat -c '%n %F' /bin /usr/bin/ls"],
    "python": ["python3", "-c", "import os, sys; print(os.getcwd(), sys.prefix, open('/etc/hostname').read())"],
    "python-subprocess": ["python3", "-c", "import subprocess as s; print(s.run(['ls', '/etc'], capture_output=True, text=True).stdout)"],
    "python-listdir-fd": ["python3", "-c", "import os; fd = os.open('/usr', os.O_RDONLY); print(sorted(os.listdir(fd)), os.stat('lib', dir_fd=fd).st_mode > 0)"],
    "sqlite3": ["sqlite3", ":memory:", "create table t(x); insert into t values (41); select x + 1 from t;"],
    "git": ["sh", "-c", "cd /tmp && rm -rf g && mkdir g && cd g && git init -q && echo hi > f && git add f && git -c user.name=k -c user.email=k@k commit -qm m && git log --format=%s && cd .. && rm -rf g"],
    "files": ["sh", "-c", "mkdir -p /tmp/d/e && echo x > /tmp/d/f && mv /tmp/d/f /tmp/d/e/g && ln -s /tmp/d/e /tmp/d/l && cat /tmp/d/l/g && readlink /tmp/d/l && ls /tmp/d && rm -r /tmp/d && ls /tmp"],
    "exec-chain": ["sh", "-c", "sh -c 'sh -c \"cat /etc/hostname; pwd\"'"],
    "getcwd-workdir": ["sh", "-c", "pwd; /bin/pwd; python3 -c 'import os; print(os.getcwd())'"],
}


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_real_program_inside_the_root_matches_native_chroot(ROOT, name, tier):
    cmd = PROGRAMS[name]
    workdir = "/home/user" if name == "getcwd-workdir" else None
    native = chroot(ROOT, *cmd, workdir=workdir or "/")
    got = kbox(ROOT, *cmd, tier=tier, workdir=workdir)
    assert (got.returncode, got.stdout) == (native.returncode, native.stdout), got.stderr


def test_shared_libraries_and_loader_come_from_the_root(ROOT):
    got = kbox(ROOT, "python3", "-c", "print(open('/proc/self/maps').read())")
    assert got.returncode == 0, got.stderr
    libc = [l.split()[-1] for l in got.stdout.splitlines() if "libc.so" in l]
    ld = [l.split()[-1] for l in got.stdout.splitlines() if "ld-linux" in l]
    assert libc and all(p.startswith(str(ROOT) + "/") for p in libc), libc
    assert ld and all(p.startswith(str(ROOT) + "/") for p in ld), ld


# ---- escapes: each path below reaches ../secret beside the root natively (outside any
# chroot); inside the view it must not. -----------------------------------------------------

ESCAPES = {
    "dotdot": "cat /../secret",
    "dotdot-deep": "cat /etc/../../../../secret",
    "relative-from-root": "cd / && cat ../secret",
    "relative-symlink-up": "ln -s ../../../../../.. /tmp/up && cat /tmp/up/secret; rm /tmp/up",
    "absolute-symlink-to-slash": "ln -s / /tmp/abs && cat /tmp/abs/../secret; rm /tmp/abs",
    "proc-self-root": "cat /proc/self/root/../secret",
    "proc-self-cwd": "cd / && cat /proc/self/cwd/../secret",
    "proc-pid-root": "cat /proc/$$/root/../secret",
    "symlink-loop": "ln -s /tmp/b /tmp/a && ln -s /tmp/a /tmp/b && cat /tmp/a; rm /tmp/a /tmp/b",
}


@pytest.mark.parametrize("tier", ["trap", "rewrite", "seccomp"])
@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_escape_attempt_stays_inside_the_root(ROOT, case, tier):
    got = kbox(ROOT, "sh", "-c", ESCAPES[case], tier=tier)
    assert SECRET not in got.stdout + got.stderr
    assert got.returncode != 0 or case == "symlink-loop" or "No such file" in got.stderr


@pytest.mark.parametrize("tier", ["trap", "rewrite", "seccomp"])
def test_a_directory_fd_from_outside_the_view_cannot_be_walked(ROOT, tier):
    """fd N is the directory beside the root, open before kbox started."""
    fd = os.open(str(ROOT.parent), os.O_RDONLY | os.O_DIRECTORY)
    try:
        script = ("import os\n"
                  f"n = {fd}\n"
                  "for f in (lambda: open(f'/proc/self/fd/{n}/secret').read(),\n"
                  "          lambda: os.open('secret', os.O_RDONLY, dir_fd=n),\n"
                  "          lambda: os.stat('secret', dir_fd=n),\n"
                  "          lambda: os.chdir(n),\n"
                  "          lambda: os.chdir(f'/proc/self/fd/{n}')):\n"
                  "    try: print('reached', f())\n"
                  "    except OSError as e: print(e.errno)\n")
        got = kbox(ROOT, "python3", "-c", script, tier=tier, pass_fds=(fd,))
    finally:
        os.close(fd)
    assert got.returncode == 0, got.stderr
    assert got.stdout.split() == ["13"] * 5, got.stdout  # EACCES, each time


@pytest.mark.parametrize("tier", ["trap", "seccomp"])
def test_paths_reported_back_are_guest_paths(ROOT, tier):
    got = kbox(ROOT, "sh", "-c", "cd /usr/lib && readlink /proc/self/cwd && python3 -c "
               "\"import os; fd = os.open('/etc', os.O_RDONLY); print(os.readlink(f'/proc/self/fd/{fd}'), os.getcwd())\"",
               tier=tier)
    assert got.stdout.split() == ["/usr/lib", "/etc", "/usr/lib"], got.stderr


@pytest.mark.parametrize("tier", ["trap", "seccomp"])
def test_trace_shows_the_programs_own_paths(ROOT, tier):
    """The seccomp supervisor serves the open itself, so its trace has the result too."""
    argv = [sys.executable, "-m", "kbox", "run", "--trace", f"--syscall-mode={tier}", "--root", str(ROOT),
            "--", "cat", "/etc/hostname"]
    got = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert got.stdout == rootfs.HOSTNAME
    assert 'openat(AT_FDCWD, "/etc/hostname", O_RDONLY) = 3' in got.stderr


# ---- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("args, status, message", [
    (["--root", "/nonexistent-kbox-root", "--", "sh"], 2, "--root /nonexistent-kbox-root: does not exist"),
    (["--root", "/etc/hostname", "--", "sh"], 2, "is not a directory"),
    (["--root", "{root}", "--", "no-such-program"], 127, "no-such-program: command not found (in the root"),
    (["--root", "{root}", "--", "/etc/hostname"], 126, "Permission denied"),
    (["--root", "{root}", "--workdir", "/nope", "--", "sh"], 2, "--workdir /nope: no such directory in the root"),
    (["--root", "{root}", "--syscall-mode=seccomp", "--", "/etc/hostname"], 126, "Permission denied"),
    (["--root", "{root}", "--syscall-mode=seccomp", "--workdir", "/nope", "--", "sh"], 2,
     "--workdir /nope: no such directory in the root"),
    (["--workdir", "/tmp", "--", "true"], 2, "--workdir applies with --root only"),
])
def test_bad_root_options_get_one_line_and_the_documented_status(ROOT, args, status, message):
    args = [a.replace("{root}", str(ROOT)) for a in args]
    got = subprocess.run([sys.executable, "-m", "kbox", "run", *args], capture_output=True, text=True, timeout=60)
    assert got.returncode == status, got.stderr
    assert message in got.stderr and got.stderr.count("\n") == 1 and "Traceback" not in got.stderr
