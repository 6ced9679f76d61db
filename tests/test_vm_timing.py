"""kbox.vm.timing (the "where the time went" text) and its pytest collector."""
from __future__ import annotations

import types
from pathlib import Path

import pytest

from kbox.vm import pytest_timing, timing
from kbox.vm.timing import RunTimes, TestDuration


def sample() -> RunTimes:
    tests = [TestDuration("vmtests/test_bench.py::test_bench[aarch64-6.1]", ("aarch64", "6.1", "-"),
                      84.0, "gw0"),
             TestDuration("vmtests/test_matrix.py::test_guest[aarch64-6.1-trap-dup-static]",
                      ("aarch64", "6.1", "trap"), 12.5, "gw0", boot_seconds=2.4,
                      build_seconds=5.0),
             TestDuration("vmtests/test_matrix.py::test_guest[aarch64-6.1-native-dup-static]",
                      ("aarch64", "6.1", "native"), 3.0, "gw0"),
             TestDuration("vmtests/test_matrix.py::test_guest[x86_64-6.12-seccomp-dup-static]",
                      ("x86_64", "6.12", "seccomp"), 1.25, "gw1"),
             TestDuration("tests/test_host.py::test_x", None, 0.5, "gw1")]
    return RunTimes(
        session=400.0, steps=[("setup", 2.0), ("doctor", 1.5), ("images", 14.25)],
        script_total=418.0,
        boots=[{"arch": "x86_64", "kernel": "6.12", "worker": "gw1", "seconds": 2.27,
                "accel": "tcg"},
               {"arch": "aarch64", "kernel": "6.1", "worker": "gw0", "seconds": 2.4,
                "accel": "tcg"}],
        images=[{"arch": "x86_64", "kernel": "6.12", "seconds": 0.3, "built": False},
                {"arch": "aarch64", "kernel": "6.1", "seconds": 0.2, "built": False}],
        tests=tests)


def test_the_report_says_where_the_time_went() -> None:
    lines = timing.format_report(sample())
    assert lines[0] == ("scripts/vmtest 6m58.0s: setup-host 2.0s, doctor 1.5s, "
                        "image check/build 14.2s, pytest 6m40.0s")
    assert lines[1] == "image check in pytest: 2 call(s), 0.5s (all cached)"
    i = lines.index("boot to SSH-ready per VM:")
    assert lines[i + 1].split() == ["aarch64", "6.1", "gw0", "TCG", "2.40", "s"]
    assert lines[i + 2].split() == ["x86_64", "6.12", "gw1", "TCG", "2.27", "s"]
    j = next(n for n, ln in enumerate(lines) if ln.startswith("tests per cell"))
    assert lines[j + 1].split() == ["arch", "kernel", "native", "seccomp", "trap", "other",
                                    "total", "worker"]
    assert lines[j + 2].split() == ["aarch64", "6.1", "3.0", "12.5", "84.0", "1m39.5s", "gw0"]
    assert lines[j + 3].split() == ["x86_64", "6.12", "1.2", "1.2s", "gw1"]
    assert "workers busy in tests: gw0 1m39.5s, gw1 1.8s (of 6m40.0s)" in lines
    k = lines.index("slowest 5 tests:")
    assert lines[k + 1].split() == ["84.0", "s", "vmtests/test_bench.py::test_bench[aarch64-6.1]"]
    assert lines[k + 2].endswith("trap-dup-static]  (incl. 5.0 s image build, 2.4 s VM boot)")


def test_slowest_is_capped_and_a_plain_pytest_run_has_no_script_line() -> None:
    t = sample()
    t.steps, t.script_total = [], None
    lines = timing.format_report(t, slowest=2)
    assert lines[0] == "pytest 6m40.0s"
    assert "slowest 2 tests:" in lines
    t.images[0]["built"] = True
    assert "rebuilt x86_64/6.12" in timing.format_report(t)[1]


