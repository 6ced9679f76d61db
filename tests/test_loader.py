"""The in-process ELF loader of the C core (csrc/loader/), driven through libkbox.so.

Three layers:
- kbox_api_elf_check on real binaries and on thousands of malformed images, in-process:
  a crash in the validator kills pytest, which is the point;
- kbox_api_load_program in a throwaway child process: the program is mapped into the
  child, which reports the new stack (argv, envp, auxv), memory at the segments and its
  /proc/self/maps, without jumping;
- kbox-launch --syscall-mode=none: load and jump, compare output with a native run.

Facts used here were checked on this machine (Debian 12, x86_64) with readelf: /bin/ls is
a dynamic PIE, /usr/bin/python3 a dynamic EXEC, /bin/busybox (busybox-static) a static EXEC.
"""
from __future__ import annotations

import errno
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from elf_corpus import EHDR64, PHDR64, PT_LOAD, corpus

from kbox import native
from kbox.errors import UserError

REPO = Path(__file__).resolve().parents[1]
HOST = native.host_arch()
X86_HOST = HOST == "x86_64"
needs_x86_debian = pytest.mark.skipif(
    not (X86_HOST and os.path.exists("/lib64/ld-linux-x86-64.so.2")),
    reason="facts verified on a Debian 12 x86_64 host")
AARCH64_LIB = Path("/usr/aarch64-linux-gnu/lib")
ET_EXEC, ET_DYN = 2, 3
AT_NULL, AT_PHDR, AT_PHENT, AT_PHNUM, AT_PAGESZ, AT_BASE = 0, 3, 4, 5, 6, 7
AT_ENTRY, AT_SECURE, AT_RANDOM, AT_EXECFN, AT_SYSINFO_EHDR = 9, 23, 25, 31, 33
ERRCAP = 512
CHILD_TIMEOUT = 60.0
RUN_TIMEOUT = 60.0

