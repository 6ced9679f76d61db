"""Repro bundles: a failing VM test leaves a small JSON file and one command that replays it.

On a failure the pytest plugin (conftest.py) calls `write_artifact()`; the file goes to
`<artifacts>/repro/<test id>.json` and the report's "kbox VM" section gets the line

    repro: kbox vm repro artifacts/repro/<test id>.json

The artifact names what the failing test ran on and what it ran: the arch, the kernel as
the test asked for it (series or version) and as the guest reported it, the image cache
entry (its name is the key of the packages, recipes and kbox sources in it), the
accelerator the VM actually used, the test's tier and program parameters, every guest
command the test ran (`VM.commands` since the test started) and the last one split into
the environment assignments and argv it starts with (a command that is more than one
simple command runs as `sh -c COMMAND`).

`kbox vm repro ARTIFACT` boots the same image (the recorded cache entry if it is still
there, else the current image of that arch and kernel, with a notice), on the same
accelerator, and runs the last command under gdbserver with gdb-multiarch attached on the
host: `kbox vm gdb` (docs/gdb-workflow.md) with the environment passed through
gdbserver's --wrapper. `--no-gdb` runs the command plainly instead and exits with its
status. A missing, unreadable or malformed artifact is one line, exit status 2, before
any image work or QEMU.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shlex
import time
from pathlib import Path
from typing import Any

from kbox.errors import UserError
from kbox.vm.arch import ARCHES

FORMAT = 1
_REQUIRED: dict[str, type | tuple[type, ...]] = {"format": int, "test": str, "arch": str, "kernel": str, "accel": str,
             "guest_command": (str, type(None)), "argv": list, "env": dict}
# RestoredVM (kbox/vm/snapshot.py) sets the guest's clock in the first command it runs.
_CLOCK_PREFIX = re.compile(r"^date -u -s @\d+ >/dev/null 2>&1; ")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# Outside quotes, what makes sh do more than run one command with its words as they are.
_SPECIAL = frozenset(";&|<>()$`*?[{}~#\n")


def _is_simple(command: str) -> bool:
    """True if sh would run `command` as one simple command with nothing expanded: words,
    quotes and backslashes only (a `$` or a glob inside single quotes is just text)."""
    quote, i = "", 0
    while i < len(command):
        c = command[i]
        if quote == "'":
            quote = "" if c == "'" else quote
        elif quote == '"':
            if c in "$`":
                return False
            quote = "" if c == '"' else quote
            i += c == "\\"
        elif c in "'\"":
            quote = c
        elif c == "\\":
            i += 1
        elif c in _SPECIAL:
            return False
        i += 1
    return not quote


def split_command(command: str) -> tuple[dict[str, str], list[str]]:
    """(environment assignments, argv) of a guest shell command, for gdbserver. Only one
    simple command is split; anything else (pipes, lists, redirections, expansions) runs
    as `sh -c COMMAND`."""
    whole: tuple[dict[str, str], list[str]] = ({}, ["sh", "-c", command])
    if not _is_simple(command):
        return whole
    try:
        words = shlex.split(command)
    except ValueError:
        return whole
    env: dict[str, str] = {}
    while words and _ASSIGNMENT.match(words[0]):
        k, v = words.pop(0).split("=", 1)
        env[k] = v
    return (env, words) if words else whole


def _artifact_name(nodeid: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.+-]+", "_", nodeid.replace("::", "--")).strip("_")
    return (name[:180] or "test") + ".json"


def artifact_for(nodeid: str, arch: str, kernel: str, accel: str, vm: Any | None,
                 commands: list[str], params: dict[str, Any], when: str) -> dict[str, Any]:
    """The artifact's content (a dict, JSON-ready)."""
    cmds = [_CLOCK_PREFIX.sub("", c) for c in commands]
    last = cmds[-1] if cmds else None
    env, argv = split_command(last) if last is not None else ({}, [])
    image = getattr(vm, "image", None)
    return {
        "format": FORMAT, "test": nodeid, "when": when,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "arch": arch, "kernel": kernel,
        "kernel_version": getattr(image, "kernel_version", None),
        "image": Path(image.cache_dir).name if image is not None else None,
        "image_dir": str(image.cache_dir) if image is not None else None,
        "accel": accel,
        "tier": params.get("tier"), "program": params.get("program"),
        "params": {k: str(v) for k, v in params.items()},
        "guest_command": last, "guest_commands": cmds,
        "env": env, "argv": argv,
        "console_log": str(vm.log_path) if vm is not None else None,
    }


def write_artifact(directory: Path, data: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / _artifact_name(data["test"])
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)
    return path


def report_lines(path: Path, data: dict[str, Any], cwd: Path | None = None) -> list[str]:
    """What the failure report says: the one-line replay, and what it stands for."""
    shown = path
    if cwd is not None:
        try:
            shown = path.resolve().relative_to(cwd.resolve())
        except ValueError:
            pass
    lines = [f"repro: kbox vm repro {shlex.quote(str(shown))}"]
    if data.get("argv"):
        lines.append(f"       (= {shlex.join(gdb_equivalent(data))})")
    return lines


def gdb_equivalent(data: dict[str, Any]) -> list[str]:
    cmd = ["kbox", "vm", "gdb", "--arch", data["arch"], "--kernel", data["kernel"],
           "--accel", data["accel"]]
    for k, v in data.get("env", {}).items():
        cmd += ["--env", f"{k}={v}"]
    return cmd + ["--", *data["argv"]]


