"""`kbox run --root IMAGE --root-writable`: the run's changes written into the image.

The run is an image run as kbox/ext4image.py makes it (the tree materialized into a private
temporary overlay, the directory view serving it in every tier), with three things added:

- **One writer.**  Before anything is read, kbox takes an exclusive flock(2) on IMAGE.kbox-lock
  beside the image (and writes its pid there) and one on the image file itself, and holds
  them until the commit is over; the lock file is removed as the run ends (a kill -9 leaves
  it, unlocked: the next run takes it).  A second `--root-writable` run of the same image is
  refused with one line naming the holder's pid.  The lock file, not the image, is the one
  that counts: the commit replaces the image file (below), so a lock on the image's inode
  would not be seen by a run that opens the new one.
- **What changed** is worked out at the end by comparing the tree with what was made:
  materializing writes OVERLAY/kbox-inodes (which image inode each name was made from) and,
  before the program starts, kbox writes OVERLAY/kbox-manifest with each name's host inode,
  ctime, size and mtime.  A name whose host inode and type are the same as when it was made
  (its parent's too) is kept; others are removed or added; an inode whose ctime moved has
  its metadata (and, when its size or mtime moved, its contents) written again.  Owners and
  modes are what stat showed the program: the run's --root-id record where it has one, else
  the file's own (with --root-id, the invoking user's files are root's).
- **The commit** (commit(), in a child process as materializing is): the image is copied
  to IMAGE.kbox-commit beside it (only its allocated extents: SEEK_DATA/SEEK_HOLE and
  copy_file_range), the copy is opened with libext2fs read-write (EXT2_FLAG_RW,
  ext2fs_read_bitmaps), the changes are applied to it (ext2fs_unlink, ext2fs_mkdir,
  ext2fs_symlink, ext2fs_new_inode + ext2fs_link for files, ext2fs_file_write for contents,
  ext2fs_punch and ext2fs_inode_alloc_stats2 to free), ext2fs_close_free flushes it, and the
  copy is fsynced and renamed over the image.  rename(2) is atomic, so a kill at any moment
  leaves either the old image or the new one, each complete: never one half written.  A
  leftover IMAGE.kbox-commit (a commit killed midway) is removed by the next writer.

libext2fs' undo I/O manager (undo_io_manager, e2undo) was the other way: it writes in place
and keeps the old blocks in an undo file, so an image killed mid-commit needs e2undo before
e2fsck accepts it; the copy costs a read and a write of the image's used blocks per commit
instead, and needs nothing run afterwards.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import posixpath
import signal
import stat
import sys
import time
from dataclasses import dataclass

from kbox import ext4image
from kbox.errors import UserError
from kbox.ext4image import EXT2_FLAG_64BITS, EXT2_ROOT_INO, ExtInode, Ext2Error, Ext2FS, Overlay

EXIT_USAGE = 2
EXIT_COMMIT = 1  # the commit failed and the program's own status was 0
MANIFEST = "kbox-manifest"
LOCK_SUFFIX = ".kbox-lock"
COMMIT_SUFFIX = ".kbox-commit"

# ext2fs.h / ext2_fs.h constants used below.
EXT2_FLAG_RW = 0x01
EXT2_FILE_WRITE = 0x01
EXT2_SEEK_SET = 0
EXT4_EXTENTS_FL = 0x80000
INCOMPAT_EXTENTS = 0x40
FT = {stat.S_IFREG: 1, stat.S_IFDIR: 2, stat.S_IFCHR: 3, stat.S_IFBLK: 4, stat.S_IFIFO: 5,
      stat.S_IFSOCK: 6, stat.S_IFLNK: 7}
EXT2_ET_BASE = 2133571328   # the ext2 com_err table's base (EXT2_ET_MAGIC_EXT2FS_FILSYS + 1 ...)

# Features kbox does not write (ext2_fs.h): libext2fs refuses what it does not know at all
# when it opens the image read-write; these it knows, but kbox's writes would be wrong for
# them (names hashed differently, data in the inode, an external journal, another host's
# claim on the image), or the image needs e2fsck first.
UNWRITABLE = {
    ("incompat", 0x4): "needs_recovery (the journal holds unreplayed changes: run e2fsck first)",
    ("incompat", 0x8): "journal_dev", ("incompat", 0x100): "mmp", ("incompat", 0x400): "ea_inode",
    ("incompat", 0x1000): "dirdata", ("incompat", 0x8000): "inline_data",
    ("incompat", 0x10000): "encrypt", ("incompat", 0x20000): "casefold",
    ("ro_compat", 0x8000): "verity",
    ("ro_compat", 0x10000): "orphan_present (orphan inodes to clean up: run e2fsck first)",
}


# ---- one writer -------------------------------------------------------------------------------

def _same_file(fd: int, path: str) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


@dataclass
class WriterLock:
    image: str          # the image's real path (a symlink to it stays one)
    lock_fd: int
    image_fd: int

    @property
    def commit_path(self) -> str:
        return self.image + COMMIT_SUFFIX

    def release(self) -> None:
        """The lock file removed, then both locks dropped.  Unlinked while still held: a run
        that opened the old name meanwhile sees, once it has the flock, that the name is no
        longer its file, and starts again (acquire()), so no two runs ever hold the lock."""
        try:
            if _same_file(self.lock_fd, self.image + LOCK_SUFFIX):
                os.unlink(self.image + LOCK_SUFFIX)
        except OSError:
            pass
        for fd in (self.image_fd, self.lock_fd):
            try:
                os.close(fd)
            except OSError:
                pass


def check_writable(image: str) -> None:
    """One line and exit 2 unless `image` is an image kbox can write (called with the lock
    held, before anything is materialized)."""
    who = f"kbox run: --root-writable: {image}"
    st = os.stat(image)
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{who}: not a regular file (kbox commits by replacing the image file, which "
                        "a block device cannot be)", EXIT_USAGE)
    if st.st_nlink > 1:
        raise UserError(f"{who}: has {st.st_nlink} hard links (kbox commits by renaming a new image over "
                        "it, which the other names would not see)", EXIT_USAGE)
    sb = ext4image.read_super(image)
    assert sb is not None
    f = sb.fields
    words = {"incompat": f["feature_incompat"], "ro_compat": f["feature_ro_compat"]}
    bad = [name for (w, bit), name in UNWRITABLE.items() if words[w] & bit]
    if bad:
        raise UserError(f"{who}: kbox does not write images with {', '.join(bad)}", EXIT_USAGE)
    if not f["state"] & 1 or f["state"] & 2:
        raise UserError(f"{who}: the filesystem is not clean{' (errors recorded)' if f['state'] & 2 else ''}; "
                        "run e2fsck -f on it first", EXIT_USAGE)
    # What libext2fs itself refuses to open read-write (features newer than it): asked in a
    # child that never closes the filesystem, so nothing is written.
    def try_open() -> int:
        lib, com = ext4image._load_libs()
        fs = ctypes.c_void_p()
        manager = ctypes.c_void_p.in_dll(lib, "unix_io_manager")
        err = lib.ext2fs_open(os.fsencode(image), EXT2_FLAG_RW | EXT2_FLAG_64BITS, 0, 0, manager, ctypes.byref(fs))
        if err:
            m = com.error_message(err)
            sys.stderr.write(f"{who}: libext2fs will not open it for writing: "
                             f"{m.decode('utf-8', 'replace') if m else err}\n")
            return EXIT_USAGE
        return 0

    status = ext4image.run_in_child(try_open, lambda exc: (f"{who}: {exc}", EXIT_USAGE))
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGINT:
        raise KeyboardInterrupt
    if not os.WIFEXITED(status) or os.WEXITSTATUS(status):
        raise UserError("" if os.WIFEXITED(status) else f"{who}: libext2fs crashed opening it", EXIT_USAGE)


def acquire(image: str) -> WriterLock:
    """The writer's locks on `image` (one line and exit 2 when another run holds them, or the
    image or its directory cannot be written), and the image checked for writing."""
    real = os.path.realpath(image)
    who = f"kbox run: --root-writable: {image}"
    where = os.path.dirname(real)
    try:
        image_fd = os.open(real, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise UserError(f"{who}: cannot be opened for writing ({exc.strerror})", EXIT_USAGE) from exc
    if not os.access(where, os.W_OK | os.X_OK):
        os.close(image_fd)
        raise UserError(f"{who}: its directory {where} is not writable (kbox writes the new image beside "
                        "the old one and renames it over)", EXIT_USAGE)
    while True:
        try:
            lock_fd = os.open(real + LOCK_SUFFIX, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            os.close(image_fd)
            raise UserError(f"{who}: cannot make the lock file {real + LOCK_SUFFIX} ({exc.strerror})",
                            EXIT_USAGE) from exc
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(lock_fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(lock_fd)
            os.close(image_fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise UserError(f"{who}: cannot lock {real + LOCK_SUFFIX} ({exc.strerror})", EXIT_USAGE) from exc
            raise UserError(f"{who}: another kbox (pid {holder}) is writing it; one writer at a time",
                            EXIT_USAGE) from exc
        if _same_file(lock_fd, real + LOCK_SUFFIX):
            break
        os.close(lock_fd)   # the holder removed it as we opened it (WriterLock.release): again
    os.ftruncate(lock_fd, 0)
    os.pwrite(lock_fd, f"{os.getpid()}\n".encode(), 0)
    lock = WriterLock(real, lock_fd, image_fd)
    try:
        # Taken after the lock file's: anything else that honours flock on images waits too.
        fcntl.flock(image_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        lock.release()
        raise UserError(f"{who}: another process holds a lock on the image file", EXIT_USAGE) from exc
    try:
        if os.path.lexists(lock.commit_path):  # a commit killed midway: the image is the old one
            os.unlink(lock.commit_path)
        check_writable(real)
    except BaseException:
        lock.release()
        raise
    return lock


# ---- what the tree looked like before the program ran ------------------------------------------

def write_manifest(overlay: Overlay) -> None:
    """OVERLAY/kbox-manifest: each name's image inode and mode (from kbox-inodes) with its
    host inode, ctime, size and mtime as the program will first see them."""
    entries = {}
    with open(os.path.join(overlay.dir, ext4image.INODES)) as f:
        for line in f:
            item = json.loads(line)
            if isinstance(item, dict):
                if item["skipped"]:
                    raise UserError(f"kbox run: --root-writable: {item['skipped']} files of the image could "
                                    "not be read (the warnings above); run e2fsck on it first", EXIT_USAGE)
                continue
            ino, mode, guest = item
            st = os.lstat(overlay.root + guest if guest != "/" else overlay.root)
            entries[guest] = [ino, mode, st.st_ino, st.st_ctime_ns, st.st_size, st.st_mtime_ns]
    with open(os.path.join(overlay.dir, MANIFEST), "w") as f:
        json.dump(entries, f)


# ---- libext2fs, read-write ------------------------------------------------------------------------

def _bind_write(lib: ctypes.CDLL) -> None:
    L, c, p, u32 = ctypes, ctypes.c_long, ctypes.c_void_p, ctypes.c_uint32
    sigs = {
        "ext2fs_read_bitmaps": [p],
        "ext2fs_new_inode": [p, u32, L.c_int, p, L.POINTER(u32)],
        "ext2fs_write_new_inode": [p, u32, L.POINTER(ExtInode)],
        "ext2fs_write_inode": [p, u32, L.POINTER(ExtInode)],
        "ext2fs_link": [p, u32, L.c_char_p, u32, L.c_int],
        "ext2fs_unlink": [p, u32, L.c_char_p, u32, L.c_int],
        "ext2fs_mkdir": [p, u32, u32, L.c_char_p],
        "ext2fs_symlink": [p, u32, u32, L.c_char_p, L.c_char_p],
        "ext2fs_lookup": [p, u32, L.c_char_p, L.c_int, p, L.POINTER(u32)],
        "ext2fs_expand_dir": [p, u32],
        "ext2fs_punch": [p, u32, L.POINTER(ExtInode), p, L.c_uint64, L.c_uint64],
        "ext2fs_free_ext_attr": [p, u32, p],
        "ext2fs_extent_open2": [p, u32, L.POINTER(ExtInode), L.POINTER(p)],
        "ext2fs_file_write": [p, p, L.c_uint, L.POINTER(L.c_uint)],
        "ext2fs_file_llseek": [p, L.c_uint64, L.c_int, L.POINTER(L.c_uint64)],
        "ext2fs_file_set_size2": [p, L.c_uint64],
    }
    for name, args in sigs.items():
        fn = getattr(lib, name)
        fn.argtypes = args
        fn.restype = c
    lib.ext2fs_inode_alloc_stats2.argtypes = [p, u32, L.c_int, L.c_int]
    lib.ext2fs_inode_alloc_stats2.restype = None
    lib.ext2fs_extent_free.argtypes = [p]
    lib.ext2fs_extent_free.restype = None
    lib.ext2fs_inode_has_valid_blocks2.argtypes = [p, L.POINTER(ExtInode)]
    lib.ext2fs_inode_has_valid_blocks2.restype = L.c_int


class WritableFS(Ext2FS):
    """One image (the commit's copy), opened read-write."""

    def __init__(self, path: str) -> None:  # noqa: D107 - Ext2FS's, with EXT2_FLAG_RW
        self.lib, self.com = ext4image._load_libs()
        _bind_write(self.lib)
        self.fs = ctypes.c_void_p()
        manager = ctypes.c_void_p.in_dll(self.lib, "unix_io_manager")
        self.check(self.lib.ext2fs_open(os.fsencode(path), EXT2_FLAG_RW | EXT2_FLAG_64BITS, 0, 0, manager,
                                        ctypes.byref(self.fs)), "opening the image for writing")
        self.check(self.lib.ext2fs_read_bitmaps(self.fs), "reading the bitmaps")
        sb = ext4image.read_super(path)
        assert sb is not None
        self.extents = bool(sb.fields["feature_incompat"] & INCOMPAT_EXTENTS)
        self.no_space = self._code("No free space in the directory")

    def _code(self, message: str) -> int:
        """An ext2 error code by its message (kbox has no ext2_err.h to take it from)."""
        for i in range(256):
            m = self.com.error_message(EXT2_ET_BASE + i)
            if m and m.decode() == message:
                return EXT2_ET_BASE + i
        return -1

    def flush_and_close(self) -> None:
        err = self.lib.ext2fs_close_free(ctypes.byref(self.fs))
        self.fs = ctypes.c_void_p()
        self.check(err, "writing the superblock, group descriptors and bitmaps")

    def write_inode(self, ino: int, ind: ExtInode, where: str) -> None:
        # ext2fs_write_inode merges the 128 bytes into the on-disk (larger) inode and
        # recomputes its checksum.
        self.check(self.lib.ext2fs_write_inode(self.fs, ino, ctypes.byref(ind)), f"writing inode {ino} of {where}")

    def lookup(self, dir_ino: int, name: bytes, where: str) -> int:
        out = ctypes.c_uint32()
        self.check(self.lib.ext2fs_lookup(self.fs, dir_ino, name, len(name), None, ctypes.byref(out)),
                   f"looking up {where}")
        return out.value

    def _retry_full(self, call, dir_ino: int, where: str) -> None:  # type: ignore[no-untyped-def]
        """call() once more after growing the directory when it had no room for the name (a
        failed ext2fs_mkdir/symlink/link gives back what it allocated, e2fsprogs 1.44+)."""
        err = call()
        if err == self.no_space:
            self.check(self.lib.ext2fs_expand_dir(self.fs, dir_ino), f"growing the directory of {where}")
            err = call()
        self.check(err, f"adding {where}")

    def link(self, dir_ino: int, name: bytes, ino: int, fmt: int, where: str) -> None:
        self._retry_full(lambda: self.lib.ext2fs_link(self.fs, dir_ino, name, ino, FT[fmt]), dir_ino, where)

    def unlink(self, dir_ino: int, name: bytes, ino: int, where: str) -> None:
        self.check(self.lib.ext2fs_unlink(self.fs, dir_ino, name, ino, 0), f"removing {where}")

    def mkdir(self, dir_ino: int, name: bytes, where: str) -> int:
        self._retry_full(lambda: self.lib.ext2fs_mkdir(self.fs, dir_ino, 0, name), dir_ino, where)
        return self.lookup(dir_ino, name, where)

    def symlink(self, dir_ino: int, name: bytes, target: bytes, where: str) -> int:
        self._retry_full(lambda: self.lib.ext2fs_symlink(self.fs, dir_ino, 0, name, target), dir_ino, where)
        return self.lookup(dir_ino, name, where)

    def new_inode(self, dir_ino: int, name: bytes, mode: int, rdev: int, where: str) -> int:
        """A new inode of `mode` (not a directory or symlink), linked at dir_ino/name, empty."""
        out = ctypes.c_uint32()
        self.check(self.lib.ext2fs_new_inode(self.fs, dir_ino, mode, None, ctypes.byref(out)),
                   f"allocating an inode for {where}")
        ino = out.value
        self.link(dir_ino, name, ino, stat.S_IFMT(mode), where)
        self.lib.ext2fs_inode_alloc_stats2(self.fs, ino, 1, 0)
        ind = ExtInode()
        ind.i_mode = mode
        ind.i_links_count = 1
        fmt = stat.S_IFMT(mode)
        if fmt in (stat.S_IFCHR, stat.S_IFBLK):
            major, minor = os.major(rdev), os.minor(rdev)
            if major < 256 and minor < 256:   # the kernel's old_encode_dev, in i_block[0]
                ind.i_block[0] = major << 8 | minor
            else:                             # new_encode_dev, in i_block[1]
                ind.i_block[1] = (minor & 0xFF) | major << 8 | (minor & ~0xFF) << 12
        elif fmt == stat.S_IFREG and self.extents:
            # ext2fs_extent_open2 on an inode without EXT4_EXTENTS_FL writes an empty extent
            # header into i_block and sets the flag (as e2fsprogs' create_inode.c does).
            h = ctypes.c_void_p()
            self.check(self.lib.ext2fs_extent_open2(self.fs, ino, ctypes.byref(ind), ctypes.byref(h)),
                       f"making the extent tree of {where}")
            self.lib.ext2fs_extent_free(h)
        self.check(self.lib.ext2fs_write_new_inode(self.fs, ino, ctypes.byref(ind)), f"writing inode {ino} of {where}")
        return ino

    def write_contents(self, ino: int, host: str, where: str) -> None:
        """The file's contents replaced by the host file's: its data extents written, its
        holes (and 1 MiB runs of zeros) left holes."""
        f = ctypes.c_void_p()
        self.check(self.lib.ext2fs_file_open(self.fs, ino, EXT2_FILE_WRITE, ctypes.byref(f)), f"opening {where}")
        try:
            self.check(self.lib.ext2fs_file_set_size2(f, 0), f"truncating {where}")
            fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                size = os.fstat(fd).st_size
                zero = bytes(ext4image.CHUNK)
                pos, got, at = 0, ctypes.c_uint(), ctypes.c_uint64()
                while pos < size:
                    try:
                        start = os.lseek(fd, pos, os.SEEK_DATA)
                    except OSError as exc:
                        if exc.errno == errno.ENXIO:
                            break   # a hole to the end
                        raise
                    end = os.lseek(fd, start, os.SEEK_HOLE)
                    off = start
                    while off < end:
                        chunk = os.pread(fd, min(ext4image.CHUNK, end - off), off)
                        if not chunk:
                            break
                        if not (len(chunk) == ext4image.CHUNK and chunk == zero):
                            self.check(self.lib.ext2fs_file_llseek(f, off, EXT2_SEEK_SET, ctypes.byref(at)),
                                       f"seeking in {where}")
                            view = memoryview(chunk)
                            while view:
                                buf = ctypes.create_string_buffer(bytes(view), len(view))
                                self.check(self.lib.ext2fs_file_write(f, buf, len(view), ctypes.byref(got)),
                                           f"writing {where}")
                                if got.value == 0:
                                    raise Ext2Error("wrote nothing", f"writing {where}")
                                view = view[got.value:]
                        off += len(chunk)
                    pos = end
                self.check(self.lib.ext2fs_file_set_size2(f, size), f"setting the size of {where}")
            finally:
                os.close(fd)
        finally:
            self.check(self.lib.ext2fs_file_close(f), f"writing {where}")

    def free(self, ino: int, isdir: bool, where: str) -> None:
        """An inode no name links any more: its extended attributes, blocks and the inode."""
        self.check(self.lib.ext2fs_free_ext_attr(self.fs, ino, None), f"freeing the attributes of {where}")
        ind = self.inode(ino, where)
        if self.lib.ext2fs_inode_has_valid_blocks2(self.fs, ctypes.byref(ind)):
            self.check(self.lib.ext2fs_punch(self.fs, ino, ctypes.byref(ind), None, 0, 2**64 - 1),
                       f"freeing the blocks of {where}")
            ind = self.inode(ino, where)
        ind.i_links_count = 0
        ind.i_dtime = int(time.time())
        self.write_inode(ino, ind, where)
        self.lib.ext2fs_inode_alloc_stats2(self.fs, ino, -1, 1 if isdir else 0)


# ---- the commit --------------------------------------------------------------------------------

@dataclass
class Look:
    """A file as the program saw it: mode (with the type), owner, device; from the record or
    the file itself."""
    mode: int
    uid: int
    gid: int
    rdev: int


def load_record(path: str) -> dict[tuple[int, int], Look]:
    out: dict[tuple[int, int], Look] = {}
    try:
        with open(path) as f:
            for line in f:
                fields = dict(kv.split("=", 1) for kv in line.strip().split(","))
                out[(int(fields["dev"], 16), int(fields["ino"]))] = Look(
                    int(fields["mode"], 8), int(fields["uid"]), int(fields["gid"]), int(fields["rdev"]))
    except FileNotFoundError:
        pass
    return out


def look_of(st: os.stat_result, record: dict, fake_root: bool) -> Look:
    """What csrc/core/ids.c's stat showed: the record when it still describes the inode (the
    same type, or a device kept as a regular file), else the file's own, with the invoking
    user's ids as root's under --root-id."""
    r = record.get((st.st_dev, st.st_ino))
    if r is not None:
        rt, ft = stat.S_IFMT(r.mode), stat.S_IFMT(st.st_mode)
        if rt == ft or (ft == stat.S_IFREG and rt in (stat.S_IFCHR, stat.S_IFBLK)):
            return r
    uid, gid = st.st_uid, st.st_gid
    if fake_root:
        uid = 0 if uid == os.getuid() else uid
        gid = 0 if gid == os.getgid() else gid
    return Look(st.st_mode, uid, gid, 0)


def _walk(root: str) -> dict[str, os.stat_result]:
    """Every name under root, as guest paths ("/" for root), parents before children."""
    out = {"/": os.lstat(root)}
    stack = ["/"]
    while stack:
        d = stack.pop()
        host = root + d if d != "/" else root
        with os.scandir(host) as it:
            for e in sorted(it, key=lambda e: e.name):
                g = posixpath.join(d, e.name)
                st = os.lstat(e.path)
                out[g] = st
                if stat.S_ISDIR(st.st_mode):
                    stack.append(g)
    return out


@dataclass
class CommitStats:
    removed: int = 0
    added: int = 0
    rewritten: int = 0
    updated: int = 0
    bytes: int = 0


def apply_changes(fs: WritableFS, overlay: Overlay, fake_root: bool) -> CommitStats:
    """Makes the image `fs` hold the tree in overlay.root (see the module's docstring)."""
    with open(os.path.join(overlay.dir, MANIFEST)) as f:
        old: dict[str, list] = json.load(f)
    new = _walk(overlay.root)
    record = load_record(overlay.record)
    looks = {g: look_of(st, record, fake_root) for g, st in new.items()}
    host = lambda g: overlay.root + g if g != "/" else overlay.root  # noqa: E731
    stats = CommitStats()

    # Kept: the same host inode of the same type at the same path, under a kept parent.
    kept: set[str] = set()
    for g in new:   # parents first
        o = old.get(g)
        if o and new[g].st_ino == o[2] and stat.S_IFMT(looks[g].mode) == stat.S_IFMT(o[1]) and \
                (g == "/" or posixpath.dirname(g) in kept):
            kept.add(g)
    if "/" not in kept:
        raise Ext2Error("the root directory was replaced", "comparing the tree")
    # An old name's inode, by host inode: what a rename or a new hard link of it links.
    host_to_image = {o[2]: (o[0], stat.S_IFMT(o[1])) for g, o in old.items() if not stat.S_ISDIR(o[1])}
    image_of: dict[str, int] = {g: old[g][0] for g in kept}
    dirs = {g: old[g][0] for g in kept if stat.S_ISDIR(old[g][1])}

    # 1. Names that went, deepest first (a directory after what it held).  Inodes are freed at
    # the end, when it is known whether another name still links them.
    gone = sorted((g for g in old if g not in kept), key=lambda g: (-g.count("/"), g))
    maybe_free: dict[int, bool] = {}
    for g in gone:
        ino, mode = old[g][0], old[g][1]
        parent = old[posixpath.dirname(g)][0]
        fs.unlink(parent, os.fsencode(posixpath.basename(g)), ino, g)
        if stat.S_ISDIR(mode):
            fs.free(ino, True, g)
        else:
            maybe_free[ino] = False
        stats.removed += 1

    # 2. Names that came, parents first.
    made: dict[int, int] = {}    # host inode -> image inode made or linked in this commit
    wrote: set[int] = set()      # image inodes whose contents were written already
    for g, st in new.items():
        if g in kept:
            continue
        pdir = dirs[posixpath.dirname(g)]
        name = os.fsencode(posixpath.basename(g))
        lk = looks[g]
        fmt = stat.S_IFMT(lk.mode)
        stats.added += 1
        if fmt == stat.S_IFDIR:
            ino = fs.mkdir(pdir, name, g)
            dirs[g] = image_of[g] = ino
            continue
        ino = made.get(st.st_ino)
        prior = host_to_image.get(st.st_ino)
        if ino is not None:
            fs.link(pdir, name, ino, fmt, g)      # another name of an inode this commit made
        elif prior is not None and prior[1] == fmt:
            ino = prior[0]                       # a rename or a new link of an inode the image has
            fs.link(pdir, name, ino, fmt, g)
        elif fmt == stat.S_IFLNK:
            ino = fs.symlink(pdir, name, os.fsencode(os.readlink(host(g))), g)
            wrote.add(ino)
        else:
            ino = fs.new_inode(pdir, name, lk.mode, lk.rdev, g)
            if fmt == stat.S_IFREG:
                fs.write_contents(ino, host(g), g)
                stats.bytes += st.st_size
            wrote.add(ino)
        made[st.st_ino] = ino
        image_of[g] = ino

    # 3. Contents, metadata and link counts of every inode that changed, from the host file.
    names: dict[int, int] = {}
    subdirs: dict[str, int] = {}
    for g in new:
        names[image_of[g]] = names.get(image_of[g], 0) + 1
        if g != "/" and stat.S_ISDIR(new[g].st_mode):
            p = posixpath.dirname(g)
            subdirs[p] = subdirs.get(p, 0) + 1
    by_host = {o[2]: o for o in old.values()}
    done: set[int] = set()
    for g, st in new.items():
        ino = image_of[g]
        if ino in done:
            continue
        o = by_host.get(st.st_ino)
        same_inode = o is not None and o[0] == ino
        if same_inode and st.st_ctime_ns == o[3]:
            continue   # untouched since it was made
        done.add(ino)
        lk = looks[g]
        if stat.S_ISREG(lk.mode) and ino not in wrote and (not same_inode or (st.st_size, st.st_mtime_ns) != (o[4], o[5])):
            fs.write_contents(ino, host(g), g)
            stats.rewritten += 1
            stats.bytes += st.st_size
        ind = fs.inode(ino, g)
        ind.i_mode = lk.mode & 0xFFFF
        ind.i_uid, ind.l_i_uid_high = lk.uid & 0xFFFF, lk.uid >> 16
        ind.i_gid, ind.l_i_gid_high = lk.gid & 0xFFFF, lk.gid >> 16
        ind.i_atime, ind.i_mtime, ind.i_ctime = int(st.st_atime), int(st.st_mtime), int(st.st_ctime)
        if stat.S_ISDIR(lk.mode):
            n = 2 + subdirs.get(g, 0)
            ind.i_links_count = n if n < 65000 else 1   # dir_nlink's "too many to count"
        else:
            ind.i_links_count = names[ino]
        fs.write_inode(ino, ind, g)
        stats.updated += 1

    # 4. Inodes of removed names that no name links any more.
    for ino in maybe_free:
        if ino not in names:
            fs.free(ino, False, f"inode {ino}")
    return stats


def copy_image(src: str, dst: str) -> None:
    """dst: a copy of src's allocated extents (holes stay holes), fsynced."""
    sfd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(sfd)
        dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, stat.S_IMODE(st.st_mode))
        try:
            try:
                os.fchown(dfd, st.st_uid, st.st_gid)
            except PermissionError:
                pass   # another user's image, writable to us: the new one is ours
            os.fchmod(dfd, stat.S_IMODE(st.st_mode))
            pos = 0
            while pos < st.st_size:
                try:
                    start = os.lseek(sfd, pos, os.SEEK_DATA)
                except OSError as exc:
                    if exc.errno == errno.ENXIO:
                        break
                    raise
                end = os.lseek(sfd, start, os.SEEK_HOLE)
                off = start
                while off < end:
                    n = os.copy_file_range(sfd, dfd, end - off, off, off)
                    if n == 0:
                        break
                    off += n
                pos = end
            os.ftruncate(dfd, st.st_size)
            os.fsync(dfd)
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)


