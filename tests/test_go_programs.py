"""Go programs natively and under every kbox mode (issue 14).

The Go runtime is the hard case for the in-process tiers: goroutines run on small stacks the
runtime grows and moves, every thread has its own alternate signal stack, and the runtime
preempts goroutines by sending SIGURG to its own threads (sysmon after a 10 ms time slice,
the GC to scan stacks) — so signals land while threads are inside kbox's SIGSYS handler.
The programs (tests/go, built here with the go tool, static, CGO_ENABLED=0) are:

- go-gostorm: 16 goroutines doing file I/O between tight loops, a check that asynchronous
  preemption works, os/exec of itself and of /bin/true, timers, a channel fan-in;
- `go test` of a small package, with the go tool, compiler, linker, vet and the test binary
  all interposed (and that test binary alone, go-pkgtest, as the VMs run it);
- gofmt from Debian's golang package, formatting, diffing and listing files concurrently.

Each must give the exit status and stdout of its native run.  `go` missing is a failure,
not a skip: scripts/setup-host installs golang-go.
"""
from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock

from conftest import MODES, Result, assert_same, run, run_mode  # type: ignore[import-not-found]

REPO = Path(__file__).resolve().parents[1]
GO_SRC = REPO / "tests" / "go"
# Natively each program takes 0.3-2.5 s here, the seccomp tier ~1.5x that; a hang (the
# failure mode of a broken signal path) should not hold the suite for long.
TIMEOUT = 90.0
ALL = ["native", *MODES]


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not on PATH: the Go program tests need Debian's golang-go "
                    f"(apt-get install golang-go; scripts/setup-host installs it)", pytrace=False)
    return path


