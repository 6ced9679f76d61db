"""Turning `kbox run` options into a command line for the C launcher (kbox-launch).

`kbox run` validates the program in Python (clear one-line errors, shell exit codes), picks
the tier for `auto`, and then replaces itself with the launcher, so the program's stdin,
stdout, stderr, terminal, signals and exit status pass through untouched.
"""
from __future__ import annotations

from collections.abc import Sequence

from kbox import elfinfo, native
from kbox.decide import Decision, decide_tier
from kbox.errors import UserError
from kbox.kernel_caps import tier_support
from kbox.tiers import AUTO, LAUNCHER_MODES, MODES


def auto_mode(path: str, *, info: elfinfo.ElfInfo | None = None) -> Decision:
    """(mode, reason) for --syscall-mode=auto: kbox.decide on the cheap facts alone (the ELF
    headers, set[ug]id bits, /proc), so `kbox run` decides without disassembling anything.
    `info` is the program's elfinfo.inspect(), when the caller has it already."""
    return decide_tier(info or elfinfo.inspect(path), tier_support())


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
    extra: Sequence[str] = (),
) -> list[str]:
    """The argv of kbox-launch running `prog args...` under `mode`."""
    if mode == AUTO:
        mode = auto_mode(prog).mode
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
    cmd += list(extra)
    if argv0 is not None and argv0 != prog:
        cmd.append(f"--exec-path={prog}")
        cmd += ["--", argv0, *args]
    else:
        cmd += ["--", prog, *args]
    return cmd
