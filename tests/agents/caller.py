"""A test agent that holds "calls": it uses its provider key while it serves, and on the stop
signal finishes its call in progress (still using the key) until the test releases it.

Into $CALLER_DIR it writes <pid>.json at start (pid, secrets version, key hash) and <pid>.end
when its call finished and it exits. It exits (0) after the stop signal only once the file
`release-<pid>` or `release-all` exists in $CALLER_DIR. Optional:
  PROVIDER_URL        GET it with "Authorization: Bearer $PROVIDER_API_KEY" every 20 ms
  CALLER_NOTIFY=1     READY=1 once serving (--ready notify)
  a file `grow`       the first process to claim it allocates 64 MiB more and keeps it
  files `call-*`      each is claimed by one process, which reports one call done
                      (X_AGENT_RUN_CALL_DONE=1, for --max-worker-calls)
"""

import hashlib
import json
import os
import signal
import time
import urllib.error
import urllib.request

DIR = os.environ["CALLER_DIR"]
PID = os.getpid()
KEY = os.environ.get("PROVIDER_API_KEY", "")
URL = os.environ.get("PROVIDER_URL")
stopping: list[float] = []
hoard: list[bytearray] = []


def write(name: str, data: dict[str, object]) -> None:
    path = os.path.join(DIR, name)
    with open(path + ".tmp", "w") as stream:
        json.dump(data, stream)
    os.replace(path + ".tmp", path)


def claim(name: str) -> bool:
    """Take a file meant for one process: the rename succeeds for exactly one."""
    try:
        os.rename(os.path.join(DIR, name), os.path.join(DIR, f".{name}.{PID}"))
    except FileNotFoundError:
        return False
    return True


def use_key() -> None:
    if URL is None:
        return
    request = urllib.request.Request(URL, headers={"Authorization": f"Bearer {KEY}"})
    try:
        with urllib.request.urlopen(request, timeout=10):
            pass
    except (urllib.error.URLError, OSError):
        pass  # the provider records every use; a refusal is its finding, not ours


def released() -> bool:
    return any(os.path.exists(os.path.join(DIR, n)) for n in (f"release-{PID}", "release-all"))


signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(time.time()))
write(
    f"{PID}.json",
    {
        "pid": PID,
        "version": os.environ.get("AGENT_RUN_SECRETS_VERSION"),
        "key_sha256": hashlib.sha256(KEY.encode()).hexdigest(),
        "started": time.time(),
    },
)
if os.environ.get("CALLER_NOTIFY") == "1":
    from launcher import notify_ready

    notify_ready()
while not (stopping and released()):
    use_key()
    if claim("grow"):
        hoard.append(bytearray(64 * 1024 * 1024))
        for index in range(0, len(hoard[-1]), 4096):  # touch every page: resident
            hoard[-1][index] = 1
        write(f"{PID}.grown", {"pid": PID})
    for name in sorted(os.listdir(DIR)):
        if name.startswith("call-") and claim(name):
            from launcher.sd_notify import notify

            notify("X_AGENT_RUN_CALL_DONE=1")
    time.sleep(0.02)
use_key()  # the last words of the call in progress
write(f"{PID}.end", {"pid": PID, "stopping": stopping[0], "ended": time.time()})
