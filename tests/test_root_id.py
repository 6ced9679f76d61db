"""kbox run --root R --root-id: the program runs as fakeroot's root (csrc/core/ids.c).

Inside a copy of the Debian test tree (kbox/root_debian.py), with Debian's tar added, under
each tier: `id` says 0, `tar x` of an archive with root's and another user's files, a
set-user-ID file, a device node and a FIFO shows the archive's owners and modes, chown and
mknod of a device are seen by `stat` and `ls -l`, and a second run with the same record sees
it all again.  The expected views are what fakeroot gives (and, where fakeroot is installed,
what it gives for the same archive on the host, compared line by line).

When the tests run as root, kbox runs as an unprivileged user (RUN_UID), so a real chown or
mknod of a device would fail: only the record can make the program see them.
"""
from __future__ import annotations

import io
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

from kbox import root_debian, runner
from kbox.rootview import RootView

sys.path.insert(0, os.path.dirname(__file__))
from debian_programs import ENV

REPO = Path(__file__).resolve().parent.parent
TIERS = ["seccomp", "trap", "rewrite"]
ALL_TIERS = TIERS + ["auto"]  # auto picks rewrite for the tree's dash
# The user kbox runs as when the tests run as root (a real chown is then refused).
RUN_UID = RUN_GID = 4321
RECORD_LINE = re.compile(r"dev=[0-9a-f]+,ino=\d+,mode=[0-7]+,uid=\d+,gid=\d+,nlink=\d+,rdev=\d+\n")
MTIME = 1700000000


def run_ids() -> tuple[int, int]:
    return (RUN_UID, RUN_GID) if os.geteuid() == 0 else (os.getuid(), os.getgid())


def as_run_user(path: Path) -> None:
    if os.geteuid() == 0:
        os.chown(path, RUN_UID, RUN_GID)


@pytest.fixture(scope="session")
def TAR_DEB(DEBIAN_TREE) -> Path:
    """Debian's tar package for the tree's architecture (from the .deb cache the trees use)."""
    from kbox.vm import cache, debian
    from kbox.vm.arch import ARCHES

    darch = ARCHES[DEBIAN_TREE.arch].debian
    return debian.download([debian.package_version("tar", darch)], cache.cache_root() / "debs" / darch,
                           progress=False)[0]


@pytest.fixture(scope="session")
def WORK(DEBIAN_TREE, TAR_DEB):
    """A directory every user may enter (pytest's tmp_path is root's alone), holding a writable
    copy of the tree with /usr/bin/tar added, and the records."""
    base = Path(tempfile.mkdtemp(prefix="kbox-rootid-"))
    base.chmod(0o755)
    root = base / "root"
    root_debian.copy_tree(DEBIAN_TREE.path, root)
    unpacked = base / "tar-deb"
    from kbox.vm import debian
    debian.extract(TAR_DEB, unpacked)
    tar = next(p for p in (unpacked / "bin/tar", unpacked / "usr/bin/tar") if p.exists())
    shutil.copy2(tar, root / "usr/bin/tar")
    records = base / "records"
    records.mkdir()
    as_run_user(records)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def CASE(WORK, request) -> tuple[str, Path]:
    """This test's directory: its guest path (in the root's /tmp) and its record file."""
    name = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name)
    d = WORK / "root" / "tmp" / name
    d.mkdir()
    as_run_user(d)
    return f"/tmp/{name}", WORK / "records" / f"{name}.ids"


def kbox_sh(work: Path, script: str, tier: str, record: Path | None, *, cwd: str = "/"):
    """`sh -c script` inside the root under `tier`, as the run user, with --root-id=record
    (none: no --root-id).  The launcher's command line is the one `kbox run` builds."""
    view = RootView(str(work / "root"), cwd)
    path, _ = view.find_program("/bin/sh")
    argv = runner.launch_argv(path, ["-c", script], mode=tier,
                              extra=view.launcher_options(root_id=str(record) if record else None))
    uid, gid = run_ids()
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=ENV, cwd="/",
                          check=False, user=uid, group=gid, extra_groups=[])


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr}"
    assert proc.stderr == ""
    return proc.stdout


def ls_fields(out: str) -> list[list[str]]:
    """`ls -ln` lines as columns: mode, links, uid, gid, size (or "major, minor"), name."""
    rows = []
    for line in out.splitlines():
        if line.startswith("total"):
            continue
        f = line.split()
        if f[0][0] in "cb":  # "1, 3" in place of the size
            f = f[:4] + [f[4] + f[5]] + f[6:]
        rows.append(f[:5] + [" ".join(f[8:])])
    return rows


