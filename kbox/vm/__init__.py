"""The QEMU platform: guest images, the VM object, its console and SSH."""
import sys

# paramiko imports `invoke` (~40 ms, a third of paramiko's import) only for ssh_config's
# `Match exec`, which kbox never uses (it reads no ssh_config): a None entry makes that
# import fail at once, as paramiko allows.  Not done if something already loaded invoke.
sys.modules.setdefault("invoke", None)  # type: ignore[arg-type]