# -- reading it back ---------------------------------------------------------------------------
def load(path: Path) -> dict[str, Any]:
    """The artifact at `path`, checked; UserError (exit status 2) in one line otherwise."""
    where = f"repro artifact {path}"
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{where}: no such file (a failing VM test writes one under "
                        "artifacts/repro/)", 2) from None
    except IsADirectoryError:
        raise UserError(f"{where}: is a directory; give one of the .json files in it", 2) \
            from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{where}: cannot read it ({exc})", 2) from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UserError(f"{where}: not JSON ({exc}): corrupt or truncated", 2) from None
    if not isinstance(data, dict):
        raise UserError(f"{where}: not a repro artifact (a JSON {type(data).__name__}, "
                        "not an object)", 2)
    for key, typ in _REQUIRED.items():
        if key not in data:
            raise UserError(f"{where}: not a repro artifact (no {key!r})", 2)
        if not isinstance(data[key], typ):
            raise UserError(f"{where}: {key!r} is a {type(data[key]).__name__}, "
                            "which a repro artifact never holds: corrupt", 2)
    if data["format"] != FORMAT:
        raise UserError(f"{where}: format {data['format']}, this kbox reads format {FORMAT}",
                        2)
    if data["arch"] not in ARCHES:
        raise UserError(f"{where}: unknown arch {data['arch']!r}", 2)
    if data["accel"] not in ("kvm", "tcg"):
        raise UserError(f"{where}: unknown accelerator {data['accel']!r}", 2)
    if data["guest_command"] is not None and not data["argv"]:
        raise UserError(f"{where}: a guest command without its argv: corrupt", 2)
    if not all(isinstance(a, str) for a in data["argv"]) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data["env"].items()):
        raise UserError(f"{where}: argv and env must hold strings: corrupt", 2)
    return data


def recorded_image(data: dict[str, Any], current: Any) -> tuple[Any, str | None]:
    """The image the failure ran on if its cache entry is still there and whole, else
    `current`; and a notice when they differ."""
    from kbox.vm import cache
    name, where = data.get("image"), data.get("image_dir")
    if not name or not where or Path(where).name == Path(current.cache_dir).name:
        return current, None
    entry = Path(where)
    if cache.verify(entry, checksums=False) is None:
        try:
            info = json.loads((entry / "info.json").read_text())
            base = Path(cache.cache_root()) / "base" / info["base"]
            img = dataclasses.replace(
                current, cache_dir=entry, kernel_version=info["kernel_version"],
                kernel_path=entry / info["kernel_file"], initrd_path=entry / "initrd.img",
                sysroot=base / "sysroot",
                natives_dir=Path(str(current.natives_dir).replace(
                    str(current.cache_dir), str(entry))))
            return img, (f"kbox: replaying on the image of the failure, {name} (the "
                         f"current one is {Path(current.cache_dir).name})")
        except (OSError, ValueError, KeyError):
            pass
    return current, (f"kbox: the image of the failure ({name}) is no longer cached (its "
                     f"inputs changed since); replaying on {Path(current.cache_dir).name}")


# -- kbox vm repro ---------------------------------------------------------------------------
def cmd_vm_repro(args: argparse.Namespace) -> int:
    import sys

    from kbox.vm import cli, images
    data = load(Path(args.artifact))
    print(f"kbox: replaying {data['test']} ({data['arch']} {data['kernel']}, "
          f"{data['accel'].upper()}"
          + (f", tier {data['tier']}" if data.get("tier") else "") + ")", file=sys.stderr)
    current = images.ensure_image(data["arch"], data["kernel"], progress=True)
    image, note = recorded_image(data, current)
    if note:
        print(note, file=sys.stderr)
    argv, env = list(data["argv"]), dict(data["env"])
    if not argv:
        print("kbox: the test failed before it ran a guest command: booting the image and "
              "running `true`", file=sys.stderr)
        argv = ["true"]
    ns = argparse.Namespace(arch=data["arch"], kernel=data["kernel"], kernel_image=None,
                            modules=None, accel=data["accel"], rebuild=False, image=image,
                            env=[f"{k}={v}" for k, v in env.items()],
                            gdb_args=args.gdb_args, command=["--", *argv])
    if args.no_gdb or argv == ["true"]:
        return _run_plain(image, data["accel"], argv, env, args.timeout)
    return cli.cmd_vm_gdb(ns)


def _run_plain(image: Any, accel: str, argv: list[str], env: dict[str, str],
               timeout: float) -> int:
    import sys

    from kbox.vm import cli
    from kbox.vm.machine import VM, VMError, stream_sinks
    command = shlex.join([*(f"{k}={v}" for k, v in env.items()), *argv]) \
        if argv[:2] != ["sh", "-c"] else shlex.join(argv)
    try:
        with VM(image, accel=accel) as vm:
            print(f"kbox: {vm.name} ({image.kernel_version}) ready in {vm.boot_seconds:.2f} s; "
                  f"running {command}", file=sys.stderr)
            sinks = stream_sinks()
            res = vm.run(command, timeout=timeout, on_stdout=sinks["on_stdout"],
                         on_stderr=sinks["on_stderr"])
            vm.kill()
    except VMError as exc:
        raise cli._vm_error(exc) from exc
    print(f"kbox: exit status {res.exit_status}", file=sys.stderr)
    return res.exit_status


def add_parser(vsub: Any) -> None:
    p = vsub.add_parser("repro", help="replay a failed VM test from its repro artifact "
                                      "(artifacts/repro/*.json) with gdb attached")
    p.add_argument("artifact", metavar="ARTIFACT", help="the JSON file a failing test wrote")
    p.add_argument("--no-gdb", action="store_true",
                   help="run the guest command without gdb and exit with its status")
    p.add_argument("--gdb-arg", dest="gdb_args", action="append",
                   help="extra argument for gdb (repeatable)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="with --no-gdb: command timeout in hardware seconds (default 300)")
    p.set_defaults(func=cmd_vm_repro)
