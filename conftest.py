"""pytest plugin for the VM platform (options, VM fixtures, failure context, result matrix).

Host tests (tests/) ignore all of this. The VM tests (vmtests/) are collected only when
asked for (`pytest vmtests`): pyproject's testpaths = ["tests"] keeps a plain `pytest`
away from them.

- Options (one group): --arch, --kernel (repeatable or comma-separated; default both),
  --accel auto|kvm|tcg, --keep-vm, --fresh-vm (a VM per test module, restored from the
  saved post-boot state). Bad values are a pytest.UsageError listing choices.
- VM tests use the `vm` fixture; they are parametrized over the selected arch x kernel
  (and `tier` over the tiers) by pytest_generate_tests. Each xdist worker keeps a pool
  of booted VMs (one per arch x kernel it meets) for the whole session, with its own
  ports, console logs and artifacts (keyed by worker_id, so nothing collides).
- With xdist, tests are grouped per arch x kernel (--dist loadgroup) so one VM serves
  all tests of its group and each VM boots once per run rather than once per worker.
  Groups are handed out heaviest first (GROUP_COST: longest-processing-time-first keeps
  the two workers of a 2-core machine finishing together), and a worker shuts a VM down
  as soon as it moves on to its next group: an idle guest under TCG still burns CPU.
- The image build runs once per test run: ensure_image() holds a file lock per image,
  so with -n auto one worker builds and the others wait, then reuse the verified entry.
- A failing VM test gets a "kbox VM" report section: the one-line replay of its repro
  artifact (artifacts/repro/, kbox/vm/repro.py), console tail, dmesg, log path.
- The terminal summary ends with the arch x kernel x tier matrix.

The options are this conftest's own hook (pytest asks for them before any plugin is
configured); everything else is one plugin object, VMPlugin, that pytest_configure
registers once per process, with its per-run state in config.stash.
"""
from __future__ import annotations

import collections
import os
from pathlib import Path
from typing import Any

import pytest

from kbox import tiers
from kbox.errors import UserError
from kbox.vm import kernels, pytest_timing
from kbox.vm.arch import ARCHES, KERNELS

REPO = Path(__file__).resolve().parent
ARTIFACTS = Path(os.environ.get("KBOX_ARTIFACTS", REPO / "artifacts"))
TIERS = ("native", *tiers.TIERS, tiers.AUTO)
ACCEL_CHOICES = ("auto", "kvm", "tcg")
# Seconds each VM's share of the full matrix took on the 2-core reference machine (TCG,
# `pytest vmtests -n auto`, 2026-11-25: 1008 tests in 7 min 34 s).  Only the order matters:
# groups are scheduled heaviest first.  Kernels without seccomp sync wake-up (6.1) make the
# seccomp tier slow; aarch64 signal delivery under TCG makes the trap tier slow.
GROUP_COST = {("aarch64", "6.1"): 295, ("x86_64", "6.1"): 219, ("aarch64", "6.12"): 212,
              ("x86_64", "6.12"): 157}

