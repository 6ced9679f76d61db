"""The `kbox` command."""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

from kbox import __version__
from kbox.errors import UserError
from kbox.tiers import AUTO, IN_PROCESS, MODES, SECCOMP, TRAP_BACKENDS

EPILOG = """\
examples:
  kbox run -- ls -la                      run ls with every syscall interposed (auto tier)
  kbox run --trace -- cat /etc/hostname   strace-style trace on stderr
  kbox run --syscall-mode=seccomp --deny openat:EACCES -- cat /etc/hostname
  kbox run --virtual-pid -- sh -c 'echo $$'   the program sees itself as pid 1
  kbox run --root R -- /bin/sh -c 'cat /etc/os-release'   R's files, not the host's
  kbox run --root R --bind ~/src:/src --workdir /src -- make   a host directory inside R
  kbox run --root R --root-id -- tar xpf /base.tar   as root, ownership kept in R.kbox-ids
  kbox rootfs build --arch aarch64 --out R   a minimal Debian tree from Debian packages
  kbox image from-dir R root.ext4         an ext4 image of R; `kbox run --root root.ext4` runs from it
  kbox analyze /bin/ls                    syscall sites, and which tier auto would pick
  kbox bench --modes native,seccomp,trap  cost per syscall in each tier
  kbox vm run --arch aarch64 -- uname -m  run a command in an aarch64 guest under QEMU
  kbox doctor                             what this host can and cannot do
"""


