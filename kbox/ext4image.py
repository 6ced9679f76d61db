"""ext2/3/4 images as roots: `kbox run --root IMAGE`, `kbox image from-dir`, `kbox image info`.

The image is read with e2fsprogs' libext2fs (libext2fs.so.2, which every Debian system has:
e2fsprogs depends on it), through ctypes, so the same code runs on the host and in the
aarch64/x86_64 guests without building anything.  It is opened read-only (never
EXT2_FLAG_RW) and never written.  Its tree is materialized into an overlay directory, which
the directory view (csrc/core/view.c) then serves in every tier; the owners, modes, set-id
bits and device numbers kbox cannot give the materialized files (they are the invoking
user's) go into a record in fakeroot's format keyed by the materialized files' own
(st_dev, st_ino), which the launcher's --root-record makes the stat family show
(csrc/core/ids.h).

The overlay directory holds:
    root/       the materialized tree (the program's /)
    kbox-ids    the record (the launcher rewrites it at the end of each run)
    kbox-image  the stamp: which image root/ was made from (path, size, mtime, superblock
                UUID and write time), written last, so a directory without it is unfinished.

Bad input: a superblock or group descriptors libext2fs refuses end the run with one line
(`kbox: IMAGE: <what libext2fs said> (<where>)`, exit 2); a single file, directory or
symlink that cannot be read (a corrupted inode, extent tree or directory block) is left out
with one warning line each, and the rest is materialized.  libext2fs runs in a child process,
so an image that crashes it is a one-line error too, not a crash of kbox.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from kbox.errors import UserError

EXIT_USAGE = 2

# ---- the superblock, read directly (kbox image info, detection, the overlay's stamp) -------
# struct ext2_super_block (/usr/include/ext2fs/ext2_fs.h), little-endian at byte 1024 of the
# image; the offsets below are its field offsets.

SUPER_OFFSET = 1024
SUPER_SIZE = 1024
EXT2_MAGIC = 0xEF53
_SB = {  # name: (offset, struct format)
    "inodes_count": (0x00, "<I"), "blocks_count_lo": (0x04, "<I"),
    "free_blocks_lo": (0x0C, "<I"), "free_inodes": (0x10, "<I"),
    "log_block_size": (0x18, "<I"), "mtime": (0x2C, "<I"), "wtime": (0x30, "<I"),
    "magic": (0x38, "<H"), "state": (0x3A, "<H"), "rev_level": (0x4C, "<I"),
    "inode_size": (0x58, "<H"), "feature_compat": (0x5C, "<I"),
    "feature_incompat": (0x60, "<I"), "feature_ro_compat": (0x64, "<I"),
    "uuid": (0x68, "16s"), "volume_name": (0x78, "16s"), "mkfs_time": (0x108, "<I"),
    "blocks_count_hi": (0x150, "<I"), "free_blocks_hi": (0x158, "<I"),
}
INCOMPAT_64BIT = 0x80
COMPAT_HAS_JOURNAL = 0x4
FEATURES = {  # the ones `kbox image info` names: (word, bit, name)
    ("compat", 0x4): "has_journal", ("compat", 0x8): "ext_attr", ("compat", 0x20): "dir_index",
    ("incompat", 0x2): "filetype", ("incompat", 0x40): "extent", ("incompat", 0x80): "64bit",
    ("incompat", 0x200): "flex_bg", ("incompat", 0x8000): "inline_data",
    ("incompat", 0x10000): "encrypt", ("incompat", 0x20000): "casefold",
    ("ro_compat", 0x1): "sparse_super", ("ro_compat", 0x2): "large_file",
    ("ro_compat", 0x8): "huge_file", ("ro_compat", 0x20): "dir_nlink",
    ("ro_compat", 0x40): "extra_isize", ("ro_compat", 0x400): "metadata_csum",
}


@dataclass
class Super:
    fields: dict

    @property
    def block_size(self) -> int:
        return 1024 << self.fields["log_block_size"]

    @property
    def blocks(self) -> int:
        hi = self.fields["blocks_count_hi"] if self.fields["feature_incompat"] & INCOMPAT_64BIT else 0
        return self.fields["blocks_count_lo"] | hi << 32

    @property
    def free_blocks(self) -> int:
        hi = self.fields["free_blocks_hi"] if self.fields["feature_incompat"] & INCOMPAT_64BIT else 0
        return self.fields["free_blocks_lo"] | hi << 32

    @property
    def uuid(self) -> str:
        u = self.fields["uuid"].hex()
        return f"{u[:8]}-{u[8:12]}-{u[12:16]}-{u[16:20]}-{u[20:]}"

    @property
    def kind(self) -> str:
        """As blkid names it: ext4 when a feature beyond ext3's is on (ext3's incompat ones:
        filetype, recover; ro_compat: sparse_super, large_file), ext3 with a journal."""
        f = self.fields
        if f["feature_incompat"] & ~0x6 or f["feature_ro_compat"] & ~0x3:
            return "ext4"
        return "ext3" if f["feature_compat"] & COMPAT_HAS_JOURNAL else "ext2"

    def features(self) -> list[str]:
        words = {"compat": self.fields["feature_compat"], "incompat": self.fields["feature_incompat"],
                 "ro_compat": self.fields["feature_ro_compat"]}
        return [name for (w, bit), name in FEATURES.items() if words[w] & bit]


def read_super(path: str) -> Super | None:
    """The ext2/3/4 superblock of the file at `path`, or None when it has none (no magic at
    byte 1080, or a block size outside 1 KiB..64 KiB: not an ext2/3/4 image).  OSError
    when it cannot be read."""
    with open(path, "rb") as f:
        f.seek(SUPER_OFFSET)
        raw = f.read(SUPER_SIZE)
    if len(raw) < SUPER_SIZE:
        return None
    fields = {k: struct.unpack_from(fmt, raw, off)[0] for k, (off, fmt) in _SB.items()}
    if fields["magic"] != EXT2_MAGIC or fields["log_block_size"] > 6:
        return None
    return Super(fields)


def is_image(path: str) -> bool:
    try:
        st = os.stat(path)
        return (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)) and read_super(path) is not None
    except OSError:
        return False


def describe(path: str) -> str:
    """What `kbox image info` prints."""
    try:
        sb = read_super(path)
    except OSError as exc:
        raise UserError(f"kbox image info: {path}: {exc.strerror}", EXIT_USAGE) from exc
    if sb is None:
        raise UserError(f"kbox image info: {path}: not an ext2/3/4 image (no superblock magic 0xEF53 at "
                        "byte 1080)", EXIT_USAGE)
    f = sb.fields
    label = f["volume_name"].split(b"\0")[0].decode("utf-8", "replace")
    when = lambda t: time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t)) if t else "never"  # noqa: E731
    size = os.stat(path).st_size
    lines = [
        f"image:        {path} ({size} bytes)",
        f"filesystem:   {sb.kind}, UUID {sb.uuid}" + (f", label {label!r}" if label else ""),
        f"blocks:       {sb.blocks} of {sb.block_size} bytes ({sb.blocks * sb.block_size // (1 << 20)} MiB), "
        f"{sb.free_blocks} free",
        f"inodes:       {f['inodes_count']} of {f['inode_size'] if f['rev_level'] else 128} bytes, "
        f"{f['free_inodes']} free",
        f"features:     {' '.join(sb.features()) or '(none)'}",
        f"state:        {'clean' if f['state'] & 1 else 'not clean'}" + (", errors recorded" if f["state"] & 2 else ""),
        f"created:      {when(f['mkfs_time'])}",
        f"last written: {when(f['wtime'])}",
        f"last mounted: {when(f['mtime'])}",
    ]
    if sb.blocks * sb.block_size > size and not stat.S_ISBLK(os.stat(path).st_mode):
        lines.append(f"warning:      the superblock says {sb.blocks * sb.block_size} bytes; the file is "
                     "shorter (truncated?)")
    return "\n".join(lines)


def from_dir(src: str, out: str, size: str | None = None) -> None:
    """`kbox image from-dir`: an ext4 image of the tree at src (mke2fs -d).  Owners are the
    tree's when mke2fs runs as root; as another user mke2fs records the tree's owners too
    (it reads them with lstat), which is what the files say, not who made them."""
    if not os.path.isdir(src):
        raise UserError(f"kbox image from-dir: {src}: not a directory", EXIT_USAGE)
    if os.path.exists(out):
        raise UserError(f"kbox image from-dir: {out} exists (kbox never overwrites an image)", EXIT_USAGE)
    mke2fs = shutil.which("mke2fs") or next((p for p in ("/usr/sbin/mke2fs", "/sbin/mke2fs")
                                             if os.path.exists(p)), None)
    if mke2fs is None:
        raise UserError("kbox image from-dir: mke2fs not found (install e2fsprogs)", EXIT_USAGE)
    if size is None:
        used = 0
        for dirpath, dirnames, filenames in os.walk(src):
            for n in dirnames + filenames:
                try:
                    used += os.lstat(os.path.join(dirpath, n)).st_blocks * 512 + 4096
                except OSError:
                    pass
        size_bytes = max(16 << 20, int(used * 1.3) + (8 << 20))
        size = f"{(size_bytes + 1023) // 1024}k"
    try:
        got = subprocess.run([mke2fs, "-q", "-F", "-t", "ext4", "-b", "4096", "-d", src, out, size],
                             capture_output=True, text=True, timeout=3600)
    except subprocess.TimeoutExpired as exc:
        raise UserError("kbox image from-dir: mke2fs took more than an hour", 1) from exc
    if got.returncode != 0:
        if os.path.exists(out):
            os.unlink(out)
        msg = (got.stderr.strip().splitlines() or ["failed"])[-1]
        raise UserError(f"kbox image from-dir: mke2fs: {msg}", 1)


# ---- libext2fs through ctypes ---------------------------------------------------------------
#
# ABI assumptions (e2fsprogs 1.42 .. 1.47, /usr/include/ext2fs/ext2fs.h and ext2_fs.h):
# - errcode_t is long; ext2_ino_t is __u32; ext2_filsys and ext2_file_t are opaque pointers
#   (kbox never reads struct struct_ext2_filsys: the superblock is read from the file above).
# - ext2fs_open(name, flags, superblock, block_size, io_manager, ext2_filsys *): flags 0 plus
#   EXT2_FLAG_64BITS (0x20000) is read-only; superblock 0 / block_size 0 let it find them.
#   unix_io_manager is a global `io_manager` (a pointer) exported by libext2fs.
# - struct ext2_inode is the 128-byte classic inode: i_mode u16 @0, i_uid u16 @2,
#   i_size u32 @4, i_mtime u32 @16, i_gid u16 @24, i_links_count u16 @26, i_flags u32 @32,
#   i_block[15] u32 @40, i_size_high u32 @108, osd2.linux2.l_i_uid_high u16 @120 and
#   l_i_gid_high u16 @122.  ext2fs_read_inode fills exactly those 128 bytes.
# - struct ext2_dir_entry: inode u32 @0, rec_len u16 @4, name_len u16 @6 (low byte: the
#   length, high byte: the file type), name @8.  ext2fs_dir_iterate2's callback is
#   int (*)(ext2_ino_t dir, int entry, struct ext2_dir_entry *, int offset, int blocksize,
#   char *buf, void *priv); returning DIRENT_ABORT (2) stops the walk.
# - ext2fs_file_read(ext2_file_t, void *buf, unsigned int wanted, unsigned int *got) reads
#   extents, block maps and inline data alike; holes read as zeros.
# - ext2fs_is_fast_symlink(struct ext2_inode *) (1.43+) says whether a symlink's target is
#   in i_block; ext2fs_inline_data_get(fs, ino, inode, buf, size_t *size) reads inline data.
# - error_message(long) (libcom_err.so.2) names an errcode once initialize_ext2_error_table
#   has run.

EXT2_FLAG_64BITS = 0x20000
EXT4_INLINE_DATA_FL = 0x10000000
EXT2_ROOT_INO = 2
DIRENT_ABORT = 2
INODE_SIZE = 128
CHUNK = 1 << 20


class Ext2Error(Exception):
    """A libext2fs error: `what` is its message, `where` what kbox was doing."""

    def __init__(self, what: str, where: str) -> None:
        super().__init__(f"{what} ({where})")
        self.what, self.where = what, where


class ExtInode(ctypes.Structure):
    _fields_ = [("i_mode", ctypes.c_uint16), ("i_uid", ctypes.c_uint16), ("i_size", ctypes.c_uint32),
                ("i_atime", ctypes.c_uint32), ("i_ctime", ctypes.c_uint32), ("i_mtime", ctypes.c_uint32),
                ("i_dtime", ctypes.c_uint32), ("i_gid", ctypes.c_uint16), ("i_links_count", ctypes.c_uint16),
                ("i_blocks", ctypes.c_uint32), ("i_flags", ctypes.c_uint32), ("osd1", ctypes.c_uint32),
                ("i_block", ctypes.c_uint32 * 15), ("i_generation", ctypes.c_uint32),
                ("i_file_acl", ctypes.c_uint32), ("i_size_high", ctypes.c_uint32), ("i_faddr", ctypes.c_uint32),
                ("l_i_blocks_hi", ctypes.c_uint16), ("l_i_file_acl_high", ctypes.c_uint16),
                ("l_i_uid_high", ctypes.c_uint16), ("l_i_gid_high", ctypes.c_uint16),
                ("l_i_checksum_lo", ctypes.c_uint16), ("l_i_reserved", ctypes.c_uint16)]

    @property
    def uid(self) -> int:
        return self.i_uid | self.l_i_uid_high << 16

    @property
    def gid(self) -> int:
        return self.i_gid | self.l_i_gid_high << 16

    @property
    def size(self) -> int:
        return self.i_size | self.i_size_high << 32


assert ctypes.sizeof(ExtInode) == INODE_SIZE
assert ExtInode.i_block.offset == 40 and ExtInode.i_size_high.offset == 108 and ExtInode.l_i_uid_high.offset == 120

DirCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_uint32, ctypes.c_int, ctypes.c_void_p, ctypes.c_int,
                               ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)


def _load_libs() -> tuple[ctypes.CDLL, ctypes.CDLL]:
    names = ("libext2fs.so.2", ctypes.util.find_library("ext2fs"))
    lib = com = None
    for n in names:
        if n:
            try:
                lib = ctypes.CDLL(n)
                break
            except OSError:
                pass
    for n in ("libcom_err.so.2", ctypes.util.find_library("com_err")):
        if n:
            try:
                com = ctypes.CDLL(n)
                break
            except OSError:
                pass
    if lib is None or com is None:
        raise UserError("kbox: image roots need libext2fs.so.2 and libcom_err.so.2 (Debian: apt install "
                        "libext2fs2 libcom-err2)", EXIT_USAGE)
    L, c, p = ctypes, ctypes.c_long, ctypes.c_void_p
    lib.ext2fs_open.argtypes = [L.c_char_p, L.c_int, L.c_int, L.c_uint, p, L.POINTER(p)]
    lib.ext2fs_open.restype = c
    lib.ext2fs_close_free.argtypes = [L.POINTER(p)]
    lib.ext2fs_close_free.restype = c
    lib.ext2fs_read_inode.argtypes = [p, L.c_uint32, L.POINTER(ExtInode)]
    lib.ext2fs_read_inode.restype = c
    lib.ext2fs_dir_iterate2.argtypes = [p, L.c_uint32, L.c_int, p, DirCallback, p]
    lib.ext2fs_dir_iterate2.restype = c
    lib.ext2fs_file_open.argtypes = [p, L.c_uint32, L.c_int, L.POINTER(p)]
    lib.ext2fs_file_open.restype = c
    lib.ext2fs_file_read.argtypes = [p, p, L.c_uint, L.POINTER(L.c_uint)]
    lib.ext2fs_file_read.restype = c
    lib.ext2fs_file_close.argtypes = [p]
    lib.ext2fs_file_close.restype = c
    lib.ext2fs_is_fast_symlink.argtypes = [L.POINTER(ExtInode)]
    lib.ext2fs_is_fast_symlink.restype = L.c_int
    lib.ext2fs_inline_data_get.argtypes = [p, L.c_uint32, L.POINTER(ExtInode), p, L.POINTER(L.c_size_t)]
    lib.ext2fs_inline_data_get.restype = c
    lib.initialize_ext2_error_table.argtypes = []
    lib.initialize_ext2_error_table.restype = None
    com.error_message.argtypes = [c]
    com.error_message.restype = L.c_char_p
    lib.initialize_ext2_error_table()
    return lib, com


class Ext2FS:
    """One image, opened read-only."""

    def __init__(self, path: str) -> None:
        self.lib, self.com = _load_libs()
        self.fs = ctypes.c_void_p()
        manager = ctypes.c_void_p.in_dll(self.lib, "unix_io_manager")
        err = self.lib.ext2fs_open(os.fsencode(path), EXT2_FLAG_64BITS, 0, 0, manager, ctypes.byref(self.fs))
        self.check(err, "opening the superblock and group descriptors")

    def message(self, err: int) -> str:
        m = self.com.error_message(err)
        return m.decode("utf-8", "replace") if m else f"error {err}"

    def check(self, err: int, where: str) -> None:
        if err:
            raise Ext2Error(self.message(err), where)

    def close(self) -> None:
        if self.fs:
            self.lib.ext2fs_close_free(ctypes.byref(self.fs))

    def inode(self, ino: int, where: str) -> ExtInode:
        ind = ExtInode()
        self.check(self.lib.ext2fs_read_inode(self.fs, ino, ctypes.byref(ind)), f"reading inode {ino} of {where}")
        return ind

    def entries(self, ino: int, where: str) -> list[tuple[bytes, int]]:
        """(name, inode) of a directory, without . and .."""
        out: list[tuple[bytes, int]] = []
        failed: list[str] = []

        def each(_dir, _entry, dirent, _off, _bs, _buf, _priv):
            try:
                inum, _rec, name_len = struct.unpack_from("<IHH", ctypes.string_at(dirent, 8))
                name = ctypes.string_at(dirent + 8, name_len & 0xFF)
                if inum and name not in (b".", b".."):
                    out.append((name, inum))
                return 0
            except Exception as exc:  # never let an exception unwind through C
                failed.append(str(exc))
                return DIRENT_ABORT

        cb = DirCallback(each)
        self.check(self.lib.ext2fs_dir_iterate2(self.fs, ino, 0, None, cb, None), f"reading the directory {where}")
        if failed:
            raise Ext2Error(failed[0], f"reading the directory {where}")
        return out

    def read_inline(self, ino: int, ind: ExtInode, where: str) -> bytes:
        buf = ctypes.create_string_buffer(max(ind.size, 60) + 4096)
        n = ctypes.c_size_t(len(buf))
        self.check(self.lib.ext2fs_inline_data_get(self.fs, ino, ctypes.byref(ind), buf, ctypes.byref(n)),
                   f"reading the inline data of {where}")
        return buf.raw[:min(n.value, ind.size)]

    def symlink_target(self, ino: int, ind: ExtInode, where: str) -> bytes:
        if ind.size > 4096:
            raise Ext2Error("symlink target longer than a page", f"reading the symlink {where}")
        if ind.i_flags & EXT4_INLINE_DATA_FL:
            return self.read_inline(ino, ind, where)
        if self.lib.ext2fs_is_fast_symlink(ctypes.byref(ind)):
            return bytes(ind.i_block)[:ind.size]
        return b"".join(self.read_file(ino, where, ind.size))

    def read_file(self, ino: int, where: str, size: int):
        """The file's contents in chunks of up to 1 MiB (holes as zeros)."""
        f = ctypes.c_void_p()
        self.check(self.lib.ext2fs_file_open(self.fs, ino, 0, ctypes.byref(f)), f"opening {where}")
        buf = ctypes.create_string_buffer(CHUNK)
        got = ctypes.c_uint()
        try:
            left = size
            while left > 0:
                self.check(self.lib.ext2fs_file_read(f, buf, min(CHUNK, left), ctypes.byref(got)), f"reading {where}")
                if got.value == 0:
                    raise Ext2Error(f"ends after {size - left} of {size} bytes", f"reading {where}")
                yield buf.raw[:got.value]
                left -= got.value
        finally:
            self.lib.ext2fs_file_close(f)


