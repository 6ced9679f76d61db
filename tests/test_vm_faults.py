"""Injected faults: each boots a real guest (x86_64 / 6.1 image, TCG) and checks that the
failure is reported the way the platform promises and that no QEMU process survives.

These take ~5-20 s each under TCG, so there are few of them. They need the guest image
(built on first use by kbox.vm.images.ensure_image); when it cannot be built the tests
error with the builder's message rather than pass.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kbox.vm import machine as machine_mod
from kbox.vm.machine import VM, GuestCrash, GuestTimeout

REPO = Path(__file__).resolve().parents[1]
FAULT_ARCH = os.environ.get("KBOX_FAULT_ARCH", "x86_64")
FAULT_KERNEL = os.environ.get("KBOX_FAULT_KERNEL", "6.1")


@pytest.fixture(scope="module")
def image() -> Any:
    from kbox.vm.images import ensure_image
    return ensure_image(FAULT_ARCH, FAULT_KERNEL, progress=False)


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes; /proc says which.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _qemu_children_of(ppid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in cmd and int(stat.rsplit(")", 1)[1].split()[1]) == ppid:
            out.append(int(d.name))
    return out


@pytest.fixture
def no_leaked_qemu() -> Iterator[None]:
    yield
    deadline = time.monotonic() + 5
    while _qemu_children_of(os.getpid()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _qemu_children_of(os.getpid()) == [], "a qemu child of the test process survived"


def test_kernel_that_panics_fails_fast_with_the_panic_text(image: Any, tmp_path: Path,
                                                           no_leaked_qemu: None) -> None:
    # rdinit points nowhere, so the kernel falls back to a root device that does not exist
    # and panics ("VFS: Unable to mount root fs"); panic=-1 + -no-reboot end QEMU.
    vm = VM(image, accel="tcg", log_dir=tmp_path, extra_cmdline="rdinit=/nonexistent root=/dev/nope",
            quiet=False)
    t0 = time.monotonic()
    with pytest.raises(GuestCrash) as ei:
        with vm:
            pass
    elapsed = time.monotonic() - t0
    assert "Kernel panic" in ei.value.excerpt
    assert ei.value.log_path == vm.log_path and vm.log_path.exists()
    # Seconds, not the boot timeout (20 s x3 under TCG).
    assert elapsed < 25, f"panic reported after {elapsed:.1f} s"
    assert not vm.is_running


def test_hanging_guest_command_is_killed_at_the_timeout(image: Any, tmp_path: Path,
                                                        no_leaked_qemu: None) -> None:
    with VM(image, accel="tcg", log_dir=tmp_path) as vm:
        pid = vm.pid
        t0 = time.monotonic()
        with pytest.raises(GuestTimeout) as ei:
            vm.run("echo started; sleep 1000", timeout=2)
        elapsed = time.monotonic() - t0
        assert 2 * vm.timeout_factor <= elapsed < 2 * vm.timeout_factor + 5
        assert ei.value.stdout == "started\n"
        assert "KBOX_GUEST_READY" in ei.value.console_tail
        assert str(vm.log_path) in str(ei.value)
        # The VM stays usable after a command timed out.
        assert vm.run("echo still-here", timeout=30).stdout == "still-here\n"
    assert not _alive(pid)


def test_prebound_port_makes_the_vm_take_another(image: Any, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 no_leaked_qemu: None) -> None:
    # Someone grabs the port after our probe said it was free: QEMU then fails with
    # "Could not set up host forwarding rule" and the VM must retry with the next port.
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    real = machine_mod.candidate_ports

    def rigged(worker_id: str | None = None) -> Iterator[int]:
        yield taken
        yield from real(worker_id)
    monkeypatch.setattr(machine_mod, "candidate_ports", rigged)
    try:
        with VM(image, accel="tcg", log_dir=tmp_path) as vm:
            assert vm.ssh_port != taken
            assert vm.run("echo ok", timeout=30).stdout == "ok\n"
    finally:
        squatter.close()


_HOLDER = r"""
import json, sys, time
from pathlib import Path
from kbox.vm.images import Image
from kbox.vm.machine import VM
spec = json.loads(sys.argv[1])
img = Image(**{k: (Path(v) if k.endswith(("_path", "_dir", "key", "sysroot")) and k not in
                   ("guest_kbox_dir", "guest_programs_dir") else v) for k, v in spec.items()})
