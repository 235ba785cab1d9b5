"""Running the real CLI as another local user, and places such a user can reach.

The tests that use it run as root (they create files owned by uid 65534, `nobody`, and
run `agent-run` under that uid); elsewhere they are skipped with the reason (conftest.py's
`shared_dir` fixture). The switch is subprocess's own (`as_uid`: setgroups, setgid, setuid)
or, where the interpreter lies in a directory only root may enter (a pyenv under /root),
util-linux's `setpriv`, which some sandboxes let through; whichever can start Python is used.
A launcher's `--user` workers switch as `as_uid` does, so tests whose workers run Python
find one with `interpreter_for`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

NOBODY = 65534


def as_uid(uid: int) -> dict[str, Any]:
    """subprocess keyword arguments that start the child as uid:uid without supplementary
    groups: what `agent-run --user` does to its workers (setgroups, setgid, setuid)."""
    return {"user": uid, "group": uid, "extra_groups": []}


_INTERPRETERS: dict[int, tuple[str, str] | None] = {}


def interpreter_for(uid: int) -> tuple[str, str] | None:
    """A Python that a process switched to `uid` (`as_uid`, or a launcher's `--user`
    worker) can exec, and the PYTHONPATH giving it this checkout and its dependencies (the
    test's own interpreter may live under root's 0700 home); None when there is none."""
    if uid not in _INTERPRETERS:
        import sysconfig

        path = os.pathsep.join(
            [str(Path(__file__).parent.parent), sysconfig.get_paths()["purelib"]]
        )
        _INTERPRETERS[uid] = None
        for candidate in (sys.executable, shutil.which("python3"), "/usr/bin/python3"):
            if candidate is None:
                continue
            try:
                probe = subprocess.run(
                    [candidate, "-c", "import cryptography, launcher"],
                    env={"PYTHONPATH": path}, capture_output=True, timeout=60, **as_uid(uid),
                )  # fmt: skip
            except PermissionError:
                continue
            if probe.returncode == 0:
                _INTERPRETERS[uid] = (candidate, path)
                break
    return _INTERPRETERS[uid]


def _setpriv(uid: int) -> list[str]:
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]


_RUNNER: list[str] = []  # [] until probed; then ["preexec"] or the setpriv prefix


def _run(argv: list[str], uid: int, **kwargs: object) -> subprocess.CompletedProcess[str]:
    if _RUNNER == ["preexec"]:
        return subprocess.run(argv, **as_uid(uid), **kwargs)  # type: ignore[call-overload, no-any-return]
    return subprocess.run(_RUNNER + argv, **kwargs)  # type: ignore[call-overload, no-any-return]


def cannot_run_as_nobody() -> str | None:
    """Why the CLI cannot be run as uid 65534 here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root, to create files owned by another user and run as that user"
    probe = [sys.executable, "-c", "import launcher.cli"]
    candidates: list[list[str]] = [["preexec"]]
    if shutil.which("setpriv"):
        candidates.append(_setpriv(NOBODY))
    for runner in candidates:
        _RUNNER[:] = runner
        try:
            if _run(probe, NOBODY, cwd="/", capture_output=True, timeout=60).returncode == 0:
                return None
        except OSError:
            continue
    _RUNNER[:] = []
    return "uid 65534 cannot start this Python (its directory is private to root)"


def run_cli(
    args: Sequence[str], env: Mapping[str, str], cwd: Path, uid: int | None = None
) -> subprocess.CompletedProcess[str]:
    """`agent-run ARGS` as a real process, as `uid` when given."""
    argv = [sys.executable, "-m", "launcher", *args]
    options: dict[str, object] = {
        "env": dict(env), "cwd": cwd, "capture_output": True, "text": True, "timeout": 60
    }  # fmt: skip
    if uid is None:
        return subprocess.run(argv, **options)  # type: ignore[call-overload, no-any-return]
    assert _RUNNER, "call cannot_run_as_nobody() first (the shared_dir fixture does)"
    if _RUNNER != ["preexec"]:
        _RUNNER[:] = _setpriv(uid)
    return _run(argv, uid, **options)


def setpriv_prefix(uid: int) -> list[str]:
    """The argv prefix that runs a command as `uid` from a shell script (setpriv)."""
    return _setpriv(uid)