def add_run_command(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "run",
        help="run a program with every system call interposed",
        description="Run PROG with every system call it (and every process it starts) makes "
        "interposed by kbox. stdin, stdout, stderr and the terminal pass through; the exit "
        "status is the program's (128+N when signal N killed it); 126/127 when it cannot be "
        "executed / is not found, 2 for usage errors.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="tiers:\n"
        "  seccomp  a supervisor process answers seccomp user notifications; contains the program\n"
        "  trap     a SIGSYS handler inside the program's process (seccomp RET_TRAP, or Syscall\n"
        "           User Dispatch with --trap-backend sud on x86_64); ~10x faster per call\n"
        "  rewrite  trap, plus each syscall site rewritten on first use to branch straight into\n"
        "           the interposer (x86_64 and aarch64); sites it cannot patch stay on trap\n"
        "  auto     rewrite where it is correct, seccomp for setuid programs or kernels without\n"
        "           SECCOMP_RET_TRAP (see `kbox analyze PROG`)\n",
    )
    p.add_argument("--syscall-mode", choices=MODES, default=AUTO,
                   help="interception tier (default: auto)")
    p.add_argument("--trap-backend", choices=TRAP_BACKENDS, default=None,
                   help="what raises SIGSYS in the trap tier (default: seccomp RET_TRAP)")
    p.add_argument("--trace", action="store_true", help="print one line per syscall, strace-style")
    p.add_argument("--trace-format", choices=("text", "json"), default="text",
                   help="trace as text (default) or JSON lines (pid, tid, nr, name, args, ret, tier)")
    p.add_argument("--trace-output", metavar="FILE", help="write the trace to FILE instead of stderr")
    p.add_argument("--deny", action="append", default=[], metavar="NAME[:ERRNO]",
                   help="fail syscall NAME with ERRNO (default EPERM) without running it; repeatable")
    p.add_argument("--virtual-pid", action="store_true",
                   help="PID-namespace view: the program is pid 1, later processes and threads "
                   "get the next numbers (in-process tiers: trap, rewrite)")
    p.add_argument("--stats", action="store_true",
                   help="at exit, a table of syscalls: count and which path served them")
    p.add_argument("--allow-wx", action="store_true",
                   help="allow writable+executable mappings in the in-process tiers (JITs)")
    p.add_argument("--root", metavar="DIR|IMAGE",
                   help="run against the root filesystem DIR: the program's paths name files "
                        "inside DIR (/proc, /dev and /sys stay the host's); no privileges needed; "
                        "every tier (docs/tiers.md says where each one stops). An ext2/3/4 image "
                        "(found by its superblock, whatever its name) is read with libext2fs, not "
                        "modified (unless --root-writable): its tree is materialized into an overlay directory that the "
                        "program sees and writes, and stat shows the image's owners and modes")
    p.add_argument("--overlay", metavar="DIR", default=None,
                   help="with --root IMAGE: keep the image's materialized tree, with the program's "
                        "changes, in DIR, and reuse it on the next run with the same DIR and image "
                        "(made on first use; one made from another image is refused). Default: a "
                        "temporary directory, removed at exit unless the program changed something "
                        "in it (then kept, and its path printed)")
    p.add_argument("--root-writable", action="store_true",
                   help="with --root IMAGE: write the program's changes into the image itself, when "
                        "the program ends (one writer: a second --root-writable run of the image is "
                        "refused while this one runs; a kill at any moment leaves the old image or "
                        "the new one, never a half-written one; docs/tiers.md says where it stops)")
    p.add_argument("--workdir", metavar="DIR", default=None,
                   help="with --root: the working directory inside the root (default /)")
    p.add_argument("--bind", action="append", default=[], metavar="HOST[:GUEST]",
                   help="with --root: show the host file or directory HOST at GUEST in the root "
                        "(default: the same path), over what the root has there; GUEST may be "
                        "missing (its parent must exist); repeatable, at most 16")
    p.add_argument("--host-binds", action="store_true",
                   help="with --root: bind the host's usual files: /etc/resolv.conf, hosts, "
                        "host.conf, nsswitch.conf, passwd, group, localtime, /tmp and /run "
                        "(those the host has)")
    p.add_argument("--root-id", nargs="?", const=True, default=None, metavar="FILE",
                   help="with --root: the program runs as root, as under fakeroot: it sees "
                        "uid/gid 0, its set*id calls succeed, and chown, chmod and mknod of "
                        "devices succeed and are recorded per inode in FILE (default: "
                        "DIR.kbox-ids beside the root; fakeroot's save-file format), which a "
                        "later run with the same FILE sees again. Files of yours without a "
                        "record show as root's. No privileges, every tier")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- PROG [ARGS...]")
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from kbox import elfinfo, runner

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UserError("kbox run: missing program (usage: kbox run [options] -- PROG [ARGS...])", 2)
    view = None
    overlay = None
    writer = None
    if args.root is not None:
        from kbox import ext4image
        from kbox.rootview import RootView
        root = args.root
        if os.path.exists(root) and not os.path.isdir(root):
            ext4image.check_image(root, "kbox run: --root")
            if isinstance(args.root_id, str):
                raise UserError("kbox run: --root-id=FILE: with an image root the record is the overlay's "
                                "own; give --root-id alone", 2)
            if args.root_writable:
                from kbox import ext4write
                if args.overlay is not None:
                    raise UserError("kbox run: --root-writable and --overlay: a writable run's overlay is "
                                    "its own (temporary; its changes go into the image at the end)", 2)
                writer, overlay = ext4write.start(root)
            else:
                overlay = ext4image.prepare_overlay(root, args.overlay)
            root = overlay.root
        elif args.overlay is not None:
            raise UserError("kbox run: --overlay applies with --root IMAGE (an ext2/3/4 image) only", 2)
        elif args.root_writable and not os.path.exists(root):
            raise UserError(f"kbox run: --root {args.root}: does not exist", 2)
        elif args.root_writable:
            raise UserError(f"kbox run: --root-writable: {args.root} is a directory, which the program "
                            "writes already; --root-writable is for ext2/3/4 images", 2)
        try:
            view = RootView(root, args.workdir or "/", binds=args.bind, host_binds=args.host_binds,
                            display=args.root if overlay else None)
            path, host = view.find_program(command[0])
            info = elfinfo.inspect(host, display=command[0])
        except BaseException:
            if writer is not None:
                import shutil
                shutil.rmtree(overlay.dir, ignore_errors=True)
                writer.release()
            elif overlay is not None and overlay.temporary:
                ext4image.finish_overlay(overlay)
            raise
    elif (args.workdir is not None or args.bind or args.host_binds or args.root_id is not None
          or args.overlay is not None or args.root_writable):
        opt = ("--workdir" if args.workdir is not None else "--bind" if args.bind else
               "--host-binds" if args.host_binds else "--root-id" if args.root_id is not None else
               "--overlay" if args.overlay is not None else "--root-writable")
        raise UserError(f"kbox run: {opt} applies with --root only", 2)
    else:
        path = elfinfo.resolve_program(command[0])
        info = elfinfo.inspect(path, display=command[0])  # one-line errors, shell exit codes
    try:
        mode = args.syscall_mode
        if mode == AUTO:
            mode = runner.auto_mode(path, info=info).mode
        if mode == SECCOMP and args.virtual_pid:
            raise UserError("kbox run: --virtual-pid needs an in-process tier (--syscall-mode=trap): "
                            "the seccomp tier cannot rewrite the results of fork, clone or wait4", 2)
        if args.trap_backend and mode not in IN_PROCESS:
            raise UserError("kbox run: --trap-backend applies to the in-process tiers (trap, rewrite) only", 2)
        argv = runner.launch_argv(
            path, command[1:], mode=mode, trace=args.trace, trace_format=args.trace_format,
            trace_output=args.trace_output, deny=args.deny, virtual_pid=args.virtual_pid,
            stats=args.stats, trap_backend=args.trap_backend, allow_wx=args.allow_wx,
            argv0=command[0],
            extra=view.launcher_options(
                root_id=(overlay.record if overlay and args.root_id is not None else args.root_id),
                root_record=overlay.record if overlay else None) if view else (),
        )
    except BaseException:
        if writer is not None:   # a refused option: the image is untouched, the overlay goes
            import shutil
            shutil.rmtree(overlay.dir, ignore_errors=True)
            writer.release()
        raise
    sys.stdout.flush()
    sys.stderr.flush()
    # Python ignores SIGPIPE and SIGXFSZ; ignored signals survive exec, and the program must
    # start with them at their defaults, as a shell would start it (`yes | head` ends quietly).
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    if writer is not None:
        from kbox import ext4image, ext4write
        fake_root = args.root_id is not None
        return ext4image.run_with_temporary_overlay(
            argv, overlay, finish=lambda status: ext4write.finish(writer, overlay, fake_root, args.root, status))
    if overlay is not None and overlay.temporary:
        from kbox import ext4image
        return ext4image.run_with_temporary_overlay(argv, overlay)
    os.execv(argv[0], argv)
    return 125  # not reached


