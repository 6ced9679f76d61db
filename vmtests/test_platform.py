"""The platform itself, per guest: SSH round trips, file transfer, console hygiene."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from vmtests.helpers import describe


def test_command_status_and_streams_come_back_separately(vm: Any) -> None:
    res = vm.run("echo out; echo err >&2; exit 7", timeout=30)
    assert (res.exit_status, res.stdout, res.stderr) == (7, "out\n", "err\n")


def test_put_then_get_round_trips_a_binary_file(vm: Any, tmp_path: Path) -> None:
    src = tmp_path / "blob"
    src.write_bytes(os.urandom(300_000))
    vm.put(src, "/tmp/kbox-blob", timeout=60)
    res = vm.run("sha256sum /tmp/kbox-blob", timeout=30)
    assert res.stdout.split()[0] == hashlib.sha256(src.read_bytes()).hexdigest(), \
        describe("checksum in guest differs", res)
    back = tmp_path / "back"
    vm.get("/tmp/kbox-blob", back, timeout=60)
    assert back.read_bytes() == src.read_bytes()


def test_guest_has_kbox_and_gdbserver(vm: Any) -> None:
    res = vm.run("command -v kbox && command -v gdbserver && ls "
                 f"{vm.image.guest_programs_dir}", timeout=30)
    assert res.exit_status == 0, describe("guest tooling missing", res)


def test_console_shows_no_kernel_warning(vm: Any) -> None:
    text = Path(vm.log_path).read_text(errors="replace")
    for bad in ("BUG:", "Oops", "---[ end trace", "Kernel panic"):
        assert bad not in text, f"{bad!r} in console log {vm.log_path}"


def _share_round_trip(guest: Any, src: Path) -> None:
    """A host file read in the guest, a guest file seen on the host, and a host edit read by
    the guest's next open (9p cache=none), through src shared at /mnt/src."""
    payload = (src / "from-host.bin").read_bytes()
    res = guest.run("sha256sum /mnt/src/from-host.bin && "
                    "sha256sum /mnt/src/from-host.bin | cut -c1-64 > /mnt/src/from-guest "
                    "&& grep ' /mnt/src 9p ' /proc/mounts", timeout=60)
    assert res.exit_status == 0, describe("guest could not read or write the share", res)
    assert res.stdout.split()[0] == hashlib.sha256(payload).hexdigest()
    assert (src / "from-guest").read_text().strip() == hashlib.sha256(payload).hexdigest()
    (src / "from-host.bin").write_text("edited on the host\n")
    res = guest.run("cat /mnt/src/from-host.bin", timeout=30)
    assert res.stdout == "edited on the host\n", describe("guest read a stale file", res)


def _shared_src(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "from-host.bin").write_bytes(os.urandom(200_000))
    return src


def test_share_round_trips_files_between_host_and_guest(vm_target: tuple[str, str],
                                                        request: Any, tmp_path: Path,
                                                        artifacts_dir: Path,
                                                        worker_id: str) -> None:
    # kbox vm run --share --cold: a VM of this arch x kernel of its own (a share is a device
    # of the machine), the host directory at /mnt/src over virtio 9p, mounted by /init.
    from kbox.vm import share
    from kbox.vm.images import ensure_image
    from kbox.vm.machine import VM
    src = _shared_src(tmp_path)
    shares = share.parse_shares([f"{src}:/mnt/src"])
    image = ensure_image(*vm_target, progress=False)
    with share.mounted(VM(image, accel=request.config.getoption("accel"),
                          log_dir=artifacts_dir / "vm-logs" / worker_id, worker_id=worker_id,
                          name=f"{vm_target[0]}-{vm_target[1]}-{worker_id}-share",
                          **share.vm_options(shares)), shares) as guest:
        _share_round_trip(guest, src)


def test_share_on_a_restored_guest_round_trips_files(vm_target: tuple[str, str],
                                                     request: Any, tmp_path: Path,
                                                     artifacts_dir: Path,
                                                     worker_id: str) -> None:
    # kbox vm run --share (warm): the state saved with the 9p device unmounted is restored
    # (whatever directory it exports: the state key masks it) and the share is mounted over
    # SSH. --quick leaves it out, as it does the other warm-start tests.
    from kbox.vm import share, snapshot
    from kbox.vm.images import ensure_image
    src = _shared_src(tmp_path)
    shares = share.parse_shares([f"{src}:/mnt/src"])
    image = ensure_image(*vm_target, progress=False, checksums=False)
    vm_cm = snapshot.ready_vm(image, accel=request.config.getoption("accel"),
                              cold_image=lambda: ensure_image(*vm_target, progress=False),
                              log_dir=artifacts_dir / "vm-logs" / worker_id,
                              worker_id=worker_id, notice=lambda msg: None,
                              **share.vm_options(shares, warm=True))
    with share.mounted(vm_cm, shares, over_ssh=True) as guest:
        assert getattr(guest, "how", "booted") == "restored from the saved state"
        _share_round_trip(guest, src)
