"""`kbox vm run|shell|gdb|images` and `kbox doctor`.

The main CLI (kbox/cli.py) calls `add_vm_commands(subparsers)`; every handler takes the
parsed args and returns the process exit status. Errors for the user are raised as
UserError (one line); VM failures are turned into UserError with the console log path.
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from kbox.errors import UserError
from kbox.vm.accel import ACCELS, host_can_kvm, resolve_accel
from kbox.vm.arch import ARCHES, KERNELS, Arch
from kbox.vm.machine import VM, VMError, stream_sinks

DEFAULT_KERNEL = KERNELS[-1]
GDB_GUEST_PORT = 1234

def errno_name(code: int) -> str:
    import errno as errno_mod
    return "ok" if code == 0 else errno_mod.errorcode.get(code, f"errno {code}")


# -- shared option handling --------------------------------------------------------------
def _add_vm_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", choices=sorted(ARCHES),
                   help="guest architecture (required, except with --kernel-image: its own)")
    p.add_argument("--kernel", metavar="VERSION",
                   help=f"Debian kernel: a series ({', '.join(KERNELS)}: its newest) or any "
                        f"version `kbox vm images --list-kernels` shows, e.g. 6.1.0-50 "
                        f"(default {DEFAULT_KERNEL})")
    p.add_argument("--kernel-image", type=Path, metavar="PATH",
                   help="boot a local kernel build instead: bzImage or vmlinux (x86_64), "
                        "Image or Image.gz (aarch64)")
    p.add_argument("--modules", type=Path, metavar="DIR",
                   help="with --kernel-image: its modules (lib/modules/<release>, or a "
                        "directory holding it, e.g. make modules_install INSTALL_MOD_PATH=DIR)")
    p.add_argument("--accel", choices=ACCELS, default="auto",
                   help="accelerator: kvm only if a probe guest runs (default auto)")
    p.add_argument("--rebuild", action="store_true", help="rebuild the guest image first")


def _image(args: argparse.Namespace, checksums: bool = True) -> Any:
    try:
        from kbox.vm import images
    except ImportError as exc:
        raise UserError(f"the guest image builder is unavailable: {exc}", 3) from exc
    if args.kernel_image is not None:
        if args.kernel is not None:
            raise UserError("--kernel and --kernel-image exclude each other", 2)
        img = images.ensure_local_image(args.kernel_image, args.arch, args.modules,
                                        progress=True)
        args.arch = img.arch
        return img
    if args.modules is not None:
        raise UserError("--modules goes with --kernel-image", 2)
    if args.arch is None:
        raise UserError("--arch is required (x86_64 or aarch64), unless --kernel-image names "
                        "the kernel", 2)
    return images.ensure_image(args.arch, args.kernel or DEFAULT_KERNEL,
                               rebuild=getattr(args, "rebuild", False), progress=True,
                               checksums=checksums)


def _warm_vm(args: argparse.Namespace) -> Any:
    """The VM of `kbox vm run|shell`: restored from the saved state unless --cold (see
    kbox/vm/snapshot.py). A restore reads none of the image's files, so its entry is checked
    by size only; a cold boot gets it checksummed first."""
    from kbox.vm import share, snapshot
    shares = share.parse_shares(getattr(args, "share", None))   # checked before any build
    checkout = _kbox_from_checkout(args)
    # Shares too: the saved state has their devices unmounted, mounted after the restore.
    warm = not args.cold
    image = _image(args, checksums=not warm)
    if checkout is not None:
        shares = _kbox_from_shares(args, checkout, image, shares)
    if shares:
        share.check_image_supports_shares(image)
        for s in shares:
            print(f"kbox: sharing {s.describe()}", file=sys.stderr)
    # A local kernel's image is inspected whole every time (no cheaper check to redo).
    recheck = warm and args.kernel_image is None
    return share.mounted(snapshot.ready_vm(image, accel=args.accel, cold=not warm,
                                           cold_image=(lambda: _image(args)) if recheck
                                           else None, **share.vm_options(shares, warm)),
                         shares, over_ssh=warm)


def _kbox_from_checkout(args: argparse.Namespace) -> Path | None:
    from kbox.vm import kbox_from
    path = getattr(args, "kbox_from", None)
    return None if path is None else kbox_from.check_checkout(path)


def _kbox_from_shares(args: argparse.Namespace, checkout: Path, image: Any,
                      shares: list[Any]) -> list[Any]:
    """Build the checkout's C core for the guest (kbox/vm/kbox_from.py), remember it for the
    command (args.kbox_from_build) and add its two shares to the user's."""
    from kbox.vm import images, kbox_from, share
    kf = kbox_from.build(checkout, ARCHES[image.arch], images.cross_prefix(ARCHES[image.arch]))
    args.kbox_from_build = kf
    return share.numbered([(s, f"--share {s.host}:{s.guest}") for s in shares]
                          + [(s, f"--kbox-from {checkout}") for s in kf.shares])