SOURCE = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
static char big_bss[1 << 20];
int main(int argc, char **argv) {
    printf("argc=%d", argc);
    for (int i = 0; i < argc; i++) printf(" [%s]", argv[i]);
    printf(" execfn=%s home=%s bss=%d\n", (char *)getauxval(AT_EXECFN),
           getenv("HOME") ? getenv("HOME") : "-", big_bss[12345]);
    char *p = malloc(1 << 20); memset(p, 1, 1 << 20); free(p);
    return 3;
}
"""


# ---- fixtures -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def LIB() -> tuple[Any, Any]:
    lib = native.lib()
    if not hasattr(lib, "kbox_api_elf_check"):
        pytest.fail("libkbox.so lacks kbox_api_elf_check: rebuild the C core")
    return native.ffi(), lib


def _cc(tmp: Path, cc: str, name: str, *flags: str) -> str:
    if not shutil.which(cc):
        pytest.skip(f"{cc} not installed")
    src = tmp / "prog.c"
    src.write_text(SOURCE)
    out = tmp / name
    subprocess.run([cc, "-O1", *flags, "-o", str(out), str(src)], check=True, timeout=120)
    return str(out)


@pytest.fixture(scope="module")
def BINS(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("loader")
    return {
        "static": _cc(tmp, "gcc", "static", "-static"),
        "static-pie": _cc(tmp, "gcc", "static-pie", "-static-pie"),
        "dynamic": _cc(tmp, "gcc", "dynamic"),
    }


def check(lib: tuple[Any, Any], data: bytes) -> tuple[int, str, Any]:
    ffi, clib = lib
    info = ffi.new("struct kbox_elf_info *")
    err = ffi.new("char[]", ERRCAP)
    buf = ffi.from_buffer(data) if data else ffi.NULL
    r = clib.kbox_api_elf_check(buf, len(data), info, err, ERRCAP)
    return r, ffi.string(err).decode(), info


def _phdrs(data: bytes) -> list[tuple[int, ...]]:
    eh = EHDR64.unpack_from(data, 0)
    return [PHDR64.unpack_from(data, eh[5] + i * eh[9]) for i in range(eh[10])]


# ---- validation of real binaries --------------------------------------------------------

@needs_x86_debian
def test_ls_is_a_dynamic_pie_with_the_standard_interpreter(LIB: Any) -> None:
    r, err, info = check(LIB, Path("/bin/ls").read_bytes())
    assert r == 0, err
    assert info.type == ET_DYN and info.machine == 62
    assert info.is_dynamic == 1 and info.is_static_pie == 0
    assert LIB[0].string(info.interp) == b"/lib64/ld-linux-x86-64.so.2"


@needs_x86_debian
def test_python3_is_a_dynamic_exec(LIB: Any) -> None:
    r, err, info = check(LIB, Path("/usr/bin/python3").resolve().read_bytes())
    assert r == 0, err
    assert info.type == ET_EXEC and info.is_dynamic == 1


@needs_x86_debian
def test_busybox_static_is_a_static_exec(LIB: Any) -> None:
    if not os.path.exists("/bin/busybox"):
        pytest.skip("busybox-static not installed")
    r, err, info = check(LIB, Path("/bin/busybox").read_bytes())
    assert r == 0, err
    assert info.type == ET_EXEC and info.is_dynamic == 0 and info.is_static_pie == 0
    assert info.interp[0] == b"\0"


def test_gcc_static_static_pie_and_dynamic_are_told_apart(LIB: Any, BINS: dict[str, str]) -> None:
    got = {}
    for kind, path in BINS.items():
        r, err, info = check(LIB, Path(path).read_bytes())
        assert r == 0, (kind, err)
        got[kind] = (info.type, info.is_dynamic, info.is_static_pie)
    assert got == {"static": (ET_EXEC, 0, 0), "static-pie": (ET_DYN, 0, 1),
                   "dynamic": (ET_DYN, 1, 0)}


@pytest.mark.skipif(not X86_HOST or not AARCH64_LIB.is_dir(),
                    reason="needs an x86_64 host with libc6-dev-arm64-cross")
def test_aarch64_binaries_are_refused_as_wrong_architecture(LIB: Any) -> None:
    files = sorted(p for p in AARCH64_LIB.glob("*.so*") if p.is_file() and not p.is_symlink())
    files = [p for p in files if p.read_bytes()[:4] == b"\x7fELF"][:40]
    assert files, "no aarch64 libraries found"
    for p in files:
        r, err, _ = check(LIB, p.read_bytes())
        assert r == -errno.ENOEXEC, (p, err)
        assert err == "ELF image: ELF for aarch64, this is x86_64", err


# ---- malformed images -----------------------------------------------------------------

def _assert_graceful(LIB: Any, name: str, data: bytes) -> int:
    r, err, _ = check(LIB, data)
    if r == 0:
        return 0
    assert r in (-errno.ENOEXEC, -errno.ELIBBAD), (name, r, err)
    assert err and "\n" not in err, (name, err)
    return r


def _bases(BINS: dict[str, str]) -> list[bytes]:
    paths = [BINS["static"], BINS["static-pie"], BINS["dynamic"]]
    if os.path.exists("/bin/ls"):
        paths.append("/bin/ls")
    return [Path(p).read_bytes() for p in paths]


def test_mutation_corpus_never_crashes_and_always_explains(LIB: Any, BINS: dict[str, str]) -> None:
    refused = total = 0
    for data in _bases(BINS):
        for name, bad in corpus(data, fake_interp="/etc/passwd", flips=300):
            total += 1
            refused += _assert_graceful(LIB, name, bad) != 0
    # Most variants are broken in a way the loader must notice (flips of padding bytes and
    # section-header fields are legitimately harmless).
    assert total > 1500 and refused > total // 2, (total, refused)


FIELD_VALUES = [0, 1, 2, 55, 56, 57, 4095, 4096, 0x7FFF, 0xFFFF, 0xFFFFFFFF, 1 << 47, 1 << 63,
                (1 << 64) - 1, (1 << 64) - 4096]


def _random_header_mutation(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    """Sets 1-3 random ELF/program header fields to boundary or random values."""
    b = bytearray(data)
    eh = EHDR64.unpack_from(data, 0)
    phoff, phnum = eh[5], eh[10]
    what = []
    for _ in range(rng.randint(1, 3)):
        if rng.random() < 0.3:
            off, size = rng.choice([(16, 2), (18, 2), (24, 8), (32, 8), (54, 2), (56, 2)])
        else:
            i = rng.randrange(phnum)
            off, size = phoff + i * 56 + rng.choice([0, 4, 8, 16, 32, 40, 48]), 8
            if (off - phoff) % 56 in (0, 4):
                size = 4
        v = rng.choice(FIELD_VALUES + [rng.getrandbits(64)]) & ((1 << (8 * size)) - 1)
        if rng.random() < 0.2:
            v = int.from_bytes(b[off:off + size], "little") + rng.choice([-1, 1, 4096, -4096])
            v &= (1 << (8 * size)) - 1
        b[off:off + size] = v.to_bytes(size, "little")
        what.append(f"{off}={v:#x}")
    return "fields-" + ",".join(what), bytes(b)


def test_thousands_of_random_header_mutations_are_handled(LIB: Any, BINS: dict[str, str]) -> None:
    rng = random.Random(0x6b626f78)   # fixed seed: a failure names a reproducible case
    results = {0: 0, -errno.ENOEXEC: 0, -errno.ELIBBAD: 0}
    for data in _bases(BINS):
        for _ in range(400):
            name, bad = _random_header_mutation(rng, data)
            results[_assert_graceful(LIB, name, bad)] += 1
    assert sum(results.values()) >= 1600
    assert results[-errno.ELIBBAD] > 200 and results[-errno.ENOEXEC] > 50, results


@pytest.mark.parametrize("name,data,code,text", [
    ("empty", b"", errno.ENOEXEC, "not an ELF executable"),
    ("text", b"hello world\n", errno.ENOEXEC, "not an ELF executable"),
    ("magic-only", b"\x7fELF", errno.ELIBBAD, "corrupt ELF"),
    ("32-bit", b"\x7fELF\x01\x01\x01" + bytes(60), errno.ENOEXEC, "32-bit ELF"),
    ("big-endian", b"\x7fELF\x02\x02\x01" + bytes(60), errno.ENOEXEC, "big-endian"),
])
def test_tiny_images_get_the_execve_errno(LIB: Any, name: str, data: bytes, code: int,
                                          text: str) -> None:
    r, err, _ = check(LIB, data)
    assert r == -code and text in err, (r, err)


def test_specific_corruptions_are_named(LIB: Any, BINS: dict[str, str]) -> None:
    data = Path(BINS["dynamic"]).read_bytes()
    variants = dict(corpus(data))
    eh = EHDR64.unpack_from(data, 0)
    expect = {
        f"truncated-at-{eh[5] + 1}": "program headers beyond end of file",
        "e_phoff=max": "program headers beyond end of file",
        "e_phnum=0xffff": "too many program headers",
        "e_phnum=0": "no program headers",
        "e_phentsize=32": "e_phentsize",
        "PT_INTERP-no-NUL": "PT_INTERP is not NUL-terminated",
        "PT_INTERP-filesz=max": "PT_INTERP size out of range",
        "PT_LOAD[0].p_filesz=max": "p_filesz larger than p_memsz",
        "PT_LOAD[0].p_offset=max": "segment beyond end of file",
        "PT_LOAD[0].p_offset=filesize": "beyond end of file",
        "PT_LOAD[0].p_filesz>p_memsz": "p_filesz larger than p_memsz",
        "PT_LOAD[0].p_align=3": "not a power of two",
        "PT_LOAD[0].p_offset+1": "not congruent",
        "PT_LOAD[1].p_vaddr=2^47": "beyond the user address space",
        "PT_LOAD-unsorted": "overlap or are not sorted",
        "PT_LOAD-overlap-inside": "overlap or are not sorted",
        "e_entry=max": "entry point outside",
        "e_machine=aarch64": "ELF for aarch64",
        "e_type=REL": "relocatable object",
    }
    for name, text in expect.items():
        r, err, _ = check(LIB, variants[name])
        assert r < 0 and text in err, (name, r, err)


# ---- loading into a child process -----------------------------------------------------

CHILD = r"""
import json, struct, sys
from kbox import native
from kbox.errors import UserError
ffi, lib = native.ffi(), native.lib()
req = json.loads(sys.stdin.read())
keep = []
def cvec(items):
    if items is None:
        return ffi.NULL
    strs = [ffi.new("char[]", s.encode()) for s in items]
    keep.extend(strs)
    return ffi.new("char *[]", strs + [ffi.NULL])