# Per-run state, on the config (one per process: the controller and each xdist worker).
ARCHES_KEY = pytest.StashKey[list[str]]()      # --arch, validated
KERNELS_KEY = pytest.StashKey[list[str]]()     # --kernel, validated
# "arch|kernel|tier" -> outcome counts, filled on the controller from every worker's reports
CELLS_KEY = pytest.StashKey[dict[str, collections.Counter[str]]]()
# The VM a test used, for its failure report.
VM_KEY = pytest.StashKey[Any]()
# How many commands that VM had run when the test started (VM.commands), for its repro.
VM_COMMANDS_KEY = pytest.StashKey[int]()
# Keys of report.user_properties: they travel from xdist workers to the controller.
CELL_PROPERTY = "kbox_cell"
RETRY_PROPERTY = "kbox_ssh_retries"


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("kbox-vm", "kbox VM platform (pytest vmtests)")
    g.addoption("--arch", action="append", default=None, metavar="ARCH",
                help=f"guest architecture(s), repeatable or comma-separated; choices: "
                     f"{', '.join(ARCHES)} (default: all)")
    g.addoption("--kernel", action="append", default=None, metavar="VERSION",
                help=f"guest kernel: a series ({', '.join(KERNELS)}, default: all) or any "
                     "Debian version `kbox vm images --list-kernels` shows")
    g.addoption("--accel", default="auto", metavar="ACCEL",
                help=f"QEMU accelerator; choices: {', '.join(ACCEL_CHOICES)} (default auto: "
                     "KVM only if a probe guest runs)")
    g.addoption("--keep-vm", action="store_true", default=False,
                help="leave the VMs running at the end of the session (prints SSH ports)")
    g.addoption("--fresh-vm", action="store_true", default=False,
                help="a fresh VM for each test module of an arch x kernel, restored from the "
                     "state saved after its first boot (kbox/vm/snapshot.py), instead of one "
                     "VM per arch x kernel for the whole session")
    g.addoption("--quick", action="store_true", default=False,
                help="CI's cut of the matrix: every arch x kernel x tier, static guest programs "
                     "(glibc, and musl for the programs in QUICK_MUSL), no `auto` (it resolves "
                     "to a tier that is tested) and no real programs; the rest is deselected, "
                     "not skipped (scripts/vmtest runs all)")


def _split(values: list[str] | None, choices: tuple[str, ...] | list[str], what: str
           ) -> list[str]:
    if not values:
        return list(choices)
    out: list[str] = []
    for v in values:
        for item in (x.strip() for x in v.split(",")):
            if item not in choices:
                raise pytest.UsageError(f"--{what}: unknown value {item!r}; choose from "
                                        f"{', '.join(choices)}")
            if item not in out:
                out.append(item)
    return out


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vm: the test boots or uses a kbox guest VM")
    config.stash[ARCHES_KEY] = _split(config.getoption("arch"), tuple(ARCHES), "arch")
    try:
        config.stash[KERNELS_KEY] = kernels.parse_specs(config.getoption("kernel"),
                                                        config.stash[ARCHES_KEY])
    except UserError as exc:
        raise pytest.UsageError(f"--kernel: {exc}") from None
    accel = config.getoption("accel")
    if accel not in ACCEL_CHOICES:
        raise pytest.UsageError(f"--accel: unknown value {accel!r}; choose from "
                                f"{', '.join(ACCEL_CHOICES)}")
    # One VM per arch x kernel serves all of its tests: send a group to one worker.
    # The controller picks the scheduler from `dist`; workers re-parse the original argv,
    # so they learn it through workerinput (see VMPlugin.pytest_configure_node).
    if getattr(config.option, "dist", "no") == "load":
        config.option.dist = "loadgroup"
    if getattr(config.option, "dist", "no") == "loadgroup":
        # Keep the order pytest_collection_modifyitems chose (xdist would otherwise sort
        # groups by test count, which is the same for every VM).
        config.option.loadscopereorder = False
    wi = getattr(config, "workerinput", None)
    if wi is not None and wi.get("kbox_loadgroup"):
        config.option.loadgroup = True
    config.pluginmanager.register(VMPlugin(config), "kbox-vm")
    pytest_timing.register(config, ARTIFACTS)   # "where the time went", after the matrix


# The musl builds (NAME-musl) --quick keeps: the programs that run libc's own signal,
# cancellation and process-creation code, where musl differs from glibc (its cancellation
# points, posix_spawn, raise).  They cost about a quarter of all the musl builds (x86_64
# 6.1: 22 s of 82 s); the full matrix runs every one.
QUICK_MUSL = ("altstack", "cancel", "exitsignal", "forkexec", "signals", "sigsys_mask", "vfork")
# The root view programs --quick keeps (vmtests/test_root_view.py): the shell and coreutils
# ones; python3 and sqlite3 cost ~25 s a run in an aarch64 TCG guest, and the full matrix
# runs them.
QUICK_ROOT_PROGRAMS = ("cd-and-up", "files", "os-release")


