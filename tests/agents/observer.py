"""A test agent that reports what a Python program can observe of how it was started.

Writes $PROBE_DIR/<pid>.json once (argv, __main__, __file__, sys.path, cwd, stdio, its
parent, its secrets version), then waits for SIGTERM, or exits at once with OBSERVE_EXIT.
`colorsys` is never imported here: finding it in sys.modules means a template preloaded it.
"""

import json
import os
import signal
import sys
import time

preloaded = "colorsys" in sys.modules
main = sys.modules["__main__"]
streams = {}
for name in ("stdin", "stdout", "stderr"):
    stream = getattr(sys, name)
    streams[name] = {
        "tty": stream.isatty(),
        "fd": stream.fileno(),
        "line_buffering": stream.line_buffering,
        "write_through": stream.write_through,
        "encoding": stream.encoding,
        "errors": stream.errors,
        "name": stream.name,
        "mode": stream.mode,
    }
report = {
    "pid": os.getpid(),
    "ppid": os.getppid(),
    "pgid": os.getpgid(0),
    "preloaded": preloaded,
    "argv": sys.argv,
    "orig_argv": sys.orig_argv[1:],
    "name": __name__,
    "file": globals().get("__file__"),
    "main_is_this_module": main.__dict__ is globals(),
    "main_keys": sorted(k for k in vars(main) if k.startswith("__")),
    "spec": None if __spec__ is None else __spec__.name,
    "path": sys.path,
    "cwd": os.getcwd(),
    "streams": streams,
    "ttyname": os.ttyname(1) if os.isatty(1) else None,
    "sigint": repr(signal.getsignal(signal.SIGINT)),
    "sigpipe": repr(signal.getsignal(signal.SIGPIPE)),
    "sigterm": repr(signal.getsignal(signal.SIGTERM)),
    "blocked": sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])),
    "version": os.environ.get("AGENT_RUN_SECRETS_VERSION"),
    "secret": os.environ.get("OBSERVED_SECRET"),
    "pythonpath": os.environ.get("PYTHONPATH"),
    "template_fd": os.environ.get("AGENT_RUN_TEMPLATE_FD"),
    "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
}
directory = os.environ["PROBE_DIR"]
temporary = os.path.join(directory, f".{os.getpid()}.tmp")
with open(temporary, "w") as stream:
    json.dump(report, stream)
os.replace(temporary, os.path.join(directory, f"{os.getpid()}.json"))
print("observed", flush=True)
if "OBSERVE_EXIT" in os.environ:
    sys.exit(int(os.environ["OBSERVE_EXIT"]))
while True:
    time.sleep(3600)