def test_scripts_vmtest_steps_come_from_the_environment() -> None:
    steps, total = timing.steps_from_env({"KBOX_VMTEST_STEPS": "setup=3.5,doctor=1,bad,images=x",
                                          "KBOX_VMTEST_START": "100"})
    assert steps == [("setup", 3.5), ("doctor", 1.0)]
    assert total is not None and total > 1e9   # since the epoch second 100
    assert timing.steps_from_env({}) == ([], None)


def test_events_are_recorded_and_drained_once() -> None:
    timing.drain()
    timing.record("boot", arch="x86_64", kernel="6.1", seconds=2.0, accel="tcg")
    assert timing.drain() == [{"kind": "boot", "arch": "x86_64", "kernel": "6.1",
                               "seconds": 2.0, "accel": "tcg"}]
    assert timing.drain() == []


def _report(nodeid: str, when: str, duration: float, data: dict) -> types.SimpleNamespace:
    rep = types.SimpleNamespace(nodeid=nodeid, when=when, duration=duration)
    setattr(rep, pytest_timing.ATTR, data)
    return rep


def test_the_collector_adds_up_phases_and_boots_per_test(tmp_path: Path) -> None:
    config = types.SimpleNamespace()            # the controller: no workerinput
    plugin = pytest_timing.TimingPlugin(config, tmp_path)   # type: ignore[arg-type]
    boot = {"kind": "boot", "arch": "x86_64", "kernel": "6.1", "seconds": 2.5, "accel": "tcg",
            "worker": "gw1"}
    cell = ["x86_64", "6.1", "trap"]
    plugin.pytest_runtest_logreport(_report("t[x]", "setup", 3.0, {
        "cell": cell, "worker": "gw1", "events": [boot]}))   # type: ignore[arg-type]
    plugin.pytest_runtest_logreport(_report("t[x]", "call", 1.0, {
        "cell": cell, "worker": "gw1", "events": []}))   # type: ignore[arg-type]
    plugin.pytest_runtest_logreport(_report("t[x]", "teardown", 0.5, {
        "cell": cell, "worker": "gw1", "events": []}))   # type: ignore[arg-type]
    t = plugin.run_times()
    assert t.tests == [TestDuration("t[x]", ("x86_64", "6.1", "trap"), 4.5, "gw1", 2.5)]
    assert t.boots == [boot]

    class TR:
        def __init__(self) -> None:
            self.lines: list[str] = []

        def section(self, title: str) -> None:
            self.lines.append(f"== {title}")

        def write_line(self, line: str) -> None:
            self.lines.append(line)
    tr = TR()
    plugin.pytest_terminal_summary(tr)
    assert tr.lines[0] == "== kbox VM timing: where the time went"
    assert (tmp_path / "timing.txt").read_text().splitlines() == tr.lines[1:]


def test_a_worker_only_attaches_its_events(monkeypatch: pytest.MonkeyPatch) -> None:
    config = types.SimpleNamespace(workerinput={"workerid": "gw3"})
    plugin = pytest_timing.TimingPlugin(config)   # type: ignore[arg-type]
    timing.drain()
    timing.record("image", arch="aarch64", kernel="6.12", seconds=0.2, built=False)
    item = types.SimpleNamespace(callspec=types.SimpleNamespace(
        params={"vm_target": ("aarch64", "6.12"), "tier": "seccomp"}))
    report = types.SimpleNamespace()
    gen = plugin.pytest_runtest_makereport(item, None)   # type: ignore[arg-type]
    next(gen)
    with pytest.raises(StopIteration):
        gen.send(types.SimpleNamespace(get_result=lambda: report))
    data = getattr(report, pytest_timing.ATTR)
    assert data["cell"] == ("aarch64", "6.12", "seccomp") and data["worker"] == "gw3"
    assert data["events"][0]["worker"] == "gw3" and data["events"][0]["kind"] == "image"
    plugin.pytest_runtest_logreport(report)   # ignored on a worker  # type: ignore[arg-type]
    assert plugin.tests == {}
