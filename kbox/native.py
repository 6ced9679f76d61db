"""Locating and loading the C core.

The C core is built per target architecture into kbox/_bin/<arch>/ (kbox-launch, libkbox.so,
kbox-bench).  The binding is cffi in ABI mode: plain C prototypes, no compiler at import
time, so the same Python package works in a cross-built guest image.  Each area of the core
declares its exported functions in kbox/cdefs/<area>.h (plain prototypes, no preprocessor).
"""
from __future__ import annotations

import os
import platform
from functools import lru_cache
from pathlib import Path
from typing import Any

from kbox.errors import UserError

PACKAGE_DIR = Path(__file__).resolve().parent
CDEF_DIR = PACKAGE_DIR / "cdefs"


def host_arch() -> str:
    return platform.machine()


def native_dir(arch: str | None = None) -> Path:
    """Directory holding the C core for `arch` (default: this machine's)."""
    override = os.environ.get("KBOX_NATIVE_DIR")
    if override:
        return Path(override)
    return PACKAGE_DIR / "_bin" / (arch or host_arch())


def native_path(name: str, arch: str | None = None) -> Path:
    path = native_dir(arch) / name
    if not path.exists():
        raise UserError(
            f"kbox: the C core is not built ({path} is missing); run `pip install -e .` "
            f"or `make -C csrc O={native_dir(arch)}`",
            exit_code=1,
        )
    return path


def launcher_path() -> Path:
    return native_path("kbox-launch")


@lru_cache(maxsize=1)
def _ffi_lib() -> tuple[Any, Any]:
    import cffi

    ffi = cffi.FFI()
    for cdef in sorted(CDEF_DIR.glob("*.h")):
        ffi.cdef(cdef.read_text())
    lib = ffi.dlopen(str(native_path("libkbox.so")))
    return ffi, lib


def ffi() -> Any:
    return _ffi_lib()[0]


def lib() -> Any:
    return _ffi_lib()[1]
