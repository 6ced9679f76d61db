"""Every guest program (tests/guest: glibc static and dynamic, musl static) runs natively and
under every kbox mode; stdout and exit status must be identical.  Plus the policies whose effect a guest
program can observe: --virtual-pid and death by signal."""
from __future__ import annotations

import signal
from pathlib import Path

import pytest

from conftest import GUEST_KINDS, MODES, Result, assert_same, guest_names, run, run_mode

# The exit status each program has natively (all others exit 0).
EXPECTED_STATUS = {"exitsignal": 128 + signal.SIGTERM}

_native_cache: dict[tuple[str, str], Result] = {}


def native_result(guest_dir: Path, prog: str, env: dict[str, str]) -> Result:
    """The native baseline, run once per program per session; it must itself be sane, or
    a comparison would prove nothing."""
    key = (str(guest_dir), prog)
    if key not in _native_cache:
        res = run([str(guest_dir / prog)], env=env)
        status = EXPECTED_STATUS.get(prog.rsplit("-", 1)[0], 0)
        # A signal death is negative in subprocess terms; the shell convention is 128+N.
        code = 128 - res.returncode if res.returncode < 0 else res.returncode
        assert code == status and "FAIL" not in res.stdout, (
            f"native baseline is broken:\n{res.describe()}")
        _native_cache[key] = res
    return _native_cache[key]


def normalized(res: Result) -> Result:
    """kbox reports a signal death as 128+N (like a shell); subprocess says -N natively."""
    code = 128 - res.returncode if res.returncode < 0 else res.returncode
    return Result(res.argv, code, res.stdout, res.stderr)


@pytest.mark.parametrize("kind", GUEST_KINDS)
@pytest.mark.parametrize("name", guest_names())
@pytest.mark.parametrize("mode", MODES)
def test_guest_program_behaves_like_native(mode: str, name: str, kind: str, guest_dir: Path,
                                           guest_env: dict[str, str]) -> None:
    prog = f"{name}-{kind}"
    native = normalized(native_result(guest_dir, prog, guest_env))
    under = normalized(run_mode(mode, [str(guest_dir / prog)], env=guest_env))
    assert_same(native, under, f"{prog} under {mode}")


@pytest.mark.parametrize("kind", ["static", "dynamic"])
@pytest.mark.parametrize("mode", MODES)
def test_virtual_pid_makes_the_program_pid_1(mode: str, kind: str, guest_dir: Path,
                                             guest_env: dict[str, str]) -> None:
    prog = str(guest_dir / f"getpid_vpid-{kind}")
    native = run([prog], env=guest_env)
    assert native.returncode == 0, native.describe()
    under = run_mode(mode, [prog, "--expect-vpid"], env=guest_env, virtual_pid=True)
    if mode == "seccomp":
        # The kernel runs a CONTINUEd call after the supervisor has answered, so the seccomp
        # tier cannot translate fork/clone/wait4 results: kbox refuses instead of half-working.
        assert under.returncode == 2 and "needs an in-process tier" in under.stderr, under.describe()
        return
    assert under.returncode == 0, under.describe()
    lines = under.stdout.splitlines()
    assert "getpid: 1" in lines, under.describe()
    # The first process the program creates gets the next number.
    assert "fork child's pid: 2" in lines, under.describe()
    relations = [ln for ln in lines if not ln.startswith(("getpid: ", "fork child's pid: "))]
    assert relations == native.stdout.splitlines(), (
        f"pid relations differ under --virtual-pid\n=== native ===\n{native.describe()}\n"
        f"=== under kbox ===\n{under.describe()}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL, signal.SIGUSR1])
@pytest.mark.parametrize("mode", MODES)
def test_exit_status_is_128_plus_the_killing_signal(mode: str, sig: int, guest_dir: Path,
                                                    guest_env: dict[str, str]) -> None:
    res = run_mode(mode, [str(guest_dir / "exitsignal-static"), str(int(sig))], env=guest_env)
    assert res.returncode == 128 + sig, res.describe()
    assert f"child: signaled yes, signal {int(sig)}" in res.stdout, res.describe()
