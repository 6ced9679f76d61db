"""`kbox analyze PROG`: where a program makes system calls, and which tier `auto` would pick.

For the main executable and, when it is dynamic, its ELF interpreter and the libc it needs
(DT_NEEDED resolved through DT_RUNPATH/RPATH and the standard multiarch directories, and a
cross sysroot /usr/<triplet>/lib for foreign-architecture files), capstone sweeps every
executable section (executable segment when there are no section headers) and reports each
syscall instruction: x86_64 `syscall` (0f 05), `sysenter` (0f 34), `int 0x80`; aarch64 `svc`.

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
`cmn x0,#1,lsl #12; b.hi`) between the syscall and the ret — the shape a 5-byte jump can
replace. Everything else is COMPLEX.

JSON (`kbox analyze --json`, `Report.to_json()`), one object:
  program        the path as given
  path           the ELF actually analysed (after #! scripts)
  scripts        [{script, interpreter, arg}] followed to reach it, outermost first
  machine        "x86_64" | "aarch64" | other
  class          32 | 64
  type           "EXEC" | "DYN"
  linkage        "static" | "static-pie" | "dynamic" | "shared-object"
  interpreter    PT_INTERP string or null
  setuid, setgid booleans
  objects        [{path, role ("main"|"interpreter"|"libc"), machine, sections_used,
                   boundaries, bytes_scanned, resyncs,
                   counts {sites, wrapper, complex, straddling, fork_clone, unknown_nr},
                   straddling [site], fork_clone [site], sites [site] (only with --all-sites)}]
                 site = {addr, offset, size, insn, symbol, symbol_offset, nr, nr_name,
                         class ("WRAPPER"|"COMPLEX"), straddles, fork_clone, abi}
  missing        [names of needed objects that could not be found]
  rewrite_blockers  [reasons the rewrite tier must not be chosen for this program]
  kernel         the KernelCaps used (see KernelCaps.to_dict) or null
  auto           {mode: "rewrite"|"trap"|"seccomp"|"none", reason} or null
  elapsed_s      analysis time in seconds
"""
from __future__ import annotations

import argparse
import bisect
import hashlib
import itertools
import json
import os
import re
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any

import capstone
from elftools.elf.elffile import ELFFile

from kbox.elfinfo import (
    ElfInfo,
    host_machine,
    inspect,
    parse_elf,
)
from kbox.errors import UserError
from kbox.promote import Promotion, analyze_promotion

PAGE_SIZE = 4096  # the smallest page size of both architectures; straddling is judged on it

WRAPPER, COMPLEX = "WRAPPER", "COMPLEX"

