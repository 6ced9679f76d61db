"""kbox.promote: which wrapper calls the rewrite tier promotes (aarch64 musl), checked on
code built here against musl and glibc, and on hand-made instruction words.

The aarch64 VMs run the same programs under the rewrite tier with the promotion in place
(vmtests/test_matrix.py, the NAME-musl programs) and compare their output with native runs.
"""
from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from kbox.analyze import analyze
from kbox.promote import SCCP, scan

MUSL_A64_SPECS = Path("/usr/lib/aarch64-linux-musl/musl-gcc.specs")
CROSS = "aarch64-linux-gnu-gcc"

B = 0x14000000
BL = 0x94000000


def _branch(op: int, frm: int, to: int) -> int:
    return op | (((to - frm) >> 2) & 0x03ffffff)


def _words(*ws: int) -> bytes:
    return struct.pack(f"<{len(ws)}I", *ws)


def test_a_bl_reaching_sccp_through_a_b_is_promoted() -> None:
    base = 0x400000
    # 0x00: bl wrapper (0x10); 0x04: b wrapper (a tail call); 0x10: b sccp (0x20); 0x20: sccp
    code = bytearray(_words(*([0xd503201f] * 8), *SCCP))
    code[0:4] = _words(_branch(BL, base, base + 0x10))
    code[4:8] = _words(_branch(B, base + 4, base + 0x10))
    code[0x10:0x14] = _words(_branch(B, base + 0x10, base + 0x20))
    sites, wrapper = scan(bytes(code), base)
    assert sites == [base] and wrapper == base + 0x20


def test_a_near_miss_of_sccp_is_not_promoted() -> None:
    base = 0x400000
    changed = list(SCCP)
    changed[3] = 0xaa0403e2            # mov x2, x4: not musl's shuffle
    code = _words(_branch(BL, base, base + 8), 0xd503201f, *changed)
    assert scan(code, base) == ([], None)


def _cross_musl(src: str, out: Path, *flags: str) -> Path:
    if not (MUSL_A64_SPECS.exists() and shutil.which(CROSS)):
        pytest.fail(f"aarch64 musl is missing ({MUSL_A64_SPECS}); scripts/setup-host installs "
                    "musl-dev:arm64 and gcc-aarch64-linux-gnu")
    c = out.with_suffix(".c")
    c.write_text(src)
    subprocess.run([CROSS, "-specs", str(MUSL_A64_SPECS), "-static", "-O2", "-o", str(out), str(c),
                    *flags], check=True, capture_output=True)
    return out


FILEIO = r'''
#include <fcntl.h>
#include <unistd.h>
int main(void) { char b[8]; int fd = open("/etc/hostname", O_RDONLY); read(fd, b, 8); close(fd); return 0; }
'''
CANCEL = r'''
#include <pthread.h>
#include <unistd.h>
static void *t(void *a) { char c; read(0, &c, 1); return a; }
int main(void) { pthread_t th; pthread_create(&th, 0, t, 0); pthread_cancel(th); pthread_join(th, 0); return 0; }
'''


def test_static_musl_without_pthread_cancel_has_its_wrapper_calls_promoted(tmp_path: Path) -> None:
    prog = _cross_musl(FILEIO, tmp_path / "fileio")
    p = analyze(str(prog)).promotion
    assert p is not None and p.applies and len(p.sites) >= 3, p   # open, read, close at least
    text = subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(prog)], capture_output=True,
                          text=True, check=True).stdout
    for site in p.sites:
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(f"{site:x}:"))
        assert "\tbl\t" in line and "__syscall_cp" in line, line


def test_static_musl_with_pthread_cancel_keeps_its_cancellation_checks(tmp_path: Path) -> None:
    prog = _cross_musl(CANCEL, tmp_path / "cancel", "-pthread")
    p = analyze(str(prog)).promotion
    assert p is not None and not p.applies and "pthread_cancel" in p.reason, p


def test_glibc_and_x86_64_programs_are_not_promoted(tmp_path: Path) -> None:
    c = tmp_path / "g.c"
    c.write_text("int main(void){return 0;}\n")
    subprocess.run([CROSS, "-static", "-o", str(tmp_path / "g"), str(c)], check=True)
    p = analyze(str(tmp_path / "g")).promotion
    assert p is not None and not p.applies and "not a musl program" in p.reason
    p = analyze("/bin/true").promotion
    assert p is not None and not p.applies
