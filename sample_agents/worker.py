"""A plain worker: reports which secrets and platform credentials it received (names only).

Run it:  agent-run --secrets demo sample_agents/worker.py
It prints what it got, then works until it is asked to stop (SIGTERM / Ctrl-C).
"""

import os
import signal
import sys
import threading

PLATFORM = ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET")
PREFIXES = ("DEMO_", "OPENAI_", "DEEPGRAM_", "CARTESIA_", "ELEVENLABS_", "ANTHROPIC_")

stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
signal.signal(signal.SIGINT, lambda *_: stop.set())

worker = os.environ.get("AGENT_RUN_WORKER", "-")
version = os.environ.get("AGENT_RUN_SECRETS_VERSION", "-")
secrets = sorted(k for k in os.environ if k.startswith(PREFIXES))
print(f"worker {worker} (pid {os.getpid()}) secrets v{version}: {', '.join(secrets) or 'none'}")
for name in PLATFORM:
    print(f"  {name}: {'set' if os.environ.get(name) else 'missing'}")
sys.stdout.flush()
while not stop.wait(3600):
    pass
print(f"worker {worker} stopping")