# Who registers each top-level command: (module, function). `kbox vm run` imports only
# kbox.vm.cli, not pyelftools and capstone (kbox analyze, 0.11 s) or the others: a warm VM
# start is about a second, and building every parser was a tenth of it.
# One function may add several commands (add_vm_commands adds `vm` and `doctor`):
# make_parser calls each function once.
_REGISTRARS = {
    "analyze": ("kbox.analyze", "add_analyze_command"),
    "bench": ("kbox.bench", "add_bench_command"),
    "rootfs": ("kbox.root_debian", "add_rootfs_command"),
    "image": ("kbox.ext4image", "add_image_command"),
    "vm": ("kbox.vm.cli", "add_vm_commands"),
    "doctor": ("kbox.vm.cli", "add_vm_commands"),
}


def _wanted_command(argv: list[str]) -> str | None:
    """The subcommand argv names (its first word that is not an option), if it is one."""
    for word in argv:
        if word == "--":
            return None
        if not word.startswith("-"):
            return word if word == "run" or word in _REGISTRARS else None
    return None


def make_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The kbox parser; with `only`, just that subcommand's parser is built (the others'
    modules are not imported), else all of them (kbox --help, a mistyped command)."""
    parser = argparse.ArgumentParser(
        prog="kbox",
        description="Run unmodified Linux programs with every system call interposed "
        "(seccomp, trap and rewrite tiers sharing one dispatcher), and validate the "
        "interposer on x86_64 and aarch64 kernels under QEMU.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"kbox {__version__}")
    sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND")
    if only in (None, "run"):
        add_run_command(sub)
    done = set()
    for name, (module, function) in _REGISTRARS.items():
        if only not in (None, name) or (module, function) in done:
            continue
        done.add((module, function))
        try:
            mod = importlib.import_module(module)
        except ImportError:  # the VM stack needs paramiko/pexpect; run/analyze/bench do not
            if module != "kbox.vm.cli":
                raise
            continue
        getattr(mod, function)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = make_parser(only=_wanted_command(argv))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        if str(exc):  # empty: reported already (by a child process)
            print(str(exc), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("kbox: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `kbox image info IMG | head -1`: the reader left, as SIGPIPE would end us
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
