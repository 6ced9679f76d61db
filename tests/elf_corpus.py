"""Malformed variants of a good ELF file, for robustness tests of anything that parses ELF.

`corpus(good_bytes)` returns (name, bytes) pairs: truncations at many offsets, flipped
e_ident bytes, wrong e_machine/e_type, absurd e_phoff/e_phnum/e_phentsize, PT_LOAD fields
out of range (p_offset, p_filesz, p_memsz, p_vaddr, p_align), overlapping PT_LOADs, a
PT_INTERP without NUL / outside the file / naming a missing or non-ELF interpreter, a bad
entry point, garbage section headers, a zero-length file, and random byte flips in the
headers with a fixed seed (reproducible). Every name is unique and says what was broken.

Only 64-bit little-endian inputs are mutated field-by-field (all the targets kbox supports);
other inputs still get the truncations and random flips.
"""
from __future__ import annotations

import random
import struct

EHDR64 = struct.Struct("<16sHHIQQQIHHHHHH")
PHDR64 = struct.Struct("<IIQQQQQQ")
PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3

# Offsets of e_* fields in Elf64_Ehdr.
E_TYPE, E_MACHINE, E_ENTRY, E_PHOFF, E_SHOFF = 16, 18, 24, 32, 40
E_PHENTSIZE, E_PHNUM, E_SHENTSIZE, E_SHNUM, E_SHSTRNDX = 54, 56, 58, 60, 62
# Offsets inside Elf64_Phdr.
P_TYPE, P_FLAGS, P_OFFSET, P_VADDR, P_FILESZ, P_MEMSZ, P_ALIGN = 0, 4, 8, 16, 32, 40, 48


def _put(data: bytes, off: int, fmt: str, value: int) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, off, value & ((1 << (8 * struct.calcsize(fmt))) - 1))
    return bytes(b)


def _phdrs(data: bytes) -> list[tuple[int, tuple[int, ...]]]:
    """(file offset of the phdr, its fields) for a 64-bit little-endian ELF.

    Fields: (p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align).
    """
    eh = EHDR64.unpack_from(data, 0)
    phoff, phentsize, phnum = eh[5], eh[9], eh[10]
    return [(phoff + i * phentsize, PHDR64.unpack_from(data, phoff + i * phentsize)) for i in range(phnum)]


def _is_elf64le(data: bytes) -> bool:
    return len(data) >= 64 and data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1


