"""kbox run --root IMAGE --root-writable: the program's changes end up in the image itself
(kbox/ext4write.py), checked from outside with e2fsprogs: `e2fsck -fn` finds the image clean
and `debugfs` reads back what the program wrote (contents, mode, size, owner, link target);
one writer at a time; a kill -9 at any moment (running, committing) leaves an image e2fsck
accepts; a run that changed nothing leaves the image byte for byte as it was.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from test_root_image import (OWNER, RUN_GID, RUN_UID, USER_PYLIB, WORK, add_ownership_cases,  # noqa: E402,F401
                             kbox, needs_root, pgroup_members, user_python)

from kbox.rootfs import copy_program, make_layout  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TIERS = ["seccomp", "trap", "rewrite", "auto"]
TOOLS = ["dash", "cat", "ls", "mv", "rm", "ln", "mkdir", "rmdir", "chmod", "truncate", "dd", "echo",
         "stat", "touch", "cp", "head", "tr", "chown", "mknod", "sleep", "true"]
KEEP = "kept safe\n"


def sh(*args, **kw):
    return subprocess.run(list(map(str, args)), capture_output=True, text=True, timeout=120, **kw)


def fsck(img: Path) -> subprocess.CompletedProcess:
    return sh("e2fsck", "-fn", img)


def debugfs(img: Path, request: str) -> str:
    got = sh("debugfs", "-R", request, img)
    assert got.returncode == 0, got.stderr
    return got.stdout


def inode_of(img: Path, path: str) -> dict:
    """debugfs stat's fields: type, mode, uid, gid, size, links."""
    out = debugfs(img, f"stat {path}")
    m = re.search(r"Type: (\w+)(?: special)?\s+Mode:\s+(\d+)", out)
    assert m, f"{path}: {out}"
    u = re.search(r"User:\s+(\d+)\s+Group:\s+(\d+)", out)
    return {"type": m.group(1), "mode": int(m.group(2), 8), "uid": int(u.group(1)), "gid": int(u.group(2)),
            "size": int(re.search(r"Size: (\d+)", out).group(1)), "links": int(re.search(r"Links: (\d+)", out).group(1)),
            "fast_link": re.search(r'Fast link dest: "(.*)"', out)}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def WTREE(WORK):
    """dash and the coreutils the tests run, the threaded writer, and files only the image can
    give their owners and modes (tests/test_root_image.py's)."""
    needs_root()
    root = WORK / "wtree"
    make_layout(root)
    for t in TOOLS:
        p = shutil.which(t, path="/usr/bin:/bin")
        if p is None:
            pytest.skip(f"no {t} on the host to put in the image")
        copy_program(os.path.realpath(p) if t == "dash" else p, root)
    if shutil.which("make", path="/usr/bin:/bin"):   # test_make_j2_builds_inside_the_image
        copy_program(shutil.which("make", path="/usr/bin:/bin"), root)
    os.symlink("dash", root / "usr/bin/sh")
    os.symlink("/usr/bin", root / "bin")
    threads = root / "usr/bin/threads"
    got = sh("gcc", "-O2", "-static", "-pthread", "-o", threads, REPO / "tests/writable/threads.c")
    if got.returncode != 0:
        pytest.skip(f"cannot build the static threaded writer: {got.stderr.strip()}")
    (root / "etc/hostname").write_text("writable\n")
    (root / "etc/keep").write_text(KEEP)
    (root / "etc/motd").write_text("old motd, longer than the new one\n")
    (root / "etc/log").write_text("line 1\n")
    (root / "etc/big").write_bytes(os.urandom(200_000))
    add_ownership_cases(root)
    (root / "srv/tree/a/b").mkdir(parents=True)
    (root / "srv/tree/a/b/leaf").write_text("leaf\n")
    (root / "srv/gone/deeper").mkdir(parents=True)
    (root / "srv/gone/deeper/x").write_text("x\n")
    return root


@pytest.fixture(scope="module")
def BASE_IMAGE(WORK, WTREE):
    out = WORK / "writable-base.ext4"
    got = kbox("image", "from-dir", WTREE, out, "--size", "400M", as_user=False)
    assert got.returncode == 0, got.stderr
    assert fsck(out).returncode == 0
    return out


@pytest.fixture
def IMG(BASE_IMAGE, WORK, request):
    """A fresh copy of the image, in a directory of its own that the run user may write."""
    d = WORK / f"w-{re.sub(r'[^A-Za-z0-9]+', '-', request.node.name)}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    img = d / "root.ext4"
    sh("cp", "--sparse=always", BASE_IMAGE, img)
    for p in (d, img):
        os.chown(p, RUN_UID, RUN_GID)
    yield img
    shutil.rmtree(d, ignore_errors=True)


