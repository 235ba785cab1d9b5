"""A session-mode agent in Pipecat's shape: `async def bot(runner_args)`.

Run it:
    agent-run secrets set demo DEMO_API_KEY=sk-demo-1
    agent-run --secrets demo --idle 2 sample_agents/session_bot.py
    curl -X POST localhost:8098/sessions -H 'Content-Type: application/json' -d '{"room": "demo"}'

agent-run sees the module-level `bot` and serves sessions instead of running the script. It
imports this module in pre-warmed processes — the "model load" below happens before any
session arrives — and calls bot() once per session, in a process of its own.

Each session prints one JSON line: the session id, the secrets version in its environment
(AGENT_RUN_SECRETS_VERSION) and a short hash of DEMO_API_KEY, so you can tell which value it
got without printing it. With SESSION_REPORT_DIR set, the same report is written to
<dir>/<session_id>.json (tests and bench/sessions.py read it), and <session_id>.end once the
session is over.

The request body steers the session: {"seconds": S} keeps it running S seconds (a call in
progress), {"fail": true} makes it raise.
"""

import asyncio
import hashlib
import json
import os
import time

# Stand-in for heavy imports and model loading (pipecat, torch, a VAD model...): paid once
# per process, before the session. SESSION_BOT_LOAD_S sets how long it takes.
time.sleep(float(os.environ.get("SESSION_BOT_LOAD_S", "0.2")))
MODEL = {"weights": [0.0] * 10_000}
LOADED_AT = time.time()


def _report(name: str, data: dict) -> None:
    directory = os.environ.get("SESSION_REPORT_DIR")
    if not directory:
        return
    path = os.path.join(directory, name)
    with open(path + ".tmp", "w") as stream:
        json.dump(data, stream)
    os.replace(path + ".tmp", path)  # readers never see half a report


async def bot(runner_args) -> None:
    entered_at = time.time()
    body = runner_args.body if isinstance(runner_args.body, dict) else {}
    key = os.environ.get("DEMO_API_KEY", "")
    report = {
        "session_id": runner_args.session_id,
        "body": runner_args.body,
        "entered_at": entered_at,
        "secrets_version": os.environ.get("AGENT_RUN_SECRETS_VERSION"),
        "key_sha256": hashlib.sha256(key.encode()).hexdigest()[:16] if key else None,
        "pid": os.getpid(),
        "warm_for_s": round(entered_at - LOADED_AT, 3),
    }
    print(json.dumps(report), flush=True)
    _report(f"{runner_args.session_id}.json", report)
    outcome = "returned"
    try:
        if body.get("fail"):
            raise RuntimeError("the session failed on purpose")
        await asyncio.sleep(float(body.get("seconds", 0)))
    except asyncio.CancelledError:
        outcome = "cancelled"  # DELETE /sessions/{id}, or the launcher's drain ran out
        raise
    finally:
        _report(f"{runner_args.session_id}.end", {"outcome": outcome, "pid": os.getpid()})


if __name__ == "__main__":  # Pipecat's local runner would go here; agent-run never runs it
    print("run me with: agent-run sample_agents/session_bot.py")
