"""kbox.decide: `kbox run --syscall-mode=auto` and `kbox analyze` pick the tier by one
decision; the run path decides from cheap facts only."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from kbox import runner
from kbox.analyze import analyze
from kbox.decide import decide_tier
from kbox.elfinfo import inspect
from kbox.kernel_caps import probe_kernel_caps, tier_support
from kbox.tiers import NONE, REWRITE, SECCOMP, TRAP


@pytest.fixture
def SETUID_TRUE(tmp_path: Path) -> str:
    su = tmp_path / "su"
    shutil.copy("/bin/true", su)
    os.chmod(su, 0o4755)
    return str(su)


def test_run_and_analyze_pick_the_same_tier(SETUID_TRUE: str) -> None:
    caps = probe_kernel_caps()
    for prog in ("/bin/true", "/bin/ls", SETUID_TRUE):
        run = runner.auto_mode(prog)
        report = analyze(prog, caps=caps)
        assert report.decision is not None
        assert run.mode == report.decision.mode, (prog, run, report.decision)
        if not report.rewrite_blockers:
            # The analysis only adds that it looked for blockers.
            assert report.decision.reason.endswith(run.reason), (run, report.decision)


def test_setuid_programs_get_the_supervisor(SETUID_TRUE: str) -> None:
    mode, reason = runner.auto_mode(SETUID_TRUE)
    assert mode == SECCOMP and reason.startswith("su is setuid: ")


def test_the_kernel_facts_pick_between_the_tiers() -> None:
    info = inspect("/bin/true")
    here = replace(tier_support(), machine=info.machine)
    mode, reason = decide_tier(info, replace(here, seccomp_trap=False, rewrite_available=False))
    assert mode == SECCOMP and "RET_TRAP" in reason
    unbuilt = replace(here, seccomp_trap=True, rewrite_available=False)
    assert decide_tier(info, unbuilt).mode == TRAP
    built = replace(here, seccomp_trap=True, rewrite_available=True)
    assert decide_tier(info, built).mode == REWRITE
    assert decide_tier(info, built, blockers=["int 0x80 site"]).mode == TRAP
    assert decide_tier(info, replace(here, machine="riscv64")).mode == NONE


def test_the_run_path_never_loads_the_disassembler() -> None:
    code = ("import sys; from kbox import runner; runner.auto_mode('/bin/true'); "
            "print(sorted(m for m in sys.modules if m in ('capstone', 'kbox.sitescan', "
            "'kbox.analyze')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "[]"
