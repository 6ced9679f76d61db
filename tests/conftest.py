"""Host-test fixtures: the guest programs built once per session, and helpers that run a
command natively or under one kbox mode and capture what the comparison needs.

The parameter for kbox modes is named `mode` (not `tier`): the top-level conftest
parametrizes every test that asks for `tier` over the VM platform's tier list.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import pytest
from filelock import FileLock

from kbox.tiers import AUTO, TIERS

REPO = Path(__file__).resolve().parents[1]
GUEST_SRC = REPO / "tests" / "guest"

# Modes every end-to-end test runs under: every tier and auto; KBOX_TEST_MODES
# (comma-separated) overrides for a one-off run.
MODES: list[str] = [m for m in os.environ.get("KBOX_TEST_MODES", ",".join((*TIERS, AUTO))).split(",")
                    if m]

# Generous: the seccomp tier makes every syscall a round trip through the supervisor.
RUN_TIMEOUT = 180.0


# How tests/guest/Makefile builds every NAME.c: NAME-static, NAME-dynamic (glibc) and
# NAME-musl (static, musl libc).
GUEST_KINDS: list[str] = ["static", "dynamic", "musl"]


# Guest programs that only mean something in a setting their own tests make (not natively
# and under each mode alike): rootescape needs a root view with its marker files.
OWN_SETTING = ("rootescape",)


def guest_names() -> list[str]:
    return sorted(p.stem for p in GUEST_SRC.glob("*.c") if p.stem not in OWN_SETTING)


@dataclass
class Result:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        return (f"command: {' '.join(self.argv)}\nexit status: {self.returncode}\n"
                f"--- stdout ---\n{self.stdout[-4000:]}\n--- stderr ---\n{self.stderr[-4000:]}")


def kbox_argv(mode: str, argv: Sequence[str], **policy: object) -> list[str]:
    """argv running `argv` natively or under a kbox mode (via the launcher's argv contract)."""
    if mode == "native":
        assert not policy, "policies need a kbox mode"
        return list(argv)
    from kbox import runner

    return list(runner.launch_argv(argv[0], list(argv[1:]), mode=mode, **policy))


def run(argv: Sequence[str], *, cwd: Path | str | None = None, env: dict[str, str] | None = None,
        stdin: str | None = None, timeout: float = RUN_TIMEOUT,
        preexec_fn: object = None) -> Result:
    try:
        proc = subprocess.run(list(argv), cwd=cwd, env=env, input=stdin, capture_output=True,
                              text=True, errors="replace", timeout=timeout,
                              stdin=None if stdin is not None else subprocess.DEVNULL,
                              preexec_fn=preexec_fn)  # type: ignore[arg-type]
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        pytest.fail(f"timed out after {timeout}s: {' '.join(argv)}\n--- stdout ---\n{out[-3000:]}"
                    f"\n--- stderr ---\n{err[-3000:]}")
    return Result(list(argv), proc.returncode, proc.stdout, proc.stderr)


def run_mode(mode: str, argv: Sequence[str], **kw: object) -> Result:
    policy = {k: kw.pop(k) for k in list(kw) if k in
              ("trace", "trace_format", "trace_output", "deny", "virtual_pid", "stats",
               "trap_backend")}
    return run(kbox_argv(mode, argv, **policy), **kw)  # type: ignore[arg-type]


def kbox_cli(*args: str, timeout: float = RUN_TIMEOUT, **kw: object) -> Result:
    """The `kbox` command as a user runs it (the CLI module, so no PATH assumption)."""
    code = "import sys; from kbox.cli import main; sys.exit(main())"
    return run([sys.executable, "-c", code, *args], timeout=timeout, **kw)  # type: ignore[arg-type]


def assert_same(native: Result, other: Result, what: str) -> None:
    assert (other.returncode, other.stdout) == (native.returncode, native.stdout), (
        f"{what}: differs from native\n=== native ===\n{native.describe()}\n"
        f"=== under kbox ===\n{other.describe()}")


@pytest.fixture(scope="session")
def guest_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/guest built for the host (NAME-static, NAME-dynamic, NAME-musl); built once even
    under xdist (a lock in the session's shared temp root), readable by any uid."""
    root = tmp_path_factory.getbasetemp().parent
    out = root / "kbox-guest-bin"
    with FileLock(str(root / "kbox-guest-bin.lock"), timeout=600):
        proc = subprocess.run(["make", "-s", "-j2", "-C", str(GUEST_SRC), f"O={out}"],
                              capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            pytest.fail(f"building tests/guest failed:\n{proc.stdout}\n{proc.stderr}")
    return out


@pytest.fixture(scope="session")
def world_dir() -> Iterator[Path]:
    """A directory every uid can use (the unprivileged tests run as nobody, and pytest's own
    temp root is private to root)."""
    base = Path(os.environ.get("KBOX_TEST_WORLD_DIR", "/tmp"))
    path = base / f"kbox-test-world-{os.getpid()}"
    path.mkdir(mode=0o1777, exist_ok=True)
    os.chmod(path, 0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def guest_env(tmp_path: Path) -> dict[str, str]:
    """Environment for guest programs: their scratch files go under this test's tmp_path."""
    env = dict(os.environ)
    env["TMPDIR"] = str(tmp_path)
    env["LC_ALL"] = "C"
    return env


@pytest.fixture(scope="session")
def DEBIAN_TREE():
    """The cached Debian tree of this host's architecture (kbox/root_debian.py; built on the
    first use on a machine); tests copy it (root_debian.copy_tree) before writing in it."""
    import platform

    from kbox import root_debian
    arch = platform.machine()
    if arch not in ("x86_64", "aarch64"):
        pytest.skip(f"no Debian tree for a {arch} host")
    return root_debian.ensure_root(arch, progress=False)
