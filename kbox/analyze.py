"""`kbox analyze PROG`: where a program makes system calls, and which tier `auto` would pick.

For the main executable and, when it is dynamic, its ELF interpreter and the libc it needs
(DT_NEEDED resolved through DT_RUNPATH/RPATH and the standard multiarch directories, and a
cross sysroot /usr/<triplet>/lib for foreign-architecture files), kbox/sitescan.py finds
every syscall instruction (how: see there); kbox/decide.py picks the tier from what it found
and the kernel's capabilities (kbox/kernel_caps.py), the same decision `kbox run` makes
without the analysis.

JSON (`kbox analyze --json`, `Report.to_json()`), one object:
  program        the path as given
  path           the ELF actually analysed (after #! scripts)
  scripts        [{script, interpreter, arg}] followed to reach it, outermost first
  machine        "x86_64" | "aarch64" | other
  class          32 | 64
  type           "EXEC" | "DYN"
  linkage        "static" | "static-pie" | "dynamic" | "shared-object"
  interpreter    PT_INTERP string or null
  setuid, setgid booleans
  objects        [{path, role ("main"|"interpreter"|"libc"), machine, sections_used,
                   boundaries, bytes_scanned, resyncs,
                   counts {sites, wrapper, complex, straddling, fork_clone, unknown_nr},
                   straddling [site], fork_clone [site], sites [site] (only with --all-sites)}]
                 site = {addr, offset, size, insn, symbol, symbol_offset, nr, nr_name,
                         class ("WRAPPER"|"COMPLEX"), straddles, fork_clone, abi}
  missing        [names of needed objects that could not be found]
  rewrite_blockers  [reasons the rewrite tier must not be chosen for this program]
  kernel         the KernelCaps used (see KernelCaps.to_dict) or null
  auto           {mode: "rewrite"|"trap"|"seccomp"|"none", reason} or null
  promotion      the rewrite tier's wrapper-call promotion (Promotion.to_dict) or null
  elapsed_s      analysis time in seconds
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from elftools.elf.elffile import ELFFile

from kbox.decide import Decision, decide_tier
from kbox.elfinfo import SUPPORTED, ElfInfo, inspect, parse_elf
from kbox.errors import UserError
from kbox.kernel_caps import KernelCaps, TierSupport, probe_kernel_caps
from kbox.promote import Promotion, analyze_promotion
from kbox.sitescan import ObjectReport, Site, analyze_object

# ---------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------

@dataclass
class Report:
    program: str
    info: ElfInfo
    objects: list[ObjectReport]
    missing: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    kernel: KernelCaps | None = None
    decision: Decision | None = None
    promotion: Promotion | None = None

    @property
    def main(self) -> ObjectReport:
        return self.objects[0]

    def object(self, role: str) -> ObjectReport | None:
        return next((o for o in self.objects if o.role == role), None)

    @property
    def rewrite_blockers(self) -> list[str]:
        out = []
        for o in self.objects:
            # int 0x80 / sysenter: the i386 table from 64-bit code
            legacy = [s for s in o.sites if s.abi != o.info.machine]
            if legacy:
                out.append(f"{os.path.basename(o.path)} has {len(legacy)} 32-bit ABI site(s) "
                           f"({legacy[0].insn} at {legacy[0].where}) the rewriter does not patch")
        return out

    def decide(self, caps: TierSupport) -> Decision:
        """The tier auto picks for this program on `caps`, with what the analysis found."""
        return decide_tier(self.info, caps, blockers=self.rewrite_blockers,
                           straddling=sum(len(o.straddling) for o in self.objects))

    def to_dict(self, all_sites: bool = False) -> dict[str, Any]:
        i = self.info
        return {
            "program": self.program, "path": i.path,
            "scripts": [{"script": s.script, "interpreter": s.interpreter, "arg": s.arg} for s in i.scripts],
            "machine": i.machine, "class": i.elfclass, "type": i.etype, "linkage": i.linkage,
            "interpreter": i.interpreter, "setuid": i.setuid, "setgid": i.setgid,
            "objects": [o.to_dict(all_sites) for o in self.objects],
            "missing": list(self.missing),
            "rewrite_blockers": self.rewrite_blockers,
            "kernel": self.kernel.to_dict() if self.kernel else None,
            "auto": self.decision._asdict() if self.decision else None,
            "promotion": self.promotion.to_dict() if self.promotion else None,
            "elapsed_s": round(self.elapsed_s, 3),
        }

    def to_json(self, all_sites: bool = False) -> str:
        return json.dumps(self.to_dict(all_sites), sort_keys=False)

    def to_text(self, all_sites: bool = False) -> str:
        return format_text(self, all_sites)


# ---------------------------------------------------------------------------------------
# Finding the interpreter and libc
# ---------------------------------------------------------------------------------------

def _is_libc(name: str) -> bool:
    return bool(re.match(r"^libc\.so(\.\d+)*$", name)) or name.startswith("libc.musl-")


def _candidate_dirs(info: ElfInfo, origin: str) -> list[str]:
    dirs = [p.replace("$ORIGIN", origin).replace("${ORIGIN}", origin) for p in info.runpath]
    trip = info.triplet
    if trip:
        dirs += [f"/lib/{trip}", f"/usr/lib/{trip}"]
    if info.elfclass == 64:
        dirs += ["/lib64", "/usr/lib64"]
    dirs += ["/lib", "/usr/lib"]
    if trip:
        dirs += [f"/usr/{trip}/lib", f"/usr/{trip}/lib64"]   # Debian cross sysroots
    return dirs


def _matching(path: str, info: ElfInfo) -> ElfInfo | None:
    try:
        cand = parse_elf(path)
    except UserError:
        return None
    if (cand.machine, cand.elfclass) != (info.machine, info.elfclass):
        return None
    return cand


def find_library(name: str, info: ElfInfo) -> tuple[str, ElfInfo] | None:
    """Resolve a DT_NEEDED name for `info` the way ld.so would (minus ld.so.cache)."""
    if "/" in name:
        got = _matching(name, info)
        return (name, got) if got else None
    origin = os.path.dirname(os.path.abspath(info.path))
    for d in _candidate_dirs(info, origin):
        p = os.path.join(d, name)
        if os.path.isfile(p):
            got = _matching(p, info)
            if got:
                return p, got
    return None


def find_interpreter(info: ElfInfo) -> tuple[str, ElfInfo] | None:
    assert info.interpreter is not None
    got = _matching(info.interpreter, info) if os.path.isfile(info.interpreter) else None
    if got:
        return info.interpreter, got
    # A foreign-architecture file names its loader by its in-target path; try the sysroot.
    trip = info.triplet
    base = os.path.basename(info.interpreter)
    for d in ([f"/usr/{trip}/lib", f"/usr/{trip}/lib64"] if trip else []):
        p = os.path.join(d, base)
        if os.path.isfile(p) and (got := _matching(p, info)):
            return p, got
    return None


def analyze(path: str, *, caps: KernelCaps | None = None, display: str | None = None) -> Report:
    """Analyse `path` (following #! scripts) and its interpreter and libc.

    With `caps`, the report also carries the auto decision for that kernel.
    """
    t0 = time.monotonic()
    display = display or path
    info = inspect(path, check_runnable=False, display=display)
    if (info.machine, info.elfclass) not in SUPPORTED:
        raise UserError(f"kbox: {display}: analysis supports 64-bit x86_64 and aarch64 ELF files, "
                        f"not {info.elfclass}-bit {info.machine}", 126)
    objects = [analyze_object(info.path, "main", info)]
    seen = {os.path.realpath(info.path)}
    missing: list[str] = []
    if info.interpreter is not None:
        found = find_interpreter(info)
        if found is None:
            missing.append(info.interpreter)
        elif os.path.realpath(found[0]) not in seen:
            seen.add(os.path.realpath(found[0]))
            objects.append(analyze_object(found[0], "interpreter", found[1]))
    for name in info.needed:
        if not _is_libc(name):
            continue
        lib = find_library(name, info)
        if lib is None:
            missing.append(name)
        elif os.path.realpath(lib[0]) not in seen:
            seen.add(os.path.realpath(lib[0]))
            objects.append(analyze_object(lib[0], "libc", lib[1]))
    report = Report(program=display, info=info, objects=objects, missing=missing,
                    promotion=_promotion(info))
    if caps is not None:
        report.kernel = caps
        report.decision = report.decide(caps)
    report.elapsed_s = time.monotonic() - t0
    return report


def _promotion(info: ElfInfo) -> Promotion:
    """The rewrite tier's wrapper-call promotion for the main program (kbox/promote.py)."""
    with open(info.path, "rb") as fh:
        data = fh.read()
        names: dict[str, int] = {}
        try:
            fh.seek(0)
            symtab = ELFFile(fh).get_section_by_name(".symtab")
            if symtab is not None:
                names = {s.name: s["st_value"] for s in symtab.iter_symbols()
                         if s.name in ("__syscall_cp_c", "__syscall_cp_asm")}
        except Exception:  # noqa: BLE001 - odd section headers: no names, still a verdict
            names = {}
    segments = [(s.vaddr, data[s.offset: s.offset + s.filesz]) for s in info.exec_segments]
    return analyze_promotion(info.machine, info.linkage, segments, names)


# ---------------------------------------------------------------------------------------
# Human output and the CLI hooks
# ---------------------------------------------------------------------------------------

def format_text(report: Report, all_sites: bool = False) -> str:
    i = report.info
    lines = [f"program:       {report.program}"]
    for bang in i.scripts:
        lines.append(f"  #! script:   {bang.script} -> {bang.interpreter}{' ' + bang.arg if bang.arg else ''}")
    lines.append(f"architecture:  {i.machine} ({i.elfclass}-bit, {'little' if i.little_endian else 'big'}-endian)")
    kind = {"static": "static", "static-pie": "static-pie", "dynamic": "dynamic",
            "shared-object": "shared object"}[i.linkage]
    lines.append(f"linkage:       {kind} ({i.etype}), entry {i.entry:#x}")
    lines.append(f"interpreter:   {i.interpreter or '-'}")
    priv = [b for b, on in (("setuid", i.setuid), ("setgid", i.setgid)) if on]
    lines.append(f"privileges:    {', '.join(priv) or 'none (no setuid/setgid bit)'}")
    for o in report.objects:
        how = "sections+symbols" if o.sections_used else "segments"
        lines.append("")
        lines.append(f"[{o.role}] {o.path}  ({o.bytes_scanned} code bytes, {how}, {o.boundaries} boundaries)")
        unknown = sum(1 for s in o.sites if s.nr is None)
        lines.append(f"  syscall sites: {len(o.sites)} (wrapper {len(o.wrappers)}, complex {len(o.complex)}; "
                     f"number unknown for {unknown})")
        lines.append(f"  page-straddling sites: {len(o.straddling)}")
        for s in o.straddling:
            lines.append(f"    {s.where}  {s.insn}{_nr_text(s)}  (bytes {s.addr:#x}..{s.addr + s.size - 1:#x})")
        lines.append(f"  fork/clone sites: {len(o.fork_sites)}")
        for s in o.fork_sites:
            lines.append(f"    {s.where}  {s.fork_clone} ({s.nr}), {s.kind}")
        if all_sites:
            lines.append("  all sites:")
            for s in o.sites:
                flag = " STRADDLES" if s.straddles else ""
                lines.append(f"    {s.where}  {s.insn}{_nr_text(s)}  {s.kind}{flag}")
    if report.missing:
        lines.append("")
        lines.append(f"not found: {', '.join(report.missing)}")
    for b in report.rewrite_blockers:
        lines.append(f"rewrite blocker: {b}")
    if report.promotion is not None:
        p = report.promotion
        head = f"{len(p.sites)} call site(s) promoted" if p.applies else "none"
        lines.append(f"wrapper-call promotion (rewrite tier): {head} — {p.reason}")
        if all_sites and p.sites:
            lines.append("  promoted: " + ", ".join(hex(a) for a in p.sites))
    lines.append("")
    if report.decision:
        mode, reason = report.decision
        lines.append(f"auto would pick: {mode} — {reason}")
    lines.append(f"(analysed in {report.elapsed_s:.2f} s)")
    return "\n".join(lines)


def _nr_text(s: Site) -> str:
    if s.nr is None:
        return ", nr ?"
    return f", nr {s.nr}" + (f" {s.nr_name}" if s.nr_name else "")


def add_analyze_command(subparsers: Any) -> None:
    """Register `kbox analyze PROG [--json] [--all-sites]` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "analyze",
        help="report a program's syscall sites and which mode auto would pick",
        description=(
            "Inspect PROG (searched in PATH like a shell; #! scripts are followed) and, when it "
            "is dynamic, its ELF interpreter and libc: architecture, linkage, every syscall "
            "instruction found by capstone (wrapper or complex, page-straddling, fork/clone), "
            "and the mode --syscall-mode=auto would pick on this kernel, with the reason."
        ),
    )
    p.add_argument("prog", metavar="PROG", help="program name or path")
    p.add_argument("--json", action="store_true", help="print one JSON object (keys: see kbox/analyze.py)")
    p.add_argument("--all-sites", action="store_true", help="list every syscall site, not only the notable ones")
    p.set_defaults(func=run_analyze)


def run_analyze(args: argparse.Namespace) -> int:
    from kbox.elfinfo import resolve_program

    path = resolve_program(args.prog)
    caps = probe_kernel_caps()
    report = analyze(path, caps=caps, display=args.prog)
    out = report.to_json(args.all_sites) if args.json else report.to_text(args.all_sites)
    sys.stdout.write(out + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (`python -m kbox.analyze PROG`): `kbox analyze PROG` without kbox.cli."""
    parser = argparse.ArgumentParser(prog="kbox")
    sub = parser.add_subparsers(dest="command", required=True)
    add_analyze_command(sub)
    args = parser.parse_args(["analyze", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except UserError as exc:
        sys.stderr.write(f"{exc}\n")
        return exc.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
