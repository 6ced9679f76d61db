"""Where one ELF file makes system calls: every syscall instruction in its code, with the
number it loads, its class, and whether it straddles a page or creates a task.

capstone sweeps every executable section (executable segment when there are no section
headers) and reports each syscall instruction of the file's ISA (kbox/isa.py): x86_64
`syscall` (0f 05), `sysenter` (0f 34), `int 0x80`; aarch64 `svc`.

Instruction boundaries: the sweep restarts at every function start it knows (.symtab or
.dynsym symbols, their ends, aarch64 `$x`/`$d` mapping symbols, and the FDE table of
PT_GNU_EH_FRAME, which stripped binaries still carry), so data between functions cannot
desynchronise the decoding of the next function; an undecodable byte makes the sweep resync
one byte (x86) or one word (aarch64) later. Only regions whose bytes contain a candidate
encoding are disassembled, which keeps /usr/bin/python3 plus libc well under a second.

Per site: address, containing symbol (+offset), the syscall number when a constant is
loaded into eax/rax (x8/w8) on the straight-line path just before it, its class, whether the
instruction straddles a page boundary, and whether it is fork/vfork/clone/clone3.
Classes: WRAPPER is `mov $nr,%eax; syscall; ret` (`mov x8,#nr; svc #0; ret`), optionally
with glibc's error check (`cmp $-4095,%rax; jae` / `cmp $-4096,%rax; ja`; aarch64
`cmn x0,#1,lsl #12; b.hi`) between the syscall and the ret: a site whose bytes hold the
whole call. Everything else is COMPLEX.
"""
from __future__ import annotations

import bisect
import hashlib
import itertools
import struct
from dataclasses import dataclass, field, replace
from typing import Any

import capstone
from elftools.elf.elffile import ELFFile

from kbox.elfinfo import ElfInfo, parse_elf
from kbox.isa import Insn, Isa, branch_targets, disassembler, isa_for
from kbox.sysnames import SYSCALL_NAMES

PAGE_SIZE = 4096  # the smallest page size of both architectures; straddling is judged on it

WRAPPER, COMPLEX = "WRAPPER", "COMPLEX"

# Syscalls that create a task: these cannot simply run inside a SIGSYS handler.
TASK_CREATING = ("fork", "vfork", "clone", "clone3")
# Names by syscall ABI. `int 0x80`/`sysenter` in 64-bit code use the i386 table, which the
# core has none of (such sites are rewrite blockers); only its task-creating calls matter.
NR_NAMES: dict[str, dict[int, str]] = {
    **SYSCALL_NAMES,
    "i386": {2: "fork", 190: "vfork", 120: "clone", 435: "clone3"},
}


# ---------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Site:
    addr: int
    offset: int               # file offset of the instruction
    size: int
    insn: str                 # "syscall", "sysenter", "int 0x80", "svc #0"
    symbol: str | None
    symbol_offset: int
    nr: int | None
    kind: str                 # WRAPPER or COMPLEX
    straddles: bool
    abi: str                  # which syscall table nr refers to ("x86_64", "aarch64", "i386")

    @property
    def fork_clone(self) -> str | None:
        name = self.nr_name
        return name if name in TASK_CREATING else None

    @property
    def nr_name(self) -> str | None:
        return NR_NAMES.get(self.abi, {}).get(self.nr) if self.nr is not None else None

    @property
    def where(self) -> str:
        if self.symbol is None:
            return f"{self.addr:#x}"
        return f"{self.addr:#x} <{self.symbol}+{self.symbol_offset}>"

    def to_dict(self) -> dict[str, Any]:
        return {
            "addr": self.addr, "offset": self.offset, "size": self.size, "insn": self.insn,
            "symbol": self.symbol, "symbol_offset": self.symbol_offset, "nr": self.nr,
            "nr_name": self.nr_name, "class": self.kind, "straddles": self.straddles,
            "fork_clone": self.fork_clone, "abi": self.abi,
        }


