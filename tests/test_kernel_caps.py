"""kbox.kernel_caps: the one kernel probe behind `kbox doctor`, `kbox analyze`, `kbox run`'s
auto decision and the VM tests' feature checks."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import asdict

from kbox.elfinfo import host_machine
from kbox.kernel_caps import FEATURE_PROBE, probe_kernel_caps, run_feature_probe, tier_support


def test_kernel_probe_reads_this_host() -> None:
    caps = probe_kernel_caps()
    assert caps.machine == host_machine()
    assert caps.release == os.uname().release
    with open("/proc/sys/kernel/seccomp/actions_avail") as f:
        assert caps.seccomp_trap == ("trap" in f.read().split())
    # The rewrite tier is the trap tier plus patching: available exactly where trap is.
    assert caps.rewrite_available == caps.seccomp_trap


def test_the_full_probe_extends_what_proc_alone_says() -> None:
    caps, cheap = probe_kernel_caps(), tier_support()
    assert {k: v for k, v in caps.to_dict().items() if k in asdict(cheap)} == asdict(cheap)


def test_feature_probe_answers_what_doctor_and_the_vm_tests_read() -> None:
    feats = run_feature_probe(timeout=20)
    assert set(feats) == {"machine", "release", "sud", "user_notif", "sync_wakeup"}
    assert feats["machine"] == host_machine()
    caps = probe_kernel_caps()
    assert caps.sud == (feats["sud"] == 0)
    assert caps.notify_sync_wakeup == (feats["sync_wakeup"] == 0)


def test_feature_probe_leaves_its_interpreter_unfiltered() -> None:
    # Every probe runs in a forked child: the interpreter that printed the answer has the
    # seccomp mode it inherited, not a filter of its own.
    script = FEATURE_PROBE + "\nprint(open('/proc/self/status').read())"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=20, check=True).stdout
    with open("/proc/self/status") as f:
        ours = [line.strip() for line in f if line.startswith("Seccomp:")]
    assert [line.strip() for line in out.splitlines() if line.startswith("Seccomp:")] == ours