# ---- materializing --------------------------------------------------------------------------

class Progress:
    """A progress line on stderr once materializing has taken more than a second."""

    def __init__(self, image: str, enabled: bool) -> None:
        self.image, self.enabled = image, enabled
        self.tty = sys.stderr.isatty()
        # KBOX_PROGRESS_AFTER: seconds before the first line (tests set 0).
        self.after = float(os.environ.get("KBOX_PROGRESS_AFTER", "1.0"))
        self.start = time.monotonic()
        self.last = self.start - 10.0
        self.files = self.bytes = 0
        self.shown = False

    def step(self, files: int = 0, nbytes: int = 0) -> None:
        self.files += files
        self.bytes += nbytes
        now = time.monotonic()
        # A terminal gets one line rewritten in place; a log gets a line every 2 s.
        if self.enabled and now - self.start >= self.after and now - self.last > (0.25 if self.tty else 2.0):
            self.last = now
            self.shown = True
            cr, nl = ("\r", "") if self.tty else ("", "\n")
            sys.stderr.write(f"{cr}kbox: materializing {self.image}: {self.files} files, "
                             f"{self.bytes / 1e6:.0f} MB{nl}")
            sys.stderr.flush()

    def done(self) -> None:
        if self.shown:
            cr = "\r" if self.tty else ""
            sys.stderr.write(f"{cr}kbox: materialized {self.image}: {self.files} files, "
                             f"{self.bytes / 1e6:.0f} MB in {time.monotonic() - self.start:.1f} s\n")
            sys.stderr.flush()


