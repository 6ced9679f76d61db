"""The tier names, for every part of kbox that lists them: `kbox run`'s choices, the launcher
argv, the auto decision, `kbox bench` and the VM test plugin.

The launcher (csrc/launch/main.c) accepts the same words for --syscall-mode, plus `none`
(load and run the program with nothing interposed: the loader's own tests)."""
from __future__ import annotations

SECCOMP = "seccomp"   # a supervisor process answers seccomp user notifications
TRAP = "trap"         # a SIGSYS handler inside the program's process
REWRITE = "rewrite"   # trap, plus syscall sites rewritten to branch into the runtime
AUTO = "auto"         # one of the three, picked per program (kbox/decide.py)
NONE = "none"         # what auto answers for a program nothing runs on this host

TIERS = (SECCOMP, TRAP, REWRITE)
MODES = (AUTO, *TIERS)          # --syscall-mode
IN_PROCESS = (TRAP, REWRITE)    # the runtime shares the program's address space
LAUNCHER_MODES = (*TIERS, NONE)

# What raises SIGSYS for the in-process tiers: seccomp RET_TRAP (both arches) or Syscall
# User Dispatch (x86_64; Debian's arm64 kernels lack CONFIG_GENERIC_ENTRY).
TRAP_BACKENDS = ("seccomp", "sud")