# Syscalls that create a task, per ABI: these cannot simply run inside a SIGSYS handler.
FORK_NRS: dict[str, dict[int, str]] = {
    "x86_64": {57: "fork", 58: "vfork", 56: "clone", 435: "clone3"},
    "aarch64": {220: "clone", 435: "clone3"},  # no fork/vfork on the generic syscall table
    "i386": {2: "fork", 190: "vfork", 120: "clone", 435: "clone3"},  # int 0x80 from 64-bit code
}
# Names for the numbers a report most often shows; others print as numbers.
NR_NAMES: dict[str, dict[int, str]] = {
    "x86_64": {0: "read", 1: "write", 2: "open", 3: "close", 9: "mmap", 10: "mprotect", 11: "munmap",
               13: "rt_sigaction", 14: "rt_sigprocmask", 15: "rt_sigreturn", 16: "ioctl", 39: "getpid",
               60: "exit", 61: "wait4", 62: "kill", 186: "gettid", 202: "futex", 231: "exit_group",
               234: "tgkill", 257: "openat", 262: "newfstatat", 59: "execve", 322: "execveat",
               **FORK_NRS["x86_64"]},
    "aarch64": {56: "openat", 57: "close", 63: "read", 64: "write", 93: "exit", 94: "exit_group",
                98: "futex", 129: "kill", 131: "tgkill", 134: "rt_sigaction", 135: "rt_sigprocmask",
                139: "rt_sigreturn", 172: "getpid", 178: "gettid", 221: "execve", 222: "mmap",
                226: "mprotect", 281: "execveat", **FORK_NRS["aarch64"]},
    "i386": dict(FORK_NRS["i386"]),
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
        return FORK_NRS.get(self.abi, {}).get(self.nr) if self.nr is not None else None

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


@dataclass
class Report:
    program: str
    info: ElfInfo
    objects: list[ObjectReport]
    missing: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    kernel: KernelCaps | None = None
    decision: tuple[str, str] | None = None
    promotion: Promotion | None = None

    @property
    def main(self) -> ObjectReport:
        return self.objects[0]

    def object(self, role: str) -> ObjectReport | None:
        return next((o for o in self.objects if o.role == role), None)

    @property
    def rewrite_blockers(self) -> list[str]:
        out = []
        for o in self.objects:
            legacy = [s for s in o.sites if s.insn in ("int 0x80", "sysenter")]
            if legacy:
                out.append(f"{os.path.basename(o.path)} has {len(legacy)} 32-bit ABI site(s) "
                           f"({legacy[0].insn} at {legacy[0].where}) the rewriter does not patch")
        return out

    def to_dict(self, all_sites: bool = False) -> dict[str, Any]:
        i = self.info
        return {
            "program": self.program, "path": i.path,
            "scripts": [{"script": s.script, "interpreter": s.interpreter, "arg": s.arg} for s in i.scripts],
            "machine": i.machine, "class": i.elfclass, "type": i.etype, "linkage": i.linkage,
            "interpreter": i.interpreter, "setuid": i.setuid, "setgid": i.setgid,
            "objects": [o.to_dict(all_sites) for o in self.objects],
            "missing": list(self.missing),
            "rewrite_blockers": self.rewrite_blockers,
            "kernel": self.kernel.to_dict() if self.kernel else None,
            "auto": {"mode": self.decision[0], "reason": self.decision[1]} if self.decision else None,
            "promotion": self.promotion.to_dict() if self.promotion else None,
            "elapsed_s": round(self.elapsed_s, 3),
        }

    def to_json(self, all_sites: bool = False) -> str:
        return json.dumps(self.to_dict(all_sites), sort_keys=False)

    def to_text(self, all_sites: bool = False) -> str:
        return format_text(self, all_sites)


# ---------------------------------------------------------------------------------------
# Kernel capabilities and the auto decision
# ---------------------------------------------------------------------------------------

@dataclass
class KernelCaps:
    machine: str
    release: str
    seccomp_filter: bool          # SECCOMP_MODE_FILTER usable at all
    seccomp_trap: bool            # SECCOMP_RET_TRAP: the trap tier's source on both arches
    seccomp_user_notif: bool      # SECCOMP_RET_USER_NOTIF: the seccomp tier
    sud: bool                     # Syscall User Dispatch (needs CONFIG_GENERIC_ENTRY)
    # SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP accepted on a real listener; None = probe failed.
    notify_sync_wakeup: bool | None = None
    # True once the rewrite tier is built for this host and passes its self-test.
    rewrite_available: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# Runs in a throwaway interpreter: whatever it turns on (SUD, a seccomp filter) dies with it.
# Prints {"sud": errno-or-0, "sync_wakeup": errno-or-0}. Mirrors kbox.vm.cli.FEATURE_PROBE,
# which the VM tests run in guests, without importing the VM stack.
_FEATURE_PROBE = r"""
import ctypes, json, platform, struct
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_void_p]
out = {}
sel = ctypes.c_char(b"\0")   # SYSCALL_DISPATCH_FILTER_ALLOW: syscalls keep working
# PR_SET_SYSCALL_USER_DISPATCH=59, ON=1, OFF=0; EINVAL when the kernel lacks GENERIC_ENTRY.
if libc.prctl(59, 1, 0, 0, ctypes.addressof(sel)) != 0:
    out["sud"] = ctypes.get_errno()
else:
    libc.prctl(59, 0, 0, 0, None)
    out["sud"] = 0
nr = {"x86_64": 317, "aarch64": 277}.get(platform.machine())
ins = ctypes.create_string_buffer(struct.pack("HBBI", 0x06, 0, 0, 0x7FFF0000))  # ret ALLOW
prog = ctypes.create_string_buffer(struct.pack("HxxxxxxQ", 1, ctypes.addressof(ins)))
libc.prctl(38, 1, 0, 0, None)                                   # PR_SET_NO_NEW_PRIVS
fd = libc.syscall(nr, 1, 1 << 3, prog) if nr else -1            # FILTER, NEW_LISTENER
if fd < 0:
    out["sync_wakeup"] = ctypes.get_errno() or 38
else:
    libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong]
    # SECCOMP_IOCTL_NOTIF_SET_FLAGS(SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP), kernel >= 6.6
    out["sync_wakeup"] = 0 if libc.ioctl(fd, 0x40082104, 1) == 0 else ctypes.get_errno()
print(json.dumps(out))
"""


def _probe_in_child(timeout: float = 10.0) -> dict[str, int]:
    try:
        r = subprocess.run([sys.executable, "-c", _FEATURE_PROBE], timeout=timeout,
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
        return {k: int(v) for k, v in json.loads(r.stdout).items()}
    except (OSError, subprocess.TimeoutExpired, ValueError, AttributeError):
        return {}


def probe_kernel_caps(timeout: float = 10.0) -> KernelCaps:
    """Facts about the running kernel that the auto decision needs; never raises."""
    actions: set[str] = set()
    try:
        with open("/proc/sys/kernel/seccomp/actions_avail") as f:
            actions = set(f.read().split())
    except OSError:
        pass
    try:
        with open("/proc/self/status") as f:
            has_seccomp = any(line.startswith("Seccomp:") for line in f)
    except OSError:
        has_seccomp = False
    uname = os.uname()
    machine = host_machine()
    probed = _probe_in_child(timeout)
    return KernelCaps(
        machine=machine,
        release=uname.release,
        seccomp_filter=has_seccomp and bool(actions),
        seccomp_trap="trap" in actions,
        seccomp_user_notif="user_notif" in actions,
        # SUD exists only on x86_64 among our targets (Debian arm64 kernels lack GENERIC_ENTRY).
        sud=probed.get("sud") == 0,
        notify_sync_wakeup=(probed["sync_wakeup"] == 0) if "sync_wakeup" in probed else None,
        # The rewrite tier is trap plus lazy patching: available wherever trap is, with the
        # C core built for this machine.
        rewrite_available="trap" in actions and _launcher_built(),
    )


def _launcher_built() -> bool:
    from kbox import native

    return (native.native_dir() / "kbox-launch").exists()


def decide_mode(report: Report, caps: KernelCaps) -> tuple[str, str]:
    """(mode, reason) that `--syscall-mode=auto` picks for this program on this kernel.

    Order: setuid/setgid -> seccomp (an in-process runtime would live inside a privileged
    image, and execve under no_new_privs drops the privilege anyway); no RET_TRAP -> seccomp;
    rewrite when the tier is available and the analysis finds no blocker; else trap.
    "none" means the program cannot run on this host at all (foreign architecture).
    """
    info = report.info
    if info.machine != caps.machine:
        return "none", f"it is an {info.machine} program and this host is {caps.machine}; nothing runs it here"
    if info.setuid or info.setgid:
        bits = "setuid" if info.setuid else "setgid"
        return "seccomp", (f"{os.path.basename(info.path)} is {bits}: only the out-of-process supervisor "
                           "keeps the interposer outside a privileged image")
    if not caps.seccomp_user_notif and not caps.seccomp_trap:
        return "seccomp", "the kernel offers neither SECCOMP_RET_TRAP nor user notification (seccomp will fail too)"
    if not caps.seccomp_trap:
        return "seccomp", "the kernel lacks SECCOMP_RET_TRAP, which the in-process tiers need"
    blockers = report.rewrite_blockers
    if caps.rewrite_available and not blockers:
        how = ("svc #0 -> b to per-site trampolines" if info.machine == "aarch64"
               else "the instruction before each syscall relocated into a per-site trampoline, "
                    "reached by jmp rel32, or by jmp rel8 through dead padding when it is short")
        return "rewrite", (f"no rewrite blocker found; sites are rewritten lazily ({how}); "
                           "sites that cannot be patched stay on the trap path, which is the safety net")
    if blockers:
        return "trap", "rewrite blocked: " + "; ".join(blockers)
    straddle = sum(len(o.straddling) for o in report.objects)
    note = f" ({straddle} page-straddling site(s) will stay on the trap path)" if straddle else ""
    return "trap", ("the rewrite tier is not available on this host yet; trap serves every syscall "
                    f"in-process via SECCOMP_RET_TRAP{note}")


# ---------------------------------------------------------------------------------------
# Disassembly
# ---------------------------------------------------------------------------------------

@cache
def _cs(machine: str) -> capstone.Cs:
    # Capstone handles are costly to create; detail mode off because disasm_lite ignores it.
    if machine == "x86_64":
        return capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    if machine == "aarch64":
        return capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
    raise UserError(f"kbox: analysis of {machine} code is not supported (x86_64 and aarch64 only)", 2)


_X86_CAND = re.compile(rb"\x0f[\x05\x34]|\xcd\x80")
# svc #imm: 0xd4000001 | imm16 << 5, little-endian.
_A64_CAND = re.compile(rb"[\x01\x21\x41\x61\x81\xa1\xc1\xe1].[\x00-\x1f]\xd4", re.DOTALL)

_X86_RAX = {"rax", "eax", "ax", "al", "ah"}
_X86_IMPLICIT_RAX = {
    "cpuid", "rdtsc", "rdtscp", "rdpid", "mul", "div", "idiv", "cbw", "cwde", "cdqe", "cwd", "cdq",
    "cqo", "lodsb", "lodsw", "lodsd", "lodsq", "xgetbv", "rdpkru", "lahf", "in", "cmpxchg",
    "cmpxchg8b", "cmpxchg16b", "syscall", "sysenter", "int", "scasb", "rdrand", "rdseed",
}
_X86_NOWRITE_FIRST = {"cmp", "test", "bt", "push", "ptest", "ucomiss", "ucomisd", "comiss", "comisd"}
_X86_STOP = {"jmp", "ret", "retf", "call", "ljmp", "lcall", "iretq", "iret", "ud2", "hlt", "int3"}
_A64_REG = {"x8", "w8"}
_A64_STOP = {"b", "br", "ret", "bl", "blr", "braa", "brab", "blraa", "blrab", "retaa", "retab",
             "eret", "svc", "hvc", "smc", "brk", "udf"}


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


Insn = tuple[int, int, str, str]  # (address, size, mnemonic, op_str) from disasm_lite


def _x86_nr(insns: list[Insn], idx: int, targets: set[int]) -> tuple[int | None, int | None]:
    """(nr, index of the setter) for the syscall at insns[idx], on the fall-through path only."""
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


def _x86_is_wrapper(insns: list[Insn], idx: int, setter: int | None, targets: set[int]) -> bool:
    if setter != idx - 1 or insns[idx][0] in targets:
        return False
    _, size, mn, _op = insns[setter]
    # b8 imm32 (5 bytes) or 48 c7 c0 imm32 (7): with the 2-byte syscall, room for a jmp rel32.
    if mn != "mov" or size not in (5, 7):
        return False
    rest = insns[idx + 1: idx + 4]
    if rest and rest[0][2] == "ret":
        return True
    if len(rest) == 3 and rest[2][2] == "ret":
        (_, _, m1, o1), (_, _, m2, _), _ = rest
        ops = _split_ops(o1)
        if m1 == "cmp" and ops[:1] == ["rax"] and len(ops) == 2:
            v = _imm(ops[1])
            return (v, m2) in ((-0xFFF, "jae"), (-0x1000, "ja"))
    return False


def _a64_is_wrapper(insns: list[Insn], idx: int, setter: int | None, targets: set[int]) -> bool:
    if setter != idx - 1 or insns[idx][0] in targets:
        return False
    rest = insns[idx + 1: idx + 4]
    if rest and rest[0][2] == "ret":
        return True
    if len(rest) == 3 and rest[2][2] == "ret":
        (_, _, m1, o1), (_, _, m2, _), _ = rest
        ops = _split_ops(o1)
        if m1 == "cmn" and ops[:1] == ["x0"] and (ops[1:] == ["#1", "lsl #12"] or ops[1:] == ["#0xfff"]):
            return m2 in ("b.hi", "b.hs", "b.cs")
    return False


def _branch_targets(insns: list[Insn], machine: str) -> set[int]:
    out: set[int] = set()
    for _, _, mn, op in insns:
        if machine == "x86_64":
            if mn.startswith(("j", "loop")):
                v = _imm(op)
                if v is not None:
                    out.add(v)
        elif mn in ("b", "cbz", "cbnz", "tbz", "tbnz") or mn.startswith("b."):
            v = _imm(_split_ops(op)[-1]) if op else None
            if v is not None:
                out.add(v)
    return out


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


def _read_symbols(elf: ELFFile, info: ElfInfo) -> _Symbols:
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
            if info.machine == "aarch64" and name.startswith("$"):
                (syms.data_starts if name.startswith("$d") else syms.code_starts).add(value)
                continue
            if stype not in (2, 10) or value == 0:     # STT_FUNC, STT_GNU_IFUNC
                continue
            if info.machine == "aarch64":
                value &= ~1
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


# Analysis results keyed by file content: one process analysing many programs (tests, a
# future `kbox run --syscall-mode=auto` per execve) reuses its libc and ld.so results.
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
    md = _cs(info.machine)
    with open(path, "rb") as fh:
        data = fh.read()
        elf: ELFFile | None
        try:
            fh.seek(0)
            elf = ELFFile(fh)
            ranges, used_sections = _code_ranges(elf, info)
            syms = _read_symbols(elf, info) if used_sections else _Symbols()
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
    x86 = info.machine == "x86_64"
    cand = _X86_CAND if x86 else _A64_CAND
    step = 1 if x86 else 4
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
            # A syscall instruction's bytes lie in [start, end] (+1 byte if it ends past `end`).
            if not cand.search(data, o, o + n + (1 if x86 else 0)):
                continue
            insns, rs = _sweep(md, mv[o: min(len(data), o + n + 15)], start, n, step)
            if k > 0 and start in soft and cuts[k - 1] not in syms.data_starts:
                # Prefer the fall-through decoding from the previous boundary when it is
                # clean: it is what the CPU executes, and it gives the backward scan context.
                ps = cuts[k - 1]
                po = off + (ps - vaddr)
                prev, prs = _sweep(md, mv[po: min(len(data), po + (end - ps) + 15)], ps, end - ps, step)
                if prs == 0 or (rs > 0 and not _resync_before(prev, start)):
                    insns, rs = prev, 0
            rep.resyncs += rs
            _collect_sites(rep, insns, syms, info, vaddr - off, start)
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
    rep: ObjectReport, insns: list[Insn], syms: _Symbols, info: ElfInfo, delta: int, first: int,
) -> None:
    x86 = info.machine == "x86_64"
    targets: set[int] | None = None
    for idx, (addr, size, mn, op) in enumerate(insns):
        if addr < first:
            continue            # context decoded from the previous region; reported there
        if x86:
            if mn == "syscall":
                insn, abi = "syscall", "x86_64"
            elif mn == "sysenter":
                insn, abi = "sysenter", "i386"
            elif mn == "int" and _imm(op) == 0x80:
                insn, abi = "int 0x80", "i386"
            else:
                continue
        else:
            if mn != "svc":
                continue
            insn, abi = f"svc {op}" if op else "svc", "aarch64"
        if targets is None:
            targets = _branch_targets(insns, info.machine)
        if x86:
            nr, setter = _x86_nr(insns, idx, targets)
            wrapper = insn == "syscall" and _x86_is_wrapper(insns, idx, setter, targets)
        else:
            nr, setter = _a64_nr(insns, idx, targets)
            wrapper = _a64_is_wrapper(insns, idx, setter, targets)
        sym, symoff = syms.lookup(addr)
        rep.sites.append(Site(
            addr=addr, offset=addr - delta, size=size, insn=insn, symbol=sym, symbol_offset=symoff,
            nr=nr, kind=WRAPPER if wrapper else COMPLEX,
            straddles=(addr % PAGE_SIZE) + size > PAGE_SIZE, abi=abi,
        ))


# ---------------------------------------------------------------------------------------
# Finding the interpreter and libc
# ---------------------------------------------------------------------------------------

def _is_libc(name: str) -> bool:
    return bool(re.match(r"^libc\.so(\.\d+)*$", name)) or name.startswith("libc.musl-")


def _candidate_dirs(info: ElfInfo, origin: str) -> list[str]:
    dirs = [p.replace("$ORIGIN", origin).replace("${ORIGIN}", origin) for p in info.runpath]
    trip = info.triplet
    if trip:
        dirs += [f"/lib/{trip}", f"/usr/lib/{trip}"]
    if info.elfclass == 64:
        dirs += ["/lib64", "/usr/lib64"]
    dirs += ["/lib", "/usr/lib"]
    if trip:
        dirs += [f"/usr/{trip}/lib", f"/usr/{trip}/lib64"]   # Debian cross sysroots
    return dirs


def _matching(path: str, info: ElfInfo) -> ElfInfo | None:
    try:
        cand = parse_elf(path)
    except UserError:
        return None
    if (cand.machine, cand.elfclass) != (info.machine, info.elfclass):
        return None
    return cand


def find_library(name: str, info: ElfInfo) -> tuple[str, ElfInfo] | None:
    """Resolve a DT_NEEDED name for `info` the way ld.so would (minus ld.so.cache)."""
    if "/" in name:
        got = _matching(name, info)
        return (name, got) if got else None
    origin = os.path.dirname(os.path.abspath(info.path))
    for d in _candidate_dirs(info, origin):
        p = os.path.join(d, name)
        if os.path.isfile(p):
            got = _matching(p, info)
            if got:
                return p, got
    return None


def find_interpreter(info: ElfInfo) -> tuple[str, ElfInfo] | None:
    assert info.interpreter is not None
    got = _matching(info.interpreter, info) if os.path.isfile(info.interpreter) else None
    if got:
        return info.interpreter, got
    # A foreign-architecture file names its loader by its in-target path; try the sysroot.
    trip = info.triplet
    base = os.path.basename(info.interpreter)
    for d in ([f"/usr/{trip}/lib", f"/usr/{trip}/lib64"] if trip else []):
        p = os.path.join(d, base)
        if os.path.isfile(p) and (got := _matching(p, info)):
            return p, got
    return None


def analyze(path: str, *, caps: KernelCaps | None = None, display: str | None = None) -> Report:
    """Analyse `path` (following #! scripts) and its interpreter and libc.

    With `caps`, the report also carries the auto decision for that kernel.
    """
    t0 = time.monotonic()
    display = display or path
    info = inspect(path, check_runnable=False, display=display)
    if (info.machine, info.elfclass) not in (("x86_64", 64), ("aarch64", 64)):
        raise UserError(f"kbox: {display}: analysis supports 64-bit x86_64 and aarch64 ELF files, "
                        f"not {info.elfclass}-bit {info.machine}", 126)
    objects = [analyze_object(info.path, "main", info)]
    seen = {os.path.realpath(info.path)}
    missing: list[str] = []
    if info.interpreter is not None:
        found = find_interpreter(info)
        if found is None:
            missing.append(info.interpreter)
        elif os.path.realpath(found[0]) not in seen:
            seen.add(os.path.realpath(found[0]))
            objects.append(analyze_object(found[0], "interpreter", found[1]))
    for name in info.needed:
        if not _is_libc(name):
            continue
        lib = find_library(name, info)
        if lib is None:
            missing.append(name)
        elif os.path.realpath(lib[0]) not in seen:
            seen.add(os.path.realpath(lib[0]))
            objects.append(analyze_object(lib[0], "libc", lib[1]))
    report = Report(program=display, info=info, objects=objects, missing=missing,
                    promotion=_promotion(info))
    if caps is not None:
        report.kernel = caps
        report.decision = decide_mode(report, caps)
    report.elapsed_s = time.monotonic() - t0
    return report


# ---------------------------------------------------------------------------------------
# Human output and the CLI hooks
# ---------------------------------------------------------------------------------------

def _promotion(info: ElfInfo) -> Promotion:
    """The rewrite tier's wrapper-call promotion for the main program (kbox/promote.py)."""
    with open(info.path, "rb") as fh:
        data = fh.read()
        names: dict[str, int] = {}
        try:
            fh.seek(0)
            symtab = ELFFile(fh).get_section_by_name(".symtab")
            if symtab is not None:
                names = {s.name: s["st_value"] for s in symtab.iter_symbols()
                         if s.name in ("__syscall_cp_c", "__syscall_cp_asm")}
        except Exception:  # noqa: BLE001 - odd section headers: no names, still a verdict
            names = {}
    segments = [(s.vaddr, data[s.offset: s.offset + s.filesz]) for s in info.exec_segments]
    return analyze_promotion(info.machine, info.linkage, segments, names)


def format_text(report: Report, all_sites: bool = False) -> str:
    i = report.info
    lines = [f"program:       {report.program}"]
    for bang in i.scripts:
        lines.append(f"  #! script:   {bang.script} -> {bang.interpreter}{' ' + bang.arg if bang.arg else ''}")
    lines.append(f"architecture:  {i.machine} ({i.elfclass}-bit, {'little' if i.little_endian else 'big'}-endian)")
    kind = {"static": "static", "static-pie": "static-pie", "dynamic": "dynamic",
            "shared-object": "shared object"}[i.linkage]
    lines.append(f"linkage:       {kind} ({i.etype}), entry {i.entry:#x}")
    lines.append(f"interpreter:   {i.interpreter or '-'}")
    priv = [b for b, on in (("setuid", i.setuid), ("setgid", i.setgid)) if on]
    lines.append(f"privileges:    {', '.join(priv) or 'none (no setuid/setgid bit)'}")
    for o in report.objects:
        how = "sections+symbols" if o.sections_used else "segments"
        lines.append("")
        lines.append(f"[{o.role}] {o.path}  ({o.bytes_scanned} code bytes, {how}, {o.boundaries} boundaries)")
        unknown = sum(1 for s in o.sites if s.nr is None)
        lines.append(f"  syscall sites: {len(o.sites)} (wrapper {len(o.wrappers)}, complex {len(o.complex)}; "
                     f"number unknown for {unknown})")
        lines.append(f"  page-straddling sites: {len(o.straddling)}")
        for s in o.straddling:
            lines.append(f"    {s.where}  {s.insn}{_nr_text(s)}  (bytes {s.addr:#x}..{s.addr + s.size - 1:#x})")
        lines.append(f"  fork/clone sites: {len(o.fork_sites)}")
        for s in o.fork_sites:
            lines.append(f"    {s.where}  {s.fork_clone} ({s.nr}), {s.kind}")
        if all_sites:
            lines.append("  all sites:")
            for s in o.sites:
                flag = " STRADDLES" if s.straddles else ""
                lines.append(f"    {s.where}  {s.insn}{_nr_text(s)}  {s.kind}{flag}")
    if report.missing:
        lines.append("")
        lines.append(f"not found: {', '.join(report.missing)}")
    for b in report.rewrite_blockers:
        lines.append(f"rewrite blocker: {b}")
    if report.promotion is not None:
        p = report.promotion
        head = f"{len(p.sites)} call site(s) promoted" if p.applies else "none"
        lines.append(f"wrapper-call promotion (rewrite tier): {head} — {p.reason}")
        if all_sites and p.sites:
            lines.append("  promoted: " + ", ".join(hex(a) for a in p.sites))
    lines.append("")
    if report.decision:
        mode, reason = report.decision
        lines.append(f"auto would pick: {mode} — {reason}")
    lines.append(f"(analysed in {report.elapsed_s:.2f} s)")
    return "\n".join(lines)


def _nr_text(s: Site) -> str:
    if s.nr is None:
        return ", nr ?"
    return f", nr {s.nr}" + (f" {s.nr_name}" if s.nr_name else "")


def add_analyze_command(subparsers: Any) -> None:
    """Register `kbox analyze PROG [--json] [--all-sites]` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "analyze",
        help="report a program's syscall sites and which mode auto would pick",
        description=(
            "Inspect PROG (searched in PATH like a shell; #! scripts are followed) and, when it "
            "is dynamic, its ELF interpreter and libc: architecture, linkage, every syscall "
            "instruction found by capstone (wrapper or complex, page-straddling, fork/clone), "
            "and the mode --syscall-mode=auto would pick on this kernel, with the reason."
        ),
    )
    p.add_argument("prog", metavar="PROG", help="program name or path")
    p.add_argument("--json", action="store_true", help="print one JSON object (keys: see kbox/analyze.py)")
    p.add_argument("--all-sites", action="store_true", help="list every syscall site, not only the notable ones")
    p.set_defaults(func=run_analyze)


def run_analyze(args: argparse.Namespace) -> int:
    from kbox.elfinfo import resolve_program

    path = resolve_program(args.prog)
    caps = probe_kernel_caps()
    report = analyze(path, caps=caps, display=args.prog)
    out = report.to_json(args.all_sites) if args.json else report.to_text(args.all_sites)
    sys.stdout.write(out + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (`python -m kbox.analyze PROG`) until the lead wires it into kbox.cli."""
    parser = argparse.ArgumentParser(prog="kbox")
    sub = parser.add_subparsers(dest="command", required=True)
    add_analyze_command(sub)
    args = parser.parse_args(["analyze", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except UserError as exc:
        sys.stderr.write(f"{exc}\n")
        return exc.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