raw = open("/proc/self/auxv", "rb").read()
auxv = ffi.new("uint64_t[]", list(struct.unpack(f"<{len(raw) // 8}Q", raw)))
out = ffi.new("struct kbox_loaded *")
err = ffi.new("char[512]")
def clean(before, after, path):
    # Nothing of a failed load stayed: no new mapping of the file and no new PROT_NONE
    # reservation.  (A byte-exact comparison would trip over python's own heap growth.)
    def mine(maps):
        return sorted(l for l in maps.splitlines()
                      if l.endswith(" " + path) or " ---p " in l)
    return mine(before) == mine(after)
if "batch" in req:
    # many files, one process: every failure must leave the address space as it was
    results = []
    for path in req["batch"]:
        argv = cvec([path])
        before = open("/proc/self/maps").read()
        r = lib.kbox_api_load_program(path.encode(), argv, cvec([]), auxv, out, err, 512)
        results.append((r, ffi.string(err).decode(),
                        r == 0 or clean(before, open("/proc/self/maps").read(), path)))
    print(json.dumps(results))
    sys.exit(0)
path = req["path"].encode()
argv, envp = cvec(req["argv"]), cvec(req["envp"])
maps_before = open("/proc/self/maps").read()
r = lib.kbox_api_load_program(path, argv, envp, auxv, out, err, 512)
if req.get("twice") and r == 0:
    # the same fixed-address program again: its addresses are now taken
    maps_before = open("/proc/self/maps").read()
    r = lib.kbox_api_load_program(path, argv, envp, auxv, out, err, 512)
