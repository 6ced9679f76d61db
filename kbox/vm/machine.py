"""The VM object: boot a guest image under QEMU, talk to it over SSH, never leak it.

Modelled on QEMU's python/qemu/machine/machine.py: a context manager with a small public
API (launch, wait_ready, run, put, get, shutdown, kill), private lifecycle steps, cleanup
in `finally`, and a typed exception tree. Every blocking call takes a timeout expressed
in "hardware seconds"; it is multiplied by the accelerator's factor (x3 under TCG).

A VM never outlives its owner:
- the QEMU child gets PR_SET_PDEATHSIG(SIGKILL), so the kernel kills it if the owning
  process dies for any reason (SIGKILL included);
- it runs in its own process group, killed as a group (QEMU spawns no helpers today, but
  a group kill is what keeps that true);
- atexit and SIGTERM/SIGHUP handlers kill every live VM of this process; SIGINT raises
  KeyboardInterrupt as usual and the context manager's `finally` kills the VM.
Caveat: PDEATHSIG fires when the *thread* that forked exits, so launch VMs from a
long-lived thread (pytest and the CLI both use the main thread).
"""
from __future__ import annotations

import atexit
import ctypes
import itertools
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import BinaryIO, Protocol

from kbox.errors import UserError
from kbox.vm import ssh as sshmod
from kbox.vm.ssh import paramiko
from kbox.vm import timing
from kbox.vm.accel import Accel, cache_dir, resolve_accel
from kbox.vm.arch import Arch, get_arch
from kbox.vm.console import Console
from kbox.vm.ports import candidate_ports, is_hostfwd_collision, worker_index
from kbox.vm.ssh import RunResult

__all__ = ["VM", "VMError", "VMLaunchFailure", "GuestCrash", "SSHTimeout", "GuestTimeout",
           "GuestNoNetwork",
           "RunResult", "ImageLike"]

BOOT_TIMEOUT_S = 20.0        # hardware seconds from launch to SSH-ready (x3 under TCG)
RUN_TIMEOUT_S = 60.0         # default per-command budget
SSH_ATTEMPTS = 3             # a command that did not start, or a copy, on fresh connections
RECONNECT_S = 30.0           # hardware seconds to get a new connection to a running guest
SETTLE_S = 5.0               # hardware seconds for QEMU to start the guest after binding ports
PORT_ATTEMPTS = 5            # launches tried on host-forwarding collisions
DEFAULT_MEMORY_MB = int(os.environ.get("KBOX_VM_MEMORY", "1536"))
DEFAULT_SMP = int(os.environ.get("KBOX_VM_SMP", "2"))
# What the guest's /init (busybox ip) prints when the kernel has no eth0: virtio_net or
# virtio_pci is neither built in nor loadable. It still prints the ready marker (dropbear
# listens on lo), so without this check the VM would wait out the SSH deadline.
_NO_NET_RE = re.compile(r"can't find device 'eth0'|SIOCGIFFLAGS: No such device|"
                        r"Cannot find device \"eth0\"")
_INSMOD_FAILED_RE = re.compile(r"kbox-init: insmod (\S+) failed")


class ImageLike(Protocol):
    """What the VM needs from kbox.vm.images.Image."""
    arch: str
    kernel: str
    kernel_path: Path
    initrd_path: Path
    cmdline: str
    ssh_key: Path
    ssh_user: str


# -- exceptions --------------------------------------------------------------------------
class VMError(Exception):
    """Base of every VM failure."""


class VMLaunchFailure(VMError):
    """QEMU exited before the guest became ready."""

    def __init__(self, message: str, exitcode: int | None, command: Sequence[str],
                 console_tail: str, log_path: Path | None = None) -> None:
        self.exitcode = exitcode
        self.command = list(command)
        self.console_tail = console_tail
        self.log_path = log_path
        super().__init__(
            f"{message} (qemu exit code {exitcode})\ncommand: {shlex.join(self.command)}\n"
            f"console log: {log_path}\n--- console tail ---\n{console_tail}")


