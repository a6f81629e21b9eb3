"""Errors that the CLI reports in one line (no traceback)."""

from __future__ import annotations

from pathlib import Path


class SelflabelError(Exception):
    """A problem the user can fix: bad input, a bad setting, a refused action."""


class InputError(SelflabelError):
    """A problem with one input file or folder; the message starts with its path."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class ConfigError(SelflabelError):
    """An unknown or invalid setting."""
