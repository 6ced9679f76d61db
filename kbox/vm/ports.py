"""Loopback ports for QEMU's SSH forwarding, chosen per pytest-xdist worker.

Each worker starts from its own block of ports (gw0 -> 20200.., gw1 -> 20300..), so
parallel workers rarely meet; a port that is busy anyway (another run, another user) is
skipped by a bind probe, and if QEMU still loses the race ("Could not set up host
forwarding rule") the VM asks for the next candidate, as syzkaller's vm/qemu does.
"""
from __future__ import annotations

import os
import random
import re
import socket
from collections.abc import Iterator

BASE_PORT = 20200
BLOCK = 100          # ports per worker block
MAX_WORKERS = 200    # keeps every candidate below 40200, clear of the ephemeral range

HOSTFWD_FAILURE = re.compile(r"Could not set up host forwarding rule|hostfwd.*(in use|failed)",
                             re.IGNORECASE)


def worker_index(worker_id: str | None = None) -> int:
    """xdist's "gw3" -> 3; the controller ("master") or a plain run -> 0."""
    wid = worker_id if worker_id is not None else os.environ.get("PYTEST_XDIST_WORKER", "")
    m = re.fullmatch(r"gw(\d+)", wid or "")
    return int(m.group(1)) % MAX_WORKERS if m else 0


def port_is_free(port: int) -> bool:
    """True if 127.0.0.1:port can be bound right now (QEMU binds the same address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # No SO_REUSEADDR: we want to see a TIME_WAIT or listening socket as busy.
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def candidate_ports(worker_id: str | None = None) -> Iterator[int]:
    """Free ports for this worker: its block in a shuffled order, then other blocks.

    The shuffle within a block keeps two VMs of one worker (or two runs started at the
    same second) from converging on the same first port.
    """
    start = BASE_PORT + worker_index(worker_id) * BLOCK
    own = list(range(start, start + BLOCK))
    random.shuffle(own)
    own_set = set(own)
    others = [p for p in range(BASE_PORT, BASE_PORT + BLOCK * MAX_WORKERS) if p not in own_set]
    random.shuffle(others)
    for port in own + others:
        if port_is_free(port):
            yield port


def is_hostfwd_collision(qemu_stderr: str) -> bool:
    return bool(HOSTFWD_FAILURE.search(qemu_stderr))
