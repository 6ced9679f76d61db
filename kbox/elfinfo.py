"""ELF facts about a program and shell-like validation before kbox runs it.

`inspect(path)` answers "what would execve(2) run, and can kbox run it on this host?":
machine, class, type, static / static-pie / dynamic, PT_INTERP, entry, set[ug]id bits,
loadable and executable segments, DT_NEEDED — following `#!` scripts to the ELF the kernel
would finally load (at most MAX_SHEBANG_DEPTH levels, as binfmt_script allows).

Every problem becomes `kbox.errors.UserError(message, exit_code)` with the exit status a
shell would use: 127 when the program (or its ELF interpreter) does not exist, 126 when it
exists but cannot be executed (permissions, directory, not an ELF, corrupt headers, foreign
architecture). Malformed files are the normal case here (tests feed thousands of mutated
ELFs), so the header checks are our own explicit ones, done before pyelftools is asked
anything, and any exception pyelftools still raises is converted: never a traceback.

`parse_elf(path)` is the structural part alone (no permission, host-architecture or
interpreter-existence checks); `kbox analyze` uses it for foreign-architecture files.
"""
from __future__ import annotations

import itertools
import os
import platform
import stat
import struct
from dataclasses import dataclass, field
from typing import BinaryIO

from elftools.elf.elffile import ELFFile

from kbox.errors import UserError

EXIT_NOT_FOUND = 127
EXIT_CANNOT_EXECUTE = 126

# binfmt_script: the kernel refuses deeper interpreter chains with ELOOP (bprm depth limit).
MAX_SHEBANG_DEPTH = 4
# fs/binfmt_script.c reads at most BINPRM_BUF_SIZE bytes of the `#!` line.
BINPRM_BUF_SIZE = 256
PATH_MAX = 4096
# Lowest user address-space size of the architectures we support (47-bit x86_64 without LA57,
# 48-bit aarch64): a segment ending above it can never be mapped.
TASK_SIZE_MIN = 1 << 47

PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
PF_X, PF_W, PF_R = 1, 2, 4
DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ, DT_SONAME = 0, 1, 5, 10, 14
DT_RPATH, DT_RUNPATH, DT_FLAGS_1 = 15, 29, 0x6FFFFFFB
DF_1_PIE = 0x08000000

# e_machine values kbox knows by its own (uname -m style) name; others use pyelftools' name.
MACHINE_NAMES: dict[str, str] = {
    "EM_X86_64": "x86_64",
    "EM_AARCH64": "aarch64",
    "EM_386": "i386",
    "EM_ARM": "arm",
    "EM_RISCV": "riscv",
    "EM_PPC64": "ppc64",
    "EM_PPC": "ppc",
    "EM_S390": "s390",
    "EM_MIPS": "mips",
    "EM_LOONGARCH": "loongarch",
}
# The kbox tiers exist for these (machine, ELF class) pairs only.
SUPPORTED = {("x86_64", 64), ("aarch64", 64)}
# Debian multiarch triplets, used to find shared libraries and cross sysroots.
TRIPLETS = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}


def host_machine() -> str:
    """The host architecture in ELF-machine terms (`uname -m`)."""
    m = platform.machine()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


@dataclass(frozen=True)
class Segment:
    """One PT_LOAD program header."""

    offset: int
    vaddr: int
    filesz: int
    memsz: int
    flags: int
    align: int

    @property
    def executable(self) -> bool:
        return bool(self.flags & PF_X)

    @property
    def perms(self) -> str:
        return "".join(c if self.flags & bit else "-" for c, bit in (("r", PF_R), ("w", PF_W), ("x", PF_X)))


@dataclass(frozen=True)
class Shebang:
    """One `#!` level: `script` names `interpreter` (with the optional single `arg`)."""

    script: str
    interpreter: str
    arg: str | None


