"""Warm start: a booted guest's state saved once (QEMU migration to a file), then restored.

A cold boot under TCG takes 5-10 s (kernel, initramfs unpack, /init, dropbear). Booted
once, the guest is stopped and its RAM and device state are written with QEMU's `migrate`
(QMP, `exec:cat > FILE`) into `<cache>/states/<arch>-<kernel>-<digest>/state.bin`; every
later VM of the same configuration starts QEMU with `-incoming fd:N` on that file instead
of booting, resumes it (`cont`), connects SSH afresh and sets the guest's clock.

Measured here (QEMU 7.2, TCG) against the alternatives: `-incoming fd:N` loads the
~270 MB state in 0.11-0.15 s; `-incoming "exec:cat FILE"` took 0.25-1.2 s for the same
file (a pipe and a second process in between), qcow2 internal snapshots (`savevm`,
`-loadvm`) 0.46-1.2 s and need a writable image per VM. The restored QEMU gets no
-kernel/-initrd: the RAM image replaces whatever they would load, and reading the 100 MB
of files costs QEMU 0.13 s at start.

What makes a state valid is its key (state_key): the image entry (its name is the key of
the base packages, the recipes and the kbox sources built into the guest) and the sha256
of its kernel and initrd from the entry's manifest, the accelerator, the QEMU binary
(path, size, mtime), and QEMU's whole command line for the cold boot with the ports
masked (machine, cpu, memory, smp, kernel command line, devices). The key's digest names
the directory, and meta.json holds the key itself: a state whose meta says another key,
whose file is not the size it was written at or does not start with QEMU's stream
header, or that QEMU refuses (`load of migration failed`), that resumes into a state
other than running, or whose guest does not answer SSH within RESTORE_SSH_S, is reported
in one line, discarded and replaced by a cold boot. A key whose fresh state failed its
own first restore gets a `broken` note (the reason), so that configuration boots cold
without trying again until its key changes.

Isolation and concurrency: the state file is only ever read (each QEMU gets its own
read-only descriptor); guest writes live in that QEMU's RAM (the guest's root is an
initramfs, there is no disk), so no run sees another's. Ports, QMP socket and console log
are per VM. A state is saved under a file lock per (arch, kernel), into a temporary
directory renamed into place, so concurrent starters wait for one save and readers never
see half a state.

Known limits: restored guests start from the same kernel RNG state (interrupt timing
diverges them afterwards); their `uptime` is the saved guest's plus this run's.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from kbox.vm import cache, timing
from kbox.vm import ssh as sshmod
from kbox.vm.ssh import paramiko
from kbox.vm.accel import Accel, resolve_accel
from kbox.vm.arch import get_arch
from kbox.vm.machine import (
    RUN_TIMEOUT_S,
    VM,
    GuestCrash,
    ImageLike,
    RunResult,
    VMError,
    VMLaunchFailure,
    require_qemu,
)

__all__ = ["META_FILE", "QMP", "STATE_FILE", "QMPError", "StateRejected", "check_state",
           "discard", "key_digest", "key_for", "ready_vm", "start", "state_entry",
           "state_key"]

STATE_FORMAT = 1
STATE_FILE = "state.bin"
META_FILE = "meta.json"
BOOT_LOG = "boot-console.log"
BROKEN_FILE = "broken.json"
# QEMU's migration stream opens with QEMU_VM_FILE_MAGIC and QEMU_VM_FILE_VERSION (3).
STREAM_HEADER = b"QEVM\x00\x00\x00\x03"
SAVE_TIMEOUT_S = 60.0       # hardware seconds for `migrate` to write the state (x3 TCG)
RESTORE_TIMEOUT_S = 10.0    # hardware seconds from QEMU start to the state loaded
RESTORE_SSH_S = 5.0         # hardware seconds for the resumed guest to answer SSH
QMP_TIMEOUT_S = 10.0        # one QMP command's answer
# QEMU caps migration at 128 MiB/s by default (a live migration must leave the network to
# the guest); the guest is stopped here, so that cap only made a 270 MB save take 2 s.
SAVE_BANDWIDTH = 1 << 40


class StateRejected(VMError):
    """A saved state could not be restored; `reason` is one line."""

    def __init__(self, reason: str, log_path: Path | None = None) -> None:
        self.reason = reason
        self.log_path = log_path
        super().__init__(reason + (f" (console log: {log_path})" if log_path else ""))


# -- QMP ----------------------------------------------------------------------------------
class QMPError(VMError):
    """QEMU answered a QMP command with an error, or the monitor connection failed."""


class QMP:
    """A minimal QMP client on QEMU's unix socket (commands in, answers out; events are
    skipped). Every read is bounded by `timeout` seconds."""

    def __init__(self, path: Path, deadline: float, alive: Callable[[], bool],
                 timeout: float = QMP_TIMEOUT_S) -> None:
        self.timeout = timeout
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        while True:
            try:
                self._sock.connect(str(path))
                break
            except OSError as exc:
                # The socket appears once QEMU has parsed its options and bound everything
                # (host forwarding included); an exiting QEMU never makes it.
                if not alive():
                    self._sock.close()
                    raise QMPError(f"QEMU exited before its monitor answered ({exc})") from exc
                if time.monotonic() > deadline:
                    self._sock.close()
                    raise QMPError(f"QEMU's monitor {path} did not answer: {exc}") from exc
                time.sleep(0.005)
        self._sock.settimeout(timeout)
        self._file = self._sock.makefile("rwb")
        self._read()                           # the greeting
        self.command("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        try:
            line = self._file.readline()
        except OSError as exc:   # socket.timeout included
            raise QMPError(f"QMP: no answer from QEMU: {exc}") from exc
        if not line:
            raise QMPError("QMP: QEMU closed the monitor connection")
        try:
            return json.loads(line)
        except ValueError as exc:
            raise QMPError(f"QMP: unreadable answer {line[:200]!r}") from exc

    def command(self, name: str, **arguments: Any) -> Any:
        msg: dict[str, Any] = {"execute": name}
        if arguments:
            msg["arguments"] = arguments
        try:
            self._file.write(json.dumps(msg).encode() + b"\n")
            self._file.flush()
        except OSError as exc:
            raise QMPError(f"QMP: cannot send {name}: {exc}") from exc
        while True:
            answer = self._read()
            if "return" in answer:
                return answer["return"]
            if "error" in answer:
                err = answer["error"]
                raise QMPError(f"QMP {name}: {err.get('class')}: {err.get('desc')}")
            # an asynchronous event (STOP, RESUME, MIGRATION...): not an answer

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            self._sock.close()


# -- the key ------------------------------------------------------------------------------
def _file_identity(path: Path, manifest: dict[str, Any] | None, rel: str) -> dict[str, Any]:
    """The sha256 the image entry's manifest recorded for `rel` (it was verified when the
    entry was built or checked), else the file's size and mtime."""
    meta = (manifest or {}).get("files", {}).get(rel)
    if meta is not None:
        return {"sha256": meta["sha256"]}
    try:
        st = path.stat()
    except OSError:
        return {"missing": str(path)}
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _qemu_identity(qemu: str) -> dict[str, Any]:
    st = Path(qemu).stat()
    return {"path": qemu, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def normalized_command(command: list[str]) -> list[str]:
    """The cold-boot command with what differs between runs of one configuration masked:
    the host ports of hostfwd rules (the guest port stays), and the host directory of a
    9p export (`-fsdev local,…,path=DIR`: QEMU opens it at start and the migration stream
    does not carry it, so one state serves any directory; kbox/vm/share.py mounts it after
    the restore)."""
    out = []
    for i, arg in enumerate(command):
        if i and command[i - 1] == "-fsdev":
            arg = re.sub(r"(^|,)path=(?:[^,]|,,)*", r"\1path=DIR", arg)
        if "hostfwd=" in arg:
            parts = []
            for p in arg.split(","):
                if p.startswith("hostfwd=tcp:127.0.0.1:"):
                    guest = p[len("hostfwd=tcp:127.0.0.1:"):].partition("-")[2]
                    p = f"hostfwd=tcp:127.0.0.1:PORT-{guest}"
                parts.append(p)
            arg = ",".join(parts)
        out.append(arg)
    return out


def state_key(image: ImageLike, accel: Accel, command: list[str], qemu: str) -> dict[str, Any]:
    """Everything a saved state depends on (see the module docstring)."""
    entry = Path(getattr(image, "cache_dir", Path(image.kernel_path).parent))
    manifest = cache.read_manifest(entry)
    kpath, ipath = Path(image.kernel_path), Path(image.initrd_path)
    rel = (lambda p: str(p.relative_to(entry)) if p.is_relative_to(entry) else p.name)
    return {
        "format": STATE_FORMAT,
        "arch": image.arch,
        "kernel": image.kernel,
        "kernel_version": getattr(image, "kernel_version", ""),
        "image": entry.name,
        "kernel_file": _file_identity(kpath, manifest, rel(kpath)),
        "initrd_file": _file_identity(ipath, manifest, rel(ipath)),
        "accel": accel.name,
        "qemu": _qemu_identity(qemu),
        "command": normalized_command(command),
    }


def key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def states_root() -> Path:
    """$KBOX_STATE_DIR, else <cache>/states (tests point it elsewhere)."""
    env = os.environ.get("KBOX_STATE_DIR")
    return Path(env) if env else cache.cache_root() / "states"


def _locked(entry: Path, timeout: float) -> contextlib.AbstractContextManager[None]:
    """The lock of every state of one arch/kernel (<states>/locks/<arch>-<kernel>.lock):
    one process saves while the others wait, then restore what it saved."""
    path = entry.parent / "locks" / f"{entry.name.rsplit('-', 1)[0]}.lock"
    return cache.file_lock(path, timeout, "saving a VM state", StateRejected)


def state_entry(key: dict[str, Any]) -> Path:
    return states_root() / f"{key['arch']}-{key['kernel']}-{key_digest(key)}"


def _first_difference(a: dict[str, Any], b: dict[str, Any]) -> str:
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            return k
    return "?"


def read_meta(entry: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((entry / META_FILE).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def check_state(entry: Path, key: dict[str, Any]) -> str | None:
    """None if `entry` holds a usable state for `key`, else what is wrong (one line).
    Cheap: no checksum of the state itself (QEMU's own checks come at restore)."""
    if not entry.is_dir():
        return "no saved state"
    meta = read_meta(entry)
    if meta is None:
        return f"{META_FILE} missing or unreadable"
    if meta.get("key") != key:
        other: dict[str, Any] = meta["key"] if isinstance(meta.get("key"), dict) else {}
        return f"saved for another configuration ({_first_difference(other, key)} differs)"
    path = entry / STATE_FILE
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(len(STREAM_HEADER))
    except OSError:
        return f"{STATE_FILE} missing or unreadable"
    if size != meta.get("size"):
        return f"{STATE_FILE} is {size} bytes, {meta.get('size')} were written"
    if head != STREAM_HEADER:
        return f"{STATE_FILE} is not a QEMU migration stream (header {head[:8]!r})"
    return None


def broken_reason(entry: Path, key: dict[str, Any]) -> str | None:
    """Why the state of `key` could not be used the last time it was made, if it failed."""
    try:
        note = json.loads(entry.with_name(entry.name + ".broken").read_text())
    except (OSError, ValueError):
        return None
    return note.get("reason") if note.get("key") == key else None


def discard(entry: Path, created: float | None = None) -> None:
    """Remove a bad state, unless it was replaced meanwhile (another process saved a new one
    of the same key: its `created` differs)."""
    with _locked(entry, timeout=120):
        meta = read_meta(entry)
        if created is not None and meta is not None and meta.get("created") != created:
            return
        cache.remove_entry(entry)


# -- VMs that save or restore ---------------------------------------------------------------
class _WithQMP(VM):
    """A VM with a QMP socket of its own (in a short temp dir: sun_path has 108 bytes)."""

    def __init__(self, image: ImageLike, **kw: Any) -> None:
        super().__init__(image, **kw)
        self._qmp_dir = Path(tempfile.mkdtemp(prefix="kbox-qmp-"))
        self.qmp_path = self._qmp_dir / "qmp.sock"
        self.qmp: QMP | None = None

    def cold_command(self, qemu: str) -> list[str]:
        """The command VM would boot this guest with (what a state's key records)."""
        return VM._qemu_command(self, qemu)

    def _qemu_command(self, qemu: str) -> list[str]:
        return self.cold_command(qemu) + ["-qmp", f"unix:{self.qmp_path},server=on,wait=off"]

    def _connect_qmp(self, deadline: float) -> None:
        if self.qmp is None:
            self.qmp = QMP(self.qmp_path, deadline, lambda: self.is_running)

    def kill(self) -> None:
        if self.qmp is not None:
            self.qmp.close()
            self.qmp = None
        super().kill()
        shutil.rmtree(self._qmp_dir, ignore_errors=True)


class SavingVM(_WithQMP):
    """A cold-booted VM whose state is saved once it is ready (see save_state)."""


class RestoredVM(_WithQMP):
    """A VM resumed from a saved state instead of booted: launch() starts QEMU with
    `-incoming fd:N`, wait_ready() waits for the state to load, resumes the guest,
    connects SSH and sets the guest clock. Any failure on the way is StateRejected."""

    how = "restored from the saved state"

    def __init__(self, image: ImageLike, entry: Path, **kw: Any) -> None:
        super().__init__(image, **kw)
        self.state_dir = entry
        self._fd: int | None = None

    def _qemu_command(self, qemu: str) -> list[str]:
        assert self._fd is not None
        cmd = self.cold_command(qemu)
        # The state holds the RAM these would load (and reading them costs QEMU 0.13 s).
        for opt in ("-kernel", "-initrd", "-append"):
            if opt in cmd:
                i = cmd.index(opt)
                del cmd[i:i + 2]
        return cmd + ["-qmp", f"unix:{self.qmp_path},server=on,wait=off",
                      "-incoming", f"fd:{self._fd}"]

    def _start(self, qemu: str) -> None:
        # A fresh descriptor per attempt: a QEMU that lost a port race may have read some.
        self._fd = os.open(self.state_dir / STATE_FILE, os.O_RDONLY | os.O_CLOEXEC)
        self._pass_fds = (self._fd,)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"### restored from {self.state_dir}; the console of the boot it "
                      "saved:\n".encode())
            with contextlib.suppress(OSError):
                log.write((self.state_dir / BOOT_LOG).read_bytes())
            log.write(b"### end of the saved boot's console\n")
        try:
            super()._start(qemu)
        finally:
            os.close(self._fd)
            self._pass_fds = ()

    def _exits_before_output(self) -> bool:
        """A restored guest prints nothing; QEMU answering on QMP means it has bound its
        ports (a port collision makes it exit before that)."""
        deadline = time.monotonic() + RESTORE_TIMEOUT_S * self.timeout_factor
        try:
            self._connect_qmp(deadline)
        except QMPError:
            assert self._proc is not None
            with contextlib.suppress(Exception):
                self._proc.wait(timeout=2)
            return self._proc.poll() is not None
        return False

    def _refused(self, what: str) -> StateRejected:
        err = next((ln.strip() for ln in self._stderr_text().splitlines() if ln.strip()), "")
        return StateRejected(f"{what}{': ' + err if err else ''}", self.log_path)

    def wait_ready(self, timeout: float | None = None) -> None:
        assert self._proc is not None
        budget = (timeout if timeout is not None else RESTORE_TIMEOUT_S) * self.timeout_factor
        deadline = self._launched_at + budget
        try:
            self._connect_qmp(deadline)
            assert self.qmp is not None
            while True:
                status = self.qmp.command("query-status")["status"]
                if status != "inmigrate":
                    break
                if time.monotonic() > deadline:
                    raise StateRejected(f"the state did not load within {budget:g} s",
                                        self.log_path)
                time.sleep(0.005)
            if status in ("paused", "postmigrate", "prelaunch"):
                self.qmp.command("cont")
            elif status != "running":
                raise self._refused(f"the restored guest is {status!r}, not running")
            self._check_alive()
        except QMPError as exc:
            if self._proc is not None and self._proc.poll() is None:
                with contextlib.suppress(Exception):
                    self._proc.wait(timeout=2)   # an exiting QEMU: let it finish
            raise self._refused("QEMU refused the state" if not self.is_running
                                else f"QEMU's monitor failed ({exc})") from exc
        except (VMLaunchFailure, GuestCrash) as exc:
            raise self._refused(f"the restored guest died ({str(exc).splitlines()[0]})") \
                from exc
        assert self.ssh_port is not None
        ssh_deadline = time.monotonic() + RESTORE_SSH_S * self.timeout_factor
        try:
            self._client = sshmod.connect("127.0.0.1", self.ssh_port, self.image.ssh_user,
                                          Path(self.image.ssh_key), ssh_deadline,
                                          alive=self._check_alive)
        except (sshmod.SSHError, VMLaunchFailure, GuestCrash, OSError, EOFError) as exc:
            raise StateRejected(f"the restored guest did not answer SSH within "
                                f"{RESTORE_SSH_S * self.timeout_factor:g} s "
                                f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
                                self.log_path) from exc
        self.boot_seconds = time.monotonic() - self._launched_at
        timing.record("boot", arch=self.image.arch, kernel=self.image.kernel, name=self.name,
                      seconds=self.boot_seconds,
                      accel=f"{self.accel.name} warm" if self.accel else "warm")
        # The guest's clock stood still while the state sat on disk; it is set by the first
        # command (one SSH round trip less: 0.05-0.15 s of a ~1 s start under TCG).
        self._clock_pending = True

    def _clock_command(self) -> str:
        return f"date -u -s @{round(time.time())} >/dev/null 2>&1"

    def run(self, command: str | Sequence[str], timeout: float = RUN_TIMEOUT_S,
            **kw: Any) -> RunResult:
        """VM.run; the first command after the restore also sets the guest's clock (in the
        same shell, before the command, so the command sees the right time)."""
        if getattr(self, "_clock_pending", False):
            cmd = command if isinstance(command, str) else shlex.join(command)
            self._clock_pending = False
            return super().run(f"{self._clock_command()}; {cmd}", timeout, **kw)
        return super().run(command, timeout, **kw)

    def sync_clock(self) -> None:
        """Set the guest's clock now if no command has done it yet."""
        if getattr(self, "_clock_pending", False):
            self._clock_pending = False
            super().run(self._clock_command(), timeout=RESTORE_SSH_S, check=True)

    def put(self, local: Path | str, remote: str, timeout: float = RUN_TIMEOUT_S) -> None:
        self.sync_clock()   # the file's mtime in the guest comes from its clock
        super().put(local, remote, timeout)

    def ssh_client(self) -> paramiko.SSHClient:
        self.sync_clock()   # interactive use (kbox vm shell, gdb) bypasses run()
        return super().ssh_client()


def save_state(vm: SavingVM, key: dict[str, Any], entry: Path) -> None:
    """Stop the ready `vm` and write its state to `entry` (atomically: a temp directory
    renamed into place). The VM stays stopped; the caller kills it. Caller holds the lock."""
    if vm._client is not None:
        # No SSH session of ours in the saved guest: every restore connects afresh.
        vm._client.close()
        vm._client = None
    vm._connect_qmp(time.monotonic() + QMP_TIMEOUT_S * vm.timeout_factor)
    assert vm.qmp is not None
    entry.parent.mkdir(parents=True, exist_ok=True)
    cache.cleanup_stale_temps(entry.parent)
    tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".tmp-{entry.name}-"))
    try:
        target = tmp / STATE_FILE
        vm.qmp.command("migrate-set-parameters", **{"max-bandwidth": SAVE_BANDWIDTH})
        vm.qmp.command("stop")
        t0 = time.monotonic()
        vm.qmp.command("migrate", uri="exec:cat > " + shlex.quote(str(target)))
        deadline = t0 + SAVE_TIMEOUT_S * vm.timeout_factor
        while True:
            info = vm.qmp.command("query-migrate")
            status = info.get("status")
            if status == "completed":
                break
            if status in ("failed", "cancelled"):
                raise VMError(f"saving the VM state failed: {info.get('error-desc', status)}")
            if time.monotonic() > deadline:
                raise VMError(f"saving the VM state took over "
                              f"{SAVE_TIMEOUT_S * vm.timeout_factor:g} s")
            time.sleep(0.02)
        with contextlib.suppress(OSError):
            shutil.copyfile(vm.log_path, tmp / BOOT_LOG)
        size = target.stat().st_size
        meta = {"key": key, "size": size, "created": time.time(), "pid": os.getpid(),
                "save_seconds": round(time.monotonic() - t0, 3),
                "boot_seconds": vm.boot_seconds, "ram": info.get("ram", {})}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))
        cache.remove_entry(entry)
        tmp.rename(entry)
        entry.with_name(entry.name + ".broken").unlink(missing_ok=True)
        _prune_siblings(entry)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _prune_siblings(entry: Path) -> None:
    """Older states of the same arch/kernel (stale keys) are 300 MB each: drop them.
    A VM restoring from one holds its own descriptor and is not disturbed."""
    prefix = entry.name.rsplit("-", 1)[0] + "-"
    for p in entry.parent.iterdir():
        if p != entry and p.name.startswith(prefix) and not p.name.startswith(".") \
                and p.name.count("-") == entry.name.count("-") and not cache.recently_used(p):
            if p.is_dir():
                cache.remove_entry(p)
            else:
                p.unlink(missing_ok=True)


