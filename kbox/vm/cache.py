"""The image cache: content-keyed entries, written atomically, verified by a manifest.

An entry is a directory `<cache>/<kind>/<name>-<key>/` holding its files and a
`manifest.json` (size and sha256 of every file). It is built in a temporary sibling and
renamed into place, so an interrupted build never leaves a half-written entry; an entry
whose files no longer match the manifest (truncated, deleted, edited) is reported as
corrupt and rebuilt by the caller.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from kbox.errors import UserError

MANIFEST = "manifest.json"
LOCK_TIMEOUT = 3600.0  # a cold build downloads and unpacks ~100 MB; others wait for it


def cache_root() -> Path:
    env = os.environ.get("KBOX_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "kbox"


def _hash_file(h: hashlib._Hash, path: Path) -> None:
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    _hash_file(h, path)
    return h.hexdigest()


def tree_files(root: Path) -> list[Path]:
    """Files under `root` that are inputs: no caches, no build outputs, no VCS state."""
    skip_dirs = {"__pycache__", ".git", "_bin", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip_dirs and not d.endswith(".egg-info"))
        for name in sorted(filenames):
            if name.endswith((".pyc", ".o", ".so", ".d")):
                continue
            out.append(Path(dirpath) / name)
    return out


def input_key(files: Iterable[tuple[str, Path]], values: dict[str, object]) -> str:
    """Hash of named files' contents and of JSON-able values: changes when any input does."""
    h = hashlib.sha256()
    h.update(json.dumps(values, sort_keys=True, default=str).encode())
    for label, path in sorted(files, key=lambda lp: lp[0]):
        h.update(b"\0file\0" + label.encode() + b"\0")
        if path.is_symlink():
            h.update(b"link:" + os.readlink(path).encode())
        elif path.exists():
            _hash_file(h, path)
        else:
            h.update(b"<missing>")
    return h.hexdigest()[:16]


def write_manifest(entry: Path, info: dict[str, object]) -> None:
    files = {}
    for path in sorted(entry.rglob("*")):
        if path.is_file() and not path.is_symlink() and path.name != MANIFEST:
            rel = str(path.relative_to(entry))
            if rel.startswith("sysroot/"):
                continue  # the gdb sysroot is large and re-derivable; sizes checked separately
            files[rel] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    data = {"info": info, "files": files, "built": time.time()}
    (entry / MANIFEST).write_text(json.dumps(data, indent=1, sort_keys=True))


def read_manifest(entry: Path) -> dict | None:
    try:
        return json.loads((entry / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def verify(entry: Path, *, checksums: bool = True) -> str | None:
    """None if the entry matches its manifest, else the first problem found."""
    man = read_manifest(entry)
    if man is None:
        return "missing or unreadable manifest"
    for rel, meta in man["files"].items():
        path = entry / rel
        try:
            size = path.stat().st_size
        except OSError:
            return f"{rel} is missing"
        if size != meta["size"]:
            return f"{rel} is {size} bytes, manifest says {meta['size']}"
        if checksums and sha256_file(path) != meta["sha256"]:
            return f"{rel} checksum mismatch"
    return None


# Pruning keeps an older entry (another key of the same arch and kernel) that some kbox used
# this recently: two checkouts, or CI beside a developer's tree, each have their own key and
# would otherwise delete each other's entries, even mid-build.
KEEP_RECENT_S = 12 * 3600.0
USED = ".used"


def mark_used(entry: Path) -> None:
    """Records that `entry` is in use now (its .used file's mtime)."""
    with contextlib.suppress(OSError):
        (entry / USED).touch()


def recently_used(entry: Path, within: float | None = None) -> bool:
    """Whether `entry` was built or marked used within the last `within` seconds (default
    KEEP_RECENT_S)."""
    within = KEEP_RECENT_S if within is None else within
    newest = 0.0
    for p in (entry / USED, entry / MANIFEST, entry):
        with contextlib.suppress(OSError):
            newest = max(newest, p.stat().st_mtime)
    return time.time() - newest < within


def remove_entry(entry: Path) -> None:
    """Delete an entry so that readers never see it half-deleted: rename first, then remove."""
    if not entry.exists():
        return
    trash = entry.with_name(f".trash-{entry.name}-{os.getpid()}-{time.monotonic_ns()}")
    entry.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def building(entry: Path, info: dict[str, object]) -> Iterator[Path]:
    """Yield a temp dir to build `entry` in; on success write its manifest and rename it in."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".tmp-{entry.name}-"))
    try:
        yield tmp
        write_manifest(tmp, info)
        remove_entry(entry)  # a corrupt predecessor with the same key
        tmp.rename(entry)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def file_lock(path: Path, timeout: float, what: str,
              error: type[Exception] = UserError) -> Iterator[None]:
    """Holds the lock file `path` (its directory made if missing); after `timeout` s of
    waiting, raises `error` saying another kbox is `what`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=timeout)
    except Timeout as exc:
        raise error(f"waited {timeout:.0f} s for another kbox {what} ({path}); "
                    "is one stuck?") from exc
    try:
        yield
    finally:
        lock.release()


def locked(name: str, timeout: float = LOCK_TIMEOUT) -> contextlib.AbstractContextManager[None]:
    """Serialize builders (pytest-xdist workers, parallel CLIs) of one cache entry."""
    return file_lock(cache_root() / "locks" / f"{name}.lock", timeout, "image build")


def cleanup_stale_temps(parent: Path, max_age: float = 6 * 3600) -> None:
    """Remove temp/trash dirs left by builds that were killed (older than `max_age`)."""
    if not parent.is_dir():
        return
    now = time.time()
    for p in parent.iterdir():
        if p.name.startswith((".tmp-", ".trash-")):
            with contextlib.suppress(OSError):
                if now - p.stat().st_mtime > max_age:
                    shutil.rmtree(p, ignore_errors=True)
