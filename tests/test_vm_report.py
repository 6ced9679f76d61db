"""The VM matrix summary (conftest.py) and scripts/nightly's report built from it."""
from __future__ import annotations

import collections
import importlib.machinery
import importlib.util
import json
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load(name: str, path: Path) -> types.ModuleType:
    """A module from a file that is not importable by name (the root conftest.py, which
    tests/conftest.py shadows here; scripts/nightly, which has no .py suffix)."""
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    spec = importlib.util.spec_from_loader(name, loader)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


plugin = load("kbox_vm_plugin", REPO / "conftest.py")


def load_nightly() -> types.ModuleType:
    return load("kbox_nightly", REPO / "scripts/nightly")


class Reporter:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def section(self, title: str) -> None:
        self.lines.append(f"== {title}")

    def write_line(self, line: str) -> None:
        self.lines.append(line)


def test_matrix_summary_is_printed_and_written_for_the_report(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plugin, "ARTIFACTS", tmp_path)
    cells = {"x86_64|6.12|trap": collections.Counter(passed=46),
             "x86_64|6.12|seccomp": collections.Counter(passed=45, failed=1),
             "aarch64|6.1|trap": collections.Counter(passed=40, skipped=6),
             "aarch64|6.1|-": collections.Counter(passed=12)}
    config = types.SimpleNamespace(stash=pytest.Stash())
    vm_plugin = plugin.VMPlugin(config)  # type: ignore[arg-type]
    config.stash[plugin.CELLS_KEY].update(cells)
    tr = Reporter()
    vm_plugin.pytest_terminal_summary(tr, 0, config)  # type: ignore[arg-type]
    table, retries = tr.lines[1:-1], tr.lines[-1]
    # After the table: how often the SSH retry paths fired (none in this fake session).
    assert retries == "SSH retries that fired: none"
    assert table[0].split() == ["arch", "kernel", "seccomp", "trap", "other"]
    assert table[1].split() == ["aarch64", "6.1", "40/46", "6s", "12/12"]
    assert table[2].split() == ["x86_64", "6.12", "45/46", "1F", "46/46"]
    # matrix.txt is exactly the printed table (scripts/nightly pastes it into its report).
    assert (tmp_path / "matrix.txt").read_text().splitlines() == table


def test_nightly_report_has_the_matrix_the_bench_table_and_valid_svg_charts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nightly = load_nightly()
    art, out = tmp_path / "artifacts", tmp_path / "artifacts" / "nightly"
    (art / "bench").mkdir(parents=True)
    out.mkdir()
    monkeypatch.setattr(nightly, "ART", art)
    monkeypatch.setattr(nightly, "OUT", out)
    (art / "matrix.txt").write_text("arch     kernel       native\nx86_64   6.12          46/46\n")
    (out / "junit.xml").write_text('<testsuites><testsuite tests="46" failures="0" errors="0" '
                                   'skipped="0"/></testsuites>')
    rows = [{"name": "syscall500", "mode": "native", "us_per_call": 0.2, "ratio": 1.0},
            {"name": "syscall500", "mode": "rewrite", "us_per_call": 0.5, "ratio": 2.5}]
    (art / "bench" / "bench-x86_64-6.12.json").write_text(json.dumps(
        {"arch": "x86_64", "kernel": "6.12", "bench": {"rows": rows}}))
    nightly.report(0, 123.0)
    md = (out / "report.md").read_text()
    assert "46 tests, 0 failures, 0 errors, 0 skipped; 123 s" in md
    assert "x86_64   6.12          46/46" in md
    assert "| x86_64 | 6.12 | syscall500 | rewrite | 0.5 | 2.5 |" in md
    svg = out / "bench-syscall500.svg"
    assert "![syscall500](bench-syscall500.svg)" in md
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg") and len(list(root.iter("{http://www.w3.org/2000/svg}rect"))) == 4
