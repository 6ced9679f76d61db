"""kbox.elfinfo: classification of real binaries, shell-like errors, and the mutation corpus.

Facts asserted here were checked on this machine (Debian 12, x86_64) with readelf/file:
/bin/ls is a dynamic PIE, /usr/bin/python3 a dynamic non-PIE EXEC, /bin/busybox
(busybox-static) a static EXEC; interpreters are /lib64/ld-linux-x86-64.so.2.
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from elf_corpus import corpus

from kbox.elfinfo import (
    EXIT_CANNOT_EXECUTE,
    EXIT_NOT_FOUND,
    ElfInfo,
    exec_argv,
    host_machine,
    inspect,
    parse_elf,
    resolve_program,
)
from kbox.errors import UserError

X86_HOST = host_machine() == "x86_64"
needs_x86_debian = pytest.mark.skipif(
    not (X86_HOST and os.path.exists("/lib64/ld-linux-x86-64.so.2")),
    reason="facts verified on a Debian 12 x86_64 host")
AARCH64_LIBC = "/usr/aarch64-linux-gnu/lib/libc.so.6"
needs_cross = pytest.mark.skipif(
    not (os.path.exists(AARCH64_LIBC) and shutil.which("aarch64-linux-gnu-gcc")),
    reason="needs gcc-aarch64-linux-gnu and libc6-dev-arm64-cross")

HELLO = "#include <stdio.h>\nint main(void) { puts(\"hi\"); return 0; }\n"


def _build(tmp: Path, cc: str, name: str, *flags: str) -> str:
    if not shutil.which(cc):
        pytest.skip(f"{cc} not installed")
    src = tmp / "hello.c"
    src.write_text(HELLO)
    out = tmp / name
    subprocess.run([cc, "-O1", *flags, "-o", str(out), str(src)], check=True, timeout=120)
    return str(out)


@pytest.fixture(scope="module")
def BINS(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("elfinfo")
    return {
        "static": _build(tmp, "gcc", "static", "-static"),
        "static-pie": _build(tmp, "gcc", "static-pie", "-static-pie"),
        "dynamic": _build(tmp, "gcc", "dynamic"),
    }


def _expect_error(path: str, code: int, text: str, **kw: object) -> UserError:
    with pytest.raises(UserError) as ei:
        inspect(path, **kw)  # type: ignore[arg-type]
    assert ei.value.exit_code == code, str(ei.value)
    assert text in str(ei.value)
    assert "\n" not in str(ei.value)
    return ei.value


# ---- real binaries --------------------------------------------------------------------

@needs_x86_debian
def test_ls_is_a_dynamic_pie_with_the_standard_interpreter() -> None:
    i = inspect("/bin/ls")
    assert (i.machine, i.elfclass, i.etype, i.linkage) == ("x86_64", 64, "DYN", "dynamic")
    assert i.interpreter == "/lib64/ld-linux-x86-64.so.2"
    assert "libc.so.6" in i.needed
    assert not i.is_static and not i.setuid and not i.setgid
    assert i.exec_segments and all(s.executable for s in i.exec_segments)
    assert any(s.vaddr <= i.entry < s.vaddr + s.memsz for s in i.exec_segments)


@needs_x86_debian
def test_python3_is_a_dynamic_exec() -> None:
    i = inspect("/usr/bin/python3")
    assert (i.etype, i.linkage, i.interpreter) == ("EXEC", "dynamic", "/lib64/ld-linux-x86-64.so.2")


@needs_x86_debian
def test_busybox_static_is_static() -> None:
    if not os.path.exists("/bin/busybox"):
        pytest.skip("busybox-static not installed")
    i = inspect("/bin/busybox")
    assert (i.etype, i.linkage, i.interpreter, i.is_static) == ("EXEC", "static", None, True)


@needs_x86_debian
def test_gcc_static_static_pie_and_dynamic_are_told_apart(BINS: dict[str, str]) -> None:
    s = inspect(BINS["static"])
    assert (s.etype, s.linkage, s.is_static, s.is_static_pie) == ("EXEC", "static", True, False)
    sp = inspect(BINS["static-pie"])
    assert (sp.etype, sp.linkage, sp.is_static, sp.is_static_pie) == ("DYN", "static-pie", True, True)
    d = inspect(BINS["dynamic"])
    assert (d.etype, d.linkage, d.is_static) == ("DYN", "dynamic", False)


@needs_x86_debian
def test_libraries_are_classified() -> None:
    ld = inspect("/lib64/ld-linux-x86-64.so.2")
    assert ld.linkage == "shared-object" and ld.soname == "ld-linux-x86-64.so.2" and ld.entry
    # Debian's libc.so.6 carries a PT_INTERP so that running it prints its version.
    libc = inspect("/lib/x86_64-linux-gnu/libc.so.6")
    assert libc.linkage == "dynamic" and libc.soname == "libc.so.6"


@needs_cross
def test_foreign_architecture_is_refused_for_running_but_parses() -> None:
    err = _expect_error(AARCH64_LIBC, EXIT_CANNOT_EXECUTE, "is an aarch64 executable; this host is x86_64",
                        host="x86_64")
    assert str(err).startswith(f"kbox: {AARCH64_LIBC}: ")
    i = parse_elf(AARCH64_LIBC)
    assert (i.machine, i.elfclass, i.interpreter) == ("aarch64", 64, "/lib/ld-linux-aarch64.so.1")
    assert inspect(AARCH64_LIBC, check_runnable=False).machine == "aarch64"


@needs_cross
def test_aarch64_static_binary_is_static(tmp_path: Path) -> None:
    p = _build(tmp_path, "aarch64-linux-gnu-gcc", "a64", "-static")
    i = parse_elf(p)
    assert (i.machine, i.linkage) == ("aarch64", "static")
    # On an aarch64 host the same file is runnable.
    assert inspect(p, host="aarch64").linkage == "static"


def test_setuid_and_setgid_bits_are_reported(tmp_path: Path) -> None:
    p = tmp_path / "su"
    shutil.copy("/bin/true", p)
    os.chmod(p, 0o4755)
    assert inspect(str(p)).setuid
    os.chmod(p, 0o2755)
    i = inspect(str(p))
    assert i.setgid and not i.setuid
    os.chmod(p, 0o2745)      # setgid without group-x is mandatory locking, not setgid
    assert not inspect(str(p)).setgid


# ---- shell-like errors ----------------------------------------------------------------

def test_nonexistent_program_is_127(tmp_path: Path) -> None:
    e = _expect_error(str(tmp_path / "nope"), EXIT_NOT_FOUND, "No such file or directory")
    assert str(e) == f"kbox: {tmp_path / 'nope'}: No such file or directory"


def test_directory_is_126(tmp_path: Path) -> None:
    _expect_error(str(tmp_path), EXIT_CANNOT_EXECUTE, "Is a directory")


def test_non_executable_file_is_permission_denied(tmp_path: Path) -> None:
    p = tmp_path / "ls-noexec"
    shutil.copy("/bin/ls", p)
    os.chmod(p, 0o644)
    _expect_error(str(p), EXIT_CANNOT_EXECUTE, "Permission denied")
    # Analysis does not need the x bit.
    assert inspect(str(p), check_runnable=False).linkage == "dynamic"


def test_text_file_without_shebang_is_not_an_elf(tmp_path: Path) -> None:
    p = tmp_path / "notes"
    p.write_text("echo hi\n")
    os.chmod(p, 0o755)
    _expect_error(str(p), EXIT_CANNOT_EXECUTE, "cannot execute: not an ELF executable")


def test_empty_file_is_not_an_elf(tmp_path: Path) -> None:
    p = tmp_path / "empty"
    p.write_bytes(b"")
    os.chmod(p, 0o755)
    _expect_error(str(p), EXIT_CANNOT_EXECUTE, "not an ELF executable")


def test_relocatable_object_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "o.c"
    src.write_text("int f(void) { return 1; }\n")
    obj = tmp_path / "o.o"
    subprocess.run(["gcc", "-c", "-o", str(obj), str(src)], check=True, timeout=60)
    os.chmod(obj, 0o755)
    _expect_error(str(obj), EXIT_CANNOT_EXECUTE, "relocatable object")


@needs_x86_debian
def test_missing_interpreter_is_127(tmp_path: Path) -> None:
    data = Path("/bin/ls").read_bytes()
    name, bad = next((n, b) for n, b in corpus(data) if n == "PT_INTERP-missing")
    p = tmp_path / name
    p.write_bytes(bad)
    os.chmod(p, 0o755)
    e = _expect_error(str(p), EXIT_NOT_FOUND, "interpreter /")
    assert "not found" in str(e) and "/nonexistent" in str(e)


@needs_x86_debian
def test_interpreter_that_is_not_an_elf_is_126(tmp_path: Path) -> None:
    data = Path("/bin/ls").read_bytes()
    bad = dict(corpus(data, fake_interp="/etc/passwd"))["PT_INTERP-fake"]
    p = tmp_path / "fake-interp"
    p.write_bytes(bad)
    os.chmod(p, 0o755)
    _expect_error(str(p), EXIT_CANNOT_EXECUTE, "not an ELF")


def test_corrupt_headers_say_corrupt_elf(tmp_path: Path) -> None:
    data = Path("/bin/true").read_bytes()
    variants = dict(corpus(data))
    for name, text in (("truncated-at-100", "corrupt ELF: "), ("e_phoff=max", "program headers"),
                       ("e_phentsize=57", "e_phentsize"), ("PT_LOAD-overlap-same-vaddr", "overlapping PT_LOAD"),
                       ("PT_INTERP-no-NUL", "PT_INTERP"), ("e_entry=max", "entry point"),
                       ("e_ident[4]=3", "EI_CLASS")):
        p = tmp_path / name
        p.write_bytes(variants[name])
        os.chmod(p, 0o755)
        _expect_error(str(p), EXIT_CANNOT_EXECUTE, text)


def test_corrupt_section_headers_do_not_stop_a_runnable_file(tmp_path: Path) -> None:
    # The kernel never reads section headers; neither may the validation.
    variants = dict(corpus(Path("/bin/true").read_bytes()))
    for name in ("e_shoff=max", "e_shstrndx=0xfffe", "e_shnum=0xffff"):
        p = tmp_path / name
        p.write_bytes(variants[name])
        os.chmod(p, 0o755)
        assert inspect(str(p)).linkage == "dynamic"


# ---- #! scripts -----------------------------------------------------------------------

def _script(path: Path, line: str) -> str:
    path.write_text(f"{line}\necho hi\n")
    os.chmod(path, 0o755)
    return str(path)


def test_shebang_is_followed_to_the_interpreter(tmp_path: Path) -> None:
    s = _script(tmp_path / "s.sh", "#!/bin/sh -e")
    i = inspect(s)
    assert os.path.realpath(i.path) == os.path.realpath("/bin/sh")
    assert [(b.script, b.interpreter, b.arg) for b in i.scripts] == [(s, "/bin/sh", "-e")]
    assert exec_argv(i, [s, "x"]) == ["/bin/sh", "-e", s, "x"]


def test_nested_shebangs_up_to_the_limit(tmp_path: Path) -> None:
    prev = "/bin/sh"
    chain = []
    for n in range(4):
        prev = _script(tmp_path / f"l{n}", f"#! {prev}")
        chain.append(prev)
    i = inspect(prev)
    assert len(i.scripts) == 4 and os.path.realpath(i.path) == os.path.realpath("/bin/sh")
    assert exec_argv(i, [prev]) == ["/bin/sh", chain[0], chain[1], chain[2], chain[3]]
    deeper = _script(tmp_path / "l4", f"#!{prev}")
    _expect_error(deeper, EXIT_CANNOT_EXECUTE, "levels of #! interpreters")


def test_shebang_with_missing_interpreter_is_bad_interpreter(tmp_path: Path) -> None:
    s = _script(tmp_path / "s", "#!/no/such/shell")
    _expect_error(s, EXIT_CANNOT_EXECUTE, "/no/such/shell: bad interpreter")


def test_shebang_with_empty_interpreter(tmp_path: Path) -> None:
    s = _script(tmp_path / "s", "#!   ")
    _expect_error(s, EXIT_CANNOT_EXECUTE, "empty #!")


# ---- PATH lookup ----------------------------------------------------------------------

def test_resolve_program_searches_path_like_a_shell(tmp_path: Path) -> None:
    assert os.path.realpath(resolve_program("ls")) == os.path.realpath(shutil.which("ls") or "")
    assert resolve_program("./relative/x") == "./relative/x"
    noexec = tmp_path / "tool"
    noexec.write_text("x")
    os.chmod(noexec, 0o644)
    with pytest.raises(UserError) as ei:
        resolve_program("tool", path_env=str(tmp_path))
    assert ei.value.exit_code == 126 and "Permission denied" in str(ei.value)
    with pytest.raises(UserError) as ei:
        resolve_program("kbox-no-such-command", path_env=str(tmp_path))
    assert ei.value.exit_code == 127 and str(ei.value) == "kbox: kbox-no-such-command: command not found"
    exe = tmp_path / "bin2"
    exe.mkdir()
    shutil.copy("/bin/true", exe / "tool")
    assert resolve_program("tool", path_env=f"{tmp_path}:{exe}") == str(exe / "tool")


# ---- mutation corpus ------------------------------------------------------------------

def _good_files(bins: dict[str, str]) -> list[str]:
    out = ["/bin/ls", bins["static"], bins["static-pie"]]
    if os.path.exists(AARCH64_LIBC):
        out.append("/usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1")
    return out


def test_corpus_is_big_and_reproducible() -> None:
    data = Path("/bin/ls").read_bytes()
    a, b = corpus(data), corpus(data)
    assert a == b and len(a) > 300
    assert dict(a)["zero-length"] == b""


@pytest.mark.parametrize("which", [0, 1, 2, 3])
def test_inspect_on_every_corpus_entry_gives_a_usererror_or_a_valid_result(
    which: int, BINS: dict[str, str], tmp_path: Path,
) -> None:
    goods = _good_files(BINS)
    if which >= len(goods):
        pytest.skip("aarch64 cross libc not installed")
    good = goods[which]
    bad: list[str] = []
    outcomes = {"ok": 0, "usererror": 0}
    for name, blob in corpus(Path(good).read_bytes(), fake_interp="/etc/passwd"):
        p = tmp_path / "v"
        p.write_bytes(blob)
        os.chmod(p, 0o755)
        for check in (True, False):
            try:
                info = inspect(str(p), check_runnable=check)
            except UserError as exc:
                outcomes["usererror"] += 1
                if "\n" in str(exc) or exc.exit_code not in (126, 127) or not str(exc).startswith("kbox: "):
                    bad.append(f"{name}: bad message {exc!r}")
                continue
            except Exception as exc:  # noqa: BLE001 - exactly what this test hunts for
                bad.append(f"{name}: {type(exc).__name__}: {exc}")
                continue
            outcomes["ok"] += 1
            assert isinstance(info, ElfInfo)
            # A result must be usable: segments inside the file, entry in code.
            size = len(blob)
            assert all(s.offset + s.filesz <= size for s in info.load_segments), name
        p.unlink()
    assert not bad, "\n".join(bad[:20])
    assert outcomes["usererror"] > 250 and outcomes["ok"] > 0, outcomes


def test_stat_modes_other_than_files(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    os.chmod(fifo, 0o755)
    _expect_error(str(fifo), EXIT_CANNOT_EXECUTE, "Permission denied")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
