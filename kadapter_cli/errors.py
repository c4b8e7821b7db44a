"""Errors a user can act on.

`BadInput` (exit code 2) is for anything wrong with what the user gave us: an unreadable file, a
malformed record, an option that contradicts an artifact. Its message names the file and the record
or line. Anything else that escapes a command is an internal failure (exit code 1).
"""

from __future__ import annotations

from pathlib import Path


class KadapterError(Exception):
    """Base class of errors with a message meant for the user."""

    exit_code = 1


class BadInput(KadapterError):
    """Bad input: exit code 2, one clear line naming the file and the record or line."""

    exit_code = 2

    def __init__(self, message: str, path: str | Path | None = None, record: str | int | None = None):
        self.message = message
        self.path = None if path is None else str(path)
        self.record = record
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = ""
        if self.path is not None:
            where = self.path
            if self.record is not None:
                where += f", {self.record if isinstance(self.record, str) else f'record {self.record}'}"
            where += ": "
        elif self.record is not None:
            where = f"{self.record if isinstance(self.record, str) else f'record {self.record}'}: "
        return where + self.message


class OutputExists(BadInput):
    """The output folder exists and neither --overwrite nor --resume was given."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a resumable stage; the message says what was kept and how to continue."""
