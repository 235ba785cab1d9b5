"""A worker that tries every route to secrets that are not its own, and reports what it got.

Writes `<SPY_REPORT>` (JSON): for each path in SPY_TRY (os.pathsep-separated) and the
launcher's /proc entries, "denied" or what it could read; its uid, gid and groups; its
environment. Sends READY=1 on NOTIFY_SOCKET when there is one, then waits to be stopped.
`session_spy.py` reports the same from a session.
"""

import json
import os
import signal
import socket
import stat
import sys


def attempt(path: str) -> str:
    try:
        mode = os.lstat(path).st_mode
    except PermissionError:
        return "denied"
    except FileNotFoundError:
        return "missing"
    try:
        if stat.S_ISDIR(mode):
            return "listed:" + ",".join(sorted(os.listdir(path)))
        if stat.S_ISSOCK(mode):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.connect(path)
            return "connected"
        with open(path, "rb") as stream:
            return "read:" + stream.read(65536).decode("latin-1")
    except PermissionError:
        return "denied"
    except OSError as error:
        return f"error:{error.errno}"


def report() -> dict:
    """What this process is, has, and got of every route (the launcher is its parent)."""
    launcher = os.getppid()
    routes = [f"/proc/{launcher}/environ", f"/proc/{launcher}/mem"]
    routes += [p for p in os.environ.get("SPY_TRY", "").split(os.pathsep) if p]
    found = {
        "uid": os.getuid(),
        "gid": os.getgid(),
        "groups": os.getgroups(),
        "env": dict(os.environ),
        "routes": {route: attempt(route) for route in routes},
        # Its terminal, when the launcher relays through a pty: whose it is.
        "tty_owner": os.fstat(1).st_uid if os.isatty(1) else None,
    }
    files = os.environ.get("AGENT_RUN_FILES")
    if files:
        found["files"] = {
            name: [attempt(os.path.join(files, name)), os.stat(os.path.join(files, name)).st_uid]
            for name in os.listdir(files)
        }
        # Something of its own in its private directory, which must go with it too.
        os.makedirs(os.path.join(files, "made-by-agent"), exist_ok=True)
        with open(os.path.join(files, "made-by-agent", "notes"), "w") as stream:
            stream.write("scratch")
    return found


def write(found: dict) -> None:
    target = os.environ["SPY_REPORT"]
    with open(target + ".tmp", "w") as stream:
        json.dump(found, stream)
    os.rename(target + ".tmp", target)


def main() -> None:
    found = report()
    notify = os.environ.get("NOTIFY_SOCKET")
    if notify:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(b"READY=1", notify)
            found["notified"] = True
        except OSError as error:
            found["notified"] = str(error)
    write(found)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
