"""Session mode, child side: import the agent once, wait for one session, run it, exit.

The launcher starts `python -c BOOTSTRAP /path/to/runtime.py KIND TARGET FUNCTION STOP_SIGNAL
[ARGS...]` (see `command`) with one end of a socketpair open on the fd named by
AGENT_RUN_SESSION_FD. Session processes run in the user's directory, so
`python -m launcher.sessions.runtime` let a project's own `launcher.py` or `launcher/`
shadow ours (#11): the bootstrap loads this file by its absolute path under a private module
name, with nothing of ours on sys.path, and drops `-c`'s "" entry, so the agent sees the
sys.path it would see under `python bot.py` or `python -m`. Hence this module is
self-contained: the standard library, plus Pipecat, Starlette and uvicorn when the agent's
own environment has them; agent-run need not be installed where the agent runs.

The channel carries one line per message:

    child  -> launcher   overridden KEY,KEY         import changed the bound values (re-applied)
    child  -> launcher   ready [readyz]             the agent is imported (warm)
    launcher -> child    {"readyz": true}           /readyz: call the agent's readyz()
    child  -> launcher   readyz {"ready": ...}
    launcher -> child    {"session_id": ..., "kind": ..., "body": ...}   (+ a socket, SCM_RIGHTS)
    child  -> launcher   started                    the entrypoint is being called
    child  -> launcher   called                     (websocket) handshake done, bot() called

`kind` is "plain" (POST /sessions), "daily" (a room is known: `room_url`, `token`) or
"websocket": the launcher read the request head of `WS /ws`, admitted the call and passed the
accepted TCP connection itself; `head` is that request head. This process completes the
handshake with uvicorn's websocket protocol, so the agent gets a real Starlette `WebSocket`
and the call's audio flows between the caller and this process only.

The entrypoint receives Pipecat's own argument types when the agent imported Pipecat
(`WebSocketRunnerArguments`, `DailyRunnerArguments`, `RunnerArguments`; Pipecat Cloud's
`pipecatcloud.agent` subclasses when installed), resolved during warm-up; otherwise plain
objects with the same fields.

One process serves one session and exits when it ends: 0 when the entrypoint returned or
was stopped by the stop signal, 1 when it raised (one traceback on stderr, relayed masked).
A closed channel before any session means "retired": exit 0.
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
CLOSE_WAIT_S = 5.0  # after the call: time for the closing handshake before the process exits
MODULE_NAME = "_agent_run_session_runtime"  # nothing a project would call its own module

# Run by `python -c`; argv[1] is this file. Standard library only, nothing from the cwd:
# the "" that -c puts first on sys.path goes before anything is imported through it. A
# process forked from a template (#18) finds this file loaded already, by the template.
BOOTSTRAP = f"""\
import sys
if sys.path and sys.path[0] == "":
    del sys.path[0]
runtime = sys.modules.get({MODULE_NAME!r})
if getattr(runtime, "__file__", None) != sys.argv[1]:
    from importlib.util import module_from_spec, spec_from_file_location
    spec = spec_from_file_location({MODULE_NAME!r}, sys.argv[1])
    runtime = module_from_spec(spec)
    sys.modules[spec.name] = runtime
    spec.loader.exec_module(runtime)
    del spec, module_from_spec, spec_from_file_location
runtime._exit(runtime.main(sys.argv[2:]))
"""


def command(
    python: str, kind: str, target: str, function: str, stop_signal: int, args: list[str]
) -> list[str]:
    """The argv of a session process: `python` runs this file, immune to the user's modules."""
    return [python, "-c", BOOTSTRAP, file_path(), kind, target, function, str(stop_signal), *args]


def file_path() -> str:
    """This file, as the bootstrap loads it."""
    return os.path.abspath(__file__)


