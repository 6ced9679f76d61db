"""What each route of the root view's escape corpus (tests/guest/rootescape.c) must print, for
the host tests (tests/test_root_escapes.py) and the VM tests (vmtests/test_root_view.py).

A line is `case: result`; the result is "inside (marker=root)", an errno name, or a
"HOST ..." text naming what of the host was reached."""
from __future__ import annotations

ROOT_MARK = "kbox-rootescape-marker root"
HOST_MARK = "kbox-rootescape-marker host"
INSIDE = "inside (marker=root)"


def races_held(iterations: int) -> dict[str, str]:
    """The racing cases' lines when no attempt reached the host."""
    return {"rename-race": f"host reached 0 times in {iterations} walks, inside reached: yes",
            "toctou-swap": f"host reached 0 times in {iterations} opens and {iterations} stats, "
                           "inside reached: yes"}


# What each route must reach in a tier that contains it.  Routes through the host's /proc,
# /dev and /sys that the view does not translate (`..` out of them, /proc/self/task/T/root,
# /proc/./self, /dev/fd/N, a symlink in /dev/shm) are refused (EACCES) rather than served.
EXPECTED: dict[str, str] = {
    "dotdot-chain-from-root": INSIDE,
    "dotdot-chain-absolute": INSIDE,
    "dotdot-chain-from-subdir": INSIDE,
    "dotdot-chain-openat-subdir": INSIDE,
    "symlink-loop-absolute": "ELOOP",
    "symlink-loop-relative": "ELOOP",
    "symlink-to-slash": INSIDE,
    "symlink-to-slash-then-dotdot": INSIDE,
    "symlink-to-dotdot-dotdot-dotdot": INSIDE,
    "symlink-to-dotdot-chain": INSIDE,
    "proc-self-root": INSIDE,
    "proc-self-root-dotdot": INSIDE,
    "proc-thread-self-root": INSIDE,
    "proc-pid-root": INSIDE,
    "proc-self-task-root": "EACCES",
    "proc-dot-self-root": "EACCES",
    "proc-double-slash-self-root": "EACCES",
    "proc-self-cwd-dotdot": INSIDE,
    "proc-self-cwd-dotdot-from-subdir": INSIDE,
    "proc-dotdot": "EACCES",
    "dev-dotdot": "EACCES",
    "sys-dotdot": "EACCES",
    "dev-shm-symlink-to-marker": "EACCES",
    "dev-shm-symlink-to-marker-dir": "EACCES",
    "proc-self-fd-host-dir": "EACCES",
    "proc-self-fd-host-dir-dotdot": "EACCES",
    "dev-fd-host-dir": "EACCES",
    "openat-host-dir": "EACCES",
    "fchdir-host-dir": "EACCES",
    "chdir-proc-self-fd-host-dir": "EACCES",
    "openat2-no-resolve-flags": INSIDE,
    "openat2-dotdot-chain-no-resolve-flags": INSIDE,
    "openat2-resolve-no-symlinks": INSIDE,
    "openat2-resolve-beneath-host-dir": "EACCES",
    "openat2-resolve-in-root-host-dir": "EACCES",
    "openat2-resolve-in-root-view-root": INSIDE,
    "openat2-resolve-beneath-view-root": "EXDEV",
    "openat2-resolve-beneath-absolute": "EXDEV",
    "hardlink-marker-path": INSIDE,
    "hardlink-from-host-dir-fd": "EACCES",
    "hardlink-through-proc-self-fd": "EACCES",
    "unix-bind-absolute": "bound, the socket file is in the root: yes",
    "unix-connect-own-socket": "connected",
    "unix-connect-host-socket": "ENOENT",
    "unix-sendto-host-socket": "ENOENT",
    "unix-sendmsg-host-socket": "ENOENT",
    "unix-sendmmsg-host-socket": "ENOENT",
}


def expected(mode: str, iterations: int) -> dict[str, str]:
    """Every case's line under `mode` (auto: what trap and rewrite print)."""
    if mode == "seccomp":
        return {**NOW_EXPECTED, **SECCOMP_EXPECTED, **races_held(iterations)}
    return {**NOW_EXPECTED, **races_held(iterations)}


# The supervisor folds `//` in /proc paths before it names the caller for "self" (it walks
# /proc as itself, so it must read the path as the kernel would): /proc//self/root is the
# caller's root there, the view's.
SECCOMP_EXPECTED = {"proc-double-slash-self-root": INSIDE}


# Every tier serves the program's own openat2 (its RESOLVE_BENEATH/IN_ROOT from a directory
# inside the view are the kernel's; a directory outside the view is refused).
NOW_EXPECTED = EXPECTED

# The AF_UNIX cases: a bind of an absolute path makes its socket file inside the root, a
# connect or a datagram sent to the host socket's path finds nothing there (every tier translates socket paths:
# docs/tiers.md).  The host tests also check nothing was bound beside the root.
AF_UNIX_CASES = ("unix-bind-absolute", "unix-connect-own-socket", "unix-connect-host-socket",
                 "unix-sendto-host-socket", "unix-sendmsg-host-socket", "unix-sendmmsg-host-socket")

# Routes a tier is known to leave open, as {(tier, case): reason}: none today.
KNOWN_ESCAPES: dict[tuple[str, str], str] = {}
