"""kbox/vm/share.py and kbox/vm/kbox_from.py on the host: what --share and --kbox-from
accept, the QEMU arguments and kernel command line a share becomes, how the console's
mount lines are read, and the incremental build of a checkout's C core."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from kbox.errors import UserError
from kbox.vm import images, kbox_from, share
from kbox.vm.arch import ARCHES

REPO = Path(__file__).resolve().parents[1]


# -- --share DIR[:GUEST] ---------------------------------------------------------------------
def test_share_defaults_to_mnt_basename_of_the_resolved_dir(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    (tmp_path / "src").mkdir()
    monkeypatch.chdir(tmp_path / "src")
    s = share.parse_share(".")
    assert (s.host, s.guest) == (tmp_path / "src", "/mnt/src")


def test_share_takes_an_absolute_guest_path_and_normalizes_it(tmp_path: Path) -> None:
    s = share.parse_share(f"{tmp_path}:/work//tree/")
    assert (s.host, s.guest) == (tmp_path.resolve(), "/work/tree")


def test_a_dir_whose_name_holds_a_colon_is_taken_whole(tmp_path: Path) -> None:
    d = tmp_path / "a:b"
    d.mkdir()
    assert share.parse_share(str(d)).guest == "/mnt/a_b"
    assert share.parse_share(f"{d}:/x").host == d


@pytest.mark.parametrize("spec, message", [
    ("{tmp}/nope", "no such directory"),
    ("{tmp}/file", "is not a directory"),
    ("{tmp}:mnt/x", "is not absolute"),
    ("{tmp}:", "is not absolute"),
    (":/mnt/x", "no host directory before ':'"),
    ("{tmp}:/usr", "is the guest's own"),
    ("{tmp}:/", "is the guest's own"),
    ("{tmp}:/mnt/a b", "may hold only"),
    ("{tmp}:/mnt/../etc", "has '..'"),
])
def test_bad_share_is_a_usage_error(tmp_path: Path, spec: str, message: str) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError) as ei:
        share.parse_share(spec.format(tmp=tmp_path))
    assert ei.value.exit_code == 2
    assert message in str(ei.value) and "\n" not in str(ei.value)


def test_shares_are_numbered_and_may_not_share_a_guest_path(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    got = share.parse_shares([str(tmp_path / "a"), f"{tmp_path / 'b'}:/srv/b"])
    assert [(s.tag, s.guest) for s in got] == [("kbox0", "/mnt/a"), ("kbox1", "/srv/b")]
    with pytest.raises(UserError, match="already taken by --share"):
        share.parse_shares([f"{tmp_path / 'a'}:/m", f"{tmp_path / 'b'}:/m"])


def test_share_becomes_a_9p_device_and_a_kernel_argument(tmp_path: Path) -> None:
    d = tmp_path / "with,comma"
    d.mkdir()
    shares = share.parse_shares([f"{d}:/mnt/c"])
    opts = share.vm_options(shares)
    assert opts["extra_cmdline"] == "kbox.share=kbox0:/mnt/c"
    assert opts["extra_qemu_args"] == [
        "-fsdev", f"local,id=fskbox0,path={tmp_path}/with,,comma,security_model=none",
        "-device", "virtio-9p-pci,fsdev=fskbox0,mount_tag=kbox0"]
    assert share.vm_options([]) == {}


# -- what the guest's init printed ------------------------------------------------------------
def _two(tmp_path: Path) -> list[share.Share]:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    return share.parse_shares([str(tmp_path / "a"), str(tmp_path / "b")])


def test_all_shares_mounted_is_no_failure(tmp_path: Path) -> None:
    console = "kbox-init: share kbox0 on /mnt/a\r\nkbox-init: share kbox1 on /mnt/b\nKBOX_GUEST_READY"
    assert share.mount_failures(console, _two(tmp_path)) == []


def test_a_kernel_without_9p_is_named_with_the_modules_it_needs(tmp_path: Path) -> None:
    console = ("kbox-init: insmod /usr/lib/modules/6.1.0-57-amd64/9pnet.ko failed\n"
               "kbox-init: share kbox0 on /mnt/a failed: mount: mounting kbox0 on /mnt/a "
               "failed: No such device\nkbox-init: share kbox1 on /mnt/b\n")
    got = share.mount_failures(console, _two(tmp_path), "6.1.0-57-amd64")
    assert len(got) == 1
    assert "kernel 6.1.0-57-amd64 has no 9p filesystem (insmod failed: 9pnet.ko)" in got[0]
    assert "9pnet_virtio" in got[0] and got[0].startswith(f"--share {tmp_path}/a:/mnt/a")


def test_a_share_the_init_never_mentions_says_the_image_may_predate_shares(
        tmp_path: Path) -> None:
    got = share.mount_failures("KBOX_GUEST_READY\n", _two(tmp_path)[:1])
    assert len(got) == 1 and "did not mount it" in got[0] and "--build" in got[0]


def test_an_image_built_without_9p_modules_is_refused_before_boot(tmp_path: Path) -> None:
    class Img:
        cache_dir = tmp_path
    (tmp_path / "info.json").write_text(json.dumps(
        {"kernel_version": "6.9.0-x", "share_modules_missing": ["9p", "9pnet_virtio"]}))
    with pytest.raises(UserError) as ei:
        share.check_image_supports_shares(Img())
    assert ei.value.exit_code == 2 and "kernel 6.9.0-x has no 9p support" in str(ei.value)
    (tmp_path / "info.json").write_text(json.dumps({"share_modules_missing": []}))
    share.check_image_supports_shares(Img())


# -- the 9p modules of an image ---------------------------------------------------------------
def test_share_modules_built_in_need_nothing_loaded(tmp_path: Path) -> None:
    (tmp_path / "modules.builtin").write_text("kernel/fs/9p/9p.ko\nkernel/net/9p/9pnet.ko\n"
                                              "kernel/net/9p/9pnet_virtio.ko\n")
    mods, missing = images._resolve_share_modules(tmp_path)
    assert missing == [] and mods is not None and mods.order == []


def test_share_modules_absent_are_listed(tmp_path: Path) -> None:
    (tmp_path / "modules.builtin").write_text("kernel/fs/9p/9p.ko\n")
    mods, missing = images._resolve_share_modules(tmp_path)
    assert mods is None and missing == ["9pnet_virtio"]


def test_no_share_modules_writes_an_empty_list(tmp_path: Path) -> None:
    (tmp_path / "etc/kbox").mkdir(parents=True)
    images._write_share_modules(tmp_path, "usr/lib/modules/x", None, [])
    assert (tmp_path / "etc/kbox/modules-9p").read_text() == ""


# -- --kbox-from DIR -------------------------------------------------------------------------
def test_this_tree_is_a_kbox_checkout() -> None:
    assert kbox_from.check_checkout(REPO / "kbox" / "..") == REPO


@pytest.mark.parametrize("case, message", [("missing", "no such directory"),
                                           ("file", "not a directory"),
                                           ("empty", "not a kbox checkout (no kbox/__init__.py"),
                                           ("no-csrc", "not a kbox checkout (no csrc/Makefile)")])
def test_bad_kbox_from_is_a_usage_error(tmp_path: Path, case: str, message: str) -> None:
    target = tmp_path / "x"
    if case == "file":
        target.write_text("")
    elif case == "empty":
        target.mkdir()
    elif case == "no-csrc":
        (target / "kbox").mkdir(parents=True)
        (target / "kbox/__init__.py").write_text("")
        (target / "kbox/cli.py").write_text("")
    with pytest.raises(UserError) as ei:
        kbox_from.check_checkout(target)
    assert ei.value.exit_code == 2 and message in str(ei.value)


_MAKEFILE = """\
O ?= build
CC := $(CROSS_COMPILE)gcc
all: $(O)/prog
$(O)/a.o: a.c
\t$(CC) -c $< -o $@
$(O)/b.o: b.c
\t$(CC) -c $< -o $@
$(O)/prog: $(O)/a.o $(O)/b.o
\t$(CC) $^ \\
\t\t-o $@
"""


def _fake_checkout(tmp_path: Path, makefile: str) -> Path:
    """A directory that passes for a kbox checkout, with `makefile` as csrc/Makefile."""
    co = tmp_path / "checkout"
    (co / "kbox").mkdir(parents=True)
    (co / "csrc").mkdir()
    (co / "kbox/__init__.py").write_text("")
    (co / "kbox/cli.py").write_text("")
    (co / "csrc/Makefile").write_text(makefile)
    return co


@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("make") is None,
                    reason="needs the host's gcc and make")
def test_kbox_from_rebuilds_only_what_changed(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KBOX_CACHE", str(tmp_path / "cache"))
    co = _fake_checkout(tmp_path, _MAKEFILE)
    (co / "csrc/a.c").write_text("int a(void) { return 1; }\n")
    (co / "csrc/b.c").write_text("int a(void);\nint main(void) { return a() - 1; }\n")
    host = ARCHES[images.host_arch()]
    first = kbox_from.build(kbox_from.check_checkout(co), host, "", progress=False)
    assert sorted(first.rebuilt) == ["a.o", "b.o", "prog"]
    assert (first.build_dir / "prog").is_file()
    again = kbox_from.build(co.resolve(), host, "", progress=False)
    assert again.rebuilt == () and "nothing to rebuild" in again.summary()
    st = (co / "csrc/a.c").stat()
    (co / "csrc/a.c").write_text("int a(void) { return 1 + 0; }\n")
    os.utime(co / "csrc/a.c", (st.st_atime + 5, st.st_mtime + 5))
    third = kbox_from.build(co.resolve(), host, "", progress=False)
    assert sorted(third.rebuilt) == ["a.o", "prog"]
    assert "1 object(s) compiled, prog linked" in third.summary()


def test_kbox_from_failed_build_is_one_line_with_makes_tail(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    monkeypatch.setenv("KBOX_CACHE", str(tmp_path / "cache"))
    co = _fake_checkout(tmp_path, "all:\n\t@echo broken-on-purpose >&2; false\n")
    with pytest.raises(UserError) as ei:
        kbox_from.build(co, ARCHES[images.host_arch()], "", progress=False)
    assert "broken-on-purpose" in str(ei.value) and "\n" not in str(ei.value)


def test_kbox_from_command_puts_the_checkout_first() -> None:
    kf = kbox_from.KboxFrom(REPO, Path("/b"), (), 0.0)
    assert kf.wrap("kbox run -- true") == (
        "export PYTHONPATH=/mnt/kbox-from KBOX_NATIVE_DIR=/mnt/kbox-native "
        "PYTHONDONTWRITEBYTECODE=1; kbox run -- true")
    assert [s.guest for s in kf.shares] == ["/mnt/kbox-from", "/mnt/kbox-native"]


# -- warm start with shares --------------------------------------------------------------------
def test_a_warm_share_attaches_the_device_only(tmp_path: Path) -> None:
    shares = share.parse_shares([f"{tmp_path}:/mnt/c"])
    assert share.vm_options(shares, warm=True) == {"extra_qemu_args": share.qemu_args(shares)}


def test_the_state_key_masks_the_exported_directory_only(tmp_path: Path) -> None:
    from kbox.vm.snapshot import normalized_command
    (tmp_path / "a,b").mkdir()
    (tmp_path / "c").mkdir()
    one = normalized_command(share.qemu_args(share.parse_shares([str(tmp_path / "a,b")])))
    two = normalized_command(share.qemu_args(share.parse_shares([str(tmp_path / "c")])))
    assert one == two == ["-fsdev", "local,id=fskbox0,path=DIR,security_model=none",
                          "-device", "virtio-9p-pci,fsdev=fskbox0,mount_tag=kbox0"]
    both = share.parse_shares([str(tmp_path / "a,b"), str(tmp_path / "c")])
    assert normalized_command(share.qemu_args(both)) != one   # another device set


def test_the_mount_script_prints_what_mount_failures_reads(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    # The script run by a host sh with insmod and mount stubs: one module loads, one fails;
    # kbox0 mounts, kbox1 fails the way a kernel without 9p does.
    import subprocess
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "insmod").write_text('#!/bin/sh\ncase "$1" in *9pnet.ko) exit 1;; esac\n')
    (bindir / "mount").write_text('#!/bin/sh\n[ "$5" = kbox0 ] && exit 0\n'
                                  'echo "mount: mounting $5 on $6 failed: No such device"; exit 1\n')
    for f in bindir.iterdir():
        f.chmod(0o755)
    mods = tmp_path / "modules-9p"
    mods.write_text("/m/9pnet.ko\n/m/9p.ko\n")
    monkeypatch.setattr(share, "SHARE_MODULES_LIST", str(mods))
    shares = share.numbered([(share.Share(tmp_path, str(tmp_path / "g0")), "a"),
                             (share.Share(tmp_path, str(tmp_path / "g1")), "b")])
    out = subprocess.run(["sh", "-c", share.mount_script(shares)], capture_output=True,
                         text=True, env={"PATH": f"{bindir}:/usr/bin:/bin"}, timeout=30,
                         check=False).stdout
    assert out.splitlines() == [
        "kbox-init: insmod /m/9pnet.ko failed",
        f"kbox-init: share kbox0 on {tmp_path}/g0",
        (f"kbox-init: share kbox1 on {tmp_path}/g1 failed: mount: mounting kbox1 on "
         f"{tmp_path}/g1 failed: No such device")]
    got = share.mount_failures(out, shares, "6.1.0-57-amd64")
    assert len(got) == 1 and "has no 9p filesystem (insmod failed: 9pnet.ko)" in got[0]
