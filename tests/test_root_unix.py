"""AF_UNIX path sockets inside the root view, with a real program: the Debian tree's python3
(kbox/root_debian.py; the cached tree is copied, never written) runs a unix-socket server and
client inside the root under each tier.

What must hold: a bind makes its socket file inside the root copy (and nothing at the guest
path on the host); getsockname, getpeername and accept report guest paths; a host process
listening on a socket placed inside the root copy is reached by its guest path; a host
socket outside the root is not reached by its host path.  The names the kernel reports to
accept, recvfrom and recvmsg are the kernel's own in the seccomp tier (docs/tiers.md: those
calls run in the kernel there); a reply sent to such a name still reaches its socket.
"""
from __future__ import annotations

import json
import os
import platform
import re
import socket
import stat
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kbox import root_debian

sys.path.insert(0, os.path.dirname(__file__))
from debian_programs import ENV

REPO = Path(__file__).resolve().parent.parent
TIERS = ["seccomp", "trap", "rewrite"]

# Run by the root's python3: argv[1] the directory for its sockets, argv[2] the host socket
# placed inside the root (a guest path), argv[3] a host socket outside the root (its host path).
GUEST = r"""
import array, errno, json, os, socket, stat, sys
d, in_root, outside = sys.argv[1:4]
os.makedirs(d)
out = {}
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(d + "/srv.sock")
srv.listen(4)
out["srv_name"] = srv.getsockname()
out["srv_is_socket"] = stat.S_ISSOCK(os.lstat(d + "/srv.sock").st_mode)
try:
    socket.socket(socket.AF_UNIX).bind(d + "/srv.sock")
except OSError as e:
    out["bind_again"] = errno.errorcode[e.errno]
try:
    socket.socket(socket.AF_UNIX).bind(d + "/no-such-dir/x.sock")
except OSError as e:
    out["bind_missing_parent"] = errno.errorcode[e.errno]
os.symlink(d + "/srv.sock", d + "/link.sock")
pid = os.fork()
if pid == 0:
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.bind(d + "/cli.sock")
    c.connect(d + "/srv.sock")
    c.sendall(json.dumps({"cli_name": c.getsockname(), "cli_peer": c.getpeername()}).encode())
    c.close()
    via = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    via.connect(d + "/link.sock")          # connect follows a final symlink
    via.sendall(b"through the link")
    via.close()
    os._exit(0)
conn, addr = srv.accept()
out["accept_addr"] = addr
out["conn_name"] = conn.getsockname()
out["conn_peer"] = conn.getpeername()
data = b""
while chunk := conn.recv(4096):
    data += chunk
out.update(json.loads(data))
conn2, _ = srv.accept()
out["via_link"] = conn2.recv(100).decode()
os.waitpid(pid, 0)

s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(d + "/dg.sock")
c = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
c.bind(d + "/dgc.sock")
c.sendto(b"ping", d + "/dg.sock")
msg, src = s.recvfrom(100)
out["recvfrom_src"] = src
s.sendto(b"pong", src)                     # a reply to what recvfrom reported
out["reply"] = c.recv(100).decode()
c.sendto(b"ping2", d + "/dg.sock")
_, _, _, src = s.recvmsg(100)
out["recvmsg_src"] = src
with open(d + "/passed.txt", "w") as f:
    f.write("passed by descriptor")
with open(d + "/passed.txt") as f:
    c.sendmsg([b"fd"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [f.fileno()]))], 0,
              d + "/dg.sock")
_, fds, _, _ = socket.recv_fds(s, 10, 1)
with open(fds[0]) as f:
    out["scm_rights"] = f.read()

os.chdir(d)
r = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
r.bind("rel.sock")
out["relative_name"] = r.getsockname()
out["relative_is_socket"] = stat.S_ISSOCK(os.lstat(d + "/rel.sock").st_mode)
os.chdir("/")

h = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
h.connect(in_root)
out["host_in_root"] = h.recv(100).decode()
out["host_in_root_peer"] = h.getpeername()
try:
    socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).connect(outside)
    out["outside"] = "connected"
except OSError as e:
    out["outside"] = errno.errorcode[e.errno]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def ROOT(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A writable copy of this host's cached Debian tree (cp -a)."""
    arch = platform.machine()
    if arch not in ("x86_64", "aarch64"):
        pytest.skip(f"no Debian tree for a {arch} host")
    tree = root_debian.ensure_root(arch, progress=False)
    root = tmp_path_factory.mktemp("unix") / "root"
    root_debian.copy_tree(tree.path, root)
    return root


class HostListener:
    """A host process's socket: accepts connections on a thread and greets each."""

    def __init__(self, path: Path, greeting: bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(4)
        self.sock.settimeout(60)
        self.greeting = greeting
        self.accepted = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            with conn:
                conn.sendall(self.greeting)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def LISTENERS(ROOT: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HostListener, HostListener, Path]]:
    """A host socket inside the root copy (/run/kbox-host.sock in the guest) and one outside."""
    outside_dir = tmp_path_factory.mktemp("outside")
    inside = HostListener(ROOT / "run" / "kbox-host.sock", b"hello from the host")
    outside = HostListener(outside_dir / "outside.sock", b"outside")
    yield inside, outside, outside_dir / "outside.sock"
    inside.close()
    outside.close()


