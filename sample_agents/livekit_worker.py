"""A LiveKit-style worker: reads the platform credentials, registers, drains on SIGTERM.

It behaves like an unmodified LiveKit agent worker where agent-run can see it: it logs
"registered worker" once it could take jobs (use --ready 'log:registered worker'), it
treats the first SIGTERM as "drain: finish running jobs, take no new ones", and a second
SIGTERM as "exit now". (No network here: the connection to LIVEKIT_URL is simulated.)
"""

import os
import signal
import sys
import threading
import time

url = os.environ.get("LIVEKIT_URL")
api_key = os.environ.get("LIVEKIT_API_KEY")
api_secret = os.environ.get("LIVEKIT_API_SECRET")
if not (url and api_key and api_secret):
    missing = [
        n
        for n, v in (
            ("LIVEKIT_URL", url),
            ("LIVEKIT_API_KEY", api_key),
            ("LIVEKIT_API_SECRET", api_secret),
        )
        if not v
    ]
    print(f"livekit worker: missing {', '.join(missing)}", file=sys.stderr, flush=True)
    sys.exit(78)

draining = threading.Event()
terms = 0


def on_term(signum: int, frame: object) -> None:
    global terms
    terms += 1
    if terms > 1:
        print("second SIGTERM: exiting now, dropping jobs", flush=True)
        os._exit(1)
    draining.set()


signal.signal(signal.SIGTERM, on_term)
job_seconds = float(os.environ.get("DEMO_JOB_SECONDS", "0.5"))
print(f"connecting to {url} as {api_key[:4]}...", flush=True)
time.sleep(0.1)
print(f"registered worker id=AW_{os.getpid()}", flush=True)
draining.wait()
print(f"draining: finishing jobs ({job_seconds}s)", flush=True)
time.sleep(job_seconds)
print("drained, exiting", flush=True)
