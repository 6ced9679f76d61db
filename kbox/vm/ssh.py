"""SSH to a guest over QEMU's forwarded loopback port (paramiko).

The guest runs dropbear. SFTP needs an sftp-server binary in the guest, which a minimal
image may not have, so put/get fall back to piping the file through `cat` on an exec
channel. Every call is bounded: connect attempts, command runs and transfers all take a
timeout and raise `ChannelTimeout` when it passes; the VM object adds the console tail.
"""
from __future__ import annotations

import collections
import logging
import os
import shlex
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    import paramiko
else:
    paramiko: Any = None  # replaced below by the lazy module


class _LazyParamiko:
    """paramiko, imported on first use. Its import is 0.05-0.15 s of a ~1 s warm start;
    `prefetch()` runs it in a thread while QEMU loads the saved state (waiting on QEMU
    releases the GIL), and everything here reaches it as `paramiko.X` either way."""

    def __getattr__(self, name: str) -> Any:
        try:
            import paramiko as real
        except ImportError as exc:
            from kbox.errors import UserError
            raise UserError(f"kbox vm needs paramiko ({exc}): run scripts/setup-host", 3) from exc
        return getattr(real, name)


if not TYPE_CHECKING:
    paramiko = _LazyParamiko()


def prefetch() -> None:
    """Import paramiko in the background (a daemon thread); a later use waits for it
    through the import system's module lock, so there is nothing to join."""
    import importlib
    import threading
    threading.Thread(target=lambda: importlib.import_module("paramiko"), daemon=True,
                     name="kbox-import-paramiko").start()


# paramiko logs transport errors (e.g. "Socket exception: Connection reset by peer" when a
# guest powers off under an open session) through logging's last-resort stderr handler;
# the VM object reports what matters itself, so keep that noise out of command output.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


class SSHError(Exception):
    """Transport-level failure talking to the guest."""


class SessionRefused(SSHError):
    """The guest did not start the command (no session channel, or its exec request was
    refused, after bounded retries): nothing ran, so the caller may reconnect and ask again."""


# How often each retry path fired in this process (reported by the VM test plugin).
RETRIES: collections.Counter[str] = collections.Counter()


class ChannelTimeout(SSHError):
    """A command or transfer outlived its timeout (the remote side was told to stop)."""

    def __init__(self, message: str, stdout: bytes = b"", stderr: bytes = b"") -> None:
        super().__init__(message)
        self.stdout = stdout
        self.stderr = stderr


@dataclass
class RunResult:
    command: str
    exit_status: int
    stdout: str
    stderr: str
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


Sink = Callable[[bytes], None]


def connect(host: str, port: int, user: str, key_path: Path, deadline: float,
            alive: Callable[[], None] | None = None,
            attempt_timeout: float = 3.0) -> paramiko.SSHClient:
    """Connect, retrying until `deadline` (time.monotonic()); `alive()` raises if the VM died.

    Retries are needed because QEMU accepts on the forwarded port before the guest's
    dropbear listens: the connection is then reset or banner exchange times out.
    """
    key = _load_key(key_path)
    last: Exception | None = None
    while True:
        if alive is not None:
            alive()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ChannelTimeout(f"SSH to {host}:{port} not ready: {last}")
        client = paramiko.SSHClient()
        # Every boot of a cached image may present a host key we have never seen; the
        # port is loopback-only and ours, so there is nothing to verify it against.
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        t = min(attempt_timeout, max(remaining, 0.5))
        sock = None
        try:
            sock = _socket(host, port, t)
            client.connect(host, port=port, username=user, pkey=key, timeout=t,
                           banner_timeout=t, auth_timeout=t, allow_agent=False,
                           look_for_keys=False, sock=sock)
            transport = client.get_transport()
            if transport is not None:
                transport.set_keepalive(5)
            return client
        except (OSError, paramiko.SSHException, EOFError) as exc:
            last = exc
            client.close()
            if sock is not None:
                sock.close()
            time.sleep(0.1)