def commit(lock: WriterLock, overlay: Overlay, fake_root: bool) -> CommitStats:
    """The tree's changes into the image: on a copy, then renamed over it (see the module's
    docstring).  The image is untouched unless this returns."""
    tmp = lock.commit_path
    copy_image(lock.image, tmp)
    try:
        fs = WritableFS(tmp)
        try:
            stats = apply_changes(fs, overlay, fake_root)
        except BaseException:
            fs.close()
            raise
        fs.flush_and_close()
        fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, lock.image)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dfd = os.open(os.path.dirname(lock.image), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return stats


def commit_in_child(lock: WriterLock, overlay: Overlay, fake_root: bool, image_name: str) -> bool:
    """commit() in a child process (libext2fs crashing on a damaged image is one line, not a
    crash of kbox); the child shares the locks' open files, so they are held until it ends.
    True when the image holds the changes; else one line was printed."""
    t0 = time.monotonic()
    kept = f"the image is unchanged; the changed tree is kept in {overlay.root}"

    def work() -> int:
        s = commit(lock, overlay, fake_root)
        if os.environ.get("KBOX_COMMIT_REPORT"):   # the tests' and benchmarks' figures
            sys.stderr.write(f"kbox: committed {image_name}: {s.added} added, {s.removed} removed, "
                             f"{s.updated} updated, {s.bytes / 1e6:.1f} MB written in "
                             f"{time.monotonic() - t0:.2f} s\n")
        return 0

    def failed(exc: BaseException) -> tuple[str, int]:
        if isinstance(exc, Ext2Error):
            why = f"{exc.what} ({exc.where})"
        elif isinstance(exc, OSError):
            why = f"{exc.strerror or exc} ({exc.filename or 'committing'})"
        else:
            why = f"{type(exc).__name__}: {exc}"
        return f"kbox: {image_name}: the changes were not written: {why}; {kept}", 1

    status = ext4image.run_in_child(work, failed)
    if os.WIFSIGNALED(status):
        sys.stderr.write(f"kbox: {image_name}: the commit was killed ({signal.Signals(os.WTERMSIG(status)).name}); "
                         f"{kept}\n")
        return False
    return os.WEXITSTATUS(status) == 0


def finish(lock: WriterLock, overlay: Overlay, fake_root: bool, image_name: str, status: int) -> int | None:
    """The end of a --root-writable run: commit what changed, remove the overlay, release the
    locks.  Returns an exit status to use instead of the launcher's, or None."""
    import shutil
    try:
        if not overlay.changed():
            shutil.rmtree(overlay.dir, ignore_errors=True)
            return None
        if commit_in_child(lock, overlay, fake_root, image_name):
            shutil.rmtree(overlay.dir, ignore_errors=True)
            return None
        program = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
        return program or EXIT_COMMIT
    finally:
        lock.release()


def start(image: str, progress: bool = True) -> tuple[WriterLock, Overlay]:
    """The locks, then the overlay made with its manifest."""
    lock = acquire(image)
    try:
        overlay = ext4image.prepare_overlay(image, None, progress, inodes=True)
        try:
            write_manifest(overlay)
        except BaseException:
            import shutil
            shutil.rmtree(overlay.dir, ignore_errors=True)
            raise
    except BaseException:
        lock.release()
        raise
    return lock, overlay
