"""Host-only tests of kbox.vm.kernels: the Debian kernel catalogue and --kernel SPEC."""
from __future__ import annotations

from pathlib import Path

import pytest

from kbox.errors import UserError
from kbox.vm import kernels
from kbox.vm.arch import ARCHES
from kbox.vm.kernels import DebianKernel, KernelChoice

X86 = ARCHES["x86_64"]


def K(version: str, pkg: str, suite: str = "bookworm-security") -> DebianKernel:
    return DebianKernel(version, "amd64", pkg, suite)


CATALOGUE = [K("6.1.0-47", "6.1.170-3", "bookworm"), K("6.1.0-50", "6.1.176-1"),
             K("6.1.0-57", "6.1.192-3"), K("6.12.100+deb12", "6.12.100-1~deb12u1"),
             K("6.12.118+deb12", "6.12.118-1~deb12u1")]


@pytest.fixture
def FAKE_APT(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KBOX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(kernels, "catalogue", lambda a: CATALOGUE)


def test_kernel_package_names_give_versions_of_the_default_flavour_only() -> None:
    names = ["linux-image-6.1.0-57-amd64", "linux-image-6.1.0-57-cloud-amd64",
             "linux-image-6.1.0-57-rt-amd64", "linux-image-6.12-amd64",  # meta-package
             "linux-image-6.12.118+deb12-amd64", "linux-image-6.12.9+deb12-amd64",
             "linux-image-6.1.0-57-amd64-dbg", "linux-image-6.1.0-57-amd64-unsigned",
             "linux-image-6.1.0-0.deb11.17-amd64", "linux-image-6.12.12+bpo-amd64",
             "linux-image-6.1.0-57-arm64", "linux-image-amd64"]
    assert kernels.parse_kernel_names(names, "amd64") == [
        "6.1.0-0.deb11.17", "6.1.0-57", "6.12.9+deb12", "6.12.12+bpo", "6.12.118+deb12"]


def test_madison_lines_give_version_and_suite_of_the_arch() -> None:
    text = ("linux-image-6.1.0-44-arm64:arm64 |  6.1.164-1 | http://deb.debian.org/debian-security"
            " bookworm-security/main arm64 Packages\n"
            "linux-image-6.1.0-47-arm64:arm64 |  6.1.170-3 | http://deb.debian.org/debian"
            " bookworm/main arm64 Packages\n"
            "linux-image-6.1.0-47-arm64:arm64 |  6.1.170-2 | http://deb.debian.org/debian"
            " bookworm-updates/main arm64 Packages\n"
            "linux-image-6.1.0-47-amd64 |  6.1.170-3 | http://x bookworm/main amd64 Packages\n")
    assert kernels.parse_madison(text, "arm64") == {
        "linux-image-6.1.0-44-arm64": ("6.1.164-1", "bookworm-security"),
        "linux-image-6.1.0-47-arm64": ("6.1.170-3", "bookworm")}


def test_a_debian_kernel_knows_its_package_release_series_and_upstream() -> None:
    k = K("6.12.100+deb12", "6.12.100-1~deb12u1")
    assert k.package == "linux-image-6.12.100+deb12-amd64"
    assert k.release == "6.12.100+deb12-amd64" and k.series == "6.12"
    assert k.upstream == "6.12.100" and K("6.1.0-50", "6.1.176-1").upstream == "6.1.176"


def test_a_matrix_series_is_chosen_without_asking_apt(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_apt(a: object) -> list[DebianKernel]:
        raise AssertionError("the warm matrix path must not query apt")
    monkeypatch.setattr(kernels, "catalogue", no_apt)
    assert kernels.choose(X86, "6.1") == KernelChoice("6.1")
    assert kernels.choose(X86, " 6.12") == KernelChoice("6.12")


@pytest.mark.parametrize("spec, version", [
    ("6.1.0-50", "6.1.0-50"), ("6.1.0-50-amd64", "6.1.0-50"),
    ("linux-image-6.1.0-50-amd64", "6.1.0-50"), ("6.12.100+deb12", "6.12.100+deb12"),
    ("6.12.100", "6.12.100+deb12"),            # the short form: a prefix up to a separator
    ("6.1.176", "6.1.0-50"),                   # the upstream version of the package
    ("6.1.170-3", "6.1.0-47"),                 # the Debian package version
])
def test_any_version_the_suites_carry_is_accepted(FAKE_APT: None, spec: str, version: str) -> None:
    assert kernels.choose(X86, spec) == KernelChoice(version, f"linux-image-{version}-amd64")


def test_the_newest_of_a_series_named_by_version_shares_the_series_image(FAKE_APT: None) -> None:
    assert kernels.choose(X86, "6.1.0-57") == KernelChoice("6.1")
    assert kernels.choose(X86, "6.12.118") == KernelChoice("6.12")


def test_an_unknown_version_is_one_line_listing_what_is_available(FAKE_APT: None) -> None:
    with pytest.raises(UserError) as ei:
        kernels.choose(X86, "5.10.0-30")
    msg = str(ei.value)
    assert ei.value.exit_code == 2 and "\n" not in msg
    assert "unknown x86_64 kernel '5.10.0-30'" in msg
    assert ("available: series 6.1, 6.12 (newest: 6.1.0-57, 6.12.118+deb12) or a version: "
            "6.1.0-47, 6.1.0-50, 6.1.0-57, 6.12.100+deb12") in msg
    assert "--list-kernels --arch x86_64" in msg
    # 6.12.1 is a prefix of 6.12.100 and 6.12.118 but not at a separator: unknown.
    with pytest.raises(UserError, match="unknown"):
        kernels.choose(X86, "6.12.1")


def test_an_ambiguous_short_form_names_the_candidates(FAKE_APT: None) -> None:
    with pytest.raises(UserError, match=r"ambiguous for x86_64: it matches 6\.1\.0-47, "
                                        r"6\.1\.0-50, 6\.1\.0-57") as ei:
        kernels.choose(X86, "6.1.0")
    assert ei.value.exit_code == 2


def test_validate_checks_every_spec_on_every_arch(FAKE_APT: None) -> None:
    kernels.validate([X86, ARCHES["aarch64"]], ["6.1", "6.1.0-50"])
    with pytest.raises(UserError, match="6.9.9"):
        kernels.validate([X86], ["6.12", "6.9.9"])


def test_the_catalogue_is_read_through_apt_cache_and_memoized(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from kbox.vm import debian
    monkeypatch.setenv("KBOX_CACHE", str(tmp_path / "cache"))
    calls: list[list[str]] = []

    class Done:
        def __init__(self, out: str) -> None:
            self.stdout = out

    def fake_run(cmd: list[str], timeout: float = 0, check: bool = True) -> Done:
        calls.append(cmd)
        if cmd[1] == "pkgnames":
            return Done("linux-image-6.1.0-50-amd64\nlinux-image-6.1.0-57-amd64\n"
                        "linux-image-6.1.0-57-cloud-amd64\nlinux-headers-6.1.0-57-amd64\n")
        assert cmd[1] == "madison" and cmd[2:] == ["linux-image-6.1.0-50-amd64",
                                                  "linux-image-6.1.0-57-amd64"]
        return Done("linux-image-6.1.0-57-amd64 | 6.1.192-3 | http://m bookworm-security/main "
                    "amd64 Packages\n")   # 6.1.0-50 no longer downloadable: left out
    monkeypatch.setattr(debian, "_run", fake_run)
    monkeypatch.setattr(debian, "host_debian_arch", lambda: "amd64")
    monkeypatch.setattr(debian, "check_arch_enabled", lambda a: None)
    monkeypatch.setattr(debian, "apt_state", lambda: [("lists", 1, 2)])
    assert kernels.catalogue(X86) == [K("6.1.0-57", "6.1.192-3")]
    assert kernels.catalogue(X86) == [K("6.1.0-57", "6.1.192-3")]
    assert len(calls) == 2   # the second answer came from the cache


def test_series_of_a_kernel_tag() -> None:
    assert [kernels.series_of(k) for k in ("6.1", "6.12", "6.1.0-50", "6.12.100+deb12",
                                           "6.1-rc3")] == ["6.1", "6.12", "6.1", "6.12", "6.1"]