@dataclass
class ObjectReport:
    path: str
    role: str                 # "main", "interpreter" or "libc"
    info: ElfInfo
    sites: list[Site] = field(default_factory=list)
    sections_used: bool = False   # False: swept whole executable segments
    boundaries: int = 0           # how many known instruction-boundary points guided the sweep
    bytes_scanned: int = 0
    resyncs: int = 0

    @property
    def wrappers(self) -> list[Site]:
        return [s for s in self.sites if s.kind == WRAPPER]

    @property
    def complex(self) -> list[Site]:
        return [s for s in self.sites if s.kind == COMPLEX]

    @property
    def straddling(self) -> list[Site]:
        return [s for s in self.sites if s.straddles]

    @property
    def fork_sites(self) -> list[Site]:
        return [s for s in self.sites if s.fork_clone]

    def find(self, symbol: str) -> list[Site]:
        return [s for s in self.sites if s.symbol == symbol]

    def to_dict(self, all_sites: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "path": self.path, "role": self.role, "machine": self.info.machine,
            "sections_used": self.sections_used, "boundaries": self.boundaries,
            "bytes_scanned": self.bytes_scanned, "resyncs": self.resyncs,
            "counts": {
                "sites": len(self.sites), "wrapper": len(self.wrappers), "complex": len(self.complex),
                "straddling": len(self.straddling), "fork_clone": len(self.fork_sites),
                "unknown_nr": sum(1 for s in self.sites if s.nr is None),
            },
            "straddling": [s.to_dict() for s in self.straddling],
            "fork_clone": [s.to_dict() for s in self.fork_sites],
        }
        if all_sites:
            d["sites"] = [s.to_dict() for s in self.sites]
        return d


# ---------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------

def _sweep(md: capstone.Cs, buf: memoryview, base: int, limit: int, step: int) -> tuple[list[Insn], int]:
    """Linear sweep of buf[:limit] (buf may extend past limit so the last insn completes)."""
    out: list[Insn] = []
    off, resyncs = 0, 0
    while off < limit:
        end = off
        # bytes: Debian's capstone 4 binding refuses a memoryview.
        for ins in md.disasm_lite(bytes(buf[off:]), base + off):
            if ins[0] - base >= limit:
                break
            out.append(ins)
            end = ins[0] + ins[1] - base
        if end >= limit:
            break
        # disasm_lite stopped at an undecodable byte: skip it and resynchronise.
        off = (max(off, end)) + step
        resyncs += 1
    return out, resyncs


# ---------------------------------------------------------------------------------------
# Boundaries: symbols, mapping symbols, FDEs
# ---------------------------------------------------------------------------------------

@dataclass
class _Symbols:
    starts: list[int] = field(default_factory=list)    # sorted function starts
    names: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    data_starts: set[int] = field(default_factory=set)  # aarch64 $d: data, not code
    code_starts: set[int] = field(default_factory=set)  # aarch64 $x
    full: bool = False            # from .symtab: every function is named, so gaps are not code

    def lookup(self, addr: int) -> tuple[str | None, int]:
        i = bisect.bisect_right(self.starts, addr) - 1
        if i < 0:
            return None, 0
        start, size = self.starts[i], self.sizes[i]
        if size and addr >= start + size:
            return None, 0
        if not size and addr - start > 0x10000:   # unsized symbol: don't claim far addresses
            return None, 0
        return self.names[i], addr - start


_BIND_RANK = {1: 0, 2: 1, 0: 2}   # GLOBAL, WEAK, LOCAL: prefer the public name of an alias set


def _name_rank(name: str, bind: int) -> tuple[int, int, int, str]:
    # Among aliases prefer the public spelling (getpid over __getpid), then global binding,
    # then the most specific (longest) name: __open64_nocancel over __open_nocancel.
    stripped = len(name) - len(name.lstrip("_"))
    return (stripped, _BIND_RANK.get(bind, 3), -len(name), name)


def _read_symbols(elf: ELFFile, info: ElfInfo, isa: Isa) -> _Symbols:
    """Function symbols from .symtab (else .dynsym), parsed with struct for speed."""
    best: dict[int, tuple[tuple[int, int, int, str], str, int]] = {}
    syms = _Symbols()
    little = info.little_endian
    fmt = ("<" if little else ">") + ("IBBHQQ" if info.elfclass == 64 else "IIIBBH")
    for secname in (".symtab", ".dynsym"):
        sec = elf.get_section_by_name(secname)
        if sec is None or sec["sh_entsize"] != struct.calcsize(fmt):
            continue
        strsec = elf.get_section(sec["sh_link"])
        strtab = strsec.data()
        data = sec.data()
        data = data[: len(data) - len(data) % struct.calcsize(fmt)]
        for ent in struct.iter_unpack(fmt, data):
            if info.elfclass == 64:
                name_off, st_info, _, shndx, value, size = ent
            else:
                name_off, value, size, st_info, _, shndx = ent
            if shndx == 0 or name_off >= len(strtab):
                continue
            end = strtab.find(b"\0", name_off)
            name = strtab[name_off:end].decode("utf-8", "replace")
            stype, bind = st_info & 0xF, st_info >> 4
            if isa.mapping_symbols and name.startswith("$"):
                (syms.data_starts if name.startswith("$d") else syms.code_starts).add(value)
                continue
            if stype not in (2, 10) or value == 0:     # STT_FUNC, STT_GNU_IFUNC
                continue
            rank = _name_rank(name, bind)
            cur = best.get(value)
            if cur is None or rank < cur[0]:
                best[value] = (rank, name, max(size, cur[2] if cur else 0))
        if best:
            syms.full = secname == ".symtab"
            break       # .symtab is a superset of .dynsym when present
    for addr in sorted(best):
        _, name, size = best[addr]
        syms.starts.append(addr)
        syms.names.append(name)
        syms.sizes.append(size)
    return syms


