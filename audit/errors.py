"""One error tree for the whole tool.

Core modules raise an ``AuditError`` (or a subclass) with a one-line message
saying what is wrong and a hint saying what to do. The CLI prints it once, on
stderr, and exits with the error's ``exit_code``: never a traceback.

Exit codes (documented in the README):
    0  success
    1  an input, configuration or database problem (``AuditError``)
    2  wrong command-line usage (typer/click's own code)
    3  an internal error (a bug): one line; AUDIT_DEBUG=1 shows the traceback
    130 interrupted (Ctrl-C)
"""

from __future__ import annotations


class AuditError(Exception):
    """A failure the user can act on: ``message`` says what, ``hint`` what to do."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class InputError(AuditError):
    """A log file or path that cannot be read or understood."""


class ConfigError(AuditError):
    """A bad option value, mapping or configuration file."""


class DatabaseError(AuditError):
    """The audit database cannot be opened or is in an unexpected state."""
