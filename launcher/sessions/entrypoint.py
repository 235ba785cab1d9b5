"""Which targets run in session mode, and which function serves a session (SPEC §5).

A target runs in session mode when it defines Pipecat's entrypoint at module level,
`async def bot(runner_args)`, when `--entrypoint` names a function, or with `--mode session`;
`--mode worker` never does. Detection reads the source and never imports it: the agent's
module-level code (heavy imports, model loading) must run once, in the process that serves
the session, not also in the launcher.

Decisions:
- Only Pipecat's signature switches modes by itself: an `async def bot` callable with one
  argument. A plain script with a helper that happens to be called `bot` (`def bot():`, a
  sync `def bot(x)`) stays a script; `--mode session` or `--entrypoint` asks explicitly.
- A plain text search for `async def bot` comes first, so the worker-mode launch path (where
  most scripts define no `bot`) pays neither `ast` nor a parse; `ast` then confirms that the
  definition is at module level and not in a class, a string or a comment.
- `-m package.module` is located with `PathFinder` one component at a time, which reads
  directories only: `importlib.util.find_spec` would import (run) the parent packages.
- A script target is a `str` path: this runs on the launch critical path, where pathlib
  costs ~4 ms to import; only `-m` targets (found by `PathFinder`) get a Path.
"""

from __future__ import annotations

import os
import re
import sys
from typing import TYPE_CHECKING, NamedTuple

from launcher.config import Target, TargetKind
from launcher.errors import InvalidInput, UsageError

if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

DEFAULT_FUNCTION = "bot"


class Entrypoint(NamedTuple):
    """What a session process imports and calls."""

    kind: str  # "script" (a file path) or "module" (a dotted name)
    target: str
    function: str
    # `-- /venv/bin/python bot.py ARGS`: the bot's own interpreter and its arguments (the
    # session processes need only the standard library of ours: runtime.py runs by path).
    python: str | None = None  # None: agent-run's interpreter
    args: tuple[str, ...] | None = None  # None: the target's

    def __str__(self) -> str:
        return f"{self.target}:{self.function}"


def _definition(source: bytes, function: str, filename: str, only_async: bool) -> Any:
    """The module-level `def`/`async def` of `function` in `source`, or None."""
    prefix = rb"^async[ \t]+" if only_async else rb"^(?:async[ \t]+)?"
    pattern = prefix + rb"def[ \t]+" + re.escape(function.encode()) + rb"\b"
    if re.search(pattern, source, re.MULTILINE) is None:
        return None
    import ast

    try:
        tree = ast.parse(source, filename=filename)
    except (SyntaxError, ValueError):
        return None  # the agent's own import reports the syntax error, with a traceback
    kinds = (ast.AsyncFunctionDef,) if only_async else (ast.FunctionDef, ast.AsyncFunctionDef)
    found = [node for node in tree.body if isinstance(node, kinds) and node.name == function]
    return found[-1] if found else None  # the last definition is the one a module keeps


def defines(source: bytes, function: str, filename: str = "<agent>") -> bool:
    """True when `source` defines `function` (def or async def) at module level."""
    return _definition(source, function, filename, only_async=False) is not None


def is_session_bot(source: bytes, filename: str = "<agent>") -> bool:
    """True when `source` defines Pipecat's entrypoint: `async def bot(runner_args)` at
    module level, callable with one positional argument."""
    node = _definition(source, DEFAULT_FUNCTION, filename, only_async=True)
    if node is None:
        return False
    args = node.args
    positional = [*args.posonlyargs, *args.args]
    required_keywords = [d for d in args.kw_defaults if d is None]
    if required_keywords:
        return False
    if not positional:
        return args.vararg is not None  # async def bot(*args)
    return len(positional) - len(args.defaults) <= 1