class GuestCrash(VMError):
    """The guest kernel printed a panic, BUG, Oops or WARN trace."""

    def __init__(self, excerpt: str, log_path: Path) -> None:
        self.excerpt = excerpt
        self.log_path = log_path
        super().__init__(f"guest kernel crashed (console log: {log_path}):\n{excerpt}")


class SSHTimeout(VMError):
    """The guest did not accept SSH before the boot deadline."""

    def __init__(self, message: str, console_tail: str, log_path: Path) -> None:
        self.console_tail = console_tail
        self.log_path = log_path
        super().__init__(f"{message}\nconsole log: {log_path}\n--- console tail ---\n"
                         f"{console_tail}")


class GuestNoNetwork(VMError):
    """The guest booted without the network device SSH needs (its kernel lacks virtio-net)."""

    def __init__(self, message: str, console_tail: str, log_path: Path) -> None:
        self.console_tail = console_tail
        self.log_path = log_path
        super().__init__(f"{message}\nconsole log: {log_path}\n--- console tail ---\n"
                         f"{console_tail}")


class GuestTimeout(VMError):
    """A guest command outlived its timeout."""

    def __init__(self, command: str, timeout: float, stdout: str, stderr: str,
                 console_tail: str, log_path: Path) -> None:
        self.command = command
        self.timeout = timeout
        self.stdout = stdout
        self.stderr = stderr
        self.console_tail = console_tail
        self.log_path = log_path
        super().__init__(
            f"guest command timed out after {timeout:g} s: {command}\n"
            f"--- stdout ---\n{stdout[-2000:]}\n--- stderr ---\n{stderr[-2000:]}\n"
            f"console log: {log_path}\n--- console tail ---\n{console_tail}")


# -- process-wide cleanup ----------------------------------------------------------------
_LIVE: "weakref.WeakSet[VM]" = weakref.WeakSet()
_HANDLERS_INSTALLED = False
_PREV_HANDLERS: dict[int, object] = {}
_LOCK = threading.Lock()
_COUNTER = itertools.count()

