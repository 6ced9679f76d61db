"""The tier `--syscall-mode=auto` picks: one decision for `kbox run` and `kbox analyze`.

`kbox run` decides on every start, so the decision needs only cheap facts: the program's
ELF header and set[ug]id bits (kbox.elfinfo, which `kbox run` reads anyway) and what /proc
says about seccomp (kbox.kernel_caps.tier_support). `kbox analyze` passes what its
disassembly found as well, and prints the reason.

The one thing only the analysis can see is a rewrite blocker: 32-bit `int 0x80` or
`sysenter` sites, which the rewriter does not patch. `kbox run` does not look for them:
such a site fails under every tier alike (the filters kill a foreign-ABI syscall), so the
tier picked without looking changes nothing for that program.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

from kbox.elfinfo import ElfInfo
from kbox.kernel_caps import TierSupport
from kbox.tiers import NONE, REWRITE, SECCOMP, TRAP

# How the rewriter reaches the runtime from a site, per architecture (csrc/arch/*/launch/).
REWRITE_HOW = {
    "x86_64": "the instruction before each syscall relocated into a per-site trampoline, "
              "reached by jmp rel32, or by jmp rel8 through dead padding when it is short",
    "aarch64": "svc #0 -> b to per-site trampolines",
}


class Decision(NamedTuple):
    mode: str       # a tier, or NONE for a program nothing runs here
    reason: str


def decide_tier(
    info: ElfInfo, kernel: TierSupport, *, blockers: Sequence[str] | None = None,
    straddling: int = 0,
) -> Decision:
    """The tier for `info` on `kernel`.

    `blockers` are the analysis's rewrite blockers (None: not looked for, as in `kbox run`);
    `straddling` how many page-straddling sites it found (they stay on the trap path).

    Order: foreign architecture -> none; setuid/setgid -> seccomp (an in-process runtime
    would live inside a privileged image, and execve under no_new_privs drops the privilege
    anyway); no RET_TRAP -> seccomp; rewrite when the tier is available and nothing blocks
    it; else trap.
    """
    if info.machine != kernel.machine:
        return Decision(NONE, f"it is an {info.machine} program and this host is "
                              f"{kernel.machine}; nothing runs it here")
    if info.setuid or info.setgid:
        bits = "setuid" if info.setuid else "setgid"
        return Decision(SECCOMP, f"{os.path.basename(info.path)} is {bits}: only the "
                                 "out-of-process supervisor keeps the interposer outside a "
                                 "privileged image")
    if not kernel.seccomp_user_notif and not kernel.seccomp_trap:
        return Decision(SECCOMP, "the kernel offers neither SECCOMP_RET_TRAP nor user "
                                 "notification (seccomp will fail too)")
    if not kernel.seccomp_trap:
        return Decision(SECCOMP, "the kernel lacks SECCOMP_RET_TRAP, which the in-process "
                                 "tiers need")
    if kernel.rewrite_available and not blockers:
        how = REWRITE_HOW[info.machine]
        found = "" if blockers is None else "no rewrite blocker found; "
        return Decision(REWRITE, f"{found}sites are rewritten lazily ({how}); sites that cannot "
                                 "be patched stay on the trap path, which is the safety net")
    if blockers:
        return Decision(TRAP, "rewrite blocked: " + "; ".join(blockers))
    note = f" ({straddling} page-straddling site(s) will stay on the trap path)" if straddling else ""
    return Decision(TRAP, "the rewrite tier is not available on this host; trap serves every "
                          f"syscall in-process via SECCOMP_RET_TRAP{note}")
