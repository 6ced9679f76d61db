"""kbox run --root IMAGE: an ext4 image as the program's root, in every tier (kbox/ext4image.py).

The directory-root tests' programs (tests/rootfs.py's tree: dash, coreutils, python3,
sqlite3, git) run from an image made of the same tree with `kbox image from-dir` and print
what a native chroot of the tree prints; `ls -ln` shows the image's owners, modes, set-id
bits and devices although kbox runs as an unprivileged user who owns every materialized
file; an overlay keeps the program's changes for the next run and never touches the image;
a fuzzed corpus of damaged images gets one-line errors or warnings, never a traceback or a
hang; Ctrl-C leaves no process behind.
"""
from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import rootfs  # noqa: E402
from test_root_view import PROGRAMS  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TIERS = ["seccomp", "trap", "rewrite", "auto"]
RUN_UID = RUN_GID = 4321  # kbox runs as this user when the tests run as root
OWNER = (1234, 5678)
KEPT = re.compile(r"they are kept in (\S+) \(rerun with --overlay")


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("the image keeps several owners only when mke2fs -d runs as root, and the "
                    "native comparison runs chroot(8)")


def add_ownership_cases(root: Path) -> None:
    """Files whose owners and modes only the image can give: another user's, a set-user-ID
    program, a sticky directory, a device node, a FIFO, hard links and a sparse file."""
    srv = root / "srv"
    srv.mkdir()
    (srv / "theirs").write_text("owned by 1234:5678\n")
    os.chown(srv / "theirs", *OWNER)
    (srv / "mine").mkdir()
    os.chown(srv / "mine", *OWNER)
    (root / "usr/bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2("/usr/bin/echo", root / "usr/bin/suid-echo")
    os.chmod(root / "usr/bin/suid-echo", 0o4755)
    (srv / "sticky").mkdir(mode=0o1777)
    os.chmod(srv / "sticky", 0o1777)
    os.mknod(srv / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(srv / "disk", stat.S_IFBLK | 0o640, os.makedev(8, 1))
    os.mkfifo(srv / "fifo", 0o620)
    for n, mode in (("null", 0o666), ("disk", 0o640), ("fifo", 0o620)):
        os.chmod(srv / n, mode)  # past the umask
    (srv / "a").write_text("linked\n")
    os.link(srv / "a", srv / "b")
    with open(srv / "sparse", "wb") as f:
        f.seek(8 << 20)
        f.write(b"end\n")
    os.chmod(srv / "sparse", 0o400)


@pytest.fixture(scope="module")
def WORK():
    """A directory every user may enter (pytest's tmp_path is root's alone)."""
    base = Path(tempfile.mkdtemp(prefix="kbox-image-test-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def TREE(WORK):
    needs_root()
    root = rootfs.build(WORK / "tree")
    add_ownership_cases(root)
    return root


@pytest.fixture(scope="module")
def IMAGE(WORK, TREE):
    out = WORK / "root.ext4"
    got = subprocess.run([sys.executable, "-m", "kbox", "image", "from-dir", str(TREE), str(out)],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert got.returncode == 0, got.stderr
    # What the image has and the tree lacks: mke2fs's lost+found.  The native reference is
    # the tree with it added (after the image was made).
    (TREE / "lost+found").mkdir(mode=0o700)
    out.chmod(0o644)
    return out


def run_ids() -> tuple[int, int]:
    return (RUN_UID, RUN_GID) if os.geteuid() == 0 else (os.getuid(), os.getgid())


def user_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(path, RUN_UID, RUN_GID)
    return path


def user_python() -> str:
    """A python3 the run user may execute (the tests' own may live in root's home)."""
    for p in (sys.executable, "/usr/bin/python3"):
        if all(os.stat(d).st_mode & 0o001 for d in Path(p).parents) and os.stat(p).st_mode & 0o001:
            return p
    pytest.skip("no python3 the run user may execute")


@pytest.fixture(scope="module", autouse=True)
def USER_PYLIB(WORK):
    """The modules `kbox run` imports beyond the standard library (pyelftools, capstone),
    copied where the run user's python3 finds them (the tests' own site-packages may be
    root's alone)."""
    import capstone
    import elftools
    lib = WORK / "pylib"
    for mod in (elftools, capstone):
        shutil.copytree(os.path.dirname(mod.__file__), lib / mod.__name__)
    os.environ["KBOX_TEST_PYLIB"] = str(lib)
    yield lib


def kbox(*args, as_user=True, timeout=120, env=None, **kw):
    """`kbox ARGS...` as the run user (a real chown would fail; every materialized file is
    theirs), with this worktree's kbox package."""
    e = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "LANG": "C", "PYTHONPATH": f"{REPO}:{os.environ.get('KBOX_TEST_PYLIB', '')}",
         "HOME": "/", "TMPDIR": kw.pop("tmpdir", "/tmp"),
         "KBOX_PROGRESS_AFTER": "1e9"}  # no progress lines, however loaded the host (one test sets it)
    e.update(env or {})
    ids = {}
    if as_user and os.geteuid() == 0:
        ids = {"user": RUN_UID, "group": RUN_GID, "extra_groups": []}
    return subprocess.run([user_python() if ids else sys.executable, "-m", "kbox", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=e, cwd="/", **ids, **kw)


def drop_kept(stderr: str) -> str:
    """Removes an overlay the run kept (the program changed files) and returns the rest of
    stderr."""
    m = KEPT.search(stderr)
    if m:
        shutil.rmtree(m.group(1), ignore_errors=True)
    return KEPT.sub("", stderr)


def chroot(root, *cmd, workdir="/"):
    return subprocess.run(["chroot", str(root), "/bin/sh", "-c", f'cd "{workdir}" && exec "$@"', "sh", *cmd],
                          capture_output=True, text=True, timeout=60)


# ---- the directory view's programs, from the image -------------------------------------------

@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_real_program_from_the_image_matches_native_chroot(TREE, IMAGE, name, tier):
    cmd = PROGRAMS[name]
    workdir = "/home/user" if name == "getcwd-workdir" else "/"
    native = chroot(TREE, *cmd, workdir=workdir)
    got = kbox("run", f"--syscall-mode={tier}", "--root", IMAGE, "--workdir", workdir, "--", *cmd)
    drop_kept(got.stderr)
    assert (got.returncode, got.stdout) == (native.returncode, native.stdout), got.stderr


# ---- owners and modes come from the image -------------------------------------------------

# Not `/`: its /proc, /dev and /sys are the host's under kbox.
LS = ["ls", "-ln", "--time-style=+%s", "/srv", "/usr/bin/suid-echo", "/usr/bin/ls", "/etc"]


def listing(out: str) -> list[str]:
    """ls -ln lines without "total N" (the blocks the files take on the disk holding them)."""
    return [line for line in out.splitlines() if not line.startswith("total ")]


@pytest.mark.parametrize("tier", TIERS)
def test_ls_shows_the_images_owners_and_modes(TREE, IMAGE, WORK, tier):
    """The run user owns every materialized file; ls -ln inside shows the image's owners,
    set-user-ID bit, sticky directory, devices and FIFO exactly as a native chroot of the tree
    shows the real ones."""
    native = chroot(TREE, *LS)
    assert native.returncode == 0, native.stderr
    assert " 1234 5678 " in native.stdout and "-rwsr-xr-x" in native.stdout and "crw-rw-rw-" in native.stdout
    overlay = user_dir(WORK / f"owners-{tier}")
    got = kbox("run", f"--syscall-mode={tier}", "--root", IMAGE, "--overlay", overlay / "o", "--", *LS)
    assert (got.returncode, got.stderr) == (0, "")
    assert listing(got.stdout) == listing(native.stdout)
    real = os.lstat(overlay / "o/root/srv/theirs")
    assert (real.st_uid, real.st_gid) == run_ids()
    assert not os.lstat(overlay / "o/root/usr/bin/suid-echo").st_mode & stat.S_ISUID
    assert stat.S_ISREG(os.lstat(overlay / "o/root/srv/null").st_mode)  # a device is an empty file
    # The program's own ids are its own (no --root-id): not faked to 0.
    ids = kbox("run", f"--syscall-mode={tier}", "--root", IMAGE, "--overlay", overlay / "o", "--",
               "python3", "-c", "import os; print(os.getuid(), os.getgid(), os.stat('/srv/theirs').st_uid)")
    assert ids.stdout.split() == [str(run_ids()[0]), str(run_ids()[1]), "1234"], ids.stderr


def test_root_id_adds_fake_root_to_the_images_owners(IMAGE, WORK):
    overlay = user_dir(WORK / "rootid")
    got = kbox("run", "--root", IMAGE, "--overlay", overlay / "o", "--root-id", "--",
               "sh", "-c", "python3 -c 'import os; print(os.getuid())'; stat -c '%u:%g %A' /srv/theirs "
               "/usr/bin/suid-echo /etc/hostname; touch /tmp/new; stat -c %u /tmp/new")
    assert got.returncode == 0, got.stderr
    assert got.stdout.split() == ["0", "1234:5678", "-rw-r--r--", "0:0", "-rwsr-xr-x", "0:0", "-rw-r--r--", "0"]
    refused = kbox("run", "--root", IMAGE, "--root-id=/tmp/x.ids", "--", "true")
    assert refused.returncode == 2 and "the record is the overlay's own" in refused.stderr


# ---- the overlay ------------------------------------------------------------------------------

def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_overlay_round_trip_keeps_writes_and_never_touches_the_image(IMAGE, WORK):
    before = sha(IMAGE)
    overlay = user_dir(WORK / "round") / "o"
    first = kbox("run", "--root", IMAGE, "--overlay", overlay, "--", "sh", "-c",
                 "echo hi > /etc/motd && rm /etc/hostname && "
                 "python3 -c 'import os; os.chmod(\"/usr/bin/suid-echo\", 0o700)' && ls /etc")
    assert first.returncode == 0, first.stderr
    assert "motd" in first.stdout and "hostname" not in first.stdout
    stamp_time = os.stat(overlay / "kbox-image").st_mtime_ns
    second = kbox("run", "--root", IMAGE, "--overlay", overlay, "--", "sh", "-c",
                  "cat /etc/motd; ls /etc/hostname; stat -c '%A %u' /usr/bin/suid-echo")
    assert second.stdout.splitlines() == ["hi", "-rwx------ 0"], second.stderr
    assert "No such file" in second.stderr
    assert os.stat(overlay / "kbox-image").st_mtime_ns == stamp_time  # reused, not made again
    assert sha(IMAGE) == before


def test_an_overlay_made_from_another_image_is_refused(IMAGE, WORK):
    other = WORK / "other.ext4"
    src = WORK / "other-src"
    src.mkdir(exist_ok=True)
    (src / "f").write_text("x\n")
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(src), str(other), "4M"], check=True)
    other.chmod(0o644)
    overlay = user_dir(WORK / "another") / "o"
    made = kbox("image", "materialize", other, overlay)
    assert made.returncode == 0, made.stderr
    got = kbox("run", "--root", IMAGE, "--overlay", overlay, "--", "true")
    assert got.returncode == 2
    assert "made from another image" in got.stderr and got.stderr.count("\n") == 1


def test_a_temporary_overlay_goes_unless_the_program_changed_it(IMAGE, WORK):
    tmp = user_dir(WORK / "tmpdir-clean")
    got = kbox("run", "--root", IMAGE, "--", "cat", "/etc/hostname", tmpdir=str(tmp))
    assert (got.returncode, got.stdout, got.stderr) == (0, rootfs.HOSTNAME, "")
    assert os.listdir(tmp) == []
    tmp = user_dir(WORK / "tmpdir-changed")
    got = kbox("run", "--root", IMAGE, "--", "sh", "-c", "echo kept > /tmp/note; exit 3", tmpdir=str(tmp))
    assert got.returncode == 3  # the program's status, unchanged
    kept = KEPT.search(got.stderr)
    assert kept and got.stderr.count("\n") == 1, got.stderr
    assert (Path(kept.group(1)) / "root/tmp/note").read_text() == "kept\n"
    again = kbox("run", "--root", IMAGE, "--overlay", kept.group(1), "--", "cat", "/tmp/note")
    assert again.stdout == "kept\n", again.stderr


@pytest.mark.parametrize("overlay", ["temporary", "kept"])
def test_the_program_starts_with_no_signal_ignored_or_blocked(IMAGE, WORK, overlay):
    """Python ignores SIGPIPE and SIGXFSZ; the program must not inherit that, whether kbox execs the launcher (--overlay) or waits for it (a temporary overlay)."""
    extra = ["--overlay", user_dir(WORK / "sigs") / "o"] if overlay == "kept" else []
    got = kbox("run", "--root", IMAGE, *extra, "--", "sh", "-c", "cat /proc/self/status")
    assert got.returncode == 0, got.stderr
    masks = dict(re.findall(r"^(SigIgn|SigBlk):\s*(\w+)$", got.stdout, re.M))
    assert masks == {"SigIgn": "0" * 16, "SigBlk": "0" * 16}
    assert got.stderr == ""


def test_a_signal_that_kills_the_launcher_kills_kbox_alike(IMAGE, WORK):
    tmp = user_dir(WORK / "tmpdir-status")
    got = kbox("run", "--root", IMAGE, "--", "sh", "-c", "kill -TERM $$", tmpdir=str(tmp))
    assert got.returncode == 128 + signal.SIGTERM, got.stderr
    assert os.listdir(tmp) == []


def pgroup_members(pgid: int) -> list[int]:
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(p))
    return out


@pytest.mark.parametrize("tier", ["seccomp", "trap", "rewrite"])
def test_ctrl_c_leaves_no_process_and_no_temporary_overlay(IMAGE, WORK, tier):
    """SIGINT to kbox's whole process group, as a terminal's Ctrl-C sends it."""
    tmp = user_dir(WORK / f"tmpdir-int-{tier}")
    env = {"PATH": "/usr/bin:/bin", "KBOX_PROGRESS_AFTER": "1e9", "PYTHONPATH": f"{REPO}:{os.environ['KBOX_TEST_PYLIB']}", "TMPDIR": str(tmp), "LANG": "C"}
    ids = {"user": RUN_UID, "group": RUN_GID, "extra_groups": []} if os.geteuid() == 0 else {}
    p = subprocess.Popen([user_python() if ids else sys.executable, "-m", "kbox", "run", f"--syscall-mode={tier}", "--root", str(IMAGE),
                          "--", "sh", "-c", "echo started; sh -c 'read x'"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env, cwd="/", start_new_session=True, **ids)
    try:
        assert p.stdout.readline() == "started\n"
        time.sleep(0.3)
        assert len(pgroup_members(p.pid)) >= 2
        os.killpg(p.pid, signal.SIGINT)
        status = p.wait(timeout=20)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert status == 128 + signal.SIGINT, p.stderr.read()
    deadline = time.monotonic() + 5
    while pgroup_members(p.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pgroup_members(p.pid) == []
    assert os.listdir(tmp) == []


def test_ctrl_c_while_materializing_leaves_nothing(IMAGE, WORK):
    """SIGINT to the process group while the ~70 MB tree is being copied (0.5 s after the
    start; the copy takes a second or more here): kbox says so and removes the overlay."""
    tmp = user_dir(WORK / "tmpdir-int-early")
    env = {"PATH": "/usr/bin:/bin", "KBOX_PROGRESS_AFTER": "1e9", "TMPDIR": str(tmp), "LANG": "C",
           "PYTHONPATH": f"{REPO}:{os.environ['KBOX_TEST_PYLIB']}"}
    ids = {"user": RUN_UID, "group": RUN_GID, "extra_groups": []} if os.geteuid() == 0 else {}
    p = subprocess.Popen([user_python() if ids else sys.executable, "-m", "kbox", "run", "--root", str(IMAGE),
                          "--", "sh", "-c", "echo started; read x"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env, cwd="/", start_new_session=True, **ids)
    try:
        deadline = time.monotonic() + 10
        while not os.listdir(tmp) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.5)
        os.killpg(p.pid, signal.SIGINT)
        out, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode == 128 + signal.SIGINT and "Traceback" not in err, err
    # Interrupted while copying (the usual case), or, on a fast idle host, in the program.
    assert (out, err) == ("", "kbox: interrupted\n") or out == "started\n", (out, err)
    deadline = time.monotonic() + 5
    while pgroup_members(p.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pgroup_members(p.pid) == []
    assert os.listdir(tmp) == []


# ---- the image's tree, exactly ---------------------------------------------------------------

def load_record(path: Path) -> dict[tuple[int, int], tuple[int, int, int, int]]:
    rec = {}
    for line in path.read_text().splitlines():
        f = dict(kv.split("=") for kv in line.split(","))
        rec[(int(f["dev"], 16), int(f["ino"]))] = (int(f["mode"], 8), int(f["uid"]), int(f["gid"]), int(f["rdev"]))
    return rec


def tree_of(root: Path, record: dict | None = None) -> dict[str, tuple]:
    """Every file under root: type and mode, owner, device, contents' digest or link target,
    and which names share an inode.  With a record, what it says replaces the real values."""
    out: dict[str, tuple] = {}
    inodes: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in sorted(dirnames + filenames):
            p = Path(dirpath) / n
            st = os.lstat(p)
            mode, uid, gid, rdev = st.st_mode, st.st_uid, st.st_gid, st.st_rdev
            if record and (st.st_dev, st.st_ino) in record:
                mode, uid, gid, rdev = record[(st.st_dev, st.st_ino)]
            if stat.S_ISREG(mode):
                what = hashlib.sha256(p.read_bytes()).hexdigest()
            elif stat.S_ISLNK(mode):
                what = os.readlink(p)
            else:
                what = ""
            first = inodes.setdefault(st.st_ino, str(p.relative_to(root))) if not stat.S_ISDIR(mode) else ""
            out[str(p.relative_to(root))] = (oct(mode), uid, gid, rdev, what, first, st.st_size if stat.S_ISREG(mode) else 0)
    return out


# The images the corpus damages: ext4 as mke2fs makes it (metadata checksums: most damage is
# caught by a checksum), ext4 without checksums (libext2fs then parses what it is given) and
# ext2 (block maps instead of extent trees).
KINDS = {"ext4": ["-t", "ext4"], "ext4-nocsum": ["-t", "ext4", "-O", "^metadata_csum"], "ext2": ["-t", "ext2"]}


def small_tree(src: Path) -> Path:
    src.mkdir()
    (src / "etc").mkdir()
    (src / "etc/hostname").write_text("small\n")
    (src / "big").write_bytes(random.Random(1).randbytes(300_000))
    (src / "deep/a/b/c").mkdir(parents=True)
    for i in range(40):
        (src / f"deep/a/f{i}").write_text(f"{i}\n" * i)
    os.symlink("/etc/hostname", src / "abs-link")
    os.symlink("x" * 200, src / "long-link")  # a slow symlink (not in the inode)
    import socket
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(src / "sock"))  # the socket file stays after the close
    add_ownership_cases(src)
    return src


def small_image(src: Path, img: Path, kind: str) -> Path:
    subprocess.run(["mke2fs", "-q", "-F", *KINDS[kind], "-b", "4096", "-d", str(src), str(img), "16M"],
                   check=True, capture_output=True)
    img.chmod(0o644)
    return img


@pytest.fixture(scope="module")
def SMALL(WORK):
    """A small tree with every kind of file, and its ext4 image (4 KiB blocks, extents)."""
    needs_root()
    src = small_tree(WORK / "small")
    img = small_image(src, WORK / "small.ext4", "ext4")
    (src / "lost+found").mkdir(mode=0o700)
    return src, img


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_unmutated_image_materializes_to_exactly_its_tree(SMALL, WORK, kind):
    src, img = SMALL
    if kind != "ext4":
        img = small_image(src, WORK / f"exact-{kind}.img", kind)  # lost+found: mke2fs's own
    overlay = user_dir(WORK / f"exact-{kind}") / "o"
    got = kbox("image", "materialize", img, overlay)
    assert (got.returncode, got.stderr) == (0, "")
    want = tree_of(src)
    have = tree_of(overlay / "root", load_record(overlay / "kbox-ids"))
    assert have == want
    assert os.lstat(overlay / "root/srv/sparse").st_blocks * 512 < 1 << 20  # the hole stayed one


# ---- bad input and the fuzzed corpus ---------------------------------------------------------

def debugfs(img: Path, req: str) -> str:
    return subprocess.run(["debugfs", "-R", req, str(img)], capture_output=True, text=True, check=True).stdout


def inode_offset(img: Path, path: str) -> int:
    """Byte offset of `path`'s inode in the image (debugfs imap)."""
    out = debugfs(img, f"imap {path}")
    m = re.search(r"located at block (\d+), offset 0x([0-9a-f]+)", out)
    assert m, out
    return int(m.group(1)) * 4096 + int(m.group(2), 16)


def regions(img: Path) -> dict[str, tuple[int, int]]:
    """(offset, length) of what the corpus damages."""
    dir_block = int(debugfs(img, "blocks /deep/a").split()[0])
    return {
        "superblock": (1024, 1024),
        "group-descriptors": (4096, 64),
        "inode": (inode_offset(img, "/deep/a"), 256),
        "extent-header": (inode_offset(img, "/big") + 40, 24),
        "directory-block": (dir_block * 4096, 4096),
    }


def corpus(img: Path, out: Path, kind: str) -> list[tuple[str, Path]]:
    data = img.read_bytes()
    cases = []
    for region, (off, length) in regions(img).items():
        for seed in range(6):
            rnd = random.Random(f"{region}-{seed}")
            mutated = bytearray(data)
            for _ in range(rnd.choice((1, 2, 4, 16))):
                i = off + rnd.randrange(length)
                mutated[i] = rnd.choice((0, 0xFF, rnd.randrange(256), mutated[i] ^ (1 << rnd.randrange(8))))
            p = out / f"{kind}-{region}-{seed}.img"
            p.write_bytes(bytes(mutated))
            p.chmod(0o644)
            cases.append((f"{kind}-{region}-{seed}", p))
    for n in (2048, 4096 * 3, 4096 * 40, len(data) // 2):
        p = out / f"{kind}-truncated-{n}.img"
        p.write_bytes(data[:n])
        p.chmod(0o644)
        cases.append((f"{kind}-truncated-{n}", p))
    return cases


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_fuzzed_corpus_gets_errors_or_warnings_never_a_crash_or_a_hang(SMALL, WORK, kind):
    src, _ = SMALL
    base = user_dir(WORK / f"fuzz-{kind}")
    img = small_image(src, base / "base.img", kind)
    cases = corpus(img, base, kind)
    before = {p: sha(p) for _, p in cases}
    outcomes = {0: 0, 2: 0}
    warned = 0
    for name, p in cases:
        try:
            got = kbox("image", "materialize", p, base / f"{name}.overlay", timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{name}: no answer in 60 s")
        assert got.returncode in (0, 2), f"{name}: exit {got.returncode}: {got.stderr}"
        assert "Traceback" not in got.stderr, f"{name}: {got.stderr}"
        lines = got.stderr.splitlines()
        assert all(line.startswith(f"kbox: {p}: ") for line in lines), f"{name}: {got.stderr}"
        if got.returncode == 2:
            assert len(lines) == 1, f"{name}: {got.stderr}"
            assert not (base / f"{name}.overlay/kbox-image").exists()
        outcomes[got.returncode] += 1
        warned += got.returncode == 0 and bool(lines)
        assert sha(p) == before[p]  # read-only
    # The corpus must exercise every answer: an error, a file left out, and a whole tree.
    assert outcomes[2] and warned and outcomes[0] > warned, (outcomes, warned)


@pytest.mark.parametrize("what, make, status, message", [
    ("missing", None, 2, "does not exist"),
    ("not-an-image", b"just some text\n" * 200, 2, "is not a directory or an ext2/3/4 image"),
    ("zeros", bytes(1 << 16), 2, "is not a directory or an ext2/3/4 image"),
    ("truncated-superblock", "truncate:1100", 2, "is not a directory or an ext2/3/4 image"),
    ("bad-block-size", "poke:1048:40", 2, "is not a directory or an ext2/3/4 image"),
    ("inodes-zeroed", "poke:1024:0", 2, "kbox: {img}: "),
])
def test_bad_images_get_one_line_and_status_2(SMALL, WORK, what, make, status, message):
    _, img = SMALL
    p = WORK / f"bad-{what}.ext4"
    if isinstance(make, bytes):
        p.write_bytes(make)
    elif isinstance(make, str):
        data = bytearray(img.read_bytes())
        kind, off, *val = make.split(":")
        if kind == "truncate":
            data = data[:int(off)]
        else:
            data[int(off):int(off) + 4] = int(val[0]).to_bytes(4, "little")
        p.write_bytes(bytes(data))
    if p.exists():
        p.chmod(0o644)
    got = kbox("run", "--root", p, "--", "true")
    assert got.returncode == status, got.stderr
    assert message.replace("{img}", str(p)) in got.stderr
    assert got.stderr.count("\n") == 1 and "Traceback" not in got.stderr
    info = kbox("image", "info", p)
    assert info.returncode in (0, 2) and "Traceback" not in info.stderr


@pytest.mark.parametrize("mkfs", ["mkfs.minix", "mkfs.cramfs"])
def test_another_filesystem_is_not_taken_for_ext4(WORK, mkfs):
    """util-linux's minix (its superblock at byte 1024 too) and cramfs images."""
    tool = shutil.which(mkfs) or shutil.which(f"/sbin/{mkfs}")
    if not tool:
        pytest.skip(f"no {mkfs} (util-linux) to make another filesystem with")
    p = WORK / f"{mkfs}.img"
    if mkfs == "mkfs.cramfs":
        src = WORK / "cramfs-src"
        src.mkdir(exist_ok=True)
        (src / "f").write_text("x\n")
        subprocess.run([tool, str(src), str(p)], check=True, capture_output=True)
    else:
        p.write_bytes(bytes(4 << 20))
        subprocess.run([tool, str(p)], check=True, capture_output=True)
    p.chmod(0o644)
    got = kbox("run", "--root", p, "--", "true")
    assert got.returncode == 2 and "is not a directory or an ext2/3/4 image" in got.stderr, got.stderr
    assert got.stderr.count("\n") == 1
    info = kbox("image", "info", p)
    assert info.returncode == 2 and "not an ext2/3/4 image" in info.stderr


def test_image_help_and_info(IMAGE):
    helptext = kbox("image", "--help").stdout
    assert "from-dir" in helptext and "info" in helptext and "never modified" in helptext
    info = kbox("image", "info", IMAGE)
    assert info.returncode == 0, info.stderr
    assert re.search(r"filesystem: +ext4, UUID [0-9a-f-]{36}", info.stdout)
    assert "extent" in info.stdout and "state:        clean" in info.stdout


def test_materializing_a_small_image_prints_nothing_a_large_one_prints_progress(SMALL, WORK, IMAGE):
    _, img = SMALL
    small = kbox("image", "materialize", img, user_dir(WORK / "quiet") / "o", env={"KBOX_PROGRESS_AFTER": "1.0"})
    assert (small.returncode, small.stderr) == (0, "")
    # KBOX_PROGRESS_AFTER=0 stands for an image that takes more than the second it waits.
    large = kbox("image", "materialize", IMAGE, user_dir(WORK / "loud") / "o", env={"KBOX_PROGRESS_AFTER": "0"})
    assert large.returncode == 0, large.stderr
    assert re.fullmatch(r"(kbox: materializing \S+: \d+ files, \d+ MB\n)+"
                        r"kbox: materialized \S+: (\d+) files, (\d+) MB in [\d.]+ s\n", large.stderr), large.stderr
    files, mb = re.search(r"materialized \S+: (\d+) files, (\d+) MB", large.stderr).groups()
    assert int(files) > 1000 and int(mb) > 30