_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _child_setup(parent_pid: int) -> None:
    """Runs in the QEMU child between fork and exec: die with the parent."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # The parent may have died between fork and prctl; then nobody would ever kill us.
    if os.getppid() != parent_pid:
        os._exit(1)


def kill_all() -> None:
    """Kill every VM this process launched (atexit, signal handlers)."""
    for vm in list(_LIVE):
        vm.kill()


def _on_fatal_signal(signum: int, frame: FrameType | None) -> None:
    kill_all()
    prev = _PREV_HANDLERS.get(signum, signal.SIG_DFL)
    if callable(prev):
        prev(signum, frame)
        return
    if prev == signal.SIG_IGN:
        return
    # Re-deliver with the default action so the exit status still says "killed by signal".
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_handlers() -> None:
    global _HANDLERS_INSTALLED
    with _LOCK:
        if _HANDLERS_INSTALLED:
            return
        _HANDLERS_INSTALLED = True
        atexit.register(kill_all)
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread; PDEATHSIG remains
        for sig in (signal.SIGTERM, signal.SIGHUP):
            prev = signal.getsignal(sig)
            _PREV_HANDLERS[sig] = prev
            signal.signal(sig, _on_fatal_signal)


def require_qemu(arch: Arch) -> str:
    path = shutil.which(arch.qemu)
    if path is None:
        raise UserError(f"{arch.qemu} not found: install it with `apt-get install "
                        f"{arch.qemu_package}`", 3)
    return path


# -- the VM ------------------------------------------------------------------------------
class VM:
    """One guest. Use as `with VM(image) as vm: vm.run("uname -a")`."""

    def __init__(self, image: ImageLike, *, accel: str | Accel = "auto",
                 name: str | None = None, log_dir: Path | None = None,
                 worker_id: str | None = None, memory_mb: int = DEFAULT_MEMORY_MB,
                 smp: int = DEFAULT_SMP, extra_cmdline: str = "",
                 forward: Sequence[int] = (), boot_timeout: float = BOOT_TIMEOUT_S,
                 quiet: bool = True, notice: Callable[[str], None] | None = None,
                 detached: bool = False, extra_qemu_args: Sequence[str] = ()) -> None:
        self.image = image
        self.arch: Arch = get_arch(image.arch)
        self.name = name or f"{image.arch}-{image.kernel}-{os.getpid()}-{next(_COUNTER)}"
        self.log_dir = Path(log_dir) if log_dir else cache_dir() / "logs"
        self.log_path = self.log_dir / f"{self.name}.console.log"
        self.worker_id = worker_id
        self.memory_mb = memory_mb
        self.smp = smp
        self.extra_cmdline = extra_cmdline
        self.extra_qemu_args = list(extra_qemu_args)   # devices, e.g. share.qemu_args()
        self.commands: list[str] = []   # every run() command, for repro bundles
        self.forward_guest_ports = list(forward)
        self.boot_timeout = boot_timeout
        self.quiet = quiet
        # detached: QEMU may outlive this process (no death signal, not killed at exit);
        # only for --keep-vm style inspection. The caller must kill() or release() it.
        self.detached = detached
        self._accel_req = accel
        self._notice = notice if notice is not None else (
            lambda msg: print(msg, file=sys.stderr))
        self.accel: Accel | None = None
        self.ssh_port: int | None = None
        self.forwards: dict[int, int] = {}   # guest port -> host port
        self.command: list[str] = []
        self.boot_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._console: Console | None = None
        self._stderr_path: Path | None = None
        self._client: paramiko.SSHClient | None = None
        self._launched_at = 0.0
        # File descriptors QEMU inherits (a saved state restored with -incoming fd:N).
        self._pass_fds: tuple[int, ...] = ()

    # -- context manager ------------------------------------------------------------------
    def __enter__(self) -> VM:
        try:
            self.launch()
            self.wait_ready()
        except BaseException:
            self.kill()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if exc_type is None:
                self.shutdown()
        finally:
            self.kill()

    # -- properties -----------------------------------------------------------------------
    @property
    def timeout_factor(self) -> float:
        return self.accel.timeout_factor if self.accel else 1.0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def console_tail(self, n: int = 40) -> str:
        return self._console.tail(n) if self._console else ""

    # -- lifecycle ------------------------------------------------------------------------
    def launch(self) -> None:
        """Start QEMU (no waiting for the guest); retries another port on a collision."""
        if self._proc is not None:
            raise VMError(f"{self.name} already launched")
        qemu = require_qemu(self.arch)
        if isinstance(self._accel_req, Accel):
            self.accel = self._accel_req
        else:
            self.accel = resolve_accel(self._accel_req, self.arch, self._probe_kernel())
        self._notice(self.accel.notice(self.arch))
        _install_handlers()
        ports = candidate_ports(self.worker_id)
        last_err = ""
        for _attempt in range(PORT_ATTEMPTS):
            self.ssh_port = next(ports)
            self.forwards = {g: next(ports) for g in self.forward_guest_ports}
            self._start(qemu)
            # Host forwarding is set up before the guest starts; QEMU exits early when the
            # port was taken between our probe and its bind.
            if self._exits_before_output() and is_hostfwd_collision(self._stderr_text()):
                last_err = self._stderr_text().strip()
                self._reap()
                continue
            return
        raise VMLaunchFailure(f"no free port after {PORT_ATTEMPTS} attempts: {last_err}",
                              None, self.command, "", self.log_path)

    def _probe_kernel(self) -> Path | None:
        # The KVM probe boots the real kernel (no initramfs) when it is readable.
        p = Path(self.image.kernel_path)
        return p if p.exists() else None

    def _qemu_command(self, qemu: str) -> list[str]:
        assert self.accel is not None and self.ssh_port is not None
        cpu = self.arch.cpu_kvm if self.accel.name == "kvm" else self.arch.cpu_tcg
        fwd = [f"hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22"]
        fwd += [f"hostfwd=tcp:127.0.0.1:{h}-:{g}" for g, h in self.forwards.items()]
        cmdline = f"{self.image.cmdline} console={self.arch.console}"
        if self.quiet and "quiet" not in cmdline.split() and "loglevel" not in cmdline:
            cmdline += " quiet"
        if self.extra_cmdline:
            cmdline += " " + self.extra_cmdline
        return [
            qemu, *self.accel.qemu_args(), "-M", self.arch.machine, "-cpu", cpu,
            "-m", str(self.memory_mb), "-smp", str(self.smp),
            "-nodefaults", "-display", "none", "-monitor", "none", "-serial", "stdio",
            # A panicking guest (panic=-1 in the image cmdline) reboots; -no-reboot turns
            # that into QEMU exiting, which the console watcher reports with the panic text.
            "-no-reboot",
            "-kernel", str(self.image.kernel_path), "-initrd", str(self.image.initrd_path),
            "-append", cmdline,
            "-netdev", "user,id=net0," + ",".join(fwd),
            "-device", "virtio-net-pci,netdev=net0,romfile=",
            *self.arch.extra_qemu_args,
            *self.extra_qemu_args,
        ]

    def _start(self, qemu: str) -> None:
        self.command = self._qemu_command(qemu)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._stderr_path = self.log_dir / f"{self.name}.qemu-stderr.log"
        stderr = open(self._stderr_path, "wb")
        parent = os.getpid()
        try:
            self._proc = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr,
                start_new_session=True, pass_fds=self._pass_fds,
                preexec_fn=None if self.detached else (lambda: _child_setup(parent)))
        finally:
            stderr.close()
        if not self.detached:
            _LIVE.add(self)
        self._launched_at = time.monotonic()
        assert self._proc.stdout is not None
        with open(self.log_path, "ab") as fh:
            fh.write(f"### {time.strftime('%F %T')} {shlex.join(self.command)}\n".encode())
        self._console = Console(self._proc.stdout, self.log_path)

    def _exits_before_output(self) -> bool:
        """True if QEMU exits before the guest prints anything.  QEMU binds its forwarded
        ports before it starts the guest, so once the console has output the ports are
        held; on a loaded host that start can take seconds (a fixed 0.3 s wait missed a
        collision there).  Bounded: a guest that is silent for SETTLE_S is taken as started."""
        assert self._proc is not None and self._console is not None
        deadline = time.monotonic() + SETTLE_S * self.timeout_factor
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return True
            if self._console.tail(1) or self._console.eof:
                return self._proc.poll() is not None
            time.sleep(0.02)
        return False

    def _stderr_text(self) -> str:
        try:
            return self._stderr_path.read_text(errors="replace") if self._stderr_path else ""
        except OSError:
            return ""

    def _check_alive(self) -> None:
        """Raise GuestCrash / VMLaunchFailure if the guest crashed or QEMU is gone."""
        assert self._console is not None and self._proc is not None
        excerpt = self._console.crash_excerpt()
        if excerpt is not None:
            self.kill()
            raise GuestCrash(excerpt, self.log_path)
        if self._proc.poll() is not None:
            self._console.close(2.0)
            excerpt = self._console.crash_excerpt()
            if excerpt is not None:
                self.kill()
                raise GuestCrash(excerpt, self.log_path)
            code = self._proc.returncode
            err = self._stderr_text().strip()
            self.kill()
            raise VMLaunchFailure(f"qemu exited unexpectedly{': ' + err if err else ''}",
                                  code, self.command, self._console.tail(40), self.log_path)

    def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the guest prints its ready marker and accepts SSH.

        `timeout` is in hardware seconds (default BOOT_TIMEOUT_S) and is scaled by the
        accelerator's factor. Fails at once on a kernel crash or QEMU exit.
        """
        assert self._proc is not None and self._console is not None, "launch() first"
        budget = (timeout if timeout is not None else self.boot_timeout) * self.timeout_factor
        deadline = self._launched_at + budget
        while not self._console.ready:
            self._check_alive()
            if time.monotonic() > deadline:
                tail = self._console.tail(40)
                self.kill()
                raise SSHTimeout(f"{self.name}: guest not ready after {budget:g} s",
                                 tail, self.log_path)
            self._console.wait(0.1)
        self._check_network()
        assert self.ssh_port is not None
        try:
            self._client = sshmod.connect("127.0.0.1", self.ssh_port, self.image.ssh_user,
                                          Path(self.image.ssh_key), deadline,
                                          alive=self._check_alive)
        except sshmod.ChannelTimeout as exc:
            tail = self._console.tail(40)
            self.kill()
            raise SSHTimeout(f"{self.name}: {exc}", tail, self.log_path) from exc
        self.boot_seconds = time.monotonic() - self._launched_at
        timing.record("boot", arch=self.image.arch, kernel=self.image.kernel, name=self.name,
                      seconds=self.boot_seconds, accel=self.accel.name if self.accel else "")

    def _check_network(self) -> None:
        """Fail at once if the guest's init found no eth0 (its kernel lacks virtio-net)."""
        assert self._console is not None
        tail = self._console.tail(200)
        if not _NO_NET_RE.search(tail):
            return
        failed = _INSMOD_FAILED_RE.findall(tail)
        self.kill()
        raise GuestNoNetwork(
            f"{self.name}: the guest has no network device eth0: kernel "
            f"{getattr(self.image, 'kernel_version', self.image.kernel)} lacks virtio_pci or "
            "virtio_net (build them in, or give their modules)"
            + (f"; insmod failed for {', '.join(Path(f).name for f in failed)}" if failed
               else ""), self._console.tail(40), self.log_path)

    def _ssh(self) -> paramiko.SSHClient:
        if self._client is None:
            raise VMError(f"{self.name} is not ready (call wait_ready())")
        return self._client

    def run(self, command: str | Sequence[str], timeout: float = RUN_TIMEOUT_S, *,
            check: bool = False, stdin: bytes | BinaryIO | None = None,
            on_stdout: sshmod.Sink | None = None, on_stderr: sshmod.Sink | None = None,
            pty: bool = False) -> RunResult:
        """Run a shell command in the guest and return exit status, stdout and stderr.

        `timeout` is in hardware seconds, scaled under TCG; on expiry GuestTimeout carries
        the output so far and the console tail. A kernel crash meanwhile raises GuestCrash.
        """
        cmd = command if isinstance(command, str) else shlex.join(command)
        self.commands.append(cmd)
        effective = timeout * self.timeout_factor
        self._check_alive()
        try:
            for attempt in range(SSH_ATTEMPTS):
                try:
                    res = sshmod.run(self._ssh(), cmd, effective, stdin=stdin,
                                     on_stdout=on_stdout, on_stderr=on_stderr, pty=pty)
                    break
                except sshmod.SessionRefused:
                    # Nothing ran: a fresh connection may do better (stdin as bytes only:
                    # a stream may have been read from already).
                    if attempt == SSH_ATTEMPTS - 1 or not isinstance(stdin, (bytes, type(None))):
                        raise
                    self._reconnect()
        except sshmod.ChannelTimeout as exc:
            self._check_alive()
            raise GuestTimeout(cmd, effective, exc.stdout.decode(errors="replace"),
                               exc.stderr.decode(errors="replace"), self.console_tail(),
                               self.log_path) from exc
        except (sshmod.SSHError, paramiko.SSHException, EOFError, OSError) as exc:
            self._check_alive()   # a crash explains a dead connection better than EOF
            raise VMError(f"{self.name}: SSH failed running {cmd!r}: {exc}\n"
                          f"console log: {self.log_path}") from exc
        if check and res.exit_status != 0:
            raise VMError(f"{self.name}: guest command failed ({res.exit_status}): {cmd}\n"
                          f"--- stdout ---\n{res.stdout[-2000:]}\n--- stderr ---\n"
                          f"{res.stderr[-2000:]}")
        return res

    def _reconnect(self) -> None:
        """A new SSH connection to the running guest (the old one is dropped)."""
        assert self.ssh_port is not None
        sshmod.RETRIES["reconnect"] += 1
        if self._client is not None:
            self._client.close()
            self._client = None
        deadline = time.monotonic() + RECONNECT_S * self.timeout_factor
        try:
            self._client = sshmod.connect("127.0.0.1", self.ssh_port, self.image.ssh_user,
                                          Path(self.image.ssh_key), deadline,
                                          alive=self._check_alive)
        except sshmod.ChannelTimeout as exc:
            raise SSHTimeout(f"{self.name}: reconnecting: {exc}", self.console_tail(),
                             self.log_path) from exc

    def _transfer(self, what: str, op: Callable[[paramiko.SSHClient], None]) -> None:
        """A copy in either direction: idempotent, so retried on a fresh connection when
        the transport fails; the last failure is a VMError naming the VM and its log."""
        for attempt in range(SSH_ATTEMPTS):
            try:
                op(self._ssh())
                return
            except (sshmod.SSHError, paramiko.SSHException, EOFError, OSError) as exc:
                self._check_alive()
                if attempt == SSH_ATTEMPTS - 1:
                    raise VMError(f"{self.name}: {what} failed: {exc}\n"
                                  f"console log: {self.log_path}") from exc
                self._reconnect()

    def put(self, local: Path | str, remote: str, timeout: float = RUN_TIMEOUT_S) -> None:
        """Copy a host file into the guest."""
        src = Path(local)
        if not src.is_file():
            raise VMError(f"{self.name}: cannot copy {src} into the guest: not a file")
        self._transfer(f"copying {src} to guest:{remote}",
                       lambda c: sshmod.put(c, src, remote, timeout * self.timeout_factor))

    def get(self, remote: str, local: Path | str, timeout: float = RUN_TIMEOUT_S) -> None:
        """Copy a guest file to the host."""
        self._transfer(f"copying guest:{remote} to {local}",
                       lambda c: sshmod.get(c, remote, Path(local), timeout * self.timeout_factor))

    def ssh_client(self) -> paramiko.SSHClient:
        """The live paramiko client (for interactive use by the CLI)."""
        return self._ssh()

    def dmesg(self, timeout: float = 10.0) -> str:
        """The guest's kernel log, or a note saying why it could not be read."""
        try:
            return self.run("dmesg | tail -n 60", timeout=timeout).stdout
        except VMError as exc:
            return f"(dmesg unavailable: {str(exc).splitlines()[0]})"

    def shutdown(self, timeout: float = 5.0) -> None:
        """Power the guest off and wait (scaled `timeout`) for QEMU to exit; kill on expiry."""
        if not self.is_running:
            self.kill()
            return
        if self._client is not None:
            try:
                # Initramfs guests have nothing to sync; `poweroff -f` is the reboot(2)
                # syscall, after which QEMU exits (-no-reboot).
                # Detached and delayed, so the session closes cleanly before dropbear dies.
                sshmod.run(self._client, "setsid sh -c 'sleep 0.2; poweroff -f' "
                           "</dev/null >/dev/null 2>&1 &", timeout=3.0)
                self._client.close()
                self._client = None
            except Exception:  # noqa: BLE001 - best effort; kill() follows regardless
                pass
        assert self._proc is not None
        try:
            self._proc.wait(timeout=timeout * self.timeout_factor)
        except subprocess.TimeoutExpired:
            pass
        self.kill()

    def kill(self) -> None:
        """Kill QEMU's process group now and release everything. Idempotent."""
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # noqa: BLE001
                pass
            self._client = None
        self._reap()
        _LIVE.discard(self)

    def release(self) -> None:
        """Forget a detached VM without killing it (it keeps running after we exit).

        Nobody drains its console once we exit; QEMU then drops serial output (EPIPE),
        which the guest does not notice.
        """
        if self._client is not None:
            self._client.close()
            self._client = None
        self._proc = None
        _LIVE.discard(self)

    def _reap(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        if self._console is not None:
            self._console.close(2.0)
        if proc.stdout is not None:
            proc.stdout.close()
        self._proc = None


def stream_sinks() -> Mapping[str, sshmod.Sink]:
    """Sinks that copy guest output straight to this process's stdout/stderr."""
    def out(b: bytes) -> None:
        sys.stdout.buffer.write(b)
        sys.stdout.buffer.flush()

    def err(b: bytes) -> None:
        sys.stderr.buffer.write(b)
        sys.stderr.buffer.flush()
    return {"on_stdout": out, "on_stderr": err}
