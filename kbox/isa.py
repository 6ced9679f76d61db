"""What the site scan (kbox/sitescan.py) needs to know of each instruction set, one record
per ISA: how to find candidate bytes, decode, recognise a syscall instruction, find the
syscall number loaded before it, tell a wrapper from complex code, and follow branches.

The decoders work on capstone's `disasm_lite` tuples (address, size, mnemonic, operands):
its text operands are enough for these checks and decoding is several times faster than
with instruction details.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import capstone

from kbox.errors import UserError

Insn = tuple[int, int, str, str]  # (address, size, mnemonic, op_str) from disasm_lite
# (nr, index of the instruction that set it) for the syscall at insns[idx]; (None, None)
# when the number is not a constant on the straight-line path before it.
NrFinder = Callable[[list[Insn], int, set[int]], tuple[int | None, int | None]]


@dataclass(frozen=True)
class Isa:
    machine: str
    cs_arch: int
    cs_mode: int
    # Bytes a syscall instruction is encoded as: only regions containing one are decoded.
    candidates: re.Pattern[bytes]
    # How far past a region's end a candidate may reach (x86's `0f 05` can start at its
    # last byte; aarch64's 4-byte words never cross a boundary).
    overhang: int
    # How far the sweep skips an undecodable byte: one byte (x86) or one word (aarch64).
    step: int
    # (mnemonic, operands) -> (instruction as reported, syscall ABI its number belongs to),
    # None for anything that is not a syscall instruction.
    syscall: Callable[[str, str], tuple[str, str] | None]
    find_nr: NrFinder
    # Is the syscall at insns[idx] (number set by insns[setter]) a wrapper: set nr, trap,
    # optionally glibc's error check, ret?
    is_wrapper: Callable[[list[Insn], int, int | None, set[int]], bool]
    # The constant target of a direct branch, else None.
    branch_target: Callable[[str, str], int | None]
    # $x/$d mapping symbols mark code and data (literal pools, jump tables) in .symtab.
    mapping_symbols: bool


def _imm(text: str) -> int | None:
    t = text.strip().lstrip("#")
    try:
        return int(t, 0)
    except ValueError:
        return None


def _split_ops(op: str) -> list[str]:
    # Operands are comma-separated; commas also occur inside [] (aarch64 memory operands).
    out: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in op:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if cur:
        out.append("".join(cur).strip())
    return out


def _returns_next(insns: list[Insn], idx: int,
                  error_check: Callable[[str, list[str], str], bool]) -> bool:
    """Does `ret` follow the syscall at insns[idx], at once or after libc's error check (a
    compare and a conditional branch, as `error_check(mnemonic, operands, branch)` knows it)?"""
    rest = insns[idx + 1: idx + 4]
    if rest and rest[0][2] == "ret":
        return True
    if len(rest) == 3 and rest[2][2] == "ret":
        (_, _, m1, o1), (_, _, m2, _), _ = rest
        return error_check(m1, _split_ops(o1), m2)
    return False


# -- x86_64 ------------------------------------------------------------------------------

_X86_RAX = {"rax", "eax", "ax", "al", "ah"}
_X86_IMPLICIT_RAX = {
    "cpuid", "rdtsc", "rdtscp", "rdpid", "mul", "div", "idiv", "cbw", "cwde", "cdqe", "cwd", "cdq",
    "cqo", "lodsb", "lodsw", "lodsd", "lodsq", "xgetbv", "rdpkru", "lahf", "in", "cmpxchg",
    "cmpxchg8b", "cmpxchg16b", "syscall", "sysenter", "int", "scasb", "rdrand", "rdseed",
}
_X86_NOWRITE_FIRST = {"cmp", "test", "bt", "push", "ptest", "ucomiss", "ucomisd", "comiss", "comisd"}
_X86_STOP = {"jmp", "ret", "retf", "call", "ljmp", "lcall", "iretq", "iret", "ud2", "hlt", "int3"}


def _x86_syscall(mn: str, op: str) -> tuple[str, str] | None:
    if mn == "syscall":
        return "syscall", "x86_64"
    if mn == "sysenter":
        return "sysenter", "i386"
    if mn == "int" and _imm(op) == 0x80:
        return "int 0x80", "i386"
    return None


def _x86_nr(insns: list[Insn], idx: int, targets: set[int]) -> tuple[int | None, int | None]:
    for j in range(idx - 1, max(-1, idx - 24), -1):
        if insns[j + 1][0] in targets:
            return None, None            # another path joins after this point
        _, _, mn, op = insns[j]
        if mn in _X86_STOP:
            return None, None
        if mn in _X86_IMPLICIT_RAX:
            return None, None
        ops = _split_ops(op)
        if mn in ("xchg", "xadd") and any(o in _X86_RAX for o in ops):
            return None, None
        if mn == "imul" and len(ops) == 1:
            return None, None
        if not ops or ops[0] not in _X86_RAX or mn in _X86_NOWRITE_FIRST:
            continue
        if ops[0] in ("eax", "rax") and len(ops) == 2:
            if mn == "mov":
                v = _imm(ops[1])
                return (v & 0xFFFFFFFF if v is not None else None), (j if v is not None else None)
            if mn in ("xor", "sub") and ops[1] == ops[0]:
                return 0, j
        return None, None
    return None, None


def _x86_is_wrapper(insns: list[Insn], idx: int, setter: int | None, targets: set[int]) -> bool:
    # Only `syscall` is patched: the 32-bit entries are rewrite blockers, never wrappers.
    if insns[idx][2] != "syscall" or setter != idx - 1 or insns[idx][0] in targets:
        return False
    _, size, mn, _op = insns[setter]
    # b8 imm32 (5 bytes) or 48 c7 c0 imm32 (7): with the 2-byte syscall, room for a jmp rel32.
    if mn != "mov" or size not in (5, 7):
        return False
    return _returns_next(insns, idx, _x86_error_check)


def _x86_error_check(m1: str, ops: list[str], m2: str) -> bool:
    # glibc: cmp $-4095,%rax; jae (or cmp $-4096,%rax; ja)
    return (m1 == "cmp" and ops[:1] == ["rax"] and len(ops) == 2
            and (_imm(ops[1]), m2) in ((-0xFFF, "jae"), (-0x1000, "ja")))


def _x86_branch_target(mn: str, op: str) -> int | None:
    return _imm(op) if mn.startswith(("j", "loop")) else None


X86_64 = Isa(
    machine="x86_64", cs_arch=capstone.CS_ARCH_X86, cs_mode=capstone.CS_MODE_64,
    candidates=re.compile(rb"\x0f[\x05\x34]|\xcd\x80"),   # syscall, sysenter, int 0x80
    overhang=1, step=1, syscall=_x86_syscall, find_nr=_x86_nr, is_wrapper=_x86_is_wrapper,
    branch_target=_x86_branch_target, mapping_symbols=False,
)


# -- aarch64 -----------------------------------------------------------------------------

_A64_REG = {"x8", "w8"}
_A64_STOP = {"b", "br", "ret", "bl", "blr", "braa", "brab", "blraa", "blrab", "retaa", "retab",
             "eret", "svc", "hvc", "smc", "brk", "udf"}


def _a64_syscall(mn: str, op: str) -> tuple[str, str] | None:
    return (f"svc {op}" if op else "svc", "aarch64") if mn == "svc" else None


def _a64_nr(insns: list[Insn], idx: int, targets: set[int]) -> tuple[int | None, int | None]:
    for j in range(idx - 1, max(-1, idx - 24), -1):
        if insns[j + 1][0] in targets:
            return None, None
        _, _, mn, op = insns[j]
        if mn in _A64_STOP:
            return None, None
        ops = _split_ops(op)
        if not ops:
            continue
        if mn.startswith("st"):
            # Stores read their first operand, except the status register of st*xr/st*xp.
            if ("xr" in mn or "xp" in mn) and ops[0] in _A64_REG:
                return None, None
            continue
        if mn.startswith("ld") and mn.endswith("p") and any(o in _A64_REG for o in ops[:2]):
            return None, None
        if mn in ("cmp", "cmn", "tst", "ccmp", "ccmn", "cbz", "cbnz", "tbz", "tbnz") or mn.startswith("b."):
            continue
        if ops[0] not in _A64_REG:
            continue
        if mn in ("mov", "movz") and len(ops) == 2:
            v = _imm(ops[1])
            return (v & 0xFFFFFFFF if v is not None else None), (j if v is not None else None)
        return None, None
    return None, None


def _a64_is_wrapper(insns: list[Insn], idx: int, setter: int | None, targets: set[int]) -> bool:
    if setter != idx - 1 or insns[idx][0] in targets:
        return False
    return _returns_next(insns, idx, _a64_error_check)


def _a64_error_check(m1: str, ops: list[str], m2: str) -> bool:
    # cmn x0, #1, lsl #12 (#0xfff); b.hi (b.hs, b.cs)
    return (m1 == "cmn" and ops[:1] == ["x0"]
            and (ops[1:] == ["#1", "lsl #12"] or ops[1:] == ["#0xfff"])
            and m2 in ("b.hi", "b.hs", "b.cs"))


def _a64_branch_target(mn: str, op: str) -> int | None:
    if mn in ("b", "cbz", "cbnz", "tbz", "tbnz") or mn.startswith("b."):
        return _imm(_split_ops(op)[-1]) if op else None
    return None


AARCH64 = Isa(
    machine="aarch64", cs_arch=capstone.CS_ARCH_ARM64, cs_mode=capstone.CS_MODE_ARM,
    # svc #imm: 0xd4000001 | imm16 << 5, little-endian.
    candidates=re.compile(rb"[\x01\x21\x41\x61\x81\xa1\xc1\xe1].[\x00-\x1f]\xd4", re.DOTALL),
    overhang=0, step=4, syscall=_a64_syscall, find_nr=_a64_nr, is_wrapper=_a64_is_wrapper,
    branch_target=_a64_branch_target, mapping_symbols=True,
)


ISAS: dict[str, Isa] = {isa.machine: isa for isa in (X86_64, AARCH64)}


def isa_for(machine: str) -> Isa:
    isa = ISAS.get(machine)
    if isa is None:
        raise UserError(f"kbox: analysis of {machine} code is not supported "
                        f"({' and '.join(ISAS)} only)", 2)
    return isa


@cache
def disassembler(machine: str) -> capstone.Cs:
    # Capstone handles are costly to create; detail mode off because disasm_lite ignores it.
    isa = isa_for(machine)
    return capstone.Cs(isa.cs_arch, isa.cs_mode)


def branch_targets(isa: Isa, insns: list[Insn]) -> set[int]:
    """Every constant branch target among insns: the points another path may join."""
    out: set[int] = set()
    for _, _, mn, op in insns:
        v = isa.branch_target(mn, op)
        if v is not None:
            out.add(v)
    return out
