"""Where a VM test run's time went: durations recorded as they happen, one text at the end.

- Producers, in whichever process does the work: images.ensure_image() records an "image"
  event (the check, or the build), VM.wait_ready() a "boot" event (launch to SSH-ready,
  with the accelerator). They append to EVENTS; nothing else happens unless a collector
  drains them.
- pytest_timing.TimingPlugin drains them after each test phase on the process that ran it, and
  ships them with the phase's duration and the test's cell (arch x kernel x tier) to the
  controller as a report attribute (xdist serializes report attributes). The controller
  prints format_report() after the matrix (trylast) and writes it to <artifacts>/timing.txt.
- scripts/vmtest passes the steps it ran before pytest (setup-host, doctor, the image
  check/build) in KBOX_VMTEST_STEPS ("name=seconds,...") and its start in KBOX_VMTEST_START.

format_report() is pure: RunTimes in, lines out.
"""
from __future__ import annotations

import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

EVENTS: list[dict[str, Any]] = []
_MAX_EVENTS = 10000   # a long-lived process without a collector must not grow without bound
TIERS = ("native", "seccomp", "trap", "rewrite", "auto")
STEP_NAMES = {"setup": "setup-host", "doctor": "doctor", "images": "image check/build"}


def record(kind: str, **fields: Any) -> None:
    """Note one duration (fields: arch, kernel, seconds, and what the kind needs)."""
    if len(EVENTS) < _MAX_EVENTS:
        EVENTS.append({"kind": kind, **fields})


def drain() -> list[dict[str, Any]]:
    out = EVENTS[:]
    del EVENTS[:]
    return out


@dataclass
class TestDuration:
    __test__ = False   # not a pytest test class, despite the name
    nodeid: str
    cell: tuple[str, str, str] | None   # (arch, kernel, tier or "-"); None: not a VM test
    seconds: float = 0.0                # setup + call + teardown
    worker: str = "master"
    boot_seconds: float = 0.0           # VM boots that happened during this test's setup
    build_seconds: float = 0.0          # image (re)builds that happened during it


@dataclass
class RunTimes:
    session: float                                   # pytest's wall time
    steps: list[tuple[str, float]] = field(default_factory=list)  # scripts/vmtest, before pytest
    script_total: float | None = None                # since scripts/vmtest started
    boots: list[dict[str, Any]] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)
    tests: list[TestDuration] = field(default_factory=list)


def fmt_s(seconds: float) -> str:
    if seconds >= 60:
        return f"{int(seconds // 60)}m{seconds % 60:04.1f}s"
    return f"{seconds:.1f}s"


def format_report(t: RunTimes, slowest: int = 10) -> list[str]:
    """The "where the time went" text (without its section title)."""
    lines: list[str] = []
    head = [f"{STEP_NAMES.get(n, n)} {fmt_s(s)}" for n, s in t.steps] + [f"pytest {fmt_s(t.session)}"]
    total = f"scripts/vmtest {fmt_s(t.script_total)}: " if t.script_total is not None else ""
    lines.append(total + ", ".join(head))
    if t.images:
        built = [i for i in t.images if i.get("built")]
        lines.append(f"image check in pytest: {len(t.images)} call(s), "
                     f"{fmt_s(sum(i['seconds'] for i in t.images))}"
                     + (f"; rebuilt {', '.join(sorted({i['arch'] + '/' + i['kernel'] for i in built}))}"
                        if built else " (all cached)"))
    if t.boots:
        lines.append("boot to SSH-ready per VM:")
        for b in sorted(t.boots, key=lambda b: (b["arch"], b["kernel"], b.get("worker", ""))):
            lines.append(f"  {b['arch']:8} {b['kernel']:14} {b.get('worker', ''):6} "
                         f"{str(b.get('accel', '?')).upper():4} {b['seconds']:6.2f} s")
    cells: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    owners: dict[tuple[str, str], set[str]] = defaultdict(set)
    for tt in t.tests:
        if tt.cell is None:
            continue
        arch, kernel, tier = tt.cell
        cells[(arch, kernel)][tier] += tt.seconds
        owners[(arch, kernel)].add(tt.worker)
    if cells:
        tiers = [x for x in (*TIERS, "-") if any(x in c for c in cells.values())]
        lines.append("tests per cell (seconds: setup + call + teardown, the VM's boot in its "
                     "first test's setup):")
        lines.append(f"  {'arch':8} {'kernel':14} " + " ".join(
            f"{('other' if x == '-' else x):>8}" for x in tiers) + f" {'total':>9}  worker")
        for (arch, kernel), c in sorted(cells.items()):
            row = " ".join(f"{c[x]:8.1f}" if x in c else f"{'':>8}" for x in tiers)
            lines.append(f"  {arch:8} {kernel:14} {row} {fmt_s(sum(c.values())):>9}  "
                         f"{','.join(sorted(owners[(arch, kernel)]))}")
    busy: dict[str, float] = defaultdict(float)
    for tt in t.tests:
        busy[tt.worker] += tt.seconds
    if len(busy) > 1 or (busy and t.session > 0):
        lines.append("workers busy in tests: " + ", ".join(
            f"{w} {fmt_s(s)}" for w, s in sorted(busy.items())) + f" (of {fmt_s(t.session)})")
    top = sorted(t.tests, key=lambda x: -x.seconds)[:slowest]
    if top:
        lines.append(f"slowest {len(top)} tests:")
        for tt in top:
            parts = [f"{s:.1f} s {what}" for s, what in ((tt.build_seconds, "image build"),
                                                         (tt.boot_seconds, "VM boot")) if s]
            extra = f"  (incl. {', '.join(parts)})" if parts else ""
            lines.append(f"  {tt.seconds:7.1f} s  {tt.nodeid}{extra}")
    return lines


def steps_from_env(env: dict[str, str] | None = None) -> tuple[list[tuple[str, float]], float | None]:
    """scripts/vmtest's steps and its total so far (None when pytest was run directly)."""
    env = dict(os.environ) if env is None else env
    steps: list[tuple[str, float]] = []
    for item in env.get("KBOX_VMTEST_STEPS", "").split(","):
        name, _, value = item.partition("=")
        try:
            steps.append((name.strip(), float(value)))
        except ValueError:
            continue
    try:
        total = time.time() - float(env["KBOX_VMTEST_START"])
    except (KeyError, ValueError):
        total = None
    return steps, total
