"""A session-mode test agent: records each session to $PROBE_DIR/<session_id>.json.

body {"seconds": S} keeps the session running S seconds; {"fail": true} raises.
Importing it appends a line to $PROBE_DIR/imports, so tests can count imports.
"""

import json
import os
import time

with open(os.path.join(os.environ["PROBE_DIR"], "imports"), "a") as stream:
    stream.write(f"{os.getpid()}\n")
time.sleep(float(os.environ.get("PROBE_IMPORT_SECONDS", "0")))  # a heavy import / model load


async def bot(runner_args) -> None:
    import asyncio

    body = runner_args.body or {}
    report = {
        "session_id": runner_args.session_id,
        "body": body,
        "value": os.environ.get("VALUE"),
        "version": os.environ.get("AGENT_RUN_SECRETS_VERSION"),
        "pid": os.getpid(),
        "at": time.time(),
    }
    path = os.path.join(os.environ["PROBE_DIR"], f"{runner_args.session_id}.json")
    with open(path + ".tmp", "w") as stream:
        json.dump(report, stream)
    os.replace(path + ".tmp", path)
    if body.get("fail"):
        raise RuntimeError("the bot failed on purpose")
    await asyncio.sleep(float(body.get("seconds", 0)))


def other(runner_args) -> None:
    """A second, sync entrypoint for --entrypoint :other."""
    path = os.path.join(os.environ["PROBE_DIR"], f"{runner_args.session_id}.json")
    with open(path, "w") as stream:
        json.dump({"session_id": runner_args.session_id, "entry": "other"}, stream)