def writable(img: Path, *cmd, tier: str = "seccomp", extra=(), **kw):
    return kbox("run", f"--syscall-mode={tier}", "--root", img, "--root-writable", *extra, "--", *cmd, **kw)


def assert_clean(img: Path) -> None:
    got = fsck(img)
    assert got.returncode == 0, got.stdout + got.stderr


# ---- a round trip ----------------------------------------------------------------------------

SCRIPT = """
set -e
echo created > /etc/new
echo short > /etc/motd
echo 'line 2' >> /etc/log
echo 'line 2' >> /srv/theirs
truncate -s 100 /etc/big
rm /etc/keep
mv /etc/hostname /etc/hostname.old
mkdir -p /opt/app/bin
mv /srv/tree /opt/app/tree
rm -r /srv/gone
ln -s ../etc/new /opt/app/link
ln -s "$(head -c 200 /dev/zero | tr '\\0' y)" /opt/app/slowlink
ln /etc/new /opt/app/hardlink
chmod 0751 /opt/app/bin
chmod 0600 /etc/new
dd if=/dev/urandom of=/opt/app/random bs=4096 count=300 2>/dev/null
cp /opt/app/random /opt/app/random.copy
truncate -s 20M /opt/app/sparse
echo end >> /opt/app/sparse
mkdir /opt/empty; rmdir /opt/empty
ls -lnR --time-style=+%s /etc /opt /srv
"""


def listing(out: str) -> list[str]:
    return [line for line in out.splitlines() if not line.startswith("total ")]


@pytest.mark.parametrize("tier", TIERS)
def test_writes_reach_the_image_and_debugfs_reads_them_back(IMG, tier):
    got = writable(IMG, "sh", "-c", SCRIPT, tier=tier)
    assert got.returncode == 0, got.stderr
    assert got.stderr == ""
    assert_clean(IMG)
    assert debugfs(IMG, "cat /etc/new") == "created\n"
    assert debugfs(IMG, "cat /etc/motd") == "short\n"
    assert debugfs(IMG, "cat /etc/log") == "line 1\nline 2\n"
    assert debugfs(IMG, "cat /etc/hostname.old") == "writable\n"
    assert debugfs(IMG, "cat /opt/app/tree/a/b/leaf") == "leaf\n"
    for gone in ("/etc/keep", "/etc/hostname", "/srv/tree", "/srv/gone", "/opt/empty"):
        assert "File not found" in sh("debugfs", "-R", f"stat {gone}", IMG).stderr, gone
    new = inode_of(IMG, "/etc/new")
    assert (new["type"], new["mode"], new["size"], new["links"]) == ("regular", 0o600, 8, 2)
    assert (new["uid"], new["gid"]) == (RUN_UID, RUN_GID)   # made by the run user, no --root-id
    assert inode_of(IMG, "/opt/app/hardlink")["size"] == 8
    assert inode_of(IMG, "/etc/big")["size"] == 100
    assert inode_of(IMG, "/opt/app/bin")["mode"] == 0o751
    link = inode_of(IMG, "/opt/app/link")
    assert link["type"] == "symlink" and link["fast_link"].group(1) == "../etc/new"
    slow = inode_of(IMG, "/opt/app/slowlink")
    assert slow["type"] == "symlink" and slow["size"] == 200 and not slow["fast_link"]
    out = IMG.parent / "random.out"
    debugfs(IMG, f"dump /opt/app/random {out}")
    copy = IMG.parent / "random.copy.out"
    debugfs(IMG, f"dump /opt/app/random.copy {copy}")
    assert out.stat().st_size == 300 * 4096 and out.read_bytes() == copy.read_bytes()
    sparse = inode_of(IMG, "/opt/app/sparse")
    assert sparse["size"] == (20 << 20) + 4
    assert "Blockcount: 8\n" in debugfs(IMG, "stat /opt/app/sparse")  # the hole stayed a hole
    # Owners and modes the image had: untouched, appended to, or renamed.
    theirs = inode_of(IMG, "/srv/theirs")
    assert (theirs["uid"], theirs["gid"], theirs["mode"]) == (*OWNER, 0o644)
    assert debugfs(IMG, "cat /srv/theirs") == "owned by 1234:5678\nline 2\n"
    suid = inode_of(IMG, "/usr/bin/suid-echo")
    assert (suid["uid"], suid["mode"]) == (0, 0o4755)
    log = inode_of(IMG, "/etc/log")
    assert (log["uid"], log["gid"], log["mode"]) == (0, 0, 0o644)
    assert inode_of(IMG, "/srv/null")["type"] == "character"
    # The next run sees what this one saw at its end.
    again = writable(IMG, "ls", "-lnR", "--time-style=+%s", "/etc", "/opt", "/srv", tier=tier)
    assert again.returncode == 0, again.stderr
    assert listing(again.stdout) == listing(got.stdout[got.stdout.index("/etc:"):])


