"""Session mode, child side: import the agent once, wait for a session, run its entrypoint.

Started by the launcher as `python -m launcher.runtime KIND TARGET FUNCTION` with a private
channel (a Unix socket) on the fd named in AGENT_RUN_SESSION_FD. It imports the agent with
the environment it was given — heavy imports and model loading happen here, before any
session — says `ready`, then waits. A session arrives as one JSON line; the entrypoint is
called with an object shaped like Pipecat's runner arguments (`session_id`, `body`), sync or
async. `started` is sent just before the call. One process serves one session and exits
when it ends: 0 when the entrypoint returned, 1 when it raised (traceback on stderr).

A script is imported under the name `__agent__`, so its `if __name__ == "__main__":` block
(a Pipecat bot's local runner) does not run.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import runpy
import socket
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunnerArguments:
    """What the entrypoint receives, as Pipecat's runner arguments: `session_id` and `body`."""

    session_id: str
    body: Any = field(default_factory=dict)


def load_entrypoint(kind: str, target: str, function: str) -> Any:
    if kind == "script":
        sys.path.insert(0, os.path.dirname(os.path.abspath(target)))
        namespace = runpy.run_path(target, run_name="__agent__")
        entry = namespace.get(function)
    else:
        entry = getattr(importlib.import_module(target), function, None)
    if not callable(entry):
        raise SystemExit(f"agent-run: error: {target} has no function {function}()")
    return entry


def main() -> int:
    kind, target, function = sys.argv[1:4]
    channel = socket.socket(fileno=int(os.environ.pop("AGENT_RUN_SESSION_FD")))
    entry = load_entrypoint(kind, target, function)
    channel.sendall(b"ready\n")
    stream = channel.makefile("rb")
    line = stream.readline()
    if not line:
        return 0  # retired before it got a session
    request = json.loads(line)
    os.environ["AGENT_RUN_SESSION_ID"] = request["session_id"]
    arguments = RunnerArguments(session_id=request["session_id"], body=request.get("body"))
    channel.sendall(b"started\n")
    try:
        if inspect.iscoroutinefunction(entry):
            import asyncio

            asyncio.run(entry(arguments))
        else:
            result = entry(arguments)
            if inspect.isawaitable(result):
                import asyncio

                async def finish() -> None:
                    await result

                asyncio.run(finish())
    except Exception:
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