def _mark_broken(entry: Path, key: dict[str, Any], reason: str) -> None:
    note = entry.with_name(entry.name + ".broken")
    tmp = note.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"key": key, "reason": reason, "when": time.time()}))
    tmp.replace(note)


# -- what callers use -------------------------------------------------------------------------
def _say(notice: Callable[[str], None] | None, msg: str) -> None:
    (notice or (lambda m: print(m, file=sys.stderr)))(msg)


def _boot(cls: type[VM], image: ImageLike, vm_kw: dict[str, Any], *args: Any) -> VM:
    vm = cls(image, *args, **vm_kw)
    try:
        vm.launch()
        vm.wait_ready()
    except BaseException:
        vm.kill()
        raise
    return vm


def key_for(image: ImageLike, accel: Accel, qemu: str, **vm_kw: Any) -> dict[str, Any]:
    """The state key of a VM(image, accel=accel, **vm_kw) booted with `qemu`."""
    probe = SavingVM(image, **{**vm_kw, "accel": accel, "notice": lambda m: None})
    try:
        probe.accel, probe.ssh_port = accel, 0
        probe.forwards = {g: 0 for g in probe.forward_guest_ports}
        return state_key(image, accel, probe.cold_command(qemu), qemu)
    finally:
        probe.kill()