maps_after = open("/proc/self/maps").read()
res = {"r": r, "err": ffi.string(err).decode(), "maps_after": maps_after,
       "clean": clean(maps_before, maps_after, req["path"])}
if r == 0:
    def mem(addr, n):
        return bytes(ffi.buffer(ffi.cast("char *", addr), n)).hex()
    res.update({k: getattr(out, k) for k in ("entry", "sp", "main_entry", "main_bias",
        "interp_bias", "phdr", "phnum", "phent", "argc", "main_start", "main_len",
        "interp_start", "interp_len", "script_depth")})
    res["exe_path"] = ffi.string(out.exe_path).decode()
    res["guest_path"] = ffi.string(out.guest_path).decode()
    sp = ffi.cast("uint64_t *", out.sp)
    argc = sp[0]
    res["stack_argc"] = argc
    res["argv"] = [ffi.string(ffi.cast("char *", sp[1 + i])).decode() for i in range(argc)]
    assert sp[1 + argc] == 0
    envp, i = [], 2 + argc
    while sp[i]:
        envp.append(ffi.string(ffi.cast("char *", sp[i])).decode()); i += 1
    res["envp"] = envp
    i += 1
    res["auxv_at"] = int(ffi.cast("uint64_t", sp + i))
    aux = []
    while True:
        aux.append((sp[i], sp[i + 1]))
        if sp[i] == 0:
            break
        i += 2
    res["auxv"] = aux
    d = dict(aux)
    res["execfn"] = ffi.string(ffi.cast("char *", d[31])).decode()
    res["phdr_bytes"] = mem(d[3], d[5] * 56)
    res["probes"] = [mem((out.main_bias if w == "main" else out.interp_bias) + a, n)
                     for w, a, n in req.get("probes", [])]