def _vm_error(exc: VMError) -> UserError:
    # VM errors carry multi-line context (console tail); print it, keep the last line short.
    print(str(exc), file=sys.stderr)
    log = getattr(exc, "log_path", None)
    return UserError(f"VM failed: {str(exc).splitlines()[0]}"
                     + (f" (console log: {log})" if log else ""), 4)


def _strip_dashdash(cmd: list[str]) -> list[str]:
    return cmd[1:] if cmd and cmd[0] == "--" else cmd


# -- kbox vm run -------------------------------------------------------------------------
def cmd_vm_run(args: argparse.Namespace) -> int:
    command = _strip_dashdash(args.command)
    if not command:
        raise UserError("kbox vm run: give a command after --, e.g. "
                        "`kbox vm run --arch aarch64 -- uname -a`", 2)
    t0 = time.monotonic()
    try:
        with _warm_vm(args) as vm:
            image = vm.image
            if args.verbose:
                print(f"kbox: {vm.name} ({image.kernel_version}) ready in "
                      f"{vm.boot_seconds:.2f} s ({getattr(vm, 'how', 'booted')}; "
                      f"ssh port {vm.ssh_port}, console {vm.log_path})", file=sys.stderr)
            kf = getattr(args, "kbox_from_build", None)
            cmd = kf.wrap(shlex.join(command)) if kf else shlex.join(command)
            res = vm.run(cmd, timeout=args.timeout, **stream_sinks())
            # An initramfs guest has no state worth a clean poweroff: kill saves ~0.5 s.
            vm.kill()
    except VMError as exc:
        raise _vm_error(exc) from exc
    if args.verbose:
        print(f"kbox: exit status {res.exit_status}, {time.monotonic() - t0:.2f} s end to end",
              file=sys.stderr)
    return res.exit_status


# -- kbox vm shell -----------------------------------------------------------------------
def cmd_vm_shell(args: argparse.Namespace) -> int:
    from kbox.vm.ssh import interactive_shell
    try:
        with _warm_vm(args) as vm:
            print(f"kbox: {vm.name} ready in {vm.boot_seconds:.2f} s; console log "
                  f"{vm.log_path}; exit the shell to stop the VM", file=sys.stderr)
            return interactive_shell(vm.ssh_client())
    except VMError as exc:
        raise _vm_error(exc) from exc


# -- kbox vm gdb -------------------------------------------------------------------------
def gdb_commands(roots: list[Path], program: str, host_port: int) -> list[str]:
    """The gdb-multiarch command line that attaches to the guest's gdbserver.

    `roots` are host directories mirroring the guest's filesystem: the image's sysroot
    (Debian packages: libc, python, ...) first, then its kbox layer (guest programs, the
    kbox C core). Shared libraries come from the sysroot; the program's symbols from the
    first root that has it, else gdb reads the file from the guest through gdbserver.
    """
    gdb = shutil.which("gdb-multiarch") or shutil.which("gdb")
    if gdb is None:
        raise UserError("gdb-multiarch not found: install it with `apt-get install "
                        "gdb-multiarch`", 3)
    cmd = [gdb, "-q", "-ex", f"set sysroot {roots[0]}"]
    local = next((r / program.lstrip("/") for r in roots
                  if (r / program.lstrip("/")).is_file()), None)
    if local is not None:
        cmd += ["-ex", f"file {local}"]
    cmd += ["-ex", f"target remote 127.0.0.1:{host_port}"]
    if local is None:
        cmd += ["-ex", f"file target:{program}"]
    return cmd