def run_guest(root: Path, tier: str, guest_dir: str, outside: Path) -> dict[str, object]:
    argv = [sys.executable, "-m", "kbox", "run", f"--syscall-mode={tier}", "--root", str(root), "--",
            "/usr/bin/python3", "-c", GUEST, guest_dir, "/run/kbox-host.sock", str(outside)]
    got = subprocess.run(argv, capture_output=True, text=True, timeout=180, env=ENV, cwd=REPO, check=False)
    assert got.returncode == 0, f"python3 under {tier}: exit {got.returncode}\n{got.stdout}\n{got.stderr}"
    return json.loads(got.stdout)


@pytest.mark.parametrize("tier", TIERS)
def test_python_unix_sockets_stay_inside_the_root(ROOT: Path, LISTENERS: tuple[HostListener, HostListener, Path],
                                                  tier: str) -> None:
    inside, outside, outside_path = LISTENERS
    d = f"/tmp/kbox-unix-{tier}-{uuid.uuid4().hex[:8]}"
    before = outside.accepted
    out = run_guest(ROOT, tier, d, outside_path)

    # The socket files are in the root copy, none at the guest path on the host.
    assert stat.S_ISSOCK((ROOT / d.lstrip("/") / "srv.sock").lstat().st_mode)
    assert stat.S_ISSOCK((ROOT / d.lstrip("/") / "dg.sock").lstat().st_mode)
    assert not os.path.lexists(d)
    assert out["srv_is_socket"] and out["relative_is_socket"]

    # Names reported as guest paths; the kernel's errors.
    assert out["srv_name"] == f"{d}/srv.sock"
    assert (out["cli_name"], out["cli_peer"]) == (f"{d}/cli.sock", f"{d}/srv.sock")
    assert (out["conn_name"], out["conn_peer"]) == (f"{d}/srv.sock", f"{d}/cli.sock")
    assert (out["bind_again"], out["bind_missing_parent"]) == ("EADDRINUSE", "ENOENT")
    assert out["via_link"] == "through the link"
    # A name bound by a relative path is reported as its absolute guest path (docs/tiers.md).
    assert out["relative_name"] == f"{d}/rel.sock"

    # accept, recvfrom and recvmsg: guest paths in the in-process tiers; in seccomp the
    # kernel's name for a socket the supervisor bound, which still works as a destination.
    reported = [out["accept_addr"], out["recvfrom_src"], out["recvmsg_src"]]
    if tier == "seccomp":
        for name, want in zip(reported, ["cli.sock", "dgc.sock", "dgc.sock"]):
            assert re.fullmatch(rf"/proc/\d+/fd/\d+/{re.escape(want)}", str(name)), reported
    else:
        assert reported == [f"{d}/cli.sock", f"{d}/dgc.sock", f"{d}/dgc.sock"]
    assert out["reply"] == "pong"
    assert out["scm_rights"] == "passed by descriptor"

    # A host socket inside the root is reached by its guest path; one outside is not
    # reached by its host path.
    assert (out["host_in_root"], out["host_in_root_peer"]) == ("hello from the host", "/run/kbox-host.sock")
    assert out["outside"] == "ENOENT"
    assert outside.accepted == before
    assert inside.accepted >= 1


# Calls that wait for a peer: a connect to a full backlog and datagrams to a full queue.
# Under seccomp the supervisor makes those calls for the program, so they must not stop it
# (the program's accept and recv below are notified too); and a helper still waiting when
# the program exits must not keep the run alive.
WAITING = r"""
import os, socket, sys, threading, time
d = sys.argv[1]
os.makedirs(d)
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(d + "/full.sock")
srv.listen(0)
done = []
def connect(i):
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.connect(d + "/full.sock")
    c.sendall(b"%d" % i)
    done.append(i)
    c.close()
threads = [threading.Thread(target=connect, args=(i,)) for i in range(4)]
for t in threads:
    t.start()
time.sleep(0.5)
got = []
for _ in threads:
    conn, _ = srv.accept()
    got.append(int(conn.recv(10)))
    conn.close()
for t in threads:
    t.join()
print("stream", sorted(got), sorted(done))

rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
rx.bind(d + "/q.sock")
def send_all():
    tx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    for i in range(100):                   # far beyond the queue's length (max_dgram_qlen)
        tx.sendto(b"%d" % i, d + "/q.sock")
t = threading.Thread(target=send_all)
t.start()
time.sleep(0.5)
print("dgram", [int(rx.recv(10)) for _ in range(100)] == list(range(100)))
t.join()

# Left waiting: a connect to a backlog nobody accepts from, then the program exits.
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
c.connect(d + "/full.sock")               # the backlog's one place
threading.Thread(target=lambda: socket.socket(socket.AF_UNIX).connect(d + "/full.sock"), daemon=True).start()
time.sleep(0.5)
print("exiting", flush=True)
os._exit(0)
"""


@pytest.mark.parametrize("tier", TIERS)
def test_calls_that_wait_for_a_peer_do_not_stop_the_run(ROOT: Path, tier: str) -> None:
    d = f"/tmp/kbox-wait-{tier}-{uuid.uuid4().hex[:8]}"
    argv = [sys.executable, "-m", "kbox", "run", f"--syscall-mode={tier}", "--root", str(ROOT), "--",
            "/usr/bin/python3", "-c", WAITING, d]
    got = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=ENV, cwd=REPO, check=False)
    assert (got.returncode, got.stdout) == (0, "stream [0, 1, 2, 3] [0, 1, 2, 3]\ndgram True\nexiting\n"), got.stderr