with VM(img, accel="tcg", log_dir=Path(sys.argv[2])) as vm:
    print("READY", vm.pid, flush=True)
    vm.run("sleep 1000", timeout=1000)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_owner_killed_by_signal_leaves_no_qemu(image: Any, tmp_path: Path,
                                               sig: signal.Signals) -> None:
    # SIGINT: KeyboardInterrupt unwinds through the context manager; SIGTERM: the handler
    # kills the VMs; SIGKILL: nothing runs in the owner, PR_SET_PDEATHSIG does the job.
    from dataclasses import asdict
    spec = {k: str(v) for k, v in asdict(image).items()}
    p = subprocess.Popen([sys.executable, "-c", _HOLDER, json.dumps(spec), str(tmp_path)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert p.stdout is not None
        line = p.stdout.readline()            # blocks until boot completes (bounded below)
        assert line.startswith("READY"), line + (p.stderr.read() if p.stderr else "")
        qemu_pid = int(line.split()[1])
        assert _alive(qemu_pid)
        p.send_signal(sig)
        p.wait(timeout=30)
        deadline = time.monotonic() + 10
        while _alive(qemu_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(qemu_pid), f"qemu {qemu_pid} survived {sig.name} of its owner"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)


def test_sigint_to_a_running_vm_pytest_leaves_no_qemu(image: Any, tmp_path: Path) -> None:
    # A real `pytest vmtests` run interrupted while a guest command runs.
    test = tmp_path / "test_sleepy.py"
    test.write_text("def test_sleep(vm):\n    print('RUNNING', vm.pid, flush=True)\n"
                    "    vm.run('sleep 1000', timeout=1000)\n")
    # The file lives outside the repo, so the repo's conftest is loaded as a named plugin.
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.Popen([sys.executable, "-m", "pytest", "-s", "-q", "-p", "no:cacheprovider",
                          "-p", "conftest", "--rootdir", str(tmp_path), "--arch", FAULT_ARCH,
                          "--kernel", FAULT_KERNEL, "--accel", "tcg", str(test)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         cwd=REPO, env=env)
    qemu_pid = None
    try:
        assert p.stdout is not None
        deadline = time.monotonic() + 180
        out = []
        while time.monotonic() < deadline:
            line = p.stdout.readline()
            if not line:
                break
            out.append(line)
            if "RUNNING" in line:
                qemu_pid = int(line.split("RUNNING", 1)[1].split()[0])
                break
        assert qemu_pid is not None, "".join(out)
        time.sleep(1)
        p.send_signal(signal.SIGINT)
        p.wait(timeout=60)
        deadline = time.monotonic() + 10
        while _alive(qemu_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(qemu_pid)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)


# -- bad input for --kernel, --kernel-image, --modules -------------------------------------
# Each must end `kbox vm run` with one line on stderr and a non-zero status, and leave no
# QEMU behind. A wrapper named like the QEMU binary, first on PATH, logs every launch (its
# pid: it execs the real QEMU), so "never started" and "started, then killed" are both
# checked exactly, whoever else runs QEMU on this machine.

def _qemu_wrapper(tmp: Path, arch: str) -> tuple[dict[str, str], Path]:
    import shutil

    from kbox.vm.arch import ARCHES
    real = shutil.which(ARCHES[arch].qemu)
    assert real is not None
    bindir, log = tmp / "bin", tmp / "qemu-launches"
    bindir.mkdir(exist_ok=True)
    wrapper = bindir / ARCHES[arch].qemu
    wrapper.write_text(f'#!/bin/sh\necho $$ >> {log}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return env, log


def _vm_run(env: dict[str, str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kbox.vm.cli", "vm", "run", "--accel", "tcg",
                           *args, "--", "true"], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=timeout, check=False)


def _launched(log: Path) -> list[int]:
    return [int(x) for x in log.read_text().split()] if log.exists() else []


@pytest.mark.parametrize("case", ["missing", "wrong-arch", "unknown-version", "modules-lack"])
def test_bad_kernel_input_is_one_line_and_starts_no_qemu(image: Any, tmp_path: Path,
                                                         case: str) -> None:
    # The image's own kernel stands in for a local build: an ELF vmlinux with PVH on x86_64
    # (a Debian Image on aarch64); the other arch is what it is refused as.
    other = "aarch64" if FAULT_ARCH == "x86_64" else "x86_64"
    env, log = _qemu_wrapper(tmp_path, FAULT_ARCH)
    if case == "missing":
        args, expect = ["--kernel-image", str(tmp_path / "bzImage")], "no such file"
    elif case == "wrong-arch":
        args = ["--arch", other, "--kernel-image", str(image.kernel_path)]
        expect = f"is a kernel for {FAULT_ARCH}"
    elif case == "unknown-version":
        args, expect = ["--arch", FAULT_ARCH, "--kernel", "6.2.0-99"], "unknown"
    else:   # a modules tree of the right release, holding none of the needed modules
        tree = tmp_path / "mods/lib/modules" / image.kernel_version
        (tree / "kernel").mkdir(parents=True)
        (tree / "modules.builtin").write_text("")
        args = ["--kernel-image", str(image.kernel_path), "--modules", str(tmp_path / "mods")]
        expect = "virtio_pci, virtio_net neither built into"
    res = _vm_run(env, *args)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr
    assert len(lines) == 1 and lines[0].startswith("kbox: ") and expect in lines[0], res.stderr
    assert _launched(log) == []


def test_a_kernel_without_virtio_net_fails_at_boot_with_that_and_leaves_no_qemu(
        image: Any, tmp_path: Path) -> None:
    # No --modules and no config to read: the modules are assumed built in. Debian's kernel
    # has virtio_net as a module, so the guest comes up without eth0; the VM must say so at
    # once rather than wait out the SSH deadline (60 s under TCG).
    env, log = _qemu_wrapper(tmp_path, FAULT_ARCH)
    t0 = time.monotonic()
    res = _vm_run(env, "--kernel-image", str(image.kernel_path))
    elapsed = time.monotonic() - t0
    assert res.returncode == 4, res.stderr
    assert "no kernel config found" in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert "the guest has no network device eth0" in last and "lacks virtio_pci or virtio_net" in last
    assert elapsed < 45, f"reported after {elapsed:.1f} s"
    pids = _launched(log)
    assert len(pids) == 1 and not _alive(pids[0])


# -- a corrupt saved state (warm start, kbox/vm/snapshot.py) -------------------------------
# `kbox vm run` restores the state saved after the first boot. A state that is truncated, or
# that QEMU refuses to load, must cost one line on stderr and a cold boot, never a hang or a
# traceback: the command still runs (exit status 0), the bad state is replaced by a good one,
# and no QEMU survives. Each case writes its bad state, under the key `kbox vm run` looks
# for, into a $KBOX_STATE_DIR of its own.

def _bad_state(image: Any, env: dict[str, str], case: str) -> tuple[Path, float]:
    """A state of exactly the key `kbox vm run --accel tcg` will look for (same QEMU on the
    PATH), made bad the way `case` says; (its entry, its creation stamp)."""
    import json
    import shutil

    from kbox.vm import snapshot
    from kbox.vm.accel import Accel
    from kbox.vm.arch import ARCHES
    from kbox.vm.images import ensure_image
    qemu = shutil.which(ARCHES[FAULT_ARCH].qemu, path=env["PATH"])
    assert qemu is not None
    # The image as of now, not the module's: in a tree being edited, the kbox layer (and so
    # the key) may have changed since the module started.
    image = ensure_image(FAULT_ARCH, FAULT_KERNEL, progress=False)
    key = snapshot.key_for(image, Accel("tcg", "test"), qemu)
    entry = snapshot.state_entry(key)
    entry.mkdir(parents=True)
    # QEMU's stream header, then sections QEMU cannot parse
    data = snapshot.STREAM_HEADER + os.urandom(1 << 20)
    (entry / snapshot.STATE_FILE).write_bytes(data)
    size = len(data) + (1 << 20) if case == "truncated" else len(data)   # half of it lost
    (entry / snapshot.META_FILE).write_text(json.dumps({"key": key, "size": size,
                                                        "created": 1.0}))
    return entry, 1.0


@pytest.mark.parametrize("case", ["truncated", "refused-by-qemu"])
def test_a_corrupt_saved_state_is_one_line_then_a_cold_boot_that_replaces_it(
        image: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    from kbox.vm import snapshot
    env, log = _qemu_wrapper(tmp_path, FAULT_ARCH)
    env["KBOX_STATE_DIR"] = str(tmp_path / "states")
    monkeypatch.setenv("KBOX_STATE_DIR", env["KBOX_STATE_DIR"])
    entry, created = _bad_state(image, env, case)
    expect = "unusable (state.bin is" if case == "truncated" else \
        "rejected (QEMU refused the state"
    res = _vm_run(env, "--arch", FAULT_ARCH, "--kernel", FAULT_KERNEL)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    said = [ln for ln in res.stderr.splitlines() if "saved VM state" in ln]
    assert len(said) == 1 and said[0].startswith("kbox: ") and expect in said[0] \
        and said[0].endswith("discarded, booting cold"), res.stderr
    # cold boot + save + the restore that proves the new state (+ the refused restore)
    pids = _launched(log)
    assert len(pids) == (2 if case == "truncated" else 3), res.stderr
    assert not any(_alive(p) for p in pids)
    after = snapshot.read_meta(entry)
    assert after is not None and after["created"] != created
    assert snapshot.check_state(entry, after["key"]) is None


# -- bad input for --share, --kbox-from and kbox vm repro ------------------------------------
# The same contract: one line on stderr, exit status 2 for a usage error, and no QEMU started
# (or none left behind when the failure shows only at boot).

def _one_line(res: subprocess.CompletedProcess[str], status: int, expect: str) -> None:
    lines = res.stderr.strip().splitlines()
    assert res.returncode == status, res.stderr
    assert lines and lines[-1].startswith("kbox: ") and expect in lines[-1], res.stderr
    assert "Traceback" not in res.stderr, res.stderr


@pytest.mark.parametrize("case", ["share-missing", "share-a-file", "share-guest-relative",
                                  "share-guest-system-dir", "kbox-from-not-a-checkout",
                                  "kbox-from-missing"])
def test_bad_share_or_kbox_from_is_one_line_and_starts_no_qemu(tmp_path: Path,
                                                               case: str) -> None:
    env, log = _qemu_wrapper(tmp_path, FAULT_ARCH)
    (tmp_path / "a-file").write_text("x")
    args, expect = {
        "share-missing": (["--share", str(tmp_path / "nope")], "no such directory"),
        "share-a-file": (["--share", str(tmp_path / "a-file")], "is not a directory"),
        "share-guest-relative": (["--share", f"{tmp_path}:mnt/src"], "is not absolute"),
        "share-guest-system-dir": (["--share", f"{tmp_path}:/etc"], "is the guest's own"),
        "kbox-from-not-a-checkout": (["--kbox-from", str(tmp_path)], "not a kbox checkout"),
        "kbox-from-missing": (["--kbox-from", str(tmp_path / "nope")], "no such directory"),
    }[case]
    res = _vm_run(env, "--arch", FAULT_ARCH, "--kernel", FAULT_KERNEL, *args)
    _one_line(res, 2, expect)
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert _launched(log) == []


def _modules_without_9p(image: Any, tmp_path: Path, claim_builtin: bool) -> Path:
    """A --modules tree for the image's own kernel: its virtio modules, none of 9p's; with
    `claim_builtin`, a modules.builtin that (falsely) says 9p is built in."""
    src = Path(image.sysroot) / "usr/lib/modules" / image.kernel_version
    tree = tmp_path / "mods/lib/modules" / image.kernel_version
    (tree / "kernel").mkdir(parents=True)
    for ko in src.glob("*.ko"):
        if not any(k in ko.name for k in ("9p", "netfs", "fscache")):
            (tree / "kernel" / ko.name).write_bytes(ko.read_bytes())
    (tree / "modules.builtin").write_text(
        "kernel/fs/9p/9p.ko\nkernel/net/9p/9pnet.ko\nkernel/net/9p/9pnet_virtio.ko\n"
        if claim_builtin else "")
    return tmp_path / "mods"


def test_share_on_a_kernel_without_9p_modules_is_refused_before_boot(image: Any,
                                                                     tmp_path: Path) -> None:
    env, log = _qemu_wrapper(tmp_path, FAULT_ARCH)
    mods = _modules_without_9p(image, tmp_path, claim_builtin=False)
    res = _vm_run(env, "--kernel-image", str(image.kernel_path), "--modules", str(mods),
                  "--share", str(tmp_path))
    _one_line(res, 2, f"kernel {image.kernel_version} has no 9p support (9p, 9pnet_virtio "
                      "neither built in nor modules)")
    assert _launched(log) == []


@pytest.mark.parametrize("how", ["cold", "warm"])
def test_share_on_a_kernel_that_cannot_mount_9p_fails_at_boot_in_one_line(
        image: Any, tmp_path: Path, how: str) -> None:
    # modules.builtin claims 9p, so nothing is loaded and nothing is refused before boot;
    # the guest's mount fails (No such device) and the VM must say so, not run the command:
    # cold, /init's mount (read from the console); warm, the mount over SSH after a restore.
    env, log = _qemu_wrapper(tmp_path, FAULT_ARCH)
    mods = _modules_without_9p(image, tmp_path, claim_builtin=True)
    res = _vm_run(env, "--kernel-image", str(image.kernel_path), "--modules", str(mods),
                  "--share", f"{tmp_path}:/mnt/src", *(["--cold"] if how == "cold" else []))
    _one_line(res, 4, f"--share {tmp_path}:/mnt/src: not mounted in the guest: kernel "
                      f"{image.kernel_version} has no 9p filesystem")
    assert "No such device" in res.stderr.strip().splitlines()[-1]
    pids = _launched(log)
    # cold: one QEMU; warm: the restored one, and the one that booted and saved the state
    # the first time this configuration ran.
    assert (len(pids) == 1 if how == "cold" else 1 <= len(pids) <= 2), pids
    assert not any(_alive(p) for p in pids)


def _vm_repro(env: dict[str, str], *args: str, timeout: float = 240
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kbox.vm.cli", "vm", "repro", *args],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout,
                          check=False)


@pytest.mark.parametrize("case", ["missing", "directory", "truncated", "not-an-object",
                                  "no-arch", "bad-argv", "unknown-arch"])
def test_bad_repro_artifact_is_one_line_and_starts_no_qemu(tmp_path: Path, case: str) -> None:
    from kbox.vm import repro
    env, log = _qemu_wrapper(tmp_path, FAULT_ARCH)
    good = json.dumps(repro.artifact_for("t.py::t", FAULT_ARCH, FAULT_KERNEL, "tcg", None,
                                         ["/bin/true"], {}, "call"))
    art = tmp_path / "repro.json"
    if case == "truncated":
        art.write_text(good[: len(good) // 2])
    elif case == "not-an-object":
        art.write_text("[1, 2]")
    elif case == "no-arch":
        art.write_text(json.dumps({k: v for k, v in json.loads(good).items() if k != "arch"}))
    elif case == "bad-argv":
        art.write_text(json.dumps(dict(json.loads(good), argv="/bin/true")))
    elif case == "unknown-arch":
        art.write_text(json.dumps(dict(json.loads(good), arch="riscv64")))
    elif case == "directory":
        art = tmp_path
    expect = {"missing": "no such file", "directory": "is a directory", "truncated": "not JSON",
              "not-an-object": "not a repro artifact", "no-arch": "no 'arch'",
              "bad-argv": "'argv' is a str", "unknown-arch": "unknown arch 'riscv64'"}[case]
    res = _vm_repro(env, str(art), "--no-gdb")
    _one_line(res, 2, expect)
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert _launched(log) == []


_FAILING_VM_TEST = '''
import pytest

@pytest.mark.parametrize("tier", ["trap"])
def test_status_is_seven(vm, tier):
    vm.run("true", timeout=30)
    res = vm.run("KBOX_REPRO=yes /bin/sh -c 'echo repro-out $KBOX_REPRO; exit 3'", timeout=60)
    assert res.exit_status == 7, res
'''


def test_a_failing_vm_test_leaves_a_repro_that_replays_it(image: Any, tmp_path: Path) -> None:
    # A real `pytest vmtests`-style run whose test fails; its report must carry the one-line
    # replay, and `kbox vm repro` must rerun the same command on the same image and
    # accelerator, plainly and under gdb.
    import shutil
    test = tmp_path / "test_failing.py"
    test.write_text(_FAILING_VM_TEST)
    env, log = _qemu_wrapper(tmp_path, FAULT_ARCH)
    env["KBOX_ARTIFACTS"] = str(tmp_path / "art")
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "-p", "no:xdist", "-p", "conftest", "--rootdir", str(tmp_path),
                          "--arch", FAULT_ARCH, "--kernel", FAULT_KERNEL, "--accel", "tcg",
                          str(test)], capture_output=True, text=True, env=env, cwd=REPO,
                         timeout=300, check=False)
    assert res.returncode == 1, res.stdout + res.stderr
    m = re.search(r"^repro: kbox vm repro (\S+)$", res.stdout, re.MULTILINE)
    assert m, res.stdout
    art = Path(m.group(1))
    art = art if art.is_absolute() else REPO / art
    data = json.loads(art.read_text())
    assert (data["arch"], data["kernel"], data["accel"], data["tier"]) == \
        (FAULT_ARCH, FAULT_KERNEL, "tcg", "trap")
    assert data["image"] == Path(image.cache_dir).name
    assert data["guest_commands"][-2:] == [
        "true", "KBOX_REPRO=yes /bin/sh -c 'echo repro-out $KBOX_REPRO; exit 3'"]
    assert (data["env"], data["argv"]) == (
        {"KBOX_REPRO": "yes"}, ["/bin/sh", "-c", "echo repro-out $KBOX_REPRO; exit 3"])
    assert "--accel tcg --env KBOX_REPRO=yes -- /bin/sh -c" in res.stdout

    plain = _vm_repro(env, str(art), "--no-gdb")
    assert plain.returncode == 3, plain.stderr
    assert plain.stdout == "repro-out yes\n"
    assert f"replaying {data['test']} ({FAULT_ARCH} {FAULT_KERNEL}, TCG, tier trap)" \
        in plain.stderr

    if shutil.which("gdb-multiarch") is None:
        pytest.fail("gdb-multiarch is missing: apt-get install gdb-multiarch")
    under_gdb = _vm_repro(env, str(art), "--gdb-arg=-batch", "--gdb-arg=-ex",
                          "--gdb-arg=info registers pc", "--gdb-arg=-ex", "--gdb-arg=continue")
    out = under_gdb.stdout + under_gdb.stderr
    assert "Remote debugging" in out and re.search(r"^(pc|rip) +0x", out, re.MULTILINE), out
    assert "repro-out yes" in out and "exited with code 03" in out, out
    pids = _launched(log)
    assert len(pids) == 3 and not any(_alive(p) for p in pids)


def test_kbox_from_runs_the_checkouts_python_and_c_core_in_the_guest(image: Any,
                                                                      tmp_path: Path) -> None:
    # A copy of this checkout with one change on each side: a module only it has, and a C
    # core built from it (kbox.native must load /mnt/kbox-native's, and `kbox run` work).
    import shutil
    co = tmp_path / "checkout"
    for top in ("kbox", "csrc"):
        shutil.copytree(REPO / top, co / top,
                        ignore=shutil.ignore_patterns("__pycache__", "_bin", "*.o"))
    (co / "kbox/_only_in_this_checkout.py").write_text("MARK = 'from-the-checkout'\n")
    env = dict(os.environ, KBOX_CACHE=os.environ.get("KBOX_CACHE",
                                                     str(Path.home() / ".cache/kbox")),
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    probe = ("import kbox, kbox.native as n, kbox._only_in_this_checkout as m; "
             "print(m.MARK, kbox.__file__, n.launcher_path())")
    res = subprocess.run([sys.executable, "-m", "kbox.vm.cli", "vm", "run", "--accel", "tcg",
                          "--arch", FAULT_ARCH, "--kernel", FAULT_KERNEL, "--kbox-from",
                          str(co), "--", "sh", "-c",
                          (f"python3 -c {shlex.quote(probe)} && "
                           "kbox run --syscall-mode trap -- /bin/echo ran-under-trap")],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=600,
                         check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[:2] == [
        "from-the-checkout /mnt/kbox-from/kbox/__init__.py /mnt/kbox-native/kbox-launch",
        "ran-under-trap"], res.stdout + res.stderr
    assert re.search(r"its C core in \S+: \d+ object\(s\) compiled, .*kbox-launch", res.stderr)
    # Built in the cache, nothing written into the checkout's tree but bytecode.
    assert not list(co.rglob("*.o")) and not (co / "kbox/_bin").exists()