@dataclass(frozen=True)
class ElfInfo:
    path: str                    # the ELF file itself (after following #! scripts)
    machine: str                 # "x86_64", "aarch64", or another name ("arm", "EM_XYZ")
    elfclass: int                # 32 or 64
    little_endian: bool
    etype: str                   # "EXEC" or "DYN"
    linkage: str                 # "static", "static-pie", "dynamic" or "shared-object"
    interpreter: str | None      # PT_INTERP, as written in the file
    entry: int
    setuid: bool
    setgid: bool
    load_segments: tuple[Segment, ...]
    needed: tuple[str, ...] = ()
    soname: str | None = None
    runpath: tuple[str, ...] = ()    # DT_RUNPATH, else DT_RPATH (as written, $ORIGIN unexpanded)
    scripts: tuple[Shebang, ...] = field(default=())  # outermost script first

    @property
    def exec_segments(self) -> tuple[Segment, ...]:
        return tuple(s for s in self.load_segments if s.executable)

    @property
    def is_static(self) -> bool:
        """No dynamic loader runs: static and static-pie both."""
        return self.interpreter is None

    @property
    def is_static_pie(self) -> bool:
        return self.linkage == "static-pie"

    @property
    def triplet(self) -> str | None:
        return TRIPLETS.get(self.machine)

    def to_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "machine": self.machine,
            "class": self.elfclass,
            "endian": "little" if self.little_endian else "big",
            "type": self.etype,
            "linkage": self.linkage,
            "interpreter": self.interpreter,
            "entry": self.entry,
            "setuid": self.setuid,
            "setgid": self.setgid,
            "needed": list(self.needed),
            "exec_segments": [
                {"vaddr": s.vaddr, "memsz": s.memsz, "offset": s.offset, "perms": s.perms}
                for s in self.exec_segments
            ],
            "scripts": [
                {"script": s.script, "interpreter": s.interpreter, "arg": s.arg} for s in self.scripts
            ],
        }


def _fail(display: str, what: str, code: int = EXIT_CANNOT_EXECUTE) -> UserError:
    return UserError(f"kbox: {display}: {what}", code)


def _corrupt(display: str, what: str) -> UserError:
    return _fail(display, f"corrupt ELF: {what}")


def _pread(f: BinaryIO, offset: int, size: int) -> bytes:
    f.seek(offset)
    return f.read(size)


def _machine_name(raw: object) -> str:
    # pyelftools gives "EM_X86_64"-style names for known values and the int otherwise.
    if isinstance(raw, int):
        return f"EM_{raw}"
    return MACHINE_NAMES.get(str(raw), str(raw))


def _vaddr_to_offset(segs: tuple[Segment, ...], vaddr: int) -> int | None:
    for s in segs:
        if s.vaddr <= vaddr < s.vaddr + s.filesz:
            return s.offset + (vaddr - s.vaddr)
    return None


def _read_cstr(f: BinaryIO, offset: int, limit: int, file_size: int) -> str | None:
    if offset < 0 or offset >= file_size:
        return None
    raw = _pread(f, offset, min(limit, file_size - offset))
    end = raw.find(b"\0")
    if end < 0:
        return None
    return raw[:end].decode("utf-8", "surrogateescape")


def _parse_dynamic(
    f: BinaryIO, dyn_off: int, dyn_size: int, elfclass: int, little: bool,
    segs: tuple[Segment, ...], file_size: int,
) -> dict[str, object]:
    """DT_NEEDED, DT_SONAME, DT_RUNPATH/RPATH and DT_FLAGS_1 from PT_DYNAMIC.

    Parsed by hand: pyelftools' DynamicSegment needs section headers or trusts DT_STRTAB
    blindly; here every string read is bounds-checked and a bad entry is just skipped
    (the kernel never reads PT_DYNAMIC; only ld.so does).
    """
    fmt = ("<" if little else ">") + ("qQ" if elfclass == 64 else "iI")
    esize = struct.calcsize(fmt)
    raw = _pread(f, dyn_off, min(dyn_size, file_size - dyn_off))
    entries: list[tuple[int, int]] = []
    for i in range(0, len(raw) - esize + 1, esize):
        tag, val = struct.unpack_from(fmt, raw, i)
        if tag == DT_NULL:
            break
        entries.append((tag, val))
    strtab = next((v for t, v in entries if t == DT_STRTAB), None)
    str_off = _vaddr_to_offset(segs, strtab) if strtab is not None else None
    strsz = next((v for t, v in entries if t == DT_STRSZ), 1 << 20)

    def string(v: int) -> str | None:
        if str_off is None or v >= strsz:
            return None
        return _read_cstr(f, str_off + v, PATH_MAX, file_size)

    needed = tuple(s for t, v in entries if t == DT_NEEDED and (s := string(v)) is not None)
    soname = next((string(v) for t, v in entries if t == DT_SONAME), None)
    runpath_raw = next((string(v) for t, v in entries if t == DT_RUNPATH), None)
    if runpath_raw is None:
        runpath_raw = next((string(v) for t, v in entries if t == DT_RPATH), None)
    flags_1 = next((v for t, v in entries if t == DT_FLAGS_1), 0)
    return {
        "needed": needed,
        "soname": soname,
        "runpath": tuple(p for p in (runpath_raw or "").split(":") if p),
        "pie": bool(flags_1 & DF_1_PIE),
    }