def _encode_dev(major: int, minor: int) -> int:
    """The kernel's new_encode_dev: what st_rdev holds."""
    return (minor & 0xFF) | (major & 0xFFF) << 8 | (minor & ~0xFF) << 12


def _inode_rdev(ind: ExtInode) -> int:
    """A device inode's number: the old 16-bit form in i_block[0], else the new one in
    i_block[1] (the kernel's ext4 old_valid_dev / new_decode_dev)."""
    if ind.i_block[0]:
        old = ind.i_block[0]
        return _encode_dev((old >> 8) & 0xFF, old & 0xFF)
    new = ind.i_block[1]
    return _encode_dev((new & 0xFFF00) >> 8, (new & 0xFF) | ((new >> 12) & 0xFFF00))


def _write_regular(fs: Ext2FS, ino: int, ind: ExtInode, host: str, where: str, progress: Progress) -> None:
    """Writes the file's contents; a 1 MiB run of zeros becomes a hole (a hole in the image
    reads as zeros, so holes stay holes; zeros written in the image become one too)."""
    fd = os.open(host, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        size = ind.size
        if ind.i_flags & EXT4_INLINE_DATA_FL:
            os.write(fd, fs.read_inline(ino, ind, where))
        else:
            zero = bytes(CHUNK)
            for chunk in fs.read_file(ino, where, size):
                if len(chunk) == CHUNK and chunk == zero:
                    os.lseek(fd, CHUNK, os.SEEK_CUR)
                else:
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view):]
                progress.step(nbytes=len(chunk))
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def _record_line(st: os.stat_result, mode: int, uid: int, gid: int, nlink: int, rdev: int) -> str:
    # fakeroot's save-file line (csrc/core/ids.c reads it): dev hex, mode octal, no prefixes.
    return f"dev={st.st_dev:x},ino={st.st_ino},mode={mode:o},uid={uid},gid={gid},nlink={nlink},rdev={rdev}\n"