def test_root_id_files_are_roots_and_chown_reaches_the_image(IMG):
    got = writable(IMG, "sh", "-c", "echo mine > /etc/mine; echo given > /etc/given; "
                   "chown 1234:5678 /etc/given && mknod /etc/tty c 5 0 "
                   "&& chmod 4711 /etc/mine", extra=["--root-id"])
    assert got.returncode == 0, got.stderr
    assert_clean(IMG)
    mine, given, tty = inode_of(IMG, "/etc/mine"), inode_of(IMG, "/etc/given"), inode_of(IMG, "/etc/tty")
    assert (mine["uid"], mine["gid"], mine["mode"]) == (0, 0, 0o4711)
    assert (given["uid"], given["gid"]) == OWNER
    assert tty["type"] == "character" and "Device major/minor number: 05:00" in debugfs(IMG, "stat /etc/tty")


@pytest.mark.parametrize("tier", TIERS)
def test_a_run_that_changes_nothing_leaves_the_image_byte_identical(IMG, tier):
    before = sha(IMG)
    got = writable(IMG, "sh", "-c", "cat /etc/hostname; ls -l /srv > /dev/null", tier=tier)
    assert (got.returncode, got.stdout, got.stderr) == (0, "writable\n", "")
    assert sha(IMG) == before
    assert os.listdir(IMG.parent) == ["root.ext4"]   # no lock file, no commit copy left


@pytest.mark.parametrize("tier", TIERS)
def test_threads_writing_different_files_all_reach_the_image(IMG, tier):
    got = writable(IMG, "sh", "-c", "mkdir /out && threads /out 8 25", tier=tier)
    assert (got.returncode, got.stdout) == (0, "8 threads wrote 25 files each\n"), got.stderr
    assert_clean(IMG)
    names = set(debugfs(IMG, "ls -p /out").split("\n"))
    for t in range(8):
        for f in range(25):
            name = f"t{t}-{f}" + (".done" if f % 2 == 0 else "")
            assert any(f"/{name}/" in n for n in names), name
            want = f"thread {t} file {f}\n" * (f + 1) + ("appended\n" if f % 2 == 0 else "")
            assert debugfs(IMG, f"cat /out/{name}") == want


MAKEFILE = """\
N := 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15
.SECONDARY:
all: /build/all.txt
/build/all.txt: $(N:%=/build/part%.txt)
\tcat $^ > $@
/build/part%.txt: /build/part%.in
\tsleep 0.05; cat $< $< > $@
/build/part%.in:
\tmkdir -p /build; echo "part $*" > $@
"""


@pytest.mark.parametrize("tier", TIERS)
def test_make_j2_builds_inside_the_image(IMG, WTREE, tier):
    """Two make jobs at once (make forks a shell per rule): all 33 files land in the image."""
    if not (WTREE / "usr/bin/make").exists():
        pytest.skip("no make on the host to put in the image")
    got = writable(IMG, "sh", "-c", f"mkdir /src && cat > /src/Makefile <<'EOF'\n{MAKEFILE}EOF\n"
                   "make -s -j2 -C /src", tier=tier)
    assert got.returncode == 0, got.stderr
    assert_clean(IMG)
    want = "".join(f"part {i}\npart {i}\n" for i in range(16))
    assert debugfs(IMG, "cat /build/all.txt") == want
    for i in range(16):
        assert debugfs(IMG, f"cat /build/part{i}.in") == f"part {i}\n"
    assert debugfs(IMG, "cat /src/Makefile") == MAKEFILE


# ---- one writer ------------------------------------------------------------------------------

