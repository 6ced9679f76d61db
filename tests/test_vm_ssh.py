"""kbox.vm.ssh against a scripted paramiko transport: the retries around dropbear's quirks."""
from __future__ import annotations

import paramiko
import pytest

from kbox.vm import ssh


class FakeChannel:
    def __init__(self, fail_exec: bool) -> None:
        self.fail_exec = fail_exec
        self.commands: list[str] = []
        self.closed = False

    def get_pty(self) -> None:
        pass

    def exec_command(self, command: str) -> None:
        self.commands.append(command)
        if self.fail_exec:
            raise paramiko.SSHException("Channel closed.")

    def close(self) -> None:
        self.closed = True


class FakeTransport:
    def __init__(self, failures: int, active: bool = True) -> None:
        self.failures = failures
        self.active = active
        self.channels: list[FakeChannel] = []

    def open_session(self, timeout: float) -> FakeChannel:
        chan = FakeChannel(fail_exec=len(self.channels) < self.failures)
        self.channels.append(chan)
        return chan

    def is_active(self) -> bool:
        return self.active


def test_an_exec_request_closed_by_the_server_is_asked_again_on_a_new_channel() -> None:
    t = FakeTransport(failures=2)
    chan = ssh._start(t, "true", 1.0, pty=False)  # type: ignore[arg-type]
    assert chan is t.channels[2] and chan.commands == ["true"] and not chan.closed
    assert [c.closed for c in t.channels[:2]] == [True, True]


def test_a_server_that_keeps_closing_channels_fails_after_three_tries() -> None:
    t = FakeTransport(failures=10)
    with pytest.raises(paramiko.SSHException, match="Channel closed"):
        ssh._start(t, "true", 1.0, pty=False)  # type: ignore[arg-type]
    assert len(t.channels) == 3 and all(c.closed for c in t.channels)


def test_no_retry_once_the_connection_itself_is_gone() -> None:
    t = FakeTransport(failures=1, active=False)
    with pytest.raises(paramiko.SSHException):
        ssh._start(t, "true", 1.0, pty=False)  # type: ignore[arg-type]
    assert len(t.channels) == 1


class FlakyOpenTransport(FakeTransport):
    """open_session fails the way paramiko reports an unanswered or refused open."""

    def __init__(self, errors: list[Exception]) -> None:
        super().__init__(failures=0)
        self.errors = errors

    def open_session(self, timeout: float) -> FakeChannel:
        if self.errors:
            raise self.errors.pop(0)
        return super().open_session(timeout)


def test_an_unanswered_or_refused_channel_open_is_retried() -> None:
    before = ssh.RETRIES["channel open"]
    t = FlakyOpenTransport([paramiko.SSHException("Unable to open channel."),
                            paramiko.SSHException("Timeout opening channel."),
                            paramiko.ChannelException(1, "Administratively prohibited")])
    chan = ssh._start(t, "true", 1.0, pty=False)  # type: ignore[arg-type]
    assert chan.commands == ["true"] and ssh.RETRIES["channel open"] == before + 3


class FakeClient:
    def __init__(self, transport: FakeTransport) -> None:
        self.transport = transport

    def get_transport(self) -> FakeTransport:
        return self.transport


def test_a_command_that_never_started_is_reported_as_refused_not_as_a_library_error() -> None:
    t = FlakyOpenTransport([paramiko.SSHException("Unable to open channel.")] * 5)
    with pytest.raises(ssh.SessionRefused, match="Unable to open channel"):
        ssh.run(FakeClient(t), "true", 1.0)  # type: ignore[arg-type]
    with pytest.raises(ssh.SessionRefused, match="closed"):
        ssh.run(FakeClient(FakeTransport(0, active=False)), "true", 1.0)  # type: ignore[arg-type]
