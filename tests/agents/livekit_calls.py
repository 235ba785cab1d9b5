"""The sample LiveKit agent, taking jobs whatever the machine's CPU load.

livekit-agents refuses jobs while the machine's CPU load is above 0.7 (its default
`load_threshold`); the tests run beside CPU hogs, so this variant of
sample_agents/livekit_agent.py sets the threshold to infinity, as a test should. Everything
else (the default health port, the job, the drain) is the sample's.
"""

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "sample_agents"))

from livekit.agents import cli
from livekit_agent import server

server.update_options(load_threshold=math.inf)

if __name__ == "__main__":
    cli.run_app(server)