class RunnerArguments:
    """Pipecat's `RunnerArguments` fields, for agents whose environment has no Pipecat.

    `handle_sigint`/`handle_sigterm` are False because this runtime owns the signals (a
    Pipecat bot passes them to its `PipelineRunner`), as on Pipecat Cloud. Attributes are
    writable, as Pipecat's dataclasses are (`create_transport` writes `call_data`).
    """

    def __init__(self, *, session_id: str | None = None, body: Any = None, **extra: Any) -> None:
        self.handle_sigint = False
        self.handle_sigterm = False
        self.pipeline_idle_timeout_secs: float | None = 300
        self.body = body
        self.call_data: Any = None
        self.session_id = session_id
        self.cli_args: Any = None
        self.file_storage: Any = None
        for name, value in extra.items():
            setattr(self, name, value)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(session_id={self.session_id!r})"


class DailyRunnerArguments(RunnerArguments):
    """A session in a Daily room: `room_url`, `token`."""

    def __init__(self, *, room_url: str, token: str | None = None, **fields: Any) -> None:
        super().__init__(room_url=room_url, token=token, **fields)


class WebSocketRunnerArguments(RunnerArguments):
    """A call on a websocket: `websocket`, `transport_type` (None: detected from the stream)."""

    def __init__(self, *, websocket: Any, transport_type: str | None = None, **fields: Any) -> None:
        super().__init__(websocket=websocket, transport_type=transport_type, **fields)


class ArgumentTypes:
    """The three argument classes the entrypoint may receive, found once per process."""

    def __init__(self) -> None:
        self.plain: Any = RunnerArguments
        self.daily: Any = DailyRunnerArguments
        self.websocket: Any = WebSocketRunnerArguments
        self.resolved = False

    def resolve(self) -> None:
        """Pipecat Cloud's classes, else Pipecat's, else ours (a bot without Pipecat)."""
        if self.resolved:
            return
        self.resolved = True
        try:
            from pipecatcloud.agent import (  # type: ignore[import-not-found, unused-ignore]
                DailySessionArguments,
                PipecatSessionArguments,
                WebSocketSessionArguments,
            )
        except Exception:  # not installed, or an old pipecatcloud without these names
            pass
        else:
            self.plain = PipecatSessionArguments
            self.daily = DailySessionArguments
            self.websocket = WebSocketSessionArguments
            return
        try:
            from pipecat.runner import types  # type: ignore[import-not-found, unused-ignore]
        except Exception:
            return
        self.plain = types.RunnerArguments
        self.daily = types.DailyRunnerArguments
        self.websocket = types.WebSocketRunnerArguments

    def build(self, request: dict[str, Any], websocket: Any = None) -> Any:
        fields = {"session_id": request["session_id"], "body": request.get("body")}
        if websocket is not None:
            return self.websocket(websocket=websocket, **fields)
        if request.get("kind") == "daily":
            return self.daily(room_url=request["room_url"], token=request.get("token"), **fields)
        return self.plain(**fields)


class SessionStopped(BaseException):
    """Raised in a synchronous entrypoint by the stop signal."""


def load(kind: str, target: str, function: str) -> tuple[Callable[..., Any], Any]:
    """Import the agent (its module-level code runs here, once): (entrypoint, module)."""
    import importlib

    if kind == "script":
        import importlib.util

        path = os.path.abspath(target)
        sys.path.insert(0, os.path.dirname(os.path.realpath(path)))  # as `python bot.py` does
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
    return entry, module


def restore_environment(before: dict[str, str]) -> list[str]:
    """Put back every inherited variable the agent's import changed or removed.

    Pipecat's starters call `load_dotenv(override=True)` at import: a stray `.env` would
    silently replace the bound set's values and defeat read-after-write. Returns the names
    (never the values) so the launcher can warn; variables the import added are kept.
    """
    changed = sorted(name for name, value in before.items() if os.environ.get(name) != value)
    for name in changed:
        os.environ[name] = before[name]
    return changed


class Channel:
    """The process's end of the socketpair: lines, and a socket passed with one of them."""

    def __init__(self, fd: int) -> None:
        self.socket = socket.socket(fileno=fd)
        self.socket.setblocking(True)
        self._buffer = b""
        self.fds: list[int] = []

    def send(self, line: bytes) -> None:
        self.socket.sendall(line + b"\n")

    def read_line(self) -> bytes:
        """One line (without its newline); b"" when the launcher closed the channel."""
        while b"\n" not in self._buffer:
            data, fds, _flags, _address = socket.recv_fds(self.socket, 65536, 4)
            self.fds.extend(fds)
            if not data:
                return b""
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line


