"""Session mode, child side: import the agent once, wait for one session, run it, exit.

The launcher starts `python -c BOOTSTRAP /path/to/runtime.py KIND TARGET FUNCTION STOP_SIGNAL
[ARGS...]` (see `command`) with one end of a socketpair open on the fd named by
AGENT_RUN_SESSION_FD. The protocol is one line per message:

    child  -> launcher   ready                      the agent is imported (warm)
    launcher -> child    {"session_id": ..., "body": ...}
    child  -> launcher   started                    the entrypoint is being called

The agent is imported with the environment this process was started with (its secrets
version), so heavy imports and model loading happen before any session arrives. A script is
imported under its file's stem, as `import bot` would, so its `if __name__ == "__main__":`
block (a Pipecat bot's local runner) does not run. An async entrypoint gets its event loop
created during warm-up as well: `asyncio` costs ~25 ms to import, which a warm start must not
pay.

One process serves one session and exits when it ends: 0 when the entrypoint returned or
was stopped by the stop signal (`DELETE /sessions/{id}`), 1 when it raised (traceback on
stderr, relayed masked). A closed channel before any session means "retired": exit 0.

How the child starts (#11, item 5): session processes run in the user's directory, so
`python -m launcher.sessions.runtime` let a project's own `launcher.py` or `launcher/`
shadow ours. The bootstrap loads this file by its absolute path under a private module
name, with nothing of ours on sys.path, and drops `-c`'s "" entry: the agent then sees the
sys.path it would see under `python bot.py` (its own directory first) or `python -m`
(the working directory first). Hence this module imports only the standard library: it
needs no `launcher` package in the child, whatever interpreter runs it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

CHANNEL_VARIABLE = "AGENT_RUN_SESSION_FD"
SESSION_VARIABLE = "AGENT_RUN_SESSION_ID"
MODULE_NAME = "_agent_run_session_runtime"  # nothing a project would call its own module

# Run by `python -c`; argv[1] is this file. Standard library only, nothing from the cwd:
# the "" that -c puts first on sys.path goes before anything is imported through it.
BOOTSTRAP = f"""\
import sys
if sys.path and sys.path[0] == "":
    del sys.path[0]
from importlib.util import module_from_spec, spec_from_file_location
spec = spec_from_file_location({MODULE_NAME!r}, sys.argv[1])
runtime = module_from_spec(spec)
sys.modules[spec.name] = runtime
spec.loader.exec_module(runtime)
runtime._exit(runtime.main(sys.argv[2:]))
"""


def command(
    python: str, kind: str, target: str, function: str, stop_signal: int, args: list[str]
) -> list[str]:
    """The argv of a session process: `python` runs this file, immune to the user's modules."""
    here = os.path.abspath(__file__)
    return [python, "-c", BOOTSTRAP, here, kind, target, function, str(stop_signal), *args]


class RunnerArguments:
    """What the entrypoint receives, shaped like Pipecat's runner arguments.

    `session_id` and `body` (the request's JSON) are what agents read; `handle_sigint` and
    `handle_sigterm` are False because this runtime owns the signals (a Pipecat bot passes
    them to its `PipelineRunner`), as on Pipecat Cloud.
    """

    __slots__ = (
        "body",
        "handle_sigint",
        "handle_sigterm",
        "pipeline_idle_timeout_secs",
        "session_id",
    )

    def __init__(self, session_id: str, body: Any) -> None:
        self.session_id = session_id
        self.body = body
        self.handle_sigint = False
        self.handle_sigterm = False
        self.pipeline_idle_timeout_secs = 300

    def __repr__(self) -> str:
        return f"RunnerArguments(session_id={self.session_id!r})"


class SessionStopped(BaseException):
    """Raised in a synchronous entrypoint by the stop signal."""


def load(kind: str, target: str, function: str) -> Callable[..., Any]:
    """Import the agent (its module-level code runs here, once) and return the entrypoint."""
    import importlib

    if kind == "script":
        import importlib.util

        path = os.path.abspath(target)
        sys.path.insert(0, os.path.dirname(path))  # as `python bot.py` does
        name = os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {target}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    else:
        sys.path.insert(0, os.getcwd())  # as `python -m module` does
        module = importlib.import_module(target)
    entry = getattr(module, function, None)
    if not callable(entry):
        raise ImportError(f"{target} has no function {function}()")
    return entry  # type: ignore[no-any-return]


def _read_line(channel: socket.socket) -> bytes:
    """One line from the channel; b"" when the launcher closed it."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = channel.recv(65536)
        if not chunk:
            return b""
        data += chunk
    return data


def _run(entry: Callable[..., Any], arguments: RunnerArguments, stop: int, runner: Any) -> None:
    if runner is not None:

        async def session() -> None:
            import asyncio

            task = asyncio.current_task()
            assert task is not None
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(stop, task.cancel)
            try:
                await entry(arguments)
            finally:
                loop.remove_signal_handler(stop)

        import asyncio

        try:
            runner.run(session())
        except asyncio.CancelledError:
            pass  # stopped by DELETE or shutdown: a clean end
        finally:
            runner.close()
        return

    def stopped(signum: int, frame: object) -> None:
        raise SessionStopped

    signal.signal(stop, stopped)
    try:
        result = entry(arguments)
        if hasattr(result, "__await__"):  # a sync function that returned a coroutine
            import asyncio

            async def finish() -> None:
                await result

            asyncio.run(finish())
    except SessionStopped:
        pass


def main(argv: list[str]) -> int:
    kind, target, function, stop_text, *args = argv
    stop = int(stop_text)
    channel = socket.socket(fileno=int(os.environ.pop(CHANNEL_VARIABLE)))
    channel.setblocking(True)
    sys.argv = [target, *args]
    try:
        entry = load(kind, target, function)
    except Exception:
        import traceback

        traceback.print_exc()
        return 1
    runner = None
    import inspect

    if inspect.iscoroutinefunction(entry):
        import asyncio

        runner = asyncio.Runner()
        runner.get_loop()  # the loop exists before the session: nothing left to build then
    try:
        channel.sendall(b"ready\n")
        line = _read_line(channel)
    except OSError:
        line = b""
    if not line:
        return 0  # retired before it got a session
    import json

    request = json.loads(line)
    session_id = str(request["session_id"])
    os.environ[SESSION_VARIABLE] = session_id
    arguments = RunnerArguments(session_id, request.get("body"))
    try:
        channel.sendall(b"started\n")
    except OSError:
        return 0  # the launcher gave up on this start
    try:
        _run(entry, arguments, stop, runner)
    except Exception:
        import traceback

        traceback.print_exc()
        return 1
    return 0


def _exit(code: int) -> None:
    """Exit now that the session is over, even if the agent left non-daemon threads behind:
    a session that ended must not keep its process (atexit handlers still run)."""
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit(main(sys.argv[1:]))