def materialize(image: str, dest: str, record: str, progress: bool = True, inodes: str | None = None) -> int:
    """Materializes the image's tree at dest (which must not exist) and writes its record.
    Returns the number of files left out (each with a warning on stderr).  Raises
    Ext2Error when the image cannot be opened or its root directory read.  inodes: a file
    to write, one JSON line [image inode, image mode, guest path] per name made, and last
    {"skipped": N} (what --root-writable's commit starts from, kbox/ext4write.py)."""
    fs = Ext2FS(image)
    made: list[str] = []
    keep = (lambda ino, mode, guest: made.append(json.dumps([ino, mode, guest]) + "\n")) if inodes else \
        (lambda ino, mode, guest: None)
    prog = Progress(image, progress)
    skipped = 0
    lines: list[str] = []
    links: dict[int, str] = {}          # inode -> the first host path made for it
    links_mode: dict[int, int] = {}
    dir_modes: list[tuple[str, ExtInode]] = []
    seen_dirs: set[int] = set()

    def warn(where: str, exc: Exception) -> None:
        nonlocal skipped
        skipped += 1
        sys.stderr.write(f"kbox: {image}: warning: {where}: {exc}; left out\n")

    def note(host: str, ind: ExtInode, mode: int, rdev: int = 0) -> None:
        # Only what the materialized file does not show itself is recorded (the launcher
        # holds 49152 records): a root-owned image materialized by root records only its
        # set-id bits, devices and other owners.
        st = os.lstat(host)
        if (st.st_mode, st.st_uid, st.st_gid, st.st_rdev) != (mode, ind.uid, ind.gid, rdev):
            lines.append(_record_line(st, mode, ind.uid, ind.gid, ind.i_links_count, rdev))

    try:
        root = fs.inode(EXT2_ROOT_INO, "/")
        if not stat.S_ISDIR(root.i_mode):
            raise Ext2Error("the root inode is not a directory", "reading inode 2 of /")
        os.mkdir(dest, 0o700)
        todo: list[tuple[int, ExtInode, str, str]] = [(EXT2_ROOT_INO, root, dest, "/")]
        seen_dirs.add(EXT2_ROOT_INO)
        while todo:
            dino, dind, dhost, dguest = todo.pop()
            try:
                entries = fs.entries(dino, dguest)
            except Ext2Error as exc:
                if dino == EXT2_ROOT_INO:
                    raise  # nothing to serve
                os.rmdir(dhost)
                warn(dguest, exc)
                continue
            note(dhost, dind, dind.i_mode)
            keep(dino, dind.i_mode, dguest)
            dir_modes.append((dhost, dind))
            for name, ino in sorted(entries):
                if b"/" in name or not name:
                    warn(f"{dguest}: entry {name!r}", Exception("not a valid file name"))
                    continue
                host = os.path.join(dhost, os.fsdecode(name))
                guest = dguest.rstrip("/") + "/" + os.fsdecode(name)
                try:
                    if ino in links:   # a hard link of a file made already
                        os.link(links[ino], host)
                        keep(ino, links_mode[ino], guest)
                        prog.step(files=1)
                        continue
                    ind = fs.inode(ino, guest)
                    fmt = stat.S_IFMT(ind.i_mode)
                    if fmt == stat.S_IFDIR:
                        if ino in seen_dirs:
                            raise Ext2Error("a directory linked twice (a loop)", f"reading {guest}")
                        seen_dirs.add(ino)
                        os.mkdir(host, 0o700)
                        todo.append((ino, ind, host, guest))
                        prog.step(files=1)
                        continue
                    rdev = 0
                    if fmt == stat.S_IFREG:
                        _write_regular(fs, ino, ind, host, guest, prog)
                    elif fmt == stat.S_IFLNK:
                        os.symlink(fs.symlink_target(ino, ind, guest), host)
                    elif fmt == stat.S_IFIFO:
                        os.mkfifo(host, 0o600)
                    elif fmt == stat.S_IFSOCK:
                        os.mknod(host, stat.S_IFSOCK | 0o600)
                    elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
                        os.close(os.open(host, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                        rdev = _inode_rdev(ind)
                    else:
                        raise Ext2Error(f"unknown file type {fmt >> 12:o}", f"reading inode {ino} of {guest}")
                    if fmt != stat.S_IFLNK:
                        # As ids.c's chmod: the permission bits, with the owner's read and write
                        # kept so the user can use the file; set-id bits only in the record.
                        os.chmod(host, (ind.i_mode & 0o777) | 0o600)
                    note(host, ind, ind.i_mode, rdev)
                    if fmt != stat.S_IFLNK and ind.i_links_count > 1:
                        links[ino] = host
                        links_mode[ino] = ind.i_mode
                    keep(ino, ind.i_mode, guest)
                    os.utime(host, (ind.i_atime, ind.i_mtime), follow_symlinks=False)
                    prog.step(files=1)
                except Ext2Error as exc:
                    _remove(host)
                    warn(guest, exc)
                except OSError as exc:
                    _remove(host)
                    warn(guest, Exception(exc.strerror or str(exc)))
        for host, ind in reversed(dir_modes):   # deepest first: their parents' times stay
            os.chmod(host, (ind.i_mode & 0o777) | 0o700)
            os.utime(host, (ind.i_atime, ind.i_mtime))
    finally:
        fs.close()
    tmp = record + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(lines)
    os.replace(tmp, record)
    if inodes:
        with open(inodes, "w") as f:
            f.writelines(made)
            f.write(json.dumps({"skipped": skipped}) + "\n")
    prog.done()
    return skipped


def _remove(path: str) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass


def run_in_child(work, on_error) -> int:
    """Run work() in a forked child and return the child's wait status.

    libext2fs is C reading untrusted images: a crash there must cost one line, not kbox.  The
    child returns its exit code from work(); an exception becomes the line and code that
    on_error(exc) gives ("" prints nothing).  The child never unwinds into the caller's code
    and leaves with os._exit, so no handle libext2fs holds is closed (closing a filesystem
    opened for writing would write its superblock).  Ctrl-C while waiting kills the child,
    so none is left behind, and is raised again."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 125
        try:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = work()
        except BaseException as exc:  # noqa: BLE001 - the child must not unwind into the caller's code
            try:
                line, code = on_error(exc)
                if line:
                    sys.stderr.write(line + "\n")
            except BaseException:  # noqa: BLE001
                code = 125
        finally:
            try:
                sys.stderr.flush()
            finally:
                os._exit(code)
    try:
        _, status = os.waitpid(pid, 0)
    except BaseException:
        # The signal may be handled after waitpid reaped the child (Python runs handlers when
        # the call returns), so the child may be gone already.
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        raise
    return status


def materialize_in_child(image: str, dest: str, record: str, progress: bool = True,
                         inodes: str | None = None) -> None:
    """materialize() in a child process: whatever a corrupted image does to libext2fs (a
    crash included), kbox reports one line.  UserError(exit 2) on failure."""
    def failed(exc: BaseException) -> tuple[str, int]:
        if isinstance(exc, Ext2Error):
            return f"kbox: {image}: {exc.what} ({exc.where})", EXIT_USAGE
        if isinstance(exc, UserError):
            return str(exc), exc.exit_code
        if isinstance(exc, OSError):
            return f"kbox: {image}: {exc.strerror or exc} (materializing into {dest})", EXIT_USAGE
        return f"kbox: {image}: {type(exc).__name__}: {exc} (materializing)", EXIT_USAGE

    def work() -> int:
        materialize(image, dest, record, progress, inodes)  # what it skipped is in `inodes`
        return 0

    status = run_in_child(work, failed)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGINT:
            raise KeyboardInterrupt
        raise UserError(f"kbox: {image}: libext2fs crashed reading the image ({signal.Signals(sig).name}) "
                        "(materializing)", EXIT_USAGE)
    if os.WEXITSTATUS(status):
        raise UserError("", os.WEXITSTATUS(status))  # the child printed the line


# ---- overlays -------------------------------------------------------------------------------

STAMP = "kbox-image"
RECORD = "kbox-ids"
ROOT = "root"
INODES = "kbox-inodes"


def identity(image: str) -> dict:
    st = os.stat(image)
    sb = read_super(image)
    assert sb is not None
    return {"image": os.path.realpath(image), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "uuid": sb.uuid, "wtime": sb.fields["wtime"]}


@dataclass
class Overlay:
    dir: str
    temporary: bool
    made_at_ns: int = 0       # the stamp's ctime: changes after it are the program's

    @property
    def root(self) -> str:
        return os.path.join(self.dir, ROOT)

    @property
    def record(self) -> str:
        return os.path.join(self.dir, RECORD)

    def changed(self) -> bool:
        """Whether anything in the tree changed since it was made (a change of a file or of
        a directory's entries moves its ctime)."""
        stack = [self.root]
        while stack:
            d = stack.pop()
            try:
                if os.lstat(d).st_ctime_ns >= self.made_at_ns:
                    return True
                with os.scandir(d) as it:
                    for e in it:
                        st = e.stat(follow_symlinks=False)
                        if st.st_ctime_ns >= self.made_at_ns:
                            return True
                        if stat.S_ISDIR(st.st_mode):
                            stack.append(e.path)
            except OSError:
                return True
        return False


def prepare_overlay(image: str, overlay: str | None, progress: bool = True, inodes: bool = False) -> Overlay:
    """The overlay for a run of `image`: `overlay` reused when its stamp names this image
    (made there when it is missing or empty), or a new temporary one.  inodes: write
    INODES beside the tree (which image inode each name was made from)."""
    ident = identity(image)
    if overlay is None:
        o = Overlay(tempfile.mkdtemp(prefix="kbox-overlay-"), True)
        os.chmod(o.dir, 0o755)
    else:
        o = Overlay(os.path.abspath(overlay), False)
        stamp = os.path.join(o.dir, STAMP)
        if os.path.exists(stamp):
            try:
                with open(stamp) as f:
                    made_from = json.load(f)
            except (OSError, ValueError) as exc:
                raise UserError(f"kbox run: --overlay {overlay}: unreadable stamp {stamp}", EXIT_USAGE) from exc
            if made_from != ident:
                raise UserError(f"kbox run: --overlay {overlay}: made from another image "
                                f"({made_from.get('image')}, UUID {made_from.get('uuid')}); give another "
                                "directory", EXIT_USAGE)
            o.made_at_ns = os.lstat(stamp).st_ctime_ns
            return o
        if os.path.exists(o.dir) and (not os.path.isdir(o.dir) or os.listdir(o.dir)):
            raise UserError(f"kbox run: --overlay {overlay}: not empty and not a finished kbox overlay "
                            "(no stamp: an interrupted first run?); remove it or give another", EXIT_USAGE)
        os.makedirs(o.dir, exist_ok=True)
    try:
        materialize_in_child(image, o.root, o.record, progress, os.path.join(o.dir, INODES) if inodes else None)
    except BaseException:
        if o.temporary:
            shutil.rmtree(o.dir, ignore_errors=True)
        else:
            for n in (ROOT, RECORD, INODES):
                _remove(os.path.join(o.dir, n))
        raise
    # The stamp's ctime is the line between kbox's writes and the program's: the coarse
    # clock that stamps ctimes ticks every few ms, so wait for a tick past the last write.
    time.sleep(0.02)
    stamp = os.path.join(o.dir, STAMP)
    with open(stamp + ".tmp", "w") as f:
        json.dump(ident, f)
        f.write("\n")
    os.replace(stamp + ".tmp", stamp)
    o.made_at_ns = os.lstat(stamp).st_ctime_ns
    return o


def run_with_temporary_overlay(argv: list[str], overlay: Overlay, finish=None) -> int:  # type: ignore[no-untyped-def]
    """Runs the launcher as a child (kbox run otherwise execs it) so that the temporary
    overlay can be handled at the end.  SIGINT, SIGTERM and SIGHUP sent to this process with
    kill(2) are forwarded to the launcher; the terminal's own (Ctrl-C: sent by the kernel to
    the whole foreground process group, which the launcher is in) are not, so the program
    gets each signal once.  The launcher's exit status is returned unchanged; if a signal
    killed the launcher itself, this process dies of the same signal after the cleanup.
    finish(status): what is done at the end instead of finish_overlay (--root-writable's
    commit); a number it returns replaces the exit status."""
    sigs = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    status = None
    try:
        # fork and exec, not posix_spawn: glibc's posix_spawn leaves its internal signals
        # (32, 33) ignored in the child, and ignored signals survive exec.
        pid = os.fork()
        if pid == 0:
            try:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)
                os.execv(argv[0], argv)
            finally:
                os._exit(125)
        while status is None:
            info = signal.sigwaitinfo(sigs)
            if info.si_signo != signal.SIGCHLD and info.si_code != 0x80:  # 0x80: SI_KERNEL, the tty's
                try:
                    os.kill(pid, info.si_signo)
                except ProcessLookupError:
                    pass
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st
    finally:
        if status is None:
            status = 0
        override = finish(status) if finish else finish_overlay(overlay)
    signal.pthread_sigmask(signal.SIG_SETMASK, old)
    if override is not None:
        return override
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        return 128 + sig
    return os.WEXITSTATUS(status)


def finish_overlay(overlay: Overlay) -> None:
    """A temporary overlay the program left unchanged is removed; a changed one is kept, with
    one line saying where and how to reuse it."""
    if overlay.changed():
        sys.stderr.write(f"kbox: the program changed files of the image's view; they are kept in "
                         f"{overlay.dir} (rerun with --overlay {overlay.dir} to see them)\n")
    else:
        shutil.rmtree(overlay.dir, ignore_errors=True)



# ---- kbox image ... -------------------------------------------------------------------------

def cmd_materialize(args) -> int:  # type: ignore[no-untyped-def]
    check_image(args.image, "kbox image materialize")
    prepare_overlay(args.image, args.overlay)
    return 0


def check_image(path: str, who: str) -> None:
    """One line and exit 2 unless `path` is an ext2/3/4 image."""
    if not os.path.exists(path):
        raise UserError(f"{who}: {path}: does not exist", EXIT_USAGE)
    if not is_image(path):
        raise UserError(f"{who}: {path}: is not a directory or an ext2/3/4 image (no superblock magic 0xEF53 "
                        "at byte 1080)" if who == "kbox run: --root" else
                        f"{who}: {path}: not an ext2/3/4 image (no superblock magic 0xEF53 at byte 1080)",
                        EXIT_USAGE)


def add_image_command(subparsers) -> None:  # type: ignore[no-untyped-def]
    import argparse

    p = subparsers.add_parser(
        "image", help="make and inspect ext4 images for `kbox run --root IMAGE`",
        description="ext2/3/4 images as roots.  `kbox run --root IMAGE` reads the image with "
        "libext2fs (read-only: the image is never modified, unless --root-writable writes the "
        "run's changes into it at the end), materializes its tree into an overlay directory "
        "(--overlay DIR, or a temporary one) and serves that in every tier; stat shows "
        "the image's owners, modes, set-id bits and device numbers whoever runs it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  kbox image from-dir R root.ext4          an ext4 image of the tree R (mke2fs -d)\n"
        "  kbox image info root.ext4                what its superblock says\n"
        "  kbox run --root root.ext4 -- ls -l /     the image as the program's /\n"
        "  kbox run --root root.ext4 --overlay up -- sh -c 'echo hi > /etc/motd'   kept in up/\n")
    sub = p.add_subparsers(dest="image_command", metavar="COMMAND")
    f = sub.add_parser("from-dir", help="build an ext4 image of a directory tree (mke2fs -d)",
                       description="Builds OUT, an ext4 image holding the tree at DIR, with e2fsprogs' "
                       "mke2fs -d.  The files' owners, modes, set-id bits, device nodes, FIFOs, "
                       "symlinks and hard links are the tree's (run as root to keep a tree whose "
                       "files are owned by several users).  OUT must not exist.")
    f.add_argument("dir", metavar="DIR")
    f.add_argument("out", metavar="OUT.ext4")
    f.add_argument("--size", metavar="SIZE", default=None,
                   help="the image's size, as mke2fs reads it (512M, 2G, ...; default: what the "
                   "tree uses plus 30%% and 8 MiB)")
    f.set_defaults(func=lambda a: (from_dir(a.dir, a.out, a.size), 0)[1])
    i = sub.add_parser("info", help="what an image's superblock says",
                       description="Prints what IMAGE's ext2/3/4 superblock says: the filesystem "
                       "kind, UUID, label, block and inode counts, features, state and times.  "
                       "Exit status 2 if IMAGE is not an ext2/3/4 image.")
    i.add_argument("image", metavar="IMAGE")
    i.set_defaults(func=lambda a: (print(describe(a.image)), 0)[1])
    m = sub.add_parser("materialize", help="make an image's overlay without running anything",
                       description="Makes OVERLAY as `kbox run --root IMAGE --overlay OVERLAY` does on "
                       "its first run (OVERLAY/root: the tree; OVERLAY/kbox-ids: the image's owners and "
                       "modes; OVERLAY/kbox-image: the stamp), or checks that an existing OVERLAY was "
                       "made from IMAGE.  Files the image cannot give (a damaged inode, directory or "
                       "extent tree) are left out with one warning each; exit status 2, with one "
                       "line, when the image cannot be read at all.")
    m.add_argument("image", metavar="IMAGE")
    m.add_argument("overlay", metavar="OVERLAY")
    m.set_defaults(func=cmd_materialize)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])