def make_archive(symlink: bool = True) -> bytes:
    """An archive as root would make of a tree: root's files, another user's, a set-user-ID
    program, a device node, a FIFO and a symlink, with fixed times."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        def add(name, type_, mode, uid, gid, data=b"", **kw):
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode, ti.uid, ti.gid, ti.mtime = type_, mode, uid, gid, MTIME
            ti.uname = ti.gname = ""
            for k, v in kw.items():
                setattr(ti, k, v)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data) if data else None)
        add("d", tarfile.DIRTYPE, 0o755, 0, 0)
        add("d/rootfile", tarfile.REGTYPE, 0o644, 0, 0, b"root's\n")
        add("d/userfile", tarfile.REGTYPE, 0o640, 1234, 5678, b"theirs\n")
        add("d/su", tarfile.REGTYPE, 0o4755, 0, 0, b"#!/bin/sh\n")
        add("d/sgdir", tarfile.DIRTYPE, 0o2775, 1234, 5678)
        add("d/null", tarfile.CHRTYPE, 0o666, 0, 0, devmajor=1, devminor=3)
        add("d/disk", tarfile.BLKTYPE, 0o660, 0, 6, devmajor=8, devminor=1)
        add("d/fifo", tarfile.FIFOTYPE, 0o600, 1234, 5678)
        if symlink:
            add("d/link", tarfile.SYMTYPE, 0o777, 1234, 5678, linkname="rootfile")
    return buf.getvalue()


# What root (and fakeroot) shows after `tar xf` of make_archive(): mode, links, uid, gid,
# size or device, name.
EXPECTED_LS = [
    ["brw-rw----", "1", "0", "6", "8,1", "disk"],
    ["prw-------", "1", "1234", "5678", "0", "fifo"],
    ["lrwxrwxrwx", "1", "1234", "5678", "8", "link -> rootfile"],
    ["crw-rw-rw-", "1", "0", "0", "1,3", "null"],
    ["-rw-r--r--", "1", "0", "0", "7", "rootfile"],
    ["drwxrwsr-x", "2", "1234", "5678", "4096", "sgdir"],
    ["-rwsr-xr-x", "1", "0", "0", "10", "su"],
    ["-rw-r-----", "1", "1234", "5678", "7", "userfile"],
]
# The seccomp tier cannot hand the program an O_PATH descriptor of a symlink (docs/tiers.md),
# which glibc's fchmodat(AT_SYMLINK_NOFOLLOW) opens, so tar fails on the symlink there:
# test_tar_x_of_a_symlink_under_seccomp keeps that known; the other tests leave it out.
SYMLINK_OK = {"seccomp": False, "trap": True, "rewrite": True}


def expected_ls(tier: str) -> list[list[str]]:
    return [r for r in EXPECTED_LS if SYMLINK_OK[tier] or not r[0].startswith("l")]


@pytest.mark.parametrize("tier", ALL_TIERS)
def test_id_says_root_and_set_ids_stick_per_process(WORK, CASE, tier):
    guest, record = CASE
    assert ok(kbox_sh(WORK, "id -u; id -g; id -un; id -G", tier, record)) == "0\n0\nroot\n0\n"
    # A process's set*id calls succeed, its children inherit the result, its parent keeps its own.
    py = ("import os; os.setgroups([3, 4]); os.setgid(5); os.setuid(7); "
          "print(os.getresuid(), os.getresgid(), os.getgroups(), flush=True); os.system(\"id -u; id -G\")")
    out = ok(kbox_sh(WORK, f"python3 -c '{py}'; id -u", tier, record))
    assert out == "(7, 7, 7) (5, 5, 5) [3, 4]\n7\n5 3 4\n0\n"


def test_without_root_id_the_program_sees_the_real_ids(WORK, CASE):
    guest, _ = CASE
    uid, gid = run_ids()
    assert ok(kbox_sh(WORK, "id -u; id -g", "trap", None)) == f"{uid}\n{gid}\n"


@pytest.mark.parametrize("tier", TIERS)
def test_tar_x_keeps_the_archives_owners_and_modes_in_a_second_run(WORK, CASE, tier):
    guest, record = CASE
    host = WORK / "root" / guest.lstrip("/")
    (host / "a.tar").write_bytes(make_archive(SYMLINK_OK[tier]))
    ok(kbox_sh(WORK, f"cd {guest} && tar xf a.tar", tier, record))
    first = ls_fields(ok(kbox_sh(WORK, f"cd {guest} && ls -ln d", tier, record)))
    assert first == expected_ls(tier)
    # Nothing was given away or made a device on the host: the record says it all.
    uid, _ = run_ids()
    assert os.lstat(host / "d/userfile").st_uid == uid
    assert stat.S_ISREG(os.lstat(host / "d/null").st_mode)
    assert not os.lstat(host / "d/su").st_mode & stat.S_ISUID
    # The record holds what differs from the unrecorded view (root's own files need none).
    lines = record.read_text().splitlines(keepends=True)
    assert all(RECORD_LINE.fullmatch(l) for l in lines), lines
    # userfile, su, sgdir, null, disk, fifo, link; not d or rootfile (root's, as they are)
    assert len(lines) == len(expected_ls(tier)) - 1
    # A second run with the same record sees the same; with a fresh one, the real files.
    assert ls_fields(ok(kbox_sh(WORK, f"cd {guest} && ls -ln d", tier, record))) == expected_ls(tier)
    fresh = ls_fields(ok(kbox_sh(WORK, f"cd {guest} && ls -ln d", tier, record.with_suffix(".fresh"))))
    assert [r[2:4] for r in fresh] == [["0", "0"]] * len(expected_ls(tier))
    assert fresh[0][0].startswith("-")  # the device is the empty file kbox made


@pytest.mark.xfail(strict=True, reason="seccomp tier: no O_PATH descriptor of a symlink (ADDFD takes "
                   "real open files), so glibc's fchmodat(AT_SYMLINK_NOFOLLOW) fails with ELOOP")
def test_tar_x_of_a_symlink_under_seccomp(WORK, CASE):
    guest, record = CASE
    (WORK / "root" / guest.lstrip("/") / "a.tar").write_bytes(make_archive())
    assert ls_fields(ok(kbox_sh(WORK, f"cd {guest} && tar xf a.tar && ls -ln d", "seccomp", record))) == EXPECTED_LS


def test_tar_x_shows_what_fakeroot_shows(WORK, CASE):
    """The same archive, extracted by the host's tar under the host's fakeroot, as the same
    user: `ls -ln` prints the same lines as kbox's run (both bookworm's coreutils and tar)."""
    if not shutil.which("fakeroot") or not shutil.which("tar"):
        pytest.skip("fakeroot(1) and tar(1) are not installed on the host")
    guest, record = CASE
    host = WORK / "root" / guest.lstrip("/")
    (host / "a.tar").write_bytes(make_archive())
    native = WORK / "native" / host.name
    native.mkdir(parents=True)
    as_run_user(native.parent)
    as_run_user(native)
    uid, gid = run_ids()
    fr = subprocess.run(["fakeroot", "-s", str(native / "save"), "--", "sh", "-c",
                         f"cd {native} && tar xf {host / 'a.tar'} && ls -ln d"],
                        capture_output=True, text=True, timeout=120, env=ENV, check=False,
                        user=uid, group=gid, extra_groups=[])
    assert fr.returncode == 0, fr.stderr
    got = ok(kbox_sh(WORK, f"cd {guest} && tar xf a.tar && ls -ln d", "rewrite", record))
    assert ls_fields(got) == ls_fields(fr.stdout)
    assert ls_fields(got) == EXPECTED_LS


@pytest.mark.parametrize("tier", ALL_TIERS)
def test_chown_is_recorded_not_made_and_seen_by_stat_later(WORK, CASE, tier):
    guest, record = CASE
    out = ok(kbox_sh(WORK, f"cd {guest} && echo x > f && stat -c %u:%g f && chown 42:43 f && stat -c %u:%g f",
                     tier, record))
    assert out == "0:0\n42:43\n"
    uid, _ = run_ids()
    assert os.stat(WORK / "root" / guest.lstrip("/") / "f").st_uid == uid
    # chown -1 keeps a field; the program's own later calls and a second run agree.
    out = ok(kbox_sh(WORK, f"cd {guest} && stat -c %u:%g:%a f && chown :44 f && chmod 0400 f && "
                     "stat -c %u:%g:%a f && python3 -c 'import os; s = os.stat(\"f\"); print(s.st_uid, s.st_gid)'",
                     tier, record))
    assert out == "42:43:644\n42:44:400\n42 44\n"
    # The real file kept the owner's read and write: the real user can still use it.
    assert stat.S_IMODE(os.stat(WORK / "root" / guest.lstrip("/") / "f").st_mode) == 0o600


@pytest.mark.parametrize("tier", ALL_TIERS)
def test_mknod_of_a_char_device_shows_a_device_in_ls_l(WORK, CASE, tier):
    guest, record = CASE
    out = ok(kbox_sh(WORK, f"cd {guest} && mknod -m 620 tty c 4 1 && ls -l tty && stat -c '%F %t:%T %a' tty",
                     tier, record))
    fields = out.splitlines()[0].split()
    assert fields[0] == "crw--w----" and fields[4:6] == ["4,", "1"], out
    assert out.splitlines()[1] == "character special file 4:1 620"
    assert ok(kbox_sh(WORK, f"cd {guest} && stat -c '%F %t:%T' tty", tier, record)) == "character special file 4:1\n"


@pytest.mark.parametrize("tier", TIERS)
def test_the_last_unlink_drops_the_record_and_a_hard_link_keeps_it(WORK, CASE, tier):
    guest, record = CASE
    ok(kbox_sh(WORK, f"cd {guest} && touch a b && chown 7:7 a b && ln a a2 && rm a && rm b", tier, record))
    assert len(record.read_text().splitlines()) == 1  # a2's (a's inode); b's went with b
    assert ok(kbox_sh(WORK, f"cd {guest} && stat -c %u:%g a2 && mv a2 c && stat -c %u:%g c && "
                      "touch n && chown 9:9 n && mv n c && stat -c %u:%g c", tier, record)) == "7:7\n7:7\n9:9\n"
    assert len(record.read_text().splitlines()) == 1  # the inode renamed over went with it


def test_a_malformed_record_is_a_one_line_error(WORK, CASE):
    guest, record = CASE
    for text, where in (("garbage\n", "line 1"), ("dev=801,ino=2,mode=100644,uid=1,gid=1,nlink=1,rdev=0\nx", "line 2"),
                        ("dev=801,ino=2,mode=100644,uid=1,gid=1,nlink=1,rdev=0\n"
                         "dev=801,ino=3,mode=9,uid=1,gid=1,nlink=1,rdev=0\n", "line 2")):
        record.write_text(text)
        as_run_user(record)
        for tier in TIERS:
            p = kbox_sh(WORK, "echo ran", tier, record)
            assert (p.returncode, p.stdout) == (2, ""), (tier, p)
            assert p.stderr.count("\n") == 1 and where in p.stderr and str(record) in p.stderr, p.stderr
    record.write_text("")  # an empty record is a record with nothing in it
    assert ok(kbox_sh(WORK, "echo ran", "trap", record)) == "ran\n"


def test_root_id_needs_root_and_a_writable_place(WORK, tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "kbox", "run", *args], capture_output=True, text=True,
                              timeout=60, env=ENV, cwd=REPO, check=False)
    p = cli("--root-id", "--", "/bin/true")
    assert p.returncode == 2 and "--root-id applies with --root only" in p.stderr
    p = cli("--root", str(WORK / "root"), "--root-id=/nonexistent/dir/ids", "--", "/bin/true")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "/nonexistent/dir does not exist" in p.stderr
    p = cli("--root", "/", "--root-id", "--", "/bin/true")
    assert p.returncode == 2 and "give --root-id=FILE" in p.stderr
    launcher = runner.launch_argv("/bin/true", [], mode="trap", extra=["--root-id=/tmp/x"])
    p = subprocess.run(launcher, capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 2 and "--root-id needs --root" in p.stderr
    assert "--root-id" in cli("--help").stdout


def test_the_default_record_is_beside_the_root(WORK, tmp_path):
    root = tmp_path / "r"
    root_debian.copy_tree(WORK / "root", root)
    # A program by name, found in the root's PATH only (the host has none of that name).
    (root / "usr/local/bin").mkdir(parents=True, exist_ok=True)
    (root / "usr/local/bin/only-in-root").write_text("#!/bin/sh\nexec \"$@\"\n")
    (root / "usr/local/bin/only-in-root").chmod(0o755)
    p = subprocess.run([sys.executable, "-m", "kbox", "run", "--syscall-mode=trap", "--root", str(root),
                        "--root-id", "--", "only-in-root", "sh", "-c",
                        "touch /f && chown 5:6 /f && stat -c %u:%g /f"],
                       capture_output=True, text=True, timeout=60, env=ENV, cwd=REPO, check=False)
    assert (p.returncode, p.stdout, p.stderr) == (0, "5:6\n", "")
    beside = tmp_path / "r.kbox-ids"
    assert RECORD_LINE.fullmatch(beside.read_text())
    assert not (tmp_path / "r.kbox-ids.tmp").exists()


CONCURRENT = r'''
import os, sys, threading
def work(base):
    for i in range(40):
        p = f"f{base}_{i}"
        open(p, "w").close()
        os.chown(p, base, base + 1)
kids = []
for k in range(3):
    pid = os.fork()
    if pid == 0:
        ts = [threading.Thread(target=work, args=(100 * (k + 1) + t,)) for t in range(3)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        os._exit(0)
    kids.append(pid)
for pid in kids:
    assert os.waitpid(pid, 0)[1] == 0
bad = [n for n in os.listdir(".") if os.stat(n).st_uid != int(n[1:].split("_")[0])]
print(len(os.listdir(".")), bad)
'''


@pytest.mark.parametrize("tier", TIERS)
def test_forks_and_threads_share_one_live_record(WORK, CASE, tier):
    """Three processes of three threads each chown their own files at once; the parent then
    sees every one of them, and so does the record written at the end."""
    guest, record = CASE
    (WORK / "root" / guest.lstrip("/") / "c.py").write_text(CONCURRENT)
    out = ok(kbox_sh(WORK, f"mkdir {guest}/files && cd {guest}/files && python3 ../c.py", tier, record))
    assert out == "360 []\n"
    assert len(record.read_text().splitlines()) == 360


def test_a_full_record_is_a_clear_error(WORK, CASE):
    guest, record = CASE
    script = ("import os\nok = 0\nfor i in range(49160):\n    open(f'{i}', 'w').close()\n"
              "    try:\n        os.chown(f'{i}', 1, 1)\n        ok += 1\n    except OSError as e:\n"
              "        err = e.errno\nprint(ok, err)\n")
    (WORK / "root" / guest.lstrip("/") / "fill.py").write_text(script)
    p = kbox_sh(WORK, f"mkdir {guest}/many && cd {guest}/many && python3 ../fill.py", "trap", record)
    assert (p.returncode, p.stdout) == (0, "49152 28\n")  # ENOSPC past the limit
    assert p.stderr.count("\n") == 1 and "ownership record is full" in p.stderr
    assert len(record.read_text().splitlines()) == 49152
    assert ok(kbox_sh(WORK, f"stat -c %u {guest}/many/49151", "trap", record)) == "1\n"


def test_the_record_is_fakeroots_save_file_both_ways(WORK, CASE):
    """A tree fakeroot extracted (saved with -s) is seen by kbox through that file, and a tree
    kbox extracted is seen by fakeroot -i through kbox's record."""
    if not shutil.which("fakeroot") or not shutil.which("tar"):
        pytest.skip("fakeroot(1) and tar(1) are not installed on the host")
    guest, record = CASE
    host = WORK / "root" / guest.lstrip("/")
    (host / "a.tar").write_bytes(make_archive())
    uid, gid = run_ids()
    def fakeroot(opt: str, save: Path, script: str) -> str:
        p = subprocess.run(["fakeroot", opt, str(save), "--", "sh", "-c", script], capture_output=True,
                           text=True, timeout=120, env=ENV, check=False, user=uid, group=gid, extra_groups=[])
        assert p.returncode == 0, p.stderr
        return p.stdout
    (host / "by-fakeroot").mkdir()
    as_run_user(host / "by-fakeroot")
    fr_save = record.with_suffix(".fakeroot")
    fakeroot("-s", fr_save, f"cd {host}/by-fakeroot && tar xf ../a.tar")
    seen = ok(kbox_sh(WORK, f"cd {guest}/by-fakeroot && ls -ln d", "trap", fr_save))
    assert ls_fields(seen) == EXPECTED_LS
    (host / "by-kbox").mkdir()
    as_run_user(host / "by-kbox")
    ok(kbox_sh(WORK, f"cd {guest}/by-kbox && tar xf ../a.tar", "trap", record))
    assert ls_fields(fakeroot("-i", record, f"cd {host}/by-kbox && ls -ln d")) == EXPECTED_LS
