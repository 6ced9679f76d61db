"""The rewrite tier: sites really are rewritten, and rewritten calls are ABI-exact."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import run, run_mode  # type: ignore[import-not-found]


def rewritten_count(stats: str, name: str) -> tuple[int, int]:
    """(trapped, rewritten) for syscall `name` from a --stats table."""
    for line in stats.splitlines():
        cols = line.split()
        if cols and cols[0] == name and len(cols) == 5:
            return int(cols[3]), int(cols[4])
    raise AssertionError(f"{name} missing from the stats table:\n{stats}")


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_a_million_rewritten_syscalls_preserve_every_register_and_the_red_zone(
        kind: str, guest_dir: Path, guest_env: dict[str, str]) -> None:
    prog = str(guest_dir / f"regs-{kind}")
    res = run_mode("rewrite", [prog, "1000000"], env=guest_env, stats=True)
    assert res.returncode == 0, res.describe()
    for line in ("general registers preserved: yes",
                 "result-side registers as the kernel leaves them: yes",
                 "red zone untouched: yes", "vector registers preserved: yes"):
        assert line in res.stdout.splitlines(), res.describe()
    trapped, rewritten = rewritten_count(res.stderr, "getpid")
    # The first call traps and rewrites the site; every later one takes the trampoline.
    assert trapped == 1 and rewritten == 999_999, res.describe()


def test_the_fast_path_preserves_registers_too(guest_dir: Path, guest_env: dict[str, str]) -> None:
    # Without --stats no policy applies to getpid: the trampoline runs it directly.
    res = run_mode("rewrite", [str(guest_dir / "regs-dynamic"), "1000000"], env=guest_env)
    assert res.returncode == 0 and "vector registers preserved: yes" in res.stdout, res.describe()


def test_common_libc_calls_are_served_by_the_rewritten_path(guest_dir: Path,
                                                            guest_env: dict[str, str]) -> None:
    res = run_mode("rewrite", [str(guest_dir / "fileio-dynamic")], env=guest_env, stats=True)
    assert res.returncode == 0, res.describe()
    total = sum(int(c[4]) for c in (ln.split() for ln in res.stderr.splitlines())
                if len(c) == 5 and re.fullmatch(r"\d+", c[4]))
    assert total > 0, res.describe()