def _parse_open_elf(f: BinaryIO, path: str, display: str, st: os.stat_result) -> ElfInfo:
    file_size = st.st_size
    ident = _pread(f, 0, 16)
    if len(ident) < 4 or ident[:4] != b"\x7fELF":
        raise _fail(display, "cannot execute: not an ELF executable")
    if len(ident) < 16:
        raise _corrupt(display, f"file is {file_size} bytes, too short for e_ident")
    if ident[4] not in (1, 2):
        raise _corrupt(display, f"invalid EI_CLASS {ident[4]}")
    if ident[5] not in (1, 2):
        raise _corrupt(display, f"invalid EI_DATA {ident[5]}")
    elfclass = 32 if ident[4] == 1 else 64
    little = ident[5] == 1
    ehsize, phentsize = (52, 32) if elfclass == 32 else (64, 56)
    if file_size < ehsize:
        raise _corrupt(display, f"file is {file_size} bytes, ELF header needs {ehsize}")

    elf = ELFFile(f)
    h = elf.header
    etype = str(h["e_type"])
    machine = _machine_name(h["e_machine"])
    if etype not in ("ET_EXEC", "ET_DYN"):
        kind = {"ET_REL": "a relocatable object", "ET_CORE": "a core dump"}.get(etype, f"ELF type {etype}")
        raise _fail(display, f"cannot execute: {kind}, not an executable")
    if h["e_phentsize"] != phentsize:
        raise _corrupt(display, f"e_phentsize {h['e_phentsize']}, expected {phentsize}")
    phnum, phoff = h["e_phnum"], h["e_phoff"]
    # fs/binfmt_elf.c: at most 64 KiB of program headers, at least one.
    if phnum < 1 or phnum * phentsize > 65536:
        raise _corrupt(display, f"e_phnum {phnum} out of range")
    if phoff >= file_size or phoff + phnum * phentsize > file_size:
        raise _corrupt(display, f"program headers at {phoff:#x} (x{phnum}) beyond end of file ({file_size} bytes)")

    loads: list[Segment] = []
    interp_ph: tuple[int, int] | None = None
    dyn_ph: tuple[int, int] | None = None
    for i in range(phnum):
        # Parse the header alone: ELFFile.get_segment(PT_DYNAMIC) walks section headers,
        # which the kernel never reads and which may be garbage in a runnable file.
        ph = elf.structs.Elf_Phdr.parse(_pread(f, phoff + i * phentsize, phentsize))
        ptype = ph["p_type"]
        off, filesz, memsz, vaddr = ph["p_offset"], ph["p_filesz"], ph["p_memsz"], ph["p_vaddr"]
        if ptype == "PT_LOAD":
            align = ph["p_align"]
            if off + filesz > file_size:
                raise _corrupt(display, f"PT_LOAD #{i} (offset {off:#x}, size {filesz:#x}) extends past end of file")
            if filesz > memsz:
                raise _corrupt(display, f"PT_LOAD #{i} has p_filesz {filesz:#x} > p_memsz {memsz:#x}")
            if vaddr + memsz > TASK_SIZE_MIN or vaddr + memsz < vaddr:
                raise _corrupt(display, f"PT_LOAD #{i} at {vaddr:#x} (+{memsz:#x}) is outside the user address space")
            if align & (align - 1):
                raise _corrupt(display, f"PT_LOAD #{i} p_align {align:#x} is not a power of two")
            # mmap needs file offset and address congruent modulo the page size.
            if (vaddr - off) % 4096:
                raise _corrupt(display, f"PT_LOAD #{i} vaddr {vaddr:#x} and offset {off:#x} differ modulo the page size")
            loads.append(Segment(off, vaddr, filesz, memsz, ph["p_flags"], align))
        elif ptype == "PT_INTERP" and interp_ph is None:   # the kernel uses the first one
            if off + filesz > file_size or filesz == 0:
                raise _corrupt(display, "PT_INTERP outside the file")
            if filesz > PATH_MAX:
                raise _corrupt(display, f"PT_INTERP of {filesz} bytes is longer than PATH_MAX")
            interp_ph = (off, filesz)
        elif ptype == "PT_DYNAMIC":
            if off + filesz > file_size:
                raise _corrupt(display, "PT_DYNAMIC outside the file")
            dyn_ph = (off, filesz)

    if not loads:
        raise _corrupt(display, "no PT_LOAD segment")
    # The ELF spec requires PT_LOAD sorted by address; overlap would let a later mapping
    # silently replace part of an earlier one.
    for a, b in itertools.pairwise(loads):
        if b.vaddr < a.vaddr + a.memsz:
            raise _corrupt(display, f"overlapping PT_LOAD segments at {a.vaddr:#x} and {b.vaddr:#x}")
    segs = tuple(loads)
    entry = h["e_entry"]

    interpreter = None
    if interp_ph is not None:
        raw = _pread(f, *interp_ph)
        # binfmt_elf: the string must end in NUL exactly at p_filesz.
        if raw[-1:] != b"\0" or b"\0" in raw[:-1] or len(raw) < 2:
            raise _corrupt(display, "PT_INTERP is not a NUL-terminated path")
        interpreter = raw[:-1].decode("utf-8", "surrogateescape")

    dyn: dict[str, object] = {"needed": (), "soname": None, "runpath": (), "pie": False}
    if dyn_ph is not None and dyn_ph[1] > 0:
        dyn = _parse_dynamic(f, dyn_ph[0], dyn_ph[1], elfclass, little, segs, file_size)

    if interpreter is not None:
        linkage = "dynamic"
    elif etype == "ET_EXEC":
        linkage = "static"
    elif dyn["pie"] or (dyn["soname"] is None and entry != 0):
        linkage = "static-pie"
    else:
        linkage = "shared-object"

    if linkage != "shared-object" and not any(
        s.executable and s.vaddr <= entry < s.vaddr + s.memsz for s in segs
    ):
        raise _corrupt(display, f"entry point {entry:#x} is not in an executable segment")

    return ElfInfo(
        path=path,
        machine=machine,
        elfclass=elfclass,
        little_endian=little,
        etype=etype[3:],
        linkage=linkage,
        interpreter=interpreter,
        entry=entry,
        setuid=bool(st.st_mode & stat.S_ISUID),
        # S_ISGID without group execute means mandatory locking, not setgid (execve ignores it).
        setgid=bool(st.st_mode & stat.S_ISGID) and bool(st.st_mode & stat.S_IXGRP),
        load_segments=segs,
        needed=tuple(dyn["needed"]),  # type: ignore[arg-type]
        soname=dyn["soname"],  # type: ignore[arg-type]
        runpath=tuple(dyn["runpath"]),  # type: ignore[arg-type]
    )