print(json.dumps(res))
"""


def load_in_child(path: str, argv: list[str] | None, envp: list[str] | None = None,
                  probes: list[tuple[str, int, int]] | None = None,
                  twice: bool = False) -> dict[str, Any]:
    req = {"path": path, "argv": argv, "envp": envp if envp is not None else ["A=1", "B=two"],
           "probes": probes or [], "twice": twice}
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.run([sys.executable, "-c", CHILD], input=json.dumps(req), capture_output=True,
                       text=True, timeout=CHILD_TIMEOUT, env=env, check=False)
    assert p.returncode == 0, f"child died ({p.returncode}): {p.stderr[-2000:]}"
    return json.loads(p.stdout)


def _segment_probes(path: str) -> tuple[list[tuple[str, int, int]], list[bytes]]:
    """Per PT_LOAD: its first bytes (expect the file's) and its bss (expect zeros)."""
    data = Path(path).read_bytes()
    probes, expect = [], []
    for ph in _phdrs(data):
        typ, _flags, off, vaddr, _pa, filesz, memsz, _al = ph
        if typ != PT_LOAD or memsz == 0:
            continue
        n = min(64, filesz)
        if n:
            probes.append(("main", vaddr, n))
            expect.append(data[off:off + n])
        if memsz > filesz:
            end = vaddr + filesz
            tail = min(((end + 4095) & ~4095) - end, memsz - filesz)
            if tail:
                probes.append(("main", end, tail))     # the zeroed tail of the last file page
                expect.append(bytes(tail))
            if memsz - filesz >= 16:
                probes.append(("main", vaddr + memsz - 16, 16))
                expect.append(bytes(16))
    return probes, expect


def _maps_perms(maps: str, addr: int) -> str:
    for line in maps.splitlines():
        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
        if lo <= addr < hi:
            return line.split()[1]
    raise AssertionError(f"{addr:#x} is not mapped")


def _check_loaded(res: dict[str, Any], path: str, argv: list[str]) -> None:
    assert res["r"] == 0, res["err"]
    data = Path(path).read_bytes()
    eh = EHDR64.unpack_from(data, 0)
    aux = dict(res["auxv"])
    assert res["sp"] % 16 == 0
    # the new frame is on the process stack (grown on demand), not in some other mapping
    stack = next(line for line in res["maps_after"].splitlines() if line.endswith("[stack]"))
    lo, hi = (int(x, 16) for x in stack.split()[0].split("-"))
    assert lo <= res["sp"] < hi - 64 * 1024
    assert res["stack_argc"] == len(argv) and res["argv"] == argv
    assert res["envp"] == ["A=1", "B=two"]
    assert aux[AT_ENTRY] == res["main_entry"] == eh[4] + res["main_bias"]
    assert aux[AT_BASE] == res["interp_bias"]
    assert aux[AT_PHNUM] == eh[10] and aux[AT_PHENT] == 56
    assert aux[AT_SECURE] == 0
    assert aux[AT_PAGESZ] == os.sysconf("SC_PAGESIZE")
    assert AT_RANDOM in aux and AT_SYSINFO_EHDR in aux
    assert res["execfn"] == res["guest_path"] == path
    # AT_PHDR points at the program's own headers, wherever they ended up
    assert bytes.fromhex(res["phdr_bytes"]) == data[eh[5]:eh[5] + eh[10] * 56]
    # every auxv type appears once
    types = [t for t, _ in res["auxv"]]
    assert len(types) == len(set(types)) and types[-1] == AT_NULL
    # segments: mapped with exactly the ELF's permissions, never writable+executable
    for ph in _phdrs(data):
        typ, flags, _off, vaddr, _pa, _fs, memsz, _al = ph
        if typ != PT_LOAD or memsz == 0:
            continue
        perms = _maps_perms(res["maps_after"], res["main_bias"] + vaddr)
        want = "".join(c if flags & bit else "-" for c, bit in (("r", 4), ("w", 2), ("x", 1)))
        assert perms[:3] == want, (hex(vaddr), perms, want)
    if res["interp_len"]:
        assert res["entry"] != res["main_entry"]
        assert res["interp_start"] <= res["entry"] < res["interp_start"] + res["interp_len"]
    else:
        assert res["entry"] == res["main_entry"]


@pytest.mark.parametrize("kind", ["static", "static-pie", "dynamic"])
def test_gcc_programs_are_mapped_with_a_correct_stack(BINS: dict[str, str], kind: str) -> None:
    path = BINS[kind]
    probes, expect = _segment_probes(path)
    res = load_in_child(path, [path, "one", "two words"], probes=probes)
    _check_loaded(res, path, [path, "one", "two words"])
    assert [bytes.fromhex(p) for p in res["probes"]] == expect
    if kind == "static":
        assert res["main_bias"] == 0
    else:
        assert res["main_start"] % 4096 == 0 and res["main_bias"] != 0
    assert (res["interp_len"] != 0) == (kind == "dynamic")


@needs_x86_debian
@pytest.mark.parametrize("path", ["/bin/ls", "/usr/bin/python3", "/bin/busybox"])
def test_system_programs_are_mapped_with_a_correct_stack(path: str) -> None:
    if not os.path.exists(path):
        pytest.skip(f"{path} not installed")
    real = str(Path(path).resolve()) if path == "/usr/bin/python3" else path
    probes, expect = _segment_probes(real)
    res = load_in_child(real, [real, "-x"], probes=probes)
    _check_loaded(res, real, [real, "-x"])
    assert [bytes.fromhex(p) for p in res["probes"]] == expect


def test_a_pie_lands_at_the_usual_pie_base_when_free(BINS: dict[str, str]) -> None:
    res = load_in_child(BINS["static-pie"], ["x"])
    assert res["r"] == 0, res["err"]
    # the child's python is either non-PIE or placed randomly by ASLR: the hint is free
    hint = {"x86_64": 0x555555554000, "aarch64": 0xAAAAAAAA0000}[HOST]
    assert res["main_start"] == hint


def test_exe_path_is_canonical_like_proc_self_exe(tmp_path: Path, BINS: dict[str, str]) -> None:
    link = tmp_path / "via-link"
    link.symlink_to(BINS["static"])
    rel = os.path.relpath(link)          # the child runs in this process's cwd
    res = load_in_child(rel, [rel])
    assert res["r"] == 0, res["err"]
    assert res["exe_path"] == os.path.realpath(BINS["static"])
    assert res["guest_path"] == res["execfn"] == rel     # AT_EXECFN: as the guest asked


def test_an_empty_argv_becomes_one_empty_string(BINS: dict[str, str]) -> None:
    res = load_in_child(BINS["static"], [])
    assert res["r"] == 0 and res["argv"] == [""]
    res = load_in_child(BINS["static"], None, envp=[])
    assert res["r"] == 0 and res["argv"] == [""] and res["envp"] == []


def test_fixed_address_program_cannot_overlap_existing_memory(BINS: dict[str, str]) -> None:
    # MAP_FIXED_NOREPLACE: a second copy of a non-PIE program finds its addresses taken
    # (the same check keeps a guest off kbox's runtime at 0x3000000000).
    res = load_in_child(BINS["static"], ["clash"], twice=True)
    assert res["r"] == -errno.ENOMEM, res["err"]
    assert "overlap memory already in use" in res["err"]
    assert res["clean"]


def test_loading_malformed_files_fails_cleanly(tmp_path: Path, BINS: dict[str, str]) -> None:
    """The mapping path, not just validation, on hundreds of broken files (position
    independent bases, so variants that still load do not collide with each other)."""
    paths = []
    for kind in ("static-pie", "dynamic"):
        for i, (name, bad) in enumerate(corpus(Path(BINS[kind]).read_bytes(), flips=150)):
            p = tmp_path / f"{kind}-{i}"
            p.write_bytes(bad)
            p.chmod(0o755)
            paths.append(str(p))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", CHILD], input=json.dumps({"batch": paths}),
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT * 3, env=env,
                          check=False)
    assert proc.returncode == 0, f"child died ({proc.returncode}): {proc.stderr[-2000:]}"
    results = json.loads(proc.stdout)
    allowed = {-errno.ENOEXEC, -errno.ELIBBAD, -errno.ENOENT, -errno.EACCES, -errno.ENOMEM}
    for path, (r, err, clean) in zip(paths, results):
        assert r == 0 or (r in allowed and err and "\n" not in err), (path, r, err)
        assert clean, (path, "left mappings behind")
    assert len(results) == len(paths) > 500
    assert sum(r != 0 for r, _, _ in results) > len(results) // 2


