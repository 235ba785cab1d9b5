"""A Pipecat bot that reports the arguments it was given, as a Daily bot would read them.

Into $SESSION_DIR/<session_id>.json: the argument's class and its Pipecat base classes,
`room_url`/`token` when it is Daily's, the body, whether an attribute can be written (as
`create_transport` writes `transport_type` and `call_data`), and DEMO_API_KEY's hash. It
calls `load_dotenv(override=True)` at import, as Pipecat's starters do. {"seconds": S}
keeps the session running S seconds. `readyz()` is what Pipecat Cloud's image calls.
"""

import asyncio
import hashlib
import json
import os

from dotenv import load_dotenv
from pipecat.runner.types import DailyRunnerArguments, RunnerArguments, WebSocketRunnerArguments

load_dotenv(override=True)


def readyz():
    return {"ready": True, "model": "loaded"}


async def bot(runner_args: RunnerArguments):
    runner_args.transport_type = "written"  # attributes are writable, as on Pipecat's types
    key = os.environ.get("DEMO_API_KEY", "")
    report = {
        "type": type(runner_args).__name__,
        "daily": isinstance(runner_args, DailyRunnerArguments),
        "websocket": isinstance(runner_args, WebSocketRunnerArguments),
        "pipecat": isinstance(runner_args, RunnerArguments),
        "room_url": getattr(runner_args, "room_url", None),
        "token": getattr(runner_args, "token", None),
        "session_id": runner_args.session_id,
        "body": runner_args.body,
        "written": runner_args.transport_type,
        "handle_sigint": runner_args.handle_sigint,
        "key_sha256": hashlib.sha256(key.encode()).hexdigest(),
        "token_in_env": "AGENT_RUN_API_TOKEN" in os.environ,
        "pid": os.getpid(),
    }
    print(f"session line from {runner_args.session_id}", flush=True)
    path = os.path.join(os.environ["SESSION_DIR"], f"{runner_args.session_id}.json")
    with open(path + ".tmp", "w") as stream:
        json.dump(report, stream)
    os.replace(path + ".tmp", path)
    body = runner_args.body if isinstance(runner_args.body, dict) else {}
    await asyncio.sleep(float(body.get("seconds", 0)))