def start(image: ImageLike, *, accel: str | Accel = "auto", cold: bool = False,
          notice: Callable[[str], None] | None = None,
          cold_image: Callable[[], ImageLike] | None = None, **vm_kw: Any) -> VM:
    """A ready VM for `image`: restored from the saved state of this configuration when
    there is a usable one; else booted cold and its state saved for the next time (the
    saved state is then restored at once, which proves it). `cold=True`: a plain cold boot,
    no state read or written. `cold_image()`, if given, returns the image fully verified,
    for a cold boot when `image` was checked by size only. The caller kills the VM."""
    sshmod.prefetch()   # paramiko's import overlaps QEMU's start and the state load
    arch = get_arch(image.arch)
    qemu = require_qemu(arch)
    acc = accel if isinstance(accel, Accel) else resolve_accel(accel, arch,
                                                                 Path(image.kernel_path))
    vm_kw = {**vm_kw, "accel": acc}
    if notice is not None:
        vm_kw["notice"] = notice
    if cold:
        return _boot(VM, cold_image() if cold_image else image, vm_kw)
    key = key_for(image, acc, qemu, **{k: v for k, v in vm_kw.items()
                                        if k not in ("accel", "notice")})
    entry = state_entry(key)
    vm = _restore(image, entry, key, vm_kw, notice, locked=False)
    if vm is not None:
        return vm
    cold_img = cold_image() if cold_image else image
    if (cold_img.kernel_path, cold_img.initrd_path) != (image.kernel_path, image.initrd_path):
        # The image was rebuilt meanwhile (its sources changed): what is saved now is a
        # state of the new one, under its own key.
        image = cold_img
        key = key_for(image, acc, qemu, **{k: v for k, v in vm_kw.items()
                                            if k not in ("accel", "notice")})
        entry = state_entry(key)
    with _locked(entry, timeout=600):
        # Another process may have saved it while this one waited for the lock.
        if check_state(entry, key) is None:
            vm = _restore(image, entry, key, vm_kw, notice, locked=True)
            if vm is not None:
                return vm
        broken = broken_reason(entry, key)
        if broken is not None:
            _say(notice, f"kbox: warm start unavailable for this configuration ({broken}); "
                         f"booting cold (remove {entry}.broken to try again)")
            return _boot(VM, cold_img, vm_kw)
        saver = _boot(SavingVM, cold_img, vm_kw)
        try:
            save_state(saver, key, entry)  # type: ignore[arg-type]
        except VMError as exc:
            # A guest that cannot be migrated (a device without migration support, say):
            # boot cold from now on for this key, and give this caller a running guest.
            saver.kill()
            reason = str(exc).splitlines()[0]
            _mark_broken(entry, key, reason)
            _say(notice, f"kbox: could not save the VM state ({reason}); booting cold")
            return _boot(VM, cold_img, vm_kw)
        finally:
            saver.kill()
        try:
            # (the accelerator notice was printed by the boot just before)
            return _boot(RestoredVM, image, {**vm_kw, "notice": lambda m: None}, entry)
        except StateRejected as exc:
            _mark_broken(entry, key, exc.reason)
            cache.remove_entry(entry)
            _say(notice, f"kbox: the state just saved does not restore ({exc.reason}); "
                         "booting cold")
            return _boot(VM, cold_img, vm_kw)


