"""Warm start (kbox/vm/snapshot.py) on every arch x kernel: guests restored from the state
saved after the first boot are isolated from each other, have the right time, talk TCP,
and two kbox processes can start from the same state at once.

These make their own VMs (the saved state is made on first use: one cold boot and a
save); `scripts/vmtest --quick` (CI) leaves them out, as CI does not use warm start."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from kbox.vm import snapshot
from kbox.vm.images import ensure_image

REPO = Path(__file__).resolve().parents[1]


def _restore(vm_target: tuple[str, str], request: pytest.FixtureRequest, worker_id: str,
             artifacts_dir: Path, tag: str) -> Any:
    arch, kernel = vm_target
    vm = snapshot.start(ensure_image(arch, kernel, progress=False),
                        accel=request.config.getoption("accel"), worker_id=worker_id,
                        log_dir=artifacts_dir / "vm-logs" / worker_id,
                        name=f"{arch}-{kernel}-{worker_id}-warm-{tag}", notice=lambda m: None)
    if not isinstance(vm, snapshot.RestoredVM):
        vm.kill()
        pytest.fail(f"{arch}/{kernel}: the VM was booted cold, not restored (see the "
                    f"broken note in {snapshot.states_root()})", pytrace=False)
    return vm


def test_a_restored_guest_does_not_see_another_restores_writes(
        vm_target: tuple[str, str], request: pytest.FixtureRequest, worker_id: str,
        artifacts_dir: Path) -> None:
    first = _restore(vm_target, request, worker_id, artifacts_dir, "first")
    try:
        res = first.run("echo first > /root/warm-marker && echo x > /tmp/warm-marker && "
                        "cat /root/warm-marker", timeout=30)
        assert (res.exit_status, res.stdout) == (0, "first\n"), res
        # A second guest from the same state while the first still runs: its own QEMU,
        # ports and RAM, the state file shared read-only.
        second = _restore(vm_target, request, worker_id, artifacts_dir, "second")
        try:
            res = second.run("ls /root/warm-marker /tmp/warm-marker; echo status=$?",
                             timeout=30)
            assert "status=1" in res.stdout and "No such file" in res.stderr, res
            assert second.ssh_port != first.ssh_port
        finally:
            second.kill()
        assert first.run("cat /root/warm-marker", timeout=30).stdout == "first\n"
    finally:
        first.kill()
    # and after the first one is gone, nothing it wrote went back into the state
    third = _restore(vm_target, request, worker_id, artifacts_dir, "third")
    try:
        res = third.run("test -e /root/warm-marker || test -e /tmp/warm-marker; echo $?",
                        timeout=30)
        assert res.stdout == "1\n", res
    finally:
        third.kill()


def test_a_restored_guest_has_the_hosts_time_and_talks_tcp(
        vm_target: tuple[str, str], request: pytest.FixtureRequest, worker_id: str,
        artifacts_dir: Path, tmp_path: Path) -> None:
    # A host TCP server the guest reaches through QEMU's user network (10.0.2.2 = host lo).
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(120)
    port = srv.getsockname()[1]

    def answer() -> None:
        try:
            conn, _ = srv.accept()
            conn.sendall(b"kbox-warm-tcp\n")
            conn.close()
        except OSError:
            pass
    threading.Thread(target=answer, daemon=True).start()
    vm = _restore(vm_target, request, worker_id, artifacts_dir, "clock")
    try:
        res = vm.run("date +%s", timeout=30)
        host_now = time.time()
        # The state was saved minutes or days ago; the first command set the clock.
        assert abs(int(res.stdout) - host_now) < 10, \
            f"guest clock {res.stdout.strip()} vs host {host_now:.0f}"
        res = vm.run(f"timeout 60 nc 10.0.2.2 {port} </dev/null", timeout=90)
        assert res.stdout == "kbox-warm-tcp\n", res
        # and the fresh SSH connection carries files both ways
        blob = tmp_path / "blob"
        blob.write_bytes(os.urandom(100_000))
        vm.put(blob, "/tmp/blob")
        vm.get("/tmp/blob", tmp_path / "back")
        assert (tmp_path / "back").read_bytes() == blob.read_bytes()
    finally:
        vm.kill()
        srv.close()


def test_two_kbox_processes_warm_start_the_same_state_at_once(
        vm_target: tuple[str, str], request: pytest.FixtureRequest, worker_id: str,
        artifacts_dir: Path) -> None:
    arch, kernel = vm_target
    # the state exists (made here if this test runs alone)
    _restore(vm_target, request, worker_id, artifacts_dir, "prime").kill()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO),
                                                       os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "kbox", "vm", "run", "--arch", arch, "--kernel", kernel,
           "--accel", request.config.getoption("accel"), "-v", "--",
           "sh", "-c", "echo $0 > /root/who; sleep 2; cat /root/who"]
    procs = [subprocess.Popen([*cmd, name], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env, cwd=REPO) for name in ("one", "two")]
    outs = [p.communicate(timeout=300) for p in procs]
    for name, p, (out, err) in zip(("one", "two"), procs, outs):
        assert (p.returncode, out) == (0, f"{name}\n"), err
        assert "saved VM state" not in err, err          # no state was found bad
    # the -v line says how each got its guest: both were restores, not boots
    assert all("(restored from the saved state;" in err for _, err in outs), outs
