"""A stand-in launcher: spawns one child with launcher.process.worker and reports its pid.

argv: the child's command. Prints "child <pid>" and then waits until it is killed; with
SPAWNER_SUBREAPER=1 it becomes a subreaper and prints "reaped <pid> <code>" for every
child it collects.
"""

import os
import signal
import sys

from launcher.process import worker as process

if os.environ.get("SPAWNER_SUBREAPER"):
    print("subreaper", process.become_subreaper(), flush=True)
pid = process.fork_exec(sys.argv[1:], os.environ, stdin=0, stdout=None, stderr=None)
print("child", pid, flush=True)
signal.signal(signal.SIGCHLD, lambda *_: None)
while True:
    signal.pause()
    for reaped, status in process.exited_children():
        print("reaped", reaped, process.exit_code(status), flush=True)