_DW_EH_PE = {0x03: "<I", 0x0B: "<i", 0x04: "<Q", 0x0C: "<q", 0x02: "<H", 0x0A: "<h"}


def _fde_starts(f_bytes: bytes, info: ElfInfo, eh_off: int, eh_vaddr: int, eh_size: int) -> list[int]:
    """Function starts from .eh_frame_hdr's binary-search table (present even when stripped)."""
    hdr = f_bytes[eh_off: eh_off + eh_size]
    if len(hdr) < 12 or hdr[0] != 1:
        return []
    ptr_enc, cnt_enc, tab_enc = hdr[1], hdr[2], hdr[3]
    end = "<" if info.little_endian else ">"
    pos = 4
    fmt = _DW_EH_PE.get(ptr_enc & 0x0F)
    if fmt is None or (cnt_enc & 0x0F) not in _DW_EH_PE or tab_enc != 0x3B:
        return []     # only the universal encoding (datarel|sdata4) is worth supporting
    pos += struct.calcsize(fmt)
    cfmt = end + _DW_EH_PE[cnt_enc & 0x0F][1]
    count = struct.unpack_from(cfmt, hdr, pos)[0]
    pos += struct.calcsize(cfmt)
    count = min(count, (len(hdr) - pos) // 8)
    vals = struct.unpack_from(end + "i" * (2 * count), hdr, pos)
    return [eh_vaddr + v for v in vals[0::2]]


# ---------------------------------------------------------------------------------------
# One object
# ---------------------------------------------------------------------------------------

def _code_ranges(elf: ELFFile | None, info: ElfInfo) -> tuple[list[tuple[int, int, int]], bool]:
    """(vaddr, file offset, size) of executable code; sections when trustworthy."""
    ranges: list[tuple[int, int, int]] = []
    if elf is not None:
        try:
            for sec in elf.iter_sections():
                if not (sec["sh_flags"] & 0x4) or sec["sh_type"] == "SHT_NOBITS":   # SHF_EXECINSTR
                    continue
                addr, size = sec["sh_addr"], sec["sh_size"]
                for seg in info.exec_segments:
                    if seg.vaddr <= addr and addr + size <= seg.vaddr + seg.filesz:
                        ranges.append((addr, seg.offset + addr - seg.vaddr, size))
                        break
        except Exception:  # noqa: BLE001 - corrupt section headers: fall back to segments
            ranges = []
    if ranges:
        return sorted(ranges), True
    return [(s.vaddr, s.offset, s.filesz) for s in info.exec_segments], False


# Analysis results keyed by file content: one process analysing many programs (the tests,
# any caller of kbox.analyze.analyze in a loop) reuses its libc and ld.so results.
# Not keyed by inode+mtime: timestamps are jiffy-coarse and inodes are reused, so a file
# rewritten in place could be mistaken for its predecessor.
_OBJECT_CACHE: dict[bytes, ObjectReport] = {}


def analyze_object(path: str, role: str, info: ElfInfo | None = None) -> ObjectReport:
    """Sites of one ELF file. The result may be shared with other callers: treat as read-only."""
    with open(path, "rb") as fh:
        key = hashlib.blake2b(fh.read(), digest_size=20).digest()
    cached = _OBJECT_CACHE.get(key)
    if cached is not None:
        return replace(cached, path=path, role=role, info=info or cached.info)
    rep = _analyze_object(path, role, info or parse_elf(path))
    if len(_OBJECT_CACHE) > 64:
        _OBJECT_CACHE.clear()
    _OBJECT_CACHE[key] = rep
    return rep


def clear_cache() -> None:
    _OBJECT_CACHE.clear()


def _analyze_object(path: str, role: str, info: ElfInfo) -> ObjectReport:
    isa = isa_for(info.machine)
    md = disassembler(info.machine)
    with open(path, "rb") as fh:
        data = fh.read()
        elf: ELFFile | None
        try:
            fh.seek(0)
            elf = ELFFile(fh)
            ranges, used_sections = _code_ranges(elf, info)
            syms = _read_symbols(elf, info, isa) if used_sections else _Symbols()
        except Exception:  # noqa: BLE001 - pyelftools on odd files: sweep segments, no symbols
            elf = None
            ranges, used_sections = _code_ranges(None, info)
            syms = _Symbols()

    rep = ObjectReport(path=path, role=role, info=info, sections_used=used_sections)
    fde: list[int] = []
    eh = _find_eh_frame_hdr(data, info)
    if eh is not None:
        try:
            fde = _fde_starts(data, info, *eh)
        except struct.error:
            fde = []
    # Hard points are certain instruction starts (function symbols, $x); soft points (FDE
    # starts, symbol ends) usually are, but not always: glibc's FDE for __restore_rt starts
    # one byte early on purpose (unwinders look up return address - 1).
    fde_set = set(fde)
    hard = set(syms.starts) | syms.code_starts | syms.data_starts
    soft = ({s + z for s, z in zip(syms.starts, syms.sizes) if z} | set(fde)) - hard
    mv = memoryview(data)
    for vaddr, off, size in ranges:
        inside = sorted(p for p in hard | soft if vaddr < p < vaddr + size)
        rep.boundaries += len(inside)
        cuts = [vaddr, *inside, vaddr + size]
        for k, (start, end) in enumerate(itertools.pairwise(cuts)):
            if start in syms.data_starts:
                continue                            # aarch64 literal pool / jump table
            if syms.full and not _is_code(start, syms, fde_set):
                continue                            # padding or data between functions
            o = off + (start - vaddr)
            n = end - start
            rep.bytes_scanned += n
            # A syscall instruction's bytes lie in [start, end + overhang].
            if not isa.candidates.search(data, o, o + n + isa.overhang):
                continue
            insns, rs = _sweep(md, mv[o: min(len(data), o + n + 15)], start, n, isa.step)
            if k > 0 and start in soft and cuts[k - 1] not in syms.data_starts:
                # Prefer the fall-through decoding from the previous boundary when it is
                # clean: it is what the CPU executes, and it gives the backward scan context.
                ps = cuts[k - 1]
                po = off + (ps - vaddr)
                prev, prs = _sweep(md, mv[po: min(len(data), po + (end - ps) + 15)], ps, end - ps,
                                   isa.step)
                if prs == 0 or (rs > 0 and not _resync_before(prev, start)):
                    insns, rs = prev, 0
            rep.resyncs += rs
            _collect_sites(rep, insns, syms, isa, vaddr - off, start)
    rep.sites.sort(key=lambda s: s.addr)
    return rep


def _find_eh_frame_hdr(data: bytes, info: ElfInfo) -> tuple[int, int, int] | None:
    # PT_GNU_EH_FRAME = 0x6474e550; read from the program headers directly (no sections needed).
    try:
        little = info.little_endian
        e = "<" if little else ">"
        if info.elfclass == 64:
            phoff, = struct.unpack_from(e + "Q", data, 0x20)
            phentsize, phnum = struct.unpack_from(e + "HH", data, 0x36)
            for i in range(phnum):
                p = phoff + i * phentsize
                ptype, _, off, vaddr, _, filesz = struct.unpack_from(e + "IIQQQQ", data, p)
                if ptype == 0x6474E550:
                    return off, vaddr, filesz
    except struct.error:
        return None
    return None


def _is_code(addr: int, syms: _Symbols, fde: set[int]) -> bool:
    """With a full .symtab, is a region starting at addr inside some function?"""
    if addr in fde or addr in syms.code_starts:
        return True
    i = bisect.bisect_right(syms.starts, addr) - 1
    if i < 0:
        return False
    start, size = syms.starts[i], syms.sizes[i]
    return addr == start or addr < start + size


def _resync_before(insns: list[Insn], point: int) -> bool:
    """Did the sweep skip bytes before `point` (a gap between consecutive instructions)?"""
    for a, b in itertools.pairwise(insns):
        if b[0] >= point:
            return False
        if a[0] + a[1] != b[0]:
            return True
    return False


def _collect_sites(
    rep: ObjectReport, insns: list[Insn], syms: _Symbols, isa: Isa, delta: int, first: int,
) -> None:
    targets: set[int] | None = None
    for idx, (addr, size, mn, op) in enumerate(insns):
        if addr < first:
            continue            # context decoded from the previous region; reported there
        found = isa.syscall(mn, op)
        if found is None:
            continue
        insn, abi = found
        if targets is None:
            targets = branch_targets(isa, insns)
        nr, setter = isa.find_nr(insns, idx, targets)
        wrapper = isa.is_wrapper(insns, idx, setter, targets)
        sym, symoff = syms.lookup(addr)
        rep.sites.append(Site(
            addr=addr, offset=addr - delta, size=size, insn=insn, symbol=sym, symbol_offset=symoff,
            nr=nr, kind=WRAPPER if wrapper else COMPLEX,
            straddles=(addr % PAGE_SIZE) + size > PAGE_SIZE, abi=abi,
        ))
