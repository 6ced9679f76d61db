"""The C core's layering, checked from its #include lines.

Modules are files without their extension (tiers/trap.c and tiers/trap.h are one module).
Including a header makes the including module depend on the header's module, and the
graph must have no cycles; arch code (csrc/arch/) sits at the bottom, under everything but
lib/, and lib/ depends on nothing of kbox's but itself.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parent.parent / "csrc"
ARCHES = ("x86_64", "aarch64")
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def sources() -> list[Path]:
    return sorted(p for p in CSRC.rglob("*") if p.suffix in (".c", ".h", ".S") and p.is_file())


def resolve(src: Path, name: str) -> Path:
    """Where the compiler finds `name` for `src`: its own directory, then -I. and
    -Iarch/$(ARCH) (csrc/Makefile), for the arch `src` belongs to or either."""
    rel = src.relative_to(CSRC).parts
    arches = [rel[1]] if rel[0] == "arch" and rel[1] in ARCHES else list(ARCHES)
    for base in [src.parent, CSRC] + [CSRC / "arch" / a for a in arches]:
        if (base / name).is_file():
            return (base / name).resolve()
    raise AssertionError(f"{src.relative_to(CSRC)}: #include \"{name}\" not found")


def module(p: Path) -> str:
    return str(p.relative_to(CSRC).with_suffix(""))


def includes() -> dict[Path, list[Path]]:
    return {src: [resolve(src, n) for n in INCLUDE.findall(src.read_text())] for src in sources()}


def test_every_include_resolves_inside_csrc():
    assert sum(len(v) for v in includes().values()) > 100


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_module_graph_has_no_cycles():
    graph: dict[str, set[str]] = {}
    for src, deps in includes().items():
        graph.setdefault(module(src), set()).update(module(d) for d in deps if module(d) != module(src))
    cycle = find_cycle(graph)
    assert not cycle, "include cycle: " + " -> ".join(cycle)


def _layer(p: Path) -> str:
    parts = p.relative_to(CSRC).parts
    return "arch" if parts[0] == "arch" or parts == ("arch.h",) else parts[0] if len(parts) > 1 else "top"


@pytest.mark.parametrize("layer, allowed", [("arch", {"arch", "lib"}), ("lib", {"lib"})])
def test_lower_layers_include_nothing_above_them(layer, allowed):
    bad = [f"{src.relative_to(CSRC)} includes {dep.relative_to(CSRC)}"
           for src, deps in includes().items() if _layer(src) == layer
           for dep in deps if _layer(dep) not in allowed]
    assert not bad, "\n".join(bad)


# The upper side of arch/interface.h: what arch code may reach upward, by design (the
# trampolines read the passthrough table and call the slow path; _start calls kbox_main).
UPCALLS = {"kbox_trap_fast", "kbox_own_fd", "kbox_rewrite_slow", "kbox_main"}


def _link_graph(objdir: Path) -> dict[str, set[str]]:
    """Module -> modules whose symbols its object uses, from the built launcher's objects."""
    import subprocess
    defined: dict[str, str] = {}
    undefined: dict[str, set[str]] = {}
    for obj in sorted(objdir.rglob("*.o")):
        m = str(obj.relative_to(objdir).with_suffix(""))
        if not any((CSRC / m).with_suffix(ext).is_file() for ext in (".c", ".S")):
            continue  # left over from a source that no longer exists
        out = subprocess.run(["nm", obj], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            f = line.split()
            if len(f) == 2 and f[0] == "U":
                undefined.setdefault(m, set()).add(f[1])
            elif len(f) == 3 and f[1] in "TDBR":
                defined[f[2]] = m
    return {m: {defined[s] for s in syms if s in defined and defined[s] != m and s not in UPCALLS}
            for m, syms in undefined.items()}


def test_no_module_calls_round_back_into_itself():
    import platform
    objdir = Path(__file__).resolve().parent.parent / "kbox" / "_bin" / platform.machine() / "static"
    if not objdir.is_dir():
        pytest.skip(f"no C core build at {objdir} (scripts/setup-host builds it)")
    cycle = find_cycle(_link_graph(objdir))
    assert not cycle, "modules that call each other round: " + " -> ".join(cycle)
