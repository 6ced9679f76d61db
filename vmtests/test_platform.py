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
