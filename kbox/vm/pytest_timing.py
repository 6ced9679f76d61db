"""The pytest side of kbox.vm.timing: collect per-test durations and VM events, print the
"where the time went" section after the matrix.

Registered by the root conftest.py. On an xdist worker it only attaches what happened
during each test phase (the phase's events, the test's cell) to the phase's report as an
attribute, which xdist serializes with the report; the controller (or a run without
xdist) adds them up and prints timing.format_report() last (trylast), and writes it to
<artifacts>/timing.txt.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from kbox.vm import timing
from kbox.vm.timing import RunTimes, TestDuration

ATTR = "kbox_timing"


def cell_of(item: Any) -> tuple[str, str, str] | None:
    cs = getattr(item, "callspec", None)
    if cs is None or "vm_target" not in cs.params:
        return None
    arch, kernel = cs.params["vm_target"]
    return (str(arch), str(kernel), str(cs.params.get("tier", "-")))


class TimingPlugin:
    def __init__(self, config: pytest.Config, artifacts: Path | None = None) -> None:
        wi = getattr(config, "workerinput", None)
        self.is_worker = wi is not None
        self.worker = wi["workerid"] if wi else "master"
        self.artifacts = artifacts
        self.t0 = time.monotonic()
        self.tests: dict[str, TestDuration] = {}
        self.boots: list[dict[str, Any]] = []
        self.images: list[dict[str, Any]] = []

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: Any) -> Any:
        outcome = yield
        report = outcome.get_result()
        events = [dict(e, worker=self.worker) for e in timing.drain()]
        setattr(report, ATTR, {"cell": cell_of(item), "worker": self.worker, "events": events})

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.is_worker:
            return
        data = getattr(report, ATTR, None) or {}
        cell = data.get("cell")
        tt = self.tests.setdefault(report.nodeid, TestDuration(
            report.nodeid, tuple(cell) if cell else None, worker=data.get("worker", "master")))
        tt.seconds += float(getattr(report, "duration", 0.0) or 0.0)
        for e in data.get("events", []):
            if e.get("kind") == "boot":
                self.boots.append(e)
                if report.when == "setup":
                    tt.boot_seconds += float(e.get("seconds", 0.0))
            elif e.get("kind") == "image":
                self.images.append(e)
                if e.get("built"):
                    tt.build_seconds += float(e.get("seconds", 0.0))

    def run_times(self) -> RunTimes:
        steps, total = timing.steps_from_env()
        return RunTimes(session=time.monotonic() - self.t0, steps=steps, script_total=total,
                        boots=self.boots, images=self.images, tests=list(self.tests.values()))

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.is_worker or not any(tt.cell for tt in self.tests.values()):
            return
        lines = timing.format_report(self.run_times())
        terminalreporter.section("kbox VM timing: where the time went")
        for line in lines:
            terminalreporter.write_line(line)
        if self.artifacts is not None:
            try:
                self.artifacts.mkdir(parents=True, exist_ok=True)
                (self.artifacts / "timing.txt").write_text("\n".join(lines) + "\n")
            except OSError:
                pass


def register(config: pytest.Config, artifacts: Path | None = None) -> None:
    """The one call conftest.py makes (pytest_configure)."""
    if not config.pluginmanager.has_plugin("kbox-timing"):
        config.pluginmanager.register(TimingPlugin(config, artifacts), "kbox-timing")
