"""A session-mode test agent: reports to the test what each process and session saw.

Into $SESSION_DIR it writes (atomically):
  import-<pid>        once per process, when the module-level code runs
  <session_id>.json   when a session's entrypoint starts: pid, body, version, key hash
  <session_id>.end    when it ends: "returned" | "cancelled" | "stopped"
The request body steers a session: {"seconds": S} runs S seconds, {"fail": true} raises,
{"child": true} starts a sleeping sub-process in the session's process group,
{"print_secret": true} prints DEMO_API_KEY (the launcher must mask it).
"""

import asyncio
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import time

DIR = os.environ["SESSION_DIR"]


def write(name, data):
    path = os.path.join(DIR, name)
    with open(path + ".tmp", "w") as stream:
        json.dump(data, stream)
    os.replace(path + ".tmp", path)


write(f"import-{os.getpid()}", {"pid": os.getpid(), "name": __name__, "argv": sys.argv})


def report(runner_args, kind):
    key = os.environ.get("DEMO_API_KEY", "")
    data = {
        "kind": kind,
        "pid": os.getpid(),
        "session_id": runner_args.session_id,
        "body": runner_args.body,
        "entered_at": time.time(),
        "version": os.environ.get("AGENT_RUN_SECRETS_VERSION"),
        "key_sha256": hashlib.sha256(key.encode()).hexdigest(),
        "env_session_id": os.environ.get("AGENT_RUN_SESSION_ID"),
        "channel_variable": os.environ.get("AGENT_RUN_SESSION_FD"),
        "handle_sigint": runner_args.handle_sigint,
        "api_token_in_env": "AGENT_RUN_API_TOKEN" in os.environ,
        "prefix": sys.prefix,
        "agent_run_importable": importlib.util.find_spec("launcher") is not None,
    }
    body = runner_args.body if isinstance(runner_args.body, dict) else {}
    if body.get("child"):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        data["child"] = child.pid
    if body.get("print_secret"):
        print(f"the key is {key}", flush=True)
    write(f"{runner_args.session_id}.json", data)
    return body


async def bot(runner_args):
    body = report(runner_args, "async")
    outcome = "returned"
    try:
        if body.get("fail"):
            raise RuntimeError("session failed on purpose")
        await asyncio.sleep(float(body.get("seconds", 0)))
    except asyncio.CancelledError:
        outcome = "cancelled"
        raise
    finally:
        write(f"{runner_args.session_id}.end", {"outcome": outcome})


def sync_bot(runner_args):
    body = report(runner_args, "sync")
    outcome = "returned"
    try:
        time.sleep(float(body.get("seconds", 0)))
    except BaseException:
        outcome = "stopped"
        raise
    finally:
        write(f"{runner_args.session_id}.end", {"outcome": outcome})


if __name__ == "__main__":
    write(f"main-{os.getpid()}", {"pid": os.getpid()})