def _readyz(module: Any, runner: Any) -> dict[str, Any]:
    """The agent's `readyz()` (sync or async; True/False or a dict with "ready")."""
    try:
        result = module.readyz()
        if hasattr(result, "__await__"):
            import asyncio

            async def wait() -> Any:
                return await result

            result = runner.run(wait()) if runner is not None else asyncio.run(wait())
    except Exception as error:
        return {"ready": False, "error": f"{type(error).__name__}: {error}"}
    if isinstance(result, bool):
        return {"ready": result}
    if isinstance(result, dict):
        return {**result, "ready": bool(result.get("ready", False))}
    return {"ready": False, "error": f"readyz() returned {type(result).__name__}"}


_SERVER: list[tuple[Any, Any]] = []  # uvicorn's (Config, ServerState), built once
_APP: list[Any] = []  # the ASGI app of the call being served


def _prepare_websocket() -> None:
    """Import and configure what a handed-over call needs, during warm-up rather than on
    the call's path (uvicorn's Config.load() alone costs milliseconds)."""
    with contextlib.suppress(Exception):
        import starlette.websockets  # noqa: F401  # type: ignore[import-not-found, unused-ignore]

        _websocket_server()


def _websocket_server() -> tuple[Any, Any]:
    if not _SERVER:
        from uvicorn.config import Config
        from uvicorn.server import ServerState

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await _APP[0](scope, receive, send)

        config = Config(app, ws="auto", log_config=None, lifespan="off", proxy_headers=False)
        config.load()
        _SERVER.append((config, ServerState()))
    return _SERVER[0]


async def _call(entry: Callable[..., Any], arguments: Any) -> None:
    result = entry(arguments)
    if hasattr(result, "__await__"):
        await result


async def _serve_websocket(
    entry: Callable[..., Any],
    connection: socket.socket,
    head: bytes,
    build: Callable[[Any], Any],
    called: Callable[[], None],
) -> None:
    """Complete the handshake on the handed-over connection and run the entrypoint with a
    Starlette `WebSocket`, accepted as Pipecat's runner and Pipecat Cloud's image accept it.
    `called()` tells the launcher the bot is running (it then starts the replacement)."""
    import asyncio

    from starlette.websockets import WebSocket, WebSocketState

    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[None] = loop.create_future()
    bot_task: list[asyncio.Task[None]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        websocket = WebSocket(scope, receive, send)
        await websocket.accept()
        task = asyncio.ensure_future(_call(entry, build(websocket)))
        bot_task.append(task)
        called()
        error: BaseException | None = None
        try:
            await task
        except asyncio.CancelledError:
            pass  # the stop signal: a clean end
        except Exception as raised:
            error = raised
        if (
            websocket.client_state == WebSocketState.CONNECTED
            and websocket.application_state == WebSocketState.CONNECTED
        ):
            with contextlib.suppress(Exception):
                await websocket.close(1011 if error is not None else 1000)
        if not outcome.done():
            if error is not None:
                outcome.set_exception(error)  # raised once, by main(): one traceback
            else:
                outcome.set_result(None)

    _APP[:] = [app]
    config, state = _websocket_server()
    protocol_class = config.ws_protocol_class
    closed = loop.create_future()

    class HandedOver(protocol_class):  # type: ignore[misc, valid-type]
        """The protocol, fed the request head the launcher already read."""

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self.data_received(head)

        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            if not closed.done():
                closed.set_result(None)

    await loop.connect_accepted_socket(
        lambda: HandedOver(config=config, server_state=state, app_state={}), connection
    )
    try:
        await asyncio.wait({outcome, closed}, return_when=asyncio.FIRST_COMPLETED)
        if not outcome.done() and not bot_task:
            return  # the caller left during the handshake: nothing was called
        await outcome
    except asyncio.CancelledError:
        # The stop signal: the entrypoint is cancelled as Pipecat's runner would cancel it,
        # its `finally` blocks run and the call is closed properly before the process exits.
        if bot_task:
            bot_task[0].cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(outcome), CLOSE_WAIT_S)
        raise
    finally:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(closed), CLOSE_WAIT_S)


