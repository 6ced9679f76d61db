"""kbox-bench (the C program) and `kbox bench` (rounds over modes, ratios, skipping)."""
from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path
from typing import Sequence

import pytest

from conftest import MODES, REPO

from kbox import bench
from kbox.errors import UserError

ROWS = ["stat", "open+close", "lseek+read", "write", "getpid", "syscall500"]


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """kbox-bench built on its own (the rest of the core may be mid-change in a shared tree)."""
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(["make", "-s", "-C", str(REPO / "csrc"), f"O={out}",
                           str(out / "kbox-bench")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def run_bench_prog(bench_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(bench_dir / "kbox-bench"), *args], capture_output=True,
                          text=True, timeout=120)


def test_kbox_bench_json_has_every_row_with_a_positive_cost(bench_dir: Path) -> None:
    proc = run_bench_prog(bench_dir, "--iterations", "2000", "--repeats", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["iterations"] == 2000 and data["repeats"] == 2
    assert [r["name"] for r in data["rows"]] == ROWS
    for r in data["rows"]:
        # Nothing is faster than ~1 ns nor, natively, slower than 1 ms per call.
        assert 1.0 < r["ns_per_call"] < 1e6, r


def test_kbox_bench_text_output_and_row_subset(bench_dir: Path) -> None:
    proc = run_bench_prog(bench_dir, "--iterations", "500", "--rows", "getpid,syscall500")
    assert proc.returncode == 0, proc.stderr
    names = [ln.split()[0] for ln in proc.stdout.splitlines()]
    assert names == ["getpid", "syscall500"]
    assert all(ln.endswith("ns/call  (500 calls per pass)") for ln in proc.stdout.splitlines())


def test_kbox_bench_max_seconds_bounds_a_row_and_says_so(bench_dir: Path) -> None:
    # stat costs ~0.5-1 us natively: 10^7 calls x 2 passes would take >10 s; 50 ms allows
    # only a few tens of thousands, and the row reports the calls it actually timed.
    proc = run_bench_prog(bench_dir, "--iterations", "10000000", "--repeats", "2",
                          "--max-seconds", "0.05", "--rows", "stat", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["max_seconds"] == 0.05
    [row] = data["rows"]
    assert 10 <= row["calls"] < 1000000, row
    assert 1.0 < row["ns_per_call"] < 1e6, row
    # Without the bound every pass runs the full count.
    proc = run_bench_prog(bench_dir, "--iterations", "300", "--rows", "getpid", "--json")
    assert json.loads(proc.stdout)["rows"][0]["calls"] == 300


@pytest.mark.parametrize("floor", ["filter", "sud"])
def test_kbox_bench_safety_net_floors_run_every_row(bench_dir: Path, floor: str) -> None:
    # The floors of the rewrite tier: the seccomp filter / SUD installed, every call allowed
    # (so every row still works), each call paying the kernel's check.  SUD is x86_64-only on
    # the Debian kernels; this host runs x86_64 with SUD (kbox doctor checks it).
    proc = run_bench_prog(bench_dir, "--floor", floor, "--iterations", "200", "--json")
    assert proc.returncode == 0, proc.stderr
    assert [r["name"] for r in json.loads(proc.stdout)["rows"]] == ROWS


@pytest.mark.parametrize("args", [["--rows", "bogus"], ["--iterations", "0"], ["--frobnicate"],
                                  ["--max-seconds", "0"], ["--max-seconds", "soon"]])
def test_kbox_bench_rejects_bad_arguments(bench_dir: Path, args: list[str]) -> None:
    proc = run_bench_prog(bench_dir, *args)
    assert proc.returncode == 2 and proc.stderr.startswith("kbox-bench: "), proc.stderr
    assert proc.stdout == ""


def test_kbox_bench_fails_loudly_instead_of_timing_an_error(bench_dir: Path,
                                                           tmp_path: Path) -> None:
    # An unwritable TMPDIR: setup cannot create the benchmark file, so nothing is timed.
    proc = subprocess.run([str(bench_dir / "kbox-bench"), "--iterations", "10"],
                          capture_output=True, text=True, timeout=60,
                          env={"TMPDIR": str(tmp_path / "missing")})
    assert proc.returncode == 1 and "mkstemp failed" in proc.stderr, proc.stderr
    assert proc.stdout == ""


def bench_args(**kw: object) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_bench_command(parser.add_subparsers())
    argv = ["bench"]
    for k, v in kw.items():
        flag = "--" + k.replace("_", "-")
        argv += [flag] if v is True else [flag, str(v)]
    return parser.parse_args(argv)


def test_bench_native_only_reports_ratio_one(bench_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KBOX_NATIVE_DIR", str(bench_dir))
    args = bench_args(modes="native", iterations=500, rounds=2, repeats=1, json=True)
    assert bench.run_bench(args) == 0
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert {r["name"] for r in data["rows"]} == set(ROWS)
    assert all(r["mode"] == "native" and r["ratio"] == 1.0 and r["us_per_call"] > 0
               for r in data["rows"])
    assert "round 2/2, mode native" in err


def test_bench_interleaves_rounds_and_skips_an_unavailable_mode(
        bench_dir: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A mode whose probe fails is reported with the launcher's message and left out; the
    others run in interleaved rounds.  The fake modes here are the native program itself
    and a launcher that refuses to start."""
    monkeypatch.setenv("KBOX_NATIVE_DIR", str(bench_dir))
    calls: list[str] = []

    def fake_argv(mode: str, bench_args_: list[str], path: str, root: str | None = None,
                  root_opts: Sequence[str] = ()) -> list[str]:
        calls.append(mode)
        if mode == "rewrite":
            return ["sh", "-c", "echo 'kbox: rewrite is not supported on this kernel' >&2; "
                                "exit 1"]
        return [path, *bench_args_]

    monkeypatch.setattr(bench, "bench_argv", fake_argv)
    args = bench_args(modes="native,trap,rewrite", iterations=300, rounds=2, repeats=1)
    assert bench.run_bench(args) == 1  # rewrite was asked for explicitly and did not run
    out, err = capsys.readouterr()
    assert "mode rewrite unavailable here, skipped" in err
    assert "rewrite is not supported on this kernel" in err
    assert "skipped rewrite:" in out
    header = out.splitlines()[1]
    assert "native" in header and "trap" in header and "rewrite" not in header
    assert "x)" in out  # ratios are printed beside the non-native modes
    # Probes first (native, trap, rewrite), then rounds alternate native and trap.
    assert calls == ["native", "trap", "rewrite", "native", "trap", "native", "trap"]


def test_bench_default_modes_tolerate_absent_tiers(bench_dir: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KBOX_NATIVE_DIR", str(bench_dir))
    monkeypatch.setattr(bench, "bench_argv", lambda mode, a, path, root=None, root_opts=(): [path, *a]
                        if mode == "native" else ["false"])
    args = bench_args(iterations=200, rounds=1, repeats=1, json=True)
    assert bench.run_bench(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["modes"] == ["native"]
    assert set(data["skipped"]) == {"seccomp", "trap", "rewrite", "auto"}


def test_bench_max_seconds_is_passed_on_and_cut_cells_are_listed(
        bench_dir: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KBOX_NATIVE_DIR", str(bench_dir))
    args = bench_args(modes="native", iterations=5000000, rounds=1, repeats=1, rows="stat",
                      max_seconds=0.02)
    assert bench.run_bench(args) == 0
    out = capsys.readouterr().out
    assert "cut by --max-seconds 0.02: stat/native (" in out, out
    with pytest.raises(UserError) as exc:
        bench.run_bench(bench_args(modes="native", max_seconds=-1))
    assert exc.value.exit_code == 2 and "--max-seconds" in str(exc.value)


def test_bench_unknown_mode_is_a_usage_error() -> None:
    with pytest.raises(UserError) as exc:
        bench.run_bench(bench_args(modes="native,warp"))
    assert exc.value.exit_code == 2 and "warp" in str(exc.value)


@pytest.mark.parametrize("mode", MODES)
def test_bench_under_a_real_tier_costs_more_than_native(mode: str) -> None:
    """Through the real launcher: the tier runs the benchmark to completion and interposing
    a non-existent syscall costs more than not interposing it."""
    result = bench.run_benchmark([mode], iterations=2000, rounds=1, repeats=2,
                                 rows="getpid,syscall500")
    assert mode in result.modes, result.skipped
    ratio = result.ratio("syscall500", mode)
    assert ratio is not None and ratio > 1.0, result.to_json()


def test_bench_argv_inside_a_root_runs_chroot_natively_and_the_view_under_kbox():
    native = bench.bench_argv("native", ["--json"], "/ignored", root="/r")
    assert native == ["chroot", "/r", bench.ROOT_BENCH_PATH, "--json"]
    rw = bench.bench_argv("rewrite", ["--json"], "/ignored", root="/r")
    assert "--root=/r" in rw and "--syscall-mode=rewrite" in rw and rw[-2:] == [bench.ROOT_BENCH_PATH, "--json"]
    sc = bench.bench_argv("seccomp", ["--json"], "/ignored", root="/r")
    assert "--root=/r" in sc and "--syscall-mode=seccomp" in sc and sc[-2:] == [bench.ROOT_BENCH_PATH, "--json"]
    with pytest.raises(RuntimeError, match="served by the tiers"):
        bench.bench_argv("floor-getpid", [], "/ignored", root="/r")
    bound = bench.bench_argv("trap", [], "/ignored", root="/r", root_opts=["--bind=/s", "--bind-at=/b"])
    assert bound.index("--root=/r") < bound.index("--bind=/s") < bound.index("--bind-at=/b")
