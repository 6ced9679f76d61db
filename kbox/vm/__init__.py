"""The QEMU platform: guest images, the VM object, its console and SSH."""