def popen_writable(img: Path, script: str, tmpdir: Path | None = None, tier: str = "seccomp"):
    env = {"PATH": "/usr/bin:/bin", "KBOX_PROGRESS_AFTER": "1e9", "LANG": "C",
           "PYTHONPATH": f"{REPO}:{os.environ['KBOX_TEST_PYLIB']}", "TMPDIR": str(tmpdir or "/tmp"),
           "KBOX_COMMIT_REPORT": "1"}
    return subprocess.Popen([user_python(), "-m", "kbox", "run", f"--syscall-mode={tier}", "--root", str(img),
                             "--root-writable", "--", "sh", "-c", script],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd="/", start_new_session=True, user=RUN_UID, group=RUN_GID,
                            extra_groups=[])


def kill_group(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait(timeout=20)
    deadline = time.monotonic() + 5
    while pgroup_members(p.pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_second_writer_is_refused_with_one_line_naming_the_first(IMG):
    first = popen_writable(IMG, "echo started; echo one > /etc/one; read x")
    try:
        assert first.stdout.readline() == "started\n"
        second = writable(IMG, "sh", "-c", "echo two > /etc/two")
        assert second.returncode == 2
        assert second.stderr == (f"kbox run: --root-writable: {IMG}: another kbox (pid {first.pid}) is writing "
                                 "it; one writer at a time\n")
        first.stdin.write("\n")
        first.stdin.close()
        assert first.wait(timeout=60) == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            kill_group(first)
    assert_clean(IMG)
    assert debugfs(IMG, "cat /etc/one") == "one\n"
    assert "File not found" in sh("debugfs", "-R", "stat /etc/two", IMG).stderr
    # The lock went with the first run: a third one writes.
    third = writable(IMG, "sh", "-c", "echo three > /etc/three")
    assert third.returncode == 0, third.stderr
    assert debugfs(IMG, "cat /etc/three") == "three\n"


# ---- crashes ---------------------------------------------------------------------------------

def test_kill_9_while_the_program_runs_leaves_the_image_as_it_was(IMG, WORK):
    before = sha(IMG)
    tmp = WORK / "w-kill-run-tmp"
    tmp.mkdir(exist_ok=True)
    os.chown(tmp, RUN_UID, RUN_GID)
    p = popen_writable(IMG, "echo x > /etc/x; echo started; read x", tmpdir=tmp)
    try:
        assert p.stdout.readline() == "started\n"
    finally:
        kill_group(p)
    assert sha(IMG) == before
    assert_clean(IMG)
    again = writable(IMG, "sh", "-c", "echo after > /etc/after")   # the lock died with it
    assert again.returncode == 0, again.stderr
    assert_clean(IMG)
    shutil.rmtree(tmp, ignore_errors=True)


BIG = "dd if=/dev/urandom of=/big bs=1M count=150 2>/dev/null; rm -r /srv/tree; echo wrote"


@pytest.mark.parametrize("delay", [0.0, 0.2, 0.5, 1.0, 2.0])
def test_kill_9_mid_commit_leaves_an_image_e2fsck_accepts(IMG, delay):
    """The commit of 150 MB takes a second or more here; kbox is killed (its whole process
    group, SIGKILL) `delay` s after the commit's copy of the image appeared.  The image is
    then the old one or the new one, clean either way."""
    before = sha(IMG)
    commit = Path(str(IMG) + ".kbox-commit")
    p = popen_writable(IMG, BIG)
    try:
        deadline = time.monotonic() + 120
        while not commit.exists() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(delay)
        killed_at = p.poll()
    finally:
        kill_group(p)
    assert_clean(IMG)
    after = sha(IMG)
    if after != before:   # the commit got to its rename: all of it is there
        assert inode_of(IMG, "/big")["size"] == 150 << 20
        assert "File not found" in sh("debugfs", "-R", "stat /srv/tree", IMG).stderr
    else:
        assert killed_at is None or p.returncode != 0
    # The next writer clears what the killed commit left, and writes.
    again = writable(IMG, "sh", "-c", "echo after > /etc/after")
    assert again.returncode == 0, again.stderr
    assert not commit.exists()
    assert_clean(IMG)
    assert debugfs(IMG, "cat /etc/after") == "after\n"


def test_commit_time_is_reported(IMG):
    """The figure docs/tiers.md quotes: KBOX_COMMIT_REPORT=1 prints what the commit did."""
    got = kbox("run", "--root", IMG, "--root-writable", "--", "sh", "-c",
               "dd if=/dev/urandom of=/big bs=1M count=100 2>/dev/null", env={"KBOX_COMMIT_REPORT": "1"})
    assert got.returncode == 0, got.stderr
    m = re.fullmatch(r"kbox: committed \S+: 1 added, 0 removed, \d+ updated, 104\.9 MB written in ([\d.]+) s\n",
                     got.stderr)
    assert m, got.stderr
    print(f"commit of 100 MB: {m.group(1)} s")
    assert_clean(IMG)


def test_a_commit_that_does_not_fit_leaves_the_image_and_keeps_the_tree(IMG):
    before = sha(IMG)
    got = writable(IMG, "sh", "-c", "dd if=/dev/urandom of=/huge bs=1M count=450 2>/dev/null; echo done")
    assert got.stdout == "done\n"
    assert got.returncode == 1
    assert got.stderr.count("\n") == 1 and "the changes were not written" in got.stderr, got.stderr
    assert "the image is unchanged" in got.stderr and "Traceback" not in got.stderr
    kept = re.search(r"kept in (\S+)", got.stderr).group(1)
    assert os.path.getsize(os.path.join(kept, "huge")) == 450 << 20
    shutil.rmtree(os.path.dirname(kept), ignore_errors=True)
    assert sha(IMG) == before
    assert not Path(str(IMG) + ".kbox-commit").exists()


# ---- refusals ------------------------------------------------------------------------------------

def refused(got, *words):
    assert got.returncode == 2, got.stderr
    assert got.stderr.count("\n") == 1 and "Traceback" not in got.stderr, got.stderr
    for w in words:
        assert w in got.stderr, got.stderr


def test_bad_images_are_refused_with_one_line_and_nothing_left_beside_them(IMG, WORK):
    d = IMG.parent
    refused(writable(d / "missing.ext4", "true"), "missing.ext4: does not exist")
    junk = d / "junk.ext4"
    junk.write_bytes(os.urandom(1 << 20))
    os.chown(junk, RUN_UID, RUN_GID)
    refused(writable(junk, "true"), "not a directory or an ext2/3/4 image")
    empty = d / "empty.ext4"
    empty.write_bytes(b"")
    os.chown(empty, RUN_UID, RUN_GID)
    refused(writable(empty, "true"), "ext2/3/4 image")
    before = sha(IMG)
    IMG.chmod(0o444)
    refused(writable(IMG, "true"), "cannot be opened for writing (Permission denied)")
    IMG.chmod(0o644)
    assert sha(IMG) == before
    assert sorted(os.listdir(d)) == ["empty.ext4", "junk.ext4", "root.ext4"]


def test_refusals_are_one_line(IMG, WTREE, WORK):
    refused(kbox("run", "--root", WTREE, "--root-writable", "--", "true"), "is a directory")
    refused(writable(IMG, "true", extra=["--overlay", str(WORK / "nope")]), "--overlay")
    refused(kbox("run", "--root-writable", "--", "true"), "applies with --root only")
    before = sha(IMG)
    IMG.chmod(0o444)
    refused(writable(IMG, "true"), "cannot be opened for writing (Permission denied)")
    IMG.chmod(0o644)
    IMG.parent.chmod(0o555)
    refused(writable(IMG, "true"), "is not writable")
    IMG.parent.chmod(0o755)
    link = IMG.parent / "second-name.ext4"
    os.link(IMG, link)
    refused(writable(IMG, "true"), "has 2 hard links")
    link.unlink()
    assert sha(IMG) == before
    assert os.listdir(IMG.parent) == ["root.ext4"]


@pytest.mark.parametrize("feature, word", [("inline_data", "inline_data"), ("casefold", "casefold")])
def test_an_image_with_a_feature_kbox_does_not_write_is_refused(WORK, feature, word):
    d = WORK / f"w-feature-{feature}"
    d.mkdir(exist_ok=True)
    img = d / "f.ext4"
    img.unlink(missing_ok=True)
    got = sh("mke2fs", "-q", "-F", "-t", "ext4", "-O", feature, img, "8M")
    if got.returncode != 0:
        pytest.skip(f"mke2fs cannot make {feature}: {got.stderr.strip()}")
    for p in (d, img):
        os.chown(p, RUN_UID, RUN_GID)
    before = sha(img)
    refused(writable(img, "true"), f"kbox does not write images with {word}")
    assert sha(img) == before
    assert os.listdir(d) == ["f.ext4"]


def test_an_image_needing_e2fsck_is_refused(IMG):
    state = 1024 + 0x3A   # s_state in the superblock
    with open(IMG, "r+b") as f:
        f.seek(state)
        f.write((0).to_bytes(2, "little"))   # "not clean", as a crash of the kernel's driver leaves it
    refused(writable(IMG, "true"), "not clean", "e2fsck")
    assert os.listdir(IMG.parent) == ["root.ext4"]
