"""Which Debian kernel a guest boots: the catalogue of apt's configured suites, and --kernel.

`kbox vm images --list-kernels` prints the catalogue; `--kernel SPEC` picks from it. SPEC is
- a series of the matrix ("6.1", "6.12"): the newest kernel of that series, what the matrix
  boots (resolved with the image's other packages, so the warm path asks apt nothing);
- a kernel version as `uname -r` shows it, with or without the flavour, or the package
  name: "6.1.0-50", "6.12.100+deb12", "6.1.0-50-amd64", "linux-image-6.1.0-50-amd64";
- a short form naming exactly one kernel: a prefix ending at a separator ("6.12.100" for
  6.12.100+deb12) or the upstream version of the Debian package ("6.1.170" is 6.1.0-47,
  package 6.1.170-3). Anything else is a one-line error listing what is available.

The catalogue comes from apt's own lists through apt-cache (the names of linux-image
packages of the arch's default flavour, then `apt-cache madison` for version and suite),
memoized per state of those lists, so it is as current as the last `apt-get update`.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass

from kbox.errors import UserError
from kbox.vm import cache, debian
from kbox.vm.arch import KERNELS, Arch

# uname -r without the flavour: 6.1.0-57, 6.12.118+deb12, 6.1.0-0.deb11.17, 6.12.12+bpo.
# At least x.y.z, so the meta-packages (linux-image-6.12-amd64) stay out; the flavour is
# matched exactly, so cloud-, rt- and -unsigned/-dbg packages stay out too.
_VERSION_RE = r"(\d+\.\d+\.\d+(?:-[0-9][0-9a-z.]*)?(?:\+[a-z0-9.]+)?)"
CATALOGUE_FORMAT = 1


@dataclass(frozen=True)
class DebianKernel:
    version: str          # "6.1.0-57": `uname -r` without the flavour
    flavour: str          # "amd64", "arm64"
    package_version: str  # "6.1.192-3"
    suite: str            # "bookworm-security"

    @property
    def package(self) -> str:
        return f"linux-image-{self.version}-{self.flavour}"

    @property
    def release(self) -> str:
        """`uname -r` in the guest."""
        return f"{self.version}-{self.flavour}"

    @property
    def series(self) -> str:
        return ".".join(self.version.split(".")[:2])

    @property
    def upstream(self) -> str:
        """The kernel.org version it is built from: "6.1.192" for package 6.1.192-3."""
        return re.split(r"[-~+]", self.package_version.split(":")[-1], maxsplit=1)[0]


@dataclass(frozen=True)
class KernelChoice:
    """What ensure_image() builds: `tag` names the image (a series, or a version that is
    not the newest of its series); `package` is None for a series, whose newest package is
    looked up together with the image's other packages."""
    tag: str
    package: str | None = None


def series_of(kernel: str) -> str:
    """The series of a --kernel value or an image's kernel tag: "6.1.0-50" -> "6.1",
    "6.12.100+deb12" -> "6.12", "6.12" -> "6.12" (vmtests compare kernels by series)."""
    m = re.match(r"(\d+\.\d+)(?=$|[.+-])", kernel)
    return m.group(1) if m else kernel


def sort_key(version: str) -> tuple[tuple[int, ...], str]:
    return debian._version_key(version)


# ---- reading the catalogue from apt -------------------------------------------------------

def parse_kernel_names(names: list[str], flavour: str) -> list[str]:
    """Versions of the linux-image-VERSION-FLAVOUR packages among `names` (apt-cache pkgnames)."""
    pat = re.compile(rf"linux-image-{_VERSION_RE}-{re.escape(flavour)}")
    out = {m.group(1) for n in names if (m := pat.fullmatch(n.strip().split(":")[0]))}
    return sorted(out, key=sort_key)


def parse_madison(text: str, debian_arch: str) -> dict[str, tuple[str, str]]:
    """`apt-cache madison` lines -> {package: (version, suite)} for `debian_arch`; the first
    line of a package is its highest version, the one apt-get download fetches by default."""
    out: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) != 3:
            continue
        name, version, source = parts[0].split(":")[0], parts[1], parts[2].split()
        # source: "URL suite/component arch Packages"
        if len(source) < 3 or source[2] != debian_arch or name in out:
            continue
        out[name] = (version, source[1].split("/")[0])
    return out


