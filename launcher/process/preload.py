"""What the template interpreter imports ahead of time (#18): the agent's dependencies.

`--preload auto` (the default) reads the target's source — never imports it — and takes the
modules its top-level `import` lines name, minus the agent's own: a module or package found
beside the script (or in the working directory for `-m`) is the agent's, and its
module-level code must run in each process, with that process's secrets. The agent's own
modules are read the same way (up to a bound), so a dependency imported only by the agent's
package is found too. `--preload MOD,MOD` names them instead; `--preload none` turns the
template off.

Why a line scan and not `ast`: this runs on the launch path of every Python target; a scan of
column-0 import lines costs well under a millisecond and needs no import. Imports indented
under a function, a `try:` or an `if` are not preloaded: the process imports them itself,
as a fresh interpreter would.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable

from launcher.config import RunConfig, Target, TargetKind

AUTO = "auto"
NONE = "none"
_FILES_READ = 64  # of the agent's own modules, at most
_IMPORT = re.compile(rb"^import[ \t]+([\w., \t]+)", re.MULTILINE)
_FROM = re.compile(rb"^from[ \t]+([\w.]+)[ \t]+import\b", re.MULTILINE)


def parse(text: str) -> tuple[str, ...] | str:
    """`--preload`: `auto`, `none`, or module names separated by commas."""
    value = text.strip()
    if value.lower() in (AUTO, NONE):
        return value.lower()
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    for name in names:
        if not all(part.isidentifier() for part in name.split(".")):
            raise ValueError(text)
    if not names:
        raise ValueError(text)
    return names


def agent_directory(target: Target) -> str:
    """Where the agent's own modules live: the script's directory, or the working directory."""
    if target.kind is TargetKind.SCRIPT:
        return os.path.dirname(os.path.realpath(target.value))
    return os.getcwd()


def imported_names(source: bytes) -> list[str]:
    """Absolute module names of the column-0 import lines of `source`, in order."""
    found: list[tuple[int, str]] = []
    for match in _IMPORT.finditer(source):
        for part in match.group(1).decode("ascii", "replace").split(","):
            name = part.split()[0] if part.split() else ""
            found.append((match.start(), name))
    for match in _FROM.finditer(source):
        found.append((match.start(), match.group(1).decode("ascii", "replace")))
    found.sort(key=lambda item: item[0])  # stable: a line's names keep their order
    return [name for _, name in found if name and not name.startswith(".")]


def _own_file(directory: str, name: str) -> str | None:
    """The agent's own file for module `name` under `directory`, if it is the agent's."""
    base = os.path.join(directory, *name.split("."))
    for path in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(path):
            return path
    return None


def _is_own(directory: str, name: str) -> bool:
    top = name.split(".")[0]
    path = os.path.join(directory, top)
    return os.path.isfile(path + ".py") or os.path.isdir(path)


def _target_file(target: Target, directory: str) -> str | None:
    if target.kind is TargetKind.SCRIPT:
        return target.value
    if target.kind is TargetKind.MODULE:
        found = _own_file(directory, target.value)
        if found is None:
            main = os.path.join(directory, *target.value.split("."), "__main__.py")
            found = main if os.path.isfile(main) else None
        return found
    return None


def discover(target: Target) -> list[str]:
    """The third-party (and standard library) modules the agent imports at its top level."""
    return _walk(target)[0]


def agent_files(target: Target) -> list[str]:
    """The agent's own source files that its top-level imports reach, by the paths its
    importer will open them by: the template compiles them, never runs them."""
    return _walk(target)[1]


def _walk(target: Target) -> tuple[list[str], list[str]]:
    """(modules the agent imports, the agent's own files read), from its target file."""
    directory = agent_directory(target)
    first = _target_file(target, directory)
    if first is None:
        return [], []
    first = os.path.abspath(first)
    queue, seen, modules, files = [first], {os.path.realpath(first)}, [], []
    while queue and len(seen) <= _FILES_READ:
        path = queue.pop(0)
        files.append(path)
        try:
            with open(path, "rb") as source:
                names = imported_names(source.read())
        except OSError:
            continue
        for name in names:
            if name == "__future__":
                continue
            if not _is_own(directory, name):
                if name not in modules:
                    modules.append(name)
                continue
            own = _own_file(directory, name)
            if own is not None and os.path.realpath(own) not in seen:
                seen.add(os.path.realpath(own))
                queue.append(own)
    return modules, files


def third_party(modules: Iterable[str]) -> list[str]:
    """Those of `modules` that are not part of the standard library."""
    return [m for m in modules if m.split(".")[0] not in sys.stdlib_module_names]


def modules_for(config: RunConfig, *, session: bool) -> list[str] | None:
    """What the template of this launch imports, or None for no template: `--preload none`,
    not a Python target, or (worker mode, `auto`) an agent that imports only the standard
    library: a fresh interpreter then starts in ~20 ms, and a template would only add one
    more process. Kept light (no socket, no json): it runs on every Python launch path."""
    if not config.target.is_python or config.preload == NONE:
        return None
    if config.preload != AUTO:
        return config.preload.split(",")
    modules = discover(config.target)
    if not session and not third_party(modules):
        return None
    return modules