def _restore(image: ImageLike, entry: Path, key: dict[str, Any], vm_kw: dict[str, Any],
             notice: Callable[[str], None] | None, locked: bool) -> VM | None:
    """The VM restored from `entry`, or None (the state is absent, or bad: then said in one
    line and discarded; `locked`: the caller holds the state lock already)."""
    def drop(created: float | None) -> None:
        if locked:
            cache.remove_entry(entry)
        else:
            discard(entry, created)

    problem = check_state(entry, key)
    if problem is not None:
        if entry.exists():
            _say(notice, f"kbox: saved VM state {entry.name} unusable ({problem}); "
                         "discarded, booting cold")
            drop((read_meta(entry) or {}).get("created"))
        return None
    created = (read_meta(entry) or {}).get("created")
    cache.mark_used(entry)
    try:
        return _boot(RestoredVM, image, vm_kw, entry)
    except StateRejected as exc:
        _say(notice, f"kbox: saved VM state {entry.name} rejected ({exc.reason}); "
                     "discarded, booting cold")
        drop(created)
        return None


@contextlib.contextmanager
def ready_vm(image: ImageLike, **kw: Any) -> Iterator[VM]:
    """`with ready_vm(image, accel=..., cold=...) as vm:` — start() as a context manager
    (the VM is killed on the way out; an initramfs guest has nothing to shut down)."""
    vm = start(image, **kw)
    try:
        yield vm
    finally:
        vm.kill()
