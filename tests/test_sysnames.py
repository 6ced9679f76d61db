"""kbox/sysnames.py, generated for Python, names the same syscalls as the C core's tables.

(scripts/gen-sysent.py writes both; test_trace.py's up-to-date check covers the generator,
this covers what was committed.)"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from kbox import native
from kbox.sysnames import SYSCALL_NAMES

REPO = Path(__file__).resolve().parents[1]


def c_table(arch: str) -> dict[int, str]:
    text = (REPO / f"csrc/arch/{arch}/sysent.c").read_text()
    return {int(nr): name for nr, name in re.findall(r'^\s+\[(\d+)\] = \{ "(\w+)"', text, re.MULTILINE)}


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_python_names_are_the_c_tables_names(arch: str) -> None:
    assert SYSCALL_NAMES[arch] == c_table(arch)


def test_python_names_are_what_the_hosts_core_answers() -> None:
    lib, ffi = native.lib(), native.ffi()
    names = SYSCALL_NAMES[native.host_arch()]
    for nr in range(lib.kbox_api_nr_max()):
        p = lib.kbox_api_syscall_name(nr)
        assert names.get(nr) == (None if p == ffi.NULL else ffi.string(p).decode()), nr
