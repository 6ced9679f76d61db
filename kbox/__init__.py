"""kbox: run an unmodified Linux program with every system call interposed."""
from __future__ import annotations

__version__ = "0.1.0"