def _socket(host: str, port: int, timeout: float) -> socket.socket:
    """The TCP connection paramiko is given, with Nagle off: the handshake and each command
    are small request/answer writes, which Nagle's algorithm can hold back until the peer's
    delayed ACK."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _load_key(path: Path) -> paramiko.PKey:
    errors = []
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key_file(str(path))
        except (paramiko.SSHException, ValueError) as exc:
            errors.append(f"{cls.__name__}: {exc}")
    raise SSHError(f"cannot load SSH key {path}: {'; '.join(errors)}")


def run(client: paramiko.SSHClient, command: str, timeout: float,
        stdin: bytes | BinaryIO | None = None, on_stdout: Sink | None = None,
        on_stderr: Sink | None = None, pty: bool = False) -> RunResult:
    """Run `command` in the guest shell; wait at most `timeout` seconds for it to finish."""
    transport = client.get_transport()
    if transport is None or not transport.is_active():
        raise SessionRefused("SSH transport is closed")
    start = time.monotonic()
    try:
        chan = _start(transport, command, min(timeout, 10.0), pty)
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise SessionRefused(f"cannot start a command in the guest: {exc}") from exc
    out, err = bytearray(), bytearray()
    try:
        if stdin is not None:
            _feed(chan, stdin, start + timeout)
        chan.shutdown_write()
        deadline = start + timeout
        while True:
            got = False
            while chan.recv_ready():
                data = chan.recv(65536)
                out += data
                got = True
                if on_stdout:
                    on_stdout(data)
            while chan.recv_stderr_ready():
                data = chan.recv_stderr(65536)
                err += data
                got = True
                if on_stderr:
                    on_stderr(data)
            if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                break
            if time.monotonic() > deadline:
                raise ChannelTimeout(f"guest command timed out after {timeout:g} s: {command}",
                                     bytes(out), bytes(err))
            if not got:
                # Blocks until data, EOF or 0.05 s: no busy loop, prompt exit detection.
                chan.status_event.wait(0.05)
        status = chan.recv_exit_status()
        return RunResult(command, status, out.decode("utf-8", "replace"),
                         err.decode("utf-8", "replace"), time.monotonic() - start)
    finally:
        chan.close()


def _open_session(transport: paramiko.Transport, timeout: float) -> paramiko.Channel:
    """A new session channel.  dropbear refuses one now and then while it is still tearing
    down closed ones (ChannelException), and on a busy host the open can go unanswered
    (paramiko: "Unable to open channel.", "Timeout opening channel."): retried briefly while
    the connection lives."""
    for attempt in range(5):
        try:
            return transport.open_session(timeout=timeout)
        except (paramiko.SSHException, EOFError):
            if attempt == 4 or not transport.is_active():
                raise
            RETRIES["channel open"] += 1
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def _start(transport: paramiko.Transport, command: str, timeout: float,
           pty: bool) -> paramiko.Channel:
    """A session channel running `command`.  dropbear sometimes closes a fresh channel
    instead of answering its exec request (seen right after a refused SFTP subsystem on the
    same connection); the command has not started then, so it is safe to ask again."""
    for attempt in range(3):
        chan = _open_session(transport, timeout)
        try:
            if pty:
                chan.get_pty()
            chan.exec_command(command)
            return chan
        except paramiko.SSHException:
            chan.close()
            if attempt == 2 or not transport.is_active():
                raise
            RETRIES["exec request"] += 1
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def _sftp(client: paramiko.SSHClient) -> paramiko.SFTPClient | None:
    """SFTP if the guest offers it.  The answer is remembered per connection: a refused
    subsystem request costs a channel, and dropbear limits channels per connection."""
    if getattr(client, "_kbox_no_sftp", False):
        return None
    try:
        return client.open_sftp()
    except (paramiko.SSHException, EOFError, OSError):
        client._kbox_no_sftp = True  # type: ignore[attr-defined]
        return None


def _feed(chan: paramiko.Channel, data: bytes | BinaryIO, deadline: float) -> None:
    chan.settimeout(max(deadline - time.monotonic(), 0.1))
    try:
        if isinstance(data, bytes):
            chan.sendall(data)
            return
        while chunk := data.read(1 << 16):
            chan.sendall(chunk)
    except socket.timeout as exc:
        raise ChannelTimeout("timed out sending data to the guest") from exc
    finally:
        chan.settimeout(None)


def put(client: paramiko.SSHClient, local: Path, remote: str, timeout: float) -> None:
    """Copy a host file into the guest (SFTP when the guest has it, else `cat >`)."""
    mode = local.stat().st_mode & 0o777
    sftp = _sftp(client)
    if sftp is not None:
        try:
            sftp.get_channel().settimeout(timeout)
            sftp.put(str(local), remote)
            sftp.chmod(remote, mode)
            return
        finally:
            sftp.close()
    q = shlex.quote(remote)
    with open(local, "rb") as fh:
        res = run(client, f"cat > {q} && chmod {mode:o} {q}", timeout, stdin=fh)
    if res.exit_status != 0:
        raise SSHError(f"copying {local} to guest:{remote} failed: {res.stderr.strip()}")


def get(client: paramiko.SSHClient, remote: str, local: Path, timeout: float) -> None:
    """Copy a guest file to the host (SFTP when the guest has it, else `cat`)."""
    sftp = _sftp(client)
    if sftp is not None:
        try:
            sftp.get_channel().settimeout(timeout)
            sftp.get(remote, str(local))
            return
        finally:
            sftp.close()
    tmp = local.with_name(local.name + ".part")
    with open(tmp, "wb") as fh:
        res = run(client, f"cat {shlex.quote(remote)}", timeout, on_stdout=fh.write)
    if res.exit_status != 0:
        tmp.unlink(missing_ok=True)
        raise SSHError(f"copying guest:{remote} to {local} failed: {res.stderr.strip()}")
    tmp.replace(local)


def interactive_shell(client: paramiko.SSHClient, command: str | None = None) -> int:
    """Attach the local terminal to a guest shell until it exits; returns its status."""
    import select
    import termios
    import tty

    transport = client.get_transport()
    if transport is None:
        raise SSHError("SSH transport is closed")
    chan = transport.open_session(timeout=10.0)
    try:
        cols, rows = os.get_terminal_size(sys.stdout.fileno())
    except OSError:
        cols, rows = 80, 24
    chan.get_pty(term=os.environ.get("TERM", "vt100"), width=cols, height=rows)
    if command:
        chan.exec_command(command)
    else:
        chan.invoke_shell()
    stdin_fd = sys.stdin.fileno()
    is_tty = os.isatty(stdin_fd)
    saved = termios.tcgetattr(stdin_fd) if is_tty else None
    try:
        if is_tty:
            tty.setraw(stdin_fd)
        stdin_open = True
        while True:
            fds = [chan] + ([stdin_fd] if stdin_open else [])
            r, _, _ = select.select(fds, [], [], 1.0)
            if chan in r:
                data = chan.recv(65536)
                if not data:
                    break
                os.write(sys.stdout.fileno(), data)
            if stdin_fd in r:
                data = os.read(stdin_fd, 4096)
                if not data:
                    stdin_open = False
                    chan.shutdown_write()
                else:
                    chan.sendall(data)
            if chan.exit_status_ready() and not chan.recv_ready():
                break
        return chan.recv_exit_status()
    finally:
        if saved is not None:
            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
        chan.close()
