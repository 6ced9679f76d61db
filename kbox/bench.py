"""`kbox bench`: the cost of a system call natively and under each kbox tier.

Runs the C benchmark program (kbox-bench, built with the core) once natively and once under
each requested mode through the launcher, in rounds: every round runs every mode once, so a
slow phase of the machine (another build, frequency scaling) hits all modes alike instead of
one.  Per row and mode the best round is kept (noise only adds time) and divided by the
native figure from the same invocation: ratios are only meaningful within one run on one
machine.

A mode the launcher cannot run here (kernel too old, tier not built yet) is found by a short
probe run, reported on stderr with the launcher's own message, and left out of the table.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from kbox import native
from kbox.errors import UserError
from kbox.tiers import AUTO, REWRITE, SECCOMP, TIERS, TRAP

DEFAULT_MODES = ("native", *TIERS, AUTO)
# Also accepted: the trap tier with Syscall User Dispatch as its SIGSYS source (x86_64).
# floor-trap / floor-notify / floor-filter: no kbox at all, just the bare mechanism a tier is
# built on (kbox-bench --floor), so each tier's figure can be read against its floor from one
# run; floor-filter is the seccomp safety net alone, floor-sud Syscall User Dispatch alone
# (x86_64): the two possible floors of the rewrite tier.  rewrite-nopromote: the rewrite
# tier without wrapper-call promotion (aarch64 musl), for the promotion's own gain.
EXTRA_MODES = ("trap-sud", "rewrite-nopromote", "floor-trap", "floor-notify", "floor-filter",
               "floor-sud")
DEFAULT_ITERATIONS = 20000
DEFAULT_ROUNDS = 3
# One kbox-bench run; generous because a TCG guest's seccomp tier is ~500x native.
DEFAULT_TIMEOUT = 900.0
PROBE_ITERATIONS = 50
PROBE_TIMEOUT = 120.0


@dataclass
class BenchResult:
    iterations: int
    rounds: int
    modes: list[str]
    row_names: list[str] = field(default_factory=list)
    # (row, mode) -> best ns per call over the rounds
    best_ns: dict[tuple[str, str], float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    # (row, mode) -> calls per timed pass in the best round (fewer than `iterations` when
    # --max-seconds cut the row short)
    calls: dict[tuple[str, str], int] = field(default_factory=dict)
    max_seconds: float | None = None

    def us(self, row: str, mode: str) -> float | None:
        ns = self.best_ns.get((row, mode))
        return None if ns is None else ns / 1000.0

    def ratio(self, row: str, mode: str) -> float | None:
        ns, base = self.best_ns.get((row, mode)), self.best_ns.get((row, "native"))
        if ns is None or not base:
            return None
        return ns / base

    def to_json(self) -> dict[str, Any]:
        rows = []
        for row in self.row_names:
            for mode in self.modes:
                us = self.us(row, mode)
                if us is None:
                    continue
                ratio = self.ratio(row, mode)
                rows.append({"name": row, "mode": mode, "us_per_call": round(us, 4),
                             "ratio": None if ratio is None else round(ratio, 3),
                             "calls": self.calls.get((row, mode))})
        return {"iterations": self.iterations, "rounds": self.rounds, "modes": self.modes,
                "max_seconds": self.max_seconds, "skipped": self.skipped, "rows": rows}

    def cut_short(self) -> list[str]:
        """Cells timed with fewer calls than asked (--max-seconds), as 'row/mode (N calls)'."""
        return [f"{row}/{mode} ({n} calls)" for (row, mode), n in self.calls.items()
                if n < self.iterations]

    def table(self) -> str:
        width = 18
        head = f"{'syscall (us/call)':<18}" + "".join(f"{m:>{width}}" for m in self.modes)
        lines = [head]
        for row in self.row_names:
            cells = []
            for mode in self.modes:
                us, ratio = self.us(row, mode), self.ratio(row, mode)
                if us is None:
                    cells.append(f"{'-':>{width}}")
                elif mode == "native" or ratio is None:
                    cells.append(f"{us:>{width}.3f}")
                else:
                    cells.append(f"{f'{us:.3f} ({ratio:.1f}x)':>{width}}")
            lines.append(f"{row:<18}" + "".join(cells))
        return "\n".join(lines)


# Where `kbox bench --root` puts kbox-bench inside the tree it builds.
ROOT_BENCH_PATH = "/usr/bin/kbox-bench"


def bench_argv(mode: str, bench_args: Sequence[str], bench_path: str,
               root: str | None = None, root_opts: Sequence[str] = ()) -> list[str]:
    """The command running kbox-bench natively or under one kbox mode; with `root`, inside
    that tree (natively: chroot(2) of it; under kbox: the root view, with the launcher's
    `root_opts` such as its binds)."""
    if root is not None:
        if mode == "native":
            return ["chroot", root, ROOT_BENCH_PATH, *bench_args]
        from kbox import runner
        if mode not in (SECCOMP, TRAP, REWRITE):
            raise RuntimeError("the root view is served by the tiers (seccomp, trap, rewrite)")
        return list(runner.launch_argv(ROOT_BENCH_PATH, list(bench_args), mode=mode,
                                       extra=[f"--root={root}", *root_opts, "--workdir=/"]))
    if mode == "native":
        return [bench_path, *bench_args]
    if mode.startswith("floor-"):
        return [bench_path, "--floor", mode.split("-", 1)[1], *bench_args]
    from kbox import runner  # the launcher's argv contract lives with `kbox run`

    if mode == "trap-sud":
        return list(runner.launch_argv(bench_path, list(bench_args), mode=TRAP, trap_backend="sud"))
    if mode == "rewrite-nopromote":
        argv = list(runner.launch_argv(bench_path, list(bench_args), mode=REWRITE))
        return [argv[0], "--no-promote", *argv[1:]]
    return list(runner.launch_argv(bench_path, list(bench_args), mode=mode))


def _run_once(mode: str, bench_path: str, iterations: int, repeats: int, rows: str | None,
              timeout: float, max_seconds: float | None = None,
              root: str | None = None, root_opts: Sequence[str] = ()) -> dict[str, Any]:
    args = ["--iterations", str(iterations), "--repeats", str(repeats), "--json"]
    if max_seconds:
        args += ["--max-seconds", str(max_seconds)]
    if rows:
        args += ["--rows", rows]
    argv = bench_argv(mode, args, bench_path, root, root_opts)
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"timed out after {timeout:.0f}s") from exc
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise RuntimeError(f"exit status {proc.returncode}: {last}")
    try:
        data = json.loads(proc.stdout)
        return data
    except json.JSONDecodeError as exc:
        raise RuntimeError(f"unreadable output: {proc.stdout[:200]!r}") from exc


BENCH_PROGRAMS = {"glibc": "kbox-bench", "musl": "kbox-bench-musl"}


def bench_program(libc: str) -> Path:
    """kbox-bench built against `libc` (the musl build is static)."""
    path = native.native_dir() / BENCH_PROGRAMS[libc]
    if libc == "musl" and not path.exists() and (native.native_dir() / "kbox-launch").exists():
        raise UserError(f"kbox bench: {path.name} was not built: it needs musl for this "
                        "architecture (Debian's musl-dev; scripts/setup-host installs it), "
                        "then a rebuild (`pip install -e .` or scripts/setup-host)", exit_code=1)
    return native.native_path(BENCH_PROGRAMS[libc])


def run_benchmark(modes: Sequence[str], iterations: int, rounds: int, repeats: int = 3,
                  rows: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                  progress: Any = None, max_seconds: float | None = None,
                  libc: str = "glibc", root: str | None = None,
                  root_opts: Sequence[str] = ()) -> BenchResult:
    """Measure every mode in interleaved rounds; native is always measured (the baseline)."""
    say = progress or (lambda msg: None)
    bench_path = str(bench_program(libc))
    ordered = ["native"] + [m for m in modes if m != "native"]
    result = BenchResult(iterations=iterations, rounds=rounds, modes=[], max_seconds=max_seconds)

    for mode in ordered:
        try:
            _run_once(mode, bench_path, PROBE_ITERATIONS, 1, rows, PROBE_TIMEOUT, root=root,
                      root_opts=root_opts)
        except (RuntimeError, UserError, ImportError) as exc:
            if mode == "native":
                raise UserError(f"kbox bench: kbox-bench does not run natively: {exc}") from exc
            result.skipped[mode] = str(exc)
            say(f"kbox bench: mode {mode} unavailable here, skipped ({exc})")
            continue
        result.modes.append(mode)

    for rnd in range(1, rounds + 1):
        for mode in list(result.modes):
            say(f"kbox bench: round {rnd}/{rounds}, mode {mode}")
            try:
                data = _run_once(mode, bench_path, iterations, repeats, rows, timeout, max_seconds,
                                 root, root_opts)
            except RuntimeError as exc:
                # It passed the probe, so this is a failure worth reporting, not a skip.
                result.modes.remove(mode)
                result.skipped[mode] = f"failed in round {rnd}: {exc}"
                say(f"kbox bench: mode {mode} failed in round {rnd}: {exc}")
                continue
            for row in data["rows"]:
                name, ns = row["name"], float(row["ns_per_call"])
                if name not in result.row_names:
                    result.row_names.append(name)
                key = (name, mode)
                if key not in result.best_ns or ns < result.best_ns[key]:
                    result.best_ns[key] = ns
                    result.calls[key] = int(row.get("calls", iterations))
    if "native" not in result.modes:
        raise UserError("kbox bench: the native baseline failed; no ratios can be computed")
    return result


def _parse_modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    if not modes:
        raise UserError("kbox bench: --modes needs at least one mode", exit_code=2)
    for m in modes:
        if m not in DEFAULT_MODES + EXTRA_MODES:
            raise UserError(f"kbox bench: unknown mode {m!r} (choose from "
                            f"{', '.join(DEFAULT_MODES + EXTRA_MODES)})", exit_code=2)
    return list(dict.fromkeys(modes))


def add_bench_command(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench", help="measure system call cost natively and under each tier",
        description="Run kbox-bench (stat, open+close, lseek+read, write, getpid and a "
                    "non-existent syscall 500 in a tight loop) natively and under each mode, "
                    "interleaved in rounds; print us/call and the ratio to native measured "
                    "in the same run. Modes this kernel cannot run are reported and skipped.")
    p.add_argument("--modes", default=",".join(DEFAULT_MODES),
                   help=f"comma-separated modes (default: {','.join(DEFAULT_MODES)}; also "
                        "trap-sud: the trap tier fed by Syscall User Dispatch; rewrite-nopromote: "
                        "rewrite without promoting musl's wrapper calls (aarch64); "
                        "floor-trap, floor-notify: "
                        "the bare RET_TRAP / user-notify round trip, for syscall500; "
                        "floor-filter, floor-sud: the seccomp safety-net filter / Syscall User Dispatch "
                        "alone, every row); "
                        "native is always measured as the baseline")
    p.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS,
                   help=f"calls per timed pass (default {DEFAULT_ITERATIONS})")
    p.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                   help=f"interleaved rounds over all modes; best kept (default {DEFAULT_ROUNDS})")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed passes per row inside one run; best kept (default 3)")
    p.add_argument("--max-seconds", type=float, default=None, metavar="S",
                   help="bound the time of one row in one mode: calls per pass are reduced "
                        "when the full count would take longer (emulated guests, where a "
                        "notified call can cost milliseconds); cut cells are listed")
    p.add_argument("--rows", default=None,
                   help="comma-separated subset of rows (stat,open+close,lseek+read,write,"
                        "getpid,syscall500)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help=f"seconds allowed for one benchmark run (default {DEFAULT_TIMEOUT:.0f})")
    p.add_argument("--libc", choices=sorted(BENCH_PROGRAMS), default="glibc",
                   help="the C library kbox-bench is built with (musl: a static build; "
                        "default glibc)")
    p.add_argument("--root", action="store_true",
                   help="run kbox-bench inside a root filesystem tree built for it (kbox-bench "
                        "and its libraries): the tiers serve its paths through the root view, "
                        "and native is a chroot of the same tree (needs root)")
    p.add_argument("--binds", type=int, default=0, metavar="N",
                   help="with --root: the view also has N binds (empty directories at /bind-K): "
                        "every path is then walked by kbox itself (up to 16)")
    p.add_argument("--json", action="store_true",
                   help='print one JSON object with a "rows" list of '
                        '{"name", "mode", "us_per_call", "ratio"}')
    p.set_defaults(func=run_bench)
    return p


def run_bench(args: argparse.Namespace) -> int:
    modes = _parse_modes(args.modes)
    explicit = args.modes != ",".join(DEFAULT_MODES)
    if args.iterations <= 0 or args.rounds <= 0 or args.repeats <= 0:
        raise UserError("kbox bench: --iterations, --rounds and --repeats must be positive",
                        exit_code=2)
    if args.max_seconds is not None and args.max_seconds <= 0:
        raise UserError("kbox bench: --max-seconds must be positive", exit_code=2)

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if args.binds and not args.root:
        raise UserError("kbox bench: --binds applies with --root only", exit_code=2)
    if not 0 <= args.binds <= 16:
        raise UserError("kbox bench: --binds must be between 0 and 16", exit_code=2)
    if not args.root:
        result = run_benchmark(modes, args.iterations, args.rounds, args.repeats, args.rows,
                               args.timeout, progress, args.max_seconds, args.libc)
    else:
        if os.geteuid() != 0:
            raise UserError("kbox bench --root: the native baseline is a chroot of the tree, "
                            "which needs root", exit_code=2)
        import tempfile
        from kbox import rootfs
        with tempfile.TemporaryDirectory(prefix="kbox-bench-root-") as tree:
            rootfs.make_layout(Path(tree))
            rootfs.make_device_nodes(Path(tree))
            bench = bench_program(args.libc)
            rootfs.copy_file(str(bench), Path(tree))
            os.rename(Path(tree) / str(bench).lstrip("/"), Path(tree) / ROOT_BENCH_PATH.lstrip("/"))
            for lib in rootfs.needed(str(bench)):
                rootfs.copy_file(lib, Path(tree))
            opts: list[str] = []
            for k in range(args.binds):
                src = Path(tree + "-binds") / str(k)
                src.mkdir(parents=True)
                opts += [f"--bind={src}", f"--bind-at=/bind-{k}"]
            try:
                result = run_benchmark(modes, args.iterations, args.rounds, args.repeats, args.rows,
                                       args.timeout, progress, args.max_seconds, args.libc,
                                       root=tree, root_opts=opts)
            finally:
                shutil.rmtree(tree + "-binds", ignore_errors=True)
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(f"kbox bench ({BENCH_PROGRAMS[args.libc]}): {args.iterations} calls per pass, "
              f"best of {args.repeats} passes x {args.rounds} rounds; ratio = mode / native "
              "in this run" + ("; inside a root tree (native: chroot of it)" if args.root else "")
              + (f", the view with {args.binds} binds" if args.binds else ""))
        print(result.table())
        short = result.cut_short()
        if short:
            print(f"cut by --max-seconds {args.max_seconds:g}: " + ", ".join(short))
        for mode, why in result.skipped.items():
            print(f"skipped {mode}: {why}")
    # Modes named explicitly must all have run; the default list tolerates absent tiers.
    failed = [m for m in modes if m in result.skipped and (explicit or "failed" in
                                                          result.skipped[m])]
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry (python -m kbox.bench) until/besides the `kbox` CLI wiring."""
    parser = argparse.ArgumentParser(prog="kbox")
    sub = parser.add_subparsers(dest="command", required=True)
    add_bench_command(sub)
    args = parser.parse_args(["bench", *(argv if argv is not None else sys.argv[1:])])
    try:
        return run_bench(args)
    except UserError as exc:
        print(exc, file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
