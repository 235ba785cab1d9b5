"""The `agent-run` entry point: picks the command family, runs it, turns errors into exit codes.

Each family has its own module and parser, imported only when used, so that
`agent-run secrets list` never pays for the supervisor's imports and a launch never pays
for the store commands' parsers.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from launcher.errors import LauncherError

STORE_COMMANDS = frozenset({"secrets", "key", "platform"})
CONTROL_COMMANDS = frozenset({"status", "reload", "sessions"})


def _family(argv: Sequence[str]) -> Callable[[list[str]], int]:
    first = argv[0] if argv else ""
    if first in STORE_COMMANDS:
        from launcher.cli import store_commands

        return store_commands.main
    if first in CONTROL_COMMANDS:
        from launcher.cli import control_commands

        return control_commands.main
    from launcher.cli import run_command

    return run_command.main


def _first_launcher_error(error: BaseException) -> LauncherError | None:
    """Task groups wrap failures in ExceptionGroup; the user wants the one that matters."""
    if isinstance(error, LauncherError):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = _first_launcher_error(inner)
            if found is not None:
                return found
    return None


def fail(message: str, exit_code: int) -> int:
    """Print one error line on stderr and return the exit code to use."""
    sys.stderr.write(f"agent-run: error: {message}\n")
    sys.stderr.flush()
    return exit_code


def version() -> str:
    """The installed distribution's version (what pip installed), else the package's own."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("agent-run")
    except PackageNotFoundError:
        from launcher import __version__

        return __version__


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["--version"], ["-V"]):
        print(f"agent-run {version()}")
        return 0
    try:
        return _family(args)(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `agent-run secrets list | head` must not end with a traceback.
        return 1
    except BaseException as error:  # unwrap groups, re-raise the unexpected
        found = _first_launcher_error(error)
        if found is None:
            raise
        return fail(found.message, found.exit_code)
