"""Debian packages of a target architecture: choose, resolve, download, unpack — without root.

Everything goes through apt's ordinary clients (apt-cache, apt-get download, dpkg -x) against
the host's configured archive, so `dpkg --add-architecture arm64 && apt-get update` is the
only setup a foreign architecture needs.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kbox.errors import UserError

APT_TIMEOUT = 120.0        # one apt-cache query
DOWNLOAD_TIMEOUT = 1800.0  # one apt-get download batch (hundreds of MB on a slow mirror)


@dataclass(frozen=True, order=True)
class Package:
    name: str
    version: str
    arch: str  # the package's own Architecture: (the target arch or "all")

    @property
    def spec(self) -> str:
        """What `apt-get download` accepts for exactly this package."""
        qual = "" if self.arch == "all" else f":{self.arch}"
        return f"{self.name}{qual}={self.version}"

    @property
    def deb_name(self) -> str:
        # apt-get download names files name_version_arch.deb with ':' in epochs as %3a.
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.arch}.deb"


def _run(cmd: list[str], timeout: float = APT_TIMEOUT, check: bool = True
         ) -> subprocess.CompletedProcess[str]:
    if shutil.which(cmd[0]) is None:
        raise UserError(f"{cmd[0]} missing: this builder needs Debian's apt and dpkg")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise UserError(f"{' '.join(cmd[:3])} … timed out after {timeout:.0f} s") from exc
    if check and proc.returncode != 0:
        raise UserError(f"{' '.join(cmd[:4])} … failed: {proc.stderr.strip().splitlines()[-1:]}")
    return proc


def host_debian_arch() -> str:
    return _run(["dpkg", "--print-architecture"]).stdout.strip()


def check_arch_enabled(debian_arch: str) -> None:
    if debian_arch == host_debian_arch():
        return
    foreign = _run(["dpkg", "--print-foreign-architectures"]).stdout.split()
    if debian_arch not in foreign:
        raise UserError(f"dpkg architecture {debian_arch} not enabled: "
                        f"dpkg --add-architecture {debian_arch} && apt-get update")


# ---- version comparison (enough of dpkg's algorithm for kernel ABI numbers) --------------

def _version_key(text: str) -> tuple[tuple[int, ...], str]:
    return tuple(int(n) for n in re.findall(r"\d+", text)), text


def apt_state() -> list[tuple[str, int, int]]:
    """What apt would answer depends on its package lists; their stats stand for them."""
    lists = sorted(glob.glob("/var/lib/apt/lists/*_Packages*"))
    return [(p, int(os.stat(p).st_size), int(os.stat(p).st_mtime)) for p in lists]


# ---- dependency resolution ----------------------------------------------------------------

def parse_stanzas(text: str) -> list[dict[str, str]]:
    stanzas: list[dict[str, str]] = []
    cur: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if not line.strip():
            if cur:
                stanzas.append(cur)
            cur, key = {}, ""
        elif line[0] in " \t" and key:
            cur[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            cur[key] = value.strip()
    if cur:
        stanzas.append(cur)
    return stanzas


def parse_depends(field: str) -> list[list[str]]:
    """`a (>= 1) | b:any, c [arm64]` -> [["a", "b"], ["c"]] (names only, arch qualifiers off)."""
    groups: list[list[str]] = []
    for group in field.split(","):
        alts = []
        for alt in group.split("|"):
            m = re.match(r"\s*([a-z0-9][a-z0-9+.\-]*)", alt)
            if m:
                alts.append(m.group(1))
        if alts:
            groups.append(alts)
    return groups


class Resolver:
    """Resolve Depends/Pre-Depends recursively for one architecture (first viable alternative)."""

    def __init__(self, debian_arch: str, exclude: set[str]) -> None:
        self.arch = debian_arch
        self.exclude = exclude
        self._stanza: dict[str, dict[str, str] | None] = {}

    def _lookup(self, names: list[str]) -> None:
        names = [n for n in dict.fromkeys(names) if n not in self._stanza]
        if not names:
            return
        for qualified in (True, False):
            if not names:
                break
            specs = [f"{n}:{self.arch}" if qualified else n for n in names]
            # apt-cache exits non-zero when any name is unknown but still prints the rest.
            out = _run(["apt-cache", "show", "--no-all-versions", *specs], check=False).stdout
            for st in parse_stanzas(out):
                name = st.get("Package", "")
                arch = st.get("Architecture", "")
                if name in names and name not in self._stanza and arch in (self.arch, "all"):
                    self._stanza[name] = st
            names = [n for n in names if n not in self._stanza]
        for n in names:
            self._stanza[n] = None  # virtual, or not available for this architecture

    def stanza(self, name: str) -> dict[str, str] | None:
        """The Packages index entry looked up for `name` (Version, SHA256, Size, ...), None if
        it is virtual or unavailable; what resolve() chose has one."""
        return self._stanza.get(name)

    def _providers(self, virtual: str) -> list[str]:
        out = _run(["apt-cache", "showpkg", f"{virtual}:{self.arch}"], check=False).stdout
        provs: list[str] = []
        in_section = False
        for line in out.splitlines():
            if line.startswith("Reverse Provides:"):
                in_section = True
                continue
            if in_section and line.strip():
                provs.append(line.split()[0].split(":")[0])
        return provs

    def resolve(self, roots: list[str]) -> list[Package]:
        self._lookup(roots)
        missing = [r for r in roots if self._stanza.get(r) is None]
        if missing:
            raise UserError(f"Debian package(s) not available for {self.arch}: "
                            f"{', '.join(missing)} (apt-get update?)")
        chosen: dict[str, dict[str, str]] = {}
        provided: set[str] = set()
        todo = list(roots)
        while todo:
            level, todo = todo, []
            self._lookup(level)
            groups: list[list[str]] = []
            for name in level:
                st = self._stanza.get(name)
                if name in chosen or st is None:
                    continue
                chosen[name] = st
                provided.update(a[0] for a in parse_depends(st.get("Provides", "")))
                for fld in ("Pre-Depends", "Depends"):
                    groups.extend(parse_depends(st.get(fld, "")))
            self._lookup([alt for g in groups for alt in g])
            for alts in groups:
                if any(a in chosen or a in self.exclude or a in provided for a in alts):
                    continue
                real = [a for a in alts if self._stanza.get(a) is not None]
                if not real:
                    provs = [p for a in alts for p in self._providers(a)]
                    self._lookup(provs)
                    real = [p for p in provs if self._stanza.get(p) is not None]
                if not real:
                    raise UserError(f"cannot satisfy dependency {' | '.join(alts)} for "
                                    f"{self.arch}")
                if real[0] not in self.exclude:
                    todo.append(real[0])
        return sorted(Package(n, st["Version"], st["Architecture"]) for n, st in chosen.items())


def package_version(name: str, debian_arch: str) -> Package:
    """The candidate version of one package, without its dependencies."""
    r = Resolver(debian_arch, set())
    r._lookup([name])
    st = r._stanza.get(name)
    if st is None:
        raise UserError(f"Debian package {name}:{debian_arch} not available (apt-get update?)")
    return Package(name, st["Version"], st["Architecture"])


# ---- download and unpack ------------------------------------------------------------------

def download(packages: list[Package], debs_dir: Path, *, progress: bool = True) -> list[Path]:
    """Download missing .debs into `debs_dir`; each file appears atomically (rename)."""
    debs_dir.mkdir(parents=True, exist_ok=True)
    todo = [p for p in packages if not (debs_dir / p.deb_name).exists()]
    if todo:
        if progress:
            print(f"kbox: downloading {len(todo)} Debian package(s) into {debs_dir}",
                  file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(dir=debs_dir, prefix=".dl-") as tmp:
            # Batches keep the command line short and give coarse progress between them.
            batch = 40
            for i in range(0, len(todo), batch):
                part = todo[i:i + batch]
                try:
                    proc = subprocess.run(
                        ["apt-get", "download", "-q", *[p.spec for p in part]], cwd=tmp,
                        stdout=sys.stderr if progress else subprocess.DEVNULL,
                        stderr=subprocess.PIPE, text=True, timeout=DOWNLOAD_TIMEOUT, check=False)
                except subprocess.TimeoutExpired as exc:
                    raise UserError(f"apt-get download timed out after {DOWNLOAD_TIMEOUT:.0f} s"
                                    ) from exc
                if proc.returncode != 0:
                    raise UserError("apt-get download failed: "
                                    + " ".join(proc.stderr.strip().splitlines()[-2:]))
                if progress:
                    print(f"kbox: downloaded {min(i + batch, len(todo))}/{len(todo)}",
                          file=sys.stderr, flush=True)
            for p in todo:
                src = Path(tmp) / p.deb_name
                if not src.exists():
                    found = list(Path(tmp).glob(f"{p.name}_*.deb"))
                    if len(found) != 1:
                        raise UserError(f"apt-get download produced no file for {p.spec}")
                    src = found[0]
                src.rename(debs_dir / p.deb_name)
    return [debs_dir / p.deb_name for p in packages]


def extract(deb: Path, dest: Path, *, timeout: float = 300.0) -> None:
    """dpkg -x: unpack a package's data without running maintainer scripts or needing root."""
    dest.mkdir(parents=True, exist_ok=True)
    _run(["dpkg-deb", "-x", str(deb), str(dest)], timeout=timeout)