def truncations(data: bytes) -> list[tuple[str, bytes]]:
    cuts = {0, 1, 3, 4, 5, 15, 16, 17, 24, 32, 52, 63, 64, 65, 100, 200, 500, 1000, 4095, 4096}
    if _is_elf64le(data):
        for off, ph in _phdrs(data):
            cuts |= {off + 1, off + 28, off + 55}
            if ph[0] in (PT_LOAD, PT_INTERP, PT_DYNAMIC):
                cuts |= {ph[2] + 1, ph[2] + ph[5] // 2, ph[2] + ph[5] - 1}
    cuts |= {len(data) // 2, len(data) - 1}
    return [(f"truncated-at-{c}", data[:c]) for c in sorted(cuts) if 0 <= c < len(data)]


def ident_flips(data: bytes) -> list[tuple[str, bytes]]:
    out = []
    for i in range(16):
        b = bytearray(data)
        b[i] ^= 0xFF
        out.append((f"e_ident[{i}]-flipped", bytes(b)))
    for i, vals in ((4, (0, 1, 3, 0xFF)), (5, (0, 2, 3)), (6, (0, 2)), (7, (3, 0x61, 0xFF))):
        for v in vals:
            b = bytearray(data)
            b[i] = v
            out.append((f"e_ident[{i}]={v}", bytes(b)))
    return out


def header_fields(data: bytes) -> list[tuple[str, bytes]]:
    """Absurd values in the ELF header."""
    if not _is_elf64le(data):
        return []
    size = len(data)
    cases: list[tuple[str, int, str, int]] = [
        ("e_machine=aarch64", E_MACHINE, "<H", 183),
        ("e_machine=x86_64", E_MACHINE, "<H", 62),
        ("e_machine=i386", E_MACHINE, "<H", 3),
        ("e_machine=0", E_MACHINE, "<H", 0),
        ("e_machine=0xffff", E_MACHINE, "<H", 0xFFFF),
        ("e_type=REL", E_TYPE, "<H", 1),
        ("e_type=CORE", E_TYPE, "<H", 4),
        ("e_type=0", E_TYPE, "<H", 0),
        ("e_type=0xfe00", E_TYPE, "<H", 0xFE00),
        ("e_entry=0", E_ENTRY, "<Q", 0),
        ("e_entry=max", E_ENTRY, "<Q", -1),
        ("e_phoff=max", E_PHOFF, "<Q", -1),
        ("e_phoff=filesize", E_PHOFF, "<Q", size),
        ("e_phoff=filesize-1", E_PHOFF, "<Q", size - 1),
        ("e_phoff=0", E_PHOFF, "<Q", 0),
        ("e_phoff=1", E_PHOFF, "<Q", 1),
        ("e_phoff=2^63", E_PHOFF, "<Q", 1 << 63),
        ("e_phnum=0", E_PHNUM, "<H", 0),
        ("e_phnum=1", E_PHNUM, "<H", 1),
        ("e_phnum=0xffff", E_PHNUM, "<H", 0xFFFF),
        ("e_phnum=1171", E_PHNUM, "<H", 65536 // 56 + 1),
        ("e_phentsize=0", E_PHENTSIZE, "<H", 0),
        ("e_phentsize=32", E_PHENTSIZE, "<H", 32),
        ("e_phentsize=57", E_PHENTSIZE, "<H", 57),
        ("e_phentsize=0xffff", E_PHENTSIZE, "<H", 0xFFFF),
        ("e_shoff=max", E_SHOFF, "<Q", -1),
        ("e_shoff=filesize", E_SHOFF, "<Q", size),
        ("e_shoff=1", E_SHOFF, "<Q", 1),
        ("e_shnum=0xffff", E_SHNUM, "<H", 0xFFFF),
        ("e_shentsize=1", E_SHENTSIZE, "<H", 1),
        ("e_shstrndx=0xfffe", E_SHSTRNDX, "<H", 0xFFFE),
        ("e_shstrndx=0", E_SHSTRNDX, "<H", 0),
    ]
    return [(name, _put(data, off, fmt, val)) for name, off, fmt, val in cases]


def program_headers(data: bytes, fake_interp: str | None = None) -> list[tuple[str, bytes]]:
    """Absurd PT_LOAD / PT_INTERP / PT_DYNAMIC fields; overlapping loads.

    fake_interp, when given, is a path to substitute into PT_INTERP (padded with '/' so its
    length matches): e.g. a non-ELF file, to test interpreter validation.
    """
    if not _is_elf64le(data):
        return []
    out: list[tuple[str, bytes]] = []
    size = len(data)
    loads = [(off, ph) for off, ph in _phdrs(data) if ph[0] == PT_LOAD]
    for n, (off, ph) in enumerate(loads):
        p = f"PT_LOAD[{n}]"
        out += [
            (f"{p}.p_offset=max", _put(data, off + P_OFFSET, "<Q", -1)),
            (f"{p}.p_offset=filesize", _put(data, off + P_OFFSET, "<Q", size)),
            (f"{p}.p_offset+1", _put(data, off + P_OFFSET, "<Q", ph[2] + 1)),
            (f"{p}.p_filesz=max", _put(data, off + P_FILESZ, "<Q", -1)),
            (f"{p}.p_filesz=filesize+1", _put(data, off + P_FILESZ, "<Q", size + 1)),
            (f"{p}.p_filesz>p_memsz", _put(data, off + P_MEMSZ, "<Q", max(0, ph[5] - 1))),
            (f"{p}.p_memsz=max", _put(data, off + P_MEMSZ, "<Q", -1)),
            (f"{p}.p_vaddr=max", _put(data, off + P_VADDR, "<Q", -4096)),
            (f"{p}.p_vaddr=2^47", _put(data, off + P_VADDR, "<Q", 1 << 47)),
            (f"{p}.p_align=3", _put(data, off + P_ALIGN, "<Q", 3)),
            (f"{p}.p_align=0", _put(data, off + P_ALIGN, "<Q", 0)),
            (f"{p}.p_type=0", _put(data, off + P_TYPE, "<I", 0)),
            (f"{p}.p_flags=0", _put(data, off + P_FLAGS, "<I", 0)),
        ]
    if len(loads) >= 2:
        (o0, p0), (o1, p1) = loads[0], loads[1]
        out.append(("PT_LOAD-overlap-same-vaddr",
                    _put(_put(data, o1 + P_VADDR, "<Q", p0[3]), o1 + P_OFFSET, "<Q", p0[2])))
        out.append(("PT_LOAD-overlap-inside", _put(data, o0 + P_MEMSZ, "<Q", p1[3] - p0[3] + 4096)))
        out.append(("PT_LOAD-unsorted", _put(_put(data, o0 + P_VADDR, "<Q", p1[3]), o1 + P_VADDR, "<Q", p0[3])))
    for off, ph in _phdrs(data):
        if ph[0] == PT_INTERP:
            ioff, ilen = ph[2], ph[5]
            b = bytearray(data)
            b[ioff + ilen - 1] = ord("X")
            out.append(("PT_INTERP-no-NUL", bytes(b)))
            b = bytearray(data)
            b[ioff + 1] = 0
            out.append(("PT_INTERP-NUL-inside", bytes(b)))
            out.append(("PT_INTERP-offset=max", _put(data, off + P_OFFSET, "<Q", -1)))
            out.append(("PT_INTERP-offset=filesize", _put(data, off + P_OFFSET, "<Q", size)))
            out.append(("PT_INTERP-filesz=0", _put(data, off + P_FILESZ, "<Q", 0)))
            out.append(("PT_INTERP-filesz=max", _put(data, off + P_FILESZ, "<Q", -1)))
            out.append(("PT_INTERP-filesz=1", _put(data, off + P_FILESZ, "<Q", 1)))
            for label, target in (("missing", "/nonexistent/ld.so"), ("fake", fake_interp)):
                if target is None or len(target) > ilen - 1:
                    continue
                # Pad with slashes: "/etc////passwd" names the same file at the exact length.
                padded = target[0] + "/" * (ilen - 1 - len(target)) + target[1:]
                b = bytearray(data)
                b[ioff: ioff + ilen] = padded.encode() + b"\0"
                out.append((f"PT_INTERP-{label}", bytes(b)))
        elif ph[0] == PT_DYNAMIC:
            out.append(("PT_DYNAMIC-offset=max", _put(data, off + P_OFFSET, "<Q", -1)))
            out.append(("PT_DYNAMIC-filesz=max", _put(data, off + P_FILESZ, "<Q", -1)))
            b = bytearray(data)
            b[ph[2]: ph[2] + min(ph[5], 256)] = bytes([0xFF]) * min(ph[5], 256)
            out.append(("PT_DYNAMIC-garbage", bytes(b)))
    return out


def random_flips(data: bytes, count: int = 200, seed: int = 20240229) -> list[tuple[str, bytes]]:
    """1-4 random bytes of the ELF and program headers replaced; reproducible by seed."""
    rng = random.Random(seed)
    limit = len(data)
    if _is_elf64le(data):
        eh = EHDR64.unpack_from(data, 0)
        limit = min(len(data), max(64, eh[5] + eh[9] * eh[10]))
    limit = max(1, min(limit, len(data)))
    out = []
    for n in range(count):
        b = bytearray(data)
        k = rng.randint(1, 4)
        where = []
        for _ in range(k):
            i = rng.randrange(limit)
            b[i] = rng.randrange(256)
            where.append(i)
        out.append((f"random-{n}-at-{'-'.join(map(str, where))}", bytes(b)))
    return out


def corpus(data: bytes, *, fake_interp: str | None = None, flips: int = 200,
           seed: int = 20240229) -> list[tuple[str, bytes]]:
    """Every malformed variant of `data`; names are unique."""
    out = [("zero-length", b""), ("not-elf-text", b"hello world\n"), ("elf-magic-only", b"\x7fELF")]
    out += truncations(data)
    out += ident_flips(data)
    out += header_fields(data)
    out += program_headers(data, fake_interp)
    out += random_flips(data, flips, seed)
    names = [n for n, _ in out]
    assert len(names) == len(set(names)), "corpus names must be unique"
    return out