# ---- errors while loading --------------------------------------------------------------

def _script(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


def test_load_errors_mirror_execve(tmp_path: Path, BINS: dict[str, str]) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("echo hi\n")
    noexec = tmp_path / "noexec"
    noexec.write_bytes(Path(BINS["static"]).read_bytes())
    noexec.chmod(0o644)
    text = _script(tmp_path / "text", "just text\n")
    empty = _script(tmp_path / "empty", "")
    cases = [
        (str(tmp_path / "missing"), errno.ENOENT, "No such file or directory"),
        (str(tmp_path), errno.EACCES, "is a directory"),
        ("/dev/null", errno.EACCES, "not a regular file"),
        (str(noexec), errno.EACCES, "not executable"),
        (text, errno.ENOEXEC, "not an ELF executable"),
        (empty, errno.ENOEXEC, "not an ELF executable"),
        (_script(tmp_path / "bang", "#!\n"), errno.ENOEXEC, "malformed #!"),
        (_script(tmp_path / "nointerp", "#!/nonexistent/sh\n"), errno.ENOENT,
         "/nonexistent/sh: No such file or directory"),
    ]
    for path, code, msg in cases:
        res = load_in_child(path, [path])
        assert res["r"] == -code and msg in res["err"], (path, res["r"], res["err"])
        assert "\n" not in res["err"]
        assert res["clean"], path


def test_missing_or_broken_interpreter_is_reported_and_unmapped(tmp_path: Path,
                                                                BINS: dict[str, str]) -> None:
    data = Path(BINS["dynamic"]).read_bytes()
    # PT_INTERP has room for 27 bytes here: the fake interpreter needs a short path
    short = Path(tempfile.mkdtemp(prefix="kl", dir="/tmp"))
    try:
        fake = _script(short / "f", "not an ELF file, but executable\n")
        variants = dict(corpus(data, fake_interp=fake))
        noexec = dict(corpus(data, fake_interp="/etc/passwd"))["PT_INTERP-fake"]
        for name, image, code, msg in [
            ("missing", variants["PT_INTERP-missing"], errno.ENOENT,
             "nonexistent/ld.so: No such file"),
            ("not-elf", variants["PT_INTERP-fake"], errno.ELIBBAD,
             "f: not an ELF executable"),
            ("not-executable", noexec, errno.EACCES, "passwd: Permission denied")]:
            p = tmp_path / name
            p.write_bytes(image)
            p.chmod(0o755)
            res = load_in_child(str(p), [str(p)])
            assert res["r"] == -code and msg in res["err"], (name, res["err"])
            # the main program had been mapped before the interpreter failed: all undone
            assert res["clean"], name
    finally:
        shutil.rmtree(short)


def test_foreign_architecture_file_is_refused_before_mapping(tmp_path: Path) -> None:
    libc = AARCH64_LIB / "libc.so.6"
    if not X86_HOST or not libc.exists():
        pytest.skip("needs an x86_64 host with libc6-dev-arm64-cross")
    res = load_in_child(str(libc), ["libc"])
    assert res["r"] == -errno.ENOEXEC
    assert res["err"] == f"{libc}: ELF for aarch64, this is x86_64"


def test_corrupt_file_on_disk_says_corrupt(tmp_path: Path, BINS: dict[str, str]) -> None:
    data = Path(BINS["static-pie"]).read_bytes()
    eh = EHDR64.unpack_from(data, 0)
    p = tmp_path / "cut"
    p.write_bytes(data[:eh[5] + 30])
    p.chmod(0o755)
    res = load_in_child(str(p), ["cut"])
    assert res["r"] == -errno.ELIBBAD
    assert res["err"] == f"{p}: corrupt ELF: program headers beyond end of file"


def test_arguments_beyond_the_kernel_limit_are_e2big(BINS: dict[str, str]) -> None:
    res = load_in_child(BINS["static"], ["x", "y" * (128 * 1024 + 1)])
    assert res["r"] == -errno.E2BIG, res["err"]
    res = load_in_child(BINS["static"], ["x"] + ["z" * 65536] * 120)   # 7.5 MiB
    assert res["r"] == -errno.E2BIG and "too long" in res["err"]
    assert res["clean"]


# ---- #! scripts ---------------------------------------------------------------------------

def test_shebang_splices_interpreter_and_argument(tmp_path: Path, BINS: dict[str, str]) -> None:
    s = _script(tmp_path / "s", f"#!{BINS['static']}  -e  opt \t\nbody\n")
    res = load_in_child(s, ["myname", "a", "b"])
    assert res["r"] == 0, res["err"]
    # binfmt_script: one argument, inner whitespace kept, argv[0] replaced by the path
    assert res["argv"] == [BINS["static"], "-e  opt", s, "a", "b"]
    assert res["exe_path"] == BINS["static"] and res["guest_path"] == s
    assert res["script_depth"] == 1


def test_nested_shebangs_up_to_four_levels(tmp_path: Path, BINS: dict[str, str]) -> None:
    prev = BINS["static"]
    paths = []
    for i in range(5):
        prev = _script(tmp_path / f"s{i}", f"#!{prev} arg{i}\n")
        paths.append(prev)
    res = load_in_child(paths[3], [paths[3], "x"])
    assert res["r"] == 0, res["err"]
    assert res["script_depth"] == 4
    assert res["argv"] == [BINS["static"], "arg0", paths[0], "arg1", paths[1], "arg2", paths[2],
                           "arg3", paths[3], "x"]
    res = load_in_child(paths[4], [paths[4]])
    assert res["r"] == -errno.ELOOP and "#!" in res["err"]


def test_shebang_interpreter_path_must_not_be_truncated(tmp_path: Path) -> None:
    s = _script(tmp_path / "long", "#!/" + "a" * 300 + "\n")
    res = load_in_child(s, [s])
    assert res["r"] == -errno.ENOEXEC
    with pytest.raises(OSError) as ei:     # the kernel refuses it the same way
        subprocess.run([s], capture_output=True, timeout=RUN_TIMEOUT, check=False)
    assert ei.value.errno == errno.ENOEXEC


@pytest.mark.parametrize("line", [
    "{prog} " + "b" * 300 + "\n",          # argument cut at the kernel's 256-byte buffer
    "{prog}   x  y\t \n",                  # one argument, inner blanks kept, trailing cut
    "  {prog}",                             # no newline at all, leading blanks
    "{prog}\t" + "c" * 260,                 # no newline, cut argument
])
def test_shebang_argv_matches_the_kernel(tmp_path: Path, BINS: dict[str, str], line: str) -> None:
    s = _script(tmp_path / "script", "#!" + line.format(prog=BINS["static"]))
    kernel = subprocess.run([s, "tail"], capture_output=True, text=True, timeout=RUN_TIMEOUT,
                            check=False)
    res = load_in_child(s, [s, "tail"])
    assert res["r"] == 0, res["err"]
    ours = "argc=%d" % len(res["argv"]) + "".join(f" [{a}]" for a in res["argv"])
    assert kernel.stdout.startswith(ours + " execfn="), (kernel.stdout, ours)


# ---- end to end: kbox-launch --syscall-mode=none ----------------------------------------

@pytest.fixture(scope="module")
def LAUNCH() -> str:
    try:
        path = str(native.launcher_path())
    except UserError as e:
        pytest.skip(str(e))
    p = subprocess.run([path, "--syscall-mode=none", "--", "/bin/echo", "hi"],
                       capture_output=True, text=True, timeout=RUN_TIMEOUT,
                              check=False)
    if p.returncode != 0 or p.stdout != "hi\n":
        pytest.skip(f"kbox-launch --syscall-mode=none not available yet: {p.stderr.strip()[:200]}")
    return path


def _same(LAUNCH: str, argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    native_run = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                                check=False, **kw)
    ours = subprocess.run([LAUNCH, "--syscall-mode=none", "--", *argv], capture_output=True,
                          text=True, timeout=RUN_TIMEOUT, check=False, **kw)
    assert (ours.returncode, ours.stdout, ours.stderr) == \
        (native_run.returncode, native_run.stdout, native_run.stderr), argv
    return ours


@needs_x86_debian
def test_ls_runs_like_native(LAUNCH: str) -> None:
    # /usr, not /: the link count of /proc (its process count) and the mtime of /tmp change
    # between the two runs while other tests run beside this one.
    assert _same(LAUNCH, ["/bin/ls", "-la", "/usr"]).stdout


@needs_x86_debian
def test_python_runs_like_native(LAUNCH: str) -> None:
    out = _same(LAUNCH, ["/usr/bin/python3", "-c",
                         "import sys, os; print(sys.argv, len(os.environ) > 0, sum(range(10**5)))"])
    assert "4999950000" in out.stdout


@needs_x86_debian
def test_busybox_runs_like_native(LAUNCH: str) -> None:
    if not os.path.exists("/bin/busybox"):
        pytest.skip("busybox-static not installed")
    # Only builtins and applets called directly: busybox runs other applets through
    # /proc/self/exe, which is kbox-launch when nothing interposes (--syscall-mode=none).
    _same(LAUNCH, ["/bin/busybox", "sh", "-c", "echo $((6*7)); for i in a b; do echo $i; done"])
    # Not "/": its /proc entry's link count is the number of processes, which the other
    # test worker changes between the two runs.
    _same(LAUNCH, ["/bin/busybox", "ls", "-l", "/usr"])


@pytest.mark.parametrize("kind", ["static", "static-pie", "dynamic"])
def test_gcc_programs_run_like_native(LAUNCH: str, BINS: dict[str, str], kind: str) -> None:
    out = _same(LAUNCH, [BINS[kind], "a", "b c"])
    assert out.returncode == 3 and "argc=3" in out.stdout


def test_aarch64_programs_run_under_qemu_user(tmp_path: Path) -> None:
    """The aarch64 launcher (cross-built) under qemu-aarch64: static, static-pie, dynamic."""
    qemu = shutil.which("qemu-aarch64")
    if not qemu or not shutil.which("aarch64-linux-gnu-gcc"):
        pytest.skip("needs qemu-user and gcc-aarch64-linux-gnu")
    launch = str(native.native_dir("aarch64") / "kbox-launch")
    head = Path(launch).read_bytes()[:20] if os.path.exists(launch) else b""
    if head[18:20] != (183).to_bytes(2, "little"):
        pytest.skip(f"no aarch64 build at {launch}: make -C csrc ARCH=aarch64 "
                    f"CROSS_COMPILE=aarch64-linux-gnu- O={native.native_dir('aarch64')}")
    probe = subprocess.run([qemu, launch, "--syscall-mode=none", "--", "/bin/true"],
                           capture_output=True, text=True, timeout=RUN_TIMEOUT,
                              check=False)
    if "syscall-mode" in probe.stderr:
        pytest.skip(f"aarch64 kbox-launch has no --syscall-mode=none yet: {probe.stderr[:200]}")
    for kind, flags in (("static", ["-static"]), ("static-pie", ["-static-pie"]), ("dynamic", [])):
        prog = _cc(tmp_path, "aarch64-linux-gnu-gcc", f"a64-{kind}", *flags)
        cmd = [qemu, "-L", "/usr/aarch64-linux-gnu"]
        want = subprocess.run([*cmd, prog, "x", "y"], capture_output=True, text=True,
                              timeout=RUN_TIMEOUT, check=False)
        got = subprocess.run([*cmd, launch, "--syscall-mode=none", "--", prog, "x", "y"],
                             capture_output=True, text=True, timeout=RUN_TIMEOUT,
                              check=False)
        assert (got.returncode, got.stdout) == (want.returncode, want.stdout) == \
            (3, f"argc=3 [{prog}] [x] [y] execfn={prog} home={os.environ.get('HOME', '-')} bss=0\n")


def test_shebang_script_runs_like_native(LAUNCH: str, tmp_path: Path) -> None:
    s = _script(tmp_path / "script.sh", '#!/bin/sh -e\necho "$0" "$@"; exit 5\n')
    out = _same(LAUNCH, [s, "x", "y z"])
    assert out.returncode == 5