def _quick_deselects(item: pytest.Item) -> bool:
    if item.nodeid.startswith("vmtests/test_warm_start.py"):
        return True   # CI does not warm-start; these make their own VMs (~20 s per cell)
    if item.name.startswith("test_share_on_a_restored_guest"):
        return True   # the same: a saved state per arch x kernel (vmtests/test_platform.py)
    cs = getattr(item, "callspec", None)
    if cs is None:
        return False
    if cs.params.get("tier") == "auto":
        return True
    program = str(cs.params.get("program", ""))
    if program.endswith("-dynamic"):
        return True
    if program.endswith("-musl") and program[:-len("-musl")] not in QUICK_MUSL:
        return True
    if item.name.startswith("test_program_inside_the_root") and \
            cs.params.get("name") not in QUICK_ROOT_PROGRAMS:
        return True
    return item.name.startswith("test_real_program_matches_native")


def _target(item: pytest.Item) -> tuple[str, str] | None:
    cs = getattr(item, "callspec", None)
    return tuple(cs.params["vm_target"]) if cs is not None and "vm_target" in cs.params \
        else None  # type: ignore[return-value]


class VMPlugin:
    """The hooks of the VM platform, registered once per process by pytest_configure."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        config.stash[CELLS_KEY] = collections.OrderedDict()
        # SSH retries (kbox.vm.ssh.RETRIES) this process has reported so far, and the
        # total over every process's reports (the controller's summary line).
        self.retries_reported: collections.Counter[str] = collections.Counter()
        self.retries_total: collections.Counter[str] = collections.Counter()

    @pytest.hookimpl
    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "vm_target" in metafunc.fixturenames:
            targets = [(a, k) for a in metafunc.config.stash[ARCHES_KEY]
                       for k in metafunc.config.stash[KERNELS_KEY]]
            metafunc.parametrize("vm_target", targets, ids=[f"{a}-{k}" for a, k in targets],
                                 scope="session")
        # Every tier, unless the test names its own (e.g. only the in-process ones).
        explicit = any("tier" in str(m.args[0])
                       for m in metafunc.definition.iter_markers("parametrize"))
        if "tier" in metafunc.fixturenames and not explicit:
            metafunc.parametrize("tier", TIERS)

    @pytest.hookimpl(tryfirst=True)   # before xdist's worker turns the group into the nodeid
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]
                                      ) -> None:
        if config.getoption("--quick", default=False):
            dropped = [i for i in items if _quick_deselects(i)]
            if dropped:
                config.hook.pytest_deselected(items=dropped)
                items[:] = [i for i in items if not _quick_deselects(i)]
        for item in items:
            t = _target(item)
            if t is not None:
                item.add_marker(pytest.mark.xdist_group(f"{t[0]}-{t[1]}"))
                item.add_marker(pytest.mark.vm)
        # Heaviest VM first, each VM's tests together (stable: file order within a VM), so
        # that xdist hands out groups longest first and a single process boots each VM once.
        items.sort(key=lambda i: -GROUP_COST.get(_target(i) or ("", ""), 1 << 30))

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        """(xdist, controller side) Tell each worker that tests are grouped by VM."""
        node.workerinput["kbox_loadgroup"] = node.config.getvalue("dist") == "loadgroup"

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
        outcome = yield
        report = outcome.get_result()
        cs = getattr(item, "callspec", None)
        if cs is not None and "vm_target" in cs.params and report.when == "call":
            arch, kernel = cs.params["vm_target"]
            tier = cs.params.get("tier", "-")
            report.user_properties.append((CELL_PROPERTY, f"{arch}|{kernel}|{tier}"))
        # SSH retries since the last report of this process (workers count their own).
        from kbox.vm import ssh as sshmod
        delta = collections.Counter(sshmod.RETRIES) - self.retries_reported
        if delta:
            report.user_properties.append((RETRY_PROPERTY, dict(delta)))
            self.retries_reported.update(delta)
        if report.failed and report.when in ("call", "setup"):
            vm = item.stash.get(VM_KEY, None)
            # Before dmesg below: that is a guest command too, not the test's.
            lines = self._repro(item, vm, report.when) if _target(item) else []
            if vm is not None:
                lines += [f"console log: {vm.log_path}", "--- console tail ---",
                          vm.console_tail(30)]
                if vm.is_running and report.when == "call":
                    lines += ["--- dmesg (tail) ---", vm.dmesg(timeout=10)]
            if lines:
                report.sections.append(("kbox VM", "\n".join(lines)))

    def _repro(self, item: pytest.Item, vm: Any, when: str) -> list[str]:
        """Write the failure's repro artifact (kbox/vm/repro.py); the report lines naming it."""
        from kbox.vm import repro
        from kbox.vm.accel import resolve_accel
        from kbox.vm.arch import get_arch
        params = dict(item.callspec.params)  # type: ignore[attr-defined]
        arch, kernel = params.pop("vm_target")
        accel = vm.accel.name if vm is not None and vm.accel is not None else \
            resolve_accel(self.config.getoption("accel"), get_arch(arch)).name
        commands = list(getattr(vm, "commands", [])[item.stash.get(VM_COMMANDS_KEY, 0):])
        data = repro.artifact_for(item.nodeid, arch, kernel, accel, vm, commands, params, when)
        try:
            path = repro.write_artifact(ARTIFACTS / "repro", data)
        except OSError as exc:
            return [f"repro: artifact not written ({exc})"]
        return repro.report_lines(path, data, Path.cwd())

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # Runs on the controller for reports from every worker (user_properties travel along).
        props: dict[str, Any] = dict(report.user_properties)
        self.retries_total.update(props.get(RETRY_PROPERTY, {}))
        cell = props.get(CELL_PROPERTY)
        if cell is not None:
            cells = self.config.stash[CELLS_KEY]
            cells.setdefault(cell, collections.Counter())[report.outcome] += 1

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int,
                                config: pytest.Config) -> None:
        cells = config.stash.get(CELLS_KEY, {})
        if not cells:
            return
        tr = terminalreporter
        tiers_seen = [t for t in (*TIERS, "-") if any(c.split("|")[2] == t for c in cells)]
        rows = sorted({tuple(c.split("|")[:2]) for c in cells})
        tr.section("kbox VM matrix (passed/total; s = skipped, F = failed)")
        header = f"{'arch':8} {'kernel':6} " + " ".join(
            f"{('other' if t == '-' else t):>12}" for t in tiers_seen)
        lines = [header]
        for arch, kernel in rows:
            out = []
            for t in tiers_seen:
                c = cells.get(f"{arch}|{kernel}|{t}")
                if not c:
                    out.append(f"{'':>12}")
                    continue
                total = sum(c.values())
                txt = f"{c['passed']}/{total}"
                if c["failed"]:
                    txt += f" {c['failed']}F"
                if c["skipped"]:
                    txt += f" {c['skipped']}s"
                out.append(f"{txt:>12}")
            lines.append(f"{arch:8} {kernel:6} " + " ".join(out))
        for line in lines:
            tr.write_line(line)
        retries = ", ".join(f"{k} {v}" for k, v in sorted(self.retries_total.items())) or "none"
        tr.write_line(f"SSH retries that fired: {retries}")
        # The same table for scripts/nightly's report.
        matrix = ARTIFACTS / "matrix.txt"
        try:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            matrix.write_text("\n".join(lines) + "\n")
        except OSError:
            pass