def module_file(name: str, search: list[str] | None = None) -> Path | None:
    """The source file `python -m name` would run, found without importing anything."""
    from importlib.machinery import PathFinder
    from pathlib import Path

    path: list[str] | None = search if search is not None else [os.getcwd(), *sys.path[1:]]
    origin: str | None = None
    parts = name.split(".")
    for index, part in enumerate(parts):
        if not part.isidentifier():
            return None
        spec = PathFinder.find_spec(".".join(parts[: index + 1]), path)
        if spec is None:
            return None
        origin = spec.origin if spec.has_location else None
        locations = spec.submodule_search_locations
        path = list(locations) if locations is not None else None
        if path is None and index < len(parts) - 1:
            return None  # a plain module cannot have submodules
    if path is not None:  # a package: -m runs its __main__
        for directory in path:
            candidate = Path(directory) / "__main__.py"
            if candidate.is_file():
                return candidate
        return None
    if origin is None or not origin.endswith(".py"):
        return None
    return Path(origin)


def _source(path: str | Path) -> bytes | None:
    try:
        with open(path, "rb") as stream:
            return stream.read()
    except OSError:
        return None


def _for_target(target: Target) -> tuple[str, str, str | Path | None]:
    if target.kind is TargetKind.SCRIPT:
        return "script", target.value, target.value
    if target.kind is TargetKind.MODULE:
        found = module_file(target.value)
        module = target.value
        if found is not None and found.name == "__main__.py" and not module.endswith("__main__"):
            module += ".__main__"
        return "module", module, found
    raise UsageError(
        "--entrypoint needs a Python target (bot.py or -m MODULE); "
        f"{target.value} is run as a command"
    )


def find_entrypoint(target: Target, option: str | None, mode: str = "auto") -> Entrypoint | None:
    """The session entrypoint of `target`, or None when it runs as a pool of workers.

    `option` is `--entrypoint`: `function` or `:function` (in the target),
    `module:function` (a module on the path) or `path/to/file.py:function`. `mode` is
    `--mode`: `auto` (Pipecat's `async def bot(runner_args)` means sessions), `worker` or
    `session` (then `bot` may be any module-level function).
    """
    interpreted = target.interpreted()
    if interpreted is not None:
        python, inner = interpreted
        entry = find_entrypoint(inner, option, mode)
        return entry._replace(python=python, args=inner.args) if entry is not None else None
    if mode == "worker":
        if option is not None:
            raise UsageError(
                "--entrypoint serves sessions and --mode worker runs a pool of workers: "
                "give one of them"
            )
        return None
    if option is None:
        if target.kind is TargetKind.COMMAND:
            if mode == "session":
                raise UsageError(
                    "--mode session needs a Python target (bot.py or -m MODULE); "
                    f"{target.value} is run as a command"
                )
            return None
        kind, name, path = _for_target(target)
        source = _source(path) if path is not None else None
        if mode == "session":
            if source is None or not defines(source, DEFAULT_FUNCTION, str(path)):
                raise UsageError(
                    f"--mode session: {path or name} defines no module-level bot() "
                    "(name the session function with --entrypoint FUNC)"
                )
        elif source is None or not is_session_bot(source, str(path)):
            return None
        return Entrypoint(kind, name, DEFAULT_FUNCTION)
    module, _, function = option.rpartition(":")
    if not function.isidentifier():
        raise UsageError(
            f"--entrypoint {option!r} is not MODULE:FUNCTION, FILE.py:FUNCTION or FUNCTION "
            "(for example --entrypoint agent:run_session)"
        )
    if not module:
        kind, name, path = _for_target(target)
    elif module.endswith(".py"):
        kind, name, path = "script", module, module
        if not os.path.isfile(path):
            raise InvalidInput(f"--entrypoint: {module} does not exist")
    else:
        kind, name, path = "module", module, module_file(module)
        if path is None:
            raise UsageError(
                f"--entrypoint: no module {module!r} on the path "
                f"(searched {os.getcwd()} and the interpreter's path)"
            )
    source = _source(path) if path is not None else None
    if source is not None and not defines(source, function, str(path)):
        raise UsageError(
            f"--entrypoint: {path} defines no module-level function {function}() (def or async def)"
        )
    return Entrypoint(kind, name, function)
