"""Builds the C core (csrc/) for the host architecture whenever the package is built or
installed, editable installs included, so `pip install -e .` needs no manual step."""
from __future__ import annotations

import os
import platform
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.develop import develop
from setuptools.command.egg_info import egg_info

HERE = os.path.dirname(os.path.abspath(__file__))


def build_native() -> None:
    arch = platform.machine()
    out = os.path.join(HERE, "kbox", "_bin", arch)
    subprocess.check_call(["make", "-s", "-C", os.path.join(HERE, "csrc"), f"ARCH={arch}", f"O={out}"])


class BuildPy(build_py):
    def run(self) -> None:
        build_native()
        super().run()


class Develop(develop):
    def run(self) -> None:
        build_native()
        super().run()


class EggInfo(egg_info):
    # PEP 660 editable installs run egg_info but not always build_py.
    def run(self) -> None:
        build_native()
        super().run()


setup(cmdclass={"build_py": BuildPy, "develop": Develop, "egg_info": EggInfo})