# -- fixtures ------------------------------------------------------------------------------
class VMPool:
    """This worker's booted VMs, one per (arch, kernel), reused across tests."""

    def __init__(self, worker_id: str, accel: str, keep: bool, fresh: bool = False) -> None:
        self.worker_id = worker_id
        self.accel = accel
        self.keep = keep
        # --fresh-vm: each test group (module) gets its own VM restored from the saved state.
        self.fresh = fresh
        self.groups: dict[tuple[str, str], str] = {}   # the group each VM was started for
        self.log_dir = ARTIFACTS / "vm-logs" / worker_id
        self.vms: dict[tuple[str, str], Any] = {}
        self.boot_failures: dict[tuple[str, str], str] = {}
        self.cache: dict[tuple[Any, ...], Any] = {}   # per-VM memo (native runs, tiers)

    def get(self, arch: str, kernel: str, group: str = "") -> Any:
        from kbox.vm.images import ensure_image
        from kbox.vm.machine import VM, VMError

        key = (arch, kernel)
        vm = self.vms.get(key)
        if vm is not None and vm.is_running and (not self.fresh or self.groups.get(key) == group):
            return vm
        if vm is not None:            # died (a crash in an earlier test), or a new group
            vm.kill()
            del self.vms[key]
            self.cache = {k: v for k, v in self.cache.items() if k[0] != key}
        if key in self.boot_failures:
            pytest.fail(f"{arch}/{kernel} VM failed to boot earlier in this session:\n"
                        f"{self.boot_failures[key]}", pytrace=False)
        self.retire_others(key)
        if self.fresh:
            return self._restore(arch, kernel, group)
        image = ensure_image(arch, kernel, progress=False)
        # --keep-vm launches the VM detached (no death signal, no atexit kill) so it
        # survives the run for inspection; the summary prints how to reach and kill it.
        vm = VM(image, accel=self.accel, worker_id=self.worker_id, log_dir=self.log_dir,
                name=f"{arch}-{kernel}-{self.worker_id}", detached=self.keep)
        try:
            vm.launch()
            vm.wait_ready()
        except VMError as exc:
            vm.kill()
            self.boot_failures[key] = str(exc)
            pytest.fail(f"{arch}/{kernel} VM failed to boot: {exc}", pytrace=False)
        self.vms[key] = vm
        return vm

    def _restore(self, arch: str, kernel: str, group: str) -> Any:
        """A VM for `group` restored from the saved state (the first one boots and saves)."""
        from kbox.vm import snapshot
        from kbox.vm.images import ensure_image
        from kbox.vm.machine import VMError

        key = (arch, kernel)
        try:
            vm = snapshot.start(
                ensure_image(arch, kernel, progress=False, checksums=False), accel=self.accel,
                cold_image=lambda: ensure_image(arch, kernel, progress=False),
                worker_id=self.worker_id, log_dir=self.log_dir, detached=self.keep,
                name=f"{arch}-{kernel}-{self.worker_id}-{group.rsplit('.', 1)[-1]}")
        except VMError as exc:
            self.boot_failures[key] = str(exc)
            pytest.fail(f"{arch}/{kernel} VM failed to start: {exc}", pytrace=False)
        self.vms[key] = vm
        self.groups[key] = group
        return vm

    def retire_others(self, key: tuple[str, str]) -> None:
        """Shut down the VMs of groups this process has finished: tests are ordered by VM
        (pytest_collection_modifyitems) and xdist sends a whole group to one worker, so a
        new VM means the earlier ones are done.  --keep-vm keeps them all."""
        if self.keep:
            return
        for other in [k for k in self.vms if k != key]:
            self.vms.pop(other).shutdown(timeout=3)
            self.cache = {k: v for k, v in self.cache.items() if k[0] != other}

    def close(self) -> None:
        for (arch, kernel), vm in self.vms.items():
            if self.keep and vm.is_running:
                msg = (f"kbox: kept {arch}/{kernel} VM (kill {vm.pid}): ssh -p {vm.ssh_port} "
                       f"-i {vm.image.ssh_key} root@127.0.0.1; console log {vm.log_path}")
                print("\n" + msg)
                (ARTIFACTS / "kept-vms.txt").open("a").write(msg + "\n")
                vm.release()
                continue
            vm.shutdown(timeout=3)


@pytest.fixture(scope="session")
def vm_pool(request: pytest.FixtureRequest, worker_id: str) -> Any:
    pool = VMPool(worker_id, request.config.getoption("accel"),
                  request.config.getoption("keep_vm"), request.config.getoption("fresh_vm"))
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def worker_id(request: pytest.FixtureRequest) -> str:
    """xdist's worker id ("gw0"...), "master" without xdist (overrides xdist's fixture)."""
    wi = getattr(request.config, "workerinput", None)
    return wi["workerid"] if wi else "master"


@pytest.fixture
def vm(vm_pool: Any, vm_target: tuple[str, str], request: pytest.FixtureRequest) -> Any:
    machine = vm_pool.get(*vm_target, group=request.module.__name__)
    request.node.stash[VM_KEY] = machine
    request.node.stash[VM_COMMANDS_KEY] = len(machine.commands)
    return machine


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS

