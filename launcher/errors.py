"""The error hierarchy: one base class, one subclass per kind, each with its exit code.

Exit codes follow SPEC §7 (they mirror BSD sysexits where one fits). Messages say what
failed, on which set/key/file, and what to do next; they never contain a secret value.
"""

from __future__ import annotations


class LauncherError(Exception):
    """An expected failure: the CLI prints its message on one line and exits with its code."""

    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class OperationFailed(LauncherError):
    """The operation could not be carried out (exit 1)."""

    exit_code = 1


class UsageError(LauncherError):
    """The command line is wrong (exit 2, like argparse)."""

    exit_code = 2


class InvalidInput(LauncherError):
    """A name, value or input file breaks a rule (EX_DATAERR, 65)."""

    exit_code = 65


class PermissionProblem(LauncherError):
    """A key file is too open, or the store cannot be accessed (EX_NOPERM, 77)."""

    exit_code = 77


class ConfigError(LauncherError):
    """No key, unknown or non-ready set, wrong key, tampered store (EX_CONFIG, 78)."""

    exit_code = 78


class DecryptionFailed(ConfigError):
    """Sealed data did not open: wrong key or tampering. Deliberately opaque (78)."""


class VersionRegression(ConfigError):
    """The store holds an older version than one already handed out: refused (78).

    Raised by the secrets source (store/source.py) when a set file is replaced by an older
    copy (git, a backup, an old ConfigMap): a launcher never moves back to a lower version.
    The engine reports it (log event, status line, metric) and keeps serving.
    """
