"""Which of a program's syscall-wrapper calls the rewrite tier promotes (aarch64 musl).

Mirrors csrc/arch/aarch64/launch/rewrite-aarch64.c: musl (1.2.x) makes its cancellable calls
as `bl __syscall_cp` (number in x0, arguments in x1..x6).  Without pthread_cancel linked,
__syscall_cp is `b __syscall_cp_c` and __syscall_cp_c is musl's sccp, exactly nine
instructions (a register shuffle, `svc #0`, `ret`); such a `bl` becomes a branch to a
trampoline that does the same.  With pthread_cancel linked, __syscall_cp_c checks the
thread's cancellation state first and is never promoted; in a dynamic program libc lives in
its own object and nothing is promoted.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

SCCP = (0xaa0003e8, 0xaa0103e0, 0xaa0203e1, 0xaa0303e2, 0xaa0403e3, 0xaa0503e4, 0xaa0603e5,
        0xd4000001, 0xd65f03c0)
_SCCP_BYTES = struct.pack("<9I", *SCCP)


@dataclass
class Promotion:
    applies: bool
    reason: str
    sites: list[int] = field(default_factory=list)   # addresses of the promoted bl
    wrapper: int | None = None                       # address of sccp

    def to_dict(self) -> dict[str, Any]:
        return {"applies": self.applies, "reason": self.reason, "count": len(self.sites),
                "sites": [hex(a) for a in self.sites],
                "wrapper": hex(self.wrapper) if self.wrapper is not None else None}


def _target(pc: int, word: int) -> int:
    off = word & 0x03ffffff
    if off & 0x02000000:
        off -= 1 << 26
    return pc + 4 * off


def scan(code: bytes, vaddr: int) -> tuple[list[int], int | None]:
    """(promotable bl addresses, sccp's address) in code mapped at vaddr."""
    n = len(code) // 4
    words = struct.unpack_from(f"<{n}I", code)
    verdict: dict[int, int | None] = {}   # call target -> sccp address or None

    def sccp_of(target: int) -> int | None:
        for _ in range(3):
            i = (target - vaddr) // 4
            if target & 3 or i < 0 or i + len(SCCP) > n:
                return None
            if code[4 * i: 4 * i + 36] == _SCCP_BYTES:
                return target
            if words[i] & 0xfc000000 != 0x14000000:          # b: follow it
                return None
            target = _target(target, words[i])
        return None

    sites: list[int] = []
    wrapper = None
    for i, w in enumerate(words):
        if w & 0xfc000000 != 0x94000000:                     # bl
            continue
        pc = vaddr + 4 * i
        t = _target(pc, w)
        if t not in verdict:
            verdict[t] = sccp_of(t)
        if verdict[t] is not None:
            sites.append(pc)
            wrapper = verdict[t]
    return sites, wrapper


def analyze_promotion(machine: str, linkage: str, segments: list[tuple[int, bytes]],
                      symbols: dict[str, int]) -> Promotion:
    """The promotion verdict for a program: `segments` are its executable (vaddr, bytes),
    `symbols` its function names and addresses (may be empty for a stripped program)."""
    if machine != "aarch64":
        return Promotion(False, "not done on x86_64 (musl's call to __syscall_cp reaches an "
                                "ordinary syscall site, rewritten like any other)")
    if linkage not in ("static", "static-pie"):
        return Promotion(False, "dynamic: libc lives in its own object; calls are not promoted")
    sites: list[int] = []
    wrapper = None
    for vaddr, code in segments:
        s, w = scan(code, vaddr)
        sites += s
        wrapper = wrapper if w is None else w
    if sites:
        return Promotion(True, "calls of musl's non-cancelling __syscall_cp (sccp: the program "
                               "does not link pthread_cancel) branch to trampolines", sites, wrapper)
    if "__syscall_cp_c" in symbols or "__syscall_cp_asm" in symbols:
        return Promotion(False, "musl with pthread_cancel linked: __syscall_cp checks the "
                                "cancellation state, which must stay; calls are not promoted")
    return Promotion(False, "no call of musl's __syscall_cp found (not a musl program)")