def _query(a: Arch) -> list[DebianKernel]:
    names = debian._run(["apt-cache", "pkgnames", "linux-image-"]).stdout.split()
    versions = parse_kernel_names(names, a.kernel_flavour)
    if not versions:
        return []
    foreign = a.debian != debian.host_debian_arch()
    pkgs = [f"linux-image-{v}-{a.kernel_flavour}" for v in versions]
    out = debian._run(["apt-cache", "madison", *[f"{p}:{a.debian}" if foreign else p
                                                 for p in pkgs]], check=False).stdout
    found = parse_madison(out, a.debian)
    return [DebianKernel(v, a.kernel_flavour, *found[p]) for v, p in zip(versions, pkgs)
            if p in found]


def catalogue(a: Arch) -> list[DebianKernel]:
    """Every kernel of `a`'s default flavour that apt can download, oldest first."""
    key = cache.input_key([], {"format": CATALOGUE_FORMAT, "arch": a.name,
                               "apt": debian.apt_state()})
    path = cache.cache_root() / "resolved" / f"kernels-{a.name}-{key}.json"
    try:
        return [DebianKernel(**k) for k in json.loads(path.read_text())]
    except (OSError, ValueError, TypeError):
        pass
    debian.check_arch_enabled(a.debian)
    kernels = _query(a)
    if not kernels:
        raise UserError(f"apt knows no linux-image-*-{a.kernel_flavour} package for {a.name} "
                        f"(apt-get update?)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps([asdict(k) for k in kernels], indent=1))
    tmp.replace(path)
    return kernels


def newest(kernels: list[DebianKernel], series: str) -> DebianKernel | None:
    of_series = [k for k in kernels if k.series == series]
    return max(of_series, key=lambda k: sort_key(k.version)) if of_series else None


# ---- --kernel SPEC -------------------------------------------------------------------------

def _matches(k: DebianKernel, spec: str) -> bool:
    if spec in (k.version, k.upstream, k.package_version):
        return True
    # A prefix that ends where a version part ends: 6.12.100 -> 6.12.100+deb12, not 6.12.1000.
    return k.version.startswith(spec) and k.version[len(spec)] in "-+.~"


def find(kernels: list[DebianKernel], spec: str, arch: str) -> DebianKernel:
    """The one kernel `spec` names (not a series: see choose()); UserError otherwise."""
    s = spec.strip().split(":")[0]
    flavour = kernels[0].flavour if kernels else ""
    s = s.removeprefix("linux-image-")
    if flavour and s.endswith(f"-{flavour}"):
        s = s[:-len(flavour) - 1]
    hits = [k for k in kernels if k.version == s] or [k for k in kernels if _matches(k, s)]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise UserError(f"--kernel {spec} is ambiguous for {arch}: it matches "
                        f"{', '.join(k.version for k in hits)}; give one of them", 2)
    raise UserError(f"unknown {arch} kernel {spec!r}; available: {summary(kernels)} "
                    f"(kbox vm images --list-kernels --arch {arch})", 2)


def summary(kernels: list[DebianKernel]) -> str:
    """One line: the matrix series with what they stand for, then every version."""
    series = [(s, n.version) for s in KERNELS if (n := newest(kernels, s))]
    head = (f"series {', '.join(s for s, _ in series)} (newest: "
            f"{', '.join(v for _, v in series)}) or a version: ") if series else ""
    return head + ", ".join(k.version for k in kernels)


def choose(a: Arch, spec: str) -> KernelChoice:
    """Turn --kernel SPEC into what to build. A matrix series needs no apt query here; a
    version that is the newest of its series shares that series' image."""
    spec = spec.strip()
    if spec in KERNELS:
        return KernelChoice(spec)
    kernels = catalogue(a)
    if re.fullmatch(r"\d+\.\d+", spec) and (n := newest(kernels, spec)) is not None:
        return KernelChoice(spec, n.package)
    k = find(kernels, spec, a.name)
    if k.series in KERNELS and newest(kernels, k.series) == k:
        return KernelChoice(k.series)
    return KernelChoice(k.version, k.package)


def validate(arches: list[Arch], specs: list[str]) -> None:
    """UserError for the first SPEC that some selected arch does not carry (pytest --kernel)."""
    for spec in specs:
        for a in arches:
            choose(a, spec)


def parse_specs(values: list[str] | None, arch_names: list[str]) -> list[str]:
    """pytest's --kernel (repeatable, comma-separated): the matrix series when not given;
    each value is checked against the catalogue of every selected arch (UserError)."""
    from kbox.vm.arch import ARCHES
    if not values:
        return list(KERNELS)
    out: list[str] = []
    for v in values:
        for item in (x.strip() for x in v.split(",")):
            if item and item not in out:
                out.append(item)
    validate([ARCHES[a] for a in arch_names], out)
    return out
