"""A worker with a family: a child, a grandchild and a double-forked daemon, all sleeping.

Writes the four pids to $PROBE_DIR/family-<pid>.json, then prints "family ready".
The daemon is made the classic way (fork, setsid, fork): it leaves the worker's process
group and session, and is re-parented to the launcher.
"""

import json
import os
import time

SLEEP = ["sleep", "600"]
read_end, write_end = os.pipe()

child = os.fork()
if child == 0:
    grandchild = os.fork()
    if grandchild == 0:
        os.execvp(SLEEP[0], SLEEP)
    os.write(write_end, f"{grandchild}\n".encode())
    os.execvp(SLEEP[0], SLEEP)

first = os.fork()
if first == 0:
    os.setsid()
    daemon = os.fork()
    if daemon == 0:
        os.execvp(SLEEP[0], SLEEP)
    os.write(write_end, f"{daemon}\n".encode())
    os._exit(0)
os.waitpid(first, 0)

lines = b""
while lines.count(b"\n") < 2:
    lines += os.read(read_end, 64)
grandchild, daemon = sorted(int(n) for n in lines.split())  # order does not matter
family = {"worker": os.getpid(), "child": child, "others": [grandchild, daemon]}
path = os.path.join(os.environ["PROBE_DIR"], f"family-{os.getpid()}.json")
with open(path + ".tmp", "w") as stream:
    json.dump(family, stream)
os.replace(path + ".tmp", path)
print("family ready", flush=True)
while True:
    time.sleep(60)
