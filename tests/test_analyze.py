"""kbox.analyze and kbox.sitescan: syscall sites in real libcs (both architectures),
controlled asm, and the auto decision with what the analysis found (kbox.decide).

Facts verified with objdump on this machine (Debian 12, libc6 2.36-9+deb12u14):
- x86_64 libc.so.6: getpid is `mov $0x27,%eax; syscall; ret` at 0xd54e0 (aliases getpid and
  __getpid); __open64_nocancel+63 (0xfcfff) and getcontext+127 (0x3efff) hold `syscall`
  instructions whose first byte is the last byte of a page; 526 syscall instructions in all.
- aarch64 cross libc.so.6: getpid is `nop; mov x8,#0xac; svc #0; ret`; clone is nr 220.
The differential tests recount with objdump so they hold for other libc builds too.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from elf_corpus import corpus

from kbox import analyze as A
from kbox import sitescan
from kbox.analyze import analyze
from kbox.elfinfo import host_machine
from kbox.errors import UserError
from kbox.kernel_caps import KernelCaps
from kbox.sitescan import COMPLEX, WRAPPER, analyze_object

LIBC_X86 = "/lib/x86_64-linux-gnu/libc.so.6"
LIBC_A64 = "/usr/aarch64-linux-gnu/lib/libc.so.6"
needs_x86 = pytest.mark.skipif(not (host_machine() == "x86_64" and os.path.exists(LIBC_X86)),
                               reason="needs a Debian x86_64 host")
needs_a64 = pytest.mark.skipif(not (os.path.exists(LIBC_A64) and shutil.which("aarch64-linux-gnu-gcc")),
                               reason="needs gcc-aarch64-linux-gnu and libc6-dev-arm64-cross")

X86_ASM = r'''
__asm__(
    ".text\n"
    ".p2align 12\n"
    "kb_pad: .skip 4090, 0x90\n"
    ".globl kb_straddle\n.type kb_straddle,@function\n"
    "kb_straddle: mov $39, %eax\n syscall\n ret\n.size kb_straddle, .-kb_straddle\n"
    ".globl kb_imm\n.type kb_imm,@function\n"
    "kb_imm: mov $0x050f, %eax\n ret\n.size kb_imm, .-kb_imm\n"
    ".globl kb_int80\n.type kb_int80,@function\n"
    "kb_int80: mov $20, %eax\n int $0x80\n ret\n.size kb_int80, .-kb_int80\n"
    ".globl kb_complex\n.type kb_complex,@function\n"
    "kb_complex: mov $39, %eax\n mov %rdi, %rsi\n syscall\n ret\n.size kb_complex, .-kb_complex\n"
    ".globl kb_join\n.type kb_join,@function\n"
    "kb_join: test %edi, %edi\n jne 1f\n mov $39, %eax\n1: syscall\n ret\n.size kb_join, .-kb_join\n"
    ".globl kb_vfork\n.type kb_vfork,@function\n"
    "kb_vfork: mov $58, %eax\n syscall\n ret\n.size kb_vfork, .-kb_vfork\n"
    ".globl kb_errchk\n.type kb_errchk,@function\n"
    "kb_errchk: mov $39, %eax\n syscall\n cmp $-4095, %rax\n jae 1f\n ret\n1: neg %eax\n ret\n"
    ".size kb_errchk, .-kb_errchk\n"
    ".p2align 4\n"
    "kb_data_in_text: .byte 0xb8, 0x3c, 0, 0, 0, 0x0f, 0x05, 0xc3\n"
);
int main(void) { return 0; }
'''

A64_ASM = r'''
__asm__(
    ".text\n"
    ".p2align 12\n"
    ".globl kb_getpid\n.type kb_getpid,%function\n"
    "kb_getpid: mov x8, #172\n svc #0\n ret\n.size kb_getpid, .-kb_getpid\n"
    ".globl kb_clone\n.type kb_clone,%function\n"
    "kb_clone: mov x8, #220\n svc #0\n cmn x0, #1, lsl #12\n b.hi 1f\n ret\n1: neg x0, x0\n ret\n"
    ".size kb_clone, .-kb_clone\n"
    ".globl kb_join\n.type kb_join,%function\n"
    "kb_join: cbz x0, 1f\n mov x8, #172\n1: svc #0\n ret\n.size kb_join, .-kb_join\n"
    ".globl kb_literal\n.type kb_literal,%function\n"
    "kb_literal: ldr x0, 1f\n ret\n1: .word 0xd4000001\n .word 0xd4000001\n.size kb_literal, .-kb_literal\n"
);
int main(void) { return 0; }
'''


def _cc(tmp: Path, cc: str, src: str, name: str, *flags: str) -> str:
    if not shutil.which(cc):
        pytest.skip(f"{cc} not installed")
    c = tmp / f"{name}.c"
    c.write_text(src)
    out = tmp / name
    subprocess.run([cc, "-O1", *flags, "-o", str(out), str(c)], check=True, timeout=120)
    return str(out)


@pytest.fixture(scope="module")
def GUESTS(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("analyze")
    out = {"x86": _cc(tmp, "gcc", X86_ASM, "x86", "-static")}
    if shutil.which("aarch64-linux-gnu-gcc"):
        out["a64"] = _cc(tmp, "aarch64-linux-gnu-gcc", A64_ASM, "a64", "-static")
        out["a64dyn"] = _cc(tmp, "aarch64-linux-gnu-gcc", A64_ASM, "a64dyn")
    return out


def _caps(**kw: object) -> KernelCaps:
    base = {"machine": "x86_64", "release": "6.12", "seccomp_filter": True, "seccomp_trap": True,
                "seccomp_user_notif": True, "sud": True, "notify_sync_wakeup": True,
                "rewrite_available": False}
    base.update(kw)
    return KernelCaps(**base)  # type: ignore[arg-type]


def _by_symbol(rep: sitescan.ObjectReport) -> dict[str, list[sitescan.Site]]:
    out: dict[str, list[sitescan.Site]] = {}
    for s in rep.sites:
        out.setdefault(s.symbol or "?", []).append(s)
    return out


def _objdump_sites(objdump: str, path: str, pattern: str) -> set[int]:
    if not shutil.which(objdump):
        pytest.skip(f"{objdump} not installed")
    out = subprocess.run([objdump, "-d", path], capture_output=True, text=True, check=True, timeout=120).stdout
    import re
    rx = re.compile(r"^\s*([0-9a-f]+):\s+(?:[0-9a-f]{2} )+\s*\t" + pattern, re.MULTILINE)
    rx4 = re.compile(r"^\s*([0-9a-f]+):\s+[0-9a-f]{8}\s+\t?" + pattern, re.MULTILINE)
    return {int(m.group(1), 16) for r in (rx, rx4) for m in r.finditer(out)}


# ---- controlled code ------------------------------------------------------------------

@needs_x86
def test_x86_sites_are_classified(GUESTS: dict[str, str]) -> None:
    rep = analyze_object(GUESTS["x86"], "main")
    s = _by_symbol(rep)
    straddle, = s["kb_straddle"]
    assert (straddle.nr, straddle.kind, straddle.straddles, straddle.symbol_offset) == (39, WRAPPER, True, 5)
    assert straddle.addr % 4096 == 4095
    assert "kb_imm" not in s, "0f 05 inside an immediate is not a syscall"
    int80, = s["kb_int80"]
    assert (int80.insn, int80.nr, int80.abi) == ("int 0x80", 20, "i386")
    cx, = s["kb_complex"]
    assert (cx.nr, cx.kind) == (39, COMPLEX)
    join, = s["kb_join"]
    assert join.nr is None, "a branch into the syscall means the number is not known"
    vf, = s["kb_vfork"]
    assert (vf.fork_clone, vf.kind) == ("vfork", WRAPPER)
    ec, = s["kb_errchk"]
    assert (ec.nr, ec.kind) == (39, WRAPPER)
    # Bytes of `mov $60,%eax; syscall` stored between functions are data, not a site.
    assert not [x for x in rep.sites if x.symbol is None and x.nr == 60]


@needs_x86
def test_int80_blocks_rewrite(GUESTS: dict[str, str]) -> None:
    r = analyze(GUESTS["x86"])
    assert any("int 0x80" in b for b in r.rewrite_blockers)
    mode, reason = r.decide(_caps(rewrite_available=True))
    assert mode == "trap" and "int 0x80" in reason


@needs_a64
def test_aarch64_sites_are_classified(GUESTS: dict[str, str]) -> None:
    rep = analyze_object(GUESTS["a64"], "main")
    s = _by_symbol(rep)
    gp, = s["kb_getpid"]
    assert (gp.insn, gp.nr, gp.kind, gp.straddles) == ("svc #0", 172, WRAPPER, False)
    cl, = s["kb_clone"]
    assert (cl.nr, cl.fork_clone, cl.kind) == (220, "clone", WRAPPER)
    join, = s["kb_join"]
    assert join.nr is None
    assert "kb_literal" not in s, "svc encodings in a literal pool ($d) are data"


# ---- real libcs -----------------------------------------------------------------------

@needs_x86
def test_x86_libc_getpid_is_a_wrapper_and_open64_nocancel_straddles() -> None:
    rep = analyze_object(LIBC_X86, "libc")
    getpid = rep.find("getpid")
    assert [(s.nr, s.kind, s.symbol_offset) for s in getpid] == [(39, WRAPPER, 5)]
    strad = {(s.symbol, s.symbol_offset, s.nr) for s in rep.straddling}
    assert ("__open64_nocancel", 63, 257) in strad
    assert all(s.addr % 4096 == 4095 and s.size == 2 for s in rep.straddling)
    forks = {s.fork_clone for s in rep.fork_sites}
    assert forks == {"clone", "vfork", "clone3"}, forks   # glibc's fork() is clone(2)
    assert rep.resyncs == 0


@needs_x86
def test_x86_sites_match_objdump_exactly() -> None:
    for path in (LIBC_X86, "/lib64/ld-linux-x86-64.so.2", "/bin/busybox"):
        if not os.path.exists(path):
            continue
        ours = {s.addr for s in analyze_object(path, "main").sites}
        theirs = _objdump_sites("objdump", path, r"(?:syscall|sysenter|int\s+\$0x80)\s*$")
        assert ours == theirs, (path, sorted(ours ^ theirs)[:10])
        assert len(ours) > 40


@needs_a64
def test_aarch64_libc_sites() -> None:
    rep = analyze_object(LIBC_A64, "libc")
    assert rep.info.machine == "aarch64"
    assert [(s.nr, s.kind) for s in rep.find("getpid")] == [(172, WRAPPER)]
    assert {s.fork_clone for s in rep.fork_sites} == {"clone"}
    assert all(s.nr in (220, 435) for s in rep.fork_sites)
    assert not rep.straddling               # 4-byte aligned instructions never straddle
    theirs = _objdump_sites("aarch64-linux-gnu-objdump", LIBC_A64, r"svc\s")
    assert {s.addr for s in rep.sites} == theirs


@needs_a64
def test_foreign_dynamic_binary_finds_cross_interpreter_and_libc(GUESTS: dict[str, str]) -> None:
    r = analyze(GUESTS["a64dyn"], caps=_caps())
    roles = {o.role: o.path for o in r.objects}
    assert roles["interpreter"].startswith("/usr/aarch64-linux-gnu/")
    assert os.path.realpath(roles["libc"]) == os.path.realpath(LIBC_A64)
    assert r.decision is not None and r.decision[0] == "none" and "aarch64" in r.decision[1]


@needs_x86
def test_dynamic_program_includes_interpreter_and_libc() -> None:
    r = analyze("/bin/ls")
    assert [o.role for o in r.objects] == ["main", "interpreter", "libc"]
    assert os.path.realpath(r.object("libc").path) == os.path.realpath(LIBC_X86)  # type: ignore[union-attr]
    assert not r.missing


@needs_x86
def test_python3_and_libc_analyse_in_under_5_seconds() -> None:
    sitescan.clear_cache()
    t0 = time.monotonic()
    r = analyze("/usr/bin/python3")
    elapsed = time.monotonic() - t0
    assert elapsed < 5.0, elapsed
    assert r.object("libc") is not None and len(r.object("libc").sites) > 400  # type: ignore[union-attr]


# ---- auto decision --------------------------------------------------------------------

@needs_x86
def test_auto_decision_rules(tmp_path: Path) -> None:
    r = analyze("/bin/true")
    assert r.decide(_caps())[0] == "trap"
    assert r.decide(_caps(rewrite_available=True))[0] == "rewrite"
    mode, reason = r.decide(_caps(seccomp_trap=False))
    assert mode == "seccomp" and "RET_TRAP" in reason
    su = tmp_path / "su"
    shutil.copy("/bin/true", su)
    os.chmod(su, 0o4755)
    mode, reason = analyze(str(su)).decide(_caps(rewrite_available=True))
    assert mode == "seccomp" and "setuid" in reason


# ---- output and CLI -------------------------------------------------------------------

@needs_x86
def test_json_output_has_the_documented_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert A.main(["/bin/ls", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    for key in ("program", "path", "machine", "linkage", "interpreter", "setuid", "objects",
                "missing", "rewrite_blockers", "kernel", "auto", "elapsed_s"):
        assert key in d
    libc = next(o for o in d["objects"] if o["role"] == "libc")
    assert libc["counts"]["straddling"] >= 1 and "sites" not in libc
    assert d["auto"]["mode"] in ("trap", "seccomp", "rewrite")
    assert A.main(["/bin/ls", "--json", "--all-sites"]) == 0
    d = json.loads(capsys.readouterr().out)
    libc = next(o for o in d["objects"] if o["role"] == "libc")
    assert len(libc["sites"]) == libc["counts"]["sites"]


@needs_x86
def test_text_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert A.main(["ls"]) == 0
    out = capsys.readouterr().out
    assert "architecture:  x86_64" in out and "dynamic" in out
    assert "__open64_nocancel+63" in out
    assert "auto would pick: " in out


def test_cli_errors_are_one_line_with_shell_codes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert A.main([str(tmp_path / "missing")]) == 127
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No such file or directory" in err
    assert A.main(["kbox-no-such-command"]) == 127
    assert "command not found" in capsys.readouterr().err
    txt = tmp_path / "t"
    txt.write_text("hello\n")
    assert A.main([str(txt)]) == 126
    assert "not an ELF" in capsys.readouterr().err


def test_analyze_on_every_corpus_entry_gives_a_usererror_or_a_report(
    GUESTS: dict[str, str], tmp_path: Path,
) -> None:
    goods = [GUESTS["x86"]] + ([GUESTS["a64"]] if "a64" in GUESTS else [])
    bad: list[str] = []
    ok = 0
    for good in goods:
        for name, blob in corpus(Path(good).read_bytes(), flips=100):
            p = tmp_path / "v"
            p.write_bytes(blob)
            try:
                r = analyze(str(p))
                r.to_json(all_sites=True)
                r.to_text(all_sites=True)
                ok += 1
            except UserError:
                pass
            except Exception as exc:  # noqa: BLE001 - exactly what this test hunts for
                bad.append(f"{good} {name}: {type(exc).__name__}: {exc}")
            p.unlink()
    assert not bad, "\n".join(bad[:20])
    assert ok > 50
