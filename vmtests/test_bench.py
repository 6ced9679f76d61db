"""`kbox bench --json` inside each VM; the table is kept under artifacts/ for the nightly
report (compare tiers within one VM only: emulation distorts cross-machine ratios)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vmtests.helpers import describe


def test_bench_runs_in_guest_and_is_kept(vm: Any, vm_target: tuple[str, str],
                                         artifacts_dir: Path) -> None:
    # VM-sized.  Without sync wake-up (6.1) a notified call waits for the guest's timer tick
    # under TCG: 2-8 ms on aarch64, so a full seccomp row would take minutes; --max-seconds
    # bounds every row (mid-pass too) and the cells it cut say how many calls they timed.
    res = vm.run("kbox bench --json --iterations 2000 --rounds 2 --max-seconds 1", timeout=600)
    assert res.exit_status == 0, describe("kbox bench failed", res)
    data = json.loads(res.stdout)
    # The contract of `kbox bench --json` (issue 2): {"rows": [{name, mode, us_per_call,
    # ratio}, ...]}, ratio relative to native measured in the same run.
    rows = data.get("rows") or []
    assert rows, describe("kbox bench --json printed no rows", res)
    for row in rows:
        assert {"name", "mode", "us_per_call", "ratio", "calls"} <= set(row), row
        assert row["us_per_call"] > 0 and 1 <= row["calls"] <= 2000, row
    assert any(r["mode"] == "native" for r in rows), "no native baseline in the bench table"
    out = artifacts_dir / "bench" / f"bench-{vm_target[0]}-{vm_target[1]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"arch": vm_target[0], "kernel": vm_target[1],
                               "kernel_version": vm.image.kernel_version,
                               "accel": vm.accel.name if vm.accel else None,
                               "bench": data}, indent=2))
