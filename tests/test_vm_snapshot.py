"""Host-only tests of the warm-start state logic (kbox/vm/snapshot.py): the key, what makes a
saved state unusable, the QMP client, the atomic save. Guests that restore are in
tests/test_vm_faults.py (corrupt states) and vmtests/test_warm_start.py."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kbox.vm import cache, snapshot
from kbox.vm.accel import Accel
from kbox.vm.machine import VMError

TCG = Accel("tcg", "test")


@dataclass
class FakeImage:
    cache_dir: Path
    kernel_path: Path
    initrd_path: Path
    ssh_key: Path
    arch: str = "aarch64"
    kernel: str = "6.12"
    kernel_version: str = "6.12.118+deb12-arm64"
    cmdline: str = "rdinit=/init panic=-1"
    ssh_user: str = "root"


def _image(entry: Path) -> FakeImage:
    return FakeImage(entry, entry / "vmlinuz", entry / "initrd.img", entry / "id_ed25519")


@pytest.fixture
def IMAGE(tmp_path: Path) -> FakeImage:
    entry = tmp_path / "images" / "aarch64-6.12-0123456789abcdef"
    entry.mkdir(parents=True)
    (entry / "vmlinuz").write_bytes(b"kernel")
    (entry / "initrd.img").write_bytes(b"initrd")
    (entry / "manifest.json").write_text(json.dumps({"files": {
        "vmlinuz": {"size": 6, "sha256": "k" * 64},
        "initrd.img": {"size": 6, "sha256": "i" * 64}}}))
    return _image(entry)


@pytest.fixture
def QEMU(tmp_path: Path) -> str:
    q = tmp_path / "qemu-system-aarch64"
    q.write_bytes(b"#!/bin/sh\n")
    return str(q)


@pytest.fixture(autouse=True)
def STATES(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "states"
    monkeypatch.setenv("KBOX_STATE_DIR", str(d))
    return d


def _command(image: FakeImage, port: int = 20001, memory_mb: int = 1536,
             forward: tuple[int, ...] = ()) -> list[str]:
    vm = snapshot.SavingVM(image, accel=TCG, memory_mb=memory_mb, forward=forward)
    try:
        vm.accel, vm.ssh_port = TCG, port
        vm.forwards = {g: port + 1 + i for i, g in enumerate(forward)}
        return vm.cold_command("qemu-system-aarch64")
    finally:
        vm.kill()


def _key(image: FakeImage, qemu: str, **kw: Any) -> dict[str, Any]:
    accel = kw.pop("accel", TCG)
    return snapshot.state_key(image, accel, _command(image, **kw), qemu)


# -- the key ---------------------------------------------------------------------------------
def test_key_ignores_the_host_ports_of_a_run(IMAGE: FakeImage, QEMU: str) -> None:
    a = _key(IMAGE, QEMU, port=20001, forward=(1234,))
    b = _key(IMAGE, QEMU, port=20777, forward=(1234,))
    assert a == b
    assert any("hostfwd=tcp:127.0.0.1:PORT-:22" in arg for arg in a["command"])
    assert any("hostfwd=tcp:127.0.0.1:PORT-:1234" in arg for arg in a["command"])


def test_key_changes_with_memory_accel_qemu_and_image(IMAGE: FakeImage, QEMU: str) -> None:
    base = snapshot.key_digest(_key(IMAGE, QEMU))
    assert snapshot.key_digest(_key(IMAGE, QEMU, memory_mb=512)) != base
    assert snapshot.key_digest(_key(IMAGE, QEMU, accel=Accel("kvm", "test"))) != base
    # a QEMU upgrade: same path, other binary
    Path(QEMU).write_bytes(b"#!/bin/sh\n# 8.2\n")
    changed_qemu = snapshot.key_digest(_key(IMAGE, QEMU))
    assert changed_qemu != base
    # a rebuilt initrd: the image entry's manifest says another sha256
    man = json.loads((IMAGE.cache_dir / "manifest.json").read_text())
    man["files"]["initrd.img"]["sha256"] = "j" * 64
    (IMAGE.cache_dir / "manifest.json").write_text(json.dumps(man))
    assert snapshot.key_digest(_key(IMAGE, QEMU)) != changed_qemu


def test_key_names_the_kbox_build_through_the_image_entry(tmp_path: Path, QEMU: str) -> None:
    # The entry's name is the key of the kbox sources built into the guest.
    keys = []
    for name in ("aarch64-6.12-1111111111111111", "aarch64-6.12-2222222222222222"):
        d = tmp_path / name
        d.mkdir()
        keys.append(_key(_image(d), QEMU))
    assert keys[0]["image"] != keys[1]["image"]
    assert snapshot.state_entry(keys[0]) != snapshot.state_entry(keys[1])
    # no manifest: the files' size and mtime stand in for their hashes
    assert "missing" in keys[0]["kernel_file"]


def test_state_entry_is_per_arch_kernel_and_digest(IMAGE: FakeImage, QEMU: str,
                                                    STATES: Path) -> None:
    key = _key(IMAGE, QEMU)
    assert snapshot.state_entry(key) == STATES / f"aarch64-6.12-{snapshot.key_digest(key)}"


# -- what makes a state unusable -------------------------------------------------------------
def _write_state(entry: Path, key: dict[str, Any], body: bytes = b"x" * 1000) -> Path:
    entry.mkdir(parents=True)
    data = snapshot.STREAM_HEADER + body
    (entry / snapshot.STATE_FILE).write_bytes(data)
    (entry / snapshot.META_FILE).write_text(json.dumps(
        {"key": key, "size": len(data), "created": 1.5}))
    return entry / snapshot.STATE_FILE


def test_a_complete_state_of_the_key_is_usable(IMAGE: FakeImage, QEMU: str) -> None:
    key = _key(IMAGE, QEMU)
    entry = snapshot.state_entry(key)
    assert snapshot.check_state(entry, key) == "no saved state"
    _write_state(entry, key)
    assert snapshot.check_state(entry, key) is None


def test_a_truncated_state_is_unusable(IMAGE: FakeImage, QEMU: str) -> None:
    key = _key(IMAGE, QEMU)
    entry = snapshot.state_entry(key)
    state = _write_state(entry, key)
    with state.open("r+b") as fh:
        fh.truncate(500)
    assert snapshot.check_state(entry, key) == \
        f"{snapshot.STATE_FILE} is 500 bytes, {1000 + len(snapshot.STREAM_HEADER)} were written"


def test_a_state_that_is_not_a_migration_stream_is_unusable(IMAGE: FakeImage, QEMU: str) -> None:
    key = _key(IMAGE, QEMU)
    entry = snapshot.state_entry(key)
    state = _write_state(entry, key)
    data = bytearray(state.read_bytes())
    data[0:4] = b"\0\0\0\0"
    state.write_bytes(bytes(data))
    assert "not a QEMU migration stream" in (snapshot.check_state(entry, key) or "")


def test_a_state_saved_under_another_key_is_unusable_and_says_which_part(
        IMAGE: FakeImage, QEMU: str) -> None:
    key = _key(IMAGE, QEMU)
    other = _key(IMAGE, QEMU, memory_mb=512)
    entry = snapshot.state_entry(key)
    _write_state(entry, other)       # e.g. copied by hand, or a digest collision
    assert snapshot.check_state(entry, key) == \
        "saved for another configuration (command differs)"


def test_a_state_without_its_meta_or_file_is_unusable(IMAGE: FakeImage, QEMU: str) -> None:
    key = _key(IMAGE, QEMU)
    entry = snapshot.state_entry(key)
    state = _write_state(entry, key)
    state.unlink()
    assert snapshot.check_state(entry, key) == f"{snapshot.STATE_FILE} missing or unreadable"
    (entry / snapshot.META_FILE).write_text("{not json")
    assert snapshot.check_state(entry, key) == \
        f"{snapshot.META_FILE} missing or unreadable"


def test_discard_keeps_a_state_saved_again_meanwhile(IMAGE: FakeImage, QEMU: str) -> None:
    key = _key(IMAGE, QEMU)
    entry = snapshot.state_entry(key)
    _write_state(entry, key)
    snapshot.discard(entry, created=0.5)   # we judged a state created at 0.5: not this one
    assert entry.exists()
    snapshot.discard(entry, created=1.5)
    assert not entry.exists()


def test_broken_note_applies_to_its_own_key_only(IMAGE: FakeImage, QEMU: str) -> None:
    key = _key(IMAGE, QEMU)
    entry = snapshot.state_entry(key)
    entry.parent.mkdir(parents=True)
    snapshot._mark_broken(entry, key, "QEMU refused the state")
    assert snapshot.broken_reason(entry, key) == "QEMU refused the state"
    assert snapshot.broken_reason(entry, {**key, "accel": "kvm"}) is None


# -- the QMP client --------------------------------------------------------------------------
def _qmp_server(path: Path, answers: list[bytes], hold_s: float = 0.0) -> threading.Thread:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)

    def serve() -> None:
        conn, _ = srv.accept()
        f = conn.makefile("rwb")
        f.write(b'{"QMP": {"version": {}, "capabilities": []}}\n')
        f.flush()
        for answer in answers:
            if not f.readline():
                break
            f.write(answer)
            f.flush()
        f.readline()         # the next request: left unanswered
        time.sleep(hold_s)   # a QEMU that stops answering but keeps the socket open
        conn.close()
        srv.close()
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def test_qmp_skips_events_and_returns_answers(tmp_path: Path) -> None:
    path = tmp_path / "qmp.sock"
    _qmp_server(path, [b'{"return": {}}\n',
                       b'{"event": "RESUME", "data": {}}\n{"return": {"status": "running"}}\n'])
    q = snapshot.QMP(path, time.monotonic() + 5, lambda: True)
    assert q.command("query-status") == {"status": "running"}
    q.close()


def test_qmp_error_answer_and_closed_monitor_raise_qmp_error(tmp_path: Path) -> None:
    path = tmp_path / "qmp.sock"
    _qmp_server(path, [b'{"return": {}}\n',
                       b'{"error": {"class": "GenericError", "desc": "no migration"}}\n'])
    q = snapshot.QMP(path, time.monotonic() + 5, lambda: True)
    with pytest.raises(snapshot.QMPError, match="GenericError: no migration"):
        q.command("migrate", uri="exec:true")
    with pytest.raises(snapshot.QMPError, match="closed the monitor"):
        q.command("query-status")
    q.close()


def test_qmp_gives_up_when_qemu_is_gone(tmp_path: Path) -> None:
    t0 = time.monotonic()
    with pytest.raises(snapshot.QMPError, match="exited before its monitor"):
        snapshot.QMP(tmp_path / "never.sock", time.monotonic() + 30, lambda: False)
    with pytest.raises(snapshot.QMPError, match="did not answer"):
        snapshot.QMP(tmp_path / "never.sock", time.monotonic() + 0.2, lambda: True)
    assert time.monotonic() - t0 < 5


def test_qmp_answer_that_never_comes_times_out(tmp_path: Path) -> None:
    path = tmp_path / "qmp.sock"
    _qmp_server(path, [b'{"return": {}}\n'], hold_s=5)  # answers capabilities, then silence
    q = snapshot.QMP(path, time.monotonic() + 5, lambda: True, timeout=0.3)
    t0 = time.monotonic()
    with pytest.raises(snapshot.QMPError, match="no answer from QEMU"):
        q.command("query-status")
    assert time.monotonic() - t0 < 2
    q.close()


# -- the save ----------------------------------------------------------------------------------
class FakeQMP:
    """What QEMU does for migrate exec:CMD: runs CMD with the stream on its stdin."""

    def __init__(self, stream: bytes, status: str = "completed") -> None:
        self.stream = stream
        self.status = status
        self.calls: list[str] = []

    def command(self, name: str, **args: Any) -> Any:
        self.calls.append(name)
        if name == "migrate":
            assert args["uri"].startswith("exec:")
            if self.status == "completed":
                subprocess.run(args["uri"][5:], shell=True, input=self.stream, check=True)
        if name == "query-migrate":
            return {"status": self.status, "error-desc": "device refuses", "ram": {"normal": 3}}
        return {}


class FakeSavingVM:
    timeout_factor = 1.0
    boot_seconds = 5.0

    def __init__(self, qmp: FakeQMP, log: Path) -> None:
        self.qmp = qmp
        self._client = None
        self.log_path = log

    def _connect_qmp(self, deadline: float) -> None:
        pass


def test_save_writes_the_state_atomically_and_drops_stale_siblings(
        IMAGE: FakeImage, QEMU: str, tmp_path: Path) -> None:
    key = _key(IMAGE, QEMU)
    entry = snapshot.state_entry(key)
    stale = entry.with_name("aarch64-6.12-ffffffffffffffff")
    _write_state(stale, _key(IMAGE, QEMU, memory_mb=512))
    recent = entry.with_name("aarch64-6.12-eeeeeeeeeeeeeeee")   # another checkout's, in use
    _write_state(recent, _key(IMAGE, QEMU, memory_mb=768))
    then = time.time() - cache.KEEP_RECENT_S - 60
    for p in (stale, *stale.iterdir()):
        os.utime(p, (then, then))
    snapshot._mark_broken(entry, key, "an earlier failure")
    log = tmp_path / "boot.log"
    log.write_text("KBOX_GUEST_READY\n")
    stream = snapshot.STREAM_HEADER + os.urandom(4096)
    qmp = FakeQMP(stream)
    snapshot.save_state(FakeSavingVM(qmp, log), key, entry)  # type: ignore[arg-type]
    assert qmp.calls[:3] == ["migrate-set-parameters", "stop", "migrate"]
    assert (entry / snapshot.STATE_FILE).read_bytes() == stream
    assert (entry / snapshot.BOOT_LOG).read_text() == "KBOX_GUEST_READY\n"
    assert snapshot.check_state(entry, key) is None
    assert not stale.exists() and recent.exists()
    assert snapshot.broken_reason(entry, key) is None
    assert [p.name for p in entry.parent.iterdir() if p.name.startswith(".tmp-")] == []


def test_a_failed_save_leaves_nothing_behind(IMAGE: FakeImage, QEMU: str,
                                             tmp_path: Path) -> None:
    key = _key(IMAGE, QEMU)
    entry = snapshot.state_entry(key)
    with pytest.raises(VMError, match="saving the VM state failed: device refuses"):
        vm: Any = FakeSavingVM(FakeQMP(b"", status="failed"), tmp_path / "log")
        snapshot.save_state(vm, key, entry)
    assert not entry.exists()
    assert [p.name for p in entry.parent.iterdir() if p.name != "locks"] == []

