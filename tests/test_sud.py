"""The trap tier with Syscall User Dispatch as its SIGSYS source (x86_64 kernels with
CONFIG_GENERIC_ENTRY).  SUD is per task and not inherited by clone/fork, so the seccomp
filter stays installed as the safety net: every guest program must still behave natively,
and every route to a syscall must stay interposed."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pytest

from conftest import guest_names, run, run_mode  # type: ignore[import-not-found]
from test_e2e_guest import normalized  # type: ignore[import-not-found]


@lru_cache(maxsize=1)
def _sud_available() -> bool:
    from kbox.kernel_caps import probe_kernel_caps

    return probe_kernel_caps().sud


@pytest.fixture(autouse=True)
def _needs_sud() -> None:
    if not _sud_available():
        pytest.skip("this kernel has no Syscall User Dispatch (needs CONFIG_GENERIC_ENTRY; "
                    "Debian's arm64 kernels lack it)")


@pytest.mark.parametrize("name", guest_names())
def test_guest_program_behaves_like_native_under_sud(name: str, guest_dir: Path,
                                                     guest_env: dict[str, str]) -> None:
    prog = str(guest_dir / f"{name}-dynamic")
    native = normalized(run([prog], env=guest_env))
    under = normalized(run_mode("trap", [prog], env=guest_env, trap_backend="sud"))
    assert (under.returncode, under.stdout) == (native.returncode, native.stdout), under.describe()


def test_fork_children_and_threads_stay_interposed_under_sud(guest_dir: Path,
                                                            guest_env: dict[str, str]) -> None:
    # storm: 16 threads and 100 fork children; with --stats every call must be counted.
    res = run_mode("trap", [str(guest_dir / "storm-static")], env=guest_env,
                   trap_backend="sud", stats=True)
    assert res.returncode == 0, res.describe()
    rows = {c[0]: int(c[1]) for c in (ln.split() for ln in res.stderr.splitlines())
            if len(c) == 5 and c[1].isdigit()}
    assert rows.get("exit_group", 0) >= 100, res.describe()   # every fork child's exit seen
    assert rows.get("gettid", 0) >= 16, res.describe()        # every thread's calls seen