def _run(
    entry: Callable[..., Any],
    session: Callable[[], Any] | None,
    arguments: Any,
    stop: int,
    runner: Any,
) -> None:
    """Run one session: `session()` is the coroutine to run (a call), else `entry(arguments)`."""
    if runner is not None or session is not None:
        import asyncio

        async def main() -> None:
            task = asyncio.current_task()
            assert task is not None
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(stop, task.cancel)
            try:
                await (session() if session is not None else _call(entry, arguments))
            finally:
                loop.remove_signal_handler(stop)

        if runner is None:
            runner = asyncio.Runner()
        try:
            runner.run(main())
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
    channel = Channel(int(os.environ.pop(CHANNEL_VARIABLE)))
    sys.argv = [target, *args]
    inherited = dict(os.environ)
    main_module = sys.modules.get("__main__")
    if kind == "script" and main_module is not None and not hasattr(main_module, "__file__"):
        # As under `python bot.py`: `python -c` leaves __main__ without a file, and tools
        # that look for it take the process for an interactive one (python-dotenv's
        # `load_dotenv()` would then search the working directory, not the bot's).
        main_module.__file__ = os.path.abspath(target)
    try:
        entry, module = load(kind, target, function)
    except Exception:
        import traceback

        traceback.print_exc()
        return 1
    overridden = restore_environment(inherited)
    # Pipecat's types when the agent imported Pipecat (every Pipecat bot does, at module
    # level): resolved now, not on the call. A bot that did not gets plain objects with the
    # same fields: importing Pipecat (~1 s) into every warm process of a bot that does not
    # use it, just because it is installed, would only slow warm-ups down.
    types = ArgumentTypes()
    if "pipecat" in sys.modules:
        types.resolve()
    if "starlette" in sys.modules or "pipecat" in sys.modules:
        _prepare_websocket()
    runner = None
    import inspect

    if inspect.iscoroutinefunction(entry):
        import asyncio

        runner = asyncio.Runner()
        runner.get_loop()  # the loop exists before the session: nothing left to build then
    has_readyz = callable(getattr(module, "readyz", None))
    import json

    try:
        if overridden:
            channel.send(b"overridden " + ",".join(overridden).encode())
        channel.send(b"ready readyz" if has_readyz else b"ready")
        while True:
            line = channel.read_line()
            if not line:
                return 0  # retired before it got a session
            request = json.loads(line)
            if not request.get("readyz"):
                break
            answer = _readyz(module, runner)
            channel.send(b"readyz " + json.dumps(answer, default=str).encode())
    except OSError:
        return 0
    session_id = str(request["session_id"])
    os.environ[SESSION_VARIABLE] = session_id
    connection = None
    session: Callable[[], Any] | None = None
    if request.get("kind") == "websocket":
        if not channel.fds:
            print("agent-run: a websocket session arrived without its connection", file=sys.stderr)
            return 1
        connection = socket.socket(fileno=channel.fds.pop(0))
        head = request["head"].encode("latin-1")
        bound = connection

        def tell_called() -> None:
            with contextlib.suppress(OSError):  # a launcher gone is no reason to drop a call
                channel.send(b"called")

        def session() -> Any:
            return _serve_websocket(
                entry, bound, head, lambda websocket: types.build(request, websocket), tell_called
            )

        arguments = None
    else:
        arguments = types.build(request)
    for fd in channel.fds:  # nothing else is expected; never leak a descriptor
        with contextlib.suppress(OSError):
            os.close(fd)
    try:
        channel.send(b"started")
    except OSError:
        return 0  # the launcher gave up on this start
    try:
        _run(entry, session, arguments, stop, runner)
    except Exception as error:
        _print_failure(error)
        return 1
    return 0


def _print_failure(error: BaseException) -> None:
    """The agent's traceback, once, from its own frames: this runtime's and asyncio's frames
    above the entrypoint say nothing about what went wrong."""
    import traceback

    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename != __file__ and f"{os.sep}asyncio{os.sep}" not in filename:
            break
        tb = tb.tb_next
    traceback.print_exception(type(error), error, tb)


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
