"""kbox/vm/repro.py on the host: how a failing test's guest command becomes gdbserver's
environment and argv, what the artifact records, what `load()` refuses, which image a
replay boots, and the report lines. tests/test_vm_faults.py replays a real failure."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from kbox.errors import UserError
from kbox.vm import repro


@pytest.mark.parametrize("command, env, argv", [
    ("/opt/kbox/guest/dup-static", {}, ["/opt/kbox/guest/dup-static"]),
    ("kbox run --syscall-mode trap -- /usr/bin/ls -l /etc", {},
     ["kbox", "run", "--syscall-mode", "trap", "--", "/usr/bin/ls", "-l", "/etc"]),
    ("FOO=1 BAR='a b' /bin/prog x", {"FOO": "1", "BAR": "a b"}, ["/bin/prog", "x"]),
    # what vmtests/helpers.under_tier builds for the native baseline: shlex.join's quoting
    ("sh -c '\"$@\"; exit $?' sh /opt/kbox/guest/x-static", {},
     ["sh", "-c", '"$@"; exit $?', "sh", "/opt/kbox/guest/x-static"]),
])
def test_a_simple_command_is_split_into_env_and_argv(command: str, env: dict[str, str],
                                                     argv: list[str]) -> None:
    assert repro.split_command(command) == (env, argv)


@pytest.mark.parametrize("command", ["dmesg | tail -n 60", "cd /tmp && ls", "echo $HOME",
                                     "ls > /tmp/x", "FOO=1", "echo 'unterminated",
                                     "ls /etc/*.conf"])
def test_anything_more_than_one_simple_command_runs_under_sh(command: str) -> None:
    assert repro.split_command(command) == ({}, ["sh", "-c", command])


def _vm(tmp_path: Path) -> Any:
    image = SimpleNamespace(kernel_version="6.1.0-57-arm64",
                            cache_dir=tmp_path / "images/aarch64-6.1-abc")
    return SimpleNamespace(image=image, log_path=tmp_path / "c.log",
                           accel=SimpleNamespace(name="tcg"))


def test_the_artifact_names_image_accel_and_the_last_command(tmp_path: Path) -> None:
    data = repro.artifact_for(
        "vmtests/test_matrix.py::t[aarch64-6.1-trap-dup-static]", "aarch64", "6.1", "tcg",
        _vm(tmp_path), ["date -u -s @1764700000 >/dev/null 2>&1; kbox run --help",
                        "K=v /opt/kbox/guest/dup-static"],
        {"tier": "trap", "program": "dup-static"}, "call")
    assert data["image"] == "aarch64-6.1-abc" and data["kernel_version"] == "6.1.0-57-arm64"
    assert data["guest_commands"][0] == "kbox run --help"   # the restore's clock prefix cut
    assert (data["env"], data["argv"]) == ({"K": "v"}, ["/opt/kbox/guest/dup-static"])
    assert (data["tier"], data["program"], data["accel"]) == ("trap", "dup-static", "tcg")
    path = repro.write_artifact(tmp_path / "repro", data)
    assert path.name == "vmtests_test_matrix.py--t_aarch64-6.1-trap-dup-static.json"
    assert repro.load(path) == data


def test_the_report_gives_the_replay_and_its_gdb_equivalent(tmp_path: Path) -> None:
    data = repro.artifact_for("t.py::t", "x86_64", "6.12", "kvm", None, ["A=1 /bin/x y"], {},
                              "call")
    path = repro.write_artifact(tmp_path / "artifacts/repro", data)
    assert repro.report_lines(path, data, tmp_path) == [
        "repro: kbox vm repro artifacts/repro/t.py--t.json",
        "       (= kbox vm gdb --arch x86_64 --kernel 6.12 --accel kvm --env A=1 -- /bin/x y)"]


def test_a_failure_before_any_command_has_an_artifact_without_one(tmp_path: Path) -> None:
    data = repro.artifact_for("t.py::t", "x86_64", "6.1", "tcg", None, [], {}, "setup")
    assert (data["guest_command"], data["argv"], data["image"]) == (None, [], None)
    assert repro.report_lines(tmp_path / "x.json", data) == [
        f"repro: kbox vm repro {tmp_path}/x.json"]
    repro.load(repro.write_artifact(tmp_path, data))


def _good(tmp_path: Path) -> dict[str, Any]:
    return repro.artifact_for("t.py::t", "x86_64", "6.1", "tcg", None, ["/bin/true"], {},
                              "call")


@pytest.mark.parametrize("change, message", [
    ({"format": 2}, "format 2, this kbox reads format 1"),
    ({"accel": "auto"}, "unknown accelerator 'auto'"),
    ({"env": ["A=1"]}, "'env' is a list"),
    ({"argv": [1]}, "argv and env must hold strings"),
    ({"argv": []}, "a guest command without its argv"),
    ({"test": None}, "'test' is a NoneType"),
])
def test_load_refuses_what_a_repro_artifact_never_holds(tmp_path: Path,
                                                        change: dict[str, Any],
                                                        message: str) -> None:
    p = tmp_path / "a.json"
    p.write_text(json.dumps(dict(_good(tmp_path), **change)))
    with pytest.raises(UserError) as ei:
        repro.load(p)
    assert ei.value.exit_code == 2 and message in str(ei.value) and "\n" not in str(ei.value)


def test_load_refuses_bytes_that_are_not_text(tmp_path: Path) -> None:
    p = tmp_path / "a.json"
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(UserError, match="cannot read it|not JSON"):
        repro.load(p)


def test_a_replay_uses_the_current_image_when_the_recorded_one_is_gone(tmp_path: Path) -> None:
    current = SimpleNamespace(cache_dir=tmp_path / "images/x86_64-6.1-new")
    data = dict(_good(tmp_path), image="x86_64-6.1-old",
                image_dir=str(tmp_path / "images/x86_64-6.1-old"))
    img, note = repro.recorded_image(data, current)
    assert img is current
    assert note is not None and "x86_64-6.1-old) is no longer cached" in note
    same = dict(data, image="x86_64-6.1-new", image_dir=str(current.cache_dir))
    assert repro.recorded_image(same, current) == (current, None)