def cmd_vm_gdb(args: argparse.Namespace) -> int:
    command = _strip_dashdash(args.command)
    if not command:
        raise UserError("kbox vm gdb: give a program after --", 2)
    env = list(getattr(args, "env", None) or [])
    bad = [e for e in env if "=" not in e or e.startswith("=")]
    if bad:
        raise UserError(f"kbox vm gdb: --env {bad[0]}: give NAME=VALUE", 2)
    # `kbox vm repro` passes the image of the failure it replays (kbox/vm/repro.py).
    image = getattr(args, "image", None) or _image(args)
    try:
        with VM(image, accel=args.accel, forward=[GDB_GUEST_PORT]) as vm:
            prog = command[0]
            if not prog.startswith("/"):
                found = vm.run(f"command -v {shlex.quote(prog)}", timeout=10).stdout.strip()
                if not found:
                    raise UserError(f"{prog}: not found in the guest", 2)
                prog = found
            host_port = vm.forwards[GDB_GUEST_PORT]
            transport = vm.ssh_client().get_transport()
            assert transport is not None
            chan = transport.open_session(timeout=10)
            chan.set_combine_stderr(True)
            # The program inherits gdbserver's environment (its --wrapper env would miscount
            # the execs it waits for: busybox's env applet runs without one).
            setenv = ["env", *env] if env else []
            chan.exec_command(shlex.join([*setenv, "gdbserver", "--once", f":{GDB_GUEST_PORT}",
                                          prog, *command[1:]]))
            # Wait for gdbserver to listen before gdb connects; show what it prints.
            buf = b""
            deadline = time.monotonic() + 20 * vm.timeout_factor
            while b"Listening on port" not in buf:
                if chan.exit_status_ready() and not chan.recv_ready():
                    raise UserError(f"gdbserver failed in the guest: {buf.decode(errors='replace')}"
                                    .strip(), 4)
                if time.monotonic() > deadline:
                    raise UserError("gdbserver did not start listening in time", 4)
                if chan.recv_ready():
                    buf += chan.recv(4096)
                else:
                    time.sleep(0.05)
            sys.stderr.write(buf.decode(errors="replace"))

            def pump() -> None:   # the program's own output, while gdb owns the terminal
                while True:
                    data = chan.recv(4096)
                    if not data:
                        return
                    sys.stdout.buffer.write(data)
                    sys.stdout.buffer.flush()
            threading.Thread(target=pump, daemon=True).start()
            roots = [Path(image.sysroot), Path(image.cache_dir) / "overlay"]
            gdb = gdb_commands(roots, prog, host_port) + list(args.gdb_args or [])
            print(f"kbox: {shlex.join(gdb)}", file=sys.stderr)
            rc = subprocess.call(gdb)
            chan.close()
            return rc
    except VMError as exc:
        raise _vm_error(exc) from exc


