"""Turning `kbox run` options into a command line for the C launcher (kbox-launch).

`kbox run` validates the program in Python (clear one-line errors, shell exit codes), picks
the tier for `auto`, and then replaces itself with the launcher, so the program's stdin,
stdout, stderr, terminal, signals and exit status pass through untouched.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache

from kbox import native
from kbox.errors import UserError
from kbox.tiers import AUTO, LAUNCHER_MODES, MODES


@lru_cache(maxsize=1)
def _seccomp_actions() -> frozenset[str]:
    try:
        with open("/proc/sys/kernel/seccomp/actions_avail") as f:
            return frozenset(f.read().split())
    except OSError:
        return frozenset()


def auto_mode(path: str, *, virtual_pid: bool = False) -> tuple[str, str]:
    """(mode, reason) for --syscall-mode=auto.

    Mirrors kbox.analyze.decide_mode for the facts that need no disassembly, so `kbox run`
    decides in microseconds; `kbox analyze` explains the same decision in full.  (The only
    analysis blocker, 32-bit `int 0x80` sites, makes a program fail under every tier: the
    filters kill a foreign-ABI syscall.)
    """
    st = os.stat(path)
    if st.st_mode & 0o6000:
        return "seccomp", "setuid/setgid program: only the out-of-process supervisor fits"
    actions = _seccomp_actions()
    if "trap" not in actions:
        return "seccomp", "the kernel lacks SECCOMP_RET_TRAP, which the in-process tiers need"
    return "rewrite", ("in-process: sites are rewritten to branch into the interposer on first "
                       "use; the trap path serves whatever cannot be rewritten")


def launch_argv(
    prog: str,
    args: Sequence[str],
    *,
    mode: str = AUTO,
    trace: bool = False,
    trace_format: str = "text",
    trace_output: str | None = None,
    deny: Sequence[str] = (),
    virtual_pid: bool = False,
    stats: bool = False,
    trap_backend: str | None = None,
    allow_wx: bool = False,
    argv0: str | None = None,
) -> list[str]:
    """The argv of kbox-launch running `prog args...` under `mode`."""
    if mode == AUTO:
        mode, _ = auto_mode(prog, virtual_pid=virtual_pid)
    if mode not in LAUNCHER_MODES:
        raise UserError(f"kbox: unknown syscall mode {mode!r} (choose from {', '.join(MODES)})", 2)
    cmd = [str(native.launcher_path()), f"--syscall-mode={mode}"]
    if trap_backend:
        cmd.append(f"--trap-backend={trap_backend}")
    if trace or trace_output:
        cmd.append("--trace-json" if trace_format == "json" else "--trace")
    if trace_output:
        cmd.append(f"--trace-output={trace_output}")
    cmd += [f"--deny={d}" for d in deny]
    if virtual_pid:
        cmd.append("--virtual-pid")
    if stats:
        cmd.append("--stats")
    if allow_wx:
        cmd.append("--allow-wx")
    if argv0 is not None and argv0 != prog:
        cmd.append(f"--exec-path={prog}")
        cmd += ["--", argv0, *args]
    else:
        cmd += ["--", prog, *args]
    return cmd
