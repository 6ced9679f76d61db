"""One exception type for errors that are the user's to fix, reported as one line."""
from __future__ import annotations


class UserError(Exception):
    """An error already phrased for the user; the CLI prints it and exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