# -- kbox vm images ----------------------------------------------------------------------
def cmd_vm_images(args: argparse.Namespace) -> int:
    try:
        from kbox.vm import images
    except ImportError as exc:
        raise UserError(f"the guest image builder is unavailable: {exc}", 3) from exc
    arches = [args.arch] if args.arch else sorted(ARCHES)
    kernels = [args.kernel] if args.kernel else list(KERNELS)
    if args.list_kernels:
        return _list_kernels(arches)
    if args.clean:
        n = images.clean_images(args.arch, args.kernel)
        print(f"kbox: removed {n} cache entr{'y' if n == 1 else 'ies'}")
        return 0
    if args.build:
        for a in arches:
            for k in kernels:
                img = images.ensure_image(a, k, rebuild=args.rebuild, progress=True)
                print(f"{a} {k}: {img.kernel_version} {img.cache_dir}")
        return 0
    rows = [r for r in images.list_images()
            if (not args.arch or r["arch"] == args.arch)
            and (not args.kernel or r["kernel"] == args.kernel)]
    if not rows:
        print("kbox: no cached images (build them with `kbox vm images --build`)")
    for r in rows:
        print(f"{r['kind']:5} {r['arch']:8} {r['kernel']:8} {r['kernel_version']:24} "
              f"{r['size'] / 2**20:7.1f} MiB {r['state']:8} {r['path']}")
    return 0


def _list_kernels(arches: list[str]) -> int:
    """The Debian kernels apt's configured suites carry, per arch (what --kernel accepts)."""
    from kbox.vm import kernels as kmod
    print(f"{'arch':8} {'version':20} {'package version':22} {'suite':20} --kernel")
    for name in arches:
        cat = kmod.catalogue(ARCHES[name])
        newest = {s: kmod.newest(cat, s) for s in KERNELS}
        for k in cat:
            alias = [s + (" (default)" if s == DEFAULT_KERNEL else "")
                     for s, n in newest.items() if n == k]
            print(f"{name:8} {k.version:20} {k.package_version:22} {k.suite:20} "
                  f"{', '.join(alias) or k.version}")
    return 0


# -- kbox doctor -------------------------------------------------------------------------
def _check(ok: bool | None, what: str, detail: str, fix: str = "") -> bool:
    mark = {True: "ok  ", False: "MISS", None: "info"}[ok]
    print(f"[{mark}] {what}: {detail}" + (f"\n       fix: {fix}" if fix and ok is False else ""))
    return ok is not False


def cmd_doctor(args: argparse.Namespace) -> int:
    good = True
    host = platform.machine()
    print(f"host: {host}, Linux {platform.release()}, {os.cpu_count()} CPUs")
    for arch in ARCHES.values():
        good &= _doctor_arch(arch, host)
    from kbox.kernel_caps import FeatureProbeFailed, run_feature_probe  # pyelftools: doctor only
    try:
        feats = run_feature_probe(timeout=20)
    except FeatureProbeFailed as exc:
        good &= _check(False, "kernel feature probe", f"failed: {exc}")
        return 0 if good else 1
    good &= _check(feats["user_notif"] == 0, "seccomp user-notify",
                   errno_name(feats["user_notif"]),
                   "needs Linux >= 5.0 with CONFIG_SECCOMP_FILTER; the seccomp tier needs it")
    _check(feats["sync_wakeup"] == 0 or None, "seccomp user-notify sync wake-up",
           errno_name(feats["sync_wakeup"])
           + ("" if feats["sync_wakeup"] == 0 else
              " (Linux >= 6.6 makes the seccomp tier ~8x faster; it still works without)"))
    _check(feats["sud"] == 0 or None, "Syscall User Dispatch", errno_name(feats["sud"])
           + ("" if feats["sud"] == 0 else
              " (needs CONFIG_GENERIC_ENTRY; the trap tier uses seccomp RET_TRAP instead)"))
    print("doctor: " + ("everything needed is present" if good else "gaps found (see fix:)"))
    return 0 if good else 1


def _doctor_arch(arch: Arch, host: str) -> bool:
    good = True
    qemu = shutil.which(arch.qemu)
    if qemu:
        ver = subprocess.run([qemu, "--version"], capture_output=True, text=True,
                             timeout=10).stdout.splitlines()[0]
        _check(True, f"{arch.name} qemu", f"{qemu} ({ver})")
    else:
        good &= _check(False, f"{arch.name} qemu", f"{arch.qemu} not found",
                       f"apt-get install {arch.qemu_package}")
    if arch.name != host:
        cc = arch.cross_prefix + "gcc"
        good &= _check(shutil.which(cc) is not None, f"{arch.name} cross compiler", cc,
                       f"apt-get install gcc-{arch.cross_prefix.rstrip('-')} "
                       f"libc6-dev-{arch.debian}-cross")
    if qemu:
        reason = host_can_kvm(arch)
        acc = resolve_accel("auto", arch)
        _check(None if reason else (acc.name == "kvm" or None), f"{arch.name} accelerator",
               f"{acc.name.upper()} ({acc.reason})"
               + ("" if acc.name == "kvm" or reason else
                  "; guests run under TCG, ~3x slower timeouts"))
    return good


