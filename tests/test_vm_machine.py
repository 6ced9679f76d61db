"""Host-only tests of the VM runtime's parts (no guest boots here; see test_vm_faults.py)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from kbox.errors import UserError
from kbox.vm import accel as accel_mod
from kbox.vm import ports
from kbox.vm.arch import ARCHES
from kbox.vm.console import Console
from kbox.vm.machine import VM, require_qemu

REPO = Path(__file__).resolve().parents[1]


@dataclass
class FakeImage:
    arch: str = "aarch64"
    kernel: str = "6.12"
    kernel_path: Path = Path("/nonexistent/vmlinuz")
    initrd_path: Path = Path("/nonexistent/initrd.img")
    cmdline: str = "rdinit=/init panic=-1"
    ssh_key: Path = Path("/nonexistent/id_ed25519")
    ssh_user: str = "root"


# -- ports ---------------------------------------------------------------------------------
def test_worker_index_comes_from_the_xdist_worker_id() -> None:
    assert ports.worker_index("gw0") == 0
    assert ports.worker_index("gw7") == 7
    assert ports.worker_index("master") == 0


def test_each_worker_starts_in_its_own_port_block() -> None:
    first0 = next(ports.candidate_ports("gw0"))
    first3 = next(ports.candidate_ports("gw3"))
    assert ports.BASE_PORT <= first0 < ports.BASE_PORT + ports.BLOCK
    assert ports.BASE_PORT + 3 * ports.BLOCK <= first3 < ports.BASE_PORT + 4 * ports.BLOCK


def test_a_bound_port_is_never_offered() -> None:
    block = range(ports.BASE_PORT + 5 * ports.BLOCK, ports.BASE_PORT + 6 * ports.BLOCK)
    socks = []
    try:
        for p in list(block)[:90]:
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                s.close()
                continue
            s.listen()
            socks.append(s)
        bound = {s.getsockname()[1] for s in socks}
        offered = [p for _, p in zip(range(20), ports.candidate_ports("gw5"))]
        assert not bound & set(offered)
    finally:
        for s in socks:
            s.close()


def test_qemu_hostfwd_failure_is_recognised() -> None:
    msg = ("qemu-system-x86_64: -netdev user,id=net0,hostfwd=tcp:127.0.0.1:20201-:22: "
           "Could not set up host forwarding rule 'tcp:127.0.0.1:20201-:22'")
    assert ports.is_hostfwd_collision(msg)
    assert not ports.is_hostfwd_collision("qemu: could not load kernel")


# -- console -------------------------------------------------------------------------------
def _console_from(text: bytes, tmp_path: Path) -> Console:
    r, w = os.pipe()
    con = Console(os.fdopen(r, "rb"), tmp_path / "console.log")
    os.write(w, text)
    os.close(w)
    con.close(5)
    return con


def test_console_sees_ready_marker_and_logs_everything(tmp_path: Path) -> None:
    con = _console_from(b"[    0.1] hello\r\nKBOX_GUEST_READY\n", tmp_path)
    assert con.ready and con.eof
    assert con.crash_excerpt() is None
    assert (tmp_path / "console.log").read_bytes() == b"[    0.1] hello\r\nKBOX_GUEST_READY\n"


@pytest.mark.parametrize("line", [
    "Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)",
    "BUG: kernel NULL pointer dereference, address: 0000000000000000",
    "Internal error: Oops: 0000000096000005 [#1] SMP",
    "---[ end trace 0000000000000000 ]---",
])
def test_console_reports_kernel_crashes_with_context(tmp_path: Path, line: str) -> None:
    text = "".join(f"[    1.{i}] boot line {i}\n" for i in range(10)) + f"[    2.0] {line}\n"
    con = _console_from(text.encode(), tmp_path)
    excerpt = con.crash_excerpt()
    assert excerpt is not None and line in excerpt
    assert "boot line 9" in excerpt          # lines before the crash are part of the excerpt


def test_console_ignores_ordinary_output_mentioning_bugs(tmp_path: Path) -> None:
    con = _console_from(b"debugging is fun\nno oopses here\n", tmp_path)
    assert con.crash_excerpt() is None


# -- accelerator ---------------------------------------------------------------------------
def test_foreign_arch_uses_tcg_and_says_why() -> None:
    import platform
    other = next(a for a in ARCHES.values() if a.name != platform.machine())
    acc = accel_mod.resolve_accel("auto", other, use_cache=False)
    assert acc.name == "tcg" and "KVM cannot run" in acc.reason
    assert acc.timeout_factor == accel_mod.TCG_TIMEOUT_FACTOR
    assert acc.notice(other).startswith(f"kbox: {other.name} guest uses TCG (")


def test_tcg_requested_is_tcg_with_multithreading() -> None:
    acc = accel_mod.resolve_accel("tcg", ARCHES["x86_64"])
    assert acc.qemu_args() == ["-accel", "tcg,thread=multi"]


def test_unknown_accelerator_is_a_user_error_listing_choices() -> None:
    with pytest.raises(UserError, match="auto, kvm, tcg"):
        accel_mod.resolve_accel("hvf", ARCHES["x86_64"])


def test_kvm_auto_is_decided_by_a_probe_not_by_the_device_node(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    # Whatever this host answers, auto must agree with a fresh probe and the probe must be
    # bounded: it returns within its budget plus process start-up.
    arch = ARCHES["x86_64"]
    if accel_mod.host_can_kvm(arch) is not None:
        pytest.skip(f"no KVM to probe here: {accel_mod.host_can_kvm(arch)}")
    monkeypatch.setenv("KBOX_CACHE", str(tmp_path))
    t0 = time.monotonic()
    verdict = accel_mod.probe_kvm(arch, None, budget=3.0)
    assert time.monotonic() - t0 < 8
    acc = accel_mod.resolve_accel("auto", arch)
    assert (acc.name == "kvm") == (verdict is None)
    assert (tmp_path / "kvm-probe-x86_64.json").exists()   # cached per boot


# -- VM command line and missing qemu ------------------------------------------------------
def test_qemu_command_has_console_forwarding_and_no_reboot() -> None:
    vm = VM(FakeImage(), accel=accel_mod.Accel("tcg", "test"), forward=[1234])
    vm.accel = accel_mod.Accel("tcg", "test")
    vm.ssh_port, vm.forwards = 20999, {1234: 21000}
    cmd = vm._qemu_command("qemu-system-aarch64")
    append = cmd[cmd.index("-append") + 1]
    assert "console=ttyAMA0" in append.split() and "panic=-1" in append.split()
    assert "-no-reboot" in cmd
    assert cmd[cmd.index("-cpu") + 1] == ARCHES["aarch64"].cpu_tcg
    netdev = cmd[cmd.index("-netdev") + 1]
    assert "hostfwd=tcp:127.0.0.1:20999-:22" in netdev
    assert "hostfwd=tcp:127.0.0.1:21000-:1234" in netdev


def test_missing_qemu_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(UserError, match=r"apt-get install qemu-system-arm") as ei:
        require_qemu(ARCHES["aarch64"])
    assert "\n" not in str(ei.value)


def test_vm_run_without_qemu_is_one_line(tmp_path: Path) -> None:
    # `kbox vm run` end to end with qemu missing from PATH (the image may or may not build;
    # either way the user gets one line, never a traceback).
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:/nonexistent")
    p = subprocess.run([sys.executable, "-m", "kbox.vm.cli", "vm", "run", "--arch", "aarch64",
                        "--", "true"], capture_output=True, text=True, timeout=600, env=env,
                       cwd=REPO)
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr


# -- CLI and pytest option validation ------------------------------------------------------
def test_unknown_arch_is_a_usage_error_listing_choices() -> None:
    p = subprocess.run([sys.executable, "-m", "kbox.vm.cli", "vm", "run", "--arch", "sparc",
                        "--", "true"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert p.returncode == 2
    assert "aarch64" in p.stderr and "x86_64" in p.stderr


@pytest.mark.parametrize("opt,value,choices", [("--arch", "sparc", "x86_64, aarch64"),
                                               ("--kernel", "5.10", "6.1, 6.12"),
                                               ("--accel", "hvf", "auto, kvm, tcg")])
def test_vmtests_reject_unknown_options_listing_choices(opt: str, value: str,
                                                        choices: str) -> None:
    p = subprocess.run([sys.executable, "-m", "pytest", "vmtests", "--collect-only", "-q",
                        "-p", "no:cacheprovider", opt, value], capture_output=True,
                       text=True, timeout=120, cwd=REPO)
    assert p.returncode == pytest.ExitCode.USAGE_ERROR, p.stdout + p.stderr
    assert choices in p.stderr


def test_plain_pytest_does_not_collect_vmtests() -> None:
    p = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                        "-p", "no:cacheprovider", "tests/test_vm_machine.py"],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert "vmtests/" not in p.stdout
    import tomllib
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert cfg["tool"]["pytest"]["ini_options"]["testpaths"] == ["tests"]
