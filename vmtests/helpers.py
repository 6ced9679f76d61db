"""Shared helpers for the VM tests: guest command lines and readable failure messages."""
from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

from kbox.tiers import AUTO, REWRITE, SECCOMP, TRAP

REPO = Path(__file__).resolve().parents[1]
GUEST_SOURCES = REPO / "tests" / "guest"

# Real programs from the core issue, as argv lists. Each reads only files that do not
# change between runs, so native and interposed runs in one VM must print the same.
# Absolute paths: the guest's shell is busybox, which runs its own applet for a bare `ls`
# or `cat` while `kbox run` (like any execvp) finds coreutils in PATH.
REAL_PROGRAMS: dict[str, list[str]] = {
    "ls": ["/usr/bin/ls", "-l", "/etc"],
    "cat": ["/usr/bin/cat", "/etc/passwd"],
    "sort": ["/usr/bin/sort", "-r", "/etc/passwd"],
    "cp": ["/usr/bin/cp", "-v", "/etc/passwd", "/tmp/kbox-cp-copy"],
    "busybox-sh": ["/bin/busybox", "sh", "-c", "echo $((6 * 7)); cat /etc/hostname | wc -c"],
    "python3": ["/usr/bin/python3", "-c", "import os, sys, json; "
                "print(json.dumps(sorted(os.listdir('/etc'))[:5]), sys.version_info[:2])"],
    "git": ["/usr/bin/git", "hash-object", "/etc/passwd"],
    "sqlite3": ["/usr/bin/sqlite3", ":memory:",
                "create table t(x); insert into t values (1),(2),(3); select sum(x) from t;"],
}


def guest_program_names() -> list[str]:
    """NAME-static, NAME-dynamic (glibc) and NAME-musl (static, musl) for every
    tests/guest/NAME.c (what the image ships)."""
    # rootescape runs inside a root view only (vmtests/test_root_view.py).
    names = sorted(p.stem for p in GUEST_SOURCES.glob("*.c") if p.stem != "rootescape")
    return [f"{n}-{kind}" for n in names for kind in ("static", "dynamic", "musl")]


def under_tier(tier: str, argv: list[str], launcher: str | None = None) -> str:
    """The guest shell command running argv natively or under one kbox tier.

    With `launcher` (the guest's kbox-launch) the C launcher is run directly, as `kbox run`
    would exec it, sparing a Python start-up per command (about a second under TCG); the
    real-program tests keep going through `kbox run` so the CLI path is covered too."""
    if tier == "native":
        # Through a shell that waits, so a program killed by signal N reports 128+N as
        # kbox does (over SSH a signal death has no exit status at all).
        return shlex.join(["sh", "-c", '"$@"; exit $?', "sh", *argv])
    if launcher:
        return shlex.join([launcher, f"--syscall-mode={tier}", "--", *argv])
    return shlex.join(["kbox", "run", "--syscall-mode", tier, "--", *argv])


def guest_launcher(vm: Any, pool: Any, tier: str) -> tuple[str, str]:
    """(path of the guest's kbox-launch, the tier `auto` resolves to there), once per VM.
    `auto` is resolved by the guest's own kbox.runner, the code `kbox run` uses."""
    key = ((vm.image.arch, vm.image.kernel), "launcher")
    if key not in pool.cache:
        res = vm.run("python3 -c 'from kbox import native, runner; "
                     "print(native.launcher_path()); print(runner.auto_mode(\"/bin/true\").mode)'",
                     timeout=60)
        lines = res.stdout.split()
        assert res.exit_status == 0 and len(lines) == 2, f"cannot locate kbox-launch: {res}"
        pool.cache[key] = (lines[0], lines[1])
    path, auto = pool.cache[key]
    return path, (auto if tier == "auto" else tier)


# seccomp and trap are the tiers every kbox has; rewrite and auto are tested once the
# guest's `kbox run --help` lists them (skipped, with that reason, before).
REQUIRED_TIERS = (SECCOMP, TRAP)
OPTIONAL_TIERS = (REWRITE, AUTO)


def guest_tiers(vm: Any, pool: Any) -> tuple[set[str], Any]:
    """(tiers the guest's kbox lists in `kbox run --help`, that run), once per VM."""
    key = ((vm.image.arch, vm.image.kernel), "tiers")
    if key not in pool.cache:
        res = vm.run("kbox run --help", timeout=60)
        text = res.stdout + res.stderr
        found = {t for t in REQUIRED_TIERS + OPTIONAL_TIERS if re.search(rf"\b{t}\b", text)}
        pool.cache[key] = (found, res)
    return pool.cache[key]


# Statuses that mean the program itself broke (guest.h's CHECK exits 1) or crashed:
# SIGILL, SIGABRT, SIGBUS, SIGSEGV, SIGSYS as reported by the shell (128 + signal).
BROKEN_STATUSES = {1, 128 + 4, 128 + 6, 128 + 7, 128 + 11, 128 + 31}


def native_run_is_sound(res: Any) -> bool:
    """The guest.h contract: no FAIL line, no CHECK exit, no crash. Programs may still end
    by a signal on purpose (exitsignal), which the tiers must then reproduce."""
    fail_line = any(line.startswith("FAIL") for line in res.stdout.splitlines())
    return not fail_line and res.exit_status not in BROKEN_STATUSES


def describe(what: str, res: Any, expected: Any | None = None) -> str:
    """Failure text: the guest command, its status and output (and the native baseline)."""
    lines = [f"{what}", f"guest command: {res.command}", f"exit status: {res.exit_status}",
             f"--- stdout ---\n{res.stdout[-3000:]}", f"--- stderr ---\n{res.stderr[-3000:]}"]
    if expected is not None:
        lines += [f"native command: {expected.command}",
                  f"native exit status: {expected.exit_status}",
                  f"--- native stdout ---\n{expected.stdout[-3000:]}"]
    return "\n".join(lines)
