"""chroot(2) inside the root view (kbox run --root R): mount-free, in every tier.

The tree R (tests/rootfs.py) holds a second tree at R/srv/inner with its own /etc/hostname.
Inside kbox, `chroot /srv/inner` must behave as a native nested chroot (`chroot R chroot
/srv/inner`, with /proc mounted in the inner tree so /proc/self/* can be compared): the inner
tree is all the program sees from then on, in its children and in what it executes, and a
working directory left outside climbs no higher than R (natively it would reach the host).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import rootfs  # noqa: E402
from kbox import runner  # noqa: E402
from kbox.rootfs import copy_program  # noqa: E402
from kbox.rootview import RootView  # noqa: E402

TIERS = ["seccomp", "trap", "rewrite"]
INNER_HOSTNAME = "kbox-inner\n"
OUTER = "OUTER-only-in-R"            # R/outer-marker: outside the inner tree, inside R
SECRET = "HOST-SECRET-beside-R"      # beside R on the host: never reachable
RUN_UID = RUN_GID = 4321             # the unprivileged user, when the tests run as root
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def TREE():
    """A directory every user may enter (pytest's tmp_path is root's alone) with R in it."""
    base = Path(tempfile.mkdtemp(prefix="kbox-chroot-"))
    base.chmod(0o755)
    root = rootfs.build(base / "root")
    copy_program("/usr/sbin/chroot", root)
    if os.path.exists("/usr/sbin/pivot_root"):
        copy_program("/usr/sbin/pivot_root", root)
    inner = rootfs.build(root / "srv/inner")
    copy_program("/usr/sbin/chroot", inner)
    (inner / "etc/hostname").write_text(INNER_HOSTNAME)
    os.symlink("/", inner / "tmp/abs-root")          # absolute: the inner root from inside
    os.symlink("../../..", inner / "tmp/up-chain")
    (root / "outer-marker").write_text(OUTER + "\n")
    (root / "home/user/here").write_text("in R's /home/user\n")
    (base / "secret").write_text(SECRET + "\n")
    (inner / "mnt").mkdir(exist_ok=True)
    (root / "srv/outer-bind").mkdir()
    bound = base / "bound"
    (bound / "sub").mkdir(parents=True)
    (bound / "bound").write_text("BOUND\n")
    (base / "bound-outer").mkdir()
    (base / "records").mkdir()
    if os.geteuid() == 0:
        os.chown(base / "records", RUN_UID, RUN_GID)
    yield root
    shutil.rmtree(base, ignore_errors=True)


def kbox(root, *cmd, tier, extra=(), timeout=90):
    argv = [sys.executable, "-m", "kbox", "run", f"--syscall-mode={tier}", "--root", str(root), *extra, "--", *cmd]
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # this checkout's kbox, from any directory
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd="/", env=env)


def kbox_as_user(root, *cmd, tier, root_id=None):
    """`cmd` under kbox as RUN_UID (the launcher's command line `kbox run` builds, as
    tests/test_root_id.py runs it: the user may not read root's Python)."""
    view = RootView(str(root), "/")
    path, _ = view.find_program(cmd[0])
    argv = runner.launch_argv(path, list(cmd[1:]), mode=tier, extra=view.launcher_options(root_id=root_id))
    return subprocess.run(argv, capture_output=True, text=True, timeout=90, cwd="/", check=False,
                          env={"PATH": "/usr/bin:/bin", "LANG": "C"}, user=RUN_UID, group=RUN_GID,
                          extra_groups=[])


def native(root, *cmd, binds=()):
    """`cmd` in a native chroot of R, with /proc mounted in R and in the inner tree, and each
    (HOST, GUEST) of `binds` bind-mounted."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("the native comparison needs root and unshare(1) (a mount namespace for /proc)")
    mounts = "".join(f'mount --bind "{host}" "$1{guest}" && ' for host, guest in binds)
    script = ('mount -t proc proc "$1/proc" && mount -t proc proc "$1/srv/inner/proc" && ' + mounts +
              'shift && exec chroot "$0" "$@"')
    got = subprocess.run(["unshare", "-m", "sh", "-c", script, str(root), str(root), *cmd],
                         capture_output=True, text=True, timeout=90)
    if "mount:" in got.stderr:
        pytest.skip(f"cannot mount /proc for the native comparison: {got.stderr.strip()}")
    return got


def same_as_native(root, tier, *cmd):
    want = native(root, *cmd)
    got = kbox(root, *cmd, tier=tier)
    assert (got.returncode, got.stdout) == (want.returncode, want.stdout), got.stderr
    return got


SHOW = "cat /etc/hostname; ls /; cd /..; pwd; readlink /proc/self/root"


@pytest.mark.parametrize("tier", TIERS)
def test_chroot_to_a_subdirectory_shows_the_inner_tree(TREE, tier):
    got = same_as_native(TREE, tier, "chroot", "/srv/inner", "/bin/sh", "-c", SHOW)
    lines = got.stdout.splitlines()
    assert lines[0] == INNER_HOSTNAME.strip() and lines[-2:] == ["/", "/"], got.stdout
    assert "srv" not in lines and "outer-marker" not in lines  # R's own entries are gone


ESCAPES = "; ".join(f"cat {p} 2>/dev/null || echo no" for p in [
    "/../outer-marker", "/../../../../outer-marker", "../../../outer-marker",
    "/tmp/abs-root/outer-marker", "/tmp/abs-root/../outer-marker", "/tmp/up-chain/outer-marker",
    "/proc/self/root/../outer-marker", "/proc/self/root/../../secret", "/proc/self/cwd/../../outer-marker",
    "/proc/$$/root/../../../outer-marker",
]) + "; cd /tmp/up-chain && pwd -P && cat etc/hostname"


@pytest.mark.parametrize("tier", TIERS)
def test_escapes_from_inside_the_chroot_reach_only_the_inner_tree(TREE, tier):
    got = same_as_native(TREE, tier, "chroot", "/srv/inner", "/bin/sh", "-c", ESCAPES)
    assert OUTER not in got.stdout and SECRET not in got.stdout
    assert got.stdout.splitlines()[:10] == ["no"] * 10, got.stdout
    assert got.stdout.splitlines()[-2:] == ["/", INNER_HOSTNAME.strip()], got.stdout


# os.chroot without chdir: the working directory (R's /home/user) stays outside the new root.
CWD_OUTSIDE = """
import os
os.chdir('/home/user')
os.chroot('/srv/inner')
print(open('/etc/hostname').read().strip())
try:
    print('getcwd', os.getcwd())
except FileNotFoundError:
    print('getcwd (unreachable)')   # glibc refuses the kernel's "(unreachable)/..." answer
print(open('here').read().strip())
print(open('../../outer-marker').read().strip())
print(sorted(os.listdir('/'))[:3])
os.chdir('/')
print(os.getcwd(), open('../../etc/hostname').read().strip())
"""


@pytest.mark.parametrize("tier", TIERS)
def test_a_working_directory_left_outside_stays_usable(TREE, tier):
    got = same_as_native(TREE, tier, "python3", "-c", CWD_OUTSIDE)
    assert got.stdout.splitlines()[:4] == [INNER_HOSTNAME.strip(), "getcwd (unreachable)", "in R's /home/user", OUTER]


@pytest.mark.parametrize("tier", TIERS)
def test_outside_the_chroot_dotdot_stops_at_the_original_root(TREE, tier):
    # Natively `..` from a directory outside the chroot climbs to the host's root (the classic
    # chroot escape); the view never leaves R.  /proc/self/cwd shows the path in R.
    script = ("import os\nos.chdir('/home/user'); os.chroot('/srv/inner')\n"
              "print(open('../../../../../../outer-marker').read().strip())\n"
              "print(os.path.exists('../../../../../../secret'), os.readlink('/proc/self/cwd'))\n"
              "print(sorted(os.listdir('../../../../..'))[:4])\n")
    got = kbox(TREE, "python3", "-c", script, tier=tier)
    assert got.returncode == 0, got.stderr
    assert got.stdout.splitlines() == [OUTER, "False /home/user", "['bin', 'dev', 'etc', 'home']"], got.stdout


KEEPS = """
import os, subprocess, threading
t = threading.Thread(target=os.chroot, args=('/srv/inner',)); t.start(); t.join()
os.chdir('/')
os.closerange(3, 1 << 20)   # kbox's descriptors of the root (and the chroot's) stay
import resource
top = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
for fd in range(max(3, top - 40), top):   # where kbox keeps its descriptors
    try: os.dup2(0, fd)
    except OSError: pass
print('thread', open('/etc/hostname').read().strip())
pid = os.fork()
if pid == 0:
    print('fork', open('/etc/hostname').read().strip(), flush=True)
    os._exit(0)
os.waitpid(pid, 0)
print('child', subprocess.run(['cat', '/etc/hostname'], capture_output=True, text=True).stdout.strip(), flush=True)
os.execv('/bin/sh', ['sh', '-c', 'echo exec $(cat /etc/hostname); sh -c "ls /srv/inner 2>&1 || echo none; cat /../etc/hostname"'])
"""


@pytest.mark.parametrize("tier", TIERS)
def test_threads_children_and_exec_keep_the_chroot(TREE, tier):
    got = same_as_native(TREE, tier, "python3", "-c", KEEPS)
    h = INNER_HOSTNAME.strip()
    assert got.stdout.splitlines()[:4] == [f"thread {h}", f"fork {h}", f"child {h}", f"exec {h}"], got.stdout
    assert got.stdout.splitlines()[-1] == h


ERRORS = """
import os
for p in ['/nonexistent', '/etc/hostname', '/etc/hostname/x', '/tmp/abs-root/nope', '']:
    try:
        os.chroot(p)
        print(p, 'ok')
    except OSError as e:
        print(repr(p), e.errno)
"""


@pytest.mark.parametrize("tier", TIERS)
def test_chroot_errors_are_the_kernels(TREE, tier):
    got = same_as_native(TREE, tier, "python3", "-c", ERRORS)
    assert got.stdout.splitlines()[:3] == ["'/nonexistent' 2", "'/etc/hostname' 20", "'/etc/hostname/x' 20"]


TRY = ("import os\ntry:\n    os.chroot('/srv/inner'); print('ok', open('/etc/hostname').read().strip())\n"
       "except PermissionError as e:\n    print('EPERM', e.errno)\n")


@pytest.mark.parametrize("tier", TIERS)
def test_without_privilege_chroot_is_eperm(TREE, tier):
    if os.geteuid() != 0:
        pytest.skip("needs root to run kbox as another user")
    got = kbox_as_user(TREE, "python3", "-c", TRY, tier=tier)
    assert (got.returncode, got.stdout) == (0, "EPERM 1\n"), got.stderr


@pytest.mark.parametrize("tier", TIERS)
def test_with_root_id_an_unprivileged_user_may_chroot(TREE, tier):
    if os.geteuid() != 0:
        pytest.skip("needs root to run kbox as another user")
    record = TREE.parent / "records" / f"{tier}.ids"
    got = kbox_as_user(TREE, "python3", "-c", TRY, tier=tier, root_id=str(record))
    assert (got.returncode, got.stdout) == (0, f"ok {INNER_HOSTNAME.strip()}\n"), got.stderr


@pytest.mark.parametrize("tier", TIERS)
def test_root_that_dropped_its_ids_may_not_chroot(TREE, tier):
    if os.geteuid() != 0:
        pytest.skip("needs root (the program drops root itself)")
    script = f"import os\nos.setuid({RUN_UID})\n" + TRY
    got = kbox(TREE, "python3", "-c", script, tier=tier)
    assert (got.returncode, got.stdout) == (0, "EPERM 1\n"), got.stderr


# A bind at guest /srv/inner/mnt is at /mnt inside `chroot /srv/inner`; one at /srv/outer-bind
# is not seen from there; a chroot into a bind has the bind's source as its root.
BINDS_SCRIPT = """
import os
os.chroot('/srv/inner'); os.chdir('/')
print(open('/mnt/bound').read().strip(), sorted(os.listdir('/mnt')), os.path.exists('/srv/outer-bind'))
os.chdir('/mnt/sub')
print(os.getcwd(), open('../bound').read().strip(), open('/mnt/sub/../../mnt/bound').read().strip())
os.chdir('../..')
print(os.getcwd(), os.readlink('/proc/self/cwd'), os.path.exists('/srv/inner'))
fd = os.open('/mnt/bound', os.O_RDONLY)
print(os.readlink(f'/proc/self/fd/{fd}'))
os.chroot('/mnt'); os.chdir('/')
print(sorted(os.listdir('/')), open('/../../bound').read().strip(), os.getcwd())
"""


@pytest.mark.parametrize("tier", TIERS)
def test_binds_follow_the_chroot(TREE, tier):
    bound = TREE.parent / "bound"
    binds = [(bound, "/srv/inner/mnt"), (TREE.parent / "bound-outer", "/srv/outer-bind")]
    want = native(TREE, "python3", "-c", BINDS_SCRIPT, binds=binds)
    extra = [a for host, guest in binds for a in ("--bind", f"{host}:{guest}")]
    got = kbox(TREE, "python3", "-c", BINDS_SCRIPT, tier=tier, extra=extra)
    assert (got.returncode, got.stdout) == (want.returncode, want.stdout), got.stderr
    assert got.stdout.splitlines() == [
        "BOUND ['bound', 'sub'] False", "/mnt/sub BOUND BOUND", "/ / False", "/mnt/bound",
        "['bound', 'sub'] BOUND /"], got.stdout


@pytest.mark.parametrize("tier", TIERS)
def test_pivot_root_is_eperm(TREE, tier):
    if not os.path.exists("/usr/sbin/pivot_root"):
        pytest.skip("no pivot_root(8) on this host")
    got = kbox(TREE, "pivot_root", "/srv/inner", "/srv/inner/tmp", tier=tier)
    assert got.returncode == 1 and "Operation not permitted" in got.stderr, got.stderr
