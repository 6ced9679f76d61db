"""kbox run --root in a Debian tree built from Debian packages (kbox/root_debian.py).

The host's architecture's tree is built once per machine (cached in ~/.cache/kbox/roots,
like the VM images; the first build costs ~25 s, most of it apt-cache resolving) and
copied for each test process, so programs may write in it. Real programs run inside it
under trap, rewrite and auto, and what they print equals what a native chroot(8) of the
same tree prints for the same command, with the same environment.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kbox import root_debian

sys.path.insert(0, os.path.dirname(__file__))
from debian_programs import ENV, KNOWN_BUGS, PROGRAMS, masked

REPO = Path(__file__).resolve().parent.parent
TIERS = ["trap", "rewrite", "auto", "seccomp"]
@pytest.fixture(scope="session")
def ROOT(DEBIAN_TREE, tmp_path_factory) -> Path:
    """A writable copy of the tree for this test process (cp -a: ~1 s)."""
    root = tmp_path_factory.mktemp("debian") / "root"
    root_debian.copy_tree(DEBIAN_TREE.path, root)
    return root


def chroot(root: Path, cmd: list[str]) -> subprocess.CompletedProcess[str]:
    if os.geteuid() != 0:
        pytest.skip("the native comparison runs chroot(8), which needs root")
    return subprocess.run(["chroot", str(root), *cmd], capture_output=True, text=True, check=False,
                          timeout=120, env=ENV, cwd="/")


def kbox(root: Path, cmd: list[str], tier: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "kbox", "run", f"--syscall-mode={tier}", "--root", str(root),
            "--", *cmd]
    # From the checkout, where `-m kbox` is found without the caller's environment; the
    # program starts in the root's / (--workdir's default) either way.
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=ENV, cwd=REPO, check=False)


_native: dict[str, subprocess.CompletedProcess[str]] = {}


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_debian_program_inside_the_root_matches_native_chroot(ROOT, name, tier, request):
    if name in KNOWN_BUGS:
        request.applymarker(pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[name]))
    if name not in _native:
        _native[name] = chroot(ROOT, PROGRAMS[name])
        assert _native[name].returncode == 0, f"native chroot failed: {_native[name].stderr}"
        assert _native[name].stdout.strip(), "native chroot printed nothing"
    native = _native[name]
    got = kbox(ROOT, PROGRAMS[name], tier)
    assert (got.returncode, masked(name, got.stdout), got.stderr) == \
        (native.returncode, masked(name, native.stdout), native.stderr)


def test_python3_loads_the_trees_own_loader_and_libraries(ROOT):
    got = kbox(ROOT, ["python3", "-c", "print(open('/proc/self/maps').read())"], "rewrite")
    assert got.returncode == 0, got.stderr
    mapped = {ln.split()[-1] for ln in got.stdout.splitlines() if ln.count("/") > 1}
    libs = [p for p in mapped if re.search(r"/(ld-linux|libc\.so|libpython3|libexpat)", p)]
    assert len(libs) >= 3 and all(p.startswith(str(ROOT) + "/usr/") for p in libs), mapped


# ---- the build: manifest, checksums, cache --------------------------------------------------

def test_manifest_names_each_package_with_the_checksum_of_its_cached_deb(DEBIAN_TREE):
    from kbox.vm import cache

    rows = [ln.split() for ln in DEBIAN_TREE.manifest.splitlines()]
    names = {r[0].split("=")[0] for r in rows}
    assert set(root_debian.PACKAGES) | {"libc6", "python3.11-minimal"} <= names
    assert not names & set(root_debian.EXCLUDE)
    debs = cache.cache_root() / "debs"
    for spec, arch, sha in rows:
        name, version = spec.split("=", 1)
        deb = next(debs.glob(f"*/{name}_{version.replace(':', '%3a')}_{arch}.deb"))
        assert hashlib.sha256(deb.read_bytes()).hexdigest() == sha, deb


def test_tree_is_merged_usr_with_what_a_chroot_needs_and_matches_its_checksum(DEBIAN_TREE):
    t = DEBIAN_TREE.path
    assert {n: os.readlink(t / n) for n in ("bin", "sbin", "lib")} == \
        {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib"}
    assert os.readlink(t / "usr/bin/sh") == "dash" and (t / "usr/bin/python3").exists()
    assert (t / "etc/passwd").read_text().startswith("root:x:0:0:")
    assert (t / "tmp").stat().st_mode & 0o7777 == 0o1777
    assert not (t / "etc/ld.so.cache").exists()   # Debian's ld.so searches the multiarch dirs
    info = json.loads((DEBIAN_TREE.entry / "info.json").read_text())
    assert root_debian.tree_checksum(t) == (info["tree_sha256"], info["size"])


def test_an_edited_cached_tree_is_detected(DEBIAN_TREE, tmp_path):
    entry = tmp_path / "entry"
    root_debian.copy_tree(DEBIAN_TREE.entry, entry)
    assert root_debian._problem(entry) is None
    (entry / "root/etc/hostname").write_text("edited\n")
    assert "tree checksum" in (root_debian._problem(entry) or "")
    (entry / "root/etc/hostname").write_text(root_debian.HOSTNAME)
    os.chmod(entry / "root/usr/bin/dash", 0o4755)    # a mode alone counts too
    assert "tree checksum" in (root_debian._problem(entry) or "")
    shutil.rmtree(entry)


def test_a_second_build_is_the_cached_tree(DEBIAN_TREE):
    got = subprocess.run([sys.executable, "-m", "kbox", "rootfs", "build", "--arch",
                          DEBIAN_TREE.arch], capture_output=True, text=True, timeout=120, check=False)
    assert got.returncode == 0, got.stderr
    assert got.stdout == f"{DEBIAN_TREE.path}\n"
    assert re.search(r"\d+ packages", got.stderr) and "cached" in got.stderr
    assert "downloading" not in got.stderr and "unpacking" not in got.stderr


@pytest.mark.parametrize("args, status, message", [
    (["--arch", "{arch}", "--out", "/tmp"], 2, "--out /tmp: already exists"),
    (["--arch", "sparc"], 2, "invalid choice: 'sparc'"),
])
def test_bad_rootfs_build_input_is_refused_without_a_traceback(DEBIAN_TREE, args, status, message):
    args = [a.replace("{arch}", DEBIAN_TREE.arch) for a in args]
    got = subprocess.run([sys.executable, "-m", "kbox", "rootfs", "build", *args],
                         capture_output=True, text=True, timeout=60, check=False)
    assert got.returncode == status and message in got.stderr, got.stderr
    assert "Traceback" not in got.stderr and got.stdout == ""