def _stat_existing(path: str, display: str) -> os.stat_result:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise _fail(display, "No such file or directory", EXIT_NOT_FOUND) from None
    except NotADirectoryError:
        raise _fail(display, "Not a directory", EXIT_CANNOT_EXECUTE) from None
    except OSError as exc:
        raise _fail(display, exc.strerror or str(exc), EXIT_CANNOT_EXECUTE) from None
    if stat.S_ISDIR(st.st_mode):
        raise _fail(display, "Is a directory")
    return st


def parse_elf(path: str, *, display: str | None = None) -> ElfInfo:
    """Structural facts of one ELF file, validated; no host or permission checks."""
    display = display or path
    st = _stat_existing(path, display)
    if not stat.S_ISREG(st.st_mode):
        raise _fail(display, "cannot execute: not a regular file")
    try:
        with open(path, "rb") as f:
            return _parse_open_elf(f, path, display, st)
    except UserError:
        raise
    except OSError as exc:
        raise _fail(display, exc.strerror or str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - pyelftools/construct raise many types on bad input
        raise _corrupt(display, f"{type(exc).__name__}: {exc}".splitlines()[0][:200]) from None


def _read_shebang(path: str, display: str) -> tuple[str, str | None] | None:
    """(interpreter, arg) if the file starts with `#!`, parsed like fs/binfmt_script.c."""
    try:
        with open(path, "rb") as f:
            head = f.read(BINPRM_BUF_SIZE)
    except OSError as exc:
        raise _fail(display, exc.strerror or str(exc)) from None
    if not head.startswith(b"#!"):
        return None
    line = head[2:].split(b"\n", 1)[0]
    line = line.strip(b" \t")
    parts = line.split(None, 1)
    if not parts:
        raise _fail(display, "cannot execute: empty #! interpreter line")
    interp = parts[0].decode("utf-8", "surrogateescape")
    arg = parts[1].strip(b" \t").decode("utf-8", "surrogateescape") if len(parts) > 1 else None
    return interp, (arg or None)


def _check_executable(path: str, display: str, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise _fail(display, "Permission denied")
    # access(X_OK) as root succeeds if any x bit is set, exactly execve's rule.
    if not os.access(path, os.X_OK):
        raise _fail(display, "Permission denied")


def inspect(
    path: str, *, check_runnable: bool = True, host: str | None = None, display: str | None = None,
) -> ElfInfo:
    """Facts about the ELF execve(path) would run, validated like a shell would.

    With check_runnable (the default) the file must be executable, an ELF for `host`
    (default: this machine) of a class kbox supports, with an existing and valid PT_INTERP.
    `#!` scripts are followed to their interpreter (recursively, MAX_SHEBANG_DEPTH).
    """
    display = display or path
    host = host or host_machine()
    scripts: list[Shebang] = []
    current, current_display = path, display
    while True:
        st = _stat_existing(current, current_display)
        if check_runnable:
            _check_executable(current, current_display, st)
        bang = _read_shebang(current, current_display) if stat.S_ISREG(st.st_mode) else None
        if bang is None:
            break
        interp, arg = bang
        scripts.append(Shebang(current, interp, arg))
        if len(scripts) > MAX_SHEBANG_DEPTH:
            raise _fail(display, f"cannot execute: more than {MAX_SHEBANG_DEPTH} levels of #! interpreters")
        if not os.path.exists(interp):
            # bash: "bad interpreter: No such file or directory", exit 126 for scripts.
            raise _fail(current_display, f"{interp}: bad interpreter: No such file or directory")
        current, current_display = interp, interp

    info = parse_elf(current, display=current_display)
    if check_runnable:
        _check_runnable(info, current_display, host)
    if scripts:
        info = _with_scripts(info, tuple(scripts))
    return info


def _with_scripts(info: ElfInfo, scripts: tuple[Shebang, ...]) -> ElfInfo:
    from dataclasses import replace

    return replace(info, scripts=scripts)


def _check_runnable(info: ElfInfo, display: str, host: str) -> None:
    if info.machine != host:
        raise _fail(display, f"cannot execute: is an {info.machine} executable; this host is {host}")
    if (info.machine, info.elfclass) not in SUPPORTED:
        raise _fail(display, f"cannot execute: {info.elfclass}-bit {info.machine} executables are not supported")
    if info.linkage == "shared-object" and info.entry == 0:
        raise _fail(display, "cannot execute: a shared library without an entry point")
    if info.interpreter is None:
        return
    interp = info.interpreter
    if not os.path.exists(interp):
        raise _fail(display, f"cannot execute: interpreter {interp} not found", EXIT_NOT_FOUND)
    ld = parse_elf(interp, display=f"{display}: interpreter {interp}")
    if (ld.machine, ld.elfclass) != (info.machine, info.elfclass):
        raise _fail(display, f"cannot execute: interpreter {interp} is a {ld.elfclass}-bit {ld.machine} file")
    if ld.entry == 0:
        raise _fail(display, f"cannot execute: interpreter {interp} has no entry point")


def exec_argv(info: ElfInfo, argv: list[str]) -> list[str]:
    """The argv the kernel hands the final ELF after following `#!` lines (binfmt_script)."""
    out = list(argv)
    for bang in info.scripts:
        # Each level replaces argv[0] with interpreter [arg] script; outermost first.
        out = [bang.interpreter, *([bang.arg] if bang.arg else []), bang.script, *out[1:]]
    return out


def resolve_program(name: str, path_env: str | None = None) -> str:
    """Find `name` like a shell: names with a slash are used as is, others searched in PATH.

    A found-but-not-executable candidate is remembered so the error is "Permission denied"
    (126) instead of "command not found" (127), as bash does.
    """
    if not name:
        raise UserError("kbox: : command not found", EXIT_NOT_FOUND)
    if "/" in name:
        return name
    if path_env is None:
        path_env = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
    denied: str | None = None
    for d in path_env.split(":"):
        cand = os.path.join(d or ".", name)
        try:
            st = os.stat(cand)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        if os.access(cand, os.X_OK):
            return cand
        denied = denied or cand
    if denied is not None:
        raise _fail(denied, "Permission denied")
    raise UserError(f"kbox: {name}: command not found", EXIT_NOT_FOUND)