@pytest.fixture(scope="session")
def go_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/go built for the host (go-gostorm, go-pkgtest) once per session, even under
    xdist (a lock in the session's shared temp root); the Go build cache lives there too."""
    _tool("go")
    root = tmp_path_factory.getbasetemp().parent
    out = root / "kbox-go-bin"
    with FileLock(str(root / "kbox-go-bin.lock"), timeout=600):
        proc = subprocess.run(["make", "-s", "-j2", "-C", str(GO_SRC), f"O={out}"],
                              capture_output=True, text=True, timeout=600, check=False)
        if proc.returncode != 0:
            pytest.fail(f"building tests/go failed:\n{proc.stdout}\n{proc.stderr}",
                        pytrace=False)
    return out


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GO")}
    env.update(TMPDIR=str(tmp), HOME=str(tmp), LC_ALL="C",
               GODEBUG="asyncpreemptoff=0")   # the default, stated: preemption signals on
    return env


_NATIVE: dict[tuple[str, ...], Result] = {}
Normalize = Callable[[Result], Result]
EnvFor = Callable[[Path], dict[str, str]]


def _compare(mode: str, argv: list[str], tmp_path_factory: pytest.TempPathFactory,
             tmp_path: Path, *, env_for: EnvFor = _env, normalize: Normalize = lambda r: r,
             **kw: object) -> Result:
    """Run argv natively (once per worker; that run must succeed) and, unless mode is
    "native", under mode; exit status and stdout (after `normalize`) must be the same."""
    key = tuple(argv)
    if key not in _NATIVE:
        tmp = tmp_path_factory.mktemp("native")
        res = run(argv, env=env_for(tmp), timeout=TIMEOUT, **kw)  # type: ignore[arg-type]
        assert res.returncode == 0 and not any(
            ln.startswith("FAIL") for ln in res.stdout.splitlines()), (
            f"the native run fails (a broken test program, not kbox):\n{res.describe()}")
        _NATIVE[key] = res
    native = normalize(_NATIVE[key])
    if mode == "native":
        return native
    under = normalize(run_mode(mode, argv, env=env_for(tmp_path), timeout=TIMEOUT, **kw))
    assert_same(native, under, f"{' '.join(argv)} under {mode}")
    return under


@pytest.mark.parametrize("mode", ALL)
def test_go_program_with_preempted_goroutines_runs_like_native(
        mode: str, go_bin: Path, tmp_path_factory: pytest.TempPathFactory,
        tmp_path: Path) -> None:
    res = _compare(mode, [str(go_bin / "go-gostorm")], tmp_path_factory, tmp_path)
    lines = res.stdout.splitlines()
    assert lines[:1] == ["preemption ok"] and lines[-1:] == ["OK"], res.describe()


def test_go_program_reports_a_failure_with_a_fail_line_and_status_1(go_bin: Path,
                                                                    tmp_path: Path) -> None:
    # What the comparisons rely on: a broken system call shows in stdout and the status.
    res = run([str(go_bin / "go-gostorm")], env=_env(tmp_path / "missing"), timeout=TIMEOUT)
    assert res.returncode == 1 and res.stdout.startswith("FAIL MkdirTemp"), res.describe()


@pytest.mark.skipif(platform.machine() != "x86_64", reason="Syscall User Dispatch: x86_64 only")
def test_go_program_with_preempted_goroutines_runs_like_native_under_sud(
        go_bin: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    from kbox.kernel_caps import probe_kernel_caps

    if not probe_kernel_caps().sud:
        pytest.skip("this kernel has no Syscall User Dispatch (needs CONFIG_GENERIC_ENTRY)")
    res = _compare("trap", [str(go_bin / "go-gostorm")], tmp_path_factory, tmp_path,
                   trap_backend="sud")
    assert res.stdout.splitlines()[-1:] == ["OK"], res.describe()


def _go_test_env(res_dir: Path) -> dict[str, str]:
    """A cold build cache per run, so the go tool compiles, links and vets under kbox;
    offline (no proxy, no sum database), nothing from the user's Go configuration."""
    env = _env(res_dir)
    env.update(GOCACHE=str(res_dir / "gocache"), GOPATH=str(res_dir / "gopath"),
               GOFLAGS="-mod=readonly", GOPROXY="off", GOSUMDB="off", GOENV="off",
               GOWORK="off", GO111MODULE="on", GOTOOLCHAIN="local", GOTELEMETRY="off",
               CGO_ENABLED="0")
    return env


def _without_durations(res: Result) -> Result:
    # "ok  \tkboxgo/pkgtest\t0.073s", "--- FAIL: TestX (0.00s)": durations vary.
    out = re.sub(r"(?m)\s\(?[0-9]+\.[0-9]+s\)?$", " <time>", res.stdout)
    return Result(res.argv, res.returncode, out, res.stderr)


@pytest.mark.parametrize("mode", ALL)
def test_go_test_of_a_package_passes_under_kbox_like_native(
        mode: str, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    res = _compare(mode, [_tool("go"), "test", "-count=1", "./pkgtest"], tmp_path_factory,
                   tmp_path, env_for=_go_test_env, normalize=_without_durations, cwd=GO_SRC)
    assert res.stdout == "ok  \tkboxgo/pkgtest <time>\n", res.describe()


@pytest.mark.parametrize("mode", ALL)
def test_compiled_go_test_binary_passes_like_native(
        mode: str, go_bin: Path, tmp_path_factory: pytest.TempPathFactory,
        tmp_path: Path) -> None:
    res = _compare(mode, [str(go_bin / "go-pkgtest")], tmp_path_factory, tmp_path)
    assert res.stdout == "PASS\n", res.describe()


GOFMT_CASES = ("format", "list-tree", "simplify-diff")


def _gofmt_args(case: str, goroot: Path) -> list[str]:
    src = "testdata/unformatted.go"
    return {"format": [src], "simplify-diff": ["-s", "-d", src],
            # Many files, formatted concurrently (gofmt 1.19 reads and formats in parallel).
            "list-tree": ["-l", *(str(goroot / "src/go" / d)
                                  for d in ("ast", "format", "printer", "scanner", "token")),
                          "."]}[case]


@pytest.mark.parametrize("mode", ALL)
@pytest.mark.parametrize("case", GOFMT_CASES)
def test_gofmt_from_debian_formats_like_native(
        case: str, mode: str, tmp_path_factory: pytest.TempPathFactory,
        tmp_path: Path) -> None:
    gofmt = os.path.realpath(_tool("gofmt"))   # /usr/lib/go-1.19/bin/gofmt
    argv = [gofmt, *_gofmt_args(case, Path(gofmt).parents[1])]
    res = _compare(mode, argv, tmp_path_factory, tmp_path, cwd=GO_SRC)
    expected = "package unformatted\n" if case == "format" else "testdata/unformatted.go\n"
    assert expected in res.stdout, res.describe()