# -- registration ------------------------------------------------------------------------
def _add_cold_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cold", action="store_true",
                   help="boot the guest from scratch: do not restore (or save) the VM state "
                        "saved after the first boot of this image and configuration")


def _add_share_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--share", action="append", metavar="DIR[:GUEST]",
                   help="a host directory in the guest, read-write over virtio 9p (repeatable; "
                        "GUEST default /mnt/<basename of DIR>)")


def add_vm_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    vm = subparsers.add_parser("vm", help="boot kbox guests under QEMU")
    vsub = vm.add_subparsers(dest="vm_command", metavar="{run,shell,gdb,repro,images}",
                             required=True)

    run = vsub.add_parser("run", help="boot a guest, run a command in it, tear it down")
    _add_vm_options(run)
    run.add_argument("--timeout", type=float, default=300.0,
                     help="command timeout in hardware seconds (x3 under TCG; default 300)")
    run.add_argument("-v", "--verbose", action="store_true", help="print boot and total times")
    _add_cold_option(run)
    _add_share_option(run)
    run.add_argument("--kbox-from", type=Path, metavar="DIR",
                     help="run the guest command with the kbox of checkout DIR (its C core "
                          "cross-built for the guest, incrementally; shared over 9p)")
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    run.set_defaults(func=cmd_vm_run)

    shell = vsub.add_parser("shell", help="interactive shell in a fresh guest")
    _add_vm_options(shell)
    _add_cold_option(shell)
    _add_share_option(shell)
    shell.set_defaults(func=cmd_vm_shell)

    gdb = vsub.add_parser("gdb", help="debug a guest program with gdb-multiarch on the host")
    _add_vm_options(gdb)
    gdb.add_argument("--env", action="append", metavar="NAME=VALUE",
                     help="environment of the program in the guest (repeatable)")
    gdb.add_argument("--gdb-arg", dest="gdb_args", action="append",
                     help="extra argument for gdb (repeatable)")
    gdb.add_argument("command", nargs=argparse.REMAINDER, help="-- PROG ARGS...")
    gdb.set_defaults(func=cmd_vm_gdb)

    from kbox.vm import repro
    repro.add_parser(vsub)

    images = vsub.add_parser("images", help="list, build or clean the guest image cache")
    g = images.add_mutually_exclusive_group()
    g.add_argument("--list", action="store_true", help="list cached images (default)")
    g.add_argument("--build", action="store_true", help="build missing images")
    g.add_argument("--clean", action="store_true", help="delete the image cache")
    g.add_argument("--list-kernels", action="store_true",
                   help="list the Debian kernel versions --kernel accepts, per arch")
    images.add_argument("--arch", choices=sorted(ARCHES))
    images.add_argument("--kernel", metavar="VERSION",
                        help="a series or a version (see --list-kernels); with --clean: as "
                             "--list shows it, or 'local'")
    images.add_argument("--rebuild", action="store_true", help="with --build: rebuild anyway")
    images.set_defaults(func=cmd_vm_images)

    doctor = subparsers.add_parser("doctor", help="what this host has and lacks for kbox")
    doctor.set_defaults(func=cmd_doctor)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (python -m kbox.vm.cli) until kbox/cli.py wires these in."""
    parser = argparse.ArgumentParser(prog="kbox")
    add_vm_commands(parser.add_subparsers(dest="command_name", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except UserError as exc:
        print(f"kbox: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
