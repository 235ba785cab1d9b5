"""A test agent that reports to the test what it received, and behaves as told.

Reports are JSON files in $PROBE_DIR named <pid>.json (written atomically). Behaviour comes
from the environment, so a secret set can change it for the next rollout:
  PROBE_MODE=serve (default) | exit:N | hang   serve waits for the stop signal, then exits 0
  PROBE_NOTIFY=1      send READY=1 (and WATCHDOG=1 pings if PROBE_WATCHDOG=S)
  PROBE_CHILD=1       start a sleeping sub-process in the same process group
  PROBE_ORPHAN=1      leave an orphan behind (double fork) that exits at once
  PROBE_PRINT=1       print every secret-looking value (PROBE_SECRET_*) on stdout and stderr
  PROBE_READY_AFTER=S wait S seconds before READY=1 (and before listening)
  PROBE_LISTEN=1      accept TCP connections on 127.0.0.1:$AGENT_RUN_PORT (then report it)
  PROBE_STOPPING=1    send STOPPING=1 after READY=1, then keep serving until the stop signal
"""

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse

report_dir = os.environ["PROBE_DIR"]
pid = os.getpid()
terms: list[float] = []
state: dict[str, object] = {}


def write(extra: dict[str, object] | None = None) -> None:
    state.update(extra or {})
    data = {
        "pid": pid,
        "env": dict(os.environ),
        "terms": terms,
        **state,
    }
    tmp = os.path.join(report_dir, f".{pid}.tmp")
    with open(tmp, "w") as stream:
        json.dump(data, stream)
    os.replace(tmp, os.path.join(report_dir, f"{pid}.json"))


def on_term(signum: int, frame: object) -> None:
    terms.append(time.time())
    write()


mode = os.environ.get("PROBE_MODE", "serve")
signal.signal(signal.SIGTERM, on_term)
if os.environ.get("PROBE_CHILD"):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)"])
    state["child"] = child.pid
if os.environ.get("PROBE_ORPHAN"):
    if os.fork() == 0:
        if os.fork() == 0:
            os._exit(0)  # the grandchild: orphaned, re-parented to the subreaper, exits
        os._exit(0)
    os.wait()
if os.environ.get("PROBE_PRINT"):
    for key, value in os.environ.items():
        if key.startswith("PROBE_SECRET_"):
            for form in (
                value,
                base64.b64encode(value.encode()).decode(),
                urllib.parse.quote(value, safe=""),
            ):
                print(f"stdout {key}={form}", flush=True)
                print(f"stderr {key}={form}", file=sys.stderr, flush=True)
write({"started": time.time()})
if mode.startswith("exit:"):
    sys.exit(int(mode.split(":")[1]))
time.sleep(float(os.environ.get("PROBE_READY_AFTER", "0")))
if os.environ.get("PROBE_LISTEN"):
    import socket
    import threading

    listening = time.time()  # before the bind: a probe may succeed before the report
    server = socket.create_server(("127.0.0.1", int(os.environ["AGENT_RUN_PORT"])))

    def accept() -> None:
        while True:
            server.accept()[0].close()

    threading.Thread(target=accept, daemon=True).start()
    write({"listening": listening})
if os.environ.get("PROBE_NOTIFY") == "1":
    from launcher import notify_ready

    write({"ready_sent": time.time()})  # before sending: the launcher may act at once
    notify_ready("probe up")
    if os.environ.get("PROBE_STOPPING"):
        from launcher.sd_notify import notify_stopping

        notify_stopping()
print(f"probe {pid} up", flush=True)
if mode == "hang":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
watchdog = float(os.environ.get("PROBE_WATCHDOG", "0"))
while not terms or mode == "hang":
    if watchdog:
        from launcher import notify_watchdog

        notify_watchdog()
        time.sleep(watchdog / 3)
    else:
        signal.pause()
time.sleep(float(os.environ.get("PROBE_DRAIN", "0")))
write({"exiting": time.time()})
