"""A session-mode agent in Pipecat's shape: `async def bot(runner_args)`.

Run it:  agent-run --secrets demo --idle 2 sample_agents/session_bot.py
then:    curl -X POST localhost:7860/sessions -d '{"room": "demo"}'
agent-run imports this module in pre-warmed processes (the module-level "model load" below
happens before any session), and calls bot() once per session, in its own process.
It reports which secrets version it sees and a hash of DEMO_API_KEY — never the value.
"""

import asyncio
import hashlib
import json
import os
import time

# Stand-in for heavy imports and model loading: done once per process, before the session.
LOADED_AT = time.time()
MODEL = {"weights": [0.0] * 1000}


async def bot(runner_args) -> None:
    key = os.environ.get("DEMO_API_KEY", "")
    report = {
        "session_id": runner_args.session_id,
        "body": runner_args.body,
        "secrets_version": os.environ.get("AGENT_RUN_SECRETS_VERSION"),
        "key_sha": hashlib.sha256(key.encode()).hexdigest()[:12],
        "pid": os.getpid(),
        "warm_for_s": round(time.time() - LOADED_AT, 3),
    }
    print(json.dumps(report), flush=True)
    report_dir = os.environ.get("SESSION_REPORT_DIR")
    if report_dir:  # tests and benchmarks read what the session saw from here
        path = os.path.join(report_dir, f"{runner_args.session_id}.json")
        with open(path + ".tmp", "w") as stream:
            json.dump(report, stream)
        os.replace(path + ".tmp", path)
    await asyncio.sleep(
        float(runner_args.body.get("seconds", 0)) if isinstance(runner_args.body, dict) else 0
    )


if __name__ == "__main__":  # Pipecat's local runner would go here; agent-run never runs it
    print("run me with: agent-run sample_agents/session_bot.py")
